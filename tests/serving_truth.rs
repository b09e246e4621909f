//! Served runs whose numbers can be trusted and that lose nothing: unique inputs against
//! caches, count sources read from the data, stale keep-alive connections retried, both
//! latency origins under a rate with a concurrency cap, prompt cancellation, the API key never
//! written, and messages a user can read. Each test runs the CLI against the mock server in
//! `tests/common/openai_server.rs`.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::openai_server::{run_cli, MockServer};
use serde_json::Value;

/// A frozen set of `n` samples, each with its own prompt and (if `images`) its own JPEG.
fn data_set(dir: &Path, n: usize, images: bool) -> PathBuf {
    let img_dir = dir.join("set_images");
    std::fs::create_dir_all(&img_dir).unwrap();
    let samples: Vec<Value> = (0..n)
        .map(|i| {
            let image = images.then(|| {
                let name = format!("{i}.jpg");
                std::fs::write(img_dir.join(&name), common::fixtures::jpeg(i as u32, 24, 16))
                    .unwrap();
                format!("set_images/{name}")
            });
            serde_json::json!({"index": i, "prompt": format!("describe picture {i}"), "image": image})
        })
        .collect();
    let set = serde_json::json!({
        "schema_version": 1, "set": "jsonl", "name": "t", "vlmbench_version": "0.1.0",
        "seed": null, "num_samples": n, "sources": [], "params": {}, "samples": samples
    });
    let path = dir.join("set.json");
    std::fs::write(&path, serde_json::to_vec(&set).unwrap()).unwrap();
    path
}

