//! `vlmbench recover`: the report of a run that stopped without writing one (killed, crashed,
//! power lost), built from the journal it kept beside its report.

use std::process::ExitCode;

use anyhow::Result;

use super::destination::{write_or_rescue, ReportPaths};
use crate::cli::RecoverArgs;
use crate::memory::{MaybeBytes, MemoryReport};
use crate::report::journal::{self, Journal};
use crate::report::{self, Report, RunStatus};

pub fn execute(args: RecoverArgs) -> Result<ExitCode> {
    let journal = Journal::read(&args.journal)?;
    let json = args
        .report_file
        .clone()
        .unwrap_or_else(|| journal::report_path_for(&args.journal));
    let paths = ReportPaths::beside(json);
    // The journal being recovered is the input; it stays until the report is written.
    paths.check_report_files(&[("journal", &args.journal)])?;

    let report = recovered(&journal);
    write_or_rescue(&paths.json, &report::json::to_bytes(&report)?)?;
    report::csv::write(&report, &paths.csv)?;
    let _ = std::fs::remove_file(&args.journal);
    eprintln!(
        "recovered {} samples{}\nreport: {}\nper-sample CSV: {}",
        report.samples.len(),
        if journal.torn_tail {
            " (a last line cut short by the stop was skipped)"
        } else {
            ""
        },
        paths.json.display(),
        paths.csv.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The report of what the journal holds: an interrupted run whose duration ends at its last
/// finished sample and whose peak memory was never read.
pub fn recovered(journal: &Journal) -> Report {
    let not_read = || MaybeBytes::unknown("not measured: the run stopped before reading it");
    Report::from_parts(
        journal.header.clone(),
        RunStatus::Interrupted,
        Some(format!(
            "rebuilt from the run's journal: the run stopped after {} measured samples without writing its report",
            journal.samples.len()
        )),
        journal.records(),
        journal.elapsed_s(),
        MemoryReport {
            host_peak_rss: not_read(),
            gpu_peak_process: not_read(),
            gpu_peak_device: not_read(),
            gpu_sample_interval_ms: None,
            gpu_pool_peak_prefill: not_read(),
            gpu_pool_peak_decode: not_read(),
        },
    )
}
