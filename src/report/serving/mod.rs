//! Report of a run against an OpenAI-compatible server: one section per load level.
//!
//! Field names follow vLLM's `bench serve` results where a user would look for them
//! (`completed`, `request_throughput`, `output_throughput`, `total_token_throughput`, and per
//! metric `mean`/`median`/`p99`..., so vLLM's `mean_ttft_ms` is `ttft_ms.mean` here). See the
//! README's metric table for the mapping to vLLM and AIPerf.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub mod extras;
pub mod server_side;

use super::{preview, DatasetRef, Environment, RunStatus};
use crate::fsutil::write_atomic;
use crate::stats::Summary;
pub use extras::{LevelExtras, RequestDetail, ServingExtras};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServingReport {
    pub schema_version: u32,
    /// Always `serving`, to tell it from an in-process report.
    pub kind: String,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    pub started_at: String,
    pub environment: Environment,
    pub server: ServerInfo,
    pub config: ServingConfig,
    pub dataset: DatasetRef,
    pub levels: Vec<LevelReport>,
    /// Goodput SLOs and search, repeated runs, arrival control, shards.
    #[serde(flatten, default)]
    pub extras: ServingExtras,
}

/// What the server says about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    pub base_url: String,
    pub endpoint: String,
    /// Model name sent in requests.
    pub model: String,
    /// `GET /v1/models` response.
    pub models: Option<serde_json::Value>,
    /// llama.cpp's `GET /props` response, where the server has one.
    pub props: Option<serde_json::Value>,
    /// How the server describes its launch, by endpoint (TGI `/info`, SGLang
    /// `/get_server_info`, vLLM `/server_info` and `/version`), where it answered.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, serde_json::Value>,
    /// `--server-args`, as given (API key scrubbed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_args: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServingConfig {
    pub max_tokens: usize,
    pub ignore_eos: bool,
    pub stream_usage_requested: bool,
    pub num_prompts: usize,
    pub warmup_requests: usize,
    pub request_timeout_s: f64,
    pub burstiness: f64,
    /// How repeated inputs were handled (see [`InputPolicy`]); absent in older reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_policy: Option<InputPolicy>,
}

/// What the run did so that server caches (prefix cache, multimodal encoder cache) could not
/// serve a request from an earlier one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InputPolicy {
    /// `unique` (a repeated prompt gets a unique prefix, a repeated image altered pixels) or
    /// `exact-repeats` (`--repeat-inputs`: inputs sent as given, caches may hit).
    pub repeats: String,
    /// Requests (warm-up included) whose prompt got a unique prefix.
    pub prompts_prefixed: usize,
    /// Characters those prefixes added in all.
    pub prefix_chars_added: usize,
    /// Tokens those prefixes added in all, counted with `--tokenizer` (absent without one).
    pub prefix_tokens_added: Option<u64>,
    /// Requests whose image was re-encoded with altered pixels.
    pub images_altered: usize,
    /// `--reset-cache`: the endpoint that answered between levels, or why none did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_reset: Option<String>,
    /// A cache workload that ran (its sharing is on purpose): `shared-prefix ...` or
    /// `conversations ...`, with its shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_workload: Option<String>,
}

