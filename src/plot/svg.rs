//! A tiny SVG chart builder: linear or categorical axes with "nice" ticks, lines, points,
//! boxes and histogram outlines, a title and a legend. Enough for vlmbench's charts, small
//! enough to read; the output is plain SVG 1.1 that browsers and resvg both render.

use std::fmt::Write as _;

/// Canvas size in SVG user units (pixels at 1x).
pub const WIDTH: f64 = 820.0;
pub const HEIGHT: f64 = 460.0;

/// Fonts tried in order; DejaVu Sans is what the PNG renderer normally finds on Linux.
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";

const MARGIN_LEFT: f64 = 78.0;
const MARGIN_TOP: f64 = 62.0;
const MARGIN_BOTTOM: f64 = 58.0;
const MARGIN_RIGHT: f64 = 24.0;
const LEGEND_WIDTH: f64 = 190.0;
const CLIP_SLACK: f64 = 6.0;

/// Ten colours that stay distinct for most colour-blind readers (Tableau 10).
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// The colour of series `i` (cycles after ten).
pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

#[derive(Debug, Clone)]
pub enum Scale {
    /// Numbers from `min` to `max` (widened to nice tick values when drawn).
    Linear { min: f64, max: f64 },
    /// Named slots at x = 0, 1, 2...
    Categories(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Axis {
    /// Title with unit, e.g. `TTFT (ms)`.
    pub label: String,
    pub scale: Scale,
}

impl Axis {
    pub fn linear(label: impl Into<String>, min: f64, max: f64) -> Self {
        Self {
            label: label.into(),
            scale: Scale::Linear { min, max },
        }
    }

    pub fn categories(label: impl Into<String>, names: Vec<String>) -> Self {
        Self {
            label: label.into(),
            scale: Scale::Categories(names),
        }
    }
}

/// Something drawn in the plot area, in data coordinates.
#[derive(Debug, Clone)]
pub enum Mark {
    Line {
        points: Vec<(f64, f64)>,
        color: &'static str,
        dashed: bool,
        /// Draw a dot at every point too (sparse series such as concurrency sweeps).
        dots: bool,
    },
    Points {
        points: Vec<(f64, f64)>,
        color: &'static str,
        radius: f64,
        opacity: f64,
    },
    /// A box plot at category `x`: box from `q1` to `q3`, a median bar, whiskers to `lo`/`hi`.
    Box {
        x: f64,
        q1: f64,
        median: f64,
        q3: f64,
        lo: f64,
        hi: f64,
        color: &'static str,
    },
    /// A histogram outline: `heights[i]` over `[edges[i], edges[i + 1]]`.
    Steps {
        edges: Vec<f64>,
        heights: Vec<f64>,
        color: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegendStyle {
    Solid,
    Dashed,
    Swatch,
}

#[derive(Debug, Clone)]
pub struct LegendItem {
    pub label: String,
    pub color: &'static str,
    pub style: LegendStyle,
}

/// One chart; [`Chart::to_svg`] draws it.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Unique within a page: prefixes the ids inside the SVG (several charts share one HTML).
    pub id: String,
    pub title: String,
    pub subtitle: Option<String>,
    pub x: Axis,
    pub y: Axis,
    pub marks: Vec<Mark>,
    pub legend: Vec<LegendItem>,
}

/// An axis resolved to pixels: data → pixel mapping and tick positions with labels.
struct Resolved {
    lo: f64,
    hi: f64,
    px_lo: f64,
    px_hi: f64,
    ticks: Vec<(f64, String)>,
    categorical: bool,
}

impl Resolved {
    fn new(axis: &Axis, px_lo: f64, px_hi: f64) -> Self {
        match &axis.scale {
            Scale::Linear { min, max } => {
                let (lo, hi, step) = nice_range(*min, *max);
                let decimals = decimals_for(step);
                let n = ((hi - lo) / step).round() as usize;
                let ticks = (0..=n)
                    .map(|i| {
                        let v = lo + step * i as f64;
                        (v, format_tick(v, decimals))
                    })
                    .collect();
                Self {
                    lo,
                    hi,
                    px_lo,
                    px_hi,
                    ticks,
                    categorical: false,
                }
            }
            Scale::Categories(names) => Self {
                lo: -0.5,
                hi: names.len().max(1) as f64 - 0.5,
                px_lo,
                px_hi,
                ticks: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (i as f64, n.clone()))
                    .collect(),
                categorical: true,
            },
        }
    }

    fn px(&self, v: f64) -> f64 {
        self.px_lo + (v - self.lo) / (self.hi - self.lo) * (self.px_hi - self.px_lo)
    }

    /// Pixels per data unit (positive).
    fn scale(&self) -> f64 {
        ((self.px_hi - self.px_lo) / (self.hi - self.lo)).abs()
    }
}

/// Widens `[min, max]` to multiples of a 1-2-5 step giving about six ticks.
pub fn nice_range(min: f64, max: f64) -> (f64, f64, f64) {
    let (mut min, mut max) = if min.is_finite() && max.is_finite() {
        (min.min(max), min.max(max))
    } else {
        (0.0, 1.0)
    };
    if max - min < 1e-12 {
        let pad = if min.abs() > 1e-12 {
            min.abs() * 0.1
        } else {
            1.0
        };
        min -= pad;
        max += pad;
    }
    let raw = (max - min) / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let lo = (min / step).floor() * step;
    let hi = (max / step).ceil() * step;
    (lo, hi, step)
}

/// Decimals needed to tell ticks `step` apart (2.5 needs one, 0.25 two).
fn decimals_for(step: f64) -> usize {
    (0..=6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(6)
}

fn format_tick(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    // "-0" and "-0.0" read badly.
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

/// Escapes text for XML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Shortens a label to `max` characters.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A safe XML id fragment.
fn id_part(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

impl Chart {
    /// The chart as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let legend_w = if self.legend.is_empty() {
            0.0
        } else {
            LEGEND_WIDTH
        };
        let (left, right) = (MARGIN_LEFT, WIDTH - MARGIN_RIGHT - legend_w);
        let (top, bottom) = (MARGIN_TOP, HEIGHT - MARGIN_BOTTOM);
        let x = Resolved::new(&self.x, left, right);
        let y = Resolved::new(&self.y, bottom, top);
        let id = id_part(&self.id);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}" font-size="12" role="img" aria-label="{}">"#,
            esc(&self.title)
        );
        let _ = writeln!(s, "<title>{}</title>", esc(&self.title));
        let _ = writeln!(
            s,
            r##"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
        );
        // The clip keeps stray marks out of the margins; it is a little larger than the plot
        // area so dots on the axis limits are drawn whole.
        let _ = writeln!(
            s,
            r#"<defs><clipPath id="{id}-plot"><rect x="{}" y="{}" width="{}" height="{}"/></clipPath></defs>"#,
            left - CLIP_SLACK,
            top - CLIP_SLACK,
            right - left + 2.0 * CLIP_SLACK,
            bottom - top + 2.0 * CLIP_SLACK
        );
        // Title and subtitle.
        let _ = writeln!(
            s,
            r##"<text x="{left}" y="26" font-size="17" font-weight="bold" fill="#222222">{}</text>"##,
            esc(&self.title)
        );
        if let Some(sub) = &self.subtitle {
            let _ = writeln!(
                s,
                r##"<text x="{left}" y="46" font-size="12" fill="#555555">{}</text>"##,
                esc(&clip(sub, 120))
            );
        }
        // Grid and ticks.
        let _ = writeln!(s, r#"<g class="grid">"#);
        for (v, label) in &y.ticks {
            let py = y.px(*v);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{py:.2}" x2="{right}" y2="{py:.2}" stroke="#e4e4e4" stroke-width="1"/>"##
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.2}" y="{:.2}" text-anchor="end" fill="#333333">{}</text>"##,
                left - 8.0,
                py + 4.0,
                esc(label)
            );
        }
        let slot_chars = if x.categorical {
            ((right - left) / x.ticks.len().max(1) as f64 / 7.0).max(4.0) as usize
        } else {
            12
        };
        for (v, label) in &x.ticks {
            let px = x.px(*v);
            if !x.categorical {
                let _ = writeln!(
                    s,
                    r##"<line x1="{px:.2}" y1="{top}" x2="{px:.2}" y2="{bottom}" stroke="#f0f0f0" stroke-width="1"/>"##
                );
            }
            let _ = writeln!(
                s,
                r##"<line x1="{px:.2}" y1="{bottom}" x2="{px:.2}" y2="{}" stroke="#333333" stroke-width="1"/>"##,
                bottom + 5.0
            );
            let _ = writeln!(
                s,
                r##"<text x="{px:.2}" y="{}" text-anchor="middle" fill="#333333">{}</text>"##,
                bottom + 19.0,
                esc(&clip(label, slot_chars))
            );
        }
        let _ = writeln!(s, "</g>");
        // Axes and their titles.
        let _ = writeln!(
            s,
            r##"<path d="M{left},{top} V{bottom} H{right}" fill="none" stroke="#333333" stroke-width="1.2"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.2}" y="{}" text-anchor="middle" font-size="13" fill="#222222">{}</text>"##,
            (left + right) / 2.0,
            HEIGHT - 14.0,
            esc(&self.x.label)
        );
        let cy = (top + bottom) / 2.0;
        let _ = writeln!(
            s,
            r##"<text x="20" y="{cy:.2}" text-anchor="middle" font-size="13" fill="#222222" transform="rotate(-90 20 {cy:.2})">{}</text>"##,
            esc(&self.y.label)
        );
        // Data.
        let _ = writeln!(s, r#"<g class="marks" clip-path="url(#{id}-plot)">"#);
        for m in &self.marks {
            draw_mark(&mut s, m, &x, &y);
        }
        let _ = writeln!(s, "</g>");
        if !self.legend.is_empty() {
            self.draw_legend(&mut s, right + 16.0, top);
        }
        s.push_str("</svg>\n");
        s
    }

    fn draw_legend(&self, s: &mut String, lx: f64, top: f64) {
        let _ = writeln!(s, r#"<g class="legend">"#);
        for (i, item) in self.legend.iter().enumerate() {
            let ly = top + 8.0 + i as f64 * 20.0;
            match item.style {
                LegendStyle::Swatch => {
                    let _ = writeln!(
                        s,
                        r#"<rect x="{lx}" y="{:.2}" width="18" height="11" fill="{}" fill-opacity="0.75"/>"#,
                        ly - 5.5,
                        item.color
                    );
                }
                LegendStyle::Solid | LegendStyle::Dashed => {
                    let dash = if item.style == LegendStyle::Dashed {
                        r#" stroke-dasharray="5 3""#
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        s,
                        r#"<line x1="{lx}" y1="{ly:.2}" x2="{}" y2="{ly:.2}" stroke="{}" stroke-width="2.5"{dash}/>"#,
                        lx + 18.0,
                        item.color
                    );
                }
            }
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{:.2}" fill="#222222">{}</text>"##,
                lx + 24.0,
                ly + 4.0,
                esc(&clip(&item.label, 24))
            );
        }
        let _ = writeln!(s, "</g>");
    }
}

fn draw_mark(s: &mut String, m: &Mark, x: &Resolved, y: &Resolved) {
    match m {
        Mark::Line {
            points,
            color,
            dashed,
            dots,
        } => {
            if points.is_empty() {
                return;
            }
            let mut d = String::new();
            for (i, (px, py)) in points.iter().enumerate() {
                let _ = write!(
                    d,
                    "{}{:.2},{:.2}",
                    if i == 0 { "M" } else { " L" },
                    x.px(*px),
                    y.px(*py)
                );
            }
            let dash = if *dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round"{dash}/>"#
            );
            if *dots {
                for (px, py) in points {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.2}" cy="{:.2}" r="3.5" fill="{color}"/>"#,
                        x.px(*px),
                        y.px(*py)
                    );
                }
            }
        }
        Mark::Points {
            points,
            color,
            radius,
            opacity,
        } => {
            let _ = writeln!(s, r#"<g fill="{color}" fill-opacity="{opacity}">"#);
            for (px, py) in points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.2}" cy="{:.2}" r="{radius}"/>"#,
                    x.px(*px),
                    y.px(*py)
                );
            }
            let _ = writeln!(s, "</g>");
        }
        Mark::Box {
            x: cx,
            q1,
            median,
            q3,
            lo,
            hi,
            color,
        } => {
            let half = 0.22 * x.scale();
            let c = x.px(*cx);
            let (y1, y3, ym) = (y.px(*q1), y.px(*q3), y.px(*median));
            let _ = writeln!(
                s,
                r#"<line x1="{c:.2}" y1="{:.2}" x2="{c:.2}" y2="{y1:.2}" stroke="{color}" stroke-width="1.5"/>"#,
                y.px(*lo)
            );
            let _ = writeln!(
                s,
                r#"<line x1="{c:.2}" y1="{y3:.2}" x2="{c:.2}" y2="{:.2}" stroke="{color}" stroke-width="1.5"/>"#,
                y.px(*hi)
            );
            for v in [*lo, *hi] {
                let _ = writeln!(
                    s,
                    r#"<line x1="{:.2}" y1="{:.2}" x2="{:.2}" y2="{:.2}" stroke="{color}" stroke-width="1.5"/>"#,
                    c - half / 2.0,
                    y.px(v),
                    c + half / 2.0,
                    y.px(v)
                );
            }
            let _ = writeln!(
                s,
                r#"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="{color}" fill-opacity="0.18" stroke="{color}" stroke-width="1.5"/>"#,
                c - half,
                y3.min(y1),
                2.0 * half,
                (y1 - y3).abs()
            );
            let _ = writeln!(
                s,
                r#"<line x1="{:.2}" y1="{ym:.2}" x2="{:.2}" y2="{ym:.2}" stroke="{color}" stroke-width="3"/>"#,
                c - half,
                c + half
            );
        }
        Mark::Steps {
            edges,
            heights,
            color,
        } => {
            if heights.is_empty() || edges.len() != heights.len() + 1 {
                return;
            }
            let base = y.px(0.0f64.max(y.lo));
            let mut d = format!("M{:.2},{base:.2}", x.px(edges[0]));
            for (i, h) in heights.iter().enumerate() {
                let _ = write!(d, " V{:.2} H{:.2}", y.px(*h), x.px(edges[i + 1]));
            }
            let _ = write!(d, " V{base:.2}");
            let _ = writeln!(
                s,
                r#"<path d="{d}" fill="{color}" fill-opacity="0.12" stroke="{color}" stroke-width="2" stroke-linejoin="miter"/>"#
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_chart() -> Chart {
        Chart {
            id: "t&1".into(),
            title: "TTFT <by> run".into(),
            subtitle: Some("box: quartiles".into()),
            x: Axis::categories("run", vec!["a".into(), "b".into()]),
            y: Axis::linear("TTFT (ms)", 0.0, 37.0),
            marks: vec![
                Mark::Box {
                    x: 0.0,
                    q1: 1.0,
                    median: 2.0,
                    q3: 3.0,
                    lo: 0.5,
                    hi: 4.0,
                    color: color(0),
                },
                Mark::Points {
                    points: vec![(1.0, 10.0), (1.1, 30.0)],
                    color: color(1),
                    radius: 3.0,
                    opacity: 0.5,
                },
                Mark::Line {
                    points: vec![(0.0, 1.0), (1.0, 2.0)],
                    color: color(2),
                    dashed: true,
                    dots: true,
                },
                Mark::Steps {
                    edges: vec![0.0, 0.5, 1.0],
                    heights: vec![5.0, 7.0],
                    color: color(3),
                },
            ],
            legend: vec![
                LegendItem {
                    label: "a".into(),
                    color: color(0),
                    style: LegendStyle::Swatch,
                },
                LegendItem {
                    label: "b".into(),
                    color: color(1),
                    style: LegendStyle::Dashed,
                },
            ],
        }
    }

    #[test]
    fn nice_ranges_use_round_steps() {
        assert_eq!(nice_range(0.0, 37.0), (0.0, 40.0, 10.0));
        assert_eq!(nice_range(0.0, 1.0), (0.0, 1.0, 0.2));
        assert_eq!(nice_range(3.2, 8.9), (3.0, 9.0, 1.0));
        // A single value still gets a span.
        let (lo, hi, _) = nice_range(5.0, 5.0);
        assert!(lo < 5.0 && hi > 5.0);
        assert_eq!(decimals_for(2.5), 1);
        assert_eq!(decimals_for(0.25), 2);
        assert_eq!(decimals_for(10.0), 0);
    }

    #[test]
    fn svg_is_well_formed_with_ticks_and_escaped_text() {
        let svg = sample_chart().to_svg();
        let doc = roxmltree::Document::parse(&svg).expect("valid XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(root.attribute("width"), Some("820"));
        let texts: Vec<String> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::to_string))
            .collect();
        assert!(texts.contains(&"TTFT <by> run".to_string()), "{texts:?}");
        assert!(texts.contains(&"TTFT (ms)".to_string()));
        for tick in ["0", "10", "20", "30", "40", "a", "b"] {
            assert!(texts.contains(&tick.to_string()), "{tick} in {texts:?}");
        }
        // The clip path id is sanitised and referenced.
        assert!(svg.contains(r#"id="t-1-plot""#));
        assert!(svg.contains("url(#t-1-plot)"));
        // Box (rect), points (2 circles), line (path + 2 dots), steps (path).
        let circles = doc
            .descendants()
            .filter(|n| n.has_tag_name("circle"))
            .count();
        assert_eq!(circles, 4);
        assert!(svg.contains(r#"stroke-dasharray="6 4""#));
    }
}
