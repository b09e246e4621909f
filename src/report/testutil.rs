//! Hand-made reports for unit tests: every number is chosen by the test, so expected ratios
//! and plotted points can be worked out by hand.

use std::collections::BTreeMap;

use super::serving::{LevelReport, RequestRecord, ServerInfo, ServingConfig, ServingReport};
use super::{DatasetRef, Environment, Report, RunConfig, RunStatus, RunSummary, SampleRecord};
use crate::engine::{EngineInfo, StopReason};
use crate::memory::{MaybeBytes, MemoryReport};
use crate::metrics::SampleMetrics;
use crate::stats::{summarize, Summary};

/// A report as the commands hold it, named `label` (read from `label.json`).
pub fn named(label: &str, report: super::read::AnyReport) -> super::read::NamedReport {
    super::read::NamedReport {
        label: label.into(),
        path: std::path::PathBuf::from(format!("{label}.json")),
        report,
    }
}

pub fn environment() -> Environment {
    Environment {
        vlmbench_version: "0.1.0".into(),
        git_commit: "abc123".into(),
        git_dirty: Some(false),
        rustc_version: "rustc 1.90.0".into(),
        candle_version: "0.11.1".into(),
        cuda_build: false,
        cuda_runtime_version: None,
        os: "linux".into(),
        arch: "x86_64".into(),
        cpu_model: "Test CPU <fast> & cheap".into(),
        cpu_threads: 2,
        cpu_kernels: Some(super::environment::CpuKernels {
            set: "avx2".into(),
            features: vec!["avx2".into(), "fma".into(), "f16c".into()],
        }),
        model_threads: Some(2),
        rayon_num_threads_env: None,
        huge_page_bytes: None,
        gpu: None,
        command_line: vec!["vlmbench".into(), "run".into()],
    }
}

pub fn dataset(sha: &str) -> DatasetRef {
    DatasetRef {
        path: "perf_data/x.json".into(),
        set: "prompts".into(),
        name: "prompts_x".into(),
        sha256: sha.into(),
        seed: Some(42),
        num_samples: 8,
    }
}

/// A sample with the given TTFT, input length and TBT gaps.
pub fn sample(index: i64, ttft: f64, input_tokens: usize, tbt: &[f64]) -> SampleRecord {
    let decode: f64 = tbt.iter().sum();
    SampleRecord {
        index,
        repeat: 0,
        ok: true,
        error: None,
        metrics: Some(SampleMetrics {
            ttft_ms: ttft,
            preprocess_ms: 0.5,
            vision_encode_ms: None,
            prefill_ms: ttft - 0.5,
            decode_ms: decode,
            tps: (!tbt.is_empty()).then(|| tbt.len() as f64 / (decode / 1e3)),
            tpot_ms: (!tbt.is_empty()).then(|| decode / tbt.len() as f64),
            e2e_ms: ttft + decode,
            input_tokens,
            image_tokens: 0,
            images: 0,
            output_tokens: tbt.len() + 1,
            stop_reason: StopReason::MaxTokens,
            gpu_pool_peaks: None,
            tbt_ms: tbt.to_vec(),
        }),
        output_token_ids: vec![7; tbt.len() + 1],
        text: "x".into(),
    }
}

pub fn failed_sample(index: i64) -> SampleRecord {
    SampleRecord {
        index,
        repeat: 0,
        ok: false,
        error: Some("prompt longer than the context".into()),
        metrics: None,
        output_token_ids: Vec::new(),
        text: String::new(),
    }
}

/// An in-process report over `samples`, measured in `duration_s` seconds.
pub fn report(samples: Vec<SampleRecord>, duration_s: f64) -> Report {
    Report {
        schema_version: 1,
        status: RunStatus::Complete,
        status_detail: None,
        started_at: "2026-01-01T00:00:00Z".into(),
        environment: environment(),
        engine: EngineInfo {
            backend: "candle".into(),
            model: "random:tiny-llama".into(),
            architecture: "llama".into(),
            dtype: "f32".into(),
            device: "cpu".into(),
            parameters: Some(1000),
            context_length: 1024,
            vision: false,
        },
        config: RunConfig {
            max_new_tokens: 16,
            ignore_eos: false,
            warmup: 1,
            limit: None,
            repeat: 1,
            kv_cache_dtype: None,
            decoding: "greedy (temperature 0)".into(),
        },
        dataset: dataset("aaaa"),
        summary: RunSummary::from_samples(&samples, duration_s),
        memory: MemoryReport {
            host_peak_rss: MaybeBytes::known(1 << 20),
            gpu_peak_process: MaybeBytes::unknown("no GPU"),
            gpu_peak_device: MaybeBytes::unknown("no GPU"),
            gpu_sample_interval_ms: None,
            gpu_pool_peak_prefill: MaybeBytes::unknown("no GPU"),
            gpu_pool_peak_decode: MaybeBytes::unknown("no GPU"),
        },
        decode_bandwidth: None,
        prefill_compute: None,
        samples,
    }
}

