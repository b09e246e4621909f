//! `vlmbench run --backend openai`: drive an OpenAI-compatible server at one or more load
//! levels and write a serving report.

use std::collections::BTreeMap;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::Tokenizer;

use super::run::{
    default_report_path, install_ctrl_c, load_dataset, utc_now, EXIT_INTERRUPTED, EXIT_SOME_FAILED,
};
use crate::cli::{EndpointArg, RunArgs, Workload};
use crate::dataset::synthetic;
use crate::dataset::LoadedDataset;
use crate::engine::openai::client::{build_body, send, ClientConfig, ImagePayload, RequestOutcome};
use crate::engine::openai::load::{run_level, LoadLevel};
use crate::engine::openai::stream::Endpoint;
use crate::report::serving::{
    self, LevelReport, RequestRecord, ServerInfo, ServingConfig, ServingReport,
};
use crate::report::{DatasetRef, Environment, RunStatus};
use crate::stats::summarize;

pub fn execute(mut args: RunArgs) -> Result<ExitCode> {
    let s = &args.server;
    let base_url = s
        .base_url
        .clone()
        .ok_or_else(|| anyhow!("--backend openai needs --base-url http://HOST:PORT"))?;
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        bail!("--base-url {base_url:?} must start with http:// or https://");
    }
    if s.concurrency.contains(&0) {
        bail!("--concurrency values must be at least 1");
    }
    if s.request_rate.is_some_and(|r| r.is_nan() || r <= 0.0) || !(s.burstiness > 0.0) {
        bail!("--request-rate must be positive (or inf) and --burstiness positive");
    }
    let cancel = install_ctrl_c();
    let endpoint = match s.endpoint {
        EndpointArg::Chat => Endpoint::Chat,
        EndpointArg::Completions => Endpoint::Completions,
    };
    let tokenizer = match &args.tokenizer {
        Some(p) => Some(
            Tokenizer::from_file(p)
                .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .context("cannot build the HTTP client")?;

    let mut cfg = ClientConfig {
        base_url: base_url.clone(),
        api_key: s.api_key.clone(),
        model: args.model_path.clone().unwrap_or_default(),
        endpoint,
        max_tokens: args.max_new_tokens,
        ignore_eos: args.ignore_eos,
        stream_usage: !s.no_stream_usage,
        timeout: Duration::from_secs_f64(s.request_timeout),
    };
    let (models, props) = runtime.block_on(probe(&http, &cfg))?;
    if cfg.model.is_empty() {
        cfg.model = models
            .as_ref()
            .and_then(|m| m["data"][0]["id"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                anyhow!(
                    "the server lists no model at {}; pass --model NAME",
                    cfg.url("models")
                )
            })?;
    }
    if let Some(w) = args.server.workload {
        apply_workload(&mut args, &mut cfg, w, models.as_ref(), props.as_ref())?;
    }
    let s = &args.server;
    let (data_path, dataset) = load_dataset(args.data_file.as_deref())?;
    if endpoint == Endpoint::Completions && dataset.file.samples.iter().any(|x| x.image.is_some()) {
        bail!(
            "{} has images, which /v1/completions cannot take; use --endpoint chat",
            data_path.display()
        );
    }
    let cfg = Arc::new(cfg);

    let samples = &dataset.file.samples[..dataset
        .file
        .samples
        .len()
        .min(args.limit.unwrap_or(usize::MAX))];
    if samples.is_empty() {
        bail!("{} holds no samples", data_path.display());
    }
    let num_prompts = s.num_prompts.unwrap_or(samples.len());
    // Bodies (images base64-encoded) are built before any clock starts.
    let mut bodies = Vec::with_capacity(num_prompts);
    let mut order = Vec::with_capacity(num_prompts);
    for i in 0..num_prompts {
        let sample = &samples[i % samples.len()];
        bodies.push(body_for(&cfg, &dataset, sample)?);
        order.push(i % samples.len());
    }
    let levels: Vec<LoadLevel> = if s.concurrency.is_empty() {
        vec![LoadLevel {
            concurrency: None,
            request_rate: s.request_rate,
            burstiness: s.burstiness,
        }]
    } else {
        s.concurrency
            .iter()
            .map(|&c| LoadLevel {
                concurrency: Some(c),
                request_rate: s.request_rate,
                burstiness: s.burstiness,
            })
            .collect()
    };
    if levels
        .iter()
        .all(|l| l.concurrency.is_none() && l.request_rate.is_none())
    {
        eprintln!("note: no --concurrency and no --request-rate: all {num_prompts} requests are sent at once");
    }

    // Warm-up requests, untimed, one at a time.
    for i in 0..args.warmup.min(bodies.len()) {
        let o = runtime.block_on(send(
            &http,
            &cfg,
            bodies[i].clone(),
            std::time::Instant::now(),
        ));
        if let Some(e) = o.error {
            eprintln!("warm-up request failed: {e}");
        }
    }

    let (started_at, stamp) = utc_now();
    let mut level_reports = Vec::new();
    let mut status = RunStatus::Complete;
    for (k, level) in levels.iter().enumerate() {
        if cancel.load(Ordering::SeqCst) {
            status = RunStatus::Interrupted;
            break;
        }
        eprintln!(
            "level {}/{}: concurrency {:?}, rate {:?}, {} requests ...",
            k + 1,
            levels.len(),
            level.concurrency,
            level.request_rate,
            bodies.len()
        );
        let run = runtime.block_on(run_level(
            http.clone(),
            cfg.clone(),
            bodies.clone(),
            level,
            42 + k as u64,
            cancel.clone(),
        ));
        let records: Vec<RequestRecord> = run
            .outcomes
            .iter()
            .zip(&run.positions)
            .map(|(o, &pos)| record(o, &samples[order[pos]], tokenizer.as_ref()))
            .collect();
        level_reports.push(summarize_level(
            level,
            run.duration.as_secs_f64(),
            records,
            cfg.stream_usage,
            tokenizer.is_some(),
        ));
        if cancel.load(Ordering::SeqCst) {
            status = RunStatus::Interrupted;
        }
    }

    let report = ServingReport {
        schema_version: crate::report::REPORT_SCHEMA_VERSION,
        kind: "serving".into(),
        status,
        status_detail: (status == RunStatus::Interrupted)
            .then(|| "interrupted by the user (Ctrl-C)".into()),
        started_at,
        environment: Environment::capture(None),
        server: ServerInfo {
            base_url,
            endpoint: match endpoint {
                Endpoint::Chat => "chat".into(),
                Endpoint::Completions => "completions".into(),
            },
            model: cfg.model.clone(),
            models,
            props,
        },
        config: ServingConfig {
            max_tokens: args.max_new_tokens,
            ignore_eos: args.ignore_eos,
            stream_usage_requested: cfg.stream_usage,
            num_prompts,
            warmup_requests: args.warmup.min(num_prompts),
            request_timeout_s: s.request_timeout,
            burstiness: s.burstiness,
        },
        dataset: DatasetRef::of(&data_path, &dataset),
        levels: level_reports,
    };
    let json_path = args.report_file.clone().unwrap_or_else(|| {
        default_report_path(&format!("openai_{}", cfg.model), &dataset.file.name, &stamp)
    });
    let csv_path = json_path.with_extension("csv");
    serving::write_json(&report, &json_path)?;
    serving::write_csv(&report, &csv_path)?;
    if !args.quiet {
        print!("{}", serving::render(&report));
    }
    eprintln!(
        "report: {}\nper-request CSV: {}",
        json_path.display(),
        csv_path.display()
    );
    if args.plots {
        super::plot::beside_serving_report(&report, &json_path)?;
    }
    Ok(match report.status {
        RunStatus::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
        _ if report.levels.iter().any(|l| l.failed > 0) => ExitCode::from(EXIT_SOME_FAILED),
        _ => ExitCode::SUCCESS,
    })
}

/// A seeds-style workload: prompt and output lengths, concurrency levels, images or not.
struct WorkloadSpec {
    /// Prompt tokens; `None` = the context length minus 2,048 (and a small margin for the
    /// chat template).
    input_tokens: Option<usize>,
    output_tokens: usize,
    concurrency: &'static [usize],
    images: bool,
}

fn workload_spec(w: Workload) -> WorkloadSpec {
    match w {
        Workload::High => WorkloadSpec {
            input_tokens: None,
            output_tokens: 2048,
            concurrency: &[1, 5, 10],
            images: false,
        },
        Workload::Mid => WorkloadSpec {
            input_tokens: Some(200),
            output_tokens: 250,
            concurrency: &[32, 64, 128],
            images: false,
        },
        Workload::Low => WorkloadSpec {
            input_tokens: Some(100),
            output_tokens: 150,
            concurrency: &[1, 4, 8, 16, 32],
            images: false,
        },
        Workload::VisionA => WorkloadSpec {
            input_tokens: Some(50),
            output_tokens: 300,
            concurrency: &[8, 16, 32, 64, 128],
            images: true,
        },
        Workload::VisionB => WorkloadSpec {
            input_tokens: Some(100),
            output_tokens: 100,
            concurrency: &[1, 8, 16, 32],
            images: true,
        },
    }
}

/// The server's context length: `--context-length`, vLLM's `max_model_len` in /v1/models, or
/// llama.cpp's `n_ctx` in /props.
fn context_length(
    args: &RunArgs,
    models: Option<&serde_json::Value>,
    props: Option<&serde_json::Value>,
) -> Option<usize> {
    args.server
        .context_length
        .or_else(|| {
            models
                .and_then(|m| m["data"][0]["max_model_len"].as_u64())
                .map(|n| n as usize)
        })
        .or_else(|| {
            props
                .and_then(|p| p["default_generation_settings"]["n_ctx"].as_u64())
                .map(|n| n as usize)
        })
}

/// Turns `--workload` into a frozen synthetic set plus the matching run settings (unless the
/// user set them explicitly).
fn apply_workload(
    args: &mut RunArgs,
    cfg: &mut ClientConfig,
    w: Workload,
    models: Option<&serde_json::Value>,
    props: Option<&serde_json::Value>,
) -> Result<()> {
    if args.data_file.is_some() {
        bail!("--workload makes its own data set; do not combine it with --data-file");
    }
    let spec = workload_spec(w);
    let input = match spec.input_tokens {
        Some(n) => n,
        None => {
            let ctx = context_length(args, models, props).ok_or_else(|| {
                anyhow!("--workload high needs the context length: the server does not report it; pass --context-length N")
            })?;
            ctx.checked_sub(2048 + 64)
                .filter(|n| *n > 0)
                .ok_or_else(|| anyhow!("context length {ctx} is too small for --workload high (needs more than 2,112 tokens)"))?
        }
    };
    if args.server.concurrency.is_empty() {
        args.server.concurrency = spec.concurrency.to_vec();
    }
    let max_concurrency = *args.server.concurrency.iter().max().unwrap_or(&1);
    let num_prompts = *args
        .server
        .num_prompts
        .get_or_insert((4 * max_concurrency).max(50));
    args.max_new_tokens = spec.output_tokens;
    args.ignore_eos = true;
    cfg.max_tokens = spec.output_tokens;
    cfg.ignore_eos = true;
    let name = format!("workload_{}", w.name());
    let out = std::path::PathBuf::from("perf_data").join(synthetic::default_file_name(&name));
    eprintln!(
        "writing the {} workload ({num_prompts} prompts of {input} tokens{}) to {} ...",
        w.name(),
        if spec.images {
            " with unique images"
        } else {
            ""
        },
        out.display()
    );
    synthetic::prepare(
        &synthetic::SyntheticOptions {
            name,
            num_samples: num_prompts,
            seed: 42,
            images: spec.images.then_some(synthetic::ImageSpec {
                width_mean: 512.0,
                width_stddev: 0.0,
                height_mean: 512.0,
                height_stddev: 0.0,
                format: synthetic::SynthImageFormat::Png,
            }),
            input_tokens_mean: input as f64,
            input_tokens_stddev: 0.0,
            output_tokens: Some((spec.output_tokens as f64, 0.0)),
            tokenizer: args.tokenizer.clone(),
        },
        &out,
    )?;
    args.data_file = Some(out);
    Ok(())
}

/// `GET /v1/models` (must answer: fails fast on an unreachable server) and llama.cpp's
/// `GET /props` (optional).
async fn probe(
    http: &reqwest::Client,
    cfg: &ClientConfig,
) -> Result<(Option<serde_json::Value>, Option<serde_json::Value>)> {
    let get = |url: String| {
        let mut req = http.get(url).timeout(Duration::from_secs(10));
        if let Some(k) = &cfg.api_key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    let url = cfg.url("models");
    let resp = get(url.clone()).await.map_err(|e| {
        anyhow!(
            "cannot reach the server at {url}: {} (is it running, and is --base-url right?)",
            crate::engine::openai::client::describe_reqwest(&e)
        )
    })?;
    let models = if resp.status().is_success() {
        resp.bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    } else {
        None
    };
    let base = cfg
        .url("")
        .trim_end_matches('/')
        .trim_end_matches("/v1")
        .to_string();
    let props = match get(format!("{base}/props")).await {
        Ok(r) if r.status().is_success() => r
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
        _ => None,
    };
    Ok((models, props))
}

fn body_for(
    cfg: &ClientConfig,
    dataset: &LoadedDataset,
    sample: &crate::dataset::Sample,
) -> Result<Vec<u8>> {
    let Some(path) = dataset.image_path(sample) else {
        return Ok(build_body(cfg, &sample.prompt, None));
    };
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "sample {}: cannot read image {}",
            sample.index,
            path.display()
        )
    })?;
    let mime = match image::guess_format(&bytes) {
        Ok(image::ImageFormat::Png) => "image/png",
        Ok(image::ImageFormat::Gif) => "image/gif",
        Ok(image::ImageFormat::WebP) => "image/webp",
        Ok(image::ImageFormat::Bmp) => "image/bmp",
        _ => "image/jpeg",
    };
    Ok(build_body(
        cfg,
        &sample.prompt,
        Some(ImagePayload {
            mime,
            bytes: &bytes,
        }),
    ))
}

