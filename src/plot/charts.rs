//! Which charts a set of reports gets, built from the raw per-sample numbers.
//!
//! Every in-process report is one series; every load level of a serving report is one series
//! (`name@c8`), as in `compare`. Sweep charts (throughput and latency against concurrency)
//! draw one line per serving report.

use crate::report::read::{level_suffix, AnyReport, NamedReport};
use crate::report::serving::{LevelReport, ServingReport};
use crate::report::table::num;
use crate::stats::percentile_sorted;

use super::svg::{color, Axis, Chart, LegendItem, LegendStyle, Mark};

/// Points drawn per series at most in strip and scatter plots (the SVG stays small; a
/// deterministic stride keeps the spread of the data).
const MAX_POINTS: usize = 1500;
/// Histogram bins.
const BINS: usize = 40;

/// A chart and the name its files get (`<prefix>_<name>.svg`).
#[derive(Debug, Clone)]
pub struct NamedChart {
    pub name: &'static str,
    pub chart: Chart,
}

/// The raw numbers of one series.
struct Series {
    label: String,
    /// TTFT of every successful sample or request, in run order.
    ttft: Vec<f64>,
    /// Per sample, the gaps between its tokens (TBT in-process, per-token ITL for servers).
    gaps: Vec<Vec<f64>>,
    /// (input tokens, TTFT) per sample where both are known.
    input_ttft: Vec<(f64, f64)>,
    serving: bool,
}

fn series_of(reports: &[NamedReport]) -> Vec<Series> {
    let mut out = Vec::new();
    for named in reports {
        match &named.report {
            AnyReport::InProcess(r) => {
                let ok: Vec<_> = r
                    .samples
                    .iter()
                    .filter_map(|s| s.metrics.as_ref())
                    .collect();
                out.push(Series {
                    label: named.label.clone(),
                    ttft: ok.iter().map(|m| m.ttft_ms).collect(),
                    gaps: ok.iter().map(|m| m.tbt_ms.clone()).collect(),
                    input_ttft: ok
                        .iter()
                        .map(|m| (m.input_tokens as f64, m.ttft_ms))
                        .collect(),
                    serving: false,
                });
            }
            AnyReport::Serving(r) => {
                for level in &r.levels {
                    let ok: Vec<_> = level.requests.iter().filter(|q| q.ok).collect();
                    out.push(Series {
                        label: format!("{}{}", named.label, level_suffix(level)),
                        ttft: ok.iter().filter_map(|q| q.ttft_ms).collect(),
                        gaps: ok.iter().map(|q| q.itl_ms.clone()).collect(),
                        input_ttft: ok
                            .iter()
                            .filter_map(|q| Some((q.input_tokens? as f64, q.ttft_ms?)))
                            .collect(),
                        serving: true,
                    });
                }
            }
        }
    }
    out
}

/// Every chart the reports have data for, in reading order.
pub fn charts(reports: &[NamedReport]) -> Vec<NamedChart> {
    let series = series_of(reports);
    let gap_name = match (
        series.iter().any(|s| s.serving),
        series.iter().all(|s| s.serving),
    ) {
        (false, _) => "TBT",
        (true, true) => "ITL",
        (true, false) => "TBT / ITL",
    };
    let mut out = Vec::new();
    let mut push = |name: &'static str, chart: Option<Chart>| {
        if let Some(chart) = chart {
            out.push(NamedChart { name, chart });
        }
    };
    push("ttft", ttft_distribution(&series));
    push("tbt", gap_histogram(&series, gap_name));
    push("tbt_by_position", gap_by_position(&series, gap_name));
    push("ttft_vs_input", ttft_vs_input(&series));
    let sweeps: Vec<(&str, &ServingReport)> = reports
        .iter()
        .filter_map(|n| match &n.report {
            AnyReport::Serving(r) => Some((n.label.as_str(), r.as_ref())),
            AnyReport::InProcess(_) => None,
        })
        .collect();
    if let Some(x) = sweep_axis(&sweeps) {
        push("throughput", throughput_sweep(&sweeps, x));
        push(
            "ttft_vs_load",
            latency_sweep(&sweeps, x, "ttft_vs_load", "TTFT", |l| l.ttft_ms.as_ref()),
        );
        push(
            "itl_vs_load",
            latency_sweep(&sweeps, x, "itl_vs_load", "ITL", |l| l.itl_ms.as_ref()),
        );
    }
    out
}

