//! `vlmbench merge`: the reports of the shards of one schedule (`--shard i/N --start-at T`)
//! combined into one report, as if one client had sent every request.
//!
//! Exact, not averaged: every shard's per-request records are pooled and the level's
//! figures computed again from them (counts add up; percentiles come from all the values, not
//! from the shards' percentiles). The shards share one time zero, so the merged level lasts
//! from it to the last response of any shard.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::cli::MergeArgs;
use crate::report::serving::extras::{LevelExtras, Repeatability};
use crate::report::serving::{self, LevelReport, RequestRecord, ServingReport};
use crate::report::RunStatus;

fn read(path: &Path) -> Result<ServingReport> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    if v.get("kind").and_then(|k| k.as_str()) != Some("serving") {
        bail!(
            "{} is not a serving report (merge combines `--backend openai --shard` reports)",
            path.display()
        );
    }
    serde_json::from_value(v)
        .with_context(|| format!("{} is not a vlmbench serving report", path.display()))
}

/// Merges shard reports; `paths` name them in the result.
pub fn merge(reports: Vec<ServingReport>, paths: &[String]) -> Result<ServingReport> {
    let first = reports.first().context("no reports to merge")?;
    let count = first
        .extras
        .shard
        .as_ref()
        .map(|s| s.count)
        .with_context(|| format!("{}: not a shard report (run it with --shard i/N)", paths[0]))?;
    let mut seen = vec![false; count];
    for (r, p) in reports.iter().zip(paths) {
        let Some(s) = &r.extras.shard else {
            bail!("{p}: not a shard report (run it with --shard i/N)");
        };
        if s.count != count
            || s.start_at != first.extras.shard.as_ref().and_then(|f| f.start_at.clone())
        {
            bail!(
                "{p}: shard {}/{} with start {:?} is not part of the same schedule as {}",
                s.index,
                s.count,
                s.start_at,
                paths[0]
            );
        }
        if std::mem::replace(&mut seen[s.index], true) {
            bail!("{p}: shard {}/{} is given twice", s.index, s.count);
        }
        if r.levels.len() != first.levels.len() {
            bail!(
                "{p}: {} levels, but {} has {}",
                r.levels.len(),
                paths[0],
                first.levels.len()
            );
        }
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        eprintln!("note: shard {missing}/{count} is missing; the merge covers the shards given");
    }
    let mut levels = Vec::new();
    for k in 0..first.levels.len() {
        let parts: Vec<&LevelReport> = reports.iter().map(|r| &r.levels[k]).collect();
        let concurrency = parts.iter().map(|l| l.concurrency).sum::<Option<usize>>();
        let duration = parts.iter().map(|l| l.duration).fold(0.0, f64::max);
        let mut requests: Vec<RequestRecord> = parts
            .iter()
            .flat_map(|l| l.requests.iter().cloned())
            .collect();
        requests.sort_by(|a, b| {
            let t = |r: &RequestRecord| r.detail.scheduled_s.unwrap_or(0.0);
            t(a).total_cmp(&t(b))
        });
        let mut level =
            LevelReport::from_requests(concurrency, parts[0].request_rate, duration, requests);
        level.extras = LevelExtras::over(
            &level.requests,
            duration,
            first.extras.goodput_slos.as_ref(),
        );
        level.extras.merged_shards = Some(parts.len());
        levels.push(level);
    }
    let mut out = first.clone();
    out.status = if reports.iter().all(|r| r.status == RunStatus::Complete) {
        RunStatus::Complete
    } else {
        RunStatus::Interrupted
    };
    out.config.num_prompts = reports.iter().map(|r| r.config.num_prompts).sum();
    out.extras.repeatability = Repeatability::group(&levels);
    out.extras.shard = None;
    out.extras.merged_from = paths.to_vec();
    out.levels = levels;
    Ok(out)
}

pub fn execute(args: MergeArgs) -> Result<ExitCode> {
    let paths: Vec<String> = args
        .reports
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let reports = args
        .reports
        .iter()
        .map(|p| read(p))
        .collect::<Result<Vec<_>>>()?;
    let merged = merge(reports, &paths)?;
    let out: PathBuf = args.out.clone();
    serving::write_json(&merged, &out)?;
    serving::write_csv(&merged, &out.with_extension("csv"))?;
    print!("{}", serving::render(&merged));
    print!("{}", crate::report::serving::extras::render(&merged));
    eprintln!("merged report: {}", out.display());
    Ok(ExitCode::SUCCESS)
}