fn record(
    o: &RequestOutcome,
    sample: &crate::dataset::Sample,
    tokenizer: Option<&Tokenizer>,
) -> RequestRecord {
    let count = |text: &str| {
        tokenizer
            .and_then(|t| t.encode(text, false).ok())
            .map(|e| e.len() as u64)
    };
    let output_tokens = o
        .completion_tokens
        .or_else(|| count(&o.text))
        .or_else(|| (!o.timeline.chunks.is_empty()).then(|| o.timeline.chunks.len() as u64));
    let input_tokens = o.prompt_tokens.or_else(|| count(&sample.prompt));
    let metrics = if o.error.is_none() {
        o.timeline.metrics(output_tokens.unwrap_or(0))
    } else {
        None
    };
    RequestRecord {
        index: sample.index,
        ok: metrics.is_some(),
        error: o
            .error
            .clone()
            .or_else(|| metrics.is_none().then(|| "no content".to_string())),
        http_status: o.status,
        ttft_ms: metrics.as_ref().map(|m| m.ttft_ms),
        ttft_from_send_ms: metrics.as_ref().map(|m| m.ttft_from_send_ms),
        e2el_ms: metrics.as_ref().map(|m| m.e2e_ms),
        tpot_ms: metrics.as_ref().and_then(|m| m.tpot_ms),
        queue_ms: metrics.as_ref().map(|m| m.queue_ms),
        input_tokens,
        output_tokens,
        itl_ms: metrics
            .as_ref()
            .map(|m| m.itl_ms.clone())
            .unwrap_or_default(),
        chunk_gaps_ms: metrics
            .as_ref()
            .map(|m| m.chunk_gaps_ms.clone())
            .unwrap_or_default(),
        text: o.text.clone(),
    }
}

