//! What one streamed response means: content per chunk, token counts, and the per-request
//! metrics derived from chunk arrival times.
//!
//! Definitions (see README "Metrics"):
//! - TTFT stops at the first chunk that carries a token of any kind: non-empty content
//!   (`delta.content` for chat, `text` for completions) or reasoning (`delta.reasoning_content`,
//!   as vLLM and SGLang stream it, or `delta.reasoning`). Role-only, empty and usage-only chunks
//!   do not count. The time to the first *content* token is kept beside it.
//! - Tokens per chunk come from the server's cumulative `usage.completion_tokens` when it streams
//!   one per chunk (vLLM's `continuous_usage_stats`); otherwise each content chunk counts as one
//!   token, and the final token count comes from the final usage or the client tokenizer.
//! - Per-token ITL: a chunk that carries `n` tokens after a gap `g` contributes `n` gaps of `g/n`.
//!   Tokens bundled into the first content chunk have no measurable gap and contribute none.
//!   Per-chunk gaps are kept as well.

use std::time::Instant;

use serde_json::Value;

/// Which OpenAI endpoint a stream came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// What one parsed chunk (one SSE `data` object) carries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChunkContent {
    /// Generated text in this chunk (empty for role-only or usage-only chunks).
    pub text: String,
    /// Reasoning ("thinking") text in this chunk, streamed by reasoning models before content.
    pub reasoning: String,
    /// `usage.completion_tokens_details.reasoning_tokens`, where the server reports it.
    pub reasoning_tokens: Option<u64>,
    /// Cumulative completion tokens so far, when the server reports usage in this chunk.
    pub completion_tokens: Option<u64>,
    pub prompt_tokens: Option<u64>,
    pub finish_reason: Option<String>,
}

/// Interprets one chunk. An `error` object in the stream is returned as `Err` with its message.
pub fn parse_chunk(endpoint: Endpoint, data: &str) -> Result<ChunkContent, String> {
    let v: Value = serde_json::from_str(data)
        .map_err(|e| format!("malformed SSE data (not JSON: {e}): {}", clip(data)))?;
    if let Some(err) = v.get("error") {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| err.to_string());
        return Err(format!("server error in stream: {msg}"));
    }
    let mut out = ChunkContent::default();
    if let Some(choice) = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    {
        let text = match endpoint {
            Endpoint::Chat => choice.get("delta").and_then(|d| d.get("content")),
            Endpoint::Completions => choice.get("text"),
        };
        out.text = text.and_then(Value::as_str).unwrap_or("").to_owned();
        if endpoint == Endpoint::Chat {
            let delta = choice.get("delta");
            out.reasoning = ["reasoning_content", "reasoning"]
                .iter()
                .find_map(|k| delta.and_then(|d| d.get(*k)).and_then(Value::as_str))
                .unwrap_or("")
                .to_owned();
        }
        out.finish_reason = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        out.completion_tokens = u.get("completion_tokens").and_then(Value::as_u64);
        out.prompt_tokens = u.get("prompt_tokens").and_then(Value::as_u64);
        out.reasoning_tokens = u
            .get("completion_tokens_details")
            .and_then(|d| d.get("reasoning_tokens"))
            .and_then(Value::as_u64);
    }
    Ok(out)
}

fn clip(s: &str) -> String {
    s.chars().take(120).collect()
}

/// Arrival of one chunk that carried tokens (content or reasoning).
#[derive(Debug, Clone)]
pub struct ContentChunk {
    pub at: Instant,
    /// Tokens in this chunk (from usage deltas, else 1).
    pub tokens: u64,
    /// The chunk carried reasoning and no content.
    pub reasoning: bool,
}

/// Everything timed about one request.
#[derive(Debug, Clone)]
pub struct RequestTimeline {
    /// When the load pattern said the request should go out.
    pub scheduled: Instant,
    /// When it actually went out (after any client queueing).
    pub sent: Instant,
    pub chunks: Vec<ContentChunk>,
    /// When the stream ended.
    pub end: Instant,
}

/// Per-request metrics in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestMetrics {
    /// From the scheduled time (includes client queueing: no coordinated omission).
    pub ttft_ms: f64,
    /// From the actual send.
    pub ttft_from_send_ms: f64,
    /// Time to the first content (non-reasoning) token, from the scheduled time; `None` when
    /// the request streamed reasoning only.
    pub ttfct_ms: Option<f64>,
    pub e2e_ms: f64,
    pub e2e_from_send_ms: f64,
    /// Client queueing: scheduled → sent.
    pub queue_ms: f64,
    /// One value per token after the first content chunk.
    pub itl_ms: Vec<f64>,
    /// One value per content chunk after the first.
    pub chunk_gaps_ms: Vec<f64>,
    /// (E2E − TTFT) / (output tokens − 1); absent with one token.
    pub tpot_ms: Option<f64>,
    pub output_tokens: u64,
}

