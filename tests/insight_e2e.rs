//! `compare`, `plot`, `html` and `run --plots` end to end: the real binary on two small
//! in-process reports (and a serving report written here), checked through their files.

mod common;

use common::{prepare_prompts, read_json, vlmbench};
use std::path::{Path, PathBuf};

use predicates::str::contains;
use serde_json::json;

/// The charts every in-process report gets.
const IN_PROCESS_CHARTS: [&str; 4] = ["ttft", "tbt", "tbt_by_position", "ttft_vs_input"];
/// PNGs are drawn at twice the 820x460 SVG size.
const PNG_SIZE: (u32, u32) = (1640, 920);

/// Runs random:tiny-llama over `data` and returns the report path.
fn run(dir: &Path, data: &Path, name: &str, max_new: &str, extra: &[&str]) -> PathBuf {
    let report = dir.join(format!("{name}.json"));
    vlmbench()
        .args([
            "run",
            "--model",
            "random:tiny-llama",
            "--quiet",
            "--warmup",
            "0",
        ])
        .args(["--max-new-tokens", max_new, "--ignore-eos"])
        .arg("--data-file")
        .arg(data)
        .arg("--report-file")
        .arg(&report)
        .args(extra)
        .assert()
        .success();
    report
}

fn check_svg(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("{} is not XML: {e}", path.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    text
}

fn check_png(path: &Path) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!((img.width(), img.height()), PNG_SIZE, "{}", path.display());
}

/// A serving report with two concurrency levels, as `run --backend openai` writes it.
fn serving_report(path: &Path) {
    let summary = |median: f64, p99: f64| {
        json!({"count": 2, "mean": median, "median": median, "p75": median, "p90": p99,
               "p95": p99, "p99": p99, "min": median, "max": p99, "stddev": 1.0})
    };
    let request = |i: i64, ttft: f64, input: u64| {
        json!({"index": i, "ok": true, "http_status": 200, "ttft_ms": ttft,
               "ttft_from_send_ms": ttft, "e2el_ms": ttft + 12.0, "tpot_ms": 4.0,
               "queue_ms": 0.0, "input_tokens": input, "output_tokens": 4,
               "itl_ms": [4.0, 4.0, 4.0], "chunk_gaps_ms": [4.0, 4.0, 4.0], "text": "a b c d"})
    };
    let level = |c: u64, ttft: f64, tput: f64| {
        json!({"concurrency": c, "request_rate": null, "duration": 1.0, "completed": 2,
               "failed": 0, "failure_reasons": {}, "request_throughput": 2.0,
               "output_throughput": tput, "total_token_throughput": tput * 2.0,
               "total_input_tokens": 30, "total_output_tokens": 8,
               "output_tokens_source": "server usage",
               "ttft_ms": summary(ttft, ttft * 1.5), "itl_ms": summary(4.0, 5.0),
               "tpot_ms": summary(4.0, 4.0), "e2el_ms": summary(ttft + 12.0, ttft + 20.0),
               "requests": [request(0, ttft, 10), request(1, ttft * 1.2, 20)]})
    };
    let report = json!({
        "schema_version": 1, "kind": "serving", "status": "complete",
        "started_at": "2026-01-01T00:00:00Z",
        "environment": {"vlmbench_version": "0.1.0", "git_commit": "x", "candle_version": "0.11.1",
                        "cuda_build": false, "os": "linux", "arch": "x86_64", "cpu_model": "cpu",
                        "cpu_threads": 2, "command_line": ["vlmbench"]},
        "server": {"base_url": "http://127.0.0.1:8000/v1", "endpoint": "chat", "model": "m"},
        "config": {"max_tokens": 8, "ignore_eos": true, "stream_usage_requested": true,
                   "num_prompts": 2, "warmup_requests": 0, "request_timeout_s": 600.0,
                   "burstiness": 1.0},
        "dataset": {"path": "d.json", "set": "prompts", "name": "prompts_p", "sha256": "ab",
                    "seed": null, "num_samples": 2},
        "levels": [level(1, 20.0, 8.0), level(4, 40.0, 24.0)]
    });
    std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
}

