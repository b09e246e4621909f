//! `vlmbench run`: load the engine, run the set, write the reports.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;

use super::common::{
    default_report_path, dtype_of, install_ctrl_c, load_dataset, progress_bar, utc_now,
    EXIT_INTERRUPTED, EXIT_SOME_FAILED,
};
use crate::bench::runner::{self, RunOptions};
use crate::cli::{Cli, Command, RunArgs};
use crate::memory::GpuSampler;
use crate::report::{self, DatasetRef, Environment, Report, RunConfig, RunStatus, RunSummary};

/// How often the GPU memory sampler reads NVML.
const GPU_SAMPLE_INTERVAL_MS: u64 = 20;

/// The arguments `vlmbench` alone runs with.
pub fn default_args() -> RunArgs {
    match Cli::parse_from(["vlmbench", "run"]).command {
        Some(Command::Run(args)) => *args,
        _ => unreachable!("`vlmbench run` parses to the run command"),
    }
}

/// The model `run` uses when none is given.
pub const DEFAULT_MODEL: &str = "random:tiny-llava";

pub fn execute(args: RunArgs) -> Result<ExitCode> {
    if args.backend == crate::cli::Backend::Openai {
        return super::serve::execute(args);
    }
    if args.server.base_url.is_some() {
        bail!("--base-url needs --backend openai");
    }
    let model = args
        .model_path
        .clone()
        .unwrap_or_else(|| DEFAULT_MODEL.to_string());
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // candle's CPU kernels size their thread pools from this variable on first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }

    // Installed before the model loads, so a Ctrl-C at any point still ends in a report.
    let cancel = install_ctrl_c();

    let (data_path, dataset) = load_dataset(args.data_file.as_deref())?;
    let options = crate::engine::open::EngineOptions {
        model: model.clone(),
        dtype: dtype_of(args.dtype),
        device: args.device.clone(),
        tokenizer: args.tokenizer.clone(),
        seed: args.seed,
        prompt_template: args.prompt_template.clone(),
    };
    eprintln!("loading {model} ...");
    let mut engine = crate::engine::open::open_engine(&options)?;
    let info = engine.info().clone();
    if !info.vision && dataset.file.samples.iter().any(|s| s.image.is_some()) {
        bail!(
            "{} has images but {} ({}) is a text-only model; use a vision model (e.g. random:tiny-llava) or a text set (vlmbench prepare prompts)",
            data_path.display(),
            info.model,
            info.architecture
        );
    }
    let gpu_ordinal = info
        .device
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<usize>().ok());

    let opts = RunOptions {
        max_new_tokens: args.max_new_tokens,
        ignore_eos: args.ignore_eos,
        warmup: args.warmup,
        limit: args.limit,
        repeat: args.repeat,
        profile: args.profile,
    };
    let total = dataset
        .file
        .samples
        .len()
        .min(args.limit.unwrap_or(usize::MAX))
        * args.repeat;
    let progress = progress_bar(total as u64);
    let (started_iso, started_compact) = utc_now();
    let environment = Environment::capture(gpu_ordinal);
    let sampler = GpuSampler::start(gpu_ordinal, GPU_SAMPLE_INTERVAL_MS);
    let outcome = runner::run(engine.as_mut(), &dataset, &opts, &cancel, &progress);
    let memory = sampler.finish().with_pool_peaks(
        outcome
            .samples
            .iter()
            .filter_map(|s| s.metrics.as_ref().and_then(|m| m.gpu_pool_peaks.as_ref())),
    );
    progress.finish_and_clear();

    let report = Report {
        schema_version: report::REPORT_SCHEMA_VERSION,
        status: outcome.status,
        status_detail: outcome.status_detail.clone(),
        started_at: started_iso,
        environment,
        engine: info.clone(),
        config: RunConfig {
            max_new_tokens: opts.max_new_tokens,
            ignore_eos: opts.ignore_eos,
            warmup: opts.warmup,
            limit: opts.limit,
            repeat: opts.repeat,
            decoding: "greedy (temperature 0)".into(),
        },
        dataset: DatasetRef::of(&data_path, &dataset),
        summary: RunSummary::from_samples(&outcome.samples, outcome.duration_s),
        memory,
        samples: outcome.samples,
    };
    let json_path = args
        .report_file
        .clone()
        .unwrap_or_else(|| default_report_path(&info.model, &dataset.file.name, &started_compact));
    let csv_path = json_path.with_extension("csv");
    report::json::write(&report, &json_path)?;
    report::csv::write(&report, &csv_path)?;
    if let Some(trace) = crate::profile::finish() {
        let (trace_path, stats_path) = crate::profile::write(&trace, &json_path)?;
        eprintln!(
            "profile: {} (chrome://tracing, ui.perfetto.dev)\nprofiler stats: {}",
            trace_path.display(),
            stats_path.display()
        );
    }
    if !args.quiet {
        print!("{}", report::table::render(&report));
    }
    eprintln!(
        "report: {}\nper-sample CSV: {}",
        json_path.display(),
        csv_path.display()
    );
    if args.plots {
        super::plot::beside_report(&report, &json_path)?;
    }

    Ok(match report.status {
        RunStatus::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
        RunStatus::Aborted => {
            bail!(
                "{} (the report holds the {} samples that finished)",
                report.status_detail.as_deref().unwrap_or("engine error"),
                report.samples.len()
            )
        }
        RunStatus::Complete if report.summary.failed > 0 => ExitCode::from(EXIT_SOME_FAILED),
        RunStatus::Complete => ExitCode::SUCCESS,
    })
}
