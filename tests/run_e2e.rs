//! `vlmbench run` end to end: the real binary on models written by `vlmbench synth-model`.

mod common;

use common::{prepare_prompts, read_json, synth_model, vlmbench};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use predicates::str::contains;
use serde_json::Value;

/// Invariants every successful sample must satisfy.
fn check_sample(s: &Value, max_new: u64) {
    assert_eq!(s["ok"], true, "{s}");
    let ttft = s["ttft_ms"].as_f64().unwrap();
    assert!(ttft > 0.0);
    let out = s["output_tokens"].as_u64().unwrap();
    assert!(out >= 1 && out <= max_new);
    let tbt: Vec<f64> = s["tbt_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(tbt.len() as u64, out - 1, "TBT count = output tokens - 1");
    assert_eq!(s["output_token_ids"].as_array().unwrap().len() as u64, out);
    let decode: f64 = tbt.iter().sum();
    assert!((decode - s["decode_ms"].as_f64().unwrap()).abs() < 1e-6 * decode.max(1.0) + 1e-9);
    if out > 1 {
        let tps = s["tps"].as_f64().unwrap();
        let from_tbt = (out - 1) as f64 / (decode / 1e3);
        assert!(
            (tps - from_tbt).abs() / from_tbt < 1e-9,
            "TPS {tps} vs TBT {from_tbt}"
        );
    }
    assert!(s["e2e_ms"].as_f64().unwrap() >= ttft + decode - 1e-9);
    assert!(s["prefill_ms"].as_f64().unwrap() >= 0.0);
}

#[test]
fn text_model_report_csv_and_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path(), "tiny-llama");
    let data = prepare_prompts(
        dir.path(),
        "Hello there\nWhat is the capital of France?\nTell me a story\n",
    );
    let report = dir.path().join("r/report.json");
    vlmbench()
        .args(["run", "--model-path"])
        .arg(&model)
        .arg("--data-file")
        .arg(&data)
        .args([
            "--max-new-tokens",
            "12",
            "--ignore-eos",
            "--repeat",
            "2",
            "--warmup",
            "1",
        ])
        .arg("--report-file")
        .arg(&report)
        .assert()
        .success()
        .stdout(contains("TTFT (ms)"))
        .stdout(contains("TPS per sample (tok/s)"))
        .stdout(contains("pooled decode throughput"))
        .stdout(contains("of this machine's"));
    let v = read_json(&report);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["status"], "complete");
    assert_eq!(v["engine"]["backend"], "candle");
    assert_eq!(v["engine"]["architecture"], "llama");
    assert_eq!(v["config"]["max_new_tokens"], 12);
    assert_eq!(v["dataset"]["name"], "prompts_p");
    assert_eq!(v["dataset"]["sha256"].as_str().unwrap().len(), 64);
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 6);
    for s in samples {
        check_sample(s, 12);
        // --ignore-eos: fixed-length decode.
        assert_eq!(s["output_tokens"], 12);
    }
    // Greedy decoding is deterministic: the repeat produced the same tokens.
    assert_eq!(
        samples[0]["output_token_ids"],
        samples[3]["output_token_ids"]
    );
    let sum = &v["summary"];
    assert_eq!(sum["success_rate"], 1.0);
    assert_eq!(sum["tbt_ms"]["count"], 6 * 11);
    assert!(sum["ttft_ms"]["p99"].as_f64().unwrap() >= sum["ttft_ms"]["median"].as_f64().unwrap());
    assert!(v["memory"]["host_peak_rss"]["bytes"].as_u64().unwrap() > 0);
    assert!(v["memory"]["gpu_peak_process"]["bytes"].is_null());
    assert!(v["memory"]["gpu_peak_process"]["unavailable_reason"].is_string());
    // Decode's memory traffic: every step reads the weights once and its cached context;
    // over all steps that is (weights + mean KV) at the pooled decode rate.
    let bw = &v["decode_bandwidth"];
    let weights = bw["weight_bytes_per_token"].as_f64().unwrap();
    let params = v["engine"]["parameters"].as_f64().unwrap();
    assert!(weights > 0.0 && weights <= 4.0 * params, "{bw}");
    let kv = bw["kv_bytes_per_token_mean"].as_f64().unwrap();
    assert!(kv > 0.0, "{bw}");
    let rate = bw["read_bytes_per_s"].as_f64().unwrap();
    let pooled = sum["decode_tps_pooled"].as_f64().unwrap();
    assert!(((weights + kv) * pooled / rate - 1.0).abs() < 1e-9, "{bw}");
    let machine = bw["machine_read_bytes_per_s"].as_f64().unwrap();
    assert!((bw["utilisation"].as_f64().unwrap() - rate / machine).abs() < 1e-12);
    let csv = std::fs::read_to_string(dir.path().join("r/report.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 6, "header + one row per sample");
    assert!(csv.starts_with("index,repeat,ok,"));
}

#[test]
fn failing_samples_are_recorded_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path(), "tiny-llama");
    // The second prompt is far longer than tiny-llama's context window.
    let long = "word ".repeat(20_000);
    let data = prepare_prompts(
        dir.path(),
        &format!("short one\n{long}\nanother short one\n"),
    );
    let report = dir.path().join("report.json");
    vlmbench()
        .args(["run", "--model-path"])
        .arg(&model)
        .arg("--data-file")
        .arg(&data)
        .args(["--max-new-tokens", "4", "--warmup", "0"])
        .arg("--report-file")
        .arg(&report)
        .assert()
        .code(3);
    let v = read_json(&report);
    assert_eq!(v["status"], "complete");
    let s = v["samples"].as_array().unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s[1]["ok"], false);
    assert!(
        s[1]["error"].as_str().unwrap().contains("context"),
        "{}",
        s[1]["error"]
    );
    assert_eq!(s[2]["ok"], true);
    assert_eq!(v["summary"]["failed"], 1);
    assert!((v["summary"]["success_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
}

#[test]
fn bad_inputs_fail_fast_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    vlmbench()
        .args([
            "run",
            "--model",
            "random:tiny-llama",
            "--data-file",
            "/no/such/set.json",
        ])
        .assert()
        .failure()
        .stderr(contains("/no/such/set.json"));
    let unsupported = dir.path().join("m");
    std::fs::create_dir_all(&unsupported).unwrap();
    std::fs::write(
        unsupported.join("config.json"),
        r#"{"architectures": ["BertModel"], "model_type": "bert"}"#,
    )
    .unwrap();
    let data = prepare_prompts(dir.path(), "hi\n");
    vlmbench()
        .args(["run", "--model-path"])
        .arg(&unsupported)
        .arg("--data-file")
        .arg(&data)
        .assert()
        .failure()
        .stderr(contains("llama"));
}

#[test]
fn ctrl_c_still_writes_a_valid_report() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepare_prompts(dir.path(), "one\ntwo\nthree\n");
    let report = dir.path().join("report.json");
    let bin = assert_cmd::cargo::cargo_bin("vlmbench");
    let mut child = std::process::Command::new(bin)
        .args(["run", "--model", "random:tiny-llama", "--data-file"])
        .arg(&data)
        .args([
            "--max-new-tokens",
            "64",
            "--ignore-eos",
            "--repeat",
            "100000",
            "--warmup",
            "0",
        ])
        .arg("--report-file")
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the model is loaded and samples are running (however long loading took
    // on this machine), so the report must hold finished samples.
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = std::io::BufRead::lines(stderr);
    let loading = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(loading.starts_with("loading"), "{loading:?}");
    std::thread::spawn(move || lines.for_each(drop));
    std::thread::sleep(Duration::from_millis(2500));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "run did not stop after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    let v = read_json(&report);
    assert_eq!(v["status"], "interrupted");
    let samples = v["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "no sample finished before Ctrl-C");
    for s in samples {
        check_sample(s, 64);
    }
    assert_eq!(
        v["summary"]["num_samples"].as_u64().unwrap() as usize,
        v["samples"].as_array().unwrap().len()
    );
}

#[test]
fn default_run_uses_the_random_preset_on_the_builtin_synthetic_set() {
    let dir = tempfile::tempdir().unwrap();
    vlmbench()
        .current_dir(dir.path())
        .args(["run", "--max-new-tokens", "6", "--limit", "3"])
        .assert()
        .success();
    let reports: Vec<_> = std::fs::read_dir(dir.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(reports.len(), 1);
    let v = read_json(&reports[0]);
    assert_eq!(v["engine"]["model"], "random:tiny-llava");
    assert_eq!(v["engine"]["vision"], true);
    assert_eq!(v["dataset"]["set"], "synthetic");
    assert!(dir
        .path()
        .join("perf_data/synthetic_builtin.json")
        .is_file());
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    for s in samples {
        check_sample(s, 6);
        assert_eq!(s["image_tokens"], 576, "LLaVA 1.5 at 336 px");
        assert!(s["vision_encode_ms"].as_f64().unwrap() > 0.0);
    }
}

/// A synthetic image set of `n` samples with images around `w`x`h`.
fn image_set(dir: &Path, n: usize, w: u32, h: u32) -> PathBuf {
    let out = dir.join("synthetic_img.json");
    vlmbench()
        .args([
            "prepare",
            "synthetic",
            "--name",
            "img",
            "--num-samples",
            &n.to_string(),
        ])
        .args([
            "--image-width-mean",
            &w.to_string(),
            "--image-height-mean",
            &h.to_string(),
        ])
        .args(["--input-tokens-mean", "20", "--out"])
        .arg(&out)
        .assert()
        .success();
    out
}

#[test]
fn llava_models_written_to_disk_run_with_images_and_phases() {
    let dir = tempfile::tempdir().unwrap();
    let data = image_set(dir.path(), 2, 500, 300);
    for (preset, arch) in [
        ("tiny-llava", "llava-1.5"),
        ("tiny-llava-next", "llava-1.6"),
    ] {
        let model = synth_model(dir.path(), preset);
        assert!(model.join("preprocessor_config.json").is_file());
        let report = dir.path().join(format!("{preset}.json"));
        vlmbench()
            .args(["run", "--model-path"])
            .arg(&model)
            .arg("--data-file")
            .arg(&data)
            .args(["--max-new-tokens", "5", "--ignore-eos", "--warmup", "0"])
            .arg("--report-file")
            .arg(&report)
            .assert()
            .success()
            .stdout(contains("Vision enc (ms)"));
        let v = read_json(&report);
        assert_eq!(v["engine"]["architecture"], arch);
        assert_eq!(v["engine"]["vision"], true);
        for s in v["samples"].as_array().unwrap() {
            check_sample(s, 5);
            let image_tokens = s["image_tokens"].as_u64().unwrap();
            if preset == "tiny-llava" {
                assert_eq!(image_tokens, 576);
            } else {
                // The whole image (576) plus an unpadded grid with a newline per row.
                assert!(image_tokens > 576 * 2, "{image_tokens}");
            }
            assert!(s["input_tokens"].as_u64().unwrap() > image_tokens);
            let phases = s["preprocess_ms"].as_f64().unwrap()
                + s["vision_encode_ms"].as_f64().unwrap()
                + s["prefill_ms"].as_f64().unwrap();
            assert!(
                (phases - s["ttft_ms"].as_f64().unwrap()).abs() < 1e-6,
                "phases sum to TTFT"
            );
        }
    }
}

#[test]
fn a_missing_image_fails_that_sample_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = image_set(dir.path(), 3, 64, 48);
    // Remove the second sample's image after the set was frozen.
    let set = read_json(&data);
    let second = set["samples"][1]["image"].as_str().unwrap();
    std::fs::remove_file(dir.path().join(second)).unwrap();
    let report = dir.path().join("r.json");
    vlmbench()
        .args(["run", "--model", "random:tiny-llava", "--data-file"])
        .arg(&data)
        .args(["--max-new-tokens", "3", "--warmup", "0"])
        .arg("--report-file")
        .arg(&report)
        .assert()
        .code(3);
    let v = read_json(&report);
    let s = v["samples"].as_array().unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s[1]["ok"], false);
    assert!(
        s[1]["error"].as_str().unwrap().contains("image"),
        "{}",
        s[1]["error"]
    );
    assert_eq!(s[0]["ok"], true);
    assert_eq!(s[2]["ok"], true);
}

/// Several images in one sample: Qwen2.5-VL runs them all (the image tokens add up, each image
/// brings its own vision start and end marks), the report and CSV count them, a missing second
/// image fails its sample by name, and LLaVA 1.5 fails a two-image sample but runs the rest.
#[test]
fn several_images_in_one_sample_run_where_the_model_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.jpg"), common::fixtures::jpeg(1, 96, 64)).unwrap();
    std::fs::write(dir.path().join("b.jpg"), common::fixtures::jpeg(2, 60, 120)).unwrap();
    let lines = [
        serde_json::json!({"text": "Compare.", "images": ["a.jpg", "b.jpg"]}),
        serde_json::json!({"text": "Compare.", "image": "a.jpg"}),
        serde_json::json!({"text": "Compare.", "image": "b.jpg"}),
        serde_json::json!({"text": "Compare.", "images": ["b.jpg", "a.jpg"]}),
    ];
    let data = common::prepare_jsonl(dir.path(), &lines);
    // The fourth sample's second image goes missing after the set was frozen.
    let set = read_json(&data);
    let gone = dir
        .path()
        .join(set["samples"][3]["images"][1].as_str().unwrap());
    std::fs::remove_file(&gone).unwrap();

    let report = dir.path().join("qwen.json");
    vlmbench()
        .args(["run", "--model", "random:tiny-qwen2.5-vl", "--data-file"])
        .arg(&data)
        .args(["--max-new-tokens", "3", "--ignore-eos", "--warmup", "0"])
        .arg("--report-file")
        .arg(&report)
        .assert()
        .code(3);
    let v = read_json(&report);
    let s = v["samples"].as_array().unwrap();
    let n = |k: usize, key: &str| s[k][key].as_u64().unwrap();
    for ok in &s[..3] {
        check_sample(ok, 3);
    }
    assert_eq!((n(0, "images"), n(1, "images"), n(2, "images")), (2, 1, 1));
    assert_eq!(
        n(0, "image_tokens"),
        n(1, "image_tokens") + n(2, "image_tokens")
    );
    assert_eq!(
        n(0, "input_tokens"),
        n(1, "input_tokens") + n(2, "image_tokens") + 2,
        "the second image adds its tokens and its vision start and end marks"
    );
    assert_eq!(s[3]["ok"], false);
    assert_eq!(
        s[3]["error"].as_str().unwrap(),
        format!("image not found: {}", gone.display())
    );
    let csv = std::fs::read_to_string(report.with_extension("csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|c| *c == "images").unwrap();
    assert_eq!(header[col - 1], "image_tokens");
    let first_row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(first_row[col], "2", "{csv}");

    let report = dir.path().join("llava.json");
    vlmbench()
        .args(["run", "--model", "random:tiny-llava", "--data-file"])
        .arg(&data)
        .args(["--max-new-tokens", "3", "--warmup", "0"])
        .arg("--report-file")
        .arg(&report)
        .assert()
        .code(3);
    let v = read_json(&report);
    let s = v["samples"].as_array().unwrap();
    assert_eq!(s[0]["ok"], false);
    let why = s[0]["error"].as_str().unwrap();
    assert!(
        why.contains("takes one image per sample; this sample has 2"),
        "{why}"
    );
    check_sample(&s[1], 3);
    assert_eq!(
        (s[1]["images"].as_u64(), s[1]["image_tokens"].as_u64()),
        (Some(1), Some(576))
    );
}

#[test]
fn text_model_refuses_an_image_set_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let data = image_set(dir.path(), 1, 64, 48);
    vlmbench()
        .args(["run", "--model", "random:tiny-llama", "--data-file"])
        .arg(&data)
        .assert()
        .failure()
        .stderr(contains("text-only"))
        .stderr(contains("tiny-llava"));
}

#[test]
fn profile_writes_a_nested_chrome_trace_that_covers_the_measured_times() {
    let dir = tempfile::tempdir().unwrap();
    let data = image_set(dir.path(), 2, 320, 240);
    let report = dir.path().join("prof.json");
    vlmbench()
        .args(["run", "--model", "random:tiny-llava", "--data-file"])
        .arg(&data)
        .args([
            "--max-new-tokens",
            "6",
            "--ignore-eos",
            "--warmup",
            "1",
            "--profile",
            "--quiet",
        ])
        .arg("--report-file")
        .arg(&report)
        .assert()
        .success()
        .stderr(contains("prof.trace.json"));
    let trace = read_json(&dir.path().join("prof.trace.json"));
    let events = trace["traceEvents"].as_array().unwrap();
    let span = |e: &Value| {
        let ts = e["ts"].as_f64().unwrap();
        (ts, ts + e["dur"].as_f64().unwrap())
    };
    let of = |name: &str| -> Vec<(f64, f64)> {
        events
            .iter()
            .filter(|e| e["name"] == name)
            .map(span)
            .collect()
    };
    assert!(events.iter().all(|e| e["ph"] == "X"));
    let samples = of("sample");
    assert_eq!(samples.len(), 2, "warm-up is not profiled");
    let inside = |(a, b): (f64, f64), outer: &[(f64, f64)]| {
        outer.iter().any(|&(s, e)| a >= s - 1e-3 && b <= e + 1e-3)
    };
    for name in [
        "preprocess",
        "vision_encode",
        "vision_tower",
        "projector",
        "prefill",
        "decode_step",
    ] {
        let spans = of(name);
        assert!(!spans.is_empty(), "{name}");
        assert!(
            spans.iter().all(|s| inside(*s, &samples)),
            "{name} outside a sample"
        );
    }
    let steps: Vec<(f64, f64)> = of("prefill").into_iter().chain(of("decode_step")).collect();
    for e in events.iter().filter(|e| e["cat"] == "layer") {
        assert!(inside(span(e), &steps), "a layer outside prefill/decode");
    }
    assert_eq!(of("decode_step").len(), 2 * 5);
    // The spans cover what the report measured.
    let v = read_json(&report);
    let prefills = of("prefill");
    let decodes = of("decode_step");
    for (k, s) in v["samples"].as_array().unwrap().iter().enumerate() {
        let ttft_us = s["ttft_ms"].as_f64().unwrap() * 1e3;
        let from_trace = prefills[k].1 - samples[k].0;
        assert!(
            (from_trace - ttft_us).abs() < 2_000.0 + 0.02 * ttft_us,
            "TTFT {ttft_us} vs trace {from_trace}"
        );
        let decode_us = s["decode_ms"].as_f64().unwrap() * 1e3;
        let steps_us: f64 = decodes[k * 5..(k + 1) * 5].iter().map(|(a, b)| b - a).sum();
        assert!(
            steps_us <= decode_us + 1_000.0,
            "decode steps {steps_us} vs decode {decode_us}"
        );
        assert!(
            steps_us >= 0.8 * decode_us - 1_000.0,
            "decode steps {steps_us} vs decode {decode_us}"
        );
    }
    let stats = std::fs::read_to_string(dir.path().join("prof.profiler_stats.txt")).unwrap();
    assert!(
        stats.contains("attention") && stats.contains("kv_cache_bytes"),
        "{stats}"
    );
}

/// `--kv-cache-dtype f16` on the CPU: the report names it, a decode step reads half the cache
/// bytes, and the run's numbers come out whole; a dtype the kernels do not read is refused
/// with one line.
#[test]
fn a_half_precision_kv_cache_halves_the_cache_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepare_prompts(
        dir.path(),
        "Hello there, how are you today?\nTell me a story\n",
    );
    let run = |kv: &str| {
        let report = dir.path().join(format!("{kv}.json"));
        vlmbench()
            .args([
                "run",
                "--model",
                "random:tiny-llama",
                "--device",
                "cpu",
                "--quiet",
            ])
            .args(["--max-new-tokens", "8", "--ignore-eos", "--warmup", "0"])
            .args(["--kv-cache-dtype", kv, "--data-file"])
            .arg(&data)
            .arg("--report-file")
            .arg(&report)
            .assert()
            .success();
        read_json(&report)
    };
    let (full, half) = (run("auto"), run("f16"));
    assert!(full["config"].get("kv_cache_dtype").is_none());
    assert_eq!(half["config"]["kv_cache_dtype"], "f16");
    let kv = |r: &Value| {
        r["decode_bandwidth"]["kv_bytes_per_token_mean"]
            .as_f64()
            .unwrap()
    };
    assert!(
        (kv(&full) / kv(&half) - 2.0).abs() < 1e-9,
        "{} vs {}",
        kv(&full),
        kv(&half)
    );
    for r in [&full, &half] {
        assert_eq!(r["summary"]["succeeded"], 2);
        for s in r["samples"].as_array().unwrap() {
            check_sample(s, 8);
        }
    }
    vlmbench()
        .args(["run", "--model", "random:tiny-llama", "--device", "cpu"])
        .args(["--kv-cache-dtype", "bf16", "--data-file"])
        .arg(&data)
        .arg("--report-file")
        .arg(dir.path().join("bad.json"))
        .assert()
        .failure()
        .stderr(contains("--kv-cache-dtype"))
        .stderr(contains("bf16 KV cache is not supported"));
}
