//! `vlmbench run --backend openai`: drive an OpenAI-compatible server at one or more load
//! levels and write a serving report.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::Tokenizer;

use super::common::{
    default_report_path, install_ctrl_c, load_dataset, usage_bail, utc_now, UsageError,
    EXIT_INTERRUPTED, EXIT_SOME_FAILED,
};
use super::destination::{write_or_rescue, ReportPaths};
use crate::bench::request_record::{output_tokens_source, record};
use crate::bench::serving::{run_level_reporting, LoadLevel};
use crate::bench::workload;
use crate::cli::{EndpointArg, RunArgs, Workload};
use crate::client::http::{build_body, send, ClientConfig, ImagePayload};
use crate::client::probe;
use crate::client::stream::Endpoint;
use crate::dataset::LoadedDataset;
use crate::dataset::Sample;
use crate::report::journal::{JournalWriter, RequestLine};
use crate::report::serving::{
    self, LevelReport, RequestRecord, ServerInfo, ServingConfig, ServingReport,
};
use crate::report::{DatasetRef, Environment, RunStatus};
use std::sync::Mutex;

pub fn execute(mut args: RunArgs) -> Result<ExitCode> {
    let s = &args.server;
    let base_url = s
        .base_url
        .clone()
        .ok_or_else(|| UsageError("--backend openai needs --base-url http://HOST:PORT".into()))?;
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        usage_bail!("--base-url {base_url:?} must start with http:// or https://");
    }
    if s.concurrency.contains(&0) {
        usage_bail!("--concurrency values must be at least 1");
    }
    if s.request_rate.is_some_and(|r| r.is_nan() || r <= 0.0) || !(s.burstiness > 0.0) {
        usage_bail!("--request-rate must be positive (or inf) and --burstiness positive");
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
    let (models, props) = runtime.block_on(probe::probe(&http, &cfg))?;
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
    let paths = ReportPaths::beside(args.report_file.clone().unwrap_or_else(|| {
        default_report_path(&format!("openai_{}", cfg.model), &dataset.file.name, &stamp)
    }));
    paths.check(&[("--data-file", &data_path)])?;
    let mut report = ServingReport {
        schema_version: crate::report::REPORT_SCHEMA_VERSION,
        kind: "serving".into(),
        status: RunStatus::Complete,
        status_detail: None,
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
        levels: Vec::new(),
    };
    // Each finished request goes to the journal at once (see report::journal).
    let journal = Arc::new(Mutex::new(Some(JournalWriter::create_serving(
        &paths.journal,
        &report,
    )?)));
    let request_samples: Arc<Vec<Sample>> =
        Arc::new(order.iter().map(|&i| samples[i].clone()).collect());
    let journal_tokenizer = Arc::new(tokenizer.clone());
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
        let on_done = {
            let (journal, samples, tokenizer) = (
                journal.clone(),
                request_samples.clone(),
                journal_tokenizer.clone(),
            );
            let (concurrency, request_rate) = (level.concurrency, level.request_rate);
            Arc::new(move |pos: usize, o: &_, elapsed_s: f64| {
                let line = RequestLine {
                    level: k,
                    concurrency,
                    request_rate,
                    elapsed_s,
                    request: record(o, &samples[pos], tokenizer.as_ref().as_ref()),
                };
                let mut j = journal.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(Err(e)) = j.as_mut().map(|w| w.append_request(&line)) {
                    eprintln!("warning: {e:#}; the journal is no longer kept");
                    *j = None;
                }
            })
        };
        let run = runtime.block_on(run_level_reporting(
            http.clone(),
            cfg.clone(),
            bodies.clone(),
            level,
            42 + k as u64,
            cancel.clone(),
            on_done,
        ));
        let records: Vec<RequestRecord> = run
            .outcomes
            .iter()
            .zip(&run.positions)
            .map(|(o, &pos)| record(o, &samples[order[pos]], tokenizer.as_ref()))
            .collect();
        let source = output_tokens_source(&records, cfg.stream_usage, tokenizer.is_some());
        level_reports.push(LevelReport::from_requests(
            level.concurrency,
            level.request_rate,
            run.duration.as_secs_f64(),
            records,
            source,
        ));
        if cancel.load(Ordering::SeqCst) {
            status = RunStatus::Interrupted;
        }
    }

    report.status = status;
    report.status_detail =
        (status == RunStatus::Interrupted).then(|| "interrupted by the user (Ctrl-C)".into());
    report.levels = level_reports;
    let journal_kept = journal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .is_some();
    if !args.quiet {
        print!("{}", serving::render(&report));
    }
    let mut bytes = serde_json::to_vec_pretty(&report).context("cannot serialise the report")?;
    bytes.push(b'\n');
    write_or_rescue(&paths.json, &bytes)?;
    serving::write_csv(&report, &paths.csv)?;
    if journal_kept {
        let _ = std::fs::remove_file(&paths.journal);
    }
    eprintln!(
        "report: {}\nper-request CSV: {}",
        paths.json.display(),
        paths.csv.display()
    );
    if args.plots {
        super::plot::beside_serving_report(&report, &paths.json)?;
    }
    Ok(match report.status {
        RunStatus::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
        _ if report.levels.iter().any(|l| l.failed > 0) => ExitCode::from(EXIT_SOME_FAILED),
        _ => ExitCode::SUCCESS,
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
        usage_bail!("--workload makes its own data set; do not combine it with --data-file");
    }
    let needs_context = workload::workload_spec(w).input_tokens.is_none();
    let context = needs_context
        .then(|| probe::context_length(args.server.context_length, models, props))
        .flatten();
    let plan = workload::prepare(
        w,
        &args.server.concurrency,
        args.server.num_prompts,
        context,
        args.tokenizer.clone(),
    )?;
    args.server.concurrency = plan.concurrency;
    args.server.num_prompts = Some(plan.num_prompts);
    args.max_new_tokens = plan.output_tokens;
    args.ignore_eos = true;
    cfg.max_tokens = plan.output_tokens;
    cfg.ignore_eos = true;
    args.data_file = Some(plan.data_file);
    Ok(())
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
