//! What a serving report carries beyond the core latency summaries: per-request offsets on the
//! level's clock and reasoning counts, goodput under SLOs, the steady-state window, repeated
//! runs (`--runs`), the goodput search and how arrivals were made. Kept apart from
//! [the serving report](super) so the core schema stays small; every field here is optional in the JSON.

use serde::{Deserialize, Serialize};

use super::server_side::{self, ServerMetrics};
use super::{LevelReport, RequestRecord};
use crate::memory::server_gpus::GpuLevelUse;
use crate::stats::{summarize_each, summarize_pooled, Summary};

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Per-request facts beyond the core timings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestDetail {
    /// Seconds from the level's time zero (its first scheduled arrival, or `--start-at`) to
    /// the request's scheduled arrival, its send, its first token and its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_s: Option<f64>,
    /// Arrival time of every token-carrying chunk, seconds on the same clock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunk_s: Vec<f64>,
    /// Time to the first content (non-reasoning) token, from the scheduled arrival, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfct_ms: Option<f64>,
    /// Reasoning tokens (server usage details, else tokenizer, else reasoning chunks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// Output tokens that were content: output − reasoning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_tokens: Option<u64>,
    /// It streamed reasoning and never any content (TTFT is then its first reasoning token).
    #[serde(default, skip_serializing_if = "is_false")]
    pub reasoning_only: bool,
    /// The shard (`--shard i/N`) that sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<usize>,
}

/// Service-level objectives, ms; a request is good when it meets every one given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slos {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpot_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2el_ms: Option<f64>,
}

impl Slos {
    /// Parses `ttft:MS tpot:MS e2el:MS` (any subset, each once), as vLLM's `--goodput` does.
    pub fn parse(items: &[String]) -> Result<Self, String> {
        let mut s = Slos::default();
        for item in items {
            let (name, value) = item.split_once(':').ok_or_else(|| {
                format!("--goodput {item:?}: expected NAME:MS, e.g. ttft:500 tpot:50 e2el:3000")
            })?;
            let ms: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v > 0.0)
                .ok_or_else(|| {
                    format!("--goodput {item:?}: {value:?} is not a positive number of ms")
                })?;
            let slot = match name.trim().to_ascii_lowercase().as_str() {
                "ttft" => &mut s.ttft_ms,
                "tpot" => &mut s.tpot_ms,
                "e2el" => &mut s.e2el_ms,
                other => {
                    return Err(format!(
                        "--goodput {item:?}: unknown metric {other:?} (use ttft, tpot or e2el)"
                    ))
                }
            };
            if slot.replace(ms).is_some() {
                return Err(format!("--goodput names {name} twice"));
            }
        }
        if s == Slos::default() {
            return Err("--goodput needs at least one of ttft:MS tpot:MS e2el:MS".into());
        }
        Ok(s)
    }

    /// vLLM's rule: a successful request whose every named metric is at most its SLO. A
    /// single-token request has no TPOT and counts as 0 for it (as vLLM does).
    pub fn met_by(&self, r: &RequestRecord) -> bool {
        let within = |slo: Option<f64>, v: Option<f64>| match slo {
            None => true,
            Some(limit) => v.is_some_and(|v| v <= limit),
        };
        r.ok && within(self.ttft_ms, r.ttft_ms)
            && within(self.tpot_ms, Some(r.tpot_ms.unwrap_or(0.0)))
            && within(self.e2el_ms, r.e2el_ms)
    }
}

/// Goodput of one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoodputReport {
    pub slos: Slos,
    /// Requests that met every SLO.
    pub good: usize,
    /// good / requests sent (failed requests count against it).
    pub share: f64,
    /// good / level duration, requests per second (vLLM's `request_goodput`).
    pub request_goodput: f64,
}

impl GoodputReport {
    pub fn over(slos: &Slos, requests: &[RequestRecord], duration_s: f64) -> Self {
        let good = requests.iter().filter(|r| slos.met_by(r)).count();
        GoodputReport {
            slos: slos.clone(),
            good,
            share: if requests.is_empty() {
                0.0
            } else {
                good as f64 / requests.len() as f64
            },
            request_goodput: if duration_s > 0.0 {
                good as f64 / duration_s
            } else {
                0.0
            },
        }
    }
}

