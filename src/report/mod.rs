//! The run report: one struct that *is* the JSON schema, and one exporter per format.
//!
//! - [`json`]: the full report (`<base>.json`), written atomically.
//! - [`csv`]: one row per sample (`<base>.csv`), same basename.
//! - [`table`]: the terminal summary, one row per metric.
//! - [`compare`]: several reports side by side, with ratios to the first.
//! - [`read`]: reading either kind of report back (in-process or serving).
//! - [`serving`]: the serving report (one section per load level).
//!
//! Both kinds aggregate through [`crate::stats::Totals`] and its summaries
//! ([`RunSummary::from_samples`], [`serving::LevelReport::from_requests`]).
//!
//! - [`bandwidth`]: decode's memory traffic beside the machine's read bandwidth.
//!
//! Uses engine (the facts an engine reports), metrics, dataset (which set a report ran on),
//! client (a server's metrics page, read into a serving level), models (what a decode step
//! reads), stats, memory and fsutil. Must not depend on plot (charts and HTML read reports, not
//! the other way round), bench or commands.

pub mod bandwidth;
pub mod compare;
pub mod compute;
pub mod csv;
pub mod environment;
pub mod journal;
pub mod json;
pub mod read;
pub mod serving;
mod serving_summary;
pub mod table;
#[cfg(test)]
pub(crate) mod testutil;
pub mod timeline;
pub mod vllm_export;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::EngineInfo;
use crate::memory::MemoryReport;
use crate::metrics::SampleMetrics;
use crate::stats::{summarize_each, summarize_pooled, Outcome, Summary, Totals};
pub use environment::Environment;

/// Bumped when a report field changes meaning or disappears.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every requested sample was attempted.
    Complete,
    /// Stopped by Ctrl-C; the report holds the samples that finished.
    Interrupted,
    /// Stopped by an engine error; the report holds the samples that finished before it.
    Aborted,
}

/// A complete benchmark report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Version of this schema ([`REPORT_SCHEMA_VERSION`]).
    pub schema_version: u32,
    pub status: RunStatus,
    /// Why the run stopped early (absent for complete runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    /// UTC start time, ISO 8601.
    pub started_at: String,
    pub environment: Environment,
    pub engine: EngineInfo,
    pub config: RunConfig,
    pub dataset: DatasetRef,
    pub summary: RunSummary,
    pub memory: MemoryReport,
    /// Decode's memory traffic beside the machine's read bandwidth (CPU runs of the candle
    /// engines; absent elsewhere and in older reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_bandwidth: Option<bandwidth::DecodeBandwidth>,
    /// Prefill's arithmetic beside the machine's f32 matrix-product rate (CPU runs of the
    /// candle engines; absent elsewhere and in older reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_compute: Option<compute::PrefillCompute>,
    /// Every measured sample, in run order (warm-up samples excluded).
    pub samples: Vec<SampleRecord>,
}

/// Settings that shape the numbers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    pub max_new_tokens: usize,
    pub ignore_eos: bool,
    /// Untimed samples run before measuring (the first samples of the set, run once).
    pub warmup: usize,
    /// At most this many samples of the set were used.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Each sample was run this many times.
    pub repeat: usize,
    /// Always greedy (temperature 0).
    pub decoding: String,
    /// The KV cache's dtype where `--kv-cache-dtype` chose one (absent: the activation
    /// dtype, and in older reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_dtype: Option<String>,
}

/// Which frozen inputs the run used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetRef {
    /// Path as given on the command line (or the built-in set's location).
    pub path: String,
    pub set: String,
    pub name: String,
    /// sha256 of the data file's bytes.
    pub sha256: String,
    pub seed: Option<u64>,
    /// Samples in the file (before `--limit`).
    pub num_samples: usize,
}

impl DatasetRef {
    /// Describes a loaded set, as given at `path`.
    pub fn of(path: &std::path::Path, dataset: &crate::dataset::LoadedDataset) -> Self {
        Self {
            path: path.display().to_string(),
            set: dataset.file.set.clone(),
            name: dataset.file.name.clone(),
            sha256: dataset.sha256.clone(),
            seed: dataset.file.seed,
            num_samples: dataset.file.num_samples,
        }
    }
}

/// One measured sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampleRecord {
    /// The sample's `index` in the data file.
    pub index: i64,
    /// 0-based repetition number (see `--repeat`).
    pub repeat: usize,
    /// Whether it produced at least one token without error.
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Timings and token counts (absent for failed samples).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SampleMetrics>,
    /// Generated token ids.
    #[serde(default)]
    pub output_token_ids: Vec<u32>,
    /// Generated text.
    #[serde(default)]
    pub text: String,
}

