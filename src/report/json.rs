//! The full report as pretty JSON, written atomically.

use std::path::Path;

use anyhow::{Context, Result};

use super::Report;
use crate::fsutil::write_atomic;

pub fn write(report: &Report, path: &Path) -> Result<()> {
    write_atomic(path, &to_bytes(report)?)
}

/// The report as the bytes [`write`] writes.
pub fn to_bytes(report: &Report) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(report).context("cannot serialise the report")?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Reads a report written by [`write`].
pub fn read(path: &Path) -> Result<Report> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read report {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a vlmbench report", path.display()))
}