/// Figures over the steady-state window: from the first request's end to the last request's
/// send. Inside it the load is fully applied (no ramp-up before the first completion, no
/// drain after the last arrival).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteadyState {
    pub window_start_s: f64,
    pub window_end_s: f64,
    /// Successful requests sent and finished inside the window (their latencies below).
    pub requests: usize,
    /// Tokens whose chunk arrived inside the window, per second of window.
    pub output_throughput: f64,
    pub ttft_ms: Option<Summary>,
    pub tpot_ms: Option<Summary>,
    pub itl_ms: Option<Summary>,
    pub e2el_ms: Option<Summary>,
}

impl SteadyState {
    /// `None` when the window is empty or the records carry no offsets.
    pub fn over(requests: &[RequestRecord]) -> Option<Self> {
        let ok: Vec<&RequestRecord> = requests.iter().filter(|r| r.ok).collect();
        let start = ok
            .iter()
            .filter_map(|r| r.detail.end_s)
            .min_by(f64::total_cmp)?;
        let end = ok
            .iter()
            .filter_map(|r| r.detail.sent_s)
            .max_by(f64::total_cmp)?;
        if end <= start {
            return None;
        }
        let inside: Vec<&RequestRecord> = ok
            .iter()
            .copied()
            .filter(|r| {
                r.detail.sent_s.is_some_and(|s| s >= start)
                    && r.detail.end_s.is_some_and(|e| e <= end)
            })
            .collect();
        // Each chunk's tokens: the record's per-token ITL split is the chunk's share; count
        // the chunk's arrival inside the window.
        let tokens_inside: f64 = ok
            .iter()
            .map(|r| {
                let chunks = &r.detail.chunk_s;
                let total = r.output_tokens.unwrap_or(chunks.len() as u64) as f64;
                let per_chunk = if chunks.is_empty() {
                    0.0
                } else {
                    total / chunks.len() as f64
                };
                chunks.iter().filter(|t| **t >= start && **t <= end).count() as f64 * per_chunk
            })
            .sum();
        Some(SteadyState {
            window_start_s: start,
            window_end_s: end,
            requests: inside.len(),
            output_throughput: tokens_inside / (end - start),
            ttft_ms: summarize_each(&inside, |r| r.ttft_ms),
            tpot_ms: summarize_each(&inside, |r| r.tpot_ms),
            itl_ms: summarize_pooled(&inside, |r| &r.itl_ms),
            e2el_ms: summarize_each(&inside, |r| r.e2el_ms),
        })
    }
}

/// What a level adds to the core summaries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LevelExtras {
    /// 0-based repetition of this level (`--runs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goodput: Option<GoodputReport>,
    /// Time to first content token (reasoning models), ms, from the scheduled arrival.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfct_ms: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_reasoning_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_content_tokens: Option<u64>,
    /// Successful requests that streamed reasoning only (no content token).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reasoning_only_requests: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steady_state: Option<SteadyState>,
    /// Shards merged into this level (`vlmbench merge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_shards: Option<usize>,
    /// The server's own metrics page over the level (see [`super::server_side`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_metrics: Option<ServerMetrics>,
    /// The server's GPUs over the level, where they are on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_gpus: Option<GpuLevelUse>,
}

impl LevelExtras {
    /// The extras of a level over `requests`; goodput when SLOs are given.
    pub fn over(requests: &[RequestRecord], duration_s: f64, slos: Option<&Slos>) -> Self {
        let ok: Vec<&RequestRecord> = requests.iter().filter(|r| r.ok).collect();
        let reasoning_seen = ok
            .iter()
            .any(|r| r.detail.reasoning_tokens.unwrap_or(0) > 0);
        let sum = |f: &dyn Fn(&RequestRecord) -> Option<u64>| {
            reasoning_seen.then(|| ok.iter().filter_map(|r| f(r)).sum())
        };
        LevelExtras {
            run: None,
            goodput: slos.map(|s| GoodputReport::over(s, requests, duration_s)),
            ttfct_ms: if reasoning_seen {
                summarize_each(&ok, |r| r.detail.ttfct_ms)
            } else {
                None
            },
            total_reasoning_tokens: sum(&|r| r.detail.reasoning_tokens),
            total_content_tokens: sum(&|r| r.detail.content_tokens),
            reasoning_only_requests: ok.iter().filter(|r| r.detail.reasoning_only).count(),
            steady_state: SteadyState::over(requests),
            merged_shards: None,
            server_metrics: None,
            server_gpus: None,
        }
    }
}

