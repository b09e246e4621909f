//! Faults lose nothing: signals, kills, unusable report paths, bad arguments and broken
//! inputs, each against the real binary.

mod common;

use common::{prepare_prompts, read_json, synth_model, vlmbench};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

/// A long run of the tiny random model, started in the background; returns once samples are
/// being measured (the model is loaded and the journal has its first sample).
fn start_long_run(data: &Path, report: &Path) -> Child {
    let bin = assert_cmd::cargo::cargo_bin("vlmbench");
    let mut child = std::process::Command::new(bin)
        .args(["run", "--model", "random:tiny-llama", "--data-file"])
        .arg(data)
        .args([
            "--max-new-tokens",
            "32",
            "--ignore-eos",
            "--repeat",
            "100000",
        ])
        .args(["--warmup", "0", "--report-file"])
        .arg(report)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let loading = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(loading.starts_with("loading"), "{loading:?}");
    std::thread::spawn(move || lines.for_each(drop));
    let journal = report.with_extension("journal.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&journal).map_or(0, |j| j.lines().count()) < 3 {
        assert!(Instant::now() < deadline, "no sample reached the journal");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the run did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_and_sighup_end_the_run_like_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepare_prompts(dir.path(), "one\ntwo\nthree\n");
    for (name, signal) in [("term", libc::SIGTERM), ("hup", libc::SIGHUP)] {
        let report = dir.path().join(format!("{name}.json"));
        let mut child = start_long_run(&data, &report);
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(wait(&mut child).code(), Some(130), "{name}");
        let v = read_json(&report);
        assert_eq!(v["status"], "interrupted", "{name}");
        assert!(!v["samples"].as_array().unwrap().is_empty());
        assert!(
            !report.with_extension("journal.jsonl").exists(),
            "the journal goes once the report holds it"
        );
    }
}

#[test]
fn a_killed_run_is_recovered_from_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepare_prompts(dir.path(), "one\ntwo\nthree\n");
    let report = dir.path().join("killed.json");
    let mut child = start_long_run(&data, &report);
    child.kill().unwrap(); // SIGKILL: nothing of vlmbench runs after it.
    wait(&mut child);
    assert!(!report.exists());
    let journal = report.with_extension("journal.jsonl");
    let journaled = std::fs::read_to_string(&journal).unwrap().lines().count() - 1;

    // A new run to the same place would replace the journal: refused.
    vlmbench()
        .args(["run", "--model", "random:tiny-llama", "--data-file"])
        .arg(&data)
        .arg("--report-file")
        .arg(&report)
        .assert()
        .code(2)
        .stderr(contains("vlmbench recover"));

    vlmbench()
        .arg("recover")
        .arg(&journal)
        .assert()
        .success()
        .stderr(contains("report: "));
    let v = read_json(&report);
    assert_eq!(v["status"], "interrupted");
    let samples = v["samples"].as_array().unwrap();
    // Every complete journal line is in the report (the kill may have torn the last one).
    assert!(samples.len() + 1 >= journaled && samples.len() <= journaled && !samples.is_empty());
    assert_eq!(
        v["summary"]["num_samples"].as_u64().unwrap() as usize,
        samples.len()
    );
    assert!(v["summary"]["duration_s"].as_f64().unwrap() > 0.0);
    assert!(v["engine"]["model"] == "random:tiny-llama");
    assert!(!journal.exists());
    assert!(report.with_extension("csv").is_file());
    // The recovered report reads back like any other.
    vlmbench().arg("compare").arg(&report).assert().success();
}

#[test]
fn unusable_report_paths_are_refused_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepare_prompts(dir.path(), "one\n");
    let set_bytes = std::fs::read(&data).unwrap();
    let notes = dir.path().join("notes.json");
    std::fs::write(&notes, b"{\"mine\": 1}").unwrap();
    let cases: [(&Path, &str); 4] = [
        (dir.path(), "is a folder"),
        (&data, "would replace the --data-file"),
        (&notes, "not a vlmbench report"),
        (Path::new("/proc/self/vlmbench/r.json"), "--report-file"),
    ];
    for (path, why) in cases {
        vlmbench()
            .args(["run", "--model", "random:tiny-llama", "--data-file"])
            .arg(&data)
            .arg("--report-file")
            .arg(path)
            .assert()
            .code(2)
            .stderr(contains(why).and(contains("loading").not()));
    }
    assert_eq!(
        std::fs::read(&data).unwrap(),
        set_bytes,
        "the set is untouched"
    );
    assert_eq!(std::fs::read(&notes).unwrap(), b"{\"mine\": 1}");
}