/// Aggregates over the measured samples. Statistics use successful samples only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunSummary {
    /// Samples attempted (after warm-up, times repeats).
    pub num_samples: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// succeeded / num_samples (0 when nothing ran).
    pub success_rate: f64,
    /// Failure reasons and how often each occurred.
    pub failure_reasons: BTreeMap<String, usize>,
    /// Wall time of the measured part of the run, in seconds.
    pub duration_s: f64,
    /// Successful samples per second of wall time (samples run one after another).
    pub request_throughput: f64,
    /// Output tokens of successful samples per second of wall time.
    pub output_throughput: f64,
    /// Input + output tokens of successful samples per second of wall time.
    pub total_token_throughput: f64,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    /// Time to first token, ms, one value per sample.
    pub ttft_ms: Option<Summary>,
    /// Time between tokens, ms, every decode step of every sample pooled.
    pub tbt_ms: Option<Summary>,
    /// Time per output token (vLLM's TPOT), ms, one value per sample.
    pub tpot_ms: Option<Summary>,
    /// Per-sample TPS: each sample's decode tokens / its decode time, one value per sample, and
    /// the statistics of those values (their mean is not the pooled rate when lengths differ).
    pub tps: Option<Summary>,
    /// Pooled decode throughput: every successful sample's decode tokens (output tokens − 1)
    /// divided by all their decode time, tokens/s (= 1 / mean of the pooled TBT). Absent when
    /// no sample decoded past its first token.
    #[serde(default)]
    pub decode_tps_pooled: Option<f64>,
    /// End-to-end latency, ms, one value per sample.
    pub e2e_ms: Option<Summary>,
    pub prefill_ms: Option<Summary>,
    pub preprocess_ms: Option<Summary>,
    pub vision_encode_ms: Option<Summary>,
    pub input_tokens: Option<Summary>,
    pub output_tokens: Option<Summary>,
}

impl RunSummary {
    /// Computes the aggregates of `samples` measured over `duration_s` seconds.
    pub fn from_samples(samples: &[SampleRecord], duration_s: f64) -> Self {
        let ok: Vec<&SampleMetrics> = samples.iter().filter_map(|s| s.metrics.as_ref()).collect();
        let collect = |f: &dyn Fn(&SampleMetrics) -> Option<f64>| summarize_each(&ok, |m| f(m));
        let totals = Totals::over(
            samples.iter().map(|s| match &s.metrics {
                Some(m) => Outcome::Succeeded {
                    input_tokens: m.input_tokens as u64,
                    output_tokens: m.output_tokens as u64,
                },
                None => Outcome::Failed(s.error.as_deref()),
            }),
            duration_s,
        );
        Self {
            num_samples: samples.len(),
            succeeded: totals.succeeded,
            failed: totals.failed,
            success_rate: if samples.is_empty() {
                0.0
            } else {
                totals.succeeded as f64 / samples.len() as f64
            },
            failure_reasons: totals.failure_reasons,
            duration_s,
            request_throughput: totals.request_throughput,
            output_throughput: totals.output_throughput,
            total_token_throughput: totals.total_token_throughput,
            total_input_tokens: totals.input_tokens as usize,
            total_output_tokens: totals.output_tokens as usize,
            ttft_ms: collect(&|m| Some(m.ttft_ms)),
            tbt_ms: summarize_pooled(&ok, |m| &m.tbt_ms),
            tpot_ms: collect(&|m| m.tpot_ms),
            tps: collect(&|m| m.tps),
            decode_tps_pooled: pooled_decode_tps(&ok),
            e2e_ms: collect(&|m| Some(m.e2e_ms)),
            prefill_ms: collect(&|m| Some(m.prefill_ms)),
            preprocess_ms: collect(&|m| Some(m.preprocess_ms)),
            vision_encode_ms: collect(&|m| m.vision_encode_ms),
            input_tokens: collect(&|m| Some(m.input_tokens as f64)),
            output_tokens: collect(&|m| Some(m.output_tokens as f64)),
        }
    }
}

/// All decode tokens / all decode time over `samples`, tokens/s.
fn pooled_decode_tps(samples: &[&SampleMetrics]) -> Option<f64> {
    let tokens: usize = samples.iter().map(|m| m.tbt_ms.len()).sum();
    let ms: f64 = samples.iter().map(|m| m.decode_ms).sum();
    (tokens > 0 && ms > 0.0).then(|| tokens as f64 / (ms / 1e3))
}

