//! Runs side by side: one column per in-process run or per load level of a serving run, each
//! metric's median and p99, and every value's ratio to the baseline (the first report).
//!
//! Pure functions over parsed reports; `commands::compare` reads the files and prints.
//!
//! Baseline of a column: the first report's column at the same load level (so `b@c8` is
//! divided by `a@c8`); when the first report has no such level but only one column (an
//! in-process run), that column; otherwise none, and the column shows values without ratios.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;

use super::read::{level_suffix, AnyReport, NamedReport};
use super::serving::LevelReport;
use super::table::num;
use super::{RunStatus, RunSummary};
use crate::stats::Summary;

/// Which way is faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
    /// Informative only (token counts).
    Neither,
}

/// One compared run: an in-process report, or one level of a serving report.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    /// `report` or `report@c8`.
    pub label: String,
    /// Label of the report it comes from.
    pub report: String,
    pub backend: String,
    pub model: String,
    pub dtype: String,
    /// Device with the GPU or CPU name where the report has it; the base URL for servers.
    pub device: String,
    pub dataset: String,
    pub dataset_sha256: String,
    pub max_new_tokens: usize,
    pub ignore_eos: bool,
    pub concurrency: Option<usize>,
    pub request_rate: Option<f64>,
    pub attempted: usize,
    pub succeeded: usize,
    pub success_rate: f64,
    /// Label of the column its ratios are taken against (itself for the baseline).
    pub baseline: Option<String>,
    #[serde(skip)]
    report_index: usize,
    /// `None` for in-process runs; `(concurrency, request rate)` for serving levels.
    #[serde(skip)]
    level: Option<(Option<usize>, Option<f64>)>,
    #[serde(skip)]
    baseline_index: Option<usize>,
}

/// One value per column, with its ratio to the column's baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cell {
    pub value: Option<f64>,
    /// value / baseline value; absent without a baseline, or when either value is missing or
    /// the baseline is zero.
    pub ratio: Option<f64>,
}

/// One statistic of one metric across the columns.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Report field name, e.g. `ttft_ms`.
    pub metric: &'static str,
    pub name: &'static str,
    pub unit: &'static str,
    /// `median`, `p99`, or `value` for single numbers such as throughput.
    pub stat: &'static str,
    pub better: Better,
    pub cells: Vec<Cell>,
}

impl Row {
    /// Display name: `TTFT median (ms)`, `Output throughput (tok/s)`.
    pub fn title(&self) -> String {
        if self.stat == "value" {
            format!("{} ({})", self.name, self.unit)
        } else {
            format!("{} {} ({})", self.name, self.stat, self.unit)
        }
    }
}

/// The whole comparison, ready to render in any format.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
    /// Reasons the runs may not be comparable (different data, token budgets, devices...).
    pub warnings: Vec<String>,
}

/// Metrics with a distribution, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Ttft,
    Tbt,
    Tpot,
    Tps,
    E2e,
    Prefill,
    OutputTokens,
}

impl Metric {
    const ALL: [Metric; 7] = [
        Metric::Ttft,
        Metric::Tbt,
        Metric::Tpot,
        Metric::Tps,
        Metric::E2e,
        Metric::Prefill,
        Metric::OutputTokens,
    ];

    /// (field, name, unit, which way is faster)
    fn describe(self) -> (&'static str, &'static str, &'static str, Better) {
        match self {
            Metric::Ttft => ("ttft_ms", "TTFT", "ms", Better::Lower),
            // In-process TBT and the server's per-token ITL are the same quantity (one gap per
            // token), so they share a row.
            Metric::Tbt => ("tbt_ms", "TBT/ITL", "ms", Better::Lower),
            Metric::Tpot => ("tpot_ms", "TPOT", "ms", Better::Lower),
            Metric::Tps => ("tps", "TPS per sample", "tok/s", Better::Higher),
            Metric::E2e => ("e2e_ms", "E2E", "ms", Better::Lower),
            Metric::Prefill => ("prefill_ms", "Prefill", "ms", Better::Lower),
            Metric::OutputTokens => ("output_tokens", "Output tokens", "tokens", Better::Neither),
        }
    }