/// A summary whose median and p99 are the given values (other fields arbitrary but sane).
pub fn summary(median: f64, p99: f64) -> Summary {
    Summary {
        count: 10,
        mean: median,
        median,
        p75: median,
        p90: p99,
        p95: p99,
        p99,
        min: median / 2.0,
        max: p99,
        stddev: 1.0,
    }
}

/// A request that took `ttft` to its first token, then `itl` per further token.
pub fn request(index: i64, ttft: f64, input_tokens: u64, itl: &[f64]) -> RequestRecord {
    let decode: f64 = itl.iter().sum();
    RequestRecord {
        index,
        ok: true,
        error: None,
        cancelled: false,
        retried: None,
        http_status: Some(200),
        ttft_ms: Some(ttft),
        ttft_from_send_ms: Some(ttft),
        e2el_ms: Some(ttft + decode),
        e2el_from_send_ms: Some(ttft + decode),
        tpot_ms: (!itl.is_empty()).then(|| decode / itl.len() as f64),
        queue_ms: Some(0.0),
        input_tokens: Some(input_tokens),
        input_tokens_source: Some("server usage".into()),
        output_tokens: Some(itl.len() as u64 + 1),
        output_tokens_source: Some("server usage".into()),
        itl_per_token: true,
        itl_ms: itl.to_vec(),
        chunk_gaps_ms: itl.to_vec(),
        text: "x".into(),
        detail: Default::default(),
    }
}

/// A load level with hand-chosen headline numbers over `requests`.
pub fn level(
    concurrency: usize,
    ttft: Summary,
    itl: Summary,
    output_throughput: f64,
    requests: Vec<RequestRecord>,
) -> LevelReport {
    let ok = requests.iter().filter(|r| r.ok).count();
    LevelReport {
        concurrency: Some(concurrency),
        request_rate: None,
        duration: 10.0,
        completed: ok,
        failed: requests.len() - ok,
        failure_reasons: BTreeMap::new(),
        request_throughput: ok as f64 / 10.0,
        output_throughput,
        total_token_throughput: output_throughput * 2.0,
        total_input_tokens: 100,
        total_output_tokens: 100,
        output_tokens_source: "server usage".into(),
        output_tokens_sources: BTreeMap::from([("server usage".to_string(), ok)]),
        input_tokens_sources: BTreeMap::from([("server usage".to_string(), ok)]),
        itl_basis: "per token".into(),
        cancelled: 0,
        retried: 0,
        arrival_seed: None,
        ttft_ms: Some(ttft),
        ttft_from_send_ms: None,
        tpot_ms: summarize(
            &requests
                .iter()
                .filter_map(|r| r.tpot_ms)
                .collect::<Vec<_>>(),
        ),
        itl_ms: Some(itl),
        chunk_gap_ms: None,
        e2el_ms: summarize(
            &requests
                .iter()
                .filter_map(|r| r.e2el_ms)
                .collect::<Vec<_>>(),
        ),
        e2el_from_send_ms: None,
        queue_ms: None,
        extras: Default::default(),
        requests,
    }
}

pub fn serving(levels: Vec<LevelReport>) -> ServingReport {
    ServingReport {
        schema_version: 1,
        kind: "serving".into(),
        status: RunStatus::Complete,
        status_detail: None,
        started_at: "2026-01-01T00:00:00Z".into(),
        environment: environment(),
        server: ServerInfo {
            base_url: "http://127.0.0.1:8000/v1".into(),
            endpoint: "chat".into(),
            model: "served-model".into(),
            models: None,
            props: None,
            facts: Default::default(),
            launch_args: None,
        },
        config: ServingConfig {
            max_tokens: 16,
            ignore_eos: false,
            stream_usage_requested: true,
            num_prompts: 4,
            warmup_requests: 1,
            request_timeout_s: 600.0,
            burstiness: 1.0,
            input_policy: None,
        },
        dataset: dataset("aaaa"),
        levels,
        extras: Default::default(),
    }
}
