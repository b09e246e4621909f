//! `vlmbench run --backend openai`: drive an OpenAI-compatible server at one or more load
//! levels and write a serving report.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::Tokenizer;

use super::common::{
    default_report_path, install_ctrl_c, load_dataset, utc_now, EXIT_INTERRUPTED, EXIT_SOME_FAILED,
};
use super::serve_load::{self, LoadPlan};
use super::serve_output;
use crate::bench::goodput_search::{self, SearchOver};
use crate::bench::request_detail::detail;
use crate::bench::request_record::{output_tokens_source, record};
use crate::bench::serving::{run_scheduled, LoadLevel};
use crate::bench::workload;
use crate::cli::{EndpointArg, RunArgs, Workload};
use crate::client::http::{build_body, send, ClientConfig, ImagePayload};
use crate::client::probe;
use crate::client::stream::Endpoint;
use crate::dataset::LoadedDataset;
use crate::report::serving::{
    self, LevelReport, RequestRecord, ServerInfo, ServingConfig, ServingReport,
};
use crate::report::serving_extras::{
    LevelExtras, Repeatability, SearchReport, SearchStep, ServingExtras,
};
use crate::report::{DatasetRef, Environment, RunStatus};

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
    let plan = LoadPlan::from_args(
        &s.load,
        s.request_rate.is_some(),
        s.concurrency.len().max(1),
    )?;
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
    let (data_path, dataset) = match &plan.replay {
        Some((path, trace, _)) => {
            if args.data_file.is_some() {
                bail!("--replay makes its own requests; do not combine it with --data-file");
            }
            (path.clone(), serve_load::trace_dataset(path, trace)?)
        }
        None => load_dataset(args.data_file.as_deref())?,
    };
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
    let num_prompts = match &plan.replay {
        Some(_) => samples.len(),
        None => s.num_prompts.unwrap_or(samples.len()),
    };
    // Bodies (images base64-encoded) are built before any clock starts. A shard builds only
    // its own part of the schedule.
    let owned = plan.owned(num_prompts);
    let mut bodies = Vec::with_capacity(owned.len());
    let mut order = Vec::with_capacity(owned.len());
    for &i in &owned {
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
        && plan.ramp.is_none()
        && plan.replay.is_none()
        && plan.search.is_none()
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
    // Runs one level (run `run` of it, `k`-th overall) and adds its report.
    let run_one = |level: &LoadLevel, k: usize, run: usize, reports: &mut Vec<LevelReport>| {
        eprintln!(
            "level {}: concurrency {:?}, rate {:?}{}, {} requests ...",
            k + 1,
            level.concurrency,
            level.request_rate,
            if plan.runs > 1 {
                format!(", run {}/{}", run + 1, plan.runs)
            } else {
                String::new()
            },
            bodies.len()
        );
        let seed = 42 + k as u64;
        let offsets = plan.offsets(level, num_prompts, &owned, seed);
        let start = plan.start();
        let run_out = runtime.block_on(run_scheduled(
            http.clone(),
            cfg.clone(),
            bodies.clone(),
            plan.concurrency(level.concurrency),
            offsets,
            start,
            cancel.clone(),
        ));
        let records: Vec<RequestRecord> = run_out
            .outcomes
            .iter()
            .zip(&run_out.positions)
            .map(|(o, &pos)| {
                let core = record(o, &samples[order[pos]], tokenizer.as_ref());
                let mut detail = detail(o, run_out.start, core.output_tokens, tokenizer.as_ref());
                detail.shard = plan.shard.map(|s| s.index);
                RequestRecord { detail, ..core }
            })
            .collect();
        let source = output_tokens_source(&records, cfg.stream_usage, tokenizer.is_some());
        let mut lr = LevelReport::from_requests(
            level.concurrency,
            level.request_rate,
            run_out.duration.as_secs_f64(),
            records,
            source,
        );
        lr.extras = LevelExtras::over(&lr.requests, lr.duration, plan.slos.as_ref());
        lr.extras.run = (plan.runs > 1).then_some(run);
        if let Some(g) = &lr.extras.goodput {
            eprintln!(
                "  goodput: {}/{} requests met the SLOs ({:.1} %), {:.3} req/s",
                g.good,
                lr.requests.len(),
                g.share * 100.0,
                g.request_goodput
            );
        }
        reports.push(lr);
    };
    let mut search_report = None;
    if let Some((spec, target)) = &plan.search {
        let mut steps = Vec::new();
        let outcome = goodput_search::search(spec, |v| {
            if cancel.load(Ordering::SeqCst) {
                return false;
            }
            let level = match spec.over {
                SearchOver::RequestRate => LoadLevel {
                    concurrency: s.concurrency.first().copied(),
                    request_rate: Some(v),
                    burstiness: s.burstiness,
                },
                SearchOver::Concurrency => LoadLevel {
                    concurrency: Some(v as usize),
                    request_rate: s.request_rate,
                    burstiness: s.burstiness,
                },
            };
            let k = level_reports.len();
            run_one(&level, k, 0, &mut level_reports);
            let g = level_reports[k]
                .extras
                .goodput
                .clone()
                .expect("search runs with SLOs");
            let passed = g.share >= *target;
            eprintln!(
                "  search: {} = {v} {}",
                spec.over.name(),
                if passed {
                    "passed"
                } else {
                    "missed the target"
                }
            );
            steps.push(SearchStep {
                value: v,
                goodput_share: g.share,
                request_goodput: g.request_goodput,
                passed,
                level_index: k,
            });
            passed
        });
        eprintln!(
            "goodput search: highest {} meeting {:.0} % goodput: {} ({})",
            spec.over.name(),
            target * 100.0,
            outcome
                .best
                .map(|b| b.to_string())
                .unwrap_or_else(|| "none".into()),
            outcome.stopped
        );
        search_report = Some(SearchReport {
            over: spec.over.name().into(),
            target_share: *target,
            range: [spec.low, spec.high],
            best: outcome.best,
            lowest_failing: outcome.lowest_failing,
            stopped: outcome.stopped.into(),
            steps,
        });
    } else {
        'levels: for (k, level) in levels.iter().enumerate() {
            for run in 0..plan.runs {
                if cancel.load(Ordering::SeqCst) {
                    break 'levels;
                }
                run_one(level, k, run, &mut level_reports);
            }
        }
    }
    if cancel.load(Ordering::SeqCst) {
        status = RunStatus::Interrupted;
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
        extras: ServingExtras {
            goodput_slos: plan.slos.clone(),
            goodput_search: search_report,
            repeatability: Repeatability::group(&level_reports),
            arrival: plan.arrival_info(),
            shard: plan.shard_info(),
            merged_from: Vec::new(),
        },
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
        print!("{}", crate::report::serving_extras::render(&report));
    }
    eprintln!(
        "report: {}\nper-request CSV: {}",
        json_path.display(),
        csv_path.display()
    );
    serve_output::write_extras(&report, &json_path, &s.load)?;
    if args.plots {
        super::plot::beside_serving_report(&report, &json_path)?;
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
        bail!("--workload makes its own data set; do not combine it with --data-file");
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
    // A replayed trace request asks for its own output length.
    let replay_tokens = (dataset.file.set == "trace")
        .then(|| sample.fields.get(serve_load::REPLAY_MAX_TOKENS_FIELD))
        .flatten()
        .and_then(|v| v.as_u64());
    if let Some(n) = replay_tokens {
        let cfg = ClientConfig {
            max_tokens: n as usize,
            ..cfg.clone()
        };
        return Ok(build_body(&cfg, &sample.prompt, None));
    }
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
