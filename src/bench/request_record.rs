//! One served request's record: its client-side timeline turned into the report's
//! per-request metrics, with token counts from the server's usage, else the tokenizer, else
//! the number of streamed chunks, and where each count came from.

use tokenizers::Tokenizer;

use crate::client::http::RequestOutcome;
use crate::dataset::Sample;
use crate::report::serving::RequestRecord;

/// Where a token count came from, as the report names it.
pub const FROM_USAGE: &str = "server usage";
/// Output text re-tokenised with `--tokenizer`.
pub const FROM_TOKENIZER: &str = "tokenizer";
/// Input counted by `--tokenizer` over the prompt text as sent, without the chat template and
/// without image tokens: a lower bound of what the server ran.
pub const FROM_TOKENIZER_RAW_PROMPT: &str =
    "tokenizer (raw prompt: no chat template, no image tokens)";
/// One token per content chunk.
pub const FROM_CHUNKS: &str = "chunks";

/// The record of outcome `o` of a request made from `sample` (its prompt as sent).
pub fn record(o: &RequestOutcome, sample: &Sample, tokenizer: Option<&Tokenizer>) -> RequestRecord {
    let count = |text: &str| {
        tokenizer
            .and_then(|t| t.encode(text, false).ok())
            .map(|e| e.len() as u64)
    };
    let (output_tokens, output_source) = match o.completion_tokens {
        Some(n) => (Some(n), Some(FROM_USAGE)),
        None => match count(&(o.reasoning_text.clone() + &o.text)) {
            Some(n) => (Some(n), Some(FROM_TOKENIZER)),
            None if !o.timeline.chunks.is_empty() => {
                (Some(o.timeline.chunks.len() as u64), Some(FROM_CHUNKS))
            }
            None => (None, None),
        },
    };
    let (input_tokens, input_source) = match o.prompt_tokens {
        Some(n) => (Some(n), Some(FROM_USAGE)),
        None => match count(&sample.prompt) {
            Some(n) => (Some(n), Some(FROM_TOKENIZER_RAW_PROMPT)),
            None => (None, None),
        },
    };
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
        cancelled: o.cancelled,
        retried: o.retried.clone(),
        http_status: o.status,
        ttft_ms: metrics.as_ref().map(|m| m.ttft_ms),
        ttft_from_send_ms: metrics.as_ref().map(|m| m.ttft_from_send_ms),
        e2el_ms: metrics.as_ref().map(|m| m.e2e_ms),
        e2el_from_send_ms: metrics.as_ref().map(|m| m.e2e_from_send_ms),
        tpot_ms: metrics.as_ref().and_then(|m| m.tpot_ms),
        queue_ms: metrics.as_ref().map(|m| m.queue_ms),
        input_tokens,
        input_tokens_source: input_source.map(str::to_owned),
        output_tokens,
        output_tokens_source: output_source.map(str::to_owned),
        itl_per_token: o.chunk_tokens_known,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::stream::{ContentChunk, RequestTimeline};
    use std::time::{Duration, Instant};

    fn outcome(completion: Option<u64>, prompt: Option<u64>, known: bool) -> RequestOutcome {
        let t0 = Instant::now();
        let chunk = |ms| ContentChunk {
            at: t0 + Duration::from_millis(ms),
            tokens: 1,
            reasoning: false,
        };
        RequestOutcome {
            timeline: RequestTimeline {
                scheduled: t0,
                sent: t0 + Duration::from_millis(5),
                chunks: vec![chunk(20), chunk(30), chunk(40)],
                end: t0 + Duration::from_millis(45),
            },
            status: Some(200),
            error: None,
            text: "a b c".into(),
            reasoning_text: String::new(),
            reasoning_tokens: None,
            prompt_tokens: prompt,
            completion_tokens: completion,
            chunk_tokens_known: known,
            retried: None,
            cancelled: false,
        }
    }

    #[test]
    fn each_count_says_where_it_came_from() {
        let sample = Sample {
            index: 3,
            prompt: "hello there".into(),
            images: Vec::new(),
            fields: Default::default(),
        };
        let r = record(&outcome(Some(3), Some(9), true), &sample, None);
        assert_eq!(r.output_tokens_source.as_deref(), Some(FROM_USAGE));
        assert_eq!(r.input_tokens_source.as_deref(), Some(FROM_USAGE));
        assert!(r.itl_per_token);
        // A server that sends no usage (llama-cpp-python): chunks, and no input count.
        let r = record(&outcome(None, None, false), &sample, None);
        assert_eq!(
            (r.output_tokens, r.output_tokens_source.as_deref()),
            (Some(3), Some(FROM_CHUNKS))
        );
        assert_eq!((r.input_tokens, r.input_tokens_source), (None, None));
        assert!(!r.itl_per_token);
        assert_eq!(r.e2el_from_send_ms, Some(40.0));
        assert_eq!(r.e2el_ms, Some(45.0));
    }
}
