//! How close a run's prefill came to the machine's arithmetic: the floating-point operations
//! its prefills did per second of prefill, beside the f32 matrix-product rate the engine's own
//! threads reach on this machine with the same kernels. A prefill of many tokens is bound by
//! arithmetic, as decode is by memory, so this says whether a faster prefill is possible here.

use serde::{Deserialize, Serialize};

use super::SampleRecord;

/// The prefill compute figures of a run (CPU runs of the candle engines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefillCompute {
    /// Floating-point operations of all measured prefills (a multiply-add is two): every
    /// projection for every prompt token, the LM head once, attention's causal pairs.
    pub flops: f64,
    /// `flops` / all measured prefill time, FLOP/s.
    pub flops_per_s: f64,
    /// The f32 matrix-product rate of this machine: the engine's threads multiplying
    /// `(m, k) × (k, n)` = `probe_shape` with the prefill's own kernels, best of 3, before the
    /// measured samples and again after them; the better reading.
    pub machine_flops_per_s: f64,
    pub probe_shape: [usize; 3],
    /// `flops_per_s / machine_flops_per_s`.
    pub utilisation: f64,
}

impl PrefillCompute {
    /// The figures over `samples`' prefills, a prefill of `n` input tokens doing
    /// `flops_of(n)`. `None` when no sample was prefilled in measurable time.
    pub fn over(
        samples: &[SampleRecord],
        flops_of: impl Fn(usize) -> u64,
        machine_flops_per_s: f64,
        probe_shape: [usize; 3],
    ) -> Option<Self> {
        let (mut flops, mut seconds) = (0f64, 0f64);
        for m in samples.iter().filter_map(|s| s.metrics.as_ref()) {
            flops += flops_of(m.input_tokens) as f64;
            seconds += m.prefill_ms / 1e3;
        }
        if flops <= 0.0 || seconds <= 0.0 || machine_flops_per_s <= 0.0 {
            return None;
        }
        let flops_per_s = flops / seconds;
        Some(Self {
            flops,
            flops_per_s,
            machine_flops_per_s,
            probe_shape,
            utilisation: flops_per_s / machine_flops_per_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testutil;

    #[test]
    fn flops_follow_each_prompt_and_time_is_pooled() {
        // Prompts of 10 and 4 tokens at 100 flops a token; testutil's prefill is TTFT minus
        // the preprocessing and vision time it records.
        let a = testutil::sample(1, 30.0, 10, &[5.0]);
        let b = testutil::sample(2, 30.0, 4, &[5.0]);
        let failed = testutil::failed_sample(3);
        let seconds: f64 = [&a, &b]
            .iter()
            .map(|s| s.metrics.as_ref().unwrap().prefill_ms / 1e3)
            .sum();
        let c = PrefillCompute::over(&[a, b, failed], |n| 100 * n as u64, 1e5, [1, 2, 3]).unwrap();
        assert_eq!(c.flops, 1400.0);
        assert!((c.flops_per_s - 1400.0 / seconds).abs() < 1e-9);
        assert!((c.utilisation - c.flops_per_s / 1e5).abs() < 1e-12);
        assert!(
            PrefillCompute::over(&[testutil::failed_sample(1)], |_| 1, 1e5, [1, 1, 1]).is_none()
        );
    }
}
