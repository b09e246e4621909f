//! `vlmbench html`: one self-contained page for one or more reports.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::HtmlArgs;
use crate::fsutil::write_atomic;
use crate::plot::charts::charts;
use crate::plot::html::render;
use crate::report::compare::compare;
use crate::report::read::read_named;

pub fn execute(args: HtmlArgs) -> Result<ExitCode> {
    let reports = read_named(&args.reports)?;
    let comparison = (reports.len() > 1).then(|| compare(&reports));
    let page = render(&reports, comparison.as_ref(), &charts(&reports));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.reports[0].with_extension("html"));
    write_atomic(&out, page.as_bytes())?;
    eprintln!("html: {}", out.display());
    Ok(ExitCode::SUCCESS)
}
