//! A served request's details beyond its core record: its times on the level's clock (for the
//! steady-state window, `--trace` and shard merges) and its reasoning/content token split.

use std::time::Instant;

use tokenizers::Tokenizer;

use crate::client::http::RequestOutcome;
use crate::report::serving::RequestDetail;

/// Seconds from `zero` to `t` (negative when `t` is earlier).
fn offset(zero: Instant, t: Instant) -> f64 {
    match t.checked_duration_since(zero) {
        Some(d) => d.as_secs_f64(),
        None => -(zero - t).as_secs_f64(),
    }
}

/// The details of outcome `o` on the clock that starts at `zero`; `output_tokens` is the
/// record's final count. Reasoning tokens come from the server's usage details, else the
/// tokenizer over the reasoning text, else the reasoning chunks' token counts.
pub fn detail(
    o: &RequestOutcome,
    zero: Instant,
    output_tokens: Option<u64>,
    tokenizer: Option<&Tokenizer>,
) -> RequestDetail {
    let tl = &o.timeline;
    let streamed_reasoning = tl.chunks.iter().any(|c| c.reasoning);
    let reasoning_tokens = streamed_reasoning.then(|| {
        o.reasoning_tokens
            .or_else(|| {
                tokenizer
                    .and_then(|t| t.encode(o.reasoning_text.as_str(), false).ok())
                    .map(|e| e.len() as u64)
            })
            .unwrap_or_else(|| {
                tl.chunks
                    .iter()
                    .filter(|c| c.reasoning)
                    .map(|c| c.tokens)
                    .sum()
            })
    });
    let metrics = o
        .error
        .is_none()
        .then(|| tl.metrics(output_tokens.unwrap_or(0)))
        .flatten();
    RequestDetail {
        scheduled_s: Some(offset(zero, tl.scheduled)),
        sent_s: Some(offset(zero, tl.sent)),
        first_token_s: tl.chunks.first().map(|c| offset(zero, c.at)),
        end_s: Some(offset(zero, tl.end)),
        chunk_s: tl.chunks.iter().map(|c| offset(zero, c.at)).collect(),
        ttfct_ms: metrics.as_ref().and_then(|m| m.ttfct_ms),
        reasoning_tokens,
        content_tokens: reasoning_tokens
            .and_then(|r| output_tokens.map(|out| out.saturating_sub(r))),
        reasoning_only: metrics.is_some()
            && streamed_reasoning
            && tl.chunks.iter().all(|c| c.reasoning),
        shard: None,
    }
}
