//! How much the HTTP client itself costs, against a streaming server in this process:
//! 1. timing error at 1,000 concurrent streams (server injects 50 ms TTFT, 10 ms per token):
//!    how late the client's first-token timestamp is behind the server's write;
//! 2. the highest request rate and streamed tokens/s the client sustains against a server
//!    that answers with no delay.
//!
//! 3. the same 1,000-stream TTFT error against that server running in another process (this
//!    bench re-executes itself as the server), the way a client meets a real server.
//!
//! `cargo bench --bench client_overhead` (prints a small table; no criterion statistics, the
//! numbers are themselves distributions). Server and client share this machine's cores, so the
//! figures bound the client's overhead from above.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vlmbench::bench::serving::{run_level, LoadLevel};
use vlmbench::client::http::{build_body, ClientConfig};
use vlmbench::client::stream::Endpoint;
use vlmbench::stats::summarize;

const TOKENS: usize = 20;

type Writes = Arc<Mutex<HashMap<String, Instant>>>;

async fn handle(mut sock: TcpStream, delays: Option<(Duration, Duration)>, writes: Writes) {
    sock.set_nodelay(true).ok();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        // One request: headers, then content-length bytes.
        let (end, len) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                break (end, len);
            }
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        while buf.len() < end + 4 + len {
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let body: serde_json::Value =
            serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or_default();
        buf.drain(..end + 4 + len);
        let prompt = body["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let received = Instant::now();
        let mut out = String::from("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
        let mut frame = |data: &str| out.push_str(&format!("{:x}\r\n{data}\r\n", data.len()));
        frame("data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n");
        match delays {
            None => {
                for t in 1..=TOKENS {
                    frame(&format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"ab\"}}}}],\"usage\":{{\"prompt_tokens\":4,\"completion_tokens\":{t}}}}}\n\n"));
                }
                frame("data: [DONE]\n\n");
                out.push_str("0\r\n\r\n");
                if sock.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
            Some((ttft, gap)) => {
                if sock.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
                let mut at = received + ttft;
                for t in 1..=TOKENS {
                    tokio::time::sleep_until(at.into()).await;
                    let d = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"ab\"}}}}],\"usage\":{{\"prompt_tokens\":4,\"completion_tokens\":{t}}}}}\n\n");
                    if sock
                        .write_all(format!("{:x}\r\n{d}\r\n", d.len()).as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if t == 1 {
                        writes
                            .lock()
                            .unwrap()
                            .insert(prompt.clone(), Instant::now());
                    }
                    at += gap;
                }
                let d = "data: [DONE]\n\n";
                let _ = sock
                    .write_all(format!("{:x}\r\n{d}\r\n0\r\n\r\n", d.len()).as_bytes())
                    .await;
            }
        }
    }
}

async fn server(delays: Option<(Duration, Duration)>, writes: Writes) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(handle(sock, delays, writes.clone()));
        }
    });
    format!("http://{addr}")
}

fn config(base: String) -> Arc<ClientConfig> {
    Arc::new(ClientConfig {
        base_url: base,
        api_key: None,
        model: "m".into(),
        endpoint: Endpoint::Chat,
        max_tokens: TOKENS,
        ignore_eos: true,
        stream_usage: true,
        timeout: Duration::from_secs(120),
    })
}

/// Set in the child process that only serves.
const SERVE_ENV: &str = "VLMBENCH_BENCH_SERVE";

/// Child mode: the delayed server on one thread, its URL on stdout, until stdin closes.
fn serve_only() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let base = server(
            Some((Duration::from_millis(50), Duration::from_millis(10))),
            Default::default(),
        )
        .await;
        println!("{base}");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink);
        })
        .await
        .unwrap();
    });
}

