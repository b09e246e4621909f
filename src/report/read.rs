//! Reading reports back for `compare`, `plot` and `html`: either kind (in-process or serving),
//! told apart by the serving report's `kind` field, with one-line errors that name the file and
//! the field that did not parse.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::serving::{LevelReport, ServingReport};
use super::{Report, REPORT_SCHEMA_VERSION};

/// A report of either kind.
#[derive(Debug, Clone)]
pub enum AnyReport {
    InProcess(Box<Report>),
    Serving(Box<ServingReport>),
}

/// A report with the short name it is shown under (table columns, legends).
#[derive(Debug, Clone)]
pub struct NamedReport {
    pub label: String,
    pub path: PathBuf,
    pub report: AnyReport,
}

/// Reads and parses one report file.
pub fn read_any(path: &Path) -> Result<AnyReport> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow!("cannot read report {}: {e}", path.display()))?;
    parse_any(&bytes).map_err(|msg| anyhow!("{}: {msg}", path.display()))
}

/// Parses report bytes; the error is a single line naming the offending field.
pub fn parse_any(bytes: &[u8]) -> std::result::Result<AnyReport, String> {
    if bytes.starts_with(br#"{"journal":"vlmbench-run-journal""#) {
        return Err(
            "a run journal, not a report; turn it into one with `vlmbench recover <journal>`"
                .into(),
        );
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    if !value.is_object() {
        return Err("not a vlmbench report (the top level is not a JSON object)".into());
    }
    if value.get("samples").is_some_and(|s| s.is_array())
        && value.get("set").is_some()
        && value.get("summary").is_none()
        && value.get("levels").is_none()
    {
        return Err(
            "a data set written by `vlmbench prepare`, not a report; run it with `vlmbench run --data-file <file>` and pass the report that writes"
                .into(),
        );
    }
    if let Some(v) = value.get("schema_version").and_then(|v| v.as_u64()) {
        if v > u64::from(REPORT_SCHEMA_VERSION) || v == 0 {
            return Err(format!(
                "report schema version {v}, but this vlmbench reads versions 1 to {REPORT_SCHEMA_VERSION}; read it with the vlmbench that wrote it (or a newer one)"
            ));
        }
    }
    let serving = value.get("kind").and_then(|k| k.as_str()) == Some("serving");
    let describe = |e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json appends "at line 0 column 0" when it parses from a Value: not useful here.
        let inner = inner.to_string();
        let inner = inner
            .split(" at line ")
            .next()
            .unwrap_or(&inner)
            .to_string();
        let what = if serving {
            "serving report"
        } else {
            "vlmbench report"
        };
        if path == "." {
            format!("not a valid {what}: {inner}")
        } else {
            format!("not a valid {what}: field `{path}`: {inner}")
        }
    };
    if serving {
        serde_path_to_error::deserialize(value)
            .map(|r| AnyReport::Serving(Box::new(r)))
            .map_err(describe)
    } else {
        serde_path_to_error::deserialize(value)
            .map(|r| AnyReport::InProcess(Box::new(r)))
            .map_err(describe)
    }
}

/// Reads every report, naming each by its file stem (made unique with `#2`, `#3`...).
pub fn read_named(paths: &[PathBuf]) -> Result<Vec<NamedReport>> {
    let labels = unique_labels(paths);
    paths
        .iter()
        .zip(labels)
        .map(|(path, label)| {
            Ok(NamedReport {
                label,
                path: path.clone(),
                report: read_any(path)?,
            })
        })
        .collect()
}

/// File stems, with a `#k` suffix on the second and later uses of the same stem.
pub fn unique_labels(paths: &[PathBuf]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    paths
        .iter()
        .map(|p| {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "report".into());
            let uses = seen.iter().filter(|s| **s == stem).count();
            seen.push(stem.clone());
            if uses == 0 {
                stem
            } else {
                format!("{stem}#{}", uses + 1)
            }
        })
        .collect()
}

/// How one load level of a serving report is named: `@c8` (concurrency 8), `@r4` (4 requests/s),
/// `@c8,r4` (both), `@inf` (everything at once).
pub fn level_suffix(level: &LevelReport) -> String {
    match (level.concurrency, level.request_rate) {
        (Some(c), Some(r)) => format!("@c{c},r{r}"),
        (Some(c), None) => format!("@c{c}"),
        (None, Some(r)) => format!("@r{r}"),
        (None, None) => "@inf".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testutil;

    #[test]
    fn labels_are_stems_made_unique() {
        let paths = ["a/run.json", "b/run.json", "c/other.json", "run.json"].map(PathBuf::from);
        assert_eq!(
            unique_labels(&paths),
            ["run", "run#2", "other", "run#3"].map(String::from)
        );
    }

    #[test]
    fn both_kinds_parse_and_nested_errors_name_the_path() {
        let r = testutil::report(vec![testutil::sample(0, 10.0, 5, &[1.0])], 1.0);
        let mut v = serde_json::to_value(&r).unwrap();
        let back = parse_any(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(matches!(back, AnyReport::InProcess(_)));
        let s = testutil::serving(vec![]);
        let back = parse_any(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert!(matches!(back, AnyReport::Serving(_)));

        v["summary"]["ttft_ms"]["median"] = "fast".into();
        let err = parse_any(&serde_json::to_vec(&v).unwrap())
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("field `summary.ttft_ms.median`"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
        assert!(!err.contains("line 0"), "{err}");
    }

    #[test]
    fn data_sets_journals_and_newer_schemas_are_named_for_what_they_are() {
        let set = br#"{"schema_version": 1, "set": "prompts", "name": "p", "samples": [{"index": 0, "prompt": "hi"}]}"#;
        let err = parse_any(set).map(|_| ()).unwrap_err();
        assert!(
            err.contains("a data set written by `vlmbench prepare`"),
            "{err}"
        );
        let journal = b"{\"journal\":\"vlmbench-run-journal\",\"journal_version\":1}\n{}\n";
        let err = parse_any(journal).map(|_| ()).unwrap_err();
        assert!(err.contains("vlmbench recover"), "{err}");

        let r = testutil::report(vec![testutil::sample(0, 10.0, 5, &[1.0])], 1.0);
        let mut v = serde_json::to_value(&r).unwrap();
        v["schema_version"] = (REPORT_SCHEMA_VERSION + 1).into();
        let err = parse_any(&serde_json::to_vec(&v).unwrap())
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("schema version"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse_any(b"[1, 2").map(|_| ()).unwrap_err();
        assert!(err.starts_with("not JSON"), "{err}");
        let err = parse_any(b"{\"schema_version\": 1}")
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("missing field"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = parse_any(br#"{"kind": "serving", "schema_version": "one"}"#)
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("field `schema_version`"), "{err}");
        assert!(err.contains("serving report"), "{err}");
    }
}
