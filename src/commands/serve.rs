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
use super::serve_inputs::{body_for, replay_max_tokens, run_inputs, ImageCache};
use super::serve_load::{self, apply_workload, server_watch_for, LoadPlan};
use super::serve_output;
use crate::bench::cancel::CancelWatch;
use crate::bench::goodput_search;
use crate::bench::serving::LoadLevel;
use crate::bench::serving_session::{LevelPlan, Session};
use crate::bench::unique_inputs::UniqueInputs;
use crate::cli::{EndpointArg, RunArgs};
use crate::client::cache_reset::reset_cache;
use crate::client::http::{send_until, ClientConfig};
use crate::client::probe;
use crate::client::secret::Scrubber;
use crate::client::stream::Endpoint;
use crate::dataset::cache_sets;
use crate::report::journal::JournalWriter;
use crate::report::serving::extras::{Repeatability, ServingExtras};
use crate::report::serving::{self, LevelReport, ServerInfo, ServingConfig, ServingReport};
use crate::report::{DatasetRef, Environment, RunStatus};
use std::sync::Mutex;

/// Seed of level `k`'s arrival schedule (recorded in the report).
fn arrival_seed(level: usize) -> u64 {
    42 + level as u64
}

/// Runs the served benchmark; every error message is scrubbed of the API key.
pub fn execute(args: RunArgs) -> Result<ExitCode> {
    let scrubber = Scrubber::new(args.server.api_key.as_deref());
    execute_unscrubbed(args).map_err(|e| {
        let message = scrubber.scrub(&format!("{e:#}"));
        // An argument error stays one, so it still exits 2.
        match e.downcast_ref::<UsageError>() {
            Some(_) => anyhow::Error::new(UsageError(message)),
            None => anyhow!("{message}"),
        }
    })
}