fn swatches(series: &[Series]) -> Vec<LegendItem> {
    series
        .iter()
        .enumerate()
        .map(|(i, s)| LegendItem {
            label: s.label.clone(),
            color: color(i),
            style: LegendStyle::Swatch,
        })
        .collect()
}

fn lines(series: &[Series]) -> Vec<LegendItem> {
    series
        .iter()
        .enumerate()
        .map(|(i, s)| LegendItem {
            label: s.label.clone(),
            color: color(i),
            style: LegendStyle::Solid,
        })
        .collect()
}

/// Every `k`-th element so at most `max` remain.
fn thin<T: Copy>(v: &[T], max: usize) -> Vec<T> {
    let stride = v.len().div_ceil(max).max(1);
    v.iter().step_by(stride).copied().collect()
}

fn max_of(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.filter(|v| v.is_finite()).reduce(f64::max)
}

/// Box plot with the samples as a jittered strip, one slot per series.
fn ttft_distribution(series: &[Series]) -> Option<Chart> {
    let top = max_of(series.iter().flat_map(|s| s.ttft.iter().copied()))?;
    let mut marks = Vec::new();
    for (i, s) in series.iter().enumerate() {
        if s.ttft.is_empty() {
            continue;
        }
        let mut sorted = s.ttft.clone();
        sorted.sort_by(f64::total_cmp);
        marks.push(Mark::Box {
            x: i as f64,
            q1: percentile_sorted(&sorted, 25.0),
            median: percentile_sorted(&sorted, 50.0),
            q3: percentile_sorted(&sorted, 75.0),
            lo: sorted[0],
            hi: sorted[sorted.len() - 1],
            color: color(i),
        });
        let points = thin(&s.ttft, MAX_POINTS)
            .into_iter()
            .enumerate()
            .map(|(k, v)| (i as f64 + jitter(k), v))
            .collect();
        marks.push(Mark::Points {
            points,
            color: color(i),
            radius: 2.6,
            opacity: 0.55,
        });
    }
    Some(Chart {
        id: "ttft".into(),
        title: "Time to first token".into(),
        subtitle: Some(
            "box: quartiles and median; whiskers: min and max; dots: every request".into(),
        ),
        x: Axis::categories("run", series.iter().map(|s| s.label.clone()).collect()),
        y: Axis::linear("TTFT (ms)", 0.0, top),
        marks,
        legend: swatches(series),
    })
}

/// A spread in [-0.16, 0.16] that looks random but is the same on every run.
fn jitter(k: usize) -> f64 {
    ((k as f64 * 0.618_033_988_75).fract() - 0.5) * 0.32
}

/// Outline histogram of every token gap, as a share of each series' gaps so runs of different
/// lengths compare. The slowest 1% of the widest series is cut off (and counted) so one stall
/// does not squeeze the rest into a single bin.
fn gap_histogram(series: &[Series], name: &str) -> Option<Chart> {
    let pooled: Vec<Vec<f64>> = series
        .iter()
        .map(|s| {
            let mut v: Vec<f64> = s
                .gaps
                .iter()
                .flatten()
                .copied()
                .filter(|x| x.is_finite())
                .collect();
            v.sort_by(f64::total_cmp);
            v
        })
        .collect();
    let lo = pooled
        .iter()
        .filter_map(|v| v.first())
        .copied()
        .reduce(f64::min)?;
    let max = pooled
        .iter()
        .filter_map(|v| v.last())
        .copied()
        .reduce(f64::max)?;
    let mut hi = pooled
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| percentile_sorted(v, 99.0))
        .fold(lo, f64::max);
    if hi <= lo {
        hi = if max > lo {
            max
        } else {
            lo + lo.abs().max(1.0) * 0.1
        };
    }
    let width = (hi - lo) / BINS as f64;
    let edges: Vec<f64> = (0..=BINS).map(|i| lo + width * i as f64).collect();
    let mut hidden = 0usize;
    let mut marks = Vec::new();
    let mut top: f64 = 0.0;
    for (i, v) in pooled.iter().enumerate() {
        if v.is_empty() {
            continue;
        }
        let mut counts = vec![0usize; BINS];
        for &x in v {
            if x > hi {
                hidden += 1;
                continue;
            }
            let b = (((x - lo) / width) as usize).min(BINS - 1);
            counts[b] += 1;
        }
        let heights: Vec<f64> = counts
            .iter()
            .map(|&c| c as f64 * 100.0 / v.len() as f64)
            .collect();
        top = top.max(heights.iter().copied().fold(0.0, f64::max));
        marks.push(Mark::Steps {
            edges: edges.clone(),
            heights,
            color: color(i),
        });
    }
    let mut subtitle = format!("share of each run's token gaps per {} ms bin", num(width));
    if hidden > 0 {
        subtitle.push_str(&format!(
            "; {hidden} {} above {} ms (max {} ms) not shown",
            if hidden == 1 { "gap" } else { "gaps" },
            num(hi),
            num(max)
        ));
    }
    Some(Chart {
        id: "tbt".into(),
        title: format!("{name} distribution"),
        subtitle: Some(subtitle),
        x: Axis::linear(format!("{name} (ms)"), lo, hi),
        // Headroom so the tallest bar does not touch the frame.
        y: Axis::linear("share of tokens (%)", 0.0, top * 1.05),
        marks,
        legend: swatches(series),
    })
}

