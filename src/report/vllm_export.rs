//! `--save-vllm-result`: a serving level in the JSON layout of vLLM's `bench serve
//! --save-result`, so dashboards and scripts written for vLLM's files read vlmbench's.
//!
//! Same field names and units as vLLM: summary figures in ms (`mean_ttft_ms`, `median_*`,
//! `std_*`, `p90_*`, `p95_*`, `p99_*` for ttft, tpot, itl, e2el); per-request lists in request
//! order with times in seconds (`ttfts`, `itls` as per-chunk gaps, as vLLM records them) and 0
//! (or an empty list) for failed requests; `errors` empty for successes. The figures are
//! vlmbench's: TTFT and E2E from the scheduled arrival, ITL from the per-chunk gaps.

use serde_json::{json, Map, Value};

use super::serving::{LevelReport, ServingReport};
use crate::stats::Summary;

/// vLLM's result object for level `level` of `report`.
pub fn vllm_result(report: &ServingReport, level: &LevelReport) -> Value {
    let reqs = &level.requests;
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    let date = report
        .started_at
        .replace(['-', ':'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_string();
    put("date", json!(date));
    put("backend", json!("openai-chat"));
    put("model_id", json!(report.server.model));
    put("tokenizer_id", json!(report.server.model));
    put("num_prompts", json!(reqs.len()));
    put(
        "request_rate",
        json!(level.request_rate.map(Value::from).unwrap_or(json!("inf"))),
    );
    put("burstiness", json!(report.config.burstiness));
    put("max_concurrency", json!(level.concurrency));
    put("duration", json!(level.duration));
    put("completed", json!(level.completed));
    put("failed", json!(level.failed));
    put("total_input_tokens", json!(level.total_input_tokens));
    put("total_output_tokens", json!(level.total_output_tokens));
    put("request_throughput", json!(level.request_throughput));
    put(
        "request_goodput",
        json!(level.extras.goodput.as_ref().map(|g| g.request_goodput)),
    );
    put("output_throughput", json!(level.output_throughput));
    put(
        "total_token_throughput",
        json!(level.total_token_throughput),
    );
    put(
        "input_lens",
        json!(reqs
            .iter()
            .map(|r| r.input_tokens.unwrap_or(0))
            .collect::<Vec<_>>()),
    );
    put(
        "output_lens",
        json!(reqs
            .iter()
            .map(|r| if r.ok {
                r.output_tokens.unwrap_or(0)
            } else {
                0
            })
            .collect::<Vec<_>>()),
    );
    put(
        "ttfts",
        json!(reqs
            .iter()
            .map(|r| r.ttft_ms.filter(|_| r.ok).unwrap_or(0.0) / 1e3)
            .collect::<Vec<_>>()),
    );
    put(
        "itls",
        json!(reqs
            .iter()
            .map(|r| r.chunk_gaps_ms.iter().map(|g| g / 1e3).collect::<Vec<_>>())
            .collect::<Vec<_>>()),
    );
    put(
        "generated_texts",
        json!(reqs.iter().map(|r| r.text.clone()).collect::<Vec<_>>()),
    );
    put(
        "errors",
        json!(reqs
            .iter()
            .map(|r| r.error.clone().unwrap_or_default())
            .collect::<Vec<_>>()),
    );
    for (name, s) in [
        ("ttft", &level.ttft_ms),
        ("tpot", &level.tpot_ms),
        ("itl", &level.chunk_gap_ms),
        ("e2el", &level.e2el_ms),
    ] {
        let f = |pick: fn(&Summary) -> f64| json!(s.as_ref().map(pick).unwrap_or(0.0));
        put(&format!("mean_{name}_ms"), f(|s| s.mean));
        put(&format!("median_{name}_ms"), f(|s| s.median));
        put(&format!("std_{name}_ms"), f(|s| s.stddev));
        put(&format!("p90_{name}_ms"), f(|s| s.p90));
        put(&format!("p95_{name}_ms"), f(|s| s.p95));
        put(&format!("p99_{name}_ms"), f(|s| s.p99));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::serving::LevelReport;
    use crate::report::testutil::{request, serving};

    #[test]
    fn fields_and_units_follow_vllm() {
        let mut reqs = vec![
            request(0, 100.0, 5, &[10.0, 20.0]),
            request(1, 50.0, 5, &[]),
        ];
        reqs[1].ok = false;
        reqs[1].error = Some("HTTP 500".into());
        let level = LevelReport::from_requests(Some(4), None, 2.0, reqs);
        let report = serving(vec![level.clone()]);
        let v = vllm_result(&report, &level);
        assert_eq!(v["max_concurrency"], 4);
        assert_eq!(v["request_rate"], "inf");
        assert_eq!(
            (v["completed"].as_u64(), v["failed"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(v["ttfts"], json!([0.1, 0.0]));
        assert_eq!(v["itls"][0], json!([0.01, 0.02]));
        assert_eq!(v["errors"], json!(["", "HTTP 500"]));
        assert_eq!(v["mean_ttft_ms"], 100.0);
        assert!((v["p99_itl_ms"].as_f64().unwrap() - 19.9).abs() < 1e-9);
        assert_eq!(v["date"], "20260101-000000");
        for k in [
            "mean_tpot_ms",
            "median_e2el_ms",
            "std_itl_ms",
            "total_token_throughput",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
}
