//! `vlmbench run`: load the engine, run the set, write the reports.
//!
//! Order matters for what a fault can lose: the arguments and the report destination are
//! checked before the model loads; each finished sample goes to the journal as it finishes;
//! the summary table is printed before any file is written; a report that cannot be written
//! where asked is saved to a temporary file.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;

use super::common::{
    default_report_path, dtype_of, install_ctrl_c, load_dataset, progress_bar, usage_bail, utc_now,
    EXIT_INTERRUPTED, EXIT_SOME_FAILED,
};
use super::destination::{write_or_rescue, ReportPaths};
use crate::bench::runner::{self, RunOptions};
use crate::cli::{Cli, Command, RunArgs};
use crate::memory::GpuSampler;
use crate::report::bandwidth::DecodeBandwidth;
use crate::report::compute::PrefillCompute;
use crate::report::environment::logical_cpus;
use crate::report::journal::{Journal, JournalWriter, RunHeader};
use crate::report::{self, DatasetRef, Environment, Report, RunConfig, RunStatus};

/// How often the GPU memory sampler reads NVML.
const GPU_SAMPLE_INTERVAL_MS: u64 = 20;

/// candle's setting of how long its pool's workers spin before parking.
const CANDLE_SPIN_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// `--threads` above this many times the logical CPU count is refused: oversubscription that
/// far only measures the scheduler (thousands of threads turn a 0.02 s job into 39 s).
pub const MAX_THREADS_PER_CPU: usize = 8;

/// The arguments `vlmbench` alone runs with.
pub fn default_args() -> RunArgs {
    match Cli::parse_from(["vlmbench", "run"]).command {
        Some(Command::Run(args)) => *args,
        _ => unreachable!("`vlmbench run` parses to the run command"),
    }
}

/// The model `run` uses when none is given.
pub const DEFAULT_MODEL: &str = "random:tiny-llava";

/// Checks `--threads` against the machine: refused when absurd, a warning when above the
/// logical CPU count (returned, for the caller to print).
pub fn check_threads(threads: usize, cpus: usize) -> Result<Option<String>> {
    if threads == 0 {
        usage_bail!("--threads must be at least 1");
    }
    let max = cpus * MAX_THREADS_PER_CPU;
    if threads > max {
        usage_bail!(
            "--threads {threads} is more than {MAX_THREADS_PER_CPU} threads per logical CPU ({cpus} here, so at most {max}); give at most {cpus} to measure the model rather than the scheduler"
        );
    }
    Ok((threads > cpus).then(|| {
        format!("warning: --threads {threads} is more than the {cpus} logical CPUs here: threads will share cores and the numbers will be slower than the machine can do")
    }))
}