/// One load level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LevelReport {
    /// Requests in flight at most (null = unlimited).
    pub concurrency: Option<usize>,
    /// Arrivals per second (null = all at once).
    pub request_rate: Option<f64>,
    /// First scheduled request → last response, seconds.
    pub duration: f64,
    pub completed: usize,
    pub failed: usize,
    pub failure_reasons: BTreeMap<String, usize>,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    /// Where output token counts came from, from the data: `server usage`, `tokenizer` or
    /// `chunks` when all successful requests agree, else `mixed: ...` with the counts.
    pub output_tokens_source: String,
    /// Successful requests per output count source.
    #[serde(default)]
    pub output_tokens_sources: BTreeMap<String, usize>,
    /// Successful requests per input count source.
    #[serde(default)]
    pub input_tokens_sources: BTreeMap<String, usize>,
    /// `per token` when every chunk's token count was known from streamed usage, `per chunk`
    /// when none was (each chunk then counts as one token: `itl_ms` is a per-chunk gap), else
    /// `mixed`.
    #[serde(default = "per_token")]
    pub itl_basis: String,
    /// Requests in flight when the run was cancelled (not counted as failed).
    #[serde(default)]
    pub cancelled: usize,
    /// Requests retried once on a fresh connection after a stale keep-alive connection.
    #[serde(default)]
    pub retried: usize,
    /// Seed of the arrival schedule (rate mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_seed: Option<u64>,
    /// From the scheduled arrival (client queueing included).
    pub ttft_ms: Option<Summary>,
    /// From the actual send.
    pub ttft_from_send_ms: Option<Summary>,
    pub tpot_ms: Option<Summary>,
    /// Per token: a chunk of n tokens contributes n gaps of (gap / n).
    pub itl_ms: Option<Summary>,
    /// Per streamed chunk (vLLM's ITL definition).
    pub chunk_gap_ms: Option<Summary>,
    pub e2el_ms: Option<Summary>,
    pub e2el_from_send_ms: Option<Summary>,
    /// Scheduled arrival → actual send.
    pub queue_ms: Option<Summary>,
    /// Goodput, reasoning, steady state, run number.
    #[serde(flatten, default)]
    pub extras: LevelExtras,
    /// Statistics use successful requests only.
    pub requests: Vec<RequestRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Sample index in the data set.
    pub index: i64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// In flight when the run was cancelled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
    /// Why the first attempt was retried on a fresh connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried: Option<String>,
    pub http_status: Option<u16>,
    pub ttft_ms: Option<f64>,
    pub ttft_from_send_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
    #[serde(default)]
    pub e2el_from_send_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub queue_ms: Option<f64>,
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub input_tokens_source: Option<String>,
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens_source: Option<String>,
    /// Whether `itl_ms` is per token (streamed usage split the chunks) or per chunk.
    #[serde(default = "yes")]
    pub itl_per_token: bool,
    pub itl_ms: Vec<f64>,
    pub chunk_gaps_ms: Vec<f64>,
    pub text: String,
    /// Offsets on the level's clock, reasoning counts, shard.
    #[serde(flatten, default)]
    pub detail: RequestDetail,
}

fn per_token() -> String {
    "per token".into()
}

fn yes() -> bool {
    true
}

pub fn write_json(report: &ServingReport, path: &Path) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(report).context("cannot serialise the report")?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

pub fn write_csv(report: &ServingReport, path: &Path) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "concurrency",
        "request_rate",
        "index",
        "ok",
        "error",
        "http_status",
        "input_tokens",
        "output_tokens",
        "ttft_ms",
        "ttft_from_send_ms",
        "tpot_ms",
        "mean_itl_ms",
        "e2el_ms",
        "queue_ms",
        "text_preview",
        "e2el_from_send_ms",
        "input_tokens_source",
        "output_tokens_source",
        "itl_basis",
        "retried",
        "cancelled",
    ])?;
    let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_default();
    let u = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
    for level in &report.levels {
        for r in &level.requests {
            let mean_itl = (!r.itl_ms.is_empty())
                .then(|| r.itl_ms.iter().sum::<f64>() / r.itl_ms.len() as f64);
            w.write_record([
                level.concurrency.map(|c| c.to_string()).unwrap_or_default(),
                f(level.request_rate),
                r.index.to_string(),
                r.ok.to_string(),
                r.error.clone().unwrap_or_default(),
                r.http_status.map(|s| s.to_string()).unwrap_or_default(),
                u(r.input_tokens),
                u(r.output_tokens),
                f(r.ttft_ms),
                f(r.ttft_from_send_ms),
                f(r.tpot_ms),
                f(mean_itl),
                f(r.e2el_ms),
                f(r.queue_ms),
                preview(&r.text, 80),
                f(r.e2el_from_send_ms),
                r.input_tokens_source.clone().unwrap_or_default(),
                r.output_tokens_source.clone().unwrap_or_default(),
                if r.itl_per_token {
                    "per token"
                } else {
                    "per chunk"
                }
                .into(),
                r.retried.clone().unwrap_or_default(),
                r.cancelled.to_string(),
            ])?;
        }
    }
    write_atomic(path, &w.into_inner().context("cannot build CSV")?)
}