fn summarize_level(
    level: &LoadLevel,
    duration: f64,
    requests: Vec<RequestRecord>,
    usage_requested: bool,
    has_tokenizer: bool,
) -> LevelReport {
    let ok: Vec<&RequestRecord> = requests.iter().filter(|r| r.ok).collect();
    let pick = |f: &dyn Fn(&RequestRecord) -> Option<f64>| {
        summarize(&ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
    };
    let mut failure_reasons = BTreeMap::new();
    for r in requests.iter().filter(|r| !r.ok) {
        *failure_reasons
            .entry(r.error.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    let out_tokens: u64 = ok.iter().filter_map(|r| r.output_tokens).sum();
    let in_tokens: u64 = ok.iter().filter_map(|r| r.input_tokens).sum();
    let per_s = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };
    let source =
        if usage_requested && ok.iter().all(|r| r.output_tokens.is_some()) && !ok.is_empty() {
            // Usage may still be missing on servers that ignore stream_options; `record` then fell
            // back, and the tokenizer flag says how.
            if has_tokenizer {
                "server usage, else tokenizer"
            } else {
                "server usage, else chunks"
            }
        } else if has_tokenizer {
            "tokenizer"
        } else {
            "chunks"
        };
    LevelReport {
        concurrency: level.concurrency,
        request_rate: level.request_rate.filter(|r| r.is_finite()),
        duration,
        completed: ok.len(),
        failed: requests.len() - ok.len(),
        failure_reasons,
        request_throughput: per_s(ok.len() as f64),
        output_throughput: per_s(out_tokens as f64),
        total_token_throughput: per_s((out_tokens + in_tokens) as f64),
        total_input_tokens: in_tokens,
        total_output_tokens: out_tokens,
        output_tokens_source: source.into(),
        ttft_ms: pick(&|r| r.ttft_ms),
        ttft_from_send_ms: pick(&|r| r.ttft_from_send_ms),
        tpot_ms: pick(&|r| r.tpot_ms),
        itl_ms: summarize(
            &ok.iter()
                .flat_map(|r| r.itl_ms.iter().copied())
                .collect::<Vec<_>>(),
        ),
        chunk_gap_ms: summarize(
            &ok.iter()
                .flat_map(|r| r.chunk_gaps_ms.iter().copied())
                .collect::<Vec<_>>(),
        ),
        e2el_ms: pick(&|r| r.e2el_ms),
        e2el_from_send_ms: None,
        queue_ms: pick(&|r| r.queue_ms),
        requests,
    }
}