/// Spread of one figure over repeated runs of a level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub runs: usize,
    pub mean: f64,
    /// Sample standard deviation (divides by runs − 1).
    pub stddev: f64,
    /// stddev / mean.
    pub cv: f64,
    /// 95 % confidence interval of the mean: mean ± t(0.975, runs − 1) · stddev / √runs.
    pub ci95_low: f64,
    pub ci95_high: f64,
}

/// Two-sided 97.5 % quantile of Student's t with `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        _ => 1.96,
    }
}

impl Spread {
    /// `None` with fewer than two values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n < 2 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let stddev = var.sqrt();
        let half = t975(n - 1) * stddev / (n as f64).sqrt();
        Some(Spread {
            runs: n,
            mean,
            stddev,
            cv: if mean != 0.0 { stddev / mean } else { 0.0 },
            ci95_low: mean - half,
            ci95_high: mean + half,
        })
    }
}

/// Repeated runs of one level, figure by figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repeatability {
    pub concurrency: Option<usize>,
    pub request_rate: Option<f64>,
    /// Positions of the runs in `levels`.
    pub level_indices: Vec<usize>,
    /// Figure name → its spread over the runs (`ttft_ms.median`, `output_throughput`...).
    pub figures: std::collections::BTreeMap<String, Spread>,
}

impl Repeatability {
    /// One entry per distinct load among `levels` that ran more than once.
    pub fn group(levels: &[LevelReport]) -> Vec<Self> {
        let mut out: Vec<Repeatability> = Vec::new();
        for (i, l) in levels.iter().enumerate() {
            match out
                .iter_mut()
                .find(|g| g.concurrency == l.concurrency && g.request_rate == l.request_rate)
            {
                Some(g) => g.level_indices.push(i),
                None => out.push(Repeatability {
                    concurrency: l.concurrency,
                    request_rate: l.request_rate,
                    level_indices: vec![i],
                    figures: Default::default(),
                }),
            }
        }
        out.retain(|g| g.level_indices.len() > 1);
        for g in &mut out {
            let runs: Vec<&LevelReport> = g.level_indices.iter().map(|&i| &levels[i]).collect();
            let mut add = |name: &str, f: &dyn Fn(&LevelReport) -> Option<f64>| {
                let v: Vec<f64> = runs.iter().filter_map(|l| f(l)).collect();
                if v.len() == runs.len() {
                    if let Some(s) = Spread::of(&v) {
                        g.figures.insert(name.to_string(), s);
                    }
                }
            };
            add("request_throughput", &|l| Some(l.request_throughput));
            add("output_throughput", &|l| Some(l.output_throughput));
            for (name, pick) in [
                (
                    "ttft_ms",
                    (|l: &LevelReport| l.ttft_ms.clone()) as fn(&LevelReport) -> _,
                ),
                ("tpot_ms", |l| l.tpot_ms.clone()),
                ("itl_ms", |l| l.itl_ms.clone()),
                ("e2el_ms", |l| l.e2el_ms.clone()),
            ] {
                add(&format!("{name}.mean"), &|l| pick(l).map(|s| s.mean));
                add(&format!("{name}.median"), &|l| pick(l).map(|s| s.median));
                add(&format!("{name}.p99"), &|l| pick(l).map(|s| s.p99));
            }
            add("goodput.share", &|l| {
                l.extras.goodput.as_ref().map(|g| g.share)
            });
        }
        out
    }
}

/// One level the goodput search ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchStep {
    /// The request rate (req/s) or concurrency tried.
    pub value: f64,
    pub goodput_share: f64,
    pub request_goodput: f64,
    pub passed: bool,
    /// Its position in `levels`.
    pub level_index: usize,
}

