//! One served request's record: its client-side timeline turned into the report's
//! per-request metrics, with token counts from the server's usage, else the tokenizer, else
//! the number of streamed chunks.

use tokenizers::Tokenizer;

use crate::client::http::RequestOutcome;
use crate::dataset::Sample;
use crate::report::serving::RequestRecord;

/// The record of outcome `o` of a request made from `sample`.
pub fn record(o: &RequestOutcome, sample: &Sample, tokenizer: Option<&Tokenizer>) -> RequestRecord {
    let count = |text: &str| {
        tokenizer
            .and_then(|t| t.encode(text, false).ok())
            .map(|e| e.len() as u64)
    };
    let output_tokens = o
        .completion_tokens
        .or_else(|| count(&(o.reasoning_text.clone() + &o.text)))
        .or_else(|| (!o.timeline.chunks.is_empty()).then(|| o.timeline.chunks.len() as u64));
    let input_tokens = o.prompt_tokens.or_else(|| count(&sample.prompt));
    let metrics = if o.error.is_none() {
        o.timeline.metrics(output_tokens.unwrap_or(0))
    } else {
        None
    };
    RequestRecord {
        index: sample.index,
        ok: metrics.is_some(),
        error: o
            .error
            .clone()
            .or_else(|| metrics.is_none().then(|| "no content".to_string())),
        http_status: o.status,
        ttft_ms: metrics.as_ref().map(|m| m.ttft_ms),
        ttft_from_send_ms: metrics.as_ref().map(|m| m.ttft_from_send_ms),
        e2el_ms: metrics.as_ref().map(|m| m.e2e_ms),
        tpot_ms: metrics.as_ref().and_then(|m| m.tpot_ms),
        queue_ms: metrics.as_ref().map(|m| m.queue_ms),
        input_tokens,
        output_tokens,
        itl_ms: metrics
            .as_ref()
            .map(|m| m.itl_ms.clone())
            .unwrap_or_default(),
        chunk_gaps_ms: metrics
            .as_ref()
            .map(|m| m.chunk_gaps_ms.clone())
            .unwrap_or_default(),
        text: o.text.clone(),
        detail: Default::default(),
    }
}

/// Where a level's output token counts came from, as its report says: the server's usage
/// block, with the fallback [`record`] used where a response lacks one.
pub fn output_tokens_source(
    requests: &[RequestRecord],
    usage_requested: bool,
    has_tokenizer: bool,
) -> &'static str {
    let ok = || requests.iter().filter(|r| r.ok);
    if usage_requested && ok().all(|r| r.output_tokens.is_some()) && ok().next().is_some() {
        // Usage may still be missing on servers that ignore stream_options; `record` then fell
        // back, and the tokenizer flag says how.
        if has_tokenizer {
            "server usage, else tokenizer"
        } else {
            "server usage, else chunks"
        }
    } else if has_tokenizer {
        "tokenizer"
    } else {
        "chunks"
    }
}
