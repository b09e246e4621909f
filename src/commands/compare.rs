//! `vlmbench compare`: read reports, put them side by side, print or write the result.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{CompareArgs, CompareFormat};
use crate::fsutil::write_atomic;
use crate::report::compare::{compare, render_csv, render_json, render_markdown, render_table};
use crate::report::read::read_named;

pub fn execute(args: CompareArgs) -> Result<ExitCode> {
    let reports = read_named(&args.reports)?;
    let comparison = compare(&reports);
    let text = match args.format {
        CompareFormat::Table => render_table(&comparison),
        CompareFormat::Md => render_markdown(&comparison),
        CompareFormat::Csv => render_csv(&comparison)?,
        CompareFormat::Json => render_json(&comparison)?,
    };
    match &args.out {
        Some(path) => {
            write_atomic(path, text.as_bytes())?;
            eprintln!("comparison: {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