/// The search for the highest load that still meets a goodput target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchReport {
    /// `request_rate` or `concurrency`.
    pub over: String,
    /// Least share of requests that must meet every SLO.
    pub target_share: f64,
    pub range: [f64; 2],
    /// Highest value tried that met the target; `None` when even the lowest did not.
    pub best: Option<f64>,
    /// Lowest value tried that missed it.
    pub lowest_failing: Option<f64>,
    /// Why the search stopped: `converged`, `max passed`, `min failed` or `time limit`.
    pub stopped: String,
    pub steps: Vec<SearchStep>,
}

/// How arrivals were made, where it is more than a rate and a burstiness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrivalInfo {
    /// `ramp-up linear`, `ramp-up exponential` or `trace`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_start_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_end_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_sha256: Option<String>,
    /// Trace times are divided by this (2 = twice as fast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_speed: Option<f64>,
}

/// The part of one schedule a shard ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: usize,
    pub count: usize,
    /// The common time zero of all shards (RFC 3339, UTC).
    pub start_at: Option<String>,
}

/// What a serving report adds to the core.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServingExtras {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goodput_slos: Option<Slos>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goodput_search: Option<SearchReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeatability: Vec<Repeatability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival: Option<ArrivalInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardInfo>,
    /// Reports merged into this one (`vlmbench merge`), as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
    /// Why no level has server metrics (no `/metrics` page, `--no-server-metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_metrics_unavailable: Option<String>,
    /// Why no level has the server's GPUs (no NVML here, `--no-server-gpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_gpus_unavailable: Option<String>,
}