/// Median gap at each output position over the samples that reached it: a rising line means
/// decode slows down as the KV cache grows.
fn gap_by_position(series: &[Series], name: &str) -> Option<Chart> {
    let mut marks = Vec::new();
    let (mut max_x, mut max_y) = (2.0f64, 0.0f64);
    for (i, s) in series.iter().enumerate() {
        let longest = s.gaps.iter().map(Vec::len).max().unwrap_or(0);
        let mut points = Vec::with_capacity(longest);
        for pos in 0..longest {
            let mut at: Vec<f64> = s.gaps.iter().filter_map(|g| g.get(pos).copied()).collect();
            at.sort_by(f64::total_cmp);
            // Gap `pos` is the wait for output token `pos + 2` (token 1 arrives at TTFT).
            points.push(((pos + 2) as f64, percentile_sorted(&at, 50.0)));
        }
        if points.is_empty() {
            continue;
        }
        max_x = max_x.max(points.len() as f64 + 1.0);
        max_y = max_y.max(points.iter().map(|p| p.1).fold(0.0, f64::max));
        marks.push(Mark::Line {
            dots: points.len() <= 40,
            points,
            color: color(i),
            dashed: false,
        });
    }
    if marks.is_empty() {
        return None;
    }
    Some(Chart {
        id: "tbt_by_position".into(),
        title: format!("{name} by output token position"),
        subtitle: Some(
            "median over samples of the wait for each token; rising = decode slows as the KV cache grows"
                .into(),
        ),
        x: Axis::linear("output token position", 1.0, max_x),
        y: Axis::linear(format!("median {name} (ms)"), 0.0, max_y),
        marks,
        legend: lines(series),
    })
}

/// One dot per sample: does a longer prompt take longer to the first token?
fn ttft_vs_input(series: &[Series]) -> Option<Chart> {
    let max_x = max_of(series.iter().flat_map(|s| s.input_ttft.iter().map(|p| p.0)))?;
    let max_y = max_of(series.iter().flat_map(|s| s.input_ttft.iter().map(|p| p.1)))?;
    let marks = series
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.input_ttft.is_empty())
        .map(|(i, s)| Mark::Points {
            points: thin(&s.input_ttft, MAX_POINTS),
            color: color(i),
            radius: 3.2,
            opacity: 0.7,
        })
        .collect();
    Some(Chart {
        id: "ttft_vs_input".into(),
        title: "Time to first token against prompt length".into(),
        subtitle: Some("one dot per request; input tokens as the model ran them".into()),
        x: Axis::linear("input tokens", 0.0, max_x),
        y: Axis::linear("TTFT (ms)", 0.0, max_y),
        marks,
        legend: swatches(series),
    })
}

/// What the sweep charts put on x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SweepX {
    Concurrency,
    RequestRate,
}

