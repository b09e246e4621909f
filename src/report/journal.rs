//! The run journal: `<report>.journal.jsonl`, kept beside the report while a run is going.
//!
//! One JSON object a line. The first line is the run's header (everything a report holds
//! except its samples, summary and memory); every measured sample is then appended as it
//! finishes, with the run's measured wall time so far, and the line is flushed and synced to
//! disk. A kill, a crash or a power cut therefore loses at most the sample in flight: `vlmbench
//! recover <journal>` builds the report from what the journal holds. After the final report is
//! written (from the journal's samples) the journal is deleted.

use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{DatasetRef, Environment, RunConfig, SampleRecord};
use crate::engine::EngineInfo;

/// What the first line says it is: an in-process run's journal, or a serving run's.
const JOURNAL_KIND: &str = "vlmbench-run-journal";
const SERVING_JOURNAL_KIND: &str = "vlmbench-serving-journal";
const JOURNAL_VERSION: u32 = 1;

/// The journal beside `report`: `r.json` → `r.journal.jsonl`.
pub fn path_for(report: &Path) -> PathBuf {
    report.with_extension("journal.jsonl")
}

/// The report a journal turns into: `r.journal.jsonl` → `r.json`.
pub fn report_path_for(journal: &Path) -> PathBuf {
    let name = journal
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.strip_suffix(".journal.jsonl") {
        Some(stem) => journal.with_file_name(format!("{stem}.json")),
        None => journal.with_extension("json"),
    }
}

/// The report's fields known before the first sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunHeader {
    pub schema_version: u32,
    pub started_at: String,
    pub environment: Environment,
    pub engine: EngineInfo,
    pub config: RunConfig,
    pub dataset: DatasetRef,
}

#[derive(Serialize, Deserialize)]
struct HeaderLine<H> {
    journal: String,
    journal_version: u32,
    header: H,
}

/// One finished request of a serving run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestLine {
    /// 0-based load level of the sweep.
    pub level: usize,
    pub concurrency: Option<usize>,
    pub request_rate: Option<f64>,
    /// Seconds since the level started when this request finished.
    pub elapsed_s: f64,
    pub request: super::serving::RequestRecord,
}

/// One finished sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampleLine {
    /// Measured wall time of the run when this sample finished, seconds.
    pub elapsed_s: f64,
    pub sample: SampleRecord,
}

/// Appends to a journal; every line is on disk when [`append`](Self::append) returns.
pub struct JournalWriter {
    file: File,
    path: PathBuf,
}

impl JournalWriter {
    /// Creates the journal (it must not exist: an earlier run's journal is never replaced).
    pub fn create(path: &Path, header: &RunHeader) -> Result<Self> {
        Self::create_kind(path, JOURNAL_KIND, header)
    }

    /// A serving run's journal: `report` is the serving report without its levels; each
    /// request is then added with [`append_request`](Self::append_request).
    pub fn create_serving(path: &Path, report: &super::serving::ServingReport) -> Result<Self> {
        Self::create_kind(path, SERVING_JOURNAL_KIND, report)
    }

    pub fn append_request(&mut self, line: &RequestLine) -> Result<()> {
        self.write_line(line)
    }

    fn create_kind(path: &Path, kind: &str, header: &impl Serialize) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("cannot create the journal {}", path.display()))?;
        let mut w = Self {
            file,
            path: path.to_path_buf(),
        };
        w.write_line(&HeaderLine {
            journal: kind.into(),
            journal_version: JOURNAL_VERSION,
            header,
        })?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&mut self, elapsed_s: f64, sample: &SampleRecord) -> Result<()> {
        self.write_line(&SampleLine {
            elapsed_s,
            sample: sample.clone(),
        })
    }

    fn write_line(&mut self, value: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_vec(value).context("cannot serialise a journal line")?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot write the journal {}", self.path.display()))
    }
}

/// What a journal holds.
#[derive(Debug, Clone)]
pub struct Journal {
    pub header: RunHeader,
    pub samples: Vec<SampleLine>,
    /// A last line cut short (the process died while writing it) was skipped.
    pub torn_tail: bool,
}

/// Either kind of journal.
#[allow(
    clippy::large_enum_variant,
    reason = "read once per recovery; boxing would only add an indirection"
)]
pub enum AnyJournal {
    InProcess(Journal),
    Serving(ServingJournal),
}

/// What a serving run's journal holds.
pub struct ServingJournal {
    /// The serving report as it was when the first level started (no levels).
    pub header: super::serving::ServingReport,
    pub requests: Vec<RequestLine>,
    pub torn_tail: bool,
}

