//! MMBench DEV EN from VLMEvalKit's `MMBench_DEV_EN.tsv`, streamed.
//!
//! ```text
//! index · question · hint · A · B · C · D · answer · category · image · source · l2-category · comment · split
//! 241 · "Which of these..." · "Read the text.\nThen..." · cat · dog · nan · nan · A · identity_reasoning · /9j/4AAQ... · ... · ... · nan · dev
//! 1000241 · ... · ... · dog · cat · nan · nan · B · identity_reasoning · 241 · ...
//! ```
//! - Required columns: `index`, `question`, `image`; the rest are optional and may come in any
//!   order. Option columns are the single capital letters present (A–Z).
//! - `image` holds a base64 image, or — when 64 characters or fewer — the index of the row whose
//!   image it shares (the option-rotated copies, `index` ≥ 1,000,000, do this). The target may
//!   come before or after the row. Each distinct image is written once with its original bytes.
//! - Missing options and hints: VLMEvalKit loads the TSV with pandas and drops any option or
//!   hint that pandas reads as NaN, i.e. an empty cell or one of pandas' default NA strings
//!   ([`PANDAS_NA_VALUES`](super::tsv::PANDAS_NA_VALUES): `NA`, `nan`, `None`, `N/A`, `NULL`, ...).
//!   vlmbench does the same, so the prompt is byte for byte VLMEvalKit's. Any other text is kept
//!   exactly as written (whitespace included). One known difference: pandas would print an
//!   option column holding only numbers as floats (`3.0`); vlmbench keeps the text (`3`).
//! - The TSV is read once, record by record; only the small per-row fields are kept, so the
//!   350 MB DEV EN file never sits in memory whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use super::output::{probe_image, SetWriter};
use super::tsv::{decode_base64, ensure_unique, is_na, parse_index, row_error, TsvReader};
use super::{describe_source, schema_version_for, DatasetFile, Sample};

pub const DEFAULT_FILE_NAME: &str = "mmbench_dev_en.json";

/// Indices at or above this are option-rotated copies of a question.
pub const ROTATED_INDEX_BASE: i64 = 1_000_000;

#[derive(Debug, Clone)]
pub struct MmbenchOptions {
    pub tsv: PathBuf,
    /// Keep only the original questions (index < 1,000,000).
    pub originals_only: bool,
    /// The JSON file to write.
    pub out: PathBuf,
}

/// The parts of a row the prompt is built from (absent = NaN in VLMEvalKit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McqRow {
    pub question: String,
    pub hint: Option<String>,
    /// (letter, text) in A–Z order.
    pub options: Vec<(char, String)>,
}

/// VLMEvalKit's `ImageMCQDataset.build_prompt`, byte for byte.
pub fn build_prompt(row: &McqRow) -> String {
    let mut prompt = String::new();
    if let Some(hint) = &row.hint {
        prompt.push_str(&format!("Hint: {hint}\n"));
    }
    prompt.push_str(&format!("Question: {}\n", row.question));
    if !row.options.is_empty() {
        prompt.push_str("Options:\n");
        for (letter, text) in &row.options {
            prompt.push_str(&format!("{letter}. {text}\n"));
        }
        prompt.push_str("Please select the correct answer from the options above. \n");
    }
    prompt
}

/// Where a row's image is.
enum ImageSlot {
    /// Written by this row.
    Own,
    /// Shared with the row of this index.
    Ref(i64),
}

