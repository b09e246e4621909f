//! One streaming request to an OpenAI-compatible server, timed on arrival of every chunk.
//!
//! Request bodies (with images already base64-encoded) are built before the clock starts, so
//! TTFT measures the server and the network, not the client's JSON and base64 work.

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::secret::Scrubber;
use super::sse::{SseEvent, SseParser};
use super::stream::{parse_chunk, ContentChunk, Endpoint, RequestTimeline};

/// Server connection settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// e.g. `http://127.0.0.1:8000` (a trailing `/v1` is accepted).
    pub base_url: String,
    /// Sent as a bearer token; never written to reports or logs.
    pub api_key: Option<String>,
    /// Model name sent in the request.
    pub model: String,
    pub endpoint: Endpoint,
    pub max_tokens: usize,
    pub ignore_eos: bool,
    /// Ask for token usage in the stream (`stream_options`); vLLM then reports cumulative
    /// completion tokens in every chunk, which splits multi-token chunks exactly.
    pub stream_usage: bool,
    /// Whole-request limit.
    pub timeout: Duration,
}

impl ClientConfig {
    /// `<base>/v1/<path>`.
    pub fn url(&self, path: &str) -> String {
        let base = self.base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        format!("{base}/v1/{path}")
    }
}

/// An encoded image for a chat request.
pub struct ImagePayload<'a> {
    pub mime: &'a str,
    pub bytes: &'a [u8],
}

