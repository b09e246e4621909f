//! Serving features against an in-process streaming server whose latencies are known: goodput
//! under SLOs and the goodput search, reasoning deltas, repeated runs and the steady-state
//! window, trace replay, the Chrome timeline, the vLLM-layout export, and shards merged.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::read_request;
use common::{prepare_prompts, read_json};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What the server saw: per request, when it arrived (since the server started), its prompt
/// and its max_tokens.
#[derive(Default)]
struct Seen {
    requests: Vec<(f64, String, u64)>,
}

struct Server {
    base: String,
    seen: Arc<Mutex<Seen>>,
}

async fn chunk(sock: &mut TcpStream, data: &str) -> std::io::Result<()> {
    sock.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await
}

fn sse(v: Value) -> String {
    format!("data: {v}\n\n")
}

/// Behaviour by the request's `model`:
/// - `ok`: TTFT 20 ms, 5 ms per token, max_tokens content tokens;
/// - `every4th`: as `ok`, but every 4th request (by arrival) has a TTFT of 250 ms;
/// - `crowded`: TTFT 100 ms times the requests in flight when it arrived;
/// - `think`: 3 reasoning chunks, then max_tokens − 3 content chunks;
/// - `think-only`: max_tokens reasoning chunks and no content.
async fn serve(
    mut sock: TcpStream,
    t0: Instant,
    seen: Arc<Mutex<Seen>>,
    count: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
) {
    sock.set_nodelay(true).ok();
    while let Some((line, body)) = read_request(&mut sock).await {
        let received = Instant::now();
        if line.starts_with("get ") {
            let msg = r#"{"object":"list","data":[{"id":"ok","object":"model"}]}"#;
            let (status, msg) = if line.contains("/v1/models") {
                ("200 OK", msg)
            } else {
                ("404 Not Found", "{}")
            };
            let resp = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{msg}", msg.len());
            if sock.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let req: Value = serde_json::from_str(&body).unwrap_or_default();
        let mode = req["model"].as_str().unwrap_or("").to_string();
        let prompt = req["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let max_tokens = req["max_tokens"].as_u64().unwrap_or(8);
        let nth = count.fetch_add(1, Ordering::SeqCst) + 1;
        let crowd = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        seen.lock()
            .unwrap()
            .requests
            .push(((received - t0).as_secs_f64(), prompt, max_tokens));
        let ttft = match mode.as_str() {
            "every4th" if nth.is_multiple_of(4) => Duration::from_millis(250),
            "crowded" => Duration::from_millis(100 * crowd as u64),
            _ => Duration::from_millis(20),
        };
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        if sock.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let role = json!({"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]});
        let _ = chunk(&mut sock, &sse(role)).await;
        let mut at = received + ttft;
        for k in 0..max_tokens {
            if k > 0 {
                at += Duration::from_millis(5);
            }
            tokio::time::sleep_until(at.into()).await;
            let reasoning = mode == "think-only" || (mode == "think" && k < 3);
            let delta = if reasoning {
                json!({"reasoning_content": "hm"})
            } else {
                json!({"content": "ab"})
            };
            let v = json!({
                "choices":[{"index":0,"delta":delta,"finish_reason":null}],
                "usage":{"prompt_tokens":7,"completion_tokens":k + 1}
            });
            if chunk(&mut sock, &sse(v)).await.is_err() {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        }
        in_flight.fetch_sub(1, Ordering::SeqCst);
        let fin = json!({"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":{"prompt_tokens":7,"completion_tokens":max_tokens}});
        let _ = chunk(&mut sock, &sse(fin)).await;
        let _ = chunk(&mut sock, "data: [DONE]\n\n").await;
        let _ = sock.write_all(b"0\r\n\r\n").await;
    }
}

async fn start_server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (s, count, in_flight) = (seen.clone(), Arc::default(), Arc::default());
    let t0 = Instant::now();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve(
                sock,
                t0,
                s.clone(),
                Arc::clone(&count),
                Arc::clone(&in_flight),
            ));
        }
    });
    Server {
        base: format!("http://{addr}"),
        seen,
    }
}

