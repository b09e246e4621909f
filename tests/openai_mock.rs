//! The HTTP client against a streaming server inside the test, with injected delays and
//! failures: vlmbench's TTFT and per-token ITL must match what the server injected.

// The timing tests hold `TIMING` across their awaits on purpose (see there).
#![allow(clippy::await_holding_lock)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::read_request;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use vlmbench::bench::serving::{run_level, LoadLevel};
use vlmbench::client::http::{build_body, ClientConfig};
use vlmbench::client::stream::Endpoint;

const TTFT: Duration = Duration::from_millis(50);
const GAP: Duration = Duration::from_millis(10);
/// Content tokens per response: the first chunk role-only, then one token per chunk, except
/// one chunk that carries two tokens.
const TOKENS: u64 = 20;

/// When the server wrote each content chunk, by prompt: the reference the client's own
/// timestamps are checked against (server and client share one clock in this process).
static SERVER_WRITES: std::sync::Mutex<Option<HashMap<String, Vec<Instant>>>> =
    std::sync::Mutex::new(None);

fn log_write(prompt: &str, at: Instant) {
    let mut g = SERVER_WRITES.lock().unwrap();
    g.get_or_insert_with(HashMap::new)
        .entry(prompt.to_string())
        .or_default()
        .push(at);
}

async fn chunk(sock: &mut TcpStream, data: &str) -> std::io::Result<()> {
    let frame = format!("{:x}\r\n{data}\r\n", data.len());
    sock.write_all(frame.as_bytes()).await
}

fn sse(v: serde_json::Value) -> String {
    format!("data: {v}\n\n")
}

/// Serves one connection; behaviour chosen by the request's `model` field.
async fn serve(mut sock: TcpStream) {
    sock.set_nodelay(true).ok();
    while let Some((line, body)) = read_request(&mut sock).await {
        let received = Instant::now();
        if line.starts_with("get ") {
            let (status, msg) = if line.contains("/v1/models") {
                (
                    "200 OK",
                    r#"{"object":"list","data":[{"id":"ok","object":"model"}]}"#,
                )
            } else {
                ("404 Not Found", "{}")
            };
            let resp = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{msg}", msg.len());
            if sock.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let req: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let mode = req["model"].as_str().unwrap_or("").to_string();
        let prompt = req["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if mode == "http500" {
            let msg = "{\"error\":{\"message\":\"boom\"}}";
            let _ = sock
                .write_all(format!("HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{msg}", msg.len()).as_bytes())
                .await;
            continue;
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        if sock.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let role =
            serde_json::json!({"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]});
        let _ = chunk(&mut sock, &sse(role)).await;
        let mut at = received + TTFT;
        let mut sent_tokens = 0u64;
        let mut step = 0;
        while sent_tokens < TOKENS {
            // Chunk 5 bundles two tokens (as speculative decoding or stream intervals do).
            let n = if step == 5 { 2 } else { 1 };
            if step > 0 {
                at += GAP * n as u32;
            }
            tokio::time::sleep_until(at.into()).await;
            if mode == "stall" && step == 3 {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            if mode == "drop" && step == 3 {
                return; // connection closed mid-stream
            }
            if mode == "malformed" && step == 3 {
                let _ = chunk(&mut sock, "data: {not json\n\n").await;
                sent_tokens += n;
                step += 1;
                continue;
            }
            sent_tokens += n;
            let v = serde_json::json!({
                "choices":[{"index":0,"delta":{"content":"ab".repeat(n as usize)},"finish_reason":null}],
                "usage":{"prompt_tokens":7,"completion_tokens":sent_tokens}
            });
            // Stamped as the write starts: no client can see the chunk earlier.
            let writing = Instant::now();
            if chunk(&mut sock, &sse(v)).await.is_err() {
                return;
            }
            log_write(&prompt, writing);
            step += 1;
        }
        let fin = serde_json::json!({"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":{"prompt_tokens":7,"completion_tokens":sent_tokens}});
        let _ = chunk(&mut sock, &sse(fin)).await;
        let _ = chunk(&mut sock, "data: [DONE]\n\n").await;
        let _ = sock.write_all(b"0\r\n\r\n").await;
    }
}

async fn start_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve(sock));
        }
    });
    format!("http://{addr}")
}