#[test]
fn argument_errors_exit_2_and_nothing_measured_is_not_success() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepare_prompts(dir.path(), "one\n");
    let run = |extra: &[&str]| {
        let mut c = vlmbench();
        c.args(["run", "--model", "random:tiny-llama", "--data-file"])
            .arg(&data)
            .arg("--report-file")
            .arg(dir.path().join("r.json"))
            .args(extra);
        c
    };
    for (extra, why) in [
        (&["--repeat", "0"][..], "--repeat"),
        (&["--max-new-tokens", "0"], "--max-new-tokens"),
        (&["--limit", "0"], "measure nothing"),
        (&["--threads", "100000"], "--threads 100000"),
        (&["--threads", "0"], "--threads"),
        (&["--base-url", "http://127.0.0.1:9"], "--backend openai"),
    ] {
        run(extra)
            .assert()
            .code(2)
            .stderr(contains(why).and(contains("loading").not()));
    }
    for args in [
        &["run", "--backend", "openai"][..],
        &["run", "--backend", "openai", "--base-url", "ftp://x"],
        &[
            "run",
            "--backend",
            "openai",
            "--base-url",
            "http://127.0.0.1:9",
            "--concurrency",
            "0",
        ],
        &["prepare", "synthetic", "--num-samples", "0"],
    ] {
        vlmbench().args(args).assert().code(2);
    }
    let cpus = std::thread::available_parallelism().unwrap().get();
    run(&[
        "--threads",
        &(cpus + 1).to_string(),
        "--max-new-tokens",
        "2",
    ])
    .assert()
    .success()
    .stderr(contains("logical CPUs"));
    let v = read_json(&dir.path().join("r.json"));
    assert_eq!(
        v["environment"]["model_threads"].as_u64(),
        Some(cpus as u64 + 1)
    );
    assert!(v["environment"]["rustc_version"]
        .as_str()
        .unwrap()
        .starts_with("rustc "));
    assert!(v["environment"]["git_dirty"].is_boolean());
    // Recorded for every run: null here, the tiny model's mappings are below the threshold.
    assert!(v["environment"]["huge_page_bytes"].is_null());
    assert!(v["environment"]
        .as_object()
        .unwrap()
        .contains_key("huge_page_bytes"));
}

#[test]
fn plots_failing_after_failed_samples_keeps_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    // Longer than tiny-llama's context: the only sample fails, so there is nothing to plot.
    let data = prepare_prompts(dir.path(), &format!("{}\n", "word ".repeat(20_000)));
    vlmbench()
        .args(["run", "--model", "random:tiny-llama", "--data-file"])
        .arg(&data)
        .args(["--warmup", "0", "--plots", "--report-file"])
        .arg(dir.path().join("r.json"))
        .assert()
        .code(3)
        .stderr(contains("charts were not written"));
}

#[test]
fn broken_inputs_are_named_for_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path(), "tiny-llama");
    let weights = model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let data = prepare_prompts(dir.path(), "one\n");
    vlmbench()
        .args(["run", "--model-path"])
        .arg(&model)
        .arg("--data-file")
        .arg(&data)
        .arg("--report-file")
        .arg(dir.path().join("r.json"))
        .assert()
        .code(1)
        .stderr(contains("model.safetensors is truncated"));
    // A data set where a report is expected.
    vlmbench()
        .arg("compare")
        .arg(&data)
        .assert()
        .failure()
        .stderr(contains(
            "a data set written by `vlmbench prepare`, not a report",
        ));
}

#[test]
fn config_values_that_change_the_model_are_checked_not_defaulted() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth_model(dir.path(), "tiny-llama");
    let data = prepare_prompts(dir.path(), "one\n");
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
    let cases: [(&str, serde_json::Value, &str); 5] = [
        (
            "hidden_size",
            serde_json::Value::Null,
            "missing `hidden_size`",
        ),
        ("num_hidden_layers", 0.into(), "`num_hidden_layers` is 0"),
        (
            "rope_theta",
            "ten thousand".into(),
            "`rope_theta` must be a number",
        ),
        ("num_hidden_layers", 1.into(), "holds weights for layer 1"),
        ("vocab_size", 10.into(), "`vocab_size`) is 10"),
    ];
    for (key, value, why) in cases {
        let mut c = original.clone();
        match value {
            serde_json::Value::Null => {
                c.as_object_mut().unwrap().remove(key);
            }
            v => c[key] = v,
        }
        std::fs::write(model.join("config.json"), serde_json::to_vec(&c).unwrap()).unwrap();
        let report = dir.path().join("r.json");
        vlmbench()
            .args(["run", "--model-path"])
            .arg(&model)
            .arg("--data-file")
            .arg(&data)
            .arg("--report-file")
            .arg(&report)
            .assert()
            .code(1)
            .stderr(contains(why));
        assert!(!report.exists(), "{key}: nothing ran");
    }
}