#[test]
fn compare_plot_and_html_on_real_reports() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepare_prompts(
        dir.path(),
        "Hello there
What is the capital of France?
Tell me a story about a dragon
",
    );
    let a = run(dir.path(), &data, "a", "6", &["--plots"]);
    let b = run(dir.path(), &data, "b", "10", &[]);

    // run --plots: the charts sit beside the report.
    for chart in IN_PROCESS_CHARTS {
        check_svg(&dir.path().join(format!("a_{chart}.svg")));
        check_png(&dir.path().join(format!("a_{chart}.png")));
    }
    assert!(!dir.path().join("b_ttft.svg").exists());

    // compare --format csv: b's ratio is b / a for every statistic.
    let out = vlmbench()
        .args(["compare", "--format", "csv"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let csv = String::from_utf8(out.stdout).unwrap();
    let (ra, rb) = (read_json(&a), read_json(&b));
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let mut checked = 0;
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f[col("column")] != "b" || f[col("stat")] == "value" {
            continue;
        }
        let (metric, stat) = (f[col("metric")], f[col("stat")]);
        let va = ra["summary"][metric][stat].as_f64().unwrap();
        let vb = rb["summary"][metric][stat].as_f64().unwrap();
        let ratio: f64 = f[col("ratio")].parse().unwrap();
        assert!(
            (ratio - vb / va).abs() <= 1e-9 * (vb / va).abs(),
            "{metric} {stat}: {ratio} vs {vb}/{va}"
        );
        assert_eq!(f[col("baseline")], "a");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} ratios checked:\n{csv}");
    // Output tokens: 10 against 6 with --ignore-eos.
    assert!(
        csv.contains(",output_tokens,tokens,median,10,a,1.6666666666666667"),
        "{csv}"
    );

    // The terminal table: both runs, ratios, and the token budget warning.
    vlmbench()
        .arg("compare")
        .arg(&a)
        .arg(&b)
        .assert()
        .success()
        .stdout(contains("TTFT median (ms)"))
        .stdout(contains("(1.67x)"))
        .stdout(contains("warning: different token budgets"));

    // plot with two reports: one file set, one colour per run.
    let plots = dir.path().join("plots");
    vlmbench()
        .arg("plot")
        .arg(&a)
        .arg(&b)
        .arg("--out")
        .arg(&plots)
        .assert()
        .success();
    for chart in IN_PROCESS_CHARTS {
        let svg = check_svg(&plots.join(format!("compare_{chart}.svg")));
        assert!(
            svg.contains(">a</text>") && svg.contains(">b</text>"),
            "legend of {chart}"
        );
        check_png(&plots.join(format!("compare_{chart}.png")));
    }

    // html: one self-contained file.
    let page = dir.path().join("page.html");
    vlmbench()
        .arg("html")
        .arg(&a)
        .arg(&b)
        .arg("-o")
        .arg(&page)
        .assert()
        .success();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<h2>Comparison</h2>"));
    assert_eq!(html.matches("<svg ").count(), IN_PROCESS_CHARTS.len());
    for remote in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "<script",
        "<link",
    ] {
        assert!(!html.contains(remote), "{remote} in the page");
    }
}

#[test]
fn serving_reports_compare_by_level_and_plot_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("srv.json");
    serving_report(&s);
    // A second report with other TTFTs (x1.5 at c1, x2.5 at c4), so a ratio taken the wrong
    // way round (0.67x, 0.40x) or against the wrong level shows.
    let t = dir.path().join("srv2.json");
    let mut other = read_json(&s);
    other["levels"][0]["ttft_ms"]["median"] = json!(30.0);
    other["levels"][1]["ttft_ms"]["median"] = json!(100.0);
    std::fs::write(&t, serde_json::to_vec(&other).unwrap()).unwrap();

    vlmbench()
        .args(["compare", "--format", "md"])
        .arg(&s)
        .arg(&t)
        .assert()
        .success()
        .stdout(contains("| srv@c1 | srv@c4 | srv2@c1 | srv2@c4 |"))
        .stdout(contains(
            "| TTFT median (ms) | 20.00 | 40.00 | 30.00 (1.50x) | 100.0 (2.50x) |",
        ));

    vlmbench()
        .args(["plot", "--format", "svg"])
        .arg(&s)
        .assert()
        .success();
    for chart in ["ttft", "throughput", "ttft_vs_load", "itl_vs_load"] {
        let svg = check_svg(&dir.path().join(format!("srv_{chart}.svg")));
        if chart != "ttft" {
            assert!(svg.contains("concurrency (requests in flight)"), "{chart}");
        }
    }
    assert!(!dir.path().join("srv_ttft.png").exists());

    vlmbench().arg("html").arg(&s).assert().success();
    let html = std::fs::read_to_string(dir.path().join("srv.html")).unwrap();
    assert!(html.contains("srv@c4"));
    assert!(!html.contains("<h2>Comparison</h2>"));
}

#[test]
fn bad_reports_get_one_line_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("srv.json");
    serving_report(&s);
    let mut v = read_json(&s);
    v["levels"][1]["ttft_ms"]["median"] = json!("fast");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, serde_json::to_vec(&v).unwrap()).unwrap();

    let out = vlmbench()
        .arg("compare")
        .arg(&s)
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("broken.json"), "{err}");
    assert!(err.contains("levels[1].ttft_ms.median"), "{err}");

    let missing = dir.path().join("nope.json");
    vlmbench()
        .arg("plot")
        .arg(&missing)
        .assert()
        .code(1)
        .stderr(contains("nope.json"));
    let text = dir.path().join("notes.json");
    std::fs::write(&text, "not json").unwrap();
    vlmbench()
        .arg("html")
        .arg(&text)
        .assert()
        .code(1)
        .stderr(contains("notes.json: not JSON"));
}