pub fn execute(args: RunArgs) -> Result<ExitCode> {
    if args.backend == crate::cli::Backend::Openai {
        return super::serve::execute(args);
    }
    if args.server.base_url.is_some() {
        usage_bail!("--base-url needs --backend openai");
    }
    let model = args
        .model_path
        .clone()
        .unwrap_or_else(|| DEFAULT_MODEL.to_string());
    if args.repeat == 0 {
        usage_bail!("--repeat must be at least 1");
    }
    if args.max_new_tokens == 0 {
        usage_bail!("--max-new-tokens must be at least 1");
    }
    if args.limit == Some(0) {
        usage_bail!(
            "--limit 0 would measure nothing; give at least 1 (or leave it out for the whole set)"
        );
    }
    // As the user's environment had it, before --threads sets it.
    let rayon_env = std::env::var("RAYON_NUM_THREADS").ok();
    if let Some(n) = args.threads {
        if let Some(warning) = check_threads(n, logical_cpus())? {
            eprintln!("{warning}");
        }
        // candle's CPU kernels size their thread pools from this variable on first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // candle runs its element-wise operations on a pool of its own whose workers spin 25,000
    // times after each operation before parking. The engine's kernels run on a rayon pool of
    // the same size, so a spinning candle worker takes a core from them (7 % of a two-thread
    // prefill's CPU time went to it; TTFT fell 5-7 % with a short spin). Unless the user set
    // it, candle's workers park after a short spin and are woken when candle needs them.
    if std::env::var_os(CANDLE_SPIN_VAR).is_none() {
        std::env::set_var(CANDLE_SPIN_VAR, "1000");
    }
    // Before any pool starts: a long prompt's layer buffers are then reused, not faulted in
    // afresh per layer (see `memory::allocator`).
    crate::memory::allocator::keep_freed_memory();

    // Installed before the model loads, so a Ctrl-C at any point still ends in a report.
    let cancel = install_ctrl_c();

    let (data_path, dataset) = load_dataset(args.data_file.as_deref())?;
    let (started_iso, started_compact) = utc_now();
    let paths = ReportPaths::beside(
        args.report_file
            .clone()
            .unwrap_or_else(|| default_report_path(&model, &dataset.file.name, &started_compact)),
    );
    let mut inputs: Vec<(&str, &Path)> = vec![("--data-file", &data_path)];
    if let Some(t) = &args.tokenizer {
        inputs.push(("--tokenizer", t));
    }
    let model_path = Path::new(&model);
    if model_path.exists() {
        inputs.push(("--model-path", model_path));
    }
    paths.check(&inputs)?;

    let options = crate::engine::open::EngineOptions {
        model: model.clone(),
        dtype: dtype_of(args.dtype),
        device: args.device.clone(),
        tokenizer: args.tokenizer.clone(),
        seed: args.seed,
        prompt_template: args.prompt_template.clone(),
        kv_cache_dtype: dtype_of(args.kv_cache_dtype),
    };
    eprintln!("loading {model} ...");
    let mut engine = crate::engine::open::open_engine(&options)?;
    // The weights are in place now: ask for huge pages under them (CPU engines only).
    let huge_page_bytes = engine
        .cpu_threads()
        .and_then(|_| crate::memory::huge_pages::collapse_large_buffers());
    let info = engine.info().clone();
    if !info.vision && dataset.file.samples.iter().any(|s| !s.images.is_empty()) {
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
    let mut environment = Environment::capture(gpu_ordinal);
    environment.model_threads = engine.cpu_threads();
    environment.rayon_num_threads_env = rayon_env;
    environment.huge_page_bytes = huge_page_bytes;
    let header = RunHeader {
        schema_version: report::REPORT_SCHEMA_VERSION,
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
            kv_cache_dtype: options.kv_cache_dtype.map(|d| d.as_str().to_string()),
        },
        dataset: DatasetRef::of(&data_path, &dataset),
    };
    let mut journal = Some(JournalWriter::create(&paths.journal, &header)?);
    let total = dataset
        .file
        .samples
        .len()
        .min(args.limit.unwrap_or(usize::MAX))
        * args.repeat;
    let progress = progress_bar(total as u64);
    let sampler = GpuSampler::start(gpu_ordinal, GPU_SAMPLE_INTERVAL_MS);
    let mut on_sample = |s: &report::SampleRecord, elapsed_s: f64| {
        let Some(j) = journal.as_mut() else { return };
        if let Err(e) = j.append(elapsed_s, s) {
            // The run goes on; only a kill would now lose its samples.
            progress.suspend(|| eprintln!("warning: {e:#}; the journal is no longer kept"));
            journal = None;
        }
    };
    // The machine's read bandwidth and f32 product rate, by the engine's own threads, before
    // anything is timed (CPU runs only); again after the samples (below), keeping the better
    // of the two, as a shared machine's bandwidth moves from minute to minute.
    let before = MachineProbe::take(engine.as_ref());
    let outcome = runner::run(
        engine.as_mut(),
        &dataset,
        &opts,
        &cancel,
        &progress,
        &mut on_sample,
    );
    let memory = sampler.finish().with_pool_peaks(
        outcome
            .samples
            .iter()
            .filter_map(|s| s.metrics.as_ref().and_then(|m| m.gpu_pool_peaks.as_ref())),
    );
    progress.finish_and_clear();

    // The report is built from what the journal holds (what a recovery would see), as long
    // as the journal was kept for the whole run.
    let journal_kept = journal.is_some();
    drop(journal);
    let samples = match journal_kept.then(|| Journal::read(&paths.journal)) {
        Some(Ok(j)) if j.samples.len() == outcome.samples.len() => j.records(),
        _ => outcome.samples,
    };
    let mut report = Report::from_parts(
        header,
        outcome.status,
        outcome.status_detail,
        samples,
        outcome.duration_s,
        memory,
    );
    let probe = if cancel.load(std::sync::atomic::Ordering::SeqCst) {
        before
    } else {
        before.best_with(MachineProbe::take(engine.as_ref()))
    };
    report.decode_bandwidth = probe.bandwidth.and_then(|(machine, probe)| {
        DecodeBandwidth::over(
            &report.samples,
            |context| engine.decode_read_bytes(context).unwrap_or_default(),
            machine,
            probe,
        )
    });
    report.prefill_compute = probe.gemm.and_then(|(machine, shape)| {
        PrefillCompute::over(
            &report.samples,
            |prompt| engine.prefill_flops(prompt).unwrap_or_default(),
            machine,
            shape,
        )
    });
    if !args.quiet {
        print!("{}", report::table::render(&report));
    }
    finish_files(&report, &paths, journal_kept)?;
    if let Some(trace) = crate::profile::finish() {
        let (trace_path, stats_path) = crate::profile::write(&trace, &paths.json)?;
        eprintln!(
            "profile: {} (chrome://tracing, ui.perfetto.dev)\nprofiler stats: {}",
            trace_path.display(),
            stats_path.display()
        );
    }
    let plots = if args.plots {
        super::plot::beside_report(&report, &paths.json)
    } else {
        Ok(())
    };
    let code = exit_code(&report)?;
    if let Err(e) = plots {
        // A run with failed samples (or interrupted) keeps saying so; an otherwise clean run
        // fails on the charts.
        if code == ExitCode::SUCCESS {
            return Err(e.context("the report was written, but the charts were not"));
        }
        eprintln!("Error: the charts were not written: {e:#}");
    }
    Ok(code)
}

/// Writes the JSON and the CSV (the JSON saved to a temporary file if its place fails), then
/// deletes the journal if the report holds everything it did.
fn finish_files(report: &Report, paths: &ReportPaths, journal_kept: bool) -> Result<()> {
    let written = write_or_rescue(&paths.json, &report::json::to_bytes(report)?);
    if let Err(e) = &written {
        eprintln!(
            "Error: {e:#}\nthe journal {} still holds every sample",
            paths.journal.display()
        );
    }
    written?;
    report::csv::write(report, &paths.csv)?;
    if journal_kept {
        let _ = std::fs::remove_file(&paths.journal);
    }
    eprintln!(
        "report: {}\nper-sample CSV: {}",
        paths.json.display(),
        paths.csv.display()
    );
    Ok(())
}

/// The exit code README promises for how the run ended.
fn exit_code(report: &Report) -> Result<ExitCode> {
    Ok(match report.status {
        RunStatus::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
        RunStatus::Aborted => {
            bail!(
                "{} (the report holds the {} samples that finished)",
                report.status_detail.as_deref().unwrap_or("engine error"),
                report.samples.len()
            )
        }
        RunStatus::Complete if report.samples.is_empty() => {
            bail!("the run measured nothing (no sample was run)")
        }
        RunStatus::Complete if report.summary.failed > 0 => ExitCode::from(EXIT_SOME_FAILED),
        RunStatus::Complete => ExitCode::SUCCESS,
    })
}

/// What the engine's threads reach on this machine: read bandwidth over a buffer the size of
/// the weights (within 64 MiB..1 GiB) and the f32 matrix-product rate (`None` off the CPU).
#[derive(Debug, Clone, Copy)]
struct MachineProbe {
    bandwidth: Option<(f64, u64)>,
    gemm: Option<(f64, [usize; 3])>,
}

impl MachineProbe {
    fn take(engine: &dyn crate::engine::Engine) -> Self {
        let bandwidth = engine.decode_read_bytes(1).and_then(|b| {
            let probe = b.weights.clamp(64 << 20, 1 << 30);
            engine.read_bandwidth(probe).map(|bw| (bw, probe))
        });
        Self {
            bandwidth,
            gemm: engine.gemm_rate(),
        }
    }

    /// The better reading of each figure.
    fn best_with(self, other: Self) -> Self {
        fn best<T: Copy>(a: Option<(f64, T)>, b: Option<(f64, T)>) -> Option<(f64, T)> {
            match (a, b) {
                (Some(x), Some(y)) => Some(if y.0 > x.0 { y } else { x }),
                (x, y) => x.or(y),
            }
        }
        Self {
            bandwidth: best(self.bandwidth, other.bandwidth),
            gemm: best(self.gemm, other.gemm),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_are_checked_against_the_machine() {
        assert_eq!(check_threads(2, 2).unwrap(), None);
        let w = check_threads(3, 2).unwrap().unwrap();
        assert!(w.contains("more than the 2 logical CPUs"), "{w}");
        for absurd in [0, 17, 5000] {
            let e = check_threads(absurd, 2).unwrap_err();
            assert!(
                e.downcast_ref::<super::super::common::UsageError>()
                    .is_some(),
                "{e}"
            );
        }
        assert!(check_threads(16, 2).is_ok());
    }
}
