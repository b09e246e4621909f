//! Where a run's report goes, checked before any model loads: a run whose results cannot be
//! written, or whose report would replace one of its own inputs or a file that is not a
//! vlmbench report, is refused while refusing costs nothing. And if the final write still
//! fails, the report is saved to a temporary file rather than lost.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::common::UsageError;
use crate::fsutil::{parent_dir, temp_sibling, write_atomic};
use crate::report::journal;

/// The files a run writes: the JSON report, the CSV beside it, and the journal it keeps while
/// running.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportPaths {
    pub json: PathBuf,
    pub csv: PathBuf,
    pub journal: PathBuf,
}

impl ReportPaths {
    pub fn beside(json: PathBuf) -> Self {
        Self {
            csv: json.with_extension("csv"),
            journal: journal::path_for(&json),
            json,
        }
    }

    /// Refuses (with an argument error, exit 2) a destination that is a folder, one of
    /// `inputs` (data set, model file, tokenizer: `(flag, path)`), an existing file that is not
    /// a vlmbench report (or CSV), the journal of an earlier run that never finished, or a
    /// folder this process cannot write to.
    pub fn check(&self, inputs: &[(&str, &Path)]) -> Result<()> {
        check_one(&self.journal, inputs)?;
        if self.journal.exists() {
            return Err(usage(format!(
                "{} holds the journal of an earlier run that did not finish; turn it into a report with `vlmbench recover {}`, or delete it",
                self.journal.display(),
                self.journal.display()
            )));
        }
        self.check_report_files(inputs)
    }

    /// [`check`](Self::check) for the JSON and the CSV only (not the journal).
    pub fn check_report_files(&self, inputs: &[(&str, &Path)]) -> Result<()> {
        check_one(&self.json, inputs)?;
        check_one(&self.csv, inputs)?;
        if self.json.is_file() {
            let bytes = std::fs::read(&self.json).unwrap_or_default();
            if let Err(why) = crate::report::read::parse_any(&bytes) {
                return Err(usage(format!(
                    "--report-file: {} exists and is not a vlmbench report ({why}); refusing to overwrite it",
                    self.json.display()
                )));
            }
        }
        if self.csv.is_file() && !is_vlmbench_csv(&self.csv) {
            return Err(usage(format!(
                "--report-file: {} exists and is not a vlmbench CSV; refusing to overwrite it (choose another report path)",
                self.csv.display()
            )));
        }
        probe_writable(&self.json).map_err(|e| usage(format!("--report-file: {e}")))
    }
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

/// `out` is not a folder and not one of `inputs`.
fn check_one(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    if out.is_dir() {
        return Err(usage(format!(
            "--report-file: {} is a folder; give a file name such as {}",
            out.display(),
            out.join("report.json").display()
        )));
    }
    for (flag, input) in inputs {
        if same_file(out, input) {
            return Err(usage(format!(
                "--report-file: writing {} would replace the {flag} {}; choose another report path",
                out.display(),
                input.display()
            )));
        }
    }
    Ok(())
}

/// Whether `a` and `b` name the same file (`a` need not exist yet).
fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| -> Option<PathBuf> {
        p.canonicalize().ok().or_else(|| {
            let dir = parent_dir(p).canonicalize().ok()?;
            Some(dir.join(p.file_name()?))
        })
    };
    match (canon(a), canon(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// A CSV whose header vlmbench writes (in-process or serving).
fn is_vlmbench_csv(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let header = text.lines().next().unwrap_or("");
    // The serving CSV's first columns (see `report::serving::write_csv`).
    crate::report::csv::is_header(header) || header.starts_with("concurrency,request_rate,index,ok")
}

/// Creates the report's folder and a file in it (removed again), so that a destination that
/// cannot be written is found before the run, not after it.
fn probe_writable(json: &Path) -> Result<()> {
    let dir = parent_dir(json);
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow!("cannot create the report folder {}: {e}", dir.display()))?;
    let probe = temp_sibling(json);
    std::fs::File::create(&probe).map_err(|e| anyhow!("cannot write in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes `bytes` to `path`; if that fails, to a temporary file instead. The error (the run
/// must not exit 0) names both the failure and where the bytes went.
pub fn write_or_rescue(path: &Path, bytes: &[u8]) -> Result<()> {
    let Err(e) = write_atomic(path, bytes) else {
        return Ok(());
    };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    let ext = path
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "json".into());
    let rescue = std::env::temp_dir().join(format!(
        "vlmbench-rescued-{}-{}.{ext}",
        crate::fsutil::sanitize_file_stem(&stem),
        std::process::id()
    ));
    match write_atomic(&rescue, bytes) {
        Ok(()) => Err(anyhow!(
            "{e:#}; the report was saved to {} instead",
            rescue.display()
        )),
        Err(e2) => Err(anyhow!(
            "{e:#}; saving it to {} failed too: {e2:#}",
            rescue.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_usage(e: &anyhow::Error) -> bool {
        e.downcast_ref::<UsageError>().is_some()
    }

    #[test]
    fn unusable_destinations_are_refused_before_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("set.json");
        std::fs::write(&data, br#"{"set": "prompts", "samples": []}"#).unwrap();

        // A folder.
        let e = ReportPaths::beside(dir.path().to_path_buf())
            .check(&[])
            .unwrap_err();
        assert!(is_usage(&e) && e.to_string().contains("is a folder"), "{e}");
        // The data set itself, named another way.
        let other_name = dir.path().join(".").join("set.json");
        let e = ReportPaths::beside(other_name)
            .check(&[("--data-file", &data)])
            .unwrap_err();
        assert!(
            e.to_string().contains("would replace the --data-file"),
            "{e}"
        );
        // An existing file that is not a report.
        let notes = dir.path().join("notes.json");
        std::fs::write(&notes, b"{\"mine\": true}").unwrap();
        let e = ReportPaths::beside(notes.clone()).check(&[]).unwrap_err();
        assert!(e.to_string().contains("not a vlmbench report"), "{e}");
        assert_eq!(std::fs::read(&notes).unwrap(), b"{\"mine\": true}");
        // A CSV of someone else's beside an otherwise fine path.
        std::fs::write(dir.path().join("r.csv"), b"a,b\n1,2\n").unwrap();
        let e = ReportPaths::beside(dir.path().join("r.json"))
            .check(&[])
            .unwrap_err();
        assert!(e.to_string().contains("not a vlmbench CSV"), "{e}");
        // A place nothing can be written (a path under a regular file).
        let e = ReportPaths::beside(data.join("r.json"))
            .check(&[])
            .unwrap_err();
        assert!(is_usage(&e), "{e}");
        // A fresh path in a new folder is fine, and the probe leaves nothing behind.
        let ok = dir.path().join("new/r.json");
        ReportPaths::beside(ok.clone())
            .check(&[("--data-file", &data)])
            .unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("new")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_failed_write_is_rescued_to_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let e = write_or_rescue(&blocker.join("r.json"), b"{\"report\": 1}").unwrap_err();
        let msg = e.to_string();
        let saved = msg
            .split("saved to ")
            .nth(1)
            .and_then(|s| s.split(" instead").next())
            .expect(&msg);
        assert_eq!(std::fs::read(saved).unwrap(), b"{\"report\": 1}");
        std::fs::remove_file(saved).unwrap();
    }
}
