//! What the server saw during a level, beside what the client timed: its Prometheus counters'
//! changes and gauges' peaks ([`ServerMetrics`]), and its GPUs as NVML sampled them
//! ([`GpuLevelUse`]). A user reads where the client's TTFT went: queueing,
//! prefill, decode, a cold prefix cache, a full KV cache, preemptions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::server_metrics::{MetricKind, Snapshot};
use crate::memory::server_gpus::GpuLevelUse;

/// A gauge sampled during a level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaugeSummary {
    pub peak: f64,
    pub mean: f64,
    pub samples: usize,
}

/// One derived figure and the series it came from, so a user can check it on the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerFigure {
    pub value: f64,
    pub unit: String,
    pub source: String,
}

/// The server's metrics page over one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetrics {
    pub url: String,
    /// Scrapes taken: one before the level, one after, and one each interval between.
    pub scrapes: usize,
    pub interval_ms: u64,
    /// The figures that explain the client's numbers (see README "Server-side metrics"),
    /// by name: `queue_time_ms_mean`, `prefill_time_ms_mean`, `decode_time_ms_mean`,
    /// `server_ttft_ms_mean`, `prefix_cache_hit_rate`, `kv_cache_usage_peak`,
    /// `kv_cache_usage_mean`, `requests_waiting_peak`, `preemptions`, `prompt_tokens`,
    /// `generation_tokens`, `prompt_tokens_per_s`, `generation_tokens_per_s`.
    pub figures: BTreeMap<String, ServerFigure>,
    /// Change over the level of every cumulative series (counters, histogram sums/counts).
    pub changes: BTreeMap<String, f64>,
    /// Every gauge, sampled.
    pub gauges: BTreeMap<String, GaugeSummary>,
    /// Series that went down between the first and last scrape (a restarted server): left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reset_series: Vec<String>,
}

/// A histogram (or summary) whose mean over the level is Δsum / Δcount, in seconds.
struct MeanOf {
    figure: &'static str,
    base: &'static [&'static str],
}

const MEANS_MS: [MeanOf; 4] = [
    MeanOf {
        figure: "queue_time_ms_mean",
        base: &[
            "vllm:request_queue_time_seconds",
            "sglang:queue_time_seconds",
            "tgi_request_queue_duration",
        ],
    },
    MeanOf {
        figure: "prefill_time_ms_mean",
        base: &[
            "vllm:request_prefill_time_seconds",
            "tgi_batch_inference_duration{method=\"prefill\"}",
        ],
    },
    MeanOf {
        figure: "decode_time_ms_mean",
        base: &[
            "vllm:request_decode_time_seconds",
            "tgi_batch_inference_duration{method=\"decode\"}",
        ],
    },
    MeanOf {
        figure: "server_ttft_ms_mean",
        base: &[
            "vllm:time_to_first_token_seconds",
            "sglang:time_to_first_token_seconds",
        ],
    },
];

/// Counters whose change is the figure.
const CHANGES: [(&str, &str, &[&str]); 3] = [
    (
        "prompt_tokens",
        "tokens",
        &[
            "vllm:prompt_tokens_total",
            "sglang:prompt_tokens_total",
            "llamacpp:prompt_tokens_total",
            "tgi_request_input_length_sum",
        ],
    ),
    (
        "generation_tokens",
        "tokens",
        &[
            "vllm:generation_tokens_total",
            "sglang:generation_tokens_total",
            "llamacpp:tokens_predicted_total",
            "tgi_request_generated_tokens_sum",
        ],
    ),
    ("preemptions", "requests", &["vllm:num_preemptions_total"]),
];

/// Gauges whose peak (and mean) are the figure.
const GAUGES: [(&str, &[&str]); 2] = [
    (
        "kv_cache_usage",
        &[
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",
            "sglang:token_usage",
            "llamacpp:kv_cache_usage_ratio",
        ],
    ),
    (
        "requests_waiting",
        &[
            "vllm:num_requests_waiting",
            "sglang:num_queue_reqs",
            "tgi_queue_size",
            "llamacpp:requests_deferred",
        ],
    ),
];