/// Reads a journal of either kind.
pub fn read_any(path: &Path) -> Result<AnyJournal> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the journal {}", path.display()))?;
    let first = text.lines().next().unwrap_or("");
    let kind = serde_json::from_str::<serde_json::Value>(first)
        .ok()
        .and_then(|v| v.get("journal")?.as_str().map(str::to_owned));
    if kind.as_deref() == Some(SERVING_JOURNAL_KIND) {
        let head: HeaderLine<super::serving::ServingReport> = serde_json::from_str(first)
            .with_context(|| format!("{}: not a valid serving journal header", path.display()))?;
        let body: Vec<&str> = text.lines().skip(1).collect();
        let (requests, torn_tail) = body_lines(path, &body)?;
        return Ok(AnyJournal::Serving(ServingJournal {
            header: head.header,
            requests,
            torn_tail,
        }));
    }
    Journal::read(path).map(AnyJournal::InProcess)
}

/// The lines after the header; only the very last one may be torn by a kill.
fn body_lines<T: serde::de::DeserializeOwned>(path: &Path, all: &[&str]) -> Result<(Vec<T>, bool)> {
    let mut out = Vec::new();
    let mut torn = false;
    for (i, line) in all.iter().enumerate() {
        match serde_json::from_str::<T>(line) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == all.len() => torn = true,
            Err(e) => bail!(
                "{} line {}: not a journal entry ({e})",
                path.display(),
                i + 2
            ),
        }
    }
    Ok((out, torn))
}

impl Journal {
    pub fn read(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .with_context(|| format!("cannot read the journal {}", path.display()))?;
        let mut lines = std::io::BufReader::new(file).lines();
        let first = lines
            .next()
            .transpose()
            .with_context(|| format!("cannot read the journal {}", path.display()))?
            .ok_or_else(|| anyhow!("{} is empty: not a vlmbench journal", path.display()))?;
        let head: HeaderLine<RunHeader> = serde_json::from_str(&first)
            .ok()
            .filter(|h: &HeaderLine<RunHeader>| h.journal == JOURNAL_KIND)
            .ok_or_else(|| {
                anyhow!(
                    "{} is not a vlmbench run journal (its first line is not a journal header)",
                    path.display()
                )
            })?;
        if head.journal_version > JOURNAL_VERSION {
            bail!(
                "{}: journal version {} is newer than this vlmbench reads ({JOURNAL_VERSION}); use a newer vlmbench",
                path.display(),
                head.journal_version
            );
        }
        let rest: Vec<String> = lines
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot read the journal {}", path.display()))?;
        let body: Vec<&str> = rest.iter().map(String::as_str).collect();
        let (samples, torn_tail) = body_lines(path, &body)?;
        Ok(Self {
            header: head.header,
            samples,
            torn_tail,
        })
    }

    /// The measured wall time up to the last finished sample.
    pub fn elapsed_s(&self) -> f64 {
        self.samples.last().map_or(0.0, |s| s.elapsed_s)
    }

    pub fn records(&self) -> Vec<SampleRecord> {
        self.samples.iter().map(|s| s.sample.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testutil;

    fn header() -> RunHeader {
        let r = testutil::report(vec![], 1.0);
        RunHeader {
            schema_version: r.schema_version,
            started_at: r.started_at,
            environment: r.environment,
            engine: r.engine,
            config: r.config,
            dataset: r.dataset,
        }
    }

    #[test]
    fn samples_are_on_disk_as_they_finish_and_a_torn_tail_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("r.json"));
        assert_eq!(report_path_for(&path), dir.path().join("r.json"));
        let mut w = JournalWriter::create(&path, &header()).unwrap();
        let a = testutil::sample(0, 10.0, 3, &[1.0, 2.0]);
        let b = testutil::sample(1, 12.0, 3, &[1.5]);
        w.append(0.5, &a).unwrap();
        // Read while the writer is still open, as after a kill.
        let j = Journal::read(&path).unwrap();
        assert_eq!(j.header, header());
        assert_eq!(j.records(), vec![a.clone()]);
        w.append(0.9, &b).unwrap();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"elapsed_s\": 1.2, \"sam");
        std::fs::write(&path, &bytes).unwrap();
        let j = Journal::read(&path).unwrap();
        assert_eq!(j.records(), vec![a, b]);
        assert!(j.torn_tail);
        assert_eq!(j.elapsed_s(), 0.9);
        // An existing journal is never replaced.
        assert!(JournalWriter::create(&path, &header()).is_err());
    }

    #[test]
    fn other_files_are_not_journals() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, b"{\"text_input\": \"hi\"}\n").unwrap();
        let e = Journal::read(&p).unwrap_err().to_string();
        assert!(e.contains("not a vlmbench run journal"), "{e}");
    }
}