/// A level's latency metrics (all in ms) in display order.
pub fn level_metric_rows(l: &LevelReport) -> [(&'static str, &Option<Summary>); 7] {
    [
        ("TTFT", &l.ttft_ms),
        ("TTFT from send", &l.ttft_from_send_ms),
        ("TPOT", &l.tpot_ms),
        (l.itl_label(), &l.itl_ms),
        ("E2E", &l.e2el_ms),
        ("E2E from send", &l.e2el_from_send_ms),
        ("Queue", &l.queue_ms),
    ]
}

impl LevelReport {
    /// The ITL's name in tables: per chunk unless every chunk's token count was known.
    pub fn itl_label(&self) -> &'static str {
        match self.itl_basis.as_str() {
            "per token" => "ITL",
            "per chunk" => "ITL per chunk",
            _ => "ITL (mixed)",
        }
    }

    /// Whether `itl_ms` is a per-token gap for every request.
    pub fn itl_is_per_token(&self) -> bool {
        self.itl_basis == "per token"
    }
}

/// One table per level.
/// A level's arrival rate in words: its rate, or how a ramp-up or a trace made its arrivals.
fn rate_label(report: &ServingReport, l: &LevelReport) -> String {
    match (&report.extras.arrival, l.request_rate) {
        (Some(a), _) if a.kind == "trace" => "trace replay".into(),
        (Some(a), _) => format!(
            "{} {}/s -> {}/s",
            a.kind,
            a.ramp_start_rate.unwrap_or(0.0),
            a.ramp_end_rate.unwrap_or(0.0)
        ),
        (None, Some(r)) => format!("{r}/s"),
        (None, None) => "inf".into(),
    }
}

pub fn render(report: &ServingReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} at {} ({}) — {}",
        report.server.model, report.server.base_url, report.server.endpoint, report.dataset.name
    );
    for l in &report.levels {
        let _ = writeln!(
            out,
            "\nconcurrency {} | rate {} | {} ok, {} failed | {:.2} s | {:.3} req/s | {:.1} output tok/s | tokens: {}",
            l.concurrency.map(|c| c.to_string()).unwrap_or_else(|| "unlimited".into()),
            rate_label(report, l),
            l.completed,
            l.failed,
            l.duration,
            l.request_throughput,
            l.output_throughput,
            l.output_tokens_source
        );
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "metric (ms)", "mean", "median", "p90", "p95", "p99", "min", "max", "stddev"
        );
        for (name, s) in level_metric_rows(l) {
            if let Some(s) = s {
                let _ = writeln!(
                    out,
                    "{:<16} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                    name, s.mean, s.median, s.p90, s.p95, s.p99, s.min, s.max, s.stddev
                );
            }
        }
        for (reason, n) in &l.failure_reasons {
            let _ = writeln!(out, "  failed x{n}: {reason}");
        }
        if l.cancelled > 0 {
            let _ = writeln!(out, "  cancelled in flight: {}", l.cancelled);
        }
        if l.retried > 0 {
            let _ = writeln!(
                out,
                "  retried on a fresh connection (stale keep-alive): {}",
                l.retried
            );
        }
        if !l.itl_is_per_token() {
            let _ = writeln!(
                out,
                "  ITL is {} (no per-chunk token counts from the server): a chunk may hold several tokens",
                l.itl_basis
            );
        }
    }
    out
}