/// Builds the JSON body of one streaming request (greedy: temperature 0). On the chat
/// endpoint, a prompt with images is one user turn whose content is one `image_url` part per
/// image, in order, then the text part; the completions endpoint takes text only (`images` is
/// ignored there: the caller refuses image sets before).
pub fn build_body(cfg: &ClientConfig, prompt: &str, images: &[ImagePayload<'_>]) -> Vec<u8> {
    let body = match cfg.endpoint {
        Endpoint::Chat => {
            let content = if images.is_empty() {
                Value::String(prompt.to_owned())
            } else {
                let mut parts: Vec<Value> = images
                    .iter()
                    .map(|img| {
                        json!({"type": "image_url", "image_url": {"url": format!(
                            "data:{};base64,{}",
                            img.mime,
                            base64::engine::general_purpose::STANDARD.encode(img.bytes)
                        )}})
                    })
                    .collect();
                parts.push(json!({"type": "text", "text": prompt}));
                Value::Array(parts)
            };
            json!({"model": cfg.model, "messages": [{"role": "user", "content": content}]})
        }
        Endpoint::Completions => json!({"model": cfg.model, "prompt": prompt}),
    };
    finish_body(cfg, body, cfg.max_tokens)
}

/// The body of one turn of a conversation: every earlier (user, assistant) exchange, then the
/// new user turn, on the chat endpoint; at most `max_tokens` in reply.
pub fn build_chat_body(
    cfg: &ClientConfig,
    history: &[(String, String)],
    prompt: &str,
    max_tokens: usize,
) -> Vec<u8> {
    let mut messages: Vec<Value> = history
        .iter()
        .flat_map(|(user, reply)| {
            [
                json!({"role": "user", "content": user}),
                json!({"role": "assistant", "content": reply}),
            ]
        })
        .collect();
    messages.push(json!({"role": "user", "content": prompt}));
    finish_body(
        cfg,
        json!({"model": cfg.model, "messages": messages}),
        max_tokens,
    )
}

/// Adds the streaming, greedy-decoding and length settings every request carries.
fn finish_body(cfg: &ClientConfig, mut body: Value, max_tokens: usize) -> Vec<u8> {
    let obj = body.as_object_mut().expect("built as an object");
    obj.insert("stream".into(), true.into());
    obj.insert("temperature".into(), 0.0.into());
    obj.insert("max_tokens".into(), max_tokens.into());
    if cfg.stream_usage {
        obj.insert(
            "stream_options".into(),
            json!({"include_usage": true, "continuous_usage_stats": true}),
        );
    }
    if cfg.ignore_eos {
        obj.insert("ignore_eos".into(), true.into());
    }
    serde_json::to_vec(&body).expect("JSON values always serialise")
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct RequestOutcome {
    pub timeline: RequestTimeline,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// Why it failed; `None` on success.
    pub error: Option<String>,
    pub text: String,
    /// Reasoning text streamed before (or between) the content.
    pub reasoning_text: String,
    /// `completion_tokens_details.reasoning_tokens` from the last usage that had it.
    pub reasoning_tokens: Option<u64>,
    /// Server-reported token counts (from the last usage seen).
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Every content chunk carried the server's cumulative completion count, so the tokens
    /// of each chunk (and the per-token ITL) are known; otherwise a chunk counts as one token.
    pub chunk_tokens_known: bool,
    /// Why the first attempt was retried on a fresh connection (see [`super::retry`]).
    pub retried: Option<String>,
    /// Abandoned because the run was cancelled (Ctrl-C, SIGTERM) while in flight.
    pub cancelled: bool,
}

/// Sends one request and reads its stream to the end (or the timeout).
pub async fn send(
    http: &reqwest::Client,
    cfg: &ClientConfig,
    body: Vec<u8>,
    scheduled: Instant,
) -> RequestOutcome {
    send_until(http, cfg, body, scheduled, std::future::pending()).await
}

/// [`send`], abandoned (and marked `cancelled`) as soon as `cancel` resolves.
///
/// A first attempt that fails before any response byte arrived because the server closed the
/// connection (a stale keep-alive connection: llama.cpp's llama-server closes connections after
/// a streamed response) is retried once on a fresh connection, its clock restarted; the outcome
/// says so in `retried`. Served strings (error bodies, text) are scrubbed of the API key.
pub async fn send_until(
    http: &reqwest::Client,
    cfg: &ClientConfig,
    body: Vec<u8>,
    scheduled: Instant,
    cancel: impl std::future::Future<Output = ()>,
) -> RequestOutcome {
    let path = match cfg.endpoint {
        Endpoint::Chat => "chat/completions",
        Endpoint::Completions => "completions",
    };
    let url = cfg.url(path);
    let attempts = async {
        let mut outcome = new_outcome(scheduled);
        let first = stream_into(http, cfg, url.clone(), body.clone(), &mut outcome).await;
        match first {
            Err(e)
                if super::retry::is_stale_connection(
                    outcome.status.is_some() || !outcome.timeline.chunks.is_empty(),
                    outcome.cancelled,
                    &e,
                ) =>
            {
                // The clock restarts at the retry's send; the wait before the first send
                // (client queueing on a rate schedule) is kept.
                let queued = outcome.timeline.sent - outcome.timeline.scheduled;
                let restart = Instant::now();
                let mut again = new_outcome(restart.checked_sub(queued).unwrap_or(restart));
                again.retried = Some(e);
                let r = stream_into(super::retry::fresh_client(), cfg, url, body, &mut again).await;
                (again, r)
            }
            r => (outcome, r),
        }
    };
    let mut outcome;
    let result = tokio::select! {
        r = tokio::time::timeout(cfg.timeout, attempts) => Some(r),
        _ = cancel => None,
    };
    match result {
        Some(Ok((o, r))) => {
            outcome = o;
            if let Err(e) = r {
                outcome.error = Some(e);
            }
        }
        Some(Err(_)) => {
            outcome = new_outcome(scheduled);
            outcome.error = Some(format!(
                "timed out after {:.1} s (--request-timeout)",
                cfg.timeout.as_secs_f64()
            ));
        }
        None => {
            outcome = new_outcome(scheduled);
            outcome.cancelled = true;
            outcome.error =
                Some("cancelled: the run was interrupted while it was in flight".into());
        }
    }
    outcome.timeline.end = Instant::now();
    let scrubber = Scrubber::new(cfg.api_key.as_deref());
    if let Some(e) = outcome.error.as_mut() {
        scrubber.scrub_in(e);
    }
    if let Some(e) = outcome.retried.as_mut() {
        scrubber.scrub_in(e);
    }
    scrubber.scrub_in(&mut outcome.text);
    outcome
}

fn new_outcome(scheduled: Instant) -> RequestOutcome {
    let sent = Instant::now();
    RequestOutcome {
        timeline: RequestTimeline {
            scheduled: scheduled.min(sent),
            sent,
            chunks: Vec::new(),
            end: sent,
        },
        status: None,
        error: None,
        text: String::new(),
        reasoning_text: String::new(),
        reasoning_tokens: None,
        prompt_tokens: None,
        completion_tokens: None,
        chunk_tokens_known: true,
        retried: None,
        cancelled: false,
    }
}

async fn stream_into(
    http: &reqwest::Client,
    cfg: &ClientConfig,
    url: String,
    body: Vec<u8>,
    out: &mut RequestOutcome,
) -> Result<(), String> {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(body);
    if let Some(key) = &cfg.api_key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.map_err(|e| describe_reqwest(&e))?;
    let status = resp.status();
    out.status = Some(status.as_u16());
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        return Err(format!("HTTP {}: {}", status.as_u16(), text.trim()));
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !content_type.starts_with("text/event-stream") {
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        return Err(format!(
            "HTTP {} but the reply is not an event stream (content-type {:?}, not text/event-stream): {}",
            status.as_u16(),
            content_type,
            text.trim()
        ));
    }
    let mut parser = SseParser::new();
    let mut stream = resp.bytes_stream();
    let mut last_completion = 0u64;
    let mut done = false;
    let mut finished = false;
    while let Some(item) = stream.next().await {
        let bytes = item.map_err(|e| format!("stream dropped: {}", describe_reqwest(&e)))?;
        let now = Instant::now();
        for event in parser.push(&bytes).map_err(|e| e.to_string())? {
            let data = match event {
                SseEvent::Done => {
                    done = true;
                    continue;
                }
                SseEvent::Data(d) => d,
            };
            let chunk = parse_chunk(cfg.endpoint, &data)?;
            if let Some(p) = chunk.prompt_tokens {
                out.prompt_tokens = Some(p);
            }
            let tokens = match chunk.completion_tokens {
                Some(c) => {
                    out.completion_tokens = Some(c);
                    let delta = c.saturating_sub(last_completion);
                    last_completion = c;
                    delta.max(1)
                }
                None => {
                    if !chunk.text.is_empty() {
                        out.chunk_tokens_known = false;
                    }
                    1
                }
            };
            finished |= chunk.finish_reason.is_some();
            if chunk.reasoning_tokens.is_some() {
                out.reasoning_tokens = chunk.reasoning_tokens;
            }
            out.reasoning_text.push_str(&chunk.reasoning);
            if !chunk.text.is_empty() || !chunk.reasoning.is_empty() {
                out.text.push_str(&chunk.text);
                out.timeline.chunks.push(ContentChunk {
                    at: now,
                    tokens,
                    reasoning: chunk.text.is_empty(),
                });
            }
        }
    }
    if parser.has_partial_event() {
        return Err("stream dropped in the middle of an event".into());
    }
    if !done && !finished {
        return Err("stream ended without a finish_reason or [DONE]".into());
    }
    if out.timeline.chunks.is_empty() {
        return Err("the server streamed no content and no reasoning".into());
    }
    Ok(())
}

/// A reqwest error with its whole cause chain ("connection refused"...).
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoint: Endpoint) -> ClientConfig {
        ClientConfig {
            base_url: "http://127.0.0.1:1/v1/".into(),
            api_key: None,
            model: "m".into(),
            endpoint,
            max_tokens: 7,
            ignore_eos: true,
            stream_usage: true,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn urls_and_bodies() {
        let c = cfg(Endpoint::Chat);
        assert_eq!(c.url("models"), "http://127.0.0.1:1/v1/models");
        let body: Value = serde_json::from_slice(&build_body(
            &c,
            "hi",
            &[ImagePayload {
                mime: "image/png",
                bytes: b"\x89PNG",
            }],
        ))
        .unwrap();
        assert_eq!(body["stream"], true);
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["max_tokens"], 7);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(body["messages"][0]["content"][1]["text"], "hi");
        assert_eq!(
            body["messages"][0]["content"][0]["image_url"]["url"],
            "data:image/png;base64,iVBORw=="
        );
        let text: Value =
            serde_json::from_slice(&build_body(&cfg(Endpoint::Completions), "p", &[])).unwrap();
        assert_eq!(text["prompt"], "p");
        assert!(text.get("messages").is_none());
        let plain: Value = serde_json::from_slice(&build_body(&c, "just text", &[])).unwrap();
        assert_eq!(plain["messages"][0]["content"], "just text");
    }

    #[test]
    fn several_images_go_as_one_part_each_in_order_before_the_text() {
        let images = [
            ImagePayload {
                mime: "image/png",
                bytes: b"first",
            },
            ImagePayload {
                mime: "image/jpeg",
                bytes: b"second",
            },
        ];
        let body: Value =
            serde_json::from_slice(&build_body(&cfg(Endpoint::Chat), "compare", &images)).unwrap();
        let parts = body["messages"][0]["content"].as_array().unwrap();
        let kinds: Vec<&str> = parts.iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["image_url", "image_url", "text"]);
        assert_eq!(
            parts[0]["image_url"]["url"],
            "data:image/png;base64,Zmlyc3Q="
        );
        assert_eq!(
            parts[1]["image_url"]["url"],
            "data:image/jpeg;base64,c2Vjb25k"
        );
        assert_eq!(parts[2]["text"], "compare");
    }

    #[test]
    fn a_conversation_turn_carries_its_history_in_order() {
        let history = vec![
            ("first question".to_string(), "first answer".to_string()),
            ("second question".to_string(), "second answer".to_string()),
        ];
        let body: Value =
            serde_json::from_slice(&build_chat_body(&cfg(Endpoint::Chat), &history, "third", 5))
                .unwrap();
        let roles: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
        assert_eq!(body["messages"][1]["content"], "first answer");
        assert_eq!(body["messages"][4]["content"], "third");
        assert_eq!(body["max_tokens"], 5);
        assert_eq!(body["stream"], true);
        assert_eq!(body["ignore_eos"], true);
    }
}
