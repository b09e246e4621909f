//! The serving options beyond a plain sweep, validated into one plan: SLOs and the goodput
//! search, `--runs`, ramp-up, trace replay, shards with their common start, and the exports.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

use super::common::usage_bail;

use crate::bench::arrival::{self, RampStrategy, Shard, TraceRequest};
use crate::bench::goodput_search::{SearchOver, SearchSpec};
use crate::bench::server_watch::{MetricsSource, ServerWatch};
use crate::bench::serving::{arrival_offsets, LoadLevel};
use crate::bench::workload;
use crate::cli::{LoadControlArgs, RampArg, RunArgs, SearchOverArg, ServerArgs, Workload};
use crate::client::http::ClientConfig;
use crate::client::{probe, server_metrics};
use crate::dataset::{schema_version_for, DatasetFile, LoadedDataset, Sample};
use crate::memory::server_gpus::ServerGpus;
use crate::report::serving::extras::{ArrivalInfo, ShardInfo, Slos};

/// Field of a replayed sample that carries the trace's output length (sent as max_tokens).
pub const REPLAY_MAX_TOKENS_FIELD: &str = "max_tokens";

/// Validated load-control options.
pub struct LoadPlan {
    pub slos: Option<Slos>,
    pub search: Option<(SearchSpec, f64)>,
    pub runs: usize,
    pub ramp: Option<(RampStrategy, f64, f64)>,
    pub replay: Option<(PathBuf, Vec<TraceRequest>, f64)>,
    pub shard: Option<Shard>,
    /// Wall-clock time zero shared by the shards, as given and as seconds since the epoch.
    pub start_at: Option<(String, f64)>,
}

impl LoadPlan {
    pub fn from_args(a: &LoadControlArgs, has_rate: bool, levels: usize) -> Result<Self> {
        let slos = if a.goodput.is_empty() {
            None
        } else {
            Some(Slos::parse(&a.goodput).map_err(|e| anyhow!(e))?)
        };
        let search = match a.goodput_search {
            None => None,
            Some(over) => {
                if slos.is_none() {
                    usage_bail!(
                        "--goodput-search needs SLOs: add --goodput ttft:MS tpot:MS e2el:MS"
                    );
                }
                if !(a.goodput_target > 0.0 && a.goodput_target <= 1.0) {
                    usage_bail!("--goodput-target must be in (0, 1], e.g. 0.9");
                }
                let range = a.search_range.as_deref().ok_or_else(|| {
                    anyhow!("--goodput-search needs --search-range LO:HI, e.g. 1:64")
                })?;
                let (lo, hi) = range
                    .split_once(':')
                    .and_then(|(l, h)| {
                        Some((l.trim().parse::<f64>().ok()?, h.trim().parse::<f64>().ok()?))
                    })
                    .filter(|(l, h)| l.is_finite() && h.is_finite() && *l > 0.0 && h > l)
                    .ok_or_else(|| {
                        anyhow!(
                            "--search-range {range:?}: expected LO:HI with 0 < LO < HI, e.g. 1:64"
                        )
                    })?;
                let over = match over {
                    SearchOverArg::Rate => SearchOver::RequestRate,
                    SearchOverArg::Concurrency => SearchOver::Concurrency,
                };
                Some((
                    SearchSpec {
                        over,
                        low: lo,
                        high: hi,
                        tolerance: a.search_tolerance.clamp(1e-3, 1.0),
                        time_limit: Duration::from_secs_f64(a.search_time_limit.max(0.0)),
                    },
                    a.goodput_target,
                ))
            }
        };
        if a.runs == 0 {
            usage_bail!("--runs must be at least 1");
        }
        let ramp = match a.ramp_up_strategy {
            None => {
                if a.ramp_up_start_rate.is_some() || a.ramp_up_end_rate.is_some() {
                    usage_bail!("--ramp-up-start-rate/--ramp-up-end-rate need --ramp-up-strategy linear|exponential");
                }
                None
            }
            Some(s) => {
                let (Some(r0), Some(r1)) = (a.ramp_up_start_rate, a.ramp_up_end_rate) else {
                    usage_bail!(
                        "--ramp-up-strategy needs --ramp-up-start-rate R and --ramp-up-end-rate R"
                    );
                };
                if has_rate {
                    usage_bail!("--ramp-up-strategy sets the rate itself; drop --request-rate");
                }
                let strategy = match s {
                    RampArg::Linear => RampStrategy::Linear,
                    RampArg::Exponential => RampStrategy::Exponential,
                };
                let ok = |r: f64| r.is_finite() && r > 0.0;
                if !(ok(r0) && ok(r1)) {
                    usage_bail!("--ramp-up-start-rate and --ramp-up-end-rate must be positive req/s (an exponential ramp cannot start at 0)");
                }
                Some((strategy, r0, r1))
            }
        };
        let replay = match &a.replay {
            None => None,
            Some(p) => {
                if !(a.replay_speed.is_finite() && a.replay_speed > 0.0) {
                    usage_bail!("--replay-speed must be positive");
                }
                if has_rate || ramp.is_some() {
                    usage_bail!("--replay takes its times from the trace; drop --request-rate and --ramp-up-*");
                }
                if a.replay_block_size == 0 {
                    usage_bail!("--replay-block-size must be at least 1");
                }
                let trace = arrival::read_trace(p, a.replay_block_size)?;
                Some((p.clone(), trace, a.replay_speed))
            }
        };
        let shard = match &a.shard {
            None => None,
            Some(s) => {
                let shard = Shard::parse(s).map_err(|e| anyhow!(e))?;
                if levels > 1 || search.is_some() || a.runs > 1 {
                    usage_bail!("--shard runs one level once: give one --concurrency value (or none), no --goodput-search, no --runs");
                }
                if a.start_at.is_none() && shard.count > 1 {
                    usage_bail!("--shard needs --start-at TIME so the shards share one time zero");
                }
                Some(shard)
            }
        };
        let start_at = match &a.start_at {
            None => None,
            Some(t) => Some((t.clone(), parse_time(t)?)),
        };
        Ok(LoadPlan {
            slos,
            search,
            runs: a.runs,
            ramp,
            replay,
            shard,
            start_at,
        })
    }