impl Report {
    /// A report from the facts known before the run (`header`) and what it measured.
    pub fn from_parts(
        header: journal::RunHeader,
        status: RunStatus,
        status_detail: Option<String>,
        samples: Vec<SampleRecord>,
        duration_s: f64,
        memory: MemoryReport,
    ) -> Self {
        Self {
            schema_version: header.schema_version,
            status,
            status_detail,
            started_at: header.started_at,
            environment: header.environment,
            engine: header.engine,
            config: header.config,
            dataset: header.dataset,
            summary: RunSummary::from_samples(&samples, duration_s),
            memory,
            decode_bandwidth: None,
            prefill_compute: None,
            samples,
        }
    }
}

/// Shortens text for one-line display (by characters, never splitting one).
pub fn preview(text: &str, max_chars: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max_chars {
        flat
    } else {
        let cut: String = flat.chars().take(max_chars.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::StopReason;

    pub(crate) fn record(index: i64, ttft: f64, tbt: &[f64]) -> SampleRecord {
        let decode: f64 = tbt.iter().sum();
        SampleRecord {
            index,
            repeat: 0,
            ok: true,
            error: None,
            metrics: Some(SampleMetrics {
                ttft_ms: ttft,
                preprocess_ms: 1.0,
                vision_encode_ms: None,
                prefill_ms: ttft - 1.0,
                decode_ms: decode,
                tps: if tbt.is_empty() {
                    None
                } else {
                    Some(tbt.len() as f64 / (decode / 1e3))
                },
                tpot_ms: None,
                e2e_ms: ttft + decode,
                input_tokens: 10,
                image_tokens: 0,
                images: 0,
                output_tokens: tbt.len() + 1,
                stop_reason: StopReason::MaxTokens,
                gpu_pool_peaks: None,
                tbt_ms: tbt.to_vec(),
            }),
            output_token_ids: vec![5; tbt.len() + 1],
            text: "hi".into(),
        }
    }

    #[test]
    fn summary_counts_failures_and_pools_tbt() {
        let mut failed = record(3, 0.0, &[]);
        failed.ok = false;
        failed.metrics = None;
        failed.error = Some("image not found".into());
        let samples = vec![
            record(1, 100.0, &[10.0, 20.0]),
            record(2, 200.0, &[30.0]),
            failed,
        ];
        let s = RunSummary::from_samples(&samples, 2.0);
        assert_eq!((s.num_samples, s.succeeded, s.failed), (3, 2, 1));
        assert!((s.success_rate - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.failure_reasons["image not found"], 1);
        assert_eq!(s.tbt_ms.as_ref().unwrap().count, 3);
        assert_eq!(s.tbt_ms.as_ref().unwrap().mean, 20.0);
        assert_eq!(s.ttft_ms.as_ref().unwrap().mean, 150.0);
        assert_eq!(s.total_output_tokens, 5);
        assert_eq!(s.output_throughput, 2.5);
        assert_eq!(s.request_throughput, 1.0);
    }

    #[test]
    fn pooled_decode_rate_is_not_the_mean_of_per_sample_rates() {
        // 1 decode token in 10 ms (100 tok/s) and 9 tokens in 900 ms (10 tok/s).
        let samples = vec![record(1, 5.0, &[10.0]), record(2, 5.0, &[100.0; 9])];
        let s = RunSummary::from_samples(&samples, 1.0);
        assert!((s.tps.as_ref().unwrap().mean - 55.0).abs() < 1e-9);
        assert!((s.decode_tps_pooled.unwrap() - 10.0 / 0.91).abs() < 1e-9);
        // Pooled = 1 / mean of the pooled TBT.
        let tbt = s.tbt_ms.as_ref().unwrap().mean;
        assert!((s.decode_tps_pooled.unwrap() - 1e3 / tbt).abs() < 1e-9);
        assert_eq!(
            RunSummary::from_samples(&[record(3, 5.0, &[])], 1.0).decode_tps_pooled,
            None
        );
    }

    #[test]
    fn sample_record_round_trips_through_json() {
        let r = record(7, 12.5, &[1.0, 2.0]);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"ttft_ms\":12.5"), "{json}");
        let back: SampleRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        // The image count sits beside the image tokens; a report written before it existed
        // reads with none.
        assert!(json.contains("\"image_tokens\":0,\"images\":0,"), "{json}");
        let older: SampleRecord = serde_json::from_str(&json.replace("\"images\":0,", "")).unwrap();
        assert_eq!(older, r);
    }

    #[test]
    fn preview_cuts_on_characters() {
        assert_eq!(preview("héllo\nworld", 20), "héllo world");
        assert_eq!(preview("ééééé", 3), "éé…");
    }
}