/// The terminal lines for what the extras hold (empty when there is nothing).
pub fn render(report: &super::ServingReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let load = |l: &LevelReport| {
        format!(
            "concurrency {} | rate {}{}",
            l.concurrency
                .map(|c| c.to_string())
                .unwrap_or_else(|| "unlimited".into()),
            l.request_rate
                .map(|r| format!("{r:.3}/s"))
                .unwrap_or_else(|| "inf".into()),
            l.extras
                .run
                .map(|r| format!(" | run {}", r + 1))
                .unwrap_or_default()
        )
    };
    for l in &report.levels {
        let e = &l.extras;
        let mut lines = Vec::new();
        if let Some(g) = &e.goodput {
            lines.push(format!(
                "goodput: {} of {} requests met every SLO ({:.1} %), {:.3} req/s",
                g.good,
                l.requests.len(),
                g.share * 100.0,
                g.request_goodput
            ));
        }
        if let Some(t) = &e.ttfct_ms {
            lines.push(format!(
                "time to first content token: median {:.2} ms, p99 {:.2} ms | reasoning tokens {} | content tokens {} | reasoning only: {}",
                t.median,
                t.p99,
                e.total_reasoning_tokens.unwrap_or(0),
                e.total_content_tokens.unwrap_or(0),
                e.reasoning_only_requests
            ));
        }
        if let Some(s) = &e.steady_state {
            lines.push(format!(
                "steady state {:.2}-{:.2} s: {} requests, {:.1} output tok/s, TTFT median {}, ITL median {}",
                s.window_start_s,
                s.window_end_s,
                s.requests,
                s.output_throughput,
                s.ttft_ms.as_ref().map(|x| format!("{:.2} ms", x.median)).unwrap_or_else(|| "-".into()),
                s.itl_ms.as_ref().map(|x| format!("{:.2} ms", x.median)).unwrap_or_else(|| "-".into()),
            ));
        }
        if let Some(m) = &e.server_metrics {
            lines.extend(server_side::render_level(m));
        }
        if let Some(g) = &e.server_gpus {
            lines.extend(server_side::render_gpus(g));
        }
        if !lines.is_empty() {
            let _ = writeln!(out, "\n{}", load(l));
            for line in lines {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    for g in &report.extras.repeatability {
        let _ = writeln!(
            out,
            "\nrepeatability over {} runs at concurrency {:?}, rate {:?}:",
            g.level_indices.len(),
            g.concurrency,
            g.request_rate
        );
        let _ = writeln!(
            out,
            "  {:<20} {:>12} {:>12} {:>8} {:>25}",
            "figure", "mean", "stddev", "CV", "95 % CI"
        );
        for (name, s) in &g.figures {
            let _ = writeln!(
                out,
                "  {:<20} {:>12.3} {:>12.3} {:>7.1}% {:>12.3} - {:<12.3}",
                name,
                s.mean,
                s.stddev,
                s.cv * 100.0,
                s.ci95_low,
                s.ci95_high
            );
        }
    }
    if let Some(s) = &report.extras.goodput_search {
        let _ = writeln!(
            out,
            "\ngoodput search over {} in [{}, {}], target {:.0} % of requests within the SLOs:",
            s.over,
            s.range[0],
            s.range[1],
            s.target_share * 100.0
        );
        for st in &s.steps {
            let _ = writeln!(
                out,
                "  {} = {:<10.3} goodput {:>5.1} % ({:.3} req/s)  {}",
                s.over,
                st.value,
                st.goodput_share * 100.0,
                st.request_goodput,
                if st.passed { "pass" } else { "miss" }
            );
        }
        let _ = writeln!(
            out,
            "  highest passing {}: {} ({})",
            s.over,
            s.best
                .map(|b| format!("{b:.3}"))
                .unwrap_or_else(|| "none".into()),
            s.stopped
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testutil::request;

    #[test]
    fn slos_parse_and_count_as_vllm_does() {
        let s = Slos::parse(&["ttft:100".into(), "tpot:10".into()]).unwrap();
        assert_eq!(
            (s.ttft_ms, s.tpot_ms, s.e2el_ms),
            (Some(100.0), Some(10.0), None)
        );
        assert!(Slos::parse(&["ttft=1".into()])
            .unwrap_err()
            .contains("NAME:MS"));
        assert!(Slos::parse(&["itl:1".into()])
            .unwrap_err()
            .contains("unknown"));
        assert!(Slos::parse(&["ttft:-1".into()])
            .unwrap_err()
            .contains("positive"));
        assert!(Slos::parse(&["ttft:1".into(), "ttft:2".into()]).is_err());
        // TTFT 100 (exactly at the SLO: good), TTFT 101 (bad), TPOT 11 (bad), failed (bad).
        let mut reqs = vec![
            request(0, 100.0, 5, &[10.0, 10.0]),
            request(1, 101.0, 5, &[10.0]),
            request(2, 50.0, 5, &[11.0, 11.0]),
            request(3, 50.0, 5, &[]),
            request(4, 50.0, 5, &[1.0]),
        ];
        reqs[4].ok = false;
        let g = GoodputReport::over(&s, &reqs, 2.0);
        assert_eq!(g.good, 2, "request 3 has one token: TPOT counts as 0");
        assert_eq!(g.share, 0.4);
        assert_eq!(g.request_goodput, 1.0);
    }

    #[test]
    fn spread_has_a_t_interval() {
        let s = Spread::of(&[10.0, 12.0, 14.0]).unwrap();
        assert_eq!((s.mean, s.stddev), (12.0, 2.0));
        assert!((s.cv - 2.0 / 12.0).abs() < 1e-12);
        let half = 4.303 * 2.0 / 3f64.sqrt();
        assert!((s.ci95_high - 12.0 - half).abs() < 1e-9);
        assert!(Spread::of(&[1.0]).is_none());
    }

    #[test]
    fn steady_window_drops_ramp_up_and_drain() {
        // Four requests, 1 s each, sent at 0, 0.5, 1.2, 2.0: the window is [1.0, 2.0].
        let mut reqs: Vec<RequestRecord> = (0..4).map(|i| request(i, 10.0, 1, &[5.0])).collect();
        for (r, sent) in reqs.iter_mut().zip([0.0, 0.5, 1.2, 2.0]) {
            r.detail.sent_s = Some(sent);
            r.detail.end_s = Some(sent + 0.7);
            r.detail.chunk_s = vec![sent + 0.3, sent + 0.6];
        }
        let s = SteadyState::over(&reqs).unwrap();
        assert_eq!((s.window_start_s, s.window_end_s), (0.7, 2.0));
        assert_eq!(s.requests, 1, "only the request sent at 1.2 lies inside");
        // Chunks inside [0.7, 2.0]: 0.8, 1.1, 1.5, 1.8: 4 of one token each over 1.3 s.
        assert!((s.output_throughput - 4.0 / 1.3).abs() < 1e-9);
    }
}