    fn in_process(self, s: &RunSummary) -> Option<&Summary> {
        match self {
            Metric::Ttft => s.ttft_ms.as_ref(),
            Metric::Tbt => s.tbt_ms.as_ref(),
            Metric::Tpot => s.tpot_ms.as_ref(),
            Metric::Tps => s.tps.as_ref(),
            Metric::E2e => s.e2e_ms.as_ref(),
            Metric::Prefill => s.prefill_ms.as_ref(),
            Metric::OutputTokens => s.output_tokens.as_ref(),
        }
    }

    fn serving(self, l: &LevelReport) -> Option<&Summary> {
        match self {
            Metric::Ttft => l.ttft_ms.as_ref(),
            Metric::Tbt => l.itl_ms.as_ref(),
            Metric::Tpot => l.tpot_ms.as_ref(),
            Metric::E2e => l.e2el_ms.as_ref(),
            // Not measured by a client: no per-request decode rate or prefill split.
            Metric::Tps | Metric::Prefill | Metric::OutputTokens => None,
        }
    }
}

/// Where a column's numbers come from.
enum Source<'a> {
    InProcess(&'a RunSummary),
    Level(&'a LevelReport),
}

impl Source<'_> {
    fn summary(&self, m: Metric) -> Option<&Summary> {
        match self {
            Source::InProcess(s) => m.in_process(s),
            Source::Level(l) => m.serving(l),
        }
    }

    fn throughput(&self) -> (f64, f64) {
        match self {
            Source::InProcess(s) => (s.request_throughput, s.output_throughput),
            Source::Level(l) => (l.request_throughput, l.output_throughput),
        }
    }
}

/// Compares `reports`; the first is the baseline.
pub fn compare(reports: &[NamedReport]) -> Comparison {
    let mut columns = Vec::new();
    let mut sources = Vec::new();
    for (i, named) in reports.iter().enumerate() {
        for (column, source) in columns_of(i, named) {
            columns.push(column);
            sources.push(source);
        }
    }
    for i in 0..columns.len() {
        let b = baseline_of(&columns, i);
        columns[i].baseline_index = b;
        columns[i].baseline = b.map(|b| columns[b].label.clone());
    }

    // Serving levels whose ITL is a per-chunk gap (no per-chunk token counts from the server).
    let per_chunk: Vec<&str> = columns
        .iter()
        .zip(&sources)
        .filter(|(_, s)| matches!(s, Source::Level(l) if !l.itl_is_per_token()))
        .map(|(c, _)| c.label.as_str())
        .collect();
    let has_in_process = sources.iter().any(|s| matches!(s, Source::InProcess(_)));
    let mut rows = Vec::new();
    for m in Metric::ALL {
        let (metric, mut name, unit, better) = m.describe();
        if m == Metric::Tbt && !per_chunk.is_empty() {
            name = "TBT/ITL (ITL per chunk in some columns)";
        }
        for stat in ["median", "p99"] {
            let values: Vec<Option<f64>> = sources
                .iter()
                .map(|s| {
                    s.summary(m).map(|x| match stat {
                        "median" => x.median,
                        _ => x.p99,
                    })
                })
                .collect();
            push_row(
                &mut rows, &columns, metric, name, unit, stat, better, values,
            );
        }
    }
    let throughput: Vec<(f64, f64)> = sources.iter().map(Source::throughput).collect();
    push_row(
        &mut rows,
        &columns,
        "request_throughput",
        "Request throughput",
        "req/s",
        "value",
        Better::Higher,
        throughput.iter().map(|t| Some(t.0)).collect(),
    );
    push_row(
        &mut rows,
        &columns,
        "output_throughput",
        "Output throughput",
        "tok/s",
        "value",
        Better::Higher,
        throughput.iter().map(|t| Some(t.1)).collect(),
    );

    let mut warnings = warnings(reports);
    for label in &per_chunk {
        warnings.push(if has_in_process {
            format!(
                "{label}: ITL is per chunk (the server sent no per-chunk token counts), shown beside an in-process per-token TBT: a chunk may carry several tokens, so the TBT/ITL values are not like for like"
            )
        } else {
            format!("{label}: ITL is per chunk (the server sent no per-chunk token counts)")
        });
    }
    for c in &columns {
        if c.baseline.is_none() {
            warnings.push(format!(
                "{}: the baseline has no level with the same concurrency and rate, so no ratios",
                c.label
            ));
        }
    }
    Comparison {
        columns,
        rows,
        warnings,
    }
}

