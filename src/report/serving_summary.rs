//! A serving level's aggregates from its per-request records: the serving twin of
//! [`super::RunSummary::from_samples`], through the same [`Totals`] and summaries. Where the
//! token counts came from is read from the records, not assumed from the flags.

use std::collections::BTreeMap;

use super::serving::{LevelExtras, LevelReport, RequestRecord};
use crate::stats::{summarize_each, summarize_pooled, Outcome, Totals};

impl LevelReport {
    /// Aggregates `requests`, sent at this load over `duration` seconds. Requests cancelled in
    /// flight are kept in `requests` but counted neither as completed nor as failed.
    pub fn from_requests(
        concurrency: Option<usize>,
        request_rate: Option<f64>,
        duration: f64,
        requests: Vec<RequestRecord>,
    ) -> Self {
        let totals = Totals::over(
            requests.iter().filter(|r| !r.cancelled).map(|r| {
                if r.ok {
                    Outcome::Succeeded {
                        input_tokens: r.input_tokens.unwrap_or(0),
                        output_tokens: r.output_tokens.unwrap_or(0),
                    }
                } else {
                    Outcome::Failed(r.error.as_deref())
                }
            }),
            duration,
        );
        let ok: Vec<&RequestRecord> = requests.iter().filter(|r| r.ok).collect();
        let pick = |f: &dyn Fn(&RequestRecord) -> Option<f64>| summarize_each(&ok, |r| f(r));
        let tally = |f: &dyn Fn(&RequestRecord) -> Option<&str>| {
            let mut m = BTreeMap::new();
            for r in &ok {
                *m.entry(f(r).unwrap_or("none").to_owned()).or_insert(0) += 1;
            }
            m
        };
        let output_tokens_sources = tally(&|r| r.output_tokens_source.as_deref());
        let input_tokens_sources = tally(&|r| r.input_tokens_source.as_deref());
        let per_token = ok.iter().filter(|r| r.itl_per_token).count();
        let itl_basis = if per_token == ok.len() {
            "per token"
        } else if per_token == 0 {
            "per chunk"
        } else {
            "mixed"
        };
        LevelReport {
            concurrency,
            request_rate: request_rate.filter(|r| r.is_finite()),
            duration,
            completed: totals.succeeded,
            failed: totals.failed,
            failure_reasons: totals.failure_reasons,
            request_throughput: totals.request_throughput,
            output_throughput: totals.output_throughput,
            total_token_throughput: totals.total_token_throughput,
            total_input_tokens: totals.input_tokens,
            total_output_tokens: totals.output_tokens,
            output_tokens_source: one_line(&output_tokens_sources),
            output_tokens_sources,
            input_tokens_sources,
            itl_basis: itl_basis.into(),
            cancelled: requests.iter().filter(|r| r.cancelled).count(),
            retried: requests.iter().filter(|r| r.retried.is_some()).count(),
            arrival_seed: None,
            ttft_ms: pick(&|r| r.ttft_ms),
            ttft_from_send_ms: pick(&|r| r.ttft_from_send_ms),
            tpot_ms: pick(&|r| r.tpot_ms),
            itl_ms: summarize_pooled(&ok, |r| &r.itl_ms),
            chunk_gap_ms: summarize_pooled(&ok, |r| &r.chunk_gaps_ms),
            e2el_ms: pick(&|r| r.e2el_ms),
            e2el_from_send_ms: pick(&|r| r.e2el_from_send_ms),
            queue_ms: pick(&|r| r.queue_ms),
            extras: LevelExtras::over(&requests, duration, None),
            requests,
        }
    }
}

/// `server usage` when every request agrees, `mixed: 5 server usage, 3 chunks` otherwise.
fn one_line(sources: &BTreeMap<String, usize>) -> String {
    match sources.len() {
        0 => "none".into(),
        1 => sources.keys().next().cloned().unwrap_or_default(),
        _ => {
            let parts: Vec<String> = sources.iter().map(|(k, n)| format!("{n} {k}")).collect();
            format!("mixed: {}", parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(source: &str, per_token: bool) -> RequestRecord {
        RequestRecord {
            index: 0,
            ok: true,
            error: None,
            cancelled: false,
            retried: None,
            http_status: Some(200),
            ttft_ms: Some(10.0),
            ttft_from_send_ms: Some(8.0),
            e2el_ms: Some(30.0),
            e2el_from_send_ms: Some(28.0),
            tpot_ms: Some(1.0),
            queue_ms: Some(2.0),
            input_tokens: Some(4),
            input_tokens_source: Some("server usage".into()),
            output_tokens: Some(3),
            output_tokens_source: Some(source.into()),
            itl_per_token: per_token,
            itl_ms: vec![1.0],
            chunk_gaps_ms: vec![1.0],
            text: String::new(),
            detail: Default::default(),
        }
    }

    #[test]
    fn sources_come_from_the_records() {
        let l = LevelReport::from_requests(
            Some(1),
            None,
            1.0,
            vec![req("server usage", true), req("chunks", false)],
        );
        assert_eq!(l.output_tokens_source, "mixed: 1 chunks, 1 server usage");
        assert_eq!(l.output_tokens_sources["chunks"], 1);
        assert_eq!(l.input_tokens_sources["server usage"], 2);
        assert_eq!(l.itl_basis, "mixed");
        assert_eq!(l.e2el_from_send_ms.as_ref().unwrap().mean, 28.0);
        let l = LevelReport::from_requests(None, None, 1.0, vec![req("chunks", false)]);
        assert_eq!(
            (l.output_tokens_source.as_str(), l.itl_basis.as_str()),
            ("chunks", "per chunk")
        );
        assert_eq!(l.itl_label(), "ITL per chunk");
        let mut c = req("chunks", false);
        c.ok = false;
        c.cancelled = true;
        let l = LevelReport::from_requests(None, None, 1.0, vec![req("chunks", true), c]);
        assert_eq!((l.completed, l.failed, l.cancelled), (1, 0, 1));
    }
}
