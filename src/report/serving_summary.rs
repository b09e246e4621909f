//! A serving level's aggregates from its per-request records: the serving twin of
//! [`super::RunSummary::from_samples`], through the same [`Totals`] and summaries.

use super::serving::{LevelExtras, LevelReport, RequestRecord};
use crate::stats::{summarize_each, summarize_pooled, Outcome, Totals};

impl LevelReport {
    /// Aggregates `requests`, sent at this load over `duration` seconds; `output_tokens_source`
    /// says where the output token counts came from.
    pub fn from_requests(
        concurrency: Option<usize>,
        request_rate: Option<f64>,
        duration: f64,
        requests: Vec<RequestRecord>,
        output_tokens_source: &str,
    ) -> Self {
        let totals = Totals::over(
            requests.iter().map(|r| {
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
            output_tokens_source: output_tokens_source.into(),
            ttft_ms: pick(&|r| r.ttft_ms),
            ttft_from_send_ms: pick(&|r| r.ttft_from_send_ms),
            tpot_ms: pick(&|r| r.tpot_ms),
            itl_ms: summarize_pooled(&ok, |r| &r.itl_ms),
            chunk_gap_ms: summarize_pooled(&ok, |r| &r.chunk_gaps_ms),
            e2el_ms: pick(&|r| r.e2el_ms),
            e2el_from_send_ms: None,
            queue_ms: pick(&|r| r.queue_ms),
            extras: LevelExtras::over(&requests, duration, None),
            requests,
        }
    }
}