/// Runs `vlmbench run --backend openai --base-url <base> <args>`; returns stdout, failing the
/// test with stderr when it exits non-zero.
async fn run(base: &str, args: &[&str]) -> String {
    let mut full: Vec<String> = ["run", "--backend", "openai", "--base-url", base]
        .iter()
        .map(|s| s.to_string())
        .collect();
    full.extend(args.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlmbench"))
            .args(&full)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{full:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

fn prompts(dir: &Path, n: usize) -> String {
    let lines: String = (0..n).map(|i| format!("prompt number {i}\n")).collect();
    prepare_prompts(dir, &lines).display().to_string()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs one at a time: the timings below must not be disturbed by each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodput_counts_requests_meeting_every_slo() {
    let _serial = SERIAL.lock().await;
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path(), 8);
    let report = dir.path().join("r.json");
    let vllm = dir.path().join("vllm.json");
    let stdout = run(
        &server.base,
        &[
            "--model",
            "every4th",
            "--warmup",
            "0",
            "--data-file",
            &data,
            "--concurrency",
            "1",
            "--max-new-tokens",
            "6",
            "--goodput",
            "ttft:150",
            "tpot:50",
            "--report-file",
            &s(&report),
            "--save-vllm-result",
            &s(&vllm),
        ],
    )
    .await;
    let v = read_json(&report);
    assert_eq!(
        v["goodput_slos"],
        json!({"ttft_ms": 150.0, "tpot_ms": 50.0})
    );
    let g = &v["levels"][0]["goodput"];
    // Requests 4 and 8 (by arrival) had a 250 ms TTFT.
    assert_eq!(g["good"], 6, "{g}");
    assert_eq!(g["share"], 0.75);
    let duration = v["levels"][0]["duration"].as_f64().unwrap();
    assert!((g["request_goodput"].as_f64().unwrap() - 6.0 / duration).abs() < 1e-9);
    assert!(
        stdout.contains("goodput: 6 of 8 requests met every SLO (75.0 %)"),
        "{stdout}"
    );
    // The same level in vLLM's layout.
    let x = read_json(&vllm);
    assert_eq!(x["completed"], 8);
    assert_eq!(x["max_concurrency"], 1);
    assert_eq!(x["request_goodput"], g["request_goodput"]);
    assert_eq!(x["ttfts"].as_array().unwrap().len(), 8);
    let slow = x["ttfts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t.as_f64().unwrap() >= 0.25)
        .count();
    assert_eq!(slow, 2, "{}", x["ttfts"]);
    assert_eq!(x["median_ttft_ms"], v["levels"][0]["ttft_ms"]["median"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodput_search_finds_the_highest_concurrency() {
    let _serial = SERIAL.lock().await;
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path(), 12);
    let report = dir.path().join("r.json");
    // TTFT is 100 ms per request in flight: 300 ms at 3, 400 ms at 4, against an SLO of 350
    // (50 ms either side), and a target of 75 % (a level of 12 requests passes with up to three
    // held up by the machine; at 4 in flight only the first few requests of a level meet it).
    let stdout = run(
        &server.base,
        &[
            "--model",
            "crowded",
            "--data-file",
            &data,
            "--max-new-tokens",
            "4",
            "--goodput",
            "ttft:350",
            "--goodput-search",
            "concurrency",
            "--search-range",
            "1:8",
            "--goodput-target",
            "0.75",
            "--report-file",
            &s(&report),
        ],
    )
    .await;
    let v = read_json(&report);
    // The client never had more requests in flight than the level's concurrency.
    for l in v["levels"].as_array().unwrap() {
        let cap = l["concurrency"].as_u64().unwrap() as usize;
        let spans: Vec<(f64, f64)> = l["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["sent_s"].as_f64().unwrap(), r["end_s"].as_f64().unwrap()))
            .collect();
        for (sent, _) in &spans {
            let open = spans.iter().filter(|(s, e)| s <= sent && e > sent).count();
            assert!(
                open <= cap,
                "{open} requests in flight at concurrency {cap}"
            );
        }
    }
    let search = &v["goodput_search"];
    assert_eq!(search["over"], "concurrency");
    assert_eq!(search["best"], 3.0, "{search}");
    assert_eq!(search["lowest_failing"], 4.0);
    assert_eq!(search["stopped"], "converged");
    let tried: Vec<(f64, bool)> = search["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["value"].as_f64().unwrap(), s["passed"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        tried,
        [
            (1.0, true),
            (8.0, false),
            (4.0, false),
            (2.0, true),
            (3.0, true)
        ]
    );
    // Every level tried is in the report, at its concurrency.
    let levels = v["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 5);
    for (l, (c, _)) in levels.iter().zip(&tried) {
        assert_eq!(l["concurrency"].as_f64(), Some(*c));
    }
    assert!(
        stdout.contains("highest passing concurrency: 3.000 (converged)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_deltas_count_for_ttft_and_apart_from_content() {
    let _serial = SERIAL.lock().await;
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path(), 4);
    for (model, reasoning_only) in [("think", false), ("think-only", true)] {
        let report = dir.path().join(format!("{model}.json"));
        run(
            &server.base,
            &[
                "--model",
                model,
                "--data-file",
                &data,
                "--concurrency",
                "2",
                "--max-new-tokens",
                "8",
                "--report-file",
                &s(&report),
            ],
        )
        .await;
        let v = read_json(&report);
        let l = &v["levels"][0];
        assert_eq!(l["completed"], 4, "{model}");
        assert_eq!(l["total_output_tokens"], 32);
        for r in l["requests"].as_array().unwrap() {
            // TTFT stops at the first reasoning token (20 ms injected), never at 0.
            let ttft = r["ttft_ms"].as_f64().unwrap();
            assert!((19.0..60.0).contains(&ttft), "{model}: TTFT {ttft}");
            if reasoning_only {
                assert_eq!(r["reasoning_only"], true);
                assert!(r.get("ttfct_ms").is_none());
                assert_eq!(r["reasoning_tokens"], 8);
                assert_eq!(r["content_tokens"], 0);
            } else {
                // The first content token is the 4th token: 3 × 5 ms after the first.
                let ttfct = r["ttfct_ms"].as_f64().unwrap();
                assert!((ttfct - ttft - 15.0).abs() < 5.0, "{ttfct} vs {ttft}");
                assert_eq!(
                    (r["reasoning_tokens"].as_u64(), r["content_tokens"].as_u64()),
                    (Some(3), Some(5))
                );
                assert_eq!(r["text"], "ab".repeat(5));
            }
        }
        assert_eq!(
            l["total_reasoning_tokens"],
            if reasoning_only { 32 } else { 12 }
        );
        assert_eq!(
            l["reasoning_only_requests"].as_u64().unwrap_or(0),
            if reasoning_only { 4 } else { 0 }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_runs_report_their_spread_and_a_steady_window() {
    let _serial = SERIAL.lock().await;
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path(), 12);
    let report = dir.path().join("r.json");
    let trace = dir.path().join("timeline.json");
    let stdout = run(
        &server.base,
        &[
            "--model",
            "ok",
            "--data-file",
            &data,
            "--concurrency",
            "2",
            "--runs",
            "3",
            "--max-new-tokens",
            "6",
            "--report-file",
            &s(&report),
            "--trace",
            &s(&trace),
        ],
    )
    .await;
    let v = read_json(&report);
    let levels = v["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 3);
    for (k, l) in levels.iter().enumerate() {
        assert_eq!(l["run"], k);
        let st = &l["steady_state"];
        // 12 requests, 2 at a time, each ~45 ms: the first pair and the last pair lie outside.
        let n = st["requests"].as_u64().unwrap();
        assert!((6..=10).contains(&n), "{st}");
        assert!(st["window_start_s"].as_f64() < st["window_end_s"].as_f64());
    }
    let rep = &v["repeatability"][0];
    assert_eq!(rep["level_indices"], json!([0, 1, 2]));
    let tput: Vec<f64> = levels
        .iter()
        .map(|l| l["output_throughput"].as_f64().unwrap())
        .collect();
    let f = &rep["figures"]["output_throughput"];
    let mean = tput.iter().sum::<f64>() / 3.0;
    assert!((f["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    let sd = (tput.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    assert!((f["stddev"].as_f64().unwrap() - sd).abs() < 1e-9);
    assert!((f["ci95_high"].as_f64().unwrap() - (mean + 4.303 * sd / 3f64.sqrt())).abs() < 1e-9);
    assert!(rep["figures"]["ttft_ms.median"]["cv"].as_f64().is_some());
    assert!(stdout.contains("repeatability over 3 runs"), "{stdout}");

    // The timeline: one request slice per request, at the report's times, two connections
    // per level (concurrency 2), one instant per chunk.
    let t = read_json(&trace);
    let events = t["traceEvents"].as_array().unwrap();
    for (pid, l) in levels.iter().enumerate() {
        let mine: Vec<&Value> = events.iter().filter(|e| e["pid"] == pid).collect();
        let slices: Vec<&&Value> = mine.iter().filter(|e| e["name"] == "request").collect();
        assert_eq!(slices.len(), 12);
        let tracks: std::collections::BTreeSet<u64> =
            slices.iter().map(|e| e["tid"].as_u64().unwrap()).collect();
        assert_eq!(tracks.len(), 2, "one track per connection");
        for r in l["requests"].as_array().unwrap() {
            let idx = &r["index"];
            let slice = slices.iter().find(|e| &e["args"]["index"] == idx).unwrap();
            let sent_us = r["sent_s"].as_f64().unwrap() * 1e6;
            assert!((slice["ts"].as_f64().unwrap() - sent_us).abs() <= 1.0);
            let first = mine
                .iter()
                .find(|e| e["name"] == "first token" && &e["args"]["index"] == idx)
                .unwrap();
            let ttft_us = first["ts"].as_f64().unwrap() - r["scheduled_s"].as_f64().unwrap() * 1e6;
            assert!((ttft_us / 1e3 - r["ttft_ms"].as_f64().unwrap()).abs() < 0.01);
            let chunks = mine
                .iter()
                .filter(|e| e["ph"] == "i" && &e["args"]["index"] == idx)
                .count();
            assert_eq!(chunks as u64, r["output_tokens"].as_u64().unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_replay_keeps_the_traces_times_and_prefixes() {
    let _serial = SERIAL.lock().await;
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("mooncake.jsonl");
    let times = [1000.0, 1050.0, 1120.0, 1300.0, 1310.0, 1500.0];
    let mut lines = String::new();
    for (i, t) in times.iter().enumerate() {
        // Requests 0, 2 and 4 share their first block (hash id 7).
        let first = if i % 2 == 0 { 7 } else { 100 + i };
        lines.push_str(&format!(
            "{{\"timestamp\": {t}, \"input_length\": 12, \"output_length\": {}, \"hash_ids\": [{first}, {}]}}\n",
            3 + i,
            200 + i
        ));
    }
    std::fs::write(&trace, lines).unwrap();
    for speed in ["1", "2"] {
        server.seen.lock().unwrap().requests.clear();
        let report = dir.path().join(format!("r{speed}.json"));
        run(
            &server.base,
            &[
                "--model",
                "ok",
                "--warmup",
                "0",
                "--replay",
                &s(&trace),
                "--replay-speed",
                speed,
                "--replay-block-size",
                "8",
                "--report-file",
                &s(&report),
            ],
        )
        .await;
        let v = read_json(&report);
        assert_eq!(v["dataset"]["set"], "trace");
        assert_eq!(v["arrival"]["kind"], "trace");
        let l = &v["levels"][0];
        assert_eq!(l["completed"], 6);
        let speed: f64 = speed.parse().unwrap();
        // The schedule is the trace's to the microsecond; the sends follow it (medians below:
        // the machine running the test is shared, so a single send can be held up by the OS;
        // the bound on the worst is looser).
        let mut late_sent = Vec::new();
        for r in l["requests"].as_array().unwrap() {
            let i = r["index"].as_u64().unwrap() as usize;
            let want = (times[i] - times[0]) / speed;
            let sched_ms = r["scheduled_s"].as_f64().unwrap() * 1e3;
            assert!(
                (sched_ms - want).abs() < 1e-3,
                "request {i}: {sched_ms} vs {want}"
            );
            late_sent.push((r["sent_s"].as_f64().unwrap() * 1e3 - want).abs());
            assert_eq!(r["output_tokens"].as_u64(), Some(3 + i as u64));
        }
        let mut seen = server.seen.lock().unwrap().requests.clone();
        seen.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut gap_error: Vec<f64> = seen
            .windows(2)
            .enumerate()
            .map(|(k, w)| ((w[1].0 - w[0].0) * 1e3 - (times[k + 1] - times[k]) / speed).abs())
            .collect();
        // The client's sends: within 1 ms of the trace (median); the server's receipts, read
        // by a server sharing this process and its cores, within 3 ms (median).
        for (errors, median_bound) in [(&mut late_sent, 1.0), (&mut gap_error, 3.0)] {
            errors.sort_by(f64::total_cmp);
            println!("replay errors (ms): {errors:?}");
            assert!(errors[errors.len() / 2] < median_bound, "{errors:?}");
            assert!(errors[errors.len() - 1] < 20.0, "{errors:?}");
        }
        let max_tokens: Vec<u64> = seen.iter().map(|s| s.2).collect();
        assert_eq!(max_tokens, [3, 4, 5, 6, 7, 8]);
        let words = |p: &str| p.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let w: Vec<Vec<String>> = seen.iter().map(|s| words(&s.1)).collect();
        assert!(w.iter().all(|x| x.len() == 12));
        assert_eq!(w[0][..8], w[2][..8], "hash id 7 shared");
        assert_eq!(w[0][..8], w[4][..8]);
        assert_ne!(w[0][..8], w[1][..8]);
        assert_ne!(w[0][8..], w[2][8..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_merged_equal_one_run_of_the_schedule() {
    let _serial = SERIAL.lock().await;
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let data = prompts(dir.path(), 10);
    let common_args = |report: &Path| -> Vec<String> {
        [
            "run",
            "--backend",
            "openai",
            "--base-url",
            &server.base,
            "--model",
            "ok",
            "--warmup",
            "0",
            "--data-file",
            &data,
            "--request-rate",
            "40",
            "--max-new-tokens",
            "5",
            "--goodput",
            "ttft:100",
            "--report-file",
            &s(report),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let single = dir.path().join("single.json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start_at = format!("{:.3}", now + 2.5);
    let bin = assert_cmd::cargo::cargo_bin("vlmbench");
    let mut children = Vec::new();
    for i in 0..2 {
        let mut a = common_args(&dir.path().join(format!("shard{i}.json")));
        a.extend([
            "--shard".into(),
            format!("{i}/2"),
            "--start-at".into(),
            start_at.clone(),
        ]);
        children.push(
            std::process::Command::new(&bin)
                .args(&a)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let results = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for r in &results {
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let single_args = common_args(&single);
    run(
        &server.base,
        &single_args[5..]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    )
    .await;
    let merged = dir.path().join("merged.json");
    let (a, b, m) = (
        dir.path().join("shard0.json"),
        dir.path().join("shard1.json"),
        merged.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("vlmbench"))
            .arg("merge")
            .args([&a, &b])
            .arg("--out")
            .arg(&m)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (one, two) = (read_json(&single), read_json(&merged));
    let s0 = read_json(&dir.path().join("shard0.json"));
    assert_eq!(s0["levels"][0]["completed"], 5, "every other request");
    assert_eq!(
        s0["shard"],
        json!({"index": 0, "count": 2, "start_at": start_at})
    );
    let (l1, l2) = (&one["levels"][0], &two["levels"][0]);
    for k in [
        "completed",
        "failed",
        "total_output_tokens",
        "total_input_tokens",
    ] {
        assert_eq!(l1[k], l2[k], "{k}");
    }
    assert_eq!(l2["merged_shards"], 2);
    assert_eq!(two["merged_from"].as_array().unwrap().len(), 2);
    // The same schedule: the merged requests' scheduled times are the single run's.
    let sched = |l: &Value| -> Vec<f64> {
        let mut v: Vec<f64> = l["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["scheduled_s"].as_f64().unwrap())
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (x, y) = (sched(l1), sched(l2));
    assert_eq!(x.len(), 10);
    for (p, q) in x.iter().zip(&y) {
        assert!((p - q).abs() < 1e-5, "{x:?} vs {y:?}");
    }
    // Percentiles come from every request of both shards, not from the shards' own.
    let mut ttfts: Vec<f64> = l2["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ttft_ms"].as_f64().unwrap())
        .collect();
    ttfts.sort_by(f64::total_cmp);
    let median = (ttfts[4] + ttfts[5]) / 2.0;
    assert!((l2["ttft_ms"]["median"].as_f64().unwrap() - median).abs() < 1e-9);
    assert_eq!(l2["ttft_ms"]["count"], 10);
    assert!(l2["goodput"]["good"].as_u64().unwrap() <= 10);
    assert_eq!(
        server.seen.lock().unwrap().requests.len(),
        20,
        "10 sharded + 10 single requests reached the server"
    );
}