fn execute_unscrubbed(mut args: RunArgs) -> Result<ExitCode> {
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
    if s.request_rate.is_some_and(|r| r.is_nan() || r <= 0.0)
        || s.burstiness.is_nan()
        || s.burstiness <= 0.0
    {
        usage_bail!("--request-rate must be positive (or inf) and --burstiness positive");
    }
    // An explicit report path is checked before the server is asked anything.
    if let Some(report_file) = &args.report_file {
        ReportPaths::beside(report_file.clone()).check(&run_inputs(&args))?;
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
    let scrubber = Scrubber::new(cfg.api_key.as_deref());
    let probe::ServerSelf {
        mut models,
        mut props,
        mut facts,
    } = runtime.block_on(probe::probe(&http, &cfg))?;
    for v in [models.as_mut(), props.as_mut()]
        .into_iter()
        .flatten()
        .chain(facts.values_mut())
    {
        scrubber.scrub_json(v);
    }
    let (watch, watch_unavailable) = runtime.block_on(server_watch_for(&args.server, &cfg))?;
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
                usage_bail!("--replay makes its own requests; do not combine it with --data-file");
            }
            (path.clone(), serve_load::trace_dataset(path, trace)?)
        }
        None => load_dataset(args.data_file.as_deref())?,
    };
    if endpoint == Endpoint::Completions
        && dataset.file.samples.iter().any(|x| !x.images.is_empty())
    {
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
    let conversation_set = samples
        .iter()
        .any(|x| cache_sets::conversation_turn(x).is_some());
    if conversation_set {
        if endpoint == Endpoint::Completions {
            usage_bail!(
                "{} is a conversation set, which needs --endpoint chat",
                data_path.display()
            );
        }
        if plan.replay.is_some() || plan.ramp.is_some() || plan.shard.is_some() {
            usage_bail!("a conversation set keeps its own turn order: do not combine it with --replay, --ramp-up or --shard");
        }
        if s.num_prompts.is_some() {
            usage_bail!("--num-prompts does not apply to a conversation set: each level sends every turn of every conversation once");
        }
    }
    let num_prompts = match &plan.replay {
        Some(_) => samples.len(),
        None => s.num_prompts.unwrap_or(samples.len()),
    };
    // A shard sends only its own part of the schedule.
    let owned = plan.owned(num_prompts);
    // Every request's inputs (a repeat made unique unless --repeat-inputs), and its body with
    // images base64-encoded, are made before any clock starts.
    // A replayed trace's prompts are sent as the trace made them: its shared blocks are meant
    // to share the server's prefix cache.
    let mut inputs =
        UniqueInputs::new(s.repeat_inputs || plan.replay.is_some(), tokenizer.as_ref());
    inputs.set_cache_workload(cache_sets::describe(&dataset.file));
    let mut images = ImageCache::default();
    let mut requests_for = |count: usize,
                            inputs: &mut UniqueInputs,
                            warm_up: bool|
     -> Result<(Vec<Vec<u8>>, Vec<crate::dataset::Sample>)> {
        let mut bodies = Vec::with_capacity(count);
        let mut sent = Vec::with_capacity(count);
        for i in 0..count {
            let sample = &samples[i % samples.len()];
            let read = images.get(&dataset, sample)?;
            let sample_images: Vec<(&str, &[u8])> =
                read.iter().map(|(m, b)| (*m, &b[..])).collect();
            let input = if warm_up {
                inputs.next_warm_up(sample, &sample_images)?
            } else {
                inputs.next_for(sample, &sample_images)?
            };
            bodies.push(body_for(&cfg, &input, replay_max_tokens(&dataset, sample)));
            sent.push(crate::dataset::Sample {
                prompt: input.prompt,
                ..sample.clone()
            });
        }
        Ok((bodies, sent))
    };
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
    let (warm_bodies, _) = requests_for(args.warmup.min(num_prompts), &mut inputs, true)?;
    for body in warm_bodies {
        if cancel.load(Ordering::SeqCst) {
            break;
        }
        let o = runtime.block_on(async {
            let mut watch = CancelWatch::spawn(cancel.clone());
            send_until(&http, &cfg, body, std::time::Instant::now(), async move {
                watch.cancelled().await
            })
            .await
        });
        if let Some(e) = o.error {
            eprintln!("warm-up request failed: {e}");
        }
    }

    let (started_at, stamp) = utc_now();
    let paths = ReportPaths::beside(args.report_file.clone().unwrap_or_else(|| {
        default_report_path(&format!("openai_{}", cfg.model), &dataset.file.name, &stamp)
    }));
    let mut read_files = run_inputs(&args);
    read_files.push(("--data-file", &data_path));
    paths.check(&read_files)?;
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
            facts,
            launch_args: s.server_args.as_deref().map(|a| scrubber.scrub(a)),
        },
        config: ServingConfig {
            max_tokens: args.max_new_tokens,
            ignore_eos: args.ignore_eos,
            stream_usage_requested: cfg.stream_usage,
            num_prompts,
            warmup_requests: args.warmup.min(num_prompts),
            request_timeout_s: s.request_timeout,
            burstiness: s.burstiness,
            input_policy: Some(inputs.policy().clone()),
        },
        dataset: DatasetRef::of(&data_path, &dataset),
        extras: ServingExtras::default(),
        levels: Vec::new(),
    };
    // Each finished request goes to the journal at once (see report::journal).
    let journal = Arc::new(Mutex::new(Some(JournalWriter::create_serving(
        &paths.journal,
        &report,
    )?)));
    let session = Session {
        runtime: &runtime,
        http: http.clone(),
        cfg: cfg.clone(),
        cancel: cancel.clone(),
        watch: &watch,
        journal: journal.clone(),
        tokenizer: tokenizer.clone().map(Arc::new),
        conversations: conversation_set,
        slos: plan.slos.clone(),
        shard: plan.shard.map(|s| s.index),
    };
    let mut level_reports = Vec::new();
    let mut status = RunStatus::Complete;
    let mut resets = Vec::new();
    // Runs one level (run `run` of it, `k`-th overall) and adds its report.
    let mut run_one = |level: &LoadLevel,
                       k: usize,
                       run: usize,
                       reports: &mut Vec<LevelReport>,
                       resets: &mut Vec<String>|
     -> Result<()> {
        let (bodies, sent) = requests_for(num_prompts, &mut inputs, false)?;
        let (bodies, sent): (Vec<Vec<u8>>, Vec<crate::dataset::Sample>) = bodies
            .into_iter()
            .zip(sent)
            .enumerate()
            .filter(|(i, _)| plan.shard.is_none_or(|s| s.owns(*i)))
            .map(|(_, x)| x)
            .unzip();
        if s.reset_cache {
            match runtime.block_on(reset_cache(&http, &cfg)) {
                Ok(path) => resets.push(path),
                Err(why) => {
                    eprintln!("warning: --reset-cache: the server has no cache reset ({why})");
                    resets.push(format!("none answered ({why})"));
                }
            }
        }
        eprintln!(
            "level {}: {}{}, {} requests ...",
            match plan.search {
                None => format!("{}/{}", k + 1, levels.len()),
                Some(_) => format!("{} (search)", k + 1),
            },
            match (&plan.replay, plan.ramp) {
                (Some(_), _) => "trace replay".to_string(),
                (None, Some((_, r0, r1))) => format!(
                    "{}, ramp-up {r0} -> {r1} requests/s",
                    describe_level(level).split(',').next().unwrap_or_default()
                ),
                (None, None) => describe_level(level),
            },
            if plan.runs > 1 {
                format!(", run {}/{}", run + 1, plan.runs)
            } else {
                String::new()
            },
            bodies.len()
        );
        let offsets = plan.offsets(level, num_prompts, &owned, arrival_seed(k));
        let lr = session.measure(LevelPlan {
            level: level.clone(),
            index: k,
            run: (plan.runs > 1).then_some(run),
            bodies,
            sent,
            concurrency: plan.concurrency(level.concurrency),
            arrival_seed: (offsets.is_some() && plan.replay.is_none()).then(|| arrival_seed(k)),
            offsets,
            start: plan.start(),
        });
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
        Ok(())
    };
    let mut search_report = None;
    if let Some((spec, target)) = &plan.search {
        // The level a probe runs: the searched value, the other settings as given.
        let base = LoadLevel {
            concurrency: s.concurrency.first().copied(),
            request_rate: s.request_rate,
            burstiness: s.burstiness,
        };
        search_report = Some(goodput_search::search_levels(
            spec,
            *target,
            &base,
            &cancel,
            |level| {
                let k = level_reports.len();
                run_one(level, k, 0, &mut level_reports, &mut resets)?;
                let goodput = level_reports[k]
                    .extras
                    .goodput
                    .clone()
                    .expect("search runs with SLOs");
                Ok((k, goodput))
            },
        )?);
    } else {
        'levels: for (k, level) in levels.iter().enumerate() {
            for run in 0..plan.runs {
                if cancel.load(Ordering::SeqCst) {
                    break 'levels;
                }
                run_one(level, k, run, &mut level_reports, &mut resets)?;
            }
        }
    }
    if cancel.load(Ordering::SeqCst) {
        status = RunStatus::Interrupted;
    }
    if s.reset_cache {
        resets.dedup();
        inputs.set_cache_reset(resets.join("; "));
    }

    report.config.input_policy = Some(inputs.policy().clone());
    report.extras = ServingExtras {
        goodput_slos: plan.slos.clone(),
        goodput_search: search_report,
        repeatability: Repeatability::group(&level_reports),
        arrival: plan.arrival_info(),
        shard: plan.shard_info(),
        merged_from: Vec::new(),
        server_metrics_unavailable: watch_unavailable.0,
        server_gpus_unavailable: watch_unavailable.1,
    };

    report.status = status;
    report.status_detail = (status == RunStatus::Interrupted)
        .then(|| "interrupted by a signal (Ctrl-C, SIGTERM or SIGHUP)".into());
    report.levels = level_reports;
    let journal_kept = journal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .is_some();
    if !args.quiet {
        print!("{}", serving::render(&report));
        print!("{}", crate::report::serving::extras::render(&report));
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
    serve_output::write_extras(&report, &s.load)?;
    let code = match report.status {
        RunStatus::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
        _ if report.levels.iter().any(|l| l.failed > 0) => ExitCode::from(EXIT_SOME_FAILED),
        _ => ExitCode::SUCCESS,
    };
    if args.plots {
        if let Err(e) = super::plot::beside_serving_report(&report, &paths.json) {
            // A run with failed requests (or interrupted) keeps saying so; an otherwise clean
            // run fails on the charts.
            if code == ExitCode::SUCCESS {
                return Err(e.context("the report was written, but the charts were not"));
            }
            eprintln!("Error: the charts were not written: {e:#}");
        }
    }
    Ok(code)
}

/// A level's load in words: "concurrency 4, 2 requests/s".
fn describe_level(level: &LoadLevel) -> String {
    let c = match level.concurrency {
        Some(c) => format!("concurrency {c}"),
        None => "unlimited concurrency".into(),
    };
    match level.request_rate.filter(|r| r.is_finite()) {
        Some(r) => format!("{c}, {r} requests/s"),
        None => format!("{c}, all requests due at once"),
    }
}
