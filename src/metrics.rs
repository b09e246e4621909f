//! Per-sample metrics derived from an engine's raw timeline, with one definition each.
//!
//! All latencies are in milliseconds, measured from the moment the request was handed to the
//! engine (in-process) and read only after the device finished:
//! - **TTFT**: request start → first generated token id on the host. Includes preprocessing,
//!   vision encoding and prefill.
//! - **prefill**: TTFT − preprocessing − vision encoding.
//! - **TBT**: the gap between consecutive generated tokens; `output_tokens − 1` values.
//! - **decode time**: last token − first token (the sum of TBT).
//! - **TPS**: decode tokens per second = (output_tokens − 1) / decode time = 1 / mean(TBT).
//!   Undefined (absent) with fewer than two output tokens.
//! - **TPOT**: (E2E − TTFT) / (output_tokens − 1), as vLLM defines it; differs from mean TBT
//!   only by the detokenisation time after the last token.
//! - **E2E**: request start → request finished (text detokenised).
//!
//! Reads an engine's [`Generation`]; used by bench and report. Must not depend on report,
//! bench or anything above.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{Generation, PhasePeaks, StopReason};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The measured numbers of one successful sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleMetrics {
    pub ttft_ms: f64,
    pub preprocess_ms: f64,
    /// Present for samples with an image on a vision model.
    pub vision_encode_ms: Option<f64>,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// Decode tokens per second; absent with fewer than two output tokens.
    pub tps: Option<f64>,
    /// vLLM-style time per output token; absent with fewer than two output tokens.
    pub tpot_ms: Option<f64>,
    pub e2e_ms: f64,
    pub input_tokens: usize,
    /// Of `input_tokens`, how many stand for the sample's images (all of them together).
    pub image_tokens: usize,
    /// How many images the sample had (0 for text; absent in older reports, read as 0).
    #[serde(default)]
    pub images: usize,
    pub output_tokens: usize,
    pub stop_reason: StopReason,
    /// Exact CUDA memory-pool peaks per phase (CUDA runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_pool_peaks: Option<PhasePeaks>,
    /// Every gap between consecutive tokens, in generation order.
    pub tbt_ms: Vec<f64>,
}

impl SampleMetrics {
    /// Derives the metrics; `None` if the engine produced no token at all.
    pub fn from_generation(g: &Generation) -> Option<Self> {
        let first = *g.token_arrivals.first()?;
        let last = *g.token_arrivals.last()?;
        let ttft_ms = ms(first);
        let preprocess_ms = ms(g.preprocess);
        let vision_encode_ms = g.vision_encode.map(ms);
        let tbt_ms: Vec<f64> = g
            .token_arrivals
            .windows(2)
            .map(|w| ms(w[1].saturating_sub(w[0])))
            .collect();
        let decode_ms = ms(last.saturating_sub(first));
        let decode_tokens = g.token_arrivals.len() - 1;
        let e2e_ms = ms(g.end.max(last));
        let (tps, tpot_ms) = if decode_tokens > 0 && decode_ms > 0.0 {
            (
                Some(decode_tokens as f64 / (decode_ms / 1e3)),
                Some((e2e_ms - ttft_ms) / decode_tokens as f64),
            )
        } else {
            (None, None)
        };
        Some(Self {
            ttft_ms,
            preprocess_ms,
            vision_encode_ms,
            prefill_ms: (ttft_ms - preprocess_ms - vision_encode_ms.unwrap_or(0.0)).max(0.0),
            decode_ms,
            tps,
            tpot_ms,
            e2e_ms,
            input_tokens: g.input_tokens,
            image_tokens: g.image_tokens,
            images: g.images,
            output_tokens: g.token_arrivals.len(),
            stop_reason: g.stop_reason,
            gpu_pool_peaks: g.pool_peaks,
            tbt_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(arrivals_ms: &[u64], end_ms: u64) -> Generation {
        Generation {
            preprocess: Duration::from_millis(2),
            vision_encode: Some(Duration::from_millis(3)),
            token_arrivals: arrivals_ms
                .iter()
                .map(|&m| Duration::from_millis(m))
                .collect(),
            end: Duration::from_millis(end_ms),
            input_tokens: 10,
            image_tokens: 4,
            images: 2,
            output_token_ids: vec![1; arrivals_ms.len()],
            text: String::new(),
            stop_reason: StopReason::MaxTokens,
            pool_peaks: None,
        }
    }

    #[test]
    fn definitions_hold() {
        let m = SampleMetrics::from_generation(&gen(&[50, 60, 75, 80], 81)).unwrap();
        assert_eq!(m.ttft_ms, 50.0);
        assert_eq!(m.prefill_ms, 45.0);
        assert_eq!(m.tbt_ms, vec![10.0, 15.0, 5.0]);
        assert_eq!(m.decode_ms, 30.0);
        assert_eq!(m.output_tokens, 4);
        assert!((m.tps.unwrap() - 100.0).abs() < 1e-9); // 3 tokens in 30 ms
        assert!((m.tpot_ms.unwrap() - 31.0 / 3.0).abs() < 1e-9);
        assert_eq!(m.e2e_ms, 81.0);
        assert_eq!((m.image_tokens, m.images), (4, 2));
    }

    #[test]
    fn single_token_has_no_rate() {
        let m = SampleMetrics::from_generation(&gen(&[50], 51)).unwrap();
        assert!(m.tps.is_none() && m.tpot_ms.is_none() && m.tbt_ms.is_empty());
        assert!(SampleMetrics::from_generation(&gen(&[], 51)).is_none());
    }
}
