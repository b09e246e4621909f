//! Descriptive statistics over a list of measurements.
//!
//! Percentiles use linear interpolation between closest ranks — numpy's default
//! (`np.percentile(x, p)`, method "linear"), which is also what vLLM's serving benchmark uses:
//! for sorted values `x[0..n]`, rank `r = p/100 · (n−1)`, result `x[⌊r⌋] + (r−⌊r⌋)·(x[⌊r⌋+1] − x[⌊r⌋])`.
//! The standard deviation is the population one (divide by n, numpy's default `ddof=0`).

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
}
