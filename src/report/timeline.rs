//! `--trace`: a Chrome/Perfetto trace (the JSON "trace event" format) of every request of a
//! serving report, drawn from the report's own records, so the picture and the figures agree.
//!
//! One process per level; one track (thread) per connection. The client does not see which
//! pooled connection a request used, so tracks are assigned as the pool reuses connections:
//! a request takes the lowest-numbered track that is idle when it is sent. Per request: a
//! `queued` slice (scheduled → sent), a `request` slice (sent → done) with a nested
//! `prefill` slice (sent → first token), and an instant event per streamed chunk.

use serde_json::{json, Value};

use super::serving::ServingReport;

/// The trace events of `report`.
pub fn chrome_trace(report: &ServingReport) -> Value {
    let mut events = Vec::new();
    for (pid, level) in report.levels.iter().enumerate() {
        let name = format!(
            "level {}: concurrency {}, rate {}",
            pid + 1,
            level
                .concurrency
                .map(|c| c.to_string())
                .unwrap_or_else(|| "unlimited".into()),
            level
                .request_rate
                .map(|r| format!("{r}/s"))
                .unwrap_or_else(|| "inf".into())
        );
        events.push(json!({"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}));
        let mut order: Vec<usize> = (0..level.requests.len())
            .filter(|&i| level.requests[i].detail.sent_s.is_some())
            .collect();
        order.sort_by(|&a, &b| {
            let s = |i: usize| level.requests[i].detail.sent_s.unwrap_or(0.0);
            s(a).total_cmp(&s(b))
        });
        // Track k is busy until busy_until[k].
        let mut busy_until: Vec<f64> = Vec::new();
        let us = |s: f64| (s * 1e6).round();
        for i in order {
            let r = &level.requests[i];
            let d = &r.detail;
            let (sent, end) = (d.sent_s.unwrap_or(0.0), d.end_s.unwrap_or(0.0));
            let tid = match busy_until.iter().position(|&b| b <= sent) {
                Some(k) => k,
                None => {
                    busy_until.push(0.0);
                    busy_until.len() - 1
                }
            };
            busy_until[tid] = end;
            let args = json!({
                "index": r.index, "ok": r.ok, "error": r.error,
                "ttft_ms": r.ttft_ms, "e2el_ms": r.e2el_ms,
                "output_tokens": r.output_tokens,
            });
            if let Some(sched) = d.scheduled_s.filter(|s| *s < sent) {
                events.push(json!({"ph": "X", "pid": pid, "tid": tid, "name": "queued",
                    "ts": us(sched), "dur": us(sent) - us(sched), "args": {"index": r.index}}));
            }
            events.push(json!({"ph": "X", "pid": pid, "tid": tid, "name": "request",
                "ts": us(sent), "dur": us(end) - us(sent), "args": args}));
            if let Some(first) = d.first_token_s {
                events.push(json!({"ph": "X", "pid": pid, "tid": tid, "name": "prefill",
                    "ts": us(sent), "dur": us(first) - us(sent), "args": {"index": r.index}}));
            }
            for (k, c) in d.chunk_s.iter().enumerate() {
                events.push(json!({"ph": "i", "s": "t", "pid": pid, "tid": tid,
                    "name": if k == 0 { "first token" } else { "chunk" },
                    "ts": us(*c), "args": {"index": r.index}}));
            }
        }
        for tid in 0..busy_until.len() {
            events.push(
                json!({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name",
                "args": {"name": format!("connection {tid}")}}),
            );
        }
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testutil::{level, request, serving, summary};

    #[test]
    fn requests_reuse_idle_tracks() {
        let mut reqs: Vec<_> = (0..3).map(|i| request(i, 10.0, 1, &[5.0])).collect();
        // 0 and 1 overlap; 2 starts after 0 ended and reuses its track.
        for (r, (sent, end)) in reqs.iter_mut().zip([(0.0, 1.0), (0.5, 2.0), (1.5, 2.5)]) {
            r.detail.scheduled_s = Some(sent);
            r.detail.sent_s = Some(sent);
            r.detail.first_token_s = Some(sent + 0.1);
            r.detail.end_s = Some(end);
            r.detail.chunk_s = vec![sent + 0.1, sent + 0.2];
        }
        let report = serving(vec![level(
            2,
            summary(10.0, 10.0),
            summary(5.0, 5.0),
            1.0,
            reqs,
        )]);
        let t = chrome_trace(&report);
        let ev = t["traceEvents"].as_array().unwrap();
        let tid_of = |idx: i64| {
            ev.iter()
                .find(|e| e["name"] == "request" && e["args"]["index"] == idx)
                .unwrap()["tid"]
                .as_u64()
                .unwrap()
        };
        assert_eq!([tid_of(0), tid_of(1), tid_of(2)], [0, 1, 0]);
        assert_eq!(ev.iter().filter(|e| e["ph"] == "i").count(), 6);
        let r1 = ev
            .iter()
            .find(|e| e["name"] == "request" && e["args"]["index"] == 1)
            .unwrap();
        assert_eq!(
            (r1["ts"].as_f64(), r1["dur"].as_f64()),
            (Some(5e5), Some(1.5e6))
        );
    }
}