fn read(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_two_requests_carry_the_same_prompt_or_image() {
    let server = MockServer::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let data = data_set(dir.path(), 2, true);
    let report = dir.path().join("r.json");
    // Warm-up 1, two levels, 3 prompts a level from a set of 2: 7 requests, 5 of them repeats.
    let out = run_cli(
        &server.base,
        &data,
        &report,
        &[
            "--model",
            "ok",
            "--warmup",
            "1",
            "--concurrency",
            "1,2",
            "--num-prompts",
            "3",
            "--reset-cache",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let chats = server.chats();
    assert_eq!(chats.len(), 7);
    let content =
        |s: &common::openai_server::Seen, k: usize| s.body["messages"][0]["content"][k].clone();
    let prompts: HashSet<String> = chats
        .iter()
        .map(|s| content(s, 1)["text"].to_string())
        .collect();
    let images: HashSet<String> = chats
        .iter()
        .map(|s| content(s, 0)["image_url"]["url"].to_string())
        .collect();
    assert_eq!(prompts.len(), 7, "a prompt was sent twice: {prompts:?}");
    assert_eq!(images.len(), 7, "an image was sent twice");
    // The unique part comes first, where prefix caches start matching.
    assert!(
        prompts.iter().filter(|p| p.starts_with("\"[")).count() == 5,
        "{prompts:?}"
    );
    let v = read(&report);
    let policy = &v["config"]["input_policy"];
    assert_eq!(policy["repeats"], "unique");
    assert_eq!(policy["prompts_prefixed"], 5);
    assert_eq!(policy["images_altered"], 5);
    assert!(policy["prefix_chars_added"].as_u64().unwrap() >= 5 * 4);
    assert_eq!(policy["cache_reset"], "/reset_prefix_cache");
    assert_eq!(
        server.count("/reset_prefix_cache"),
        2,
        "once before each level"
    );

    // --repeat-inputs keeps exact repeats.
    let server = MockServer::start(200).await;
    let out = run_cli(
        &server.base,
        &data,
        &report,
        &[
            "--model",
            "ok",
            "--concurrency",
            "1",
            "--num-prompts",
            "4",
            "--repeat-inputs",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let prompts: HashSet<String> = server
        .chats()
        .iter()
        .map(|s| content(s, 1)["text"].to_string())
        .collect();
    assert_eq!(prompts.len(), 2);
    assert_eq!(
        read(&report)["config"]["input_policy"]["repeats"],
        "exact-repeats"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_sources_and_itl_basis_come_from_the_data() {
    let server = MockServer::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let data = data_set(dir.path(), 3, false);
    let report = dir.path().join("r.json");
    // Usage is requested (the default) but this server never sends it.
    let out = run_cli(
        &server.base,
        &data,
        &report,
        &["--model", "nousage", "--concurrency", "1"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let l = &read(&report)["levels"][0];
    assert_eq!(l["output_tokens_source"], "chunks");
    assert_eq!(l["output_tokens_sources"]["chunks"], 3);
    assert_eq!(l["input_tokens_sources"]["none"], 3);
    assert_eq!(l["itl_basis"], "per chunk");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("ITL per chunk"), "{table}");
    let csv = std::fs::read_to_string(report.with_extension("csv")).unwrap();
    assert!(csv.lines().nth(1).unwrap().contains("per chunk"), "{csv}");

    let out = run_cli(
        &server.base,
        &data,
        &report,
        &["--model", "ok", "--concurrency", "1"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let l = &read(&report)["levels"][0];
    assert_eq!(l["output_tokens_source"], "server usage");
    assert_eq!(l["input_tokens_sources"]["server usage"], 3);
    assert_eq!(l["itl_basis"], "per token");
    // E2E from the actual send is filled, per request and per level.
    assert!(l["e2el_from_send_ms"]["mean"].as_f64().unwrap() > 0.0);
    assert!(l["requests"][0]["e2el_from_send_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_stale_keep_alive_connections_are_retried_once() {
    let server = MockServer::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let data = data_set(dir.path(), 6, false);
    let report = dir.path().join("r.json");
    let out = run_cli(
        &server.base,
        &data,
        &report,
        &["--model", "llama-server", "--concurrency", "1"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let l = &read(&report)["levels"][0];
    assert_eq!(l["completed"], 6, "{l}");
    assert_eq!(l["failed"], 0);
    let dropped = server.chats().iter().filter(|s| !s.answered).count();
    assert!(dropped >= 1, "the mock never closed a reused connection");
    assert_eq!(l["retried"].as_u64().unwrap() as usize, dropped);
    let reasons: Vec<&str> = l["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["retried"].as_str())
        .collect();
    assert!(
        reasons.iter().all(|r| r.contains("connection closed")),
        "{reasons:?}"
    );
    // The clock restarted: the lost attempt waited 300 ms for the server to close the
    // connection, which no retried request's TTFT includes.
    for r in l["requests"].as_array().unwrap() {
        if r["retried"].is_string() {
            let ttft = r["ttft_ms"].as_f64().unwrap();
            assert!(
                ttft < 250.0,
                "a retried request kept the lost attempt's clock: {ttft} ms"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_with_a_concurrency_cap_keeps_both_latency_origins() {
    let server = MockServer::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let data = data_set(dir.path(), 4, false);
    let report = dir.path().join("r.json");
    // 4 arrivals within about 4 ms, one slot, 20+ ms per request: later ones wait for the slot.
    let out = run_cli(
        &server.base,
        &data,
        &report,
        &[
            "--model",
            "ok",
            "--concurrency",
            "1",
            "--request-rate",
            "1000",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let l = &read(&report)["levels"][0];
    let mean = |k: &str| l[k]["mean"].as_f64().unwrap();
    assert!(mean("queue_ms") > 5.0, "{l}");
    assert!(mean("ttft_ms") > mean("ttft_from_send_ms") + 5.0);
    assert!(mean("e2el_ms") > mean("e2el_from_send_ms") + 5.0);
    assert_eq!(l["arrival_seed"], 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupting_a_rate_run_cancels_in_flight_requests_at_once() {
    let server = MockServer::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let data = data_set(dir.path(), 10, false);
    let report = dir.path().join("r.json");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlmbench"))
        .args([
            "run",
            "--backend",
            "openai",
            "--base-url",
            &server.base,
            "--data-file",
        ])
        .arg(&data)
        .arg("--report-file")
        .arg(&report)
        .args([
            "--model",
            "stall",
            "--warmup",
            "0",
            "--request-rate",
            "0.2",
            "--max-new-tokens",
            "4",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first request is in flight (stalled) and nine more are scheduled over ~45 s.
    let t = Instant::now();
    while server.chats().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "no request arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(130));
    assert!(took < Duration::from_secs(3), "took {took:?} to stop");
    let v = read(&report);
    assert_eq!(v["status"], "interrupted");
    let l = &v["levels"][0];
    assert_eq!(l["cancelled"], 1, "{l}");
    assert_eq!(l["failed"], 0);
    assert_eq!(l["requests"][0]["cancelled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_api_key_is_never_written_or_printed() {
    let server = MockServer::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let data = data_set(dir.path(), 2, false);
    let report = dir.path().join("r.json");
    let key = "sk-live-very-secret-42";
    let out = run_cli(
        &server.base,
        &data,
        &report,
        &[
            "--model",
            "echo-key",
            "--api-key",
            key,
            "--concurrency",
            "1",
            "--warmup",
            "1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let json = std::fs::read_to_string(&report).unwrap();
    let csv = std::fs::read_to_string(report.with_extension("csv")).unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    for (what, text) in [("report", &json), ("csv", &csv), ("terminal", &printed)] {
        assert!(!text.contains(key), "API key in the {what}: {text}");
    }
    assert!(
        json.contains("Bearer ***"),
        "the echoed header is kept, scrubbed: {json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_say_what_went_wrong_in_words() {
    let server = MockServer::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let data = data_set(dir.path(), 1, false);
    let report = dir.path().join("r.json");
    let out = run_cli(
        &server.base,
        &data,
        &report,
        &["--model", "json200", "--concurrency", "1"],
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    let l = &read(&report)["levels"][0];
    let reason = l["requests"][0]["error"].as_str().unwrap();
    assert!(reason.contains("not an event stream"), "{reason}");
    let err = stderr(&out);
    assert!(
        err.contains("level 1/1: concurrency 1, all requests due at once"),
        "{err}"
    );
    assert!(!err.contains("Some(") && !err.contains("None"), "{err}");

    let failing = MockServer::start(503).await;
    let out = run_cli(&failing.base, &data, &report, &["--concurrency", "1"]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("HTTP 503") && err.contains("/v1/models"),
        "{err}"
    );
}
