//! The search for the highest load (request rate or concurrency) at which the share of
//! requests meeting every SLO still reaches a target: bisection between a lowest and a highest
//! value, bounded in time, each probe a full level run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::serving::LoadLevel;
use crate::report::serving::extras::{GoodputReport, SearchReport, SearchStep};

/// What the search moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOver {
    RequestRate,
    Concurrency,
}

impl SearchOver {
    pub fn name(self) -> &'static str {
        match self {
            SearchOver::RequestRate => "request_rate",
            SearchOver::Concurrency => "concurrency",
        }
    }
}

/// Bounds of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpec {
    pub over: SearchOver,
    pub low: f64,
    pub high: f64,
    /// Stop when (high − low) / high falls to this (rates); concurrency stops at adjacent
    /// integers.
    pub tolerance: f64,
    /// No probe starts after this much time since the search began.
    pub time_limit: Duration,
}

/// The outcome of a search: the values tried in order with their verdicts.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOutcome {
    pub best: Option<f64>,
    pub lowest_failing: Option<f64>,
    pub stopped: &'static str,
    pub tried: Vec<(f64, bool)>,
}

/// Runs the search; `probe(value)` runs one level at `value` and says whether it met the
/// target. The low end is tried first (if it fails, nothing meets the target), then the high
/// end (if it passes, the range was too small), then midpoints.
pub fn search(spec: &SearchSpec, mut probe: impl FnMut(f64) -> bool) -> SearchOutcome {
    let begun = Instant::now();
    let snap = |v: f64| match spec.over {
        SearchOver::Concurrency => v.round().max(1.0),
        SearchOver::RequestRate => v,
    };
    let (mut lo, mut hi) = (snap(spec.low), snap(spec.high));
    let mut tried = Vec::new();
    let mut run = |v: f64, tried: &mut Vec<(f64, bool)>| {
        let ok = probe(v);
        tried.push((v, ok));
        ok
    };
    let out = |best, failing, stopped, tried| SearchOutcome {
        best,
        lowest_failing: failing,
        stopped,
        tried,
    };
    if !run(lo, &mut tried) {
        return out(None, Some(lo), "min failed", tried);
    }
    if begun.elapsed() >= spec.time_limit {
        return out(Some(lo), None, "time limit", tried);
    }
    if !run(hi, &mut tried) {
        loop {
            let done = match spec.over {
                SearchOver::Concurrency => hi - lo <= 1.0,
                SearchOver::RequestRate => (hi - lo) / hi <= spec.tolerance,
            };
            if done {
                return out(Some(lo), Some(hi), "converged", tried);
            }
            if begun.elapsed() >= spec.time_limit {
                return out(Some(lo), Some(hi), "time limit", tried);
            }
            let mid = match spec.over {
                SearchOver::Concurrency => ((lo + hi) / 2.0).floor(),
                SearchOver::RequestRate => (lo + hi) / 2.0,
            };
            if run(mid, &mut tried) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    out(Some(hi), None, "max passed", tried)
}

/// The search run over whole levels: `run_level` measures one level and returns its index in
/// the run and its goodput. `base` gives the settings the search does not move. Stops early
/// (the search counts it as a miss) once `cancel` is set; an error from a level ends it.
pub fn search_levels(
    spec: &SearchSpec,
    target: f64,
    base: &LoadLevel,
    cancel: &AtomicBool,
    mut run_level: impl FnMut(&LoadLevel) -> anyhow::Result<(usize, GoodputReport)>,
) -> anyhow::Result<SearchReport> {
    let mut steps = Vec::new();
    let mut failure = None;
    let outcome = search(spec, |v| {
        if cancel.load(Ordering::SeqCst) || failure.is_some() {
            return false;
        }
        let level = match spec.over {
            SearchOver::RequestRate => LoadLevel {
                request_rate: Some(v),
                ..base.clone()
            },
            SearchOver::Concurrency => LoadLevel {
                concurrency: Some(v as usize),
                ..base.clone()
            },
        };
        let (k, g) = match run_level(&level) {
            Ok(x) => x,
            Err(e) => {
                failure = Some(e);
                return false;
            }
        };
        let passed = g.share >= target;
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
    if let Some(e) = failure {
        return Err(e);
    }
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
    Ok(SearchReport {
        over: spec.over.name().into(),
        target_share: target,
        range: [spec.low, spec.high],
        best: outcome.best,
        lowest_failing: outcome.lowest_failing,
        stopped: outcome.stopped.into(),
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(over: SearchOver, low: f64, high: f64) -> SearchSpec {
        SearchSpec {
            over,
            low,
            high,
            tolerance: 0.05,
            time_limit: Duration::from_secs(60),
        }
    }

    #[test]
    fn bisection_finds_the_edge() {
        // A server that keeps its SLOs up to 13.7 req/s.
        let r = search(&spec(SearchOver::RequestRate, 1.0, 64.0), |v| v <= 13.7);
        let best = r.best.unwrap();
        assert!(best <= 13.7 && (13.7 - best) / 13.7 < 0.1, "{r:?}");
        assert_eq!(r.stopped, "converged");
        assert_eq!(r.tried[..2], [(1.0, true), (64.0, false)]);
        let c = search(&spec(SearchOver::Concurrency, 1.0, 100.0), |v| v <= 37.0);
        assert_eq!((c.best, c.lowest_failing), (Some(37.0), Some(38.0)));
        assert!(c.tried.len() <= 2 + 7, "{c:?}");
        assert!(c.tried.iter().all(|(v, _)| v.fract() == 0.0));
    }

    #[test]
    fn ends_and_time_limit() {
        let r = search(&spec(SearchOver::RequestRate, 2.0, 8.0), |_| false);
        assert_eq!((r.best, r.stopped, r.tried.len()), (None, "min failed", 1));
        let r = search(&spec(SearchOver::RequestRate, 2.0, 8.0), |_| true);
        assert_eq!((r.best, r.stopped), (Some(8.0), "max passed"));
        let mut s = spec(SearchOver::RequestRate, 1.0, 1000.0);
        s.time_limit = Duration::ZERO;
        let r = search(&s, |v| v < 500.0);
        assert_eq!(
            (r.best, r.stopped, r.tried.len()),
            (Some(1.0), "time limit", 1)
        );
    }
}