fn ms(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1e3
}

impl RequestTimeline {
    /// Derives the metrics; `output_tokens` is the final count (server usage or tokenizer), used
    /// for TPOT. `None` when no content arrived.
    pub fn metrics(&self, output_tokens: u64) -> Option<RequestMetrics> {
        let first = self.chunks.first()?;
        let mut itl = Vec::new();
        let mut gaps = Vec::new();
        for w in self.chunks.windows(2) {
            let gap = ms(w[0].at, w[1].at);
            gaps.push(gap);
            let n = w[1].tokens.max(1);
            itl.extend(std::iter::repeat_n(gap / n as f64, n as usize));
        }
        let ttft_ms = ms(self.scheduled, first.at);
        let e2e_ms = ms(self.scheduled, self.end);
        Some(RequestMetrics {
            ttft_ms,
            ttft_from_send_ms: ms(self.sent, first.at),
            ttfct_ms: self
                .chunks
                .iter()
                .find(|c| !c.reasoning)
                .map(|c| ms(self.scheduled, c.at)),
            e2e_ms,
            e2e_from_send_ms: ms(self.sent, self.end),
            queue_ms: ms(self.scheduled, self.sent),
            itl_ms: itl,
            chunk_gaps_ms: gaps,
            tpot_ms: (output_tokens > 1).then(|| (e2e_ms - ttft_ms) / (output_tokens - 1) as f64),
            output_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn role_only_and_usage_chunks_carry_no_text() {
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(parse_chunk(Endpoint::Chat, role).unwrap().text, "");
        let c = parse_chunk(
            Endpoint::Chat,
            r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.text.as_str(), c.completion_tokens, c.prompt_tokens),
            ("Hi", Some(2), Some(5))
        );
        let usage_only = r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9}}"#;
        assert_eq!(
            parse_chunk(Endpoint::Chat, usage_only)
                .unwrap()
                .completion_tokens,
            Some(9)
        );
        let comp = r#"{"choices":[{"text":" world","finish_reason":"length"}]}"#;
        let c = parse_chunk(Endpoint::Completions, comp).unwrap();
        assert_eq!(
            (c.text.as_str(), c.finish_reason.as_deref()),
            (" world", Some("length"))
        );
    }

    #[test]
    fn reasoning_deltas_are_read_under_both_names() {
        let a = r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}],"usage":{"completion_tokens":3,"completion_tokens_details":{"reasoning_tokens":3}}}"#;
        let c = parse_chunk(Endpoint::Chat, a).unwrap();
        assert_eq!((c.reasoning.as_str(), c.text.as_str()), ("hmm", ""));
        assert_eq!(c.reasoning_tokens, Some(3));
        let b = r#"{"choices":[{"delta":{"reasoning":"so","content":null}}]}"#;
        assert_eq!(parse_chunk(Endpoint::Chat, b).unwrap().reasoning, "so");
    }

    #[test]
    fn errors_and_garbage_are_reported() {
        assert!(
            parse_chunk(Endpoint::Chat, r#"{"error":{"message":"overloaded"}}"#)
                .unwrap_err()
                .contains("overloaded")
        );
        assert!(parse_chunk(Endpoint::Chat, "{not json")
            .unwrap_err()
            .contains("malformed"));
    }

    #[test]
    fn bundled_chunks_split_their_gap_per_token() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let tl = RequestTimeline {
            scheduled: t0,
            sent: at(2),
            chunks: vec![
                ContentChunk {
                    at: at(50),
                    tokens: 1,
                    reasoning: false,
                },
                ContentChunk {
                    at: at(60),
                    tokens: 1,
                    reasoning: false,
                },
                ContentChunk {
                    at: at(80),
                    tokens: 2,
                    reasoning: false,
                },
            ],
            end: at(81),
        };
        let m = tl.metrics(4).unwrap();
        assert_eq!(m.ttft_ms, 50.0);
        assert_eq!(m.ttft_from_send_ms, 48.0);
        assert_eq!(m.queue_ms, 2.0);
        assert_eq!(m.itl_ms, vec![10.0, 10.0, 10.0]);
        assert_eq!(m.chunk_gaps_ms, vec![10.0, 20.0]);
        assert_eq!(m.tpot_ms, Some(31.0 / 3.0));
        assert_eq!(m.ttfct_ms, Some(50.0));
        let mut thinking = tl.clone();
        thinking.chunks[0].reasoning = true;
        thinking.chunks[1].reasoning = true;
        let m = thinking.metrics(4).unwrap();
        assert_eq!((m.ttft_ms, m.ttfct_ms), (50.0, Some(80.0)));
        thinking.chunks[2].reasoning = true;
        assert_eq!(thinking.metrics(4).unwrap().ttfct_ms, None);
        assert!(RequestTimeline {
            chunks: vec![],
            ..tl
        }
        .metrics(0)
        .is_none());
    }
}
