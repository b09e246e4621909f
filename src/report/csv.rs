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
    "images",
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

/// Whether `header` is the first line of an in-process CSV vlmbench writes now, or wrote before
/// the `images` column was added (so a report written by an older vlmbench may be replaced).
pub fn is_header(header: &str) -> bool {
    let earlier: Vec<&str> = COLUMNS.iter().copied().filter(|c| *c != "images").collect();
    header == COLUMNS.join(",") || header == earlier.join(",")
}

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
            m.map(|m| m.images.to_string()).unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_counts_the_images_beside_their_tokens() {
        use crate::report::testutil::{report, sample};
        let mut two = sample(1, 10.0, 120, &[1.0, 2.0]);
        if let Some(m) = two.metrics.as_mut() {
            m.image_tokens = 94;
            m.images = 2;
        }
        let report = report(vec![two], 1.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        write(&report, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rows = ::csv::Reader::from_path(&path).unwrap();
        let header: Vec<String> = rows.headers().unwrap().iter().map(str::to_owned).collect();
        let at = |name: &str| header.iter().position(|h| h == name).unwrap();
        assert_eq!(at("images"), at("image_tokens") + 1, "{text}");
        let row = rows.records().next().unwrap().unwrap();
        assert_eq!((&row[at("image_tokens")], &row[at("images")]), ("94", "2"));
        assert!(is_header(text.lines().next().unwrap()));
        assert!(is_header(
            &text.lines().next().unwrap().replace(",images,", ",")
        ));
        assert!(!is_header("index,repeat,ok"));
    }
}