    /// How arrivals were made, for the report.
    pub fn arrival_info(&self) -> Option<ArrivalInfo> {
        if let Some((strategy, r0, r1)) = self.ramp {
            return Some(ArrivalInfo {
                kind: match strategy {
                    RampStrategy::Linear => "ramp-up linear",
                    RampStrategy::Exponential => "ramp-up exponential",
                }
                .into(),
                ramp_start_rate: Some(r0),
                ramp_end_rate: Some(r1),
                trace_file: None,
                trace_sha256: None,
                trace_speed: None,
            });
        }
        self.replay.as_ref().map(|(p, _, speed)| ArrivalInfo {
            kind: "trace".into(),
            ramp_start_rate: None,
            ramp_end_rate: None,
            trace_file: Some(p.display().to_string()),
            trace_sha256: std::fs::read(p)
                .ok()
                .map(|b| crate::dataset::sha256_hex(&b)),
            trace_speed: Some(*speed),
        })
    }

    pub fn shard_info(&self) -> Option<ShardInfo> {
        self.shard.map(|s| ShardInfo {
            index: s.index,
            count: s.count,
            start_at: self.start_at.as_ref().map(|(t, _)| t.clone()),
        })
    }

    /// Which of the schedule's `n` requests this process sends.
    pub fn owned(&self, n: usize) -> Vec<usize> {
        (0..n)
            .filter(|&i| self.shard.is_none_or(|s| s.owns(i)))
            .collect()
    }

    /// This process's concurrency cap for a level whose whole cap is `c`.
    pub fn concurrency(&self, c: Option<usize>) -> Option<usize> {
        match (c, self.shard) {
            (Some(c), Some(s)) => Some(s.concurrency_share(c).max(1)),
            (c, _) => c,
        }
    }

    /// Offsets of this process's requests (`owned` of a schedule of `n`), or `None` for a
    /// closed loop.
    pub fn offsets(
        &self,
        level: &LoadLevel,
        n: usize,
        owned: &[usize],
        seed: u64,
    ) -> Option<Vec<Duration>> {
        let all = if let Some((_, trace, speed)) = &self.replay {
            arrival::trace_offsets(trace, *speed)
        } else if let Some((strategy, r0, r1)) = self.ramp {
            arrival::ramp_offsets(n, strategy, r0, r1, level.burstiness, seed)
        } else if level.request_rate.is_some_and(|r| r.is_finite()) {
            arrival_offsets(n, level.request_rate, level.burstiness, seed)
        } else {
            return None;
        };
        Some(owned.iter().map(|&i| all[i % all.len()]).collect())
    }

