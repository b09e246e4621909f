//! A configurable OpenAI-compatible streaming server for the CLI tests of served runs: it logs
//! every request it receives, and its behaviour is chosen by the request's `model` field.
//!
//! Modes (the `model` sent):
//! - `ok`: 4 content chunks, 5 ms apart, with cumulative usage in each chunk (vLLM-like);
//! - `nousage`: the same without any usage (llama-cpp-python-like);
//! - `llama-server`: like `ok`, but a connection serves one streamed response only: the next
//!   request on it is read and the socket closed without a response byte, as happens when
//!   llama.cpp's llama-server has closed a keep-alive connection the client then reuses;
//! - `echo-key`: HTTP 401 whose body echoes the `Authorization` header;
//! - `json200`: HTTP 200 with a JSON body instead of an event stream;
//! - `stall`: the head and the role chunk, then nothing for 60 s.
//!
//! Whatever the mode, `GET /metrics` serves a vLLM-style Prometheus page whose counters follow
//! the chat requests answered so far (7 prompt and 4 generated tokens, 10 ms of queueing
//! each), and `GET /info` a TGI-style description.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// e.g. `post /v1/chat/completions http/1.1` (lower case).
    pub line: String,
    pub body: serde_json::Value,
    /// Whether the server answered it (the `llama-server` mode drops reused requests).
    pub answered: bool,
}

/// A running mock server.
#[derive(Clone)]
pub struct MockServer {
    pub base: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted.
    pub connections: Arc<Mutex<usize>>,
}

impl MockServer {
    /// Starts a server whose `GET /v1/models` answers `models_status`.
    pub async fn start(models_status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = MockServer {
            base,
            seen: Arc::default(),
            connections: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                *s.connections.lock().unwrap() += 1;
                tokio::spawn(serve(sock, s.seen.clone(), models_status));
            }
        });
        server
    }

    /// The chat requests received (answered or not).
    pub fn chats(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.line.contains("/chat/completions"))
            .cloned()
            .collect()
    }

    /// How many requests went to `path`.
    pub fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.line.contains(path))
            .count()
    }
}

/// Reads one request: (request line lower-cased, headers as sent, body).
async fn read(sock: &mut TcpStream) -> Option<(String, String, String)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let l = l.to_ascii_lowercase();
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = sock.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let line = head.lines().next().unwrap_or("").to_ascii_lowercase();
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            return Some((line, head, body));
        }
    }
}

async fn plain(sock: &mut TcpStream, status: &str, ctype: &str, body: &str) -> bool {
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(resp.as_bytes()).await.is_ok()
}

async fn chunk(sock: &mut TcpStream, data: &str) -> bool {
    let frame = format!("{:x}\r\n{data}\r\n", data.len());
    sock.write_all(frame.as_bytes()).await.is_ok()
}

/// The metrics page after `answered` chat requests.
pub fn metrics_page(answered: usize) -> String {
    let n = answered as f64;
    format!(
        "# HELP vllm:prompt_tokens_total Prefill tokens processed.\n\
         # TYPE vllm:prompt_tokens_total counter\n\
         vllm:prompt_tokens_total{{model_name=\"ok\"}} {}\n\
         # TYPE vllm:generation_tokens_total counter\n\
         vllm:generation_tokens_total{{model_name=\"ok\"}} {}\n\
         # TYPE vllm:request_queue_time_seconds histogram\n\
         vllm:request_queue_time_seconds_sum{{model_name=\"ok\"}} {}\n\
         vllm:request_queue_time_seconds_bucket{{le=\"+Inf\",model_name=\"ok\"}} {n}\n\
         vllm:request_queue_time_seconds_count{{model_name=\"ok\"}} {n}\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{model_name=\"ok\"}} 0.25\n",
        7.0 * n,
        4.0 * n,
        0.01 * n
    )
}