impl SweepX {
    fn of(self, l: &LevelReport) -> Option<f64> {
        match self {
            SweepX::Concurrency => l.concurrency.map(|c| c as f64),
            SweepX::RequestRate => l.request_rate,
        }
    }

    fn label(self) -> &'static str {
        match self {
            SweepX::Concurrency => "concurrency (requests in flight)",
            SweepX::RequestRate => "request rate (requests/s)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            SweepX::Concurrency => "concurrency",
            SweepX::RequestRate => "request rate",
        }
    }
}

/// Concurrency when every level has one, else the request rate when every level has one.
fn sweep_axis(sweeps: &[(&str, &ServingReport)]) -> Option<SweepX> {
    let levels = || sweeps.iter().flat_map(|(_, r)| r.levels.iter());
    levels().next()?;
    [SweepX::Concurrency, SweepX::RequestRate]
        .into_iter()
        .find(|x| levels().all(|l| x.of(l).is_some()))
}

fn sweep_points(
    r: &ServingReport,
    x: SweepX,
    y: impl Fn(&LevelReport) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let mut p: Vec<(f64, f64)> = r
        .levels
        .iter()
        .filter_map(|l| Some((x.of(l)?, y(l)?)))
        .collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    p
}

fn throughput_sweep(sweeps: &[(&str, &ServingReport)], x: SweepX) -> Option<Chart> {
    let mut marks = Vec::new();
    let mut legend = Vec::new();
    let (mut max_x, mut max_y) = (0.0f64, 0.0f64);
    for (i, (label, r)) in sweeps.iter().enumerate() {
        let points = sweep_points(r, x, |l| Some(l.output_throughput));
        if points.is_empty() {
            continue;
        }
        max_x = points.iter().map(|p| p.0).fold(max_x, f64::max);
        max_y = points.iter().map(|p| p.1).fold(max_y, f64::max);
        marks.push(Mark::Line {
            points,
            color: color(i),
            dashed: false,
            dots: true,
        });
        legend.push(LegendItem {
            label: label.to_string(),
            color: color(i),
            style: LegendStyle::Solid,
        });
    }
    if marks.is_empty() {
        return None;
    }
    Some(Chart {
        id: "throughput".into(),
        title: format!("Output throughput against {}", x.short()),
        subtitle: Some(
            "generated tokens of successful requests per second of the level's wall time".into(),
        ),
        x: Axis::linear(x.label(), 0.0, max_x),
        y: Axis::linear("output throughput (tok/s)", 0.0, max_y),
        marks,
        legend,
    })
}

