//! One CSV row per measured sample, for spreadsheets and pandas.

use std::path::Path;

use anyhow::{Context, Result};

use super::{preview, Report};
use crate::fsutil::write_atomic;

/// Column names, in order. Times in milliseconds, rates in tokens per second; empty cells are
/// values that do not exist for that sample (a failed sample, a single output token).
pub const COLUMNS: &[&str] = &[
    "index",
    "repeat",
    "ok",
    "error",
    "input_tokens",
    "image_tokens",
    "output_tokens",
    "ttft_ms",
    "preprocess_ms",
    "vision_encode_ms",
    "prefill_ms",
    "decode_ms",
    "mean_tbt_ms",
    "tps",
    "tpot_ms",
    "e2e_ms",
    "stop_reason",
    "text_preview",
];

pub fn write(report: &Report, path: &Path) -> Result<()> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    w.write_record(COLUMNS)?;
    let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_default();
    for s in &report.samples {
        let m = s.metrics.as_ref();
        let mean_tbt = m.and_then(|m| {
            (!m.tbt_ms.is_empty()).then(|| m.tbt_ms.iter().sum::<f64>() / m.tbt_ms.len() as f64)
        });
        let stop = m
            .map(|m| {
                serde_json::to_value(m.stop_reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        w.write_record([
            s.index.to_string(),
            s.repeat.to_string(),
            s.ok.to_string(),
            s.error.clone().unwrap_or_default(),
            m.map(|m| m.input_tokens.to_string()).unwrap_or_default(),
            m.map(|m| m.image_tokens.to_string()).unwrap_or_default(),
            m.map(|m| m.output_tokens.to_string()).unwrap_or_default(),
            f(m.map(|m| m.ttft_ms)),
            f(m.map(|m| m.preprocess_ms)),
            f(m.and_then(|m| m.vision_encode_ms)),
            f(m.map(|m| m.prefill_ms)),
            f(m.map(|m| m.decode_ms)),
            f(mean_tbt),
            f(m.and_then(|m| m.tps)),
            f(m.and_then(|m| m.tpot_ms)),
            f(m.map(|m| m.e2e_ms)),
            stop,
            preview(&s.text, 80),
        ])?;
    }
    let bytes = w.into_inner().context("cannot build CSV")?;
    write_atomic(path, &bytes)
}