#[allow(clippy::too_many_arguments)]
fn push_row(
    rows: &mut Vec<Row>,
    columns: &[Column],
    metric: &'static str,
    name: &'static str,
    unit: &'static str,
    stat: &'static str,
    better: Better,
    values: Vec<Option<f64>>,
) {
    if values.iter().all(Option::is_none) {
        return;
    }
    let cells = columns
        .iter()
        .zip(&values)
        .map(|(c, &value)| Cell {
            value,
            ratio: c.baseline_index.and_then(|b| ratio(value, values[b])),
        })
        .collect();
    rows.push(Row {
        metric,
        name,
        unit,
        stat,
        better,
        cells,
    });
}

fn ratio(value: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    let (v, b) = (value?, baseline?);
    (b != 0.0 && v.is_finite() && b.is_finite()).then(|| v / b)
}

fn columns_of(report_index: usize, named: &NamedReport) -> Vec<(Column, Source<'_>)> {
    match &named.report {
        AnyReport::InProcess(r) => {
            let e = &r.engine;
            let device = match (&r.environment.gpu, e.device.starts_with("cuda")) {
                (Some(gpu), true) => format!("{} ({})", e.device, gpu.name),
                (None, true) => e.device.clone(),
                _ => format!("{} ({})", e.device, r.environment.cpu_model),
            };
            let s = &r.summary;
            vec![(
                Column {
                    label: named.label.clone(),
                    report: named.label.clone(),
                    backend: e.backend.clone(),
                    model: e.model.clone(),
                    dtype: e.dtype.clone(),
                    device,
                    dataset: r.dataset.name.clone(),
                    dataset_sha256: r.dataset.sha256.clone(),
                    max_new_tokens: r.config.max_new_tokens,
                    ignore_eos: r.config.ignore_eos,
                    concurrency: None,
                    request_rate: None,
                    attempted: s.num_samples,
                    succeeded: s.succeeded,
                    success_rate: s.success_rate,
                    baseline: None,
                    report_index,
                    level: None,
                    baseline_index: None,
                },
                Source::InProcess(s),
            )]
        }
        AnyReport::Serving(r) => r
            .levels
            .iter()
            .map(|l| {
                let attempted = l.completed + l.failed;
                (
                    Column {
                        label: format!("{}{}", named.label, level_suffix(l)),
                        report: named.label.clone(),
                        backend: "openai".into(),
                        model: r.server.model.clone(),
                        dtype: "n/a".into(),
                        device: r.server.base_url.clone(),
                        dataset: r.dataset.name.clone(),
                        dataset_sha256: r.dataset.sha256.clone(),
                        max_new_tokens: r.config.max_tokens,
                        ignore_eos: r.config.ignore_eos,
                        concurrency: l.concurrency,
                        request_rate: l.request_rate,
                        attempted,
                        succeeded: l.completed,
                        success_rate: if attempted == 0 {
                            0.0
                        } else {
                            l.completed as f64 / attempted as f64
                        },
                        baseline: None,
                        report_index,
                        level: Some((l.concurrency, l.request_rate)),
                        baseline_index: None,
                    },
                    Source::Level(l),
                )
            })
            .collect(),
    }
}

fn baseline_of(columns: &[Column], i: usize) -> Option<usize> {
    let base: Vec<usize> = (0..columns.len())
        .filter(|&j| columns[j].report_index == 0)
        .collect();
    base.iter()
        .copied()
        .find(|&j| columns[i].level.is_some() && columns[j].level == columns[i].level)
        .or_else(|| (base.len() == 1).then(|| base[0]))
}

