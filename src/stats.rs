//! Descriptive statistics over a list of measurements.
//!
//! Percentiles use linear interpolation between closest ranks — numpy's default
//! (`np.percentile(x, p)`, method "linear"), which is also what vLLM's serving benchmark uses:
//! for sorted values `x[0..n]`, rank `r = p/100 · (n−1)`, result `x[⌊r⌋] + (r−⌊r⌋)·(x[⌊r⌋+1] − x[⌊r⌋])`.
//! The standard deviation is the population one (divide by n, numpy's default `ddof=0`).
//!
//! [`Totals`], [`summarize_each`] and [`summarize_pooled`] are the one aggregation both report
//! kinds use. A leaf: depends on no other vlmbench module.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Summary of one metric across samples (or across decode steps, for TBT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of values summarised.
    pub count: usize,
    pub mean: f64,
    pub median: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    /// Population standard deviation.
    pub stddev: f64,
}

/// Summarises `values`; `None` when there are none (a metric with no data is absent, not zero).
/// Non-finite values are ignored.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let mean = sorted.iter().sum::<f64>() / n;
    let variance = sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    Some(Summary {
        count: sorted.len(),
        mean,
        median: percentile_sorted(&sorted, 50.0),
        p75: percentile_sorted(&sorted, 75.0),
        p90: percentile_sorted(&sorted, 90.0),
        p95: percentile_sorted(&sorted, 95.0),
        p99: percentile_sorted(&sorted, 99.0),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        stddev: variance.sqrt(),
    })
}

/// Linear-interpolation percentile of an ascending, non-empty slice; `p` in [0, 100].
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    debug_assert!(!sorted.is_empty());
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (rank - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Summarises one value per item (`None`: the item has no value for this metric).
pub fn summarize_each<T>(items: &[T], value: impl Fn(&T) -> Option<f64>) -> Option<Summary> {
    summarize(&items.iter().filter_map(value).collect::<Vec<_>>())
}

/// Summarises every value of every item, pooled (e.g. each gap between tokens of each request).
pub fn summarize_pooled<T>(items: &[T], values: impl Fn(&T) -> &[f64]) -> Option<Summary> {
    summarize(
        &items
            .iter()
            .flat_map(|i| values(i).iter().copied())
            .collect::<Vec<_>>(),
    )
}

/// How one measured request ended, as [`Totals`] counts it.
pub enum Outcome<'a> {
    /// It produced output: its input and output token counts.
    Succeeded {
        input_tokens: u64,
        output_tokens: u64,
    },
    /// It failed, for this reason (`None`: none was recorded).
    Failed(Option<&'a str>),
}

/// Counts and rates over the requests of one measured stretch of wall time: the part both
/// report kinds (in-process runs and serving levels) aggregate the same way.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals {
    pub succeeded: usize,
    pub failed: usize,
    /// Failure reasons and how often each occurred.
    pub failure_reasons: BTreeMap<String, usize>,
    /// Token counts of the successful requests.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Successful requests per second of wall time (0 when no time passed).
    pub request_throughput: f64,
    /// Output tokens of successful requests per second.
    pub output_throughput: f64,
    /// Input + output tokens of successful requests per second.
    pub total_token_throughput: f64,
}

impl Totals {
    pub fn over<'a>(outcomes: impl IntoIterator<Item = Outcome<'a>>, duration_s: f64) -> Self {
        let (mut succeeded, mut failed, mut input_tokens, mut output_tokens) = (0, 0, 0, 0);
        let mut failure_reasons = BTreeMap::new();
        for o in outcomes {
            match o {
                Outcome::Succeeded {
                    input_tokens: i,
                    output_tokens: o,
                } => {
                    succeeded += 1;
                    input_tokens += i;
                    output_tokens += o;
                }
                Outcome::Failed(reason) => {
                    failed += 1;
                    let reason = reason.unwrap_or("unknown error").to_string();
                    *failure_reasons.entry(reason).or_insert(0) += 1;
                }
            }
        }
        let per_s = |x: f64| {
            if duration_s > 0.0 {
                x / duration_s
            } else {
                0.0
            }
        };
        Self {
            succeeded,
            failed,
            failure_reasons,
            input_tokens,
            output_tokens,
            request_throughput: per_s(succeeded as f64),
            output_throughput: per_s(output_tokens as f64),
            total_token_throughput: per_s((input_tokens + output_tokens) as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_linear_percentiles() {
        // np.percentile([1,2,3,4,10], [50,75,90,95,99]) = [3, 4, 7.6, 8.8, 9.76]
        let s = summarize(&[10.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 3.0);
        assert_eq!(s.p75, 4.0);
        assert!((s.p90 - 7.6).abs() < 1e-12);
        assert!((s.p95 - 8.8).abs() < 1e-12);
        assert!((s.p99 - 9.76).abs() < 1e-12);
        assert_eq!((s.min, s.max, s.count), (1.0, 10.0, 5));
        assert!((s.mean - 4.0).abs() < 1e-12);
        // np.std([1,2,3,4,10]) = 3.1622776601683795
        assert!((s.stddev - 3.1622776601683795).abs() < 1e-12);
    }

    #[test]
    fn empty_and_single() {
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[f64::NAN]).is_none());
        let s = summarize(&[5.0]).unwrap();
        assert_eq!((s.median, s.p99, s.stddev), (5.0, 5.0, 0.0));
    }

    #[test]
    fn totals_count_rates_and_reasons() {
        let t = Totals::over(
            [
                Outcome::Succeeded {
                    input_tokens: 10,
                    output_tokens: 4,
                },
                Outcome::Failed(Some("timeout")),
                Outcome::Succeeded {
                    input_tokens: 6,
                    output_tokens: 2,
                },
                Outcome::Failed(Some("timeout")),
                Outcome::Failed(None),
            ],
            2.0,
        );
        assert_eq!((t.succeeded, t.failed), (2, 3));
        assert_eq!((t.input_tokens, t.output_tokens), (16, 6));
        assert_eq!(t.failure_reasons["timeout"], 2);
        assert_eq!(t.failure_reasons["unknown error"], 1);
        assert_eq!(t.request_throughput, 1.0);
        assert_eq!(t.output_throughput, 3.0);
        assert_eq!(t.total_token_throughput, 11.0);
        // No wall time: rates are 0, not infinite.
        let none = Totals::over([], 0.0);
        assert_eq!((none.request_throughput, none.succeeded), (0.0, 0));
    }

    #[test]
    fn each_and_pooled_summaries() {
        let items = [
            (Some(1.0), vec![1.0, 2.0]),
            (None, vec![3.0]),
            (Some(3.0), vec![]),
        ];
        let each = summarize_each(&items, |i| i.0).unwrap();
        assert_eq!((each.count, each.mean), (2, 2.0));
        let pooled = summarize_pooled(&items, |i| &i.1).unwrap();
        assert_eq!((pooled.count, pooled.max), (3, 3.0));
    }
}