/// TTFT from send minus the injected 50 ms, for `streams` concurrent requests to `base`.
async fn ttft_error(
    http: &reqwest::Client,
    base: String,
    streams: usize,
) -> vlmbench::stats::Summary {
    let cfg = config(base);
    let bodies = (0..streams)
        .map(|i| build_body(&cfg, &format!("x{streams}-{i}"), &[]))
        .collect();
    let level = LoadLevel {
        concurrency: Some(streams),
        request_rate: None,
        burstiness: 1.0,
    };
    let run = run_level(
        http.clone(),
        cfg.clone(),
        bodies,
        &level,
        0,
        Default::default(),
    )
    .await;
    let errors: Vec<f64> = run
        .outcomes
        .iter()
        .map(|o| {
            assert!(o.error.is_none(), "{:?}", o.error);
            o.timeline.chunks[0]
                .at
                .saturating_duration_since(o.timeline.sent)
                .as_secs_f64()
                * 1e3
                - 50.0
        })
        .collect();
    summarize(&errors).unwrap()
}

fn main() {
    if std::env::var_os(SERVE_ENV).is_some() {
        return serve_only();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(usize::MAX).build().unwrap();
        // 1. Timing error at 1,000 streams.
        let writes: Writes = Default::default();
        let base = server(Some((Duration::from_millis(50), Duration::from_millis(10))), writes.clone()).await;
        let cfg = config(base);
        for streams in [1usize, 100, 1000] {
            let prompts: Vec<String> = (0..streams).map(|i| format!("{streams}-{i}")).collect();
            let bodies = prompts.iter().map(|p| build_body(&cfg, p, &[])).collect();
            let level = LoadLevel { concurrency: Some(streams), request_rate: None, burstiness: 1.0 };
            let run = run_level(http.clone(), cfg.clone(), bodies, &level, 0, Default::default()).await;
            let w = writes.lock().unwrap().clone();
            let mut late = Vec::new();
            let mut from_send = Vec::new();
            for (o, &pos) in run.outcomes.iter().zip(&run.positions) {
                assert!(o.error.is_none(), "{:?}", o.error);
                let first = o.timeline.chunks[0].at;
                late.push(first.saturating_duration_since(w[&prompts[pos]]).as_secs_f64() * 1e3);
                from_send.push(first.saturating_duration_since(o.timeline.sent).as_secs_f64() * 1e3 - 50.0);
            }
            let l = summarize(&late).unwrap();
            let s = summarize(&from_send).unwrap();
            println!(
                "{streams:>5} streams: client lateness behind server write: mean {:.3} ms, p99 {:.3} ms, max {:.3} ms; TTFT from send − injected 50 ms: mean {:.2} ms, p99 {:.2} ms",
                l.mean, l.p99, l.max, s.mean, s.p99
            );
        }
        // 2. Throughput against a zero-delay server.
        let base = server(None, Default::default()).await;
        let cfg = config(base);
        for concurrency in [64usize, 256] {
            let n = 20_000;
            let bodies = (0..n).map(|i| build_body(&cfg, &format!("p{i}"), &[])).collect();
            let level = LoadLevel { concurrency: Some(concurrency), request_rate: None, burstiness: 1.0 };
            let run = run_level(http.clone(), cfg.clone(), bodies, &level, 0, Default::default()).await;
            let ok = run.outcomes.iter().filter(|o| o.error.is_none()).count();
            let secs = run.duration.as_secs_f64();
            println!(
                "zero-delay server, concurrency {concurrency}: {ok}/{n} requests in {secs:.2} s = {:.0} req/s, {:.0} streamed tokens/s",
                ok as f64 / secs,
                (ok * TOKENS) as f64 / secs
            );
        }
        // 3. The server in another process.
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(SERVE_ENV, "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let base = line.trim().to_string();
        // Each level runs twice: first on new connections (TCP set-up counted), then on the
        // pooled ones, which is the client's own error.
        for streams in [1usize, 100, 1000] {
            for pass in ["new connections", "pooled connections"] {
                let s = ttft_error(&http, base.clone(), streams).await;
                println!(
                    "{streams:>5} streams, server in another process, {pass}: TTFT from send − injected 50 ms: mean {:.2} ms, median {:.2} ms, p99 {:.2} ms",
                    s.mean, s.median, s.p99
                );
            }
        }
        drop(child.stdin.take());
        let _ = child.wait();
    });
}
