//! Charts and pages of reports read back: [`charts`] decides what to draw from the raw samples,
//! [`svg`] draws it as hand-written SVG, [`png`] rasterises that SVG with resvg, [`html`] puts
//! tables and charts on one self-contained page.
//!
//! Uses report, stats and fsutil. Must not depend on engine, bench, client or commands: what
//! it draws comes from report files only.

pub mod charts;
pub mod html;
pub mod png;
pub mod svg;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::fsutil::{sanitize_file_stem, write_atomic};
use charts::NamedChart;

/// Writes `<dir>/<prefix>_<chart>.svg` and, with a renderer, `.png` for every chart; returns
/// the files written.
pub fn write_charts(
    charts: &[NamedChart],
    dir: &Path,
    prefix: &str,
    svg: bool,
    png: Option<&png::PngRenderer>,
) -> Result<Vec<PathBuf>> {
    let prefix = sanitize_file_stem(prefix);
    let mut written = Vec::new();
    for c in charts {
        let doc = c.chart.to_svg();
        // Not `with_extension`: a prefix may hold dots (`run.v2`).
        let base = format!("{prefix}_{}", c.name);
        if svg {
            let path = dir.join(format!("{base}.svg"));
            write_atomic(&path, doc.as_bytes())?;
            written.push(path);
        }
        if let Some(renderer) = png {
            let path = dir.join(format!("{base}.png"));
            let bytes = renderer
                .render(&doc)
                .map_err(|e| e.context(format!("cannot draw {}", path.display())))?;
            write_atomic(&path, &bytes)?;
            written.push(path);
        }
    }
    Ok(written)
}
