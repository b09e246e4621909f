//! What a served run records about the server beside the client's timings, and the cache
//! workloads: the server's Prometheus counters over each level, its own description and the
//! user's launch arguments, shared prefixes shared within a pass and not across passes, and
//! conversations whose every turn carries its history. Each test runs the CLI against the mock
//! server in `tests/common/openai_server.rs`.

mod common;

use std::path::Path;

use common::openai_server::{run_cli, MockServer};

fn prepare(dir: &Path, args: &[&str]) -> std::path::PathBuf {
    let out = dir.join(format!("{}.json", args[0]));
    common::vlmbench()
        .arg("prepare")
        .args(args)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_metrics_facts_and_launch_args_are_recorded_per_level() {
    let server = MockServer::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let data = common::prepare_prompts(dir.path(), "one\ntwo\nthree\nfour\nfive\nsix\n");
    let report = dir.path().join("r.json");
    let out = run_cli(
        &server.base,
        &data,
        &report,
        &[
            "--model",
            "ok",
            "--concurrency",
            "1,2",
            "--warmup",
            "2",
            "--server-args",
            "vllm serve ok --max-num-seqs 8",
            "--server-sample-interval",
            "5",
            "--no-server-gpus",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = common::read_json(&report);
    assert_eq!(r["server"]["launch_args"], "vllm serve ok --max-num-seqs 8");
    assert_eq!(
        r["server"]["facts"]["/info"]["max_batch_total_tokens"],
        1234
    );
    assert!(
        r["server"]["facts"].get("/server_info").is_none(),
        "a 404 is no fact"
    );
    assert_eq!(r["server_gpus_unavailable"], "--no-server-gpus");
    let levels = r["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for level in levels {
        let m = &level["server_metrics"];
        assert!(m["scrapes"].as_u64().unwrap() >= 2, "{m}");
        // Six requests per level: the counters' change is this level's six, not the warm-up's
        // two or the earlier level's six.
        assert_eq!(m["figures"]["prompt_tokens"]["value"], 42.0, "{m}");
        assert_eq!(m["figures"]["generation_tokens"]["value"], 24.0);
        let queue = m["figures"]["queue_time_ms_mean"]["value"]
            .as_f64()
            .unwrap();
        assert!((queue - 10.0).abs() < 1e-6, "{queue}");
        assert_eq!(m["figures"]["kv_cache_usage_peak"]["value"], 0.25);
        assert_eq!(m["changes"]["vllm:prompt_tokens_total"], 42.0);
    }
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("server: "), "{printed}");
    assert!(printed.contains("queue time mean 10.0 ms"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_metrics_says_so_and_a_named_page_must_answer() {
    let server = MockServer::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let data = common::prepare_prompts(dir.path(), "one\ntwo\n");
    let report = dir.path().join("r.json");
    let out = run_cli(
        &server.base,
        &data,
        &report,
        &["--model", "ok", "--no-server-metrics", "--no-server-gpus"],
    )
    .await;
    assert!(out.status.success());
    let r = common::read_json(&report);
    assert_eq!(r["server_metrics_unavailable"], "--no-server-metrics");
    assert!(r["levels"][0].get("server_metrics").is_none());
    assert_eq!(server.count("/metrics"), 0);

    let missing = format!("{}/absent", server.base);
    let out = run_cli(
        &server.base,
        &data,
        &dir.path().join("r2.json"),
        &["--model", "ok", "--server-metrics-url", &missing],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--server-metrics-url") && err.contains("404"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_prefixes_are_shared_within_a_level_and_not_across_levels() {
    let server = MockServer::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let data = prepare(
        dir.path(),
        &[
            "shared-prefix",
            "--prefixes",
            "2",
            "--prefix-tokens",
            "30",
            "--suffixes",
            "3",
            "--suffix-tokens",
            "8",
        ],
    );
    let set = common::read_json(&data);
    let report = dir.path().join("r.json");
    let out = run_cli(
        &server.base,
        &data,
        &report,
        &["--model", "ok", "--concurrency", "1,1", "--no-server-gpus"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: Vec<String> = server
        .chats()
        .iter()
        .map(|c| {
            c.body["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(sent.len(), 12);
    let originals: Vec<&str> = set["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["prompt"].as_str().unwrap())
        .collect();
    // What each request put before its sample's prompt (requests of one level may arrive in
    // any order; levels run one after the other).
    let tag_of = |p: &str| -> String {
        let original = originals
            .iter()
            .find(|o| p.ends_with(**o))
            .unwrap_or_else(|| panic!("{p:?} is no sample's prompt"));
        p[..p.len() - original.len()].to_string()
    };
    // Level 1 sends the set as it is: each prefix shared by its three suffixes.
    assert!(sent[..6].iter().all(|p| tag_of(p).is_empty()), "{sent:?}");
    // Level 2 puts one pass tag before every prompt: prompts of one prefix still share their
    // whole prefix with each other, and no request shares its start with level 1's.
    assert!(sent[6..].iter().all(|p| tag_of(p) == "[r1] "), "{sent:?}");
    let all: std::collections::HashSet<&String> = sent.iter().collect();
    assert_eq!(all.len(), 12, "no request repeats an earlier one");
    let r = common::read_json(&report);
    let policy = &r["config"]["input_policy"];
    assert!(
        policy["cache_workload"]
            .as_str()
            .unwrap()
            .starts_with("shared-prefix: 2 prefixes of 30 tokens"),
        "{policy}"
    );
    assert_eq!(policy["prompts_prefixed"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_turns_carry_their_history_and_replies() {
    let server = MockServer::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let data = prepare(
        dir.path(),
        &[
            "conversations",
            "--conversations",
            "2",
            "--turns",
            "3",
            "--turn-tokens",
            "6",
            "--output-tokens",
            "3",
        ],
    );
    let set = common::read_json(&data);
    let report = dir.path().join("r.json");
    let out = run_cli(
        &server.base,
        &data,
        &report,
        &["--model", "ok", "--concurrency", "2", "--no-server-gpus"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chats = server.chats();
    assert_eq!(chats.len(), 6);
    for c in 0..2 {
        let turn = |t: usize| {
            set["samples"][c * 3 + t]["prompt"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let last = chats
            .iter()
            .find(|x| {
                x.body["messages"].as_array().unwrap().len() == 5
                    && x.body["messages"][0]["content"] == turn(0)
            })
            .expect("the third turn was sent with the two before it");
        let m = last.body["messages"].as_array().unwrap();
        assert_eq!(m[1]["role"], "assistant");
        // The mock streams "ab" four times: the server's own reply is what the history holds.
        assert_eq!(m[1]["content"], "abababab");
        assert_eq!(m[2]["content"], turn(1));
        assert_eq!(m[4]["content"], turn(2));
        // Each reply is capped at the set's output_tokens.
        assert_eq!(last.body["max_tokens"], 3);
    }
    let r = common::read_json(&report);
    assert_eq!(r["levels"][0]["completed"], 6);
    assert!(r["config"]["input_policy"]["cache_workload"]
        .as_str()
        .unwrap()
        .starts_with("conversations: 2 conversations of 3 turns"));

    // A conversation set cannot be cut by --num-prompts.
    let out = run_cli(
        &server.base,
        &data,
        &dir.path().join("r2.json"),
        &["--model", "ok", "--num-prompts", "4"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
}
