//! Text-only prompt sets: one prompt per line from a file, or the short / medium / long sets
//! shipped inside the binary (so `vlmbench prepare prompts` needs no input at all).
//!
//! File format: UTF-8 text, one prompt per line; blank (whitespace-only) lines are skipped;
//! a trailing `\r` is removed; no other change is made to a prompt. Each sample's `index` is the
//! 1-based line number in the file, so a report row points straight at its line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::output::SetWriter;
use super::{describe_source, schema_version_for, sha256_hex, DatasetFile, Sample, SourceFile};

/// The built-in sets, in order of prompt length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// One-line questions and instructions (32 prompts, 6–16 words).
    Short,
    /// An instruction with inline context (8 prompts, about 85–115 words).
    Medium,
    /// A long document and a task about it (4 prompts, about 540–710 words).
    Long,
}

impl Builtin {
    pub const ALL: [Builtin; 3] = [Builtin::Short, Builtin::Medium, Builtin::Long];

    pub fn name(self) -> &'static str {
        match self {
            Builtin::Short => "short",
            Builtin::Medium => "medium",
            Builtin::Long => "long",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Builtin::Short => include_str!("../../assets/prompts/short.txt"),
            Builtin::Medium => include_str!("../../assets/prompts/medium.txt"),
            Builtin::Long => include_str!("../../assets/prompts/long.txt"),
        }
    }
}

/// Where the prompts come from.
#[derive(Debug, Clone)]
pub enum PromptSource {
    File(PathBuf),
    Builtin(Builtin),
}

/// `prompts_<name>.json`.
pub fn default_file_name(name: &str) -> String {
    format!("prompts_{}.json", crate::fsutil::sanitize_file_stem(name))
}

/// A set name from a file's stem.
pub fn name_from_path(path: &Path) -> Result<String> {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .with_context(|| {
            format!(
                "cannot derive a set name from {}; pass --name",
                path.display()
            )
        })
}

/// Splits text into (1-based line number, prompt) pairs, skipping blank lines.
pub fn parse_lines(text: &str) -> Vec<(i64, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i as i64 + 1, l.trim_end_matches('\r').to_string()))
        .collect()
}

/// Reads the prompts and writes the set to `out`.
pub fn prepare(source: &PromptSource, name: &str, out: &Path) -> Result<DatasetFile> {
    let (text, source_file, origin): (String, SourceFile, &str) = match source {
        PromptSource::File(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read prompt file {}", path.display()))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                anyhow::anyhow!(
                    "{}: line {line} is not valid UTF-8; save the file as UTF-8",
                    path.display()
                )
            })?;
            (text, describe_source(path)?, "file")
        }
        PromptSource::Builtin(b) => {
            let text = b.text().to_string();
            let sf = SourceFile {
                name: format!("built-in:{}", b.name()),
                sha256: sha256_hex(text.as_bytes()),
                bytes: text.len() as u64,
            };
            (text, sf, "built-in")
        }
    };
    let samples: Vec<Sample> = parse_lines(&text)
        .into_iter()
        .map(|(index, prompt)| Sample {
            index,
            prompt,
            images: Vec::new(),
            fields: BTreeMap::new(),
        })
        .collect();
    if samples.is_empty() {
        bail!("{}: no prompts (every line is blank)", source_file.name);
    }
    let mut params = BTreeMap::new();
    params.insert("origin".into(), origin.into());
    let file = DatasetFile {
        schema_version: schema_version_for(&samples),
        set: "prompts".into(),
        name: format!("prompts_{name}"),
        vlmbench_version: env!("CARGO_PKG_VERSION").into(),
        seed: None,
        num_samples: samples.len(),
        sources: vec![source_file],
        params,
        samples,
    };
    SetWriter::new(out)?.finish(&file)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_skipped_and_line_numbers_kept() {
        let got = parse_lines("first\n\n  \nsecond\r\nthird  ");
        assert_eq!(
            got,
            vec![
                (1, "first".to_string()),
                (4, "second".to_string()),
                (5, "third  ".to_string())
            ]
        );
    }

    #[test]
    fn builtin_sets_are_nonempty_and_ordered_by_length() {
        let mean_words = |b: Builtin| {
            let lines = parse_lines(b.text());
            assert!(lines.len() >= 4, "{}", b.name());
            lines
                .iter()
                .map(|(_, l)| l.split_whitespace().count())
                .sum::<usize>()
                / lines.len()
        };
        let (s, m, l) = (
            mean_words(Builtin::Short),
            mean_words(Builtin::Medium),
            mean_words(Builtin::Long),
        );
        assert!(s < m && m < l, "{s} {m} {l}");
    }
}
