//! One self-contained HTML page for one or more reports: summary tables, the comparison (with
//! several reports), the charts as inline SVG, and where and how each run happened. No
//! scripts, fonts, images or styles from elsewhere, so the file can be mailed or archived.

use std::fmt::Write as _;

use crate::plot::charts::NamedChart;
use crate::plot::svg::esc;
use crate::report::compare::{fact_rows, ratio_note, shows_ratio, Better, Comparison};
use crate::report::read::{level_suffix, AnyReport, NamedReport};
use crate::report::serving::{level_metric_rows, ServingReport};
use crate::report::table::{bytes, metric_rows, num};
use crate::report::{Report, RunStatus};
use crate::stats::Summary;

const STYLE: &str = r#"
:root { color-scheme: light; }
body { font-family: "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
  background: #f6f7f9; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 2px solid #dde1e6; }
h3 { font-size: 16px; margin: 22px 0 8px; }
p.meta { color: #555; margin: 0 0 8px; }
section.card { background: #fff; border: 1px solid #dde1e6; border-radius: 8px;
  padding: 14px 18px; margin: 14px 0; overflow-x: auto; }
table { border-collapse: collapse; font-size: 13.5px; }
th, td { padding: 5px 10px; border-bottom: 1px solid #e8eaed; text-align: right;
  white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eef1f4; border-bottom: 2px solid #cfd5dc; }
tbody tr:nth-child(even) { background: #fafbfc; }
table.facts td, table.facts th { text-align: left; white-space: normal; }
table.facts td { word-break: break-word; }
table.facts td:first-child { white-space: nowrap; }
td.mono, code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
tr.group th { background: #f3f5f7; text-align: left; font-weight: 600; color: #444; }
.ratio { color: #666; font-size: 12px; }
.better { color: #1a7f37; font-weight: 600; }
.worse { color: #c62828; font-weight: 600; }
ul.warnings { background: #fff8e1; border: 1px solid #f0d58a; border-radius: 6px;
  padding: 8px 8px 8px 28px; font-size: 14px; }
ul.warnings li { margin: 3px 0; }
p.note { color: #555; font-size: 13px; }
p.totals { margin: 10px 0 0; font-size: 13.5px; }
figure { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; margin: 14px 0;
  padding: 8px; }
figure svg { display: block; max-width: 100%; height: auto; margin: 0 auto; }
footer { color: #777; font-size: 12px; margin-top: 40px; }
"#;

/// The page. `comparison` is shown when given (several reports); `charts` in order.
pub fn render(
    reports: &[NamedReport],
    comparison: Option<&Comparison>,
    charts: &[NamedChart],
) -> String {
    let labels: Vec<&str> = reports.iter().map(|r| r.label.as_str()).collect();
    let title = format!("vlmbench: {}", labels.join(" vs "));
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>",
        esc(&title)
    );
    let _ = writeln!(h, "<h1>{}</h1>", esc(&title));
    for line in headline(reports) {
        let _ = writeln!(h, "<p class=\"meta\">{}</p>", esc(&line));
    }

    if let Some(c) = comparison {
        let _ = writeln!(h, "<h2>Comparison</h2>");
        comparison_table(&mut h, c);
    }

    let _ = writeln!(h, "<h2>Summary</h2>");
    for r in reports {
        match &r.report {
            AnyReport::InProcess(rep) => in_process_summary(&mut h, &r.label, rep),
            AnyReport::Serving(rep) => serving_summary(&mut h, &r.label, rep),
        }
    }

    if !charts.is_empty() {
        let _ = writeln!(h, "<h2>Charts</h2>");
        for c in charts {
            let _ = writeln!(h, "<figure>\n{}</figure>", c.chart.to_svg());
        }
    }

    let _ = writeln!(h, "<h2>Environment, model and data</h2>");
    details_table(&mut h, reports);

    let _ = writeln!(
        h,
        "<footer>Written by vlmbench {}. Statistics use successful samples only; percentiles interpolate linearly (numpy's default).</footer>\n</main>\n</body>\n</html>",
        esc(env!("CARGO_PKG_VERSION"))
    );
    h
}

/// One line per report under the title: what ran where.
fn headline(reports: &[NamedReport]) -> Vec<String> {
    reports
        .iter()
        .map(|r| match &r.report {
            AnyReport::InProcess(x) => format!(
                "{}: {} on {} ({}), {}, started {}",
                r.label,
                x.engine.model,
                x.engine.device,
                x.engine.dtype,
                x.dataset.name,
                x.started_at
            ),
            AnyReport::Serving(x) => format!(
                "{}: {} at {}, {}, started {}",
                r.label, x.server.model, x.server.base_url, x.dataset.name, x.started_at
            ),
        })
        .collect()
}

fn comparison_table(h: &mut String, c: &Comparison) {
    let _ = writeln!(h, "<section class=\"card\"><table>\n<thead><tr><th></th>");
    for col in &c.columns {
        let _ = write!(h, "<th>{}</th>", esc(&col.label));
    }
    let _ = writeln!(h, "</tr></thead>\n<tbody>");
    for (name, values) in fact_rows(c) {
        let _ = write!(h, "<tr><td>{}</td>", esc(name));
        for v in values {
            let _ = write!(h, "<td>{}</td>", esc(&v));
        }
        let _ = writeln!(h, "</tr>");
    }
    for row in &c.rows {
        let _ = write!(h, "<tr><td>{}</td>", esc(&row.title()));
        for (i, cell) in row.cells.iter().enumerate() {
            let Some(v) = cell.value else {
                let _ = write!(h, "<td>-</td>");
                continue;
            };
            match cell.ratio {
                Some(r) if shows_ratio(c, i) => {
                    let _ = write!(
                        h,
                        "<td>{} <span class=\"{}\">({r:.2}x)</span></td>",
                        num(v),
                        ratio_class(row.better, r)
                    );
                }
                _ => {
                    let _ = write!(h, "<td>{}</td>", num(v));
                }
            }
        }
        let _ = writeln!(h, "</tr>");
    }
    let _ = writeln!(h, "</tbody></table>");
    let _ = writeln!(h, "<p class=\"note\">{}</p>", esc(&ratio_note(c)));
    if !c.warnings.is_empty() {
        let _ = writeln!(h, "<ul class=\"warnings\">");
        for w in &c.warnings {
            let _ = writeln!(h, "<li><strong>warning:</strong> {}</li>", esc(w));
        }
        let _ = writeln!(h, "</ul>");
    }
    let _ = writeln!(h, "</section>");
}

/// Green when at least 3% faster, red when at least 3% slower (noise below that).
fn ratio_class(better: Better, ratio: f64) -> &'static str {
    let faster = match better {
        Better::Lower => ratio <= 0.97,
        Better::Higher => ratio >= 1.03,
        Better::Neither => false,
    };
    let slower = match better {
        Better::Lower => ratio >= 1.03,
        Better::Higher => ratio <= 0.97,
        Better::Neither => false,
    };
    if faster {
        "ratio better"
    } else if slower {
        "ratio worse"
    } else {
        "ratio"
    }
}

fn stats_header(h: &mut String) {
    let _ = writeln!(
        h,
        "<thead><tr><th>metric</th><th>n</th><th>mean</th><th>median</th><th>p90</th><th>p99</th><th>min</th><th>max</th></tr></thead>"
    );
}

fn stats_row(h: &mut String, name: &str, s: &Summary) {
    let _ = writeln!(
        h,
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(name),
        s.count,
        num(s.mean),
        num(s.median),
        num(s.p90),
        num(s.p99),
        num(s.min),
        num(s.max)
    );
}

fn status_note(status: RunStatus, detail: Option<&str>) -> String {
    match status {
        RunStatus::Complete => String::new(),
        RunStatus::Interrupted => format!(
            " <strong class=\"worse\">interrupted</strong>{}",
            detail.map(|d| format!(": {}", esc(d))).unwrap_or_default()
        ),
        RunStatus::Aborted => format!(
            " <strong class=\"worse\">aborted</strong>{}",
            detail.map(|d| format!(": {}", esc(d))).unwrap_or_default()
        ),
    }
}

fn in_process_summary(h: &mut String, label: &str, r: &Report) {
    let s = &r.summary;
    let _ = writeln!(
        h,
        "<section class=\"card\"><h3>{}</h3>{}<table>",
        esc(label),
        status_note(r.status, r.status_detail.as_deref())
    );
    stats_header(h);
    let _ = writeln!(h, "<tbody>");
    for (name, summary) in metric_rows(s) {
        if let Some(v) = summary {
            stats_row(h, name, v);
        }
    }
    let _ = writeln!(h, "</tbody></table>");
    let _ = writeln!(
        h,
        "<p class=\"totals\">success {}/{} ({:.1}%) · {:.2} s · {} req/s · {} output tok/s · {} total tok/s · peak host RSS {} · peak GPU (process) {}</p>",
        s.succeeded,
        s.num_samples,
        s.success_rate * 100.0,
        s.duration_s,
        num(s.request_throughput),
        num(s.output_throughput),
        num(s.total_token_throughput),
        bytes(&r.memory.host_peak_rss),
        bytes(&r.memory.gpu_peak_process)
    );
    failures(h, &s.failure_reasons);
    let _ = writeln!(h, "</section>");
}

fn serving_summary(h: &mut String, label: &str, r: &ServingReport) {
    let _ = writeln!(
        h,
        "<section class=\"card\"><h3>{}</h3>{}<table>",
        esc(label),
        status_note(r.status, r.status_detail.as_deref())
    );
    stats_header(h);
    let _ = writeln!(h, "<tbody>");
    for l in &r.levels {
        let _ = writeln!(
            h,
            "<tr class=\"group\"><th colspan=\"8\">{}{} — {} ok, {} failed · {:.2} s · {} req/s · {} output tok/s · tokens from {}</th></tr>",
            esc(label),
            esc(&level_suffix(l)),
            l.completed,
            l.failed,
            l.duration,
            num(l.request_throughput),
            num(l.output_throughput),
            esc(&l.output_tokens_source)
        );
        for (name, summary) in level_metric_rows(l) {
            if let Some(v) = summary {
                stats_row(h, &format!("{name} (ms)"), v);
            }
        }
    }
    let _ = writeln!(h, "</tbody></table>");
    for l in &r.levels {
        failures(h, &l.failure_reasons);
    }
    let _ = writeln!(h, "</section>");
}

fn failures(h: &mut String, reasons: &std::collections::BTreeMap<String, usize>) {
    if reasons.is_empty() {
        return;
    }
    let _ = writeln!(h, "<ul class=\"warnings\">");
    for (reason, n) in reasons {
        let _ = writeln!(h, "<li>failed ×{n}: {}</li>", esc(reason));
    }
    let _ = writeln!(h, "</ul>");
}

/// Where, what and with which data each run happened: one column per report, grouped rows.
fn details_table(h: &mut String, reports: &[NamedReport]) {
    let cols: Vec<Vec<(&str, &str, String)>> = reports.iter().map(details).collect();
    let _ = writeln!(
        h,
        "<section class=\"card\"><table class=\"facts\">\n<thead><tr><th></th>"
    );
    for r in reports {
        let _ = write!(h, "<th>{}</th>", esc(&r.label));
    }
    let _ = writeln!(h, "</tr></thead>\n<tbody>");
    // Rows grouped (Model, Run, Dataset, Environment), each in the order the reports list them;
    // a row that one kind of report lacks shows "-".
    let mut groups: Vec<&str> = Vec::new();
    for (group, _, _) in cols.iter().flatten() {
        if !groups.contains(group) {
            groups.push(group);
        }
    }
    let mut order: Vec<(&str, &str)> = Vec::new();
    for g in &groups {
        for (group, key, _) in cols.iter().flatten() {
            if group == g && !order.contains(&(group, key)) {
                order.push((group, key));
            }
        }
    }
    let mut last_group = "";
    for (group, key) in order {
        if group != last_group {
            let _ = writeln!(
                h,
                "<tr class=\"group\"><th colspan=\"{}\">{}</th></tr>",
                reports.len() + 1,
                esc(group)
            );
            last_group = group;
        }
        let _ = write!(h, "<tr><td>{}</td>", esc(key));
        for c in &cols {
            let v = c
                .iter()
                .find(|(g, k, _)| *g == group && *k == key)
                .map(|x| x.2.as_str())
                .unwrap_or("-");
            let class = if matches!(key, "sha256" | "command line") {
                " class=\"mono\""
            } else {
                ""
            };
            let _ = write!(h, "<td{class}>{}</td>", esc(v));
        }
        let _ = writeln!(h, "</tr>");
    }
    let _ = writeln!(h, "</tbody></table></section>");
}

fn details(r: &NamedReport) -> Vec<(&'static str, &'static str, String)> {
    let mut v = Vec::new();
    let (env, dataset) = match &r.report {
        AnyReport::InProcess(x) => (&x.environment, &x.dataset),
        AnyReport::Serving(x) => (&x.environment, &x.dataset),
    };
    match &r.report {
        AnyReport::InProcess(x) => {
            let e = &x.engine;
            v.push(("Model", "model", e.model.clone()));
            v.push(("Model", "backend", e.backend.clone()));
            v.push(("Model", "architecture", e.architecture.clone()));
            v.push(("Model", "dtype", e.dtype.clone()));
            v.push(("Model", "device", e.device.clone()));
            v.push((
                "Model",
                "parameters",
                e.parameters
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
            ));
            v.push(("Model", "context length", e.context_length.to_string()));
            let c = &x.config;
            v.push(("Run", "started", x.started_at.clone()));
            v.push(("Run", "max new tokens", c.max_new_tokens.to_string()));
            v.push(("Run", "ignore eos", c.ignore_eos.to_string()));
            v.push(("Run", "warm-up", c.warmup.to_string()));
            v.push(("Run", "repeat", c.repeat.to_string()));
            v.push((
                "Run",
                "limit",
                c.limit.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            ));
            v.push(("Run", "decoding", c.decoding.clone()));
        }
        AnyReport::Serving(x) => {
            v.push(("Model", "model", x.server.model.clone()));
            v.push(("Model", "backend", "openai".into()));
            v.push(("Model", "server", x.server.base_url.clone()));
            v.push(("Model", "endpoint", x.server.endpoint.clone()));
            let c = &x.config;
            v.push(("Run", "started", x.started_at.clone()));
            v.push(("Run", "max new tokens", c.max_tokens.to_string()));
            v.push(("Run", "ignore eos", c.ignore_eos.to_string()));
            v.push(("Run", "warm-up", c.warmup_requests.to_string()));
            v.push(("Run", "requests per level", c.num_prompts.to_string()));
            v.push(("Run", "burstiness", c.burstiness.to_string()));
            v.push((
                "Run",
                "levels",
                x.levels
                    .iter()
                    .map(level_suffix)
                    .map(|s| s.trim_start_matches('@').to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            ));
        }
    }
    v.push(("Dataset", "name", dataset.name.clone()));
    v.push(("Dataset", "set", dataset.set.clone()));
    v.push(("Dataset", "path", dataset.path.clone()));
    v.push(("Dataset", "sha256", dataset.sha256.clone()));
    v.push((
        "Dataset",
        "samples in file",
        dataset.num_samples.to_string(),
    ));
    v.push((
        "Environment",
        "vlmbench",
        format!("{} ({})", env.vlmbench_version, env.git_commit),
    ));
    v.push(("Environment", "candle", env.candle_version.clone()));
    v.push((
        "Environment",
        "CPU",
        format!("{} ({} threads)", env.cpu_model, env.cpu_threads),
    ));
    if let Some(k) = &env.cpu_kernels {
        v.push((
            "Environment",
            "CPU kernels",
            format!("{} ({})", k.set, k.features.join(", ")),
        ));
    }
    v.push((
        "Environment",
        "GPU",
        env.gpu
            .as_ref()
            .map(|g| {
                format!(
                    "{}, driver {}, CUDA {}, {:.1} GiB",
                    g.name,
                    g.driver_version,
                    g.cuda_driver_version,
                    g.memory_total_bytes as f64 / (1u64 << 30) as f64
                )
            })
            .unwrap_or_else(|| "none".into()),
    ));
    v.push(("Environment", "CUDA build", env.cuda_build.to_string()));
    v.push(("Environment", "OS", format!("{} {}", env.os, env.arch)));
    v.push(("Environment", "command line", env.command_line.join(" ")));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::charts::charts;
    use crate::report::compare::compare;
    use crate::report::testutil::{self, level, named, request, sample, summary};

    #[test]
    fn page_is_self_contained_and_escaped() {
        let a = named(
            "a",
            AnyReport::InProcess(Box::new(testutil::report(
                vec![sample(0, 10.0, 5, &[1.0, 2.0]), sample(1, 30.0, 9, &[3.0])],
                1.0,
            ))),
        );
        let s = named(
            "srv",
            AnyReport::Serving(Box::new(testutil::serving(vec![level(
                4,
                summary(20.0, 40.0),
                summary(2.0, 4.0),
                100.0,
                vec![request(0, 20.0, 5, &[2.0])],
            )]))),
        );
        let reports = vec![a, s];
        let c = compare(&reports);
        let ch = charts(&reports);
        let page = render(&reports, Some(&c), &ch);
        assert!(page.starts_with("<!DOCTYPE html>"));
        // The CPU name holds markup characters: escaped.
        assert!(page.contains("Test CPU &lt;fast&gt; &amp; cheap"));
        assert!(!page.contains("<fast>"));
        for needle in [
            "<h2>Comparison</h2>",
            "<th>srv@c4</th>",
            "TTFT median (ms)",
            "srv@c4 — 1 ok, 0 failed",
            "<h2>Charts</h2>",
            "Time to first token",
            "different devices",
            "aaaa",
        ] {
            assert!(page.contains(needle), "{needle} missing");
        }
        assert_eq!(page.matches("<svg ").count(), ch.len());
        // Mixed kinds: each detail group once, the server's rows inside the Model group.
        assert_eq!(page.matches(">Model</th>").count(), 1);
        assert_eq!(page.matches(">Run</th>").count(), 1);
        let server = page.find("<td>server</td>").unwrap();
        assert!(server < page.find(">Run</th>").unwrap());
        // Nothing is fetched from elsewhere.
        for attr in ["src=", "href=", "<link", "<script", "@import", "url(http"] {
            assert!(!page.contains(attr), "{attr} found");
        }
    }

    #[test]
    fn ratio_colours_follow_the_metric_direction() {
        assert_eq!(ratio_class(Better::Lower, 0.5), "ratio better");
        assert_eq!(ratio_class(Better::Lower, 1.5), "ratio worse");
        assert_eq!(ratio_class(Better::Higher, 1.5), "ratio better");
        assert_eq!(ratio_class(Better::Higher, 1.01), "ratio");
        assert_eq!(ratio_class(Better::Neither, 3.0), "ratio");
    }
}