async fn serve(mut sock: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, models_status: u16) {
    sock.set_nodelay(true).ok();
    let mut streamed = 0usize;
    while let Some((line, head, body)) = read(&mut sock).await {
        let req: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let mode = req["model"].as_str().unwrap_or("").to_string();
        let drop_it = mode == "llama-server" && streamed > 0;
        seen.lock().unwrap().push(Seen {
            line: line.clone(),
            body: req.clone(),
            answered: !drop_it,
        });
        if line.starts_with("get ") {
            let ok = if line.contains("/metrics") {
                let answered = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.answered && s.line.contains("/chat/completions"))
                    .count();
                plain(
                    &mut sock,
                    "200 OK",
                    "text/plain; version=0.0.4",
                    &metrics_page(answered),
                )
                .await
            } else if line.starts_with("get /info ") {
                plain(
                    &mut sock,
                    "200 OK",
                    "application/json",
                    r#"{"model_id":"ok","max_batch_total_tokens":1234,"router":"text-generation-router"}"#,
                )
                .await
            } else if line.contains("/v1/models") && models_status == 200 {
                plain(
                    &mut sock,
                    "200 OK",
                    "application/json",
                    r#"{"object":"list","data":[{"id":"ok","object":"model"}]}"#,
                )
                .await
            } else if line.contains("/v1/models") {
                plain(
                    &mut sock,
                    &format!("{models_status} Nope"),
                    "application/json",
                    r#"{"error":"models unavailable"}"#,
                )
                .await
            } else {
                plain(&mut sock, "404 Not Found", "application/json", "{}").await
            };
            if !ok {
                return;
            }
            continue;
        }
        if line.contains("/reset_prefix_cache") {
            if !plain(&mut sock, "200 OK", "text/plain", "").await {
                return;
            }
            continue;
        }
        if !line.contains("/chat/completions") {
            if !plain(&mut sock, "404 Not Found", "application/json", "{}").await {
                return;
            }
            continue;
        }
        if drop_it {
            // The reused connection closes without a response byte, a while after the request
            // (so a retry that kept the lost attempt's clock would show it).
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        match mode.as_str() {
            "echo-key" => {
                let auth = head
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                    .unwrap_or("");
                let msg = format!("{{\"error\":\"bad credentials in header {auth}\"}}");
                if !plain(&mut sock, "401 Unauthorized", "application/json", &msg).await {
                    return;
                }
                continue;
            }
            "json200" => {
                if !plain(
                    &mut sock,
                    "200 OK",
                    "application/json",
                    r#"{"choices":[{"message":{"content":"hi"}}]}"#,
                )
                .await
                {
                    return;
                }
                continue;
            }
            _ => {}
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        if sock.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        if !chunk(&mut sock, &format!("data: {role}\n\n")).await {
            return;
        }
        if mode == "stall" {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        let usage = mode != "nousage";
        for i in 1..=4u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut v = serde_json::json!({"choices":[{"index":0,"delta":{"content":"ab"},"finish_reason":null}]});
            if usage {
                v["usage"] = serde_json::json!({"prompt_tokens":7,"completion_tokens":i});
            }
            if !chunk(&mut sock, &format!("data: {v}\n\n")).await {
                return;
            }
        }
        let fin = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;
        let _ = chunk(&mut sock, &format!("data: {fin}\n\n")).await;
        let _ = chunk(&mut sock, "data: [DONE]\n\n").await;
        if sock.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
        streamed += 1;
    }
}

/// Runs `vlmbench run --backend openai` against `base` with `args`, off the async runtime.
pub async fn run_cli(base: &str, data: &Path, report: &Path, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlmbench"));
    cmd.args([
        "run",
        "--backend",
        "openai",
        "--base-url",
        base,
        "--data-file",
    ])
    .arg(data)
    .arg("--report-file")
    .arg(report)
    .args(["--max-new-tokens", "4"])
    .args(args);
    if !args.contains(&"--warmup") {
        cmd.args(["--warmup", "0"]);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}