fn config(base: &str, model: &str) -> ClientConfig {
    ClientConfig {
        base_url: base.into(),
        api_key: Some("sk-test".into()),
        model: model.into(),
        endpoint: Endpoint::Chat,
        max_tokens: TOKENS as usize,
        ignore_eos: true,
        stream_usage: true,
        timeout: Duration::from_secs(5),
    }
}

/// Timing errors of one run, in ms.
#[derive(Debug)]
struct Errors {
    /// Worst |client TTFT from send − injected TTFT| (includes connection set-up and the
    /// server's own scheduling under load).
    ttft_vs_injected: f64,
    /// Lowest signed (client TTFT from send − injected TTFT): below 0, a first token was
    /// stamped before the server could have sent it.
    ttft_vs_injected_min: f64,
    /// Lowest signed (client first-token stamp − start of the server's write), ms; below 0, the
    /// client stamped a token before it could have arrived.
    ttft_client_min: f64,
    /// Mean lateness of the client's first-token timestamp behind the server's write.
    ttft_client_mean: f64,
    /// Worst lateness of the client's first-token timestamp behind the server's write.
    ttft_client_max: f64,
    /// Worst |client chunk gap − server chunk gap|.
    itl_client_max: f64,
    /// Mean |client chunk gap − server chunk gap|.
    itl_client_mean: f64,
}

/// Timing tests run one at a time, so they do not load the 2 cores against each other. Each
/// test has its own runtime, so the guard held across its awaits blocks only the other tests.
static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The best of three measurements (lowest mean client error): a burst of unrelated load on a
/// shared 2-core machine can spoil one run, and the client's error is what the test is after.
async fn timing_errors(n: usize) -> Errors {
    let mut best: Option<Errors> = None;
    for _ in 0..3 {
        let e = timing_errors_once(n).await;
        println!("{n} streams, one run: {e:?}");
        let better = best.as_ref().is_none_or(|b| {
            e.ttft_client_mean + e.itl_client_mean < b.ttft_client_mean + b.itl_client_mean
        });
        if better {
            best = Some(e);
        }
    }
    best.expect("three runs")
}

