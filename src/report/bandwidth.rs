//! How close a run's decode came to the machine's memory bandwidth: the bytes its decode steps
//! read (every weight once, and the KV cache they attended to) per second of decode, beside the
//! read bandwidth the engine's own threads reach on this machine. Decode of one sequence is
//! bound by memory bandwidth, so this is the figure that says whether a faster engine is
//! possible here, which a comparison with a peer cannot say.

use serde::{Deserialize, Serialize};

use super::SampleRecord;
use crate::models::llama::DecodeBytes;

/// The decode bandwidth figures of a run (CPU runs of the candle engines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeBandwidth {
    /// Weight bytes one decode step reads, as stored (quantised blocks included).
    pub weight_bytes_per_token: u64,
    /// KV-cache bytes a measured decode step read, mean over all of them.
    pub kv_bytes_per_token_mean: f64,
    /// Bytes all measured decode steps read / all their decode time, bytes/s.
    pub read_bytes_per_s: f64,
    /// The read bandwidth of this machine, measured by the engine's threads streaming a
    /// buffer of `probe_bytes` (the weights' size, within 64 MiB..1 GiB), best of 3 passes,
    /// before the measured samples and again after them; the better reading.
    pub machine_read_bytes_per_s: f64,
    pub probe_bytes: u64,
    /// `read_bytes_per_s / machine_read_bytes_per_s`.
    pub utilisation: f64,
}

impl DecodeBandwidth {
    /// The figures over `samples`' decode steps: step `k` (1-based, after the prefill's token)
    /// of a sample with `n` input tokens attends to `n + k` positions. `None` when no sample
    /// decoded past its first token.
    pub fn over(
        samples: &[SampleRecord],
        bytes_at: impl Fn(usize) -> DecodeBytes,
        machine_read_bytes_per_s: f64,
        probe_bytes: u64,
    ) -> Option<Self> {
        let (mut steps, mut weights, mut kv, mut seconds) = (0u64, 0u64, 0u64, 0.0f64);
        let mut weight_bytes_per_token = 0;
        for m in samples.iter().filter_map(|s| s.metrics.as_ref()) {
            for k in 1..=m.tbt_ms.len() {
                let b = bytes_at(m.input_tokens + k);
                weight_bytes_per_token = b.weights;
                weights += b.weights;
                kv += b.kv;
                steps += 1;
            }
            seconds += m.decode_ms / 1e3;
        }
        if steps == 0 || seconds <= 0.0 || machine_read_bytes_per_s <= 0.0 {
            return None;
        }
        let read_bytes_per_s = (weights + kv) as f64 / seconds;
        Some(DecodeBandwidth {
            weight_bytes_per_token,
            kv_bytes_per_token_mean: kv as f64 / steps as f64,
            read_bytes_per_s,
            machine_read_bytes_per_s,
            probe_bytes,
            utilisation: read_bytes_per_s / machine_read_bytes_per_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testutil;

    #[test]
    fn bytes_follow_each_steps_context_and_time_is_pooled() {
        // Two samples: 10 input tokens and 3 decode steps over 30 ms; 4 input tokens and one
        // decode step over 10 ms. Weights 1000 bytes, 10 bytes of KV per position.
        let a = testutil::sample(1, 5.0, 10, &[10.0, 10.0, 10.0]);
        let b = testutil::sample(2, 5.0, 4, &[10.0]);
        let failed = testutil::failed_sample(3);
        let bw = DecodeBandwidth::over(
            &[a, b, failed],
            |ctx| DecodeBytes {
                weights: 1000,
                kv: 10 * ctx as u64,
            },
            1e6,
            64 << 20,
        )
        .unwrap();
        // KV: positions 11, 12, 13 and 5 → 410 bytes over 4 steps.
        assert_eq!(bw.weight_bytes_per_token, 1000);
        assert!((bw.kv_bytes_per_token_mean - 102.5).abs() < 1e-9);
        // 4,410 bytes in 40 ms.
        assert!((bw.read_bytes_per_s - 110_250.0).abs() < 1e-6);
        assert!((bw.utilisation - 0.11025).abs() < 1e-12);
    }

    #[test]
    fn no_decode_step_no_figure() {
        let one_token = testutil::sample(1, 5.0, 3, &[]);
        let bytes = |_| DecodeBytes { weights: 1, kv: 1 };
        assert!(DecodeBandwidth::over(&[one_token], bytes, 1e9, 1).is_none());
    }
}
