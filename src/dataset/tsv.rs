//! Reading VLMEvalKit's TSV files: tab-separated, a header row, fields quoted with `"` where they
//! hold tabs, quotes or newlines. Records are streamed one at a time; large base64 cells are
//! never all in memory together.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine as _;

/// The strings pandas' `read_csv` turns into NaN by default (`keep_default_na=True`).
/// VLMEvalKit skips an option or hint whose cell is one of these, so vlmbench does too.
pub const PANDAS_NA_VALUES: &[&str] = &[
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// Whether pandas would read this cell as missing.
pub fn is_na(cell: &str) -> bool {
    PANDAS_NA_VALUES.contains(&cell)
}

/// An open TSV with its header.
pub struct TsvReader {
    path: PathBuf,
    reader: csv::Reader<std::fs::File>,
    header: Vec<String>,
}

impl TsvReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open TSV file {}", path.display()))?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(b'\t')
            .has_headers(true)
            .flexible(false)
            .from_reader(file);
        let header = reader
            .headers()
            .with_context(|| format!("{}: cannot read the header row", path.display()))?
            .iter()
            .enumerate()
            .map(|(i, h)| {
                if i == 0 {
                    h.trim_start_matches('\u{feff}')
                } else {
                    h
                }
                .trim()
                .to_string()
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            header,
        })
    }

    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// Position of a column, if present.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// Position of a column that must be present.
    pub fn require(&self, name: &str) -> Result<usize> {
        self.column(name).ok_or_else(|| {
            anyhow!(
                "{}: required column `{name}` is missing (header: {})",
                self.path.display(),
                self.header.join(", ")
            )
        })
    }

    /// The next record and the line it starts on, or `None` at the end.
    pub fn next_record(&mut self, record: &mut csv::StringRecord) -> Result<Option<u64>> {
        match self.reader.read_record(record) {
            Ok(true) => Ok(Some(record.position().map(|p| p.line()).unwrap_or(0))),
            Ok(false) => Ok(None),
            Err(e) => Err(anyhow!(
                "{}: {}",
                self.path.display(),
                describe_csv_error(&e)
            )),
        }
    }
}

fn describe_csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { pos, expected_len, len } => format!(
            "line {}: the row has {len} fields but the header has {expected_len} (a stray tab, or an unclosed quote earlier)",
            pos.as_ref().map(|p| p.line()).unwrap_or(0)
        ),
        csv::ErrorKind::Utf8 { pos, .. } => format!(
            "line {}: not valid UTF-8",
            pos.as_ref().map(|p| p.line()).unwrap_or(0)
        ),
        _ => e.to_string(),
    }
}

/// Parses an `index` cell (integers, possibly written as `12.0` by pandas).
pub fn parse_index(cell: &str) -> Option<i64> {
    let t = cell.trim();
    t.parse::<i64>().ok().or_else(|| {
        t.parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
            .map(|f| f as i64)
    })
}

/// Decodes a base64 cell, ignoring whitespace and line breaks, padding optional.
pub fn decode_base64(cell: &str) -> std::result::Result<Vec<u8>, String> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: String = cell.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    LENIENT
        .decode(compact.as_bytes())
        .map_err(|e| format!("invalid base64 ({e})"))
}

/// `bail!` helper naming file, row index and field.
pub fn row_error(
    path: &Path,
    index: i64,
    field: &str,
    msg: impl std::fmt::Display,
) -> anyhow::Error {
    anyhow!(
        "{}: row index {index}, field `{field}`: {msg}",
        path.display()
    )
}

/// Fails unless `cells` contains only unique indices.
pub fn ensure_unique(
    path: &Path,
    index: i64,
    seen: &mut std::collections::HashSet<i64>,
) -> Result<()> {
    if !seen.insert(index) {
        bail!(
            "{}: index {index} appears more than once; indices must be unique",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn na_like_matches_pandas_exactly() {
        for na in ["", "NA", "nan", "None", "N/A", "null"] {
            assert!(is_na(na), "{na:?}");
        }
        for kept in [" ", "None of the above", "na", "0", " NA"] {
            assert!(!is_na(kept), "{kept:?}");
        }
    }

    #[test]
    fn base64_and_index_cells() {
        assert_eq!(decode_base64("aGVs\nbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert!(decode_base64("@@@").is_err());
        assert_eq!(parse_index(" 1000003 "), Some(1000003));
        assert_eq!(parse_index("12.0"), Some(12));
        assert_eq!(parse_index("x"), None);
    }
}