pub fn prepare(opts: &MmbenchOptions) -> Result<DatasetFile> {
    let tsv = &opts.tsv;
    let source = describe_source(tsv)?;
    let mut reader = TsvReader::open(tsv)?;
    let col_index = reader.require("index")?;
    let col_question = reader.require("question")?;
    let col_image = reader.require("image")?;
    let col_hint = reader.column("hint");
    let option_cols: Vec<(char, usize)> = ('A'..='Z')
        .filter_map(|l| reader.column(&l.to_string()).map(|c| (l, c)))
        .collect();
    let kept_cols: Vec<(&str, usize)> = [
        "answer",
        "category",
        "l2-category",
        "source",
        "split",
        "comment",
    ]
    .into_iter()
    .filter_map(|name| reader.column(name).map(|c| (name, c)))
    .collect();

    let mut writer = SetWriter::new(&opts.out)?;
    let mut record = csv::StringRecord::new();
    let mut seen = HashSet::new();
    let mut rows: Vec<(Sample, ImageSlot)> = Vec::new();
    let mut own_images: HashMap<i64, (String, u32, u32)> = HashMap::new();
    while let Some(line) = reader.next_record(&mut record)? {
        let cell = |c: usize| record.get(c).unwrap_or("");
        let index = parse_index(cell(col_index)).ok_or_else(|| {
            anyhow!(
                "{}: line {line}, field `index`: {:?} is not an integer",
                tsv.display(),
                cell(col_index)
            )
        })?;
        ensure_unique(tsv, index, &mut seen)?;
        let keep = !(opts.originals_only && index >= ROTATED_INDEX_BASE);
        let image_cell = cell(col_image).trim();
        let slot = if image_cell.len() <= 64 {
            let target = parse_index(image_cell).ok_or_else(|| {
                row_error(
                    tsv,
                    index,
                    "image",
                    format!("{image_cell:?} is neither a base64 image nor a row index"),
                )
            })?;
            ImageSlot::Ref(target)
        } else {
            // Written even for a skipped rotated row: a kept row may share its image. Unused
            // files are removed before the set is finished.
            let bytes = decode_base64(image_cell).map_err(|e| row_error(tsv, index, "image", e))?;
            let info = probe_image(&bytes).map_err(|e| row_error(tsv, index, "image", e))?;
            let rel = writer.write_image(&index.to_string(), &bytes, &info)?;
            own_images.insert(index, (rel, info.width, info.height));
            ImageSlot::Own
        };
        if !keep {
            continue;
        }
        let present = |c: Option<usize>| c.map(cell).filter(|v| !is_na(v)).map(str::to_owned);
        let row = McqRow {
            question: cell(col_question).to_string(),
            hint: present(col_hint),
            options: option_cols
                .iter()
                .filter_map(|&(l, c)| present(Some(c)).map(|t| (l, t)))
                .collect(),
        };
        let mut fields = BTreeMap::new();
        for &(name, c) in &kept_cols {
            if let Some(v) = present(Some(c)) {
                fields.insert(name.to_string(), v.into());
            }
        }
        if let Some(h) = &row.hint {
            fields.insert("hint".into(), h.clone().into());
        }
        let options: serde_json::Map<String, serde_json::Value> = row
            .options
            .iter()
            .map(|(l, t)| (l.to_string(), t.clone().into()))
            .collect();
        fields.insert("options".into(), options.into());
        rows.push((
            Sample {
                index,
                prompt: build_prompt(&row),
                images: Vec::new(),
                fields,
            },
            slot,
        ));
    }
    if rows.is_empty() {
        bail!("{}: no rows to keep", tsv.display());
    }

    // Resolve shared images now that every row has been seen.
    let mut used = HashSet::new();
    let mut samples = Vec::with_capacity(rows.len());
    for (mut sample, slot) in rows {
        let owner = match slot {
            ImageSlot::Own => sample.index,
            ImageSlot::Ref(target) => resolve(target, &own_images, sample.index, tsv)?,
        };
        let (rel, w, h) = &own_images[&owner];
        used.insert(rel.clone());
        sample.images = vec![rel.clone()];
        sample.fields.insert("image_width".into(), (*w).into());
        sample.fields.insert("image_height".into(), (*h).into());
        samples.push(sample);
    }
    for (rel, _, _) in own_images.values() {
        if !used.contains(rel) {
            writer.remove_image(rel)?;
        }
    }
    samples.sort_by_key(|s| s.index);
    let distinct = used.len();
    let mut params = BTreeMap::new();
    params.insert("originals_only".into(), opts.originals_only.into());
    params.insert("distinct_images".into(), distinct.into());
    let file = DatasetFile {
        schema_version: schema_version_for(&samples),
        set: "mmbench".into(),
        name: Path::new(&opts.out)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "mmbench_dev_en".into()),
        vlmbench_version: env!("CARGO_PKG_VERSION").into(),
        seed: None,
        num_samples: samples.len(),
        sources: vec![source],
        params,
        samples,
    };
    writer.finish(&file)?;
    Ok(file)
}

/// Follows a reference to the row that holds the image bytes.
fn resolve(
    target: i64,
    own: &HashMap<i64, (String, u32, u32)>,
    from: i64,
    tsv: &Path,
) -> Result<i64> {
    if own.contains_key(&target) {
        Ok(target)
    } else {
        Err(row_error(
            tsv,
            from,
            "image",
            format!("refers to row {target}, which has no image of its own in the file"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(hint: Option<&str>, opts: &[(char, &str)]) -> McqRow {
        McqRow {
            question: "What is shown?".into(),
            hint: hint.map(str::to_owned),
            options: opts.iter().map(|(l, t)| (*l, t.to_string())).collect(),
        }
    }

    #[test]
    fn prompt_bytes_match_vlmevalkit() {
        assert_eq!(
            build_prompt(&row(None, &[('A', "cat"), ('B', "dog")])),
            "Question: What is shown?\nOptions:\nA. cat\nB. dog\nPlease select the correct answer from the options above. \n"
        );
        assert_eq!(
            build_prompt(&row(Some("Line one.\nLine two."), &[('A', "x"), ('C', "z")])),
            "Hint: Line one.\nLine two.\nQuestion: What is shown?\nOptions:\nA. x\nC. z\nPlease select the correct answer from the options above. \n"
        );
        assert_eq!(build_prompt(&row(None, &[])), "Question: What is shown?\n");
    }
}