/// Per-report facts that make numbers incomparable when they differ.
fn warnings(reports: &[NamedReport]) -> Vec<String> {
    struct Facts {
        label: String,
        dataset: String,
        sha: String,
        budget: String,
        device: String,
        status: RunStatus,
    }
    let facts: Vec<Facts> = reports
        .iter()
        .map(|n| {
            let (dataset, budget, device, status) = match &n.report {
                AnyReport::InProcess(r) => (
                    &r.dataset,
                    budget(r.config.max_new_tokens, r.config.ignore_eos),
                    columns_of(0, n)
                        .into_iter()
                        .next()
                        .map(|c| c.0.device)
                        .unwrap_or_default(),
                    r.status,
                ),
                AnyReport::Serving(r) => (
                    &r.dataset,
                    budget(r.config.max_tokens, r.config.ignore_eos),
                    r.server.base_url.clone(),
                    r.status,
                ),
            };
            Facts {
                label: n.label.clone(),
                dataset: dataset.name.clone(),
                sha: dataset.sha256.clone(),
                budget,
                device,
                status,
            }
        })
        .collect();
    let mut out = Vec::new();
    let differ =
        |f: &dyn Fn(&Facts) -> String| facts.iter().map(f).collect::<BTreeSet<_>>().len() > 1;
    let list = |f: &dyn Fn(&Facts) -> String| {
        facts
            .iter()
            .map(|x| format!("{} {}", x.label, f(x)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if differ(&|f| f.sha.clone()) {
        out.push(format!(
            "different datasets: {}",
            list(&|f| format!(
                "{} (sha256 {})",
                f.dataset,
                f.sha.get(..12).unwrap_or(&f.sha)
            ))
        ));
    }
    if differ(&|f| f.budget.clone()) {
        out.push(format!(
            "different token budgets: {}",
            list(&|f| f.budget.clone())
        ));
    }
    if differ(&|f| f.device.clone()) {
        out.push(format!(
            "different devices: {}",
            list(&|f| f.device.clone())
        ));
    }
    for f in &facts {
        if f.status != RunStatus::Complete {
            let status = match f.status {
                RunStatus::Interrupted => "interrupted",
                _ => "aborted",
            };
            out.push(format!(
                "{} was {status}: it holds only what finished",
                f.label
            ));
        }
    }
    out
}

fn budget(max_new_tokens: usize, ignore_eos: bool) -> String {
    if ignore_eos {
        format!("max_new_tokens {max_new_tokens} + ignore_eos")
    } else {
        format!("max_new_tokens {max_new_tokens}")
    }
}

/// A cell as text: the value, and its ratio unless the column is its own baseline.
fn cell_text(c: &Comparison, col: usize, cell: &Cell) -> String {
    let Some(v) = cell.value else {
        return "-".into();
    };
    match cell.ratio {
        Some(r) if shows_ratio(c, col) => format!("{} ({r:.2}x)", num(v)),
        _ => num(v),
    }
}

/// The run facts shown above the metrics: (name, one value per column).
pub fn fact_rows(c: &Comparison) -> Vec<(&'static str, Vec<String>)> {
    let per = |f: &dyn Fn(&Column) -> String| c.columns.iter().map(f).collect::<Vec<_>>();
    vec![
        ("backend", per(&|x| x.backend.clone())),
        ("model", per(&|x| x.model.clone())),
        ("dtype", per(&|x| x.dtype.clone())),
        ("device", per(&|x| x.device.clone())),
        ("dataset", per(&|x| x.dataset.clone())),
        (
            "max new tokens",
            per(&|x| {
                if x.ignore_eos {
                    format!("{} + ignore_eos", x.max_new_tokens)
                } else {
                    x.max_new_tokens.to_string()
                }
            }),
        ),
        (
            "success",
            per(&|x| {
                format!(
                    "{}/{} ({:.1}%)",
                    x.succeeded,
                    x.attempted,
                    x.success_rate * 100.0
                )
            }),
        ),
    ]
}

/// Whether column `col` shows a ratio (every column with a baseline except the baseline).
pub fn shows_ratio(c: &Comparison, col: usize) -> bool {
    c.columns[col].baseline_index.is_some_and(|b| b != col)
}

/// The comparison as a grid of strings: a header row, the run facts, then the metric rows.
fn grid(c: &Comparison) -> Vec<Vec<String>> {
    let mut g = Vec::new();
    let header = std::iter::once(String::new())
        .chain(c.columns.iter().map(|x| x.label.clone()))
        .collect();
    g.push(header);
    for (name, values) in fact_rows(c) {
        g.push(std::iter::once(name.to_string()).chain(values).collect());
    }
    for row in &c.rows {
        g.push(
            std::iter::once(row.title())
                .chain(
                    row.cells
                        .iter()
                        .enumerate()
                        .map(|(i, cell)| cell_text(c, i, cell)),
                )
                .collect(),
        );
    }
    g
}

/// What the ratios mean, under the table.
pub fn ratio_note(c: &Comparison) -> String {
    let base = c
        .columns
        .first()
        .map(|x| x.report.as_str())
        .unwrap_or("the first report");
    format!(
        "ratio = value / baseline ({base}; serving levels against the same level): below 1.00x is faster for ms, above 1.00x is faster for tok/s and req/s"
    )
}

/// Plain-text table for the terminal.
pub fn render_table(c: &Comparison) -> String {
    let g = grid(c);
    let ncols = g.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..ncols)
        .map(|j| g.iter().map(|r| r[j].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &g {
        let mut line = String::new();
        for (j, cell) in row.iter().enumerate() {
            let pad = widths[j] - cell.chars().count();
            if j == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str("  ");
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(out, "{}", ratio_note(c));
    for w in &c.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// GitHub-flavoured Markdown table, warnings as a list below it.
pub fn render_markdown(c: &Comparison) -> String {
    let g = grid(c);
    let esc = |s: &str| s.replace('|', "\\|");
    let mut out = String::new();
    for (i, row) in g.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|s| esc(s)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if i == 0 {
            let align: Vec<&str> = (0..row.len())
                .map(|j| if j == 0 { "---" } else { "---:" })
                .collect();
            let _ = writeln!(out, "| {} |", align.join(" | "));
        }
    }
    let _ = writeln!(out, "\n{}", ratio_note(c));
    if !c.warnings.is_empty() {
        out.push('\n');
        for w in &c.warnings {
            let _ = writeln!(out, "- **warning:** {}", esc(w));
        }
    }
    out
}

/// Long-format CSV: one line per column, metric and statistic (success rate included), so a
/// spreadsheet or pandas can pivot it any way.
pub fn render_csv(c: &Comparison) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "column",
        "report",
        "backend",
        "model",
        "dtype",
        "device",
        "dataset",
        "concurrency",
        "request_rate",
        "metric",
        "unit",
        "stat",
        "value",
        "baseline",
        "ratio",
    ])?;
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for (i, col) in c.columns.iter().enumerate() {
        let base = col.baseline.clone().unwrap_or_default();
        let mut line = |metric: &str, unit: &str, stat: &str, cell: Cell| {
            w.write_record([
                col.label.as_str(),
                &col.report,
                &col.backend,
                &col.model,
                &col.dtype,
                &col.device,
                &col.dataset,
                &col.concurrency.map(|x| x.to_string()).unwrap_or_default(),
                &opt(col.request_rate),
                metric,
                unit,
                stat,
                &opt(cell.value),
                &base,
                &opt(cell.ratio),
            ])
        };
        let success_ratio = col
            .baseline_index
            .and_then(|b| ratio(Some(col.success_rate), Some(c.columns[b].success_rate)));
        line(
            "success_rate",
            "fraction",
            "value",
            Cell {
                value: Some(col.success_rate),
                ratio: success_ratio,
            },
        )?;
        for row in &c.rows {
            line(row.metric, row.unit, row.stat, row.cells[i])?;
        }
    }
    let bytes = w.into_inner().context("cannot build the CSV")?;
    String::from_utf8(bytes).context("the CSV is not UTF-8")
}

/// The comparison as pretty JSON.
pub fn render_json(c: &Comparison) -> Result<String> {
    let mut s = serde_json::to_string_pretty(c).context("cannot serialise the comparison")?;
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testutil::{self, failed_sample, level, named, sample, summary};

    fn in_process(label: &str, ttfts: &[f64], tbt: &[f64], duration: f64) -> NamedReport {
        let samples = ttfts
            .iter()
            .enumerate()
            .map(|(i, &t)| sample(i as i64, t, 10, tbt))
            .collect();
        named(
            label,
            AnyReport::InProcess(Box::new(testutil::report(samples, duration))),
        )
    }

    fn row<'a>(c: &'a Comparison, metric: &str, stat: &str) -> &'a Row {
        c.rows
            .iter()
            .find(|r| r.metric == metric && r.stat == stat)
            .unwrap_or_else(|| panic!("no row {metric} {stat}"))
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn in_process_ratios_by_hand() {
        // a: TTFT 10, 20, 30 → median 20; p99 = 20 + 0.98·(30 − 20) = 29.8.
        // b: TTFT 30, 40, 90 → median 40; p99 = 40 + 0.98·(90 − 40) = 89.
        // Ratios: median 40/20 = 2, p99 89/29.8.
        // TBT: a every gap 2 ms (median 2), b every gap 5 ms → ratio 2.5.
        // TPS: a 500 tok/s, b 200 tok/s → 0.4. Request throughput: 3 in 1 s vs 3 in 2 s → 0.5.
        let a = in_process("a", &[10.0, 20.0, 30.0], &[2.0, 2.0], 1.0);
        let b = in_process("b", &[30.0, 40.0, 90.0], &[5.0, 5.0], 2.0);
        let c = compare(&[a, b]);
        assert_eq!(c.columns.len(), 2);
        assert_eq!(c.columns[1].baseline.as_deref(), Some("a"));
        let ttft_med = row(&c, "ttft_ms", "median");
        assert!(close(ttft_med.cells[0].value, 20.0));
        assert!(close(ttft_med.cells[0].ratio, 1.0));
        assert!(close(ttft_med.cells[1].value, 40.0));
        assert!(close(ttft_med.cells[1].ratio, 2.0));
        let ttft_p99 = row(&c, "ttft_ms", "p99");
        assert!(close(ttft_p99.cells[0].value, 29.8));
        assert!(close(ttft_p99.cells[1].ratio, 89.0 / 29.8));
        assert!(close(row(&c, "tbt_ms", "median").cells[1].ratio, 2.5));
        let tps = row(&c, "tps", "median");
        assert_eq!(tps.better, Better::Higher);
        assert!(close(tps.cells[0].value, 500.0));
        assert!(close(tps.cells[1].ratio, 0.4));
        assert!(close(
            row(&c, "request_throughput", "value").cells[1].ratio,
            0.5
        ));
        // Same data, budget and device: nothing to warn about.
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        let table = render_table(&c);
        assert!(table.contains("40.00 (2.00x)"), "{table}");
        assert!(table.contains("TTFT median (ms)"), "{table}");
        assert!(!table.contains("warning"), "{table}");
    }

    #[test]
    fn success_rate_counts_failures() {
        let a = in_process("a", &[10.0], &[1.0], 1.0);
        let mut r = testutil::report(vec![sample(0, 10.0, 10, &[1.0]), failed_sample(1)], 1.0);
        r.dataset.sha256 = "bbbb".into();
        r.config.max_new_tokens = 24;
        r.config.ignore_eos = true;
        r.engine.device = "cuda:0".into();
        r.status = RunStatus::Interrupted;
        let c = compare(&[a, named("b", AnyReport::InProcess(Box::new(r)))]);
        assert_eq!((c.columns[1].succeeded, c.columns[1].attempted), (1, 2));
        assert!(close(Some(c.columns[1].success_rate), 0.5));
        let w = c.warnings.join("\n");
        assert!(w.contains("different datasets"), "{w}");
        assert!(w.contains("different token budgets"), "{w}");
        assert!(w.contains("max_new_tokens 24 + ignore_eos"), "{w}");
        assert!(w.contains("different devices"), "{w}");
        assert!(w.contains("b was interrupted"), "{w}");
        let csv = render_csv(&c).unwrap();
        assert!(csv.contains("b,b,candle,random:tiny-llama,f32,cuda:0,prompts_x,,,success_rate,fraction,value,0.5,a,0.5"), "{csv}");
    }

    #[test]
    fn serving_levels_are_matched_by_concurrency() {
        // a@c1 TTFT median 10, p99 20; a@c8 median 40, p99 100.
        // b@c1 median 15 (1.5x of a@c1), b@c8 median 30 (0.75x of a@c8), p99 150 (1.5x).
        // b@c16 has no counterpart in a: no ratio. Output throughput b@c8 300 vs 200 → 1.5x.
        let a = testutil::serving(vec![
            level(1, summary(10.0, 20.0), summary(2.0, 3.0), 50.0, vec![]),
            level(8, summary(40.0, 100.0), summary(4.0, 8.0), 200.0, vec![]),
        ]);
        let b = testutil::serving(vec![
            level(1, summary(15.0, 30.0), summary(2.0, 3.0), 60.0, vec![]),
            level(8, summary(30.0, 150.0), summary(2.0, 6.0), 300.0, vec![]),
            level(16, summary(50.0, 200.0), summary(3.0, 9.0), 350.0, vec![]),
        ]);
        let c = compare(&[
            named("a", AnyReport::Serving(Box::new(a))),
            named("b", AnyReport::Serving(Box::new(b))),
        ]);
        let labels: Vec<&str> = c.columns.iter().map(|x| x.label.as_str()).collect();
        assert_eq!(labels, ["a@c1", "a@c8", "b@c1", "b@c8", "b@c16"]);
        assert_eq!(c.columns[3].baseline.as_deref(), Some("a@c8"));
        let med = row(&c, "ttft_ms", "median");
        assert!(close(med.cells[2].ratio, 1.5));
        assert!(close(med.cells[3].ratio, 0.75));
        assert_eq!(med.cells[4].ratio, None);
        assert!(close(row(&c, "ttft_ms", "p99").cells[3].ratio, 1.5));
        // ITL shares the TBT row: b@c8 2 ms vs a@c8 4 ms.
        assert!(close(row(&c, "tbt_ms", "median").cells[3].ratio, 0.5));
        assert!(close(
            row(&c, "output_throughput", "value").cells[3].ratio,
            1.5
        ));
        // In-process only metrics are absent for servers.
        assert!(c.rows.iter().all(|r| r.metric != "tps"));
        assert!(c.warnings.iter().any(|w| w.starts_with("b@c16")));

        let md = render_markdown(&c);
        assert!(
            md.starts_with("|  | a@c1 | a@c8 | b@c1 | b@c8 | b@c16 |\n"),
            "{md}"
        );
        assert!(
            md.contains(
                "| TTFT median (ms) | 10.00 | 40.00 | 15.00 (1.50x) | 30.00 (0.75x) | 50.00 |"
            ),
            "{md}"
        );
    }

    #[test]
    fn in_process_baseline_serves_every_level() {
        // An in-process run (TTFT median 20) against a server at c1 (10) and c4 (40).
        let a = in_process("local", &[10.0, 20.0, 30.0], &[2.0], 1.0);
        let s = testutil::serving(vec![
            level(1, summary(10.0, 20.0), summary(2.0, 3.0), 50.0, vec![]),
            level(4, summary(40.0, 50.0), summary(2.0, 3.0), 50.0, vec![]),
        ]);
        let c = compare(&[a, named("srv", AnyReport::Serving(Box::new(s)))]);
        let med = row(&c, "ttft_ms", "median");
        assert!(close(med.cells[1].ratio, 0.5));
        assert!(close(med.cells[2].ratio, 2.0));
        assert!(c.warnings.iter().any(|w| w.contains("different devices")));
    }

    #[test]
    fn per_chunk_itl_is_labelled_and_warned_beside_in_process_tbt() {
        let a = in_process("local", &[10.0, 20.0, 30.0], &[2.0], 1.0);
        let mut l = level(1, summary(10.0, 20.0), summary(2.0, 3.0), 50.0, vec![]);
        let s = testutil::serving(vec![l.clone()]);
        let c = compare(&[a.clone(), named("srv", AnyReport::Serving(Box::new(s)))]);
        assert!(!c.warnings.iter().any(|w| w.contains("per chunk")));
        l.itl_basis = "per chunk".into();
        let s = testutil::serving(vec![l]);
        let c = compare(&[a, named("srv", AnyReport::Serving(Box::new(s)))]);
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("ITL is per chunk") && w.contains("in-process per-token TBT")),
            "{:?}",
            c.warnings
        );
        assert!(c
            .rows
            .iter()
            .any(|r| r.metric == "tbt_ms" && r.name.contains("per chunk")));
    }

    #[test]
    fn json_has_columns_rows_and_warnings() {
        let a = in_process("a", &[10.0], &[1.0], 1.0);
        let b = in_process("b", &[20.0], &[1.0], 1.0);
        let json = render_json(&compare(&[a, b])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["columns"][1]["baseline"], "a");
        let ttft = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metric"] == "ttft_ms" && r["stat"] == "median")
            .unwrap();
        assert_eq!(ttft["cells"][1]["ratio"], 2.0);
        assert_eq!(ttft["better"], "lower");
        assert!(v["warnings"].as_array().unwrap().is_empty());
    }
}
