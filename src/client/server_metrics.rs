//! A server's Prometheus `/metrics` page (vLLM, SGLang, TGI, `llama-server --metrics`), read
//! as numbers: what the server itself counted while the client timed it.
//!
//! Only the text exposition format is read (what all four serve). Histogram buckets are
//! dropped: a level's report keeps each histogram's `_sum` and `_count`, which give the mean
//! of what the server measured between two scrapes.

use std::collections::BTreeMap;
use std::time::Duration;

use super::http::{describe_reqwest, ClientConfig};

/// How a metric's value moves between scrapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows (counters, and a histogram's or summary's `_sum` / `_count`): its change over
    /// a level is what happened in the level.
    Cumulative,
    /// A level in the moment (queue length, KV-cache usage): sampled, its peak and mean kept.
    Gauge,
}

/// One scrape: every series summed over its labels except those that tell series apart by
/// meaning (`method`, `le` is dropped with the buckets), keyed by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub values: BTreeMap<String, (MetricKind, f64)>,
}

impl Snapshot {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).map(|(_, v)| *v)
    }
}

/// Labels kept in a series' key because summing over them would mix different quantities
/// (TGI's `tgi_batch_inference_duration{method="prefill"|"decode"}`).
const MEANINGFUL_LABELS: [&str; 1] = ["method"];

/// Parses the Prometheus text exposition format. Lines it cannot read are skipped, so one odd
/// line in a server's page never loses the rest.
pub fn parse(text: &str) -> Snapshot {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            types.insert(name, kind);
        }
    }
    let mut snapshot = Snapshot::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, rest)) = split_series(line) else {
            continue;
        };
        if name.ends_with("_bucket") || name.ends_with("_created") {
            continue;
        }
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
        else {
            continue;
        };
        // A summary's quantile lines are gauges of a moment, not sums.
        if labels.iter().any(|(k, _)| *k == "quantile") {
            continue;
        }
        let family = types
            .get(name)
            .copied()
            .or_else(|| {
                ["_sum", "_count", "_total"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).and_then(|base| types.get(base)))
                    .copied()
            })
            .unwrap_or("untyped");
        let kind = match family {
            "counter" | "histogram" | "summary" => MetricKind::Cumulative,
            // Untyped series named like counters are counters.
            "untyped" if name.ends_with("_total") => MetricKind::Cumulative,
            _ => MetricKind::Gauge,
        };
        let mut key = name.to_owned();
        for (k, v) in &labels {
            if MEANINGFUL_LABELS.contains(k) {
                key.push_str(&format!("{{{k}=\"{v}\"}}"));
            }
        }
        let slot = snapshot.values.entry(key).or_insert((kind, 0.0));
        slot.1 += value;
    }
    snapshot
}

/// A series line taken apart: name, labels, and what follows them (value, timestamp).
type Series<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);

/// `name{a="x",b="y"} rest` → (name, labels, rest).
fn split_series(line: &str) -> Option<Series<'_>> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let after = &line[name_end..];
    if !after.starts_with('{') {
        return Some((name, Vec::new(), after));
    }
    // Label values may hold '}' or ',' inside quotes; walk them.
    let mut labels = Vec::new();
    let bytes = after.as_bytes();
    let mut i = 1;
    loop {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        if bytes[i] == b'}' {
            return Some((name, labels, &after[i + 1..]));
        }
        let eq = after[i..].find('=')? + i;
        let key = after[i..eq].trim();
        if bytes.get(eq + 1) != Some(&b'"') {
            return None;
        }
        let mut value = String::new();
        let mut j = eq + 2;
        while j < bytes.len() && bytes[j] != b'"' {
            if bytes[j] == b'\\' && j + 1 < bytes.len() {
                j += 1;
            }
            value.push(bytes[j] as char);
            j += 1;
        }
        if j >= bytes.len() {
            return None;
        }
        labels.push((key, value));
        i = j + 1;
    }
}

/// Where the page is: `--server-metrics-url`, else `<base>/metrics` (the four servers serve it
/// on the API port).
pub fn default_url(cfg: &ClientConfig) -> String {
    let base = cfg
        .url("")
        .trim_end_matches('/')
        .trim_end_matches("/v1")
        .to_string();
    format!("{base}/metrics")
}

/// One scrape. `Err` says why there is no page (no such endpoint, not Prometheus text).
pub async fn scrape(
    http: &reqwest::Client,
    url: &str,
    api_key: Option<&str>,
) -> Result<Snapshot, String> {
    let mut req = http.get(url).timeout(Duration::from_secs(5));
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| describe_reqwest(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("GET {url} answered HTTP {}", status.as_u16()));
    }
    let text = resp.text().await.map_err(|e| describe_reqwest(&e))?;
    let snapshot = parse(&text);
    if snapshot.values.is_empty() {
        return Err(format!("GET {url} is not a Prometheus metrics page"));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 128.0
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_sum{model_name="m"} 1.5
vllm:request_queue_time_seconds_bucket{le="0.3",model_name="m"} 2.0
vllm:request_queue_time_seconds_count{model_name="m"} 6.0
vllm:request_queue_time_seconds_created{model_name="m"} 1.7e9
# TYPE tgi_batch_inference_duration histogram
tgi_batch_inference_duration_sum{method="prefill",odd="a,b}c"} 0.25
tgi_batch_inference_duration_sum{method="decode"} 4.0
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0.5"} 0.001
go_gc_duration_seconds_sum 0.5
process_open_fds 12
not a metric line at all {
weird_value NaN
"#;

    #[test]
    fn series_are_summed_over_labels_and_typed_by_their_family() {
        let s = parse(PAGE);
        assert_eq!(
            s.values["vllm:num_requests_waiting"],
            (MetricKind::Gauge, 5.0)
        );
        assert_eq!(
            s.values["vllm:prefix_cache_hits_total"],
            (MetricKind::Cumulative, 128.0)
        );
        assert_eq!(
            s.values["vllm:request_queue_time_seconds_sum"],
            (MetricKind::Cumulative, 1.5)
        );
        assert_eq!(s.get("vllm:request_queue_time_seconds_count"), Some(6.0));
        assert_eq!(
            s.values["llamacpp:prompt_tokens_total"],
            (MetricKind::Cumulative, 6886.0)
        );
        assert_eq!(s.get("go_gc_duration_seconds_sum"), Some(0.5));
        assert_eq!(s.values["process_open_fds"], (MetricKind::Gauge, 12.0));
    }

    #[test]
    fn buckets_quantiles_timestamps_and_unreadable_lines_are_dropped() {
        let s = parse(PAGE);
        assert!(s.values.keys().all(|k| !k.contains("_bucket")));
        assert!(s.values.keys().all(|k| !k.ends_with("_created")));
        assert!(s.get("go_gc_duration_seconds").is_none());
        assert!(s.get("weird_value").is_none());
        assert!(s.get("not").is_none());
    }

    #[test]
    fn the_method_label_keeps_prefill_apart_from_decode() {
        let s = parse(PAGE);
        assert_eq!(
            s.get(r#"tgi_batch_inference_duration_sum{method="prefill"}"#),
            Some(0.25)
        );
        assert_eq!(
            s.get(r#"tgi_batch_inference_duration_sum{method="decode"}"#),
            Some(4.0)
        );
        assert!(s.get("tgi_batch_inference_duration_sum").is_none());
    }
}