/// Counter pairs whose ratio is a rate: (figure, unit, numerator, denominator).
const RATIOS: [(&str, &str, &str, &str); 3] = [
    (
        "prefix_cache_hit_rate",
        "fraction of prompt tokens",
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
    ),
    (
        "prompt_tokens_per_s",
        "tokens/s of prompt processing",
        "llamacpp:prompt_tokens_total",
        "llamacpp:prompt_seconds_total",
    ),
    (
        "generation_tokens_per_s",
        "tokens/s of generation",
        "llamacpp:tokens_predicted_total",
        "llamacpp:tokens_predicted_seconds_total",
    ),
];

/// Gauges that are themselves a hit rate (older vLLM, SGLang): their mean over the level.
const HIT_RATE_GAUGES: [&str; 2] = ["vllm:gpu_prefix_cache_hit_rate", "sglang:cache_hit_rate"];

impl ServerMetrics {
    /// The level's figures from its scrapes, in order (at least the one before and the one
    /// after). `None` with fewer than two.
    pub fn over(url: &str, interval_ms: u64, scrapes: &[Snapshot]) -> Option<Self> {
        let (first, last) = (scrapes.first()?, scrapes.last()?);
        if scrapes.len() < 2 {
            return None;
        }
        let mut changes = BTreeMap::new();
        let mut reset_series = Vec::new();
        for (name, (kind, after)) in &last.values {
            if *kind != MetricKind::Cumulative {
                continue;
            }
            let before = first.get(name).unwrap_or(0.0);
            if *after < before {
                reset_series.push(name.clone());
            } else {
                changes.insert(name.clone(), after - before);
            }
        }
        let mut gauges: BTreeMap<String, GaugeSummary> = BTreeMap::new();
        for name in scrapes.iter().flat_map(|s| {
            s.values
                .iter()
                .filter(|(_, (k, _))| *k == MetricKind::Gauge)
                .map(|(n, _)| n)
        }) {
            if gauges.contains_key(name) {
                continue;
            }
            let values: Vec<f64> = scrapes.iter().filter_map(|s| s.get(name)).collect();
            gauges.insert(
                name.clone(),
                GaugeSummary {
                    peak: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    mean: values.iter().sum::<f64>() / values.len() as f64,
                    samples: values.len(),
                },
            );
        }

        let mut figures = BTreeMap::new();
        let mut put = |name: &str, value: f64, unit: &str, source: String| {
            if value.is_finite() {
                figures.entry(name.to_owned()).or_insert(ServerFigure {
                    value,
                    unit: unit.to_owned(),
                    source,
                });
            }
        };
        for m in &MEANS_MS {
            for base in m.base {
                let (sum_key, count_key) = series_pair(base);
                if let (Some(sum), Some(count)) = (changes.get(&sum_key), changes.get(&count_key)) {
                    if *count > 0.0 {
                        put(
                            m.figure,
                            sum / count * 1000.0,
                            "ms",
                            format!("Δ{sum_key} / Δ{count_key}"),
                        );
                        break;
                    }
                }
            }
        }
        for (figure, unit, names) in CHANGES {
            if let Some(name) = names.iter().find(|n| changes.contains_key(**n)) {
                put(figure, changes[*name], unit, format!("Δ{name}"));
            }
        }
        for (figure, names) in GAUGES {
            if let Some(name) = names.iter().find(|n| gauges.contains_key(**n)) {
                let g = &gauges[*name];
                let unit = if figure == "kv_cache_usage" {
                    "fraction"
                } else {
                    "requests"
                };
                put(
                    &format!("{figure}_peak"),
                    g.peak,
                    unit,
                    format!("max {name}"),
                );
                if figure == "kv_cache_usage" {
                    put(
                        &format!("{figure}_mean"),
                        g.mean,
                        unit,
                        format!("mean {name}"),
                    );
                }
            }
        }
        for (figure, unit, num, den) in RATIOS {
            if let (Some(n), Some(d)) = (changes.get(num), changes.get(den)) {
                if *d > 0.0 {
                    put(figure, n / d, unit, format!("Δ{num} / Δ{den}"));
                }
            }
        }
        for name in HIT_RATE_GAUGES {
            if let Some(g) = gauges.get(name) {
                put(
                    "prefix_cache_hit_rate",
                    g.mean,
                    "fraction",
                    format!("mean {name}"),
                );
            }
        }
        Some(ServerMetrics {
            url: url.to_owned(),
            scrapes: scrapes.len(),
            interval_ms,
            figures,
            changes,
            gauges,
            reset_series,
        })
    }
}