    /// The level's time zero: `--start-at` (waiting for it), else now.
    pub fn start(&self) -> Instant {
        let Some((_, at)) = self.start_at else {
            return Instant::now();
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let wait = at - now;
        if wait > 0.0 {
            eprintln!("waiting {wait:.1} s for --start-at ...");
            Instant::now() + Duration::from_secs_f64(wait)
        } else {
            eprintln!(
                "note: --start-at is {:.1} s in the past; starting now",
                -wait
            );
            Instant::now()
        }
    }
}

/// A trace as an in-memory data set: one sample per trace request, its output length kept
/// for max_tokens.
pub fn trace_dataset(path: &Path, trace: &[TraceRequest]) -> Result<LoadedDataset> {
    let bytes = std::fs::read(path)?;
    let samples: Vec<Sample> = trace
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut fields = std::collections::BTreeMap::new();
            if let Some(n) = r.output_length {
                fields.insert(REPLAY_MAX_TOKENS_FIELD.into(), n.into());
            }
            if let Some(n) = r.input_length {
                fields.insert("input_length".into(), n.into());
            }
            fields.insert("timestamp_ms".into(), r.at_ms.into());
            Sample {
                index: i as i64,
                prompt: r.prompt.clone(),
                images: Vec::new(),
                fields,
            }
        })
        .collect();
    Ok(LoadedDataset {
        file: DatasetFile {
            schema_version: schema_version_for(&samples),
            set: "trace".into(),
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "trace".into()),
            vlmbench_version: env!("CARGO_PKG_VERSION").into(),
            seed: None,
            num_samples: samples.len(),
            sources: Vec::new(),
            params: Default::default(),
            samples,
        },
        base_dir: PathBuf::from("."),
        sha256: crate::dataset::sha256_hex(&bytes),
    })
}

/// Seconds since the Unix epoch of `t`: Unix seconds, or RFC 3339 in UTC
/// (`2026-01-01T12:00:00Z`, fractional seconds allowed).
pub fn parse_time(t: &str) -> Result<f64> {
    if let Ok(s) = t.trim().parse::<f64>() {
        if s.is_finite() && s >= 0.0 {
            return Ok(s);
        }
    }
    let bad =
        || anyhow!("--start-at {t:?}: expected Unix seconds or UTC time like 2026-01-01T12:00:00Z");
    let s = t.trim().strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = s.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let tm: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || tm.len() != 3 {
        return Err(bad());
    }
    let (h, mi): (i64, i64) = (
        tm[0].parse().map_err(|_| bad())?,
        tm[1].parse().map_err(|_| bad())?,
    );
    let sec: f64 = tm[2].parse().map_err(|_| bad())?;
    let (y, m, day) = (d[0], d[1], d[2]);
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || h > 23
        || mi > 59
        || !(0.0..61.0).contains(&sec)
    {
        return Err(bad());
    }
    // Days since 1970-01-01 of a Gregorian date (Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days as f64 * 86_400.0 + (h * 3600 + mi * 60) as f64 + sec)
}

/// Turns `--workload` into a frozen synthetic set plus the matching run settings (unless the
/// user set them explicitly).
pub fn apply_workload(
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

/// What to watch on the server during each level, and why a part is not watched.
pub async fn server_watch_for(
    s: &ServerArgs,
    cfg: &ClientConfig,
) -> Result<(ServerWatch, (Option<String>, Option<String>))> {
    let interval = Duration::from_millis(s.server_sample_interval.max(1));
    let (metrics, metrics_missing) = if s.no_server_metrics {
        (None, Some("--no-server-metrics".to_string()))
    } else {
        let source = MetricsSource {
            // Its own connections, one per read: a server that closes keep-alive connections
            // after a stream (llama-server) would otherwise fail the reads that reuse them.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .context("cannot build the HTTP client")?,
            url: s
                .server_metrics_url
                .clone()
                .unwrap_or_else(|| server_metrics::default_url(cfg)),
            api_key: cfg.api_key.clone(),
            interval,
        };
        match source.check().await {
            Ok(()) => (Some(source), None),
            // Asked for by name: a page that cannot be read is the user's to fix.
            Err(why) if s.server_metrics_url.is_some() => {
                bail!("--server-metrics-url: {why}")
            }
            Err(why) => {
                eprintln!("note: no server metrics ({why}); pass --server-metrics-url if they are elsewhere");
                (None, Some(why))
            }
        }
    };
    let (gpus, gpus_missing) = if s.no_server_gpus {
        (None, Some("--no-server-gpus".to_string()))
    } else {
        match ServerGpus::open(s.server_pid.clone(), interval.as_millis() as u64) {
            Ok(g) => (Some(g), None),
            Err(why) => {
                if !s.server_pid.is_empty() {
                    eprintln!("warning: --server-pid given, but {why}");
                }
                (None, Some(why))
            }
        }
    };
    Ok((
        ServerWatch { metrics, gpus },
        (metrics_missing, gpus_missing),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times() {
        assert_eq!(parse_time("1700000000.5").unwrap(), 1_700_000_000.5);
        assert_eq!(parse_time("1970-01-02T00:00:01Z").unwrap(), 86_401.0);
        assert_eq!(
            parse_time("2024-02-29T12:30:00.25Z").unwrap(),
            1_709_209_800.25
        );
        assert!(parse_time("2024-13-01T00:00:00Z").is_err());
        assert!(parse_time("tomorrow")
            .unwrap_err()
            .to_string()
            .contains("--start-at"));
    }
}