fn latency_sweep(
    sweeps: &[(&str, &ServingReport)],
    x: SweepX,
    id: &str,
    name: &str,
    metric: impl Fn(&LevelReport) -> Option<&crate::stats::Summary>,
) -> Option<Chart> {
    let mut marks = Vec::new();
    let mut legend = Vec::new();
    let (mut max_x, mut max_y) = (0.0f64, 0.0f64);
    for (i, (label, r)) in sweeps.iter().enumerate() {
        for (stat, dashed) in [("median", false), ("p99", true)] {
            let points = sweep_points(r, x, |l| {
                metric(l).map(|s| if dashed { s.p99 } else { s.median })
            });
            if points.is_empty() {
                continue;
            }
            max_x = points.iter().map(|p| p.0).fold(max_x, f64::max);
            max_y = points.iter().map(|p| p.1).fold(max_y, f64::max);
            marks.push(Mark::Line {
                points,
                color: color(i),
                dashed,
                dots: true,
            });
            legend.push(LegendItem {
                label: format!("{label} {stat}"),
                color: color(i),
                style: if dashed {
                    LegendStyle::Dashed
                } else {
                    LegendStyle::Solid
                },
            });
        }
    }
    if marks.is_empty() {
        return None;
    }
    Some(Chart {
        id: id.into(),
        title: format!("{name} against {}", x.short()),
        subtitle: Some("solid: median; dashed: p99".into()),
        x: Axis::linear(x.label(), 0.0, max_x),
        y: Axis::linear(format!("{name} (ms)"), 0.0, max_y),
        marks,
        legend,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testutil::{self, level, named, request, sample, summary};

    fn in_process(label: &str) -> NamedReport {
        let samples = vec![
            sample(0, 10.0, 20, &[2.0, 3.0, 4.0]),
            sample(1, 20.0, 40, &[2.0, 5.0]),
            sample(2, 30.0, 60, &[2.0]),
        ];
        named(
            label,
            AnyReport::InProcess(Box::new(testutil::report(samples, 1.0))),
        )
    }

    fn serving(label: &str) -> NamedReport {
        let reqs = || {
            vec![
                request(0, 50.0, 30, &[4.0, 4.0]),
                request(1, 70.0, 60, &[6.0]),
            ]
        };
        named(
            label,
            AnyReport::Serving(Box::new(testutil::serving(vec![
                level(1, summary(50.0, 60.0), summary(4.0, 6.0), 100.0, reqs()),
                level(4, summary(80.0, 120.0), summary(5.0, 9.0), 300.0, reqs()),
            ]))),
        )
    }

    fn find<'a>(charts: &'a [NamedChart], name: &str) -> &'a Chart {
        &charts
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no chart {name}"))
            .chart
    }

    fn line_points(c: &Chart) -> Vec<Vec<(f64, f64)>> {
        c.marks
            .iter()
            .filter_map(|m| match m {
                Mark::Line { points, .. } => Some(points.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn in_process_charts_and_position_medians() {
        let charts = charts(&[in_process("a"), in_process("b")]);
        let names: Vec<&str> = charts.iter().map(|c| c.name).collect();
        assert_eq!(names, ["ttft", "tbt", "tbt_by_position", "ttft_vs_input"]);
        // Position 2: gaps 2, 2, 2 → 2; position 3: 3, 5 → 4; position 4: 4 → 4.
        let lines = line_points(find(&charts, "tbt_by_position"));
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], vec![(2.0, 2.0), (3.0, 4.0), (4.0, 4.0)]);
        let ttft = find(&charts, "ttft");
        match &ttft.marks[0] {
            Mark::Box { median, lo, hi, .. } => assert_eq!((*median, *lo, *hi), (20.0, 10.0, 30.0)),
            m => panic!("{m:?}"),
        }
        // Histogram heights are shares of each series' gaps. Gaps 2, 2, 2, 3, 4, 5: p99 = 4.95,
        // so the 5 is cut off and counted, and 5 of 6 gaps (83.3 %) are drawn per series.
        let tbt = find(&charts, "tbt");
        for m in &tbt.marks {
            if let Mark::Steps { heights, .. } = m {
                assert!((heights.iter().sum::<f64>() - 500.0 / 6.0).abs() < 1e-9);
            }
        }
        let sub = tbt.subtitle.as_deref().unwrap_or_default();
        assert!(sub.contains("2 gaps above 4.95 ms (max 5.00 ms)"), "{sub}");
        assert_eq!(find(&charts, "ttft_vs_input").legend.len(), 2);
    }

    #[test]
    fn serving_reports_add_sweeps() {
        let charts = charts(&[serving("s"), serving("t")]);
        let names: Vec<&str> = charts.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "ttft",
                "tbt",
                "tbt_by_position",
                "ttft_vs_input",
                "throughput",
                "ttft_vs_load",
                "itl_vs_load"
            ]
        );
        assert_eq!(find(&charts, "tbt").title, "ITL distribution");
        // One series per level in the distributions: s@c1, s@c4, t@c1, t@c4.
        let Scale::Categories(cats) = &find(&charts, "ttft").x.scale else {
            panic!("categorical x")
        };
        assert_eq!(cats, &["s@c1", "s@c4", "t@c1", "t@c4"]);
        let tp = line_points(find(&charts, "throughput"));
        assert_eq!(tp[0], vec![(1.0, 100.0), (4.0, 300.0)]);
        // Median and p99 per report.
        let ttft = find(&charts, "ttft_vs_load");
        assert_eq!(line_points(ttft)[1], vec![(1.0, 60.0), (4.0, 120.0)]);
        assert_eq!(ttft.legend.len(), 4);
        assert_eq!(ttft.legend[1].label, "s p99");
    }

    #[test]
    fn empty_reports_get_no_charts() {
        let r = testutil::report(vec![testutil::failed_sample(0)], 1.0);
        assert!(charts(&[named("x", AnyReport::InProcess(Box::new(r)))]).is_empty());
    }

    use super::super::svg::Scale;
}
