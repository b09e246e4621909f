//! `vlmbench plot` (and `run --plots`): charts of reports as SVG and PNG files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{PlotArgs, PlotFormat};
use crate::fsutil::parent_dir;
use crate::plot::charts::charts;
use crate::plot::png::PngRenderer;
use crate::plot::write_charts;
use crate::report::read::{read_named, AnyReport, NamedReport};
use crate::report::serving::ServingReport;
use crate::report::Report;

pub fn execute(args: PlotArgs) -> Result<ExitCode> {
    let reports = read_named(&args.reports)?;
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => parent_dir(&args.reports[0]),
    };
    let prefix = match (&args.name, reports.as_slice()) {
        (Some(n), _) => n.clone(),
        (None, [one]) => one.label.clone(),
        (None, _) => "compare".into(),
    };
    let (svg, png) = match args.format {
        PlotFormat::Svg => (true, false),
        PlotFormat::Png => (false, true),
        PlotFormat::Both => (true, true),
    };
    write(&reports, &dir, &prefix, svg, png)?;
    Ok(ExitCode::SUCCESS)
}

/// `run --plots`: the charts of a just-written in-process report, beside it.
pub fn beside_report(report: &Report, json_path: &Path) -> Result<()> {
    beside(AnyReport::InProcess(Box::new(report.clone())), json_path)
}

/// `run --backend openai --plots`: the same for a serving report.
pub fn beside_serving_report(report: &ServingReport, json_path: &Path) -> Result<()> {
    beside(AnyReport::Serving(Box::new(report.clone())), json_path)
}

fn beside(report: AnyReport, json_path: &Path) -> Result<()> {
    let label = json_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    let named = NamedReport {
        label: label.clone(),
        path: json_path.to_path_buf(),
        report,
    };
    write(&[named], &parent_dir(json_path), &label, true, true)
}

fn write(reports: &[NamedReport], dir: &Path, prefix: &str, svg: bool, png: bool) -> Result<()> {
    let charts = charts(reports);
    if charts.is_empty() {
        bail!("nothing to plot: the reports hold no successful samples");
    }
    let renderer = png.then(PngRenderer::new);
    if let Some(r) = &renderer {
        if !r.has_fonts {
            eprintln!(
                "warning: no fonts found, so the PNG charts have no text (install a font package such as fonts-dejavu-core); the SVG charts are complete"
            );
        }
    }
    let written: Vec<PathBuf> = write_charts(&charts, dir, prefix, svg, renderer.as_ref())?;
    for p in &written {
        eprintln!("plot: {}", p.display());
    }
    Ok(())
}