/// `name` or `name{label}` → its `_sum` and `_count` series keys.
fn series_pair(base: &str) -> (String, String) {
    match base.split_once('{') {
        Some((name, labels)) => (
            format!("{name}_sum{{{labels}"),
            format!("{name}_count{{{labels}"),
        ),
        None => (format!("{base}_sum"), format!("{base}_count")),
    }
}

/// `prefill_time_ms_mean` → `prefill time mean`.
fn label(name: &str) -> String {
    match name.strip_suffix("_ms_mean") {
        Some(base) => format!("{} mean", base.replace('_', " ")),
        None => name.replace('_', " "),
    }
}

/// The terminal line of one level's server figures (none when nothing was derived).
pub fn render_level(m: &ServerMetrics) -> Option<String> {
    let parts: Vec<String> = m
        .figures
        .iter()
        .map(|(name, f)| match f.unit.as_str() {
            "ms" => format!("{} {:.1} ms", label(name), f.value),
            "fraction" | "fraction of prompt tokens" => {
                format!("{} {:.1} %", label(name), f.value * 100.0)
            }
            _ => format!("{} {:.1}", label(name), f.value),
        })
        .collect();
    (!parts.is_empty()).then(|| format!("server: {}", parts.join(", ")))
}

/// One terminal line per GPU of the server.
pub fn render_gpus(g: &GpuLevelUse) -> Vec<String> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    g.devices
        .iter()
        .map(|d| {
            let mut line = format!(
                "GPU {} ({}): memory peak {:.2} GiB, mean {:.2} GiB of {:.2} GiB",
                d.nvml_index,
                d.name,
                gib(d.memory_used_peak_bytes),
                gib(d.memory_used_mean_bytes),
                gib(d.memory_total_bytes)
            );
            if let Some(p) = d.server_process_memory_peak_bytes {
                line.push_str(&format!(", server processes peak {:.2} GiB", gib(p)));
            }
            if let (Some(peak), Some(mean)) = (d.utilization_pct_peak, d.utilization_pct_mean) {
                line.push_str(&format!(", utilisation peak {peak:.0} % mean {mean:.0} %"));
            }
            if let (Some(peak), Some(mean)) = (d.power_w_peak, d.power_w_mean) {
                line.push_str(&format!(", power peak {peak:.0} W mean {mean:.0} W"));
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::server_metrics::parse;

    fn vllm(queued: f64, count: f64, hits: f64, queries: f64, kv: f64, waiting: f64) -> Snapshot {
        parse(&format!(
            "# TYPE vllm:request_queue_time_seconds histogram\n\
             vllm:request_queue_time_seconds_sum{{model_name=\"m\"}} {queued}\n\
             vllm:request_queue_time_seconds_count{{model_name=\"m\"}} {count}\n\
             # TYPE vllm:prefix_cache_hits counter\n\
             vllm:prefix_cache_hits_total {hits}\n\
             # TYPE vllm:prefix_cache_queries counter\n\
             vllm:prefix_cache_queries_total {queries}\n\
             # TYPE vllm:kv_cache_usage_perc gauge\n\
             vllm:kv_cache_usage_perc {kv}\n\
             # TYPE vllm:num_requests_waiting gauge\n\
             vllm:num_requests_waiting {waiting}\n"
        ))
    }

    #[test]
    fn figures_are_changes_over_the_level_not_totals_since_start() {
        // Before the level the server had already queued 10 requests for 5 s in all.
        let scrapes = [
            vllm(5.0, 10.0, 100.0, 1000.0, 0.0, 0.0),
            vllm(5.5, 12.0, 150.0, 1200.0, 0.6, 3.0),
            vllm(6.0, 14.0, 400.0, 2000.0, 0.2, 1.0),
        ];
        let m = ServerMetrics::over("http://x/metrics", 500, &scrapes).unwrap();
        assert_eq!(m.scrapes, 3);
        // (6.0 - 5.0) s over (14 - 10) requests = 250 ms.
        assert!((m.figures["queue_time_ms_mean"].value - 250.0).abs() < 1e-9);
        // (400 - 100) hits of (2000 - 1000) queried tokens.
        assert!((m.figures["prefix_cache_hit_rate"].value - 0.3).abs() < 1e-12);
        assert_eq!(m.figures["kv_cache_usage_peak"].value, 0.6);
        assert!((m.figures["kv_cache_usage_mean"].value - 0.8 / 3.0).abs() < 1e-12);
        assert_eq!(m.figures["requests_waiting_peak"].value, 3.0);
        assert_eq!(
            m.figures["queue_time_ms_mean"].source,
            "Δvllm:request_queue_time_seconds_sum / Δvllm:request_queue_time_seconds_count"
        );
        assert_eq!(m.changes["vllm:prefix_cache_hits_total"], 300.0);
    }

    #[test]
    fn a_counter_that_went_down_is_reported_as_reset_not_as_a_negative_change() {
        let scrapes = [
            vllm(5.0, 10.0, 100.0, 1000.0, 0.0, 0.0),
            vllm(0.5, 1.0, 10.0, 100.0, 0.0, 0.0),
        ];
        let m = ServerMetrics::over("u", 1000, &scrapes).unwrap();
        assert!(m.changes.values().all(|v| *v >= 0.0));
        assert!(m
            .reset_series
            .contains(&"vllm:request_queue_time_seconds_sum".to_string()));
        assert!(!m.figures.contains_key("queue_time_ms_mean"));
    }

    #[test]
    fn llama_server_rates_and_tgi_prefill_by_method() {
        let page = |pt: f64, ps: f64, tp: f64, ts: f64, pre: f64, n: f64| {
            parse(&format!(
                "# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total {pt}\n\
                 # TYPE llamacpp:prompt_seconds_total counter\nllamacpp:prompt_seconds_total {ps}\n\
                 # TYPE llamacpp:tokens_predicted_total counter\nllamacpp:tokens_predicted_total {tp}\n\
                 # TYPE llamacpp:tokens_predicted_seconds_total counter\nllamacpp:tokens_predicted_seconds_total {ts}\n\
                 # TYPE tgi_batch_inference_duration histogram\n\
                 tgi_batch_inference_duration_sum{{method=\"prefill\"}} {pre}\n\
                 tgi_batch_inference_duration_count{{method=\"prefill\"}} {n}\n\
                 tgi_batch_inference_duration_sum{{method=\"decode\"}} 100\n\
                 tgi_batch_inference_duration_count{{method=\"decode\"}} 1000\n"
            ))
        };
        let m = ServerMetrics::over(
            "u",
            1000,
            &[
                page(100.0, 1.0, 50.0, 1.0, 1.0, 10.0),
                page(500.0, 3.0, 250.0, 5.0, 1.5, 12.0),
            ],
        )
        .unwrap();
        assert_eq!(m.figures["prompt_tokens"].value, 400.0);
        assert_eq!(m.figures["prompt_tokens_per_s"].value, 200.0);
        assert_eq!(m.figures["generation_tokens_per_s"].value, 50.0);
        assert_eq!(m.figures["prefill_time_ms_mean"].value, 250.0);
        // The decode histogram did not move: no figure rather than 0/0.
        assert!(!m.figures.contains_key("decode_time_ms_mean"));
        assert!(render_level(&m)
            .unwrap()
            .contains("prefill time mean 250.0 ms"));
    }

    #[test]
    fn one_scrape_is_not_a_level() {
        assert!(ServerMetrics::over("u", 1, &[vllm(1.0, 1.0, 1.0, 1.0, 0.0, 0.0)]).is_none());
    }
}