/// Runs `n` concurrent requests and measures the client's timing errors.
async fn timing_errors_once(n: usize) -> Errors {
    let base = start_server().await;
    let cfg = Arc::new(config(&base, "ok"));
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let tag = format!(
        "{}-{n}-{}",
        base,
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let prompts: Vec<String> = (0..n).map(|i| format!("{tag} prompt {i}")).collect();
    let bodies = prompts.iter().map(|p| build_body(&cfg, p, &[])).collect();
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let level = LoadLevel {
        concurrency: Some(n),
        request_rate: None,
        burstiness: 1.0,
    };
    let run = run_level(http, cfg, bodies, &level, 0, Default::default()).await;
    let writes = SERVER_WRITES.lock().unwrap().clone().unwrap_or_default();
    let mut e = Errors {
        ttft_vs_injected: 0.0,
        ttft_vs_injected_min: f64::INFINITY,
        ttft_client_min: f64::INFINITY,
        ttft_client_mean: 0.0,
        ttft_client_max: 0.0,
        itl_client_max: 0.0,
        itl_client_mean: 0.0,
    };
    let mut gaps = 0usize;
    for (o, prompt) in run.outcomes.iter().zip(&prompts) {
        assert!(o.error.is_none(), "{:?}", o.error);
        assert_eq!(o.completion_tokens, Some(TOKENS));
        assert_eq!(o.prompt_tokens, Some(7));
        let m = o.timeline.metrics(TOKENS).unwrap();
        assert_eq!(m.itl_ms.len() as u64, TOKENS - 1, "per-token ITL");
        assert_eq!(
            m.chunk_gaps_ms.len() as u64,
            TOKENS - 2,
            "one chunk carried two tokens"
        );
        e.ttft_vs_injected = e
            .ttft_vs_injected
            .max((m.ttft_from_send_ms - TTFT.as_secs_f64() * 1e3).abs());
        e.ttft_vs_injected_min = e
            .ttft_vs_injected_min
            .min(m.ttft_from_send_ms - TTFT.as_secs_f64() * 1e3);
        let server = &writes[prompt];
        assert_eq!(server.len(), o.timeline.chunks.len());
        // Signed: a stamp taken before the server wrote the chunk shows as negative.
        let (client, written) = (o.timeline.chunks[0].at, server[0]);
        let late = if client >= written {
            (client - written).as_secs_f64() * 1e3
        } else {
            -((written - client).as_secs_f64() * 1e3)
        };
        e.ttft_client_min = e.ttft_client_min.min(late);
        e.ttft_client_mean += late / n as f64;
        e.ttft_client_max = e.ttft_client_max.max(late);
        for (i, w) in server.windows(2).enumerate() {
            let server_gap = (w[1] - w[0]).as_secs_f64() * 1e3;
            let client_gap = m.chunk_gaps_ms[i];
            e.itl_client_max = e.itl_client_max.max((client_gap - server_gap).abs());
            e.itl_client_mean += (client_gap - server_gap).abs();
            gaps += 1;
        }
        // The per-token split reproduces the injected per-token gap.
        let tokens_per_chunk: Vec<u64> = o.timeline.chunks.iter().map(|c| c.tokens).collect();
        assert_eq!(tokens_per_chunk.iter().sum::<u64>(), TOKENS);
        assert_eq!(tokens_per_chunk[5], 2);
    }
    e.itl_client_mean /= gaps.max(1) as f64;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_and_itl_match_injected_delays_at_1_stream() {
    let _serial = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let e = timing_errors(1).await;
    println!("1 stream: {e:?}");
    // Injected TTFT plus a fresh connection's set-up on loopback.
    assert!(e.ttft_vs_injected < 10.0, "{e:?}");
    assert!(e.ttft_vs_injected_min > -1.0, "{e:?}");
    assert!(e.ttft_client_min >= 0.0, "{e:?}");
    assert!(e.ttft_client_mean < 1.0, "{e:?}");
    assert!(e.itl_client_mean < 1.0, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_and_itl_match_injected_delays_at_256_streams() {
    let _serial = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let e = timing_errors(256).await;
    println!("256 streams: {e:?}");
    // The server shares the 2 cores with the client under test: single readings can be held
    // up by scheduling, so the bounds are on means (the worst cases are printed above). On a
    // quiet 2-core machine the means are about 0.6 ms (TTFT) and 0.8-1.9 ms (ITL); the bounds
    // leave room for a busy machine (5.3 ms ITL mean was seen with a compiler on both cores).
    assert!(e.ttft_client_mean < 5.0, "{e:?}");
    assert!(e.itl_client_mean < 10.0, "{e:?}");
    // No first token may be stamped before the server sent it (a stamp taken at send time
    // would be about the injected 50 ms early), and none may be late by a whole injected TTFT.
    assert!(e.ttft_client_min >= 0.0, "{e:?}");
    assert!(e.ttft_vs_injected_min > -1.0, "{e:?}");
    assert!(e.ttft_client_max < TTFT.as_secs_f64() * 1e3, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_is_recorded_with_its_reason() {
    let base = start_server().await;
    let http = reqwest::Client::new();
    let cases = [
        ("http500", "HTTP 500"),
        ("drop", "stream"),
        ("malformed", "malformed"),
        ("stall", "timed out"),
    ];
    for (mode, want) in cases {
        let mut cfg = config(&base, mode);
        cfg.timeout = Duration::from_millis(800);
        let cfg = Arc::new(cfg);
        let body = build_body(&cfg, "x", &[]);
        let level = LoadLevel {
            concurrency: Some(1),
            request_rate: None,
            burstiness: 1.0,
        };
        let run = run_level(http.clone(), cfg, vec![body], &level, 0, Default::default()).await;
        let err = run.outcomes[0].error.clone().unwrap_or_default();
        assert!(err.contains(want), "{mode}: {err:?}");
    }
    // Nothing listens on this port: the error says so at once.
    let cfg = Arc::new(config("http://127.0.0.1:9", "ok"));
    let body = build_body(&cfg, "x", &[]);
    let t = Instant::now();
    let level = LoadLevel {
        concurrency: Some(1),
        request_rate: None,
        burstiness: 1.0,
    };
    let run = run_level(http, cfg, vec![body], &level, 0, Default::default()).await;
    assert!(run.outcomes[0]
        .error
        .as_deref()
        .unwrap()
        .to_lowercase()
        .contains("connect"));
    assert!(t.elapsed() < Duration::from_secs(3));
}

/// The whole CLI path: a concurrency sweep against the mock server, written as a serving report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sweep_writes_a_serving_report() {
    let _serial = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let base = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("prompts_short.json");
    let report = dir.path().join("serve.json");
    let bin = assert_cmd::cargo::cargo_bin("vlmbench");
    let (b, d, r) = (bin.clone(), data.clone(), report.clone());
    let (prep, out) = tokio::task::spawn_blocking(move || {
        let prep = std::process::Command::new(&b)
            .args(["prepare", "prompts", "--builtin", "short", "--out"])
            .arg(&d)
            .status()
            .unwrap();
        let out = std::process::Command::new(&b)
            .args([
                "run",
                "--backend",
                "openai",
                "--base-url",
                &base,
                "--data-file",
            ])
            .arg(&d)
            .args([
                "--concurrency",
                "1,4",
                "--num-prompts",
                "8",
                "--max-new-tokens",
                "20",
                "--api-key",
                "sk-secret-123",
                "--report-file",
            ])
            .arg(&r)
            .output()
            .unwrap();
        (prep, out)
    })
    .await
    .unwrap();
    assert!(prep.success());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&report).unwrap();
    let csv = std::fs::read_to_string(report.with_extension("csv")).unwrap();
    assert!(
        !text.contains("sk-secret-123") && !csv.contains("sk-secret-123"),
        "API key leaked"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kind"], "serving");
    assert_eq!(
        v["server"]["model"], "ok",
        "model name taken from /v1/models"
    );
    let levels = v["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for (l, c) in levels.iter().zip([1, 4]) {
        assert_eq!(l["concurrency"], c);
        assert_eq!(l["completed"], 8);
        assert_eq!(l["failed"], 0);
        assert_eq!(l["total_output_tokens"], 8 * TOKENS);
        let ttft = l["ttft_ms"]["median"].as_f64().unwrap();
        assert!((49.0..70.0).contains(&ttft), "TTFT median {ttft}");
        let itl = l["itl_ms"]["median"].as_f64().unwrap();
        assert!((9.0..11.5).contains(&itl), "ITL median {itl}");
        assert_eq!(l["requests"].as_array().unwrap().len(), 8);
    }
    assert_eq!(csv.lines().count(), 1 + 16);
}

/// `--workload` writes its synthetic set (unique images for vision) and sets the sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_presets_make_their_own_set() {
    let _serial = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let base = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("vlmbench");
    let cwd = dir.path().to_path_buf();
    let (vision, high) = tokio::task::spawn_blocking(move || {
        let vision = std::process::Command::new(&bin)
            .current_dir(&cwd)
            .args([
                "run",
                "--backend",
                "openai",
                "--base-url",
                &base,
                "--workload",
                "vision-b",
                "--concurrency",
                "2",
                "--num-prompts",
                "4",
                "--report-file",
                "r.json",
            ])
            .output()
            .unwrap();
        let high = std::process::Command::new(&bin)
            .current_dir(&cwd)
            .args([
                "run",
                "--backend",
                "openai",
                "--base-url",
                &base,
                "--workload",
                "high",
            ])
            .output()
            .unwrap();
        (vision, high)
    })
    .await
    .unwrap();
    assert!(
        vision.status.success(),
        "{}",
        String::from_utf8_lossy(&vision.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(v["dataset"]["name"], "synthetic_workload_vision-b");
    assert_eq!(v["config"]["max_tokens"], 100);
    assert_eq!(v["config"]["ignore_eos"], true);
    assert_eq!(v["levels"].as_array().unwrap().len(), 1);
    assert_eq!(v["levels"][0]["concurrency"], 2);
    assert_eq!(v["levels"][0]["completed"], 4);
    let images = std::fs::read_dir(
        dir.path()
            .join("perf_data/synthetic_workload_vision-b_images"),
    )
    .unwrap()
    .count();
    assert_eq!(images, 4, "one unique image per request");
    assert!(!high.status.success());
    assert!(String::from_utf8_lossy(&high.stderr).contains("--context-length"));
}

/// A serving run killed mid-sweep leaves a journal of every finished request, and
/// `vlmbench recover` turns it into a serving report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_serving_run_is_recovered_from_its_journal() {
    let _serial = TIMING.lock().unwrap_or_else(|p| p.into_inner());
    let base = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("prompts_short.json");
    let report = dir.path().join("killed.json");
    let journal = dir.path().join("killed.journal.jsonl");
    let bin = assert_cmd::cargo::cargo_bin("vlmbench");
    let (b, d, r, j) = (bin.clone(), data.clone(), report.clone(), journal.clone());
    let recovered = tokio::task::spawn_blocking(move || {
        let prep = std::process::Command::new(&b)
            .args(["prepare", "prompts", "--builtin", "short", "--out"])
            .arg(&d)
            .status()
            .unwrap();
        assert!(prep.success());
        let mut child = std::process::Command::new(&b)
            .args([
                "run",
                "--backend",
                "openai",
                "--base-url",
                &base,
                "--data-file",
            ])
            .arg(&d)
            .args([
                "--concurrency",
                "1",
                "--num-prompts",
                "400",
                "--warmup",
                "0",
            ])
            .args(["--max-new-tokens", "20", "--report-file"])
            .arg(&r)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::fs::read_to_string(&j).map_or(0, |t| t.lines().count()) < 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "no request reached the journal"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!r.exists(), "killed before its report");
        let out = std::process::Command::new(&b)
            .arg("recover")
            .arg(&j)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(&r).unwrap()
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&recovered).unwrap();
    assert_eq!(v["kind"], "serving");
    assert_eq!(v["status"], "interrupted");
    let level = &v["levels"][0];
    assert_eq!(level["concurrency"], 1);
    let done = level["completed"].as_u64().unwrap();
    assert!((3..400).contains(&done), "{done} requests recovered");
    assert_eq!(
        level["total_output_tokens"].as_u64().unwrap(),
        done * TOKENS
    );
    assert!(!journal.exists());
}

/// A sample with two images is one chat request whose user turn carries one `image_url` part
/// per image, in the data file's order, before the text; a one-image sample keeps its single
/// part, a text sample plain text; the completions endpoint refuses the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_image_sample_sends_two_image_parts_in_order() {
    use common::fixtures::{b64, jpeg};
    use common::openai_server::{run_cli, MockServer};
    let server = MockServer::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (jpeg(1, 24, 16), jpeg(2, 16, 24));
    std::fs::write(dir.path().join("first.jpg"), &first).unwrap();
    std::fs::write(dir.path().join("second.jpg"), &second).unwrap();
    let lines = [
        serde_json::json!({"text": "compare them", "images": ["first.jpg", "second.jpg"]}),
        serde_json::json!({"text": "only this one", "image": "second.jpg"}),
        serde_json::json!({"text": "no picture"}),
    ];
    let data = common::prepare_jsonl(dir.path(), &lines);
    let report = dir.path().join("r.json");
    let out = run_cli(
        &server.base,
        &data,
        &report,
        &["--model", "ok", "--concurrency", "1", "--repeat-inputs"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chats = server.chats();
    assert_eq!(chats.len(), 3);
    let by_text = |t: &str| {
        chats
            .iter()
            .find(|c| {
                let content = &c.body["messages"][0]["content"];
                content == t
                    || content
                        .as_array()
                        .is_some_and(|parts| parts.last().unwrap()["text"] == t)
            })
            .unwrap_or_else(|| panic!("no request for {t:?}"))
            .body["messages"][0]["content"]
            .clone()
    };
    let url = |bytes: &[u8]| format!("data:image/jpeg;base64,{}", b64(bytes));
    let two = by_text("compare them");
    let kinds: Vec<&str> = two
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["image_url", "image_url", "text"]);
    assert_eq!(two[0]["image_url"]["url"], url(&first), "first image first");
    assert_eq!(
        two[1]["image_url"]["url"],
        url(&second),
        "second image second"
    );
    let one = by_text("only this one");
    assert_eq!(one.as_array().unwrap().len(), 2);
    assert_eq!(one[0]["image_url"]["url"], url(&second));
    assert_eq!(by_text("no picture"), "no picture");

    let refused = run_cli(
        &server.base,
        &data,
        &dir.path().join("c.json"),
        &["--model", "ok", "--endpoint", "completions"],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("/v1/completions cannot take"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
