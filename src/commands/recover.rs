//! `vlmbench recover`: the report of a run that stopped without writing one (killed, crashed,
//! power lost), built from the journal it kept beside its report.

use std::process::ExitCode;

use anyhow::Result;

use super::destination::{write_or_rescue, ReportPaths};
use crate::cli::RecoverArgs;
use crate::memory::{MaybeBytes, MemoryReport};
use crate::report::journal::{self, AnyJournal, Journal, ServingJournal};
use crate::report::serving::{self, LevelReport, ServingReport};
use crate::report::{self, Report, RunStatus};

pub fn execute(args: RecoverArgs) -> Result<ExitCode> {
    let json = args
        .report_file
        .clone()
        .unwrap_or_else(|| journal::report_path_for(&args.journal));
    let paths = ReportPaths::beside(json);
    // The journal being recovered is the input; it stays until the report is written.
    paths.check_report_files(&[("journal", &args.journal)])?;
    let journal = match journal::read_any(&args.journal)? {
        AnyJournal::InProcess(j) => j,
        AnyJournal::Serving(j) => return recover_serving(&j, &args, &paths),
    };

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

fn recover_serving(
    j: &ServingJournal,
    args: &RecoverArgs,
    paths: &ReportPaths,
) -> Result<ExitCode> {
    let report = recovered_serving(j);
    let mut bytes = serde_json::to_vec_pretty(&report)?;
    bytes.push(b'\n');
    write_or_rescue(&paths.json, &bytes)?;
    serving::write_csv(&report, &paths.csv)?;
    let _ = std::fs::remove_file(&args.journal);
    eprintln!(
        "recovered {} requests in {} levels\nreport: {}\nper-request CSV: {}",
        j.requests.len(),
        report.levels.len(),
        paths.json.display(),
        paths.csv.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The serving report of what the journal holds: one level per level that had a finished
/// request, each lasting until its last finished request.
pub fn recovered_serving(j: &ServingJournal) -> ServingReport {
    let mut report = j.header.clone();
    let mut levels: Vec<usize> = j.requests.iter().map(|r| r.level).collect();
    levels.dedup();
    levels.sort_unstable();
    levels.dedup();
    report.levels = levels
        .into_iter()
        .map(|k| {
            let lines: Vec<_> = j.requests.iter().filter(|r| r.level == k).collect();
            let records: Vec<_> = lines.iter().map(|r| r.request.clone()).collect();
            LevelReport::from_requests(
                lines[0].concurrency,
                lines[0].request_rate,
                lines.iter().map(|r| r.elapsed_s).fold(0.0, f64::max),
                records,
            )
        })
        .collect();
    report.status = RunStatus::Interrupted;
    report.status_detail = Some(format!(
        "rebuilt from the run's journal: the run stopped after {} finished requests without writing its report",
        j.requests.len()
    ));
    report
}
