//! COCO val captioning subset, from the official captions annotation file or VLMEvalKit's TSV.
//!
//! Annotation input (`captions_val2014.json` / `captions_val2017.json`):
//! ```text
//! {"info": {...}, "licenses": [...],
//!  "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "width": 640, "height": 480, ...}],
//!  "annotations": [{"image_id": 42, "id": 1234, "caption": "A man riding a horse."}]}
//! ```
//! TSV input (VLMEvalKit `COCO_VAL.tsv`): columns `index`, `image` (base64), `answer` (a Python
//! list literal of reference captions); other columns are ignored.
//!
//! Choice: candidates (images with at least one caption, or TSV rows) are sorted by index (the
//! COCO image id), `num_samples` positions are drawn with [`SeededRng::choose_sorted`], and the
//! samples are written in index order. Real annotation files are not sorted by id, so the
//! sort is what makes the choice independent of file order. Unlike VLMEvalKit, which runs the
//! whole 5,000-image set, vlmbench freezes a seeded subset (default 500).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::output::{probe_image, SetWriter};
use super::pyliteral::parse_str_list;
use super::tsv::{decode_base64, ensure_unique, parse_index, row_error, TsvReader};
use super::{describe_source, schema_version_for, DatasetFile, Sample};
use crate::rng::SeededRng;

/// VLMEvalKit's captioning instruction, byte for byte (trailing space included).
pub const DEFAULT_PROMPT: &str = "Please describe this image in general. Directly provide the description, do not include prefix like \"This image depicts\". ";

/// Where the COCO data comes from.
#[derive(Debug, Clone)]
pub enum CocoInput {
    Annotations {
        annotations: PathBuf,
        images: PathBuf,
    },
    Tsv(PathBuf),
}

#[derive(Debug, Clone)]
pub struct CocoOptions {
    pub input: CocoInput,
    pub num_samples: usize,
    pub seed: u64,
    /// Replaces [`DEFAULT_PROMPT`].
    pub prompt: Option<String>,
    /// The JSON file to write.
    pub out: PathBuf,
}

/// `coco_val_<n>.json`.
pub fn default_file_name(num_samples: usize) -> String {
    format!("coco_val_{num_samples}.json")
}

#[derive(Deserialize)]
struct CaptionsFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoCaption>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: i64,
    file_name: String,
    #[serde(default)]
    width: Option<u64>,
    #[serde(default)]
    height: Option<u64>,
}

#[derive(Deserialize)]
struct CocoCaption {
    image_id: i64,
    id: i64,
    caption: String,
}

pub fn prepare(opts: &CocoOptions) -> Result<DatasetFile> {
    if opts.num_samples == 0 {
        bail!("--num-samples must be at least 1");
    }
    let prompt = opts
        .prompt
        .clone()
        .unwrap_or_else(|| DEFAULT_PROMPT.to_string());
    let mut writer = SetWriter::new(&opts.out)?;
    let mut params = BTreeMap::new();
    params.insert("prompt".into(), prompt.clone().into());
    params.insert("num_samples_requested".into(), opts.num_samples.into());
    let (samples, sources) = match &opts.input {
        CocoInput::Annotations {
            annotations,
            images,
        } => {
            params.insert("input".into(), "annotations".into());
            let folder = images
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            params.insert("image_folder".into(), folder.into());
            let samples = from_annotations(annotations, images, opts, &prompt, &mut writer)?;
            (samples, vec![describe_source(annotations)?])
        }
        CocoInput::Tsv(tsv) => {
            params.insert("input".into(), "tsv".into());
            let samples = from_tsv(tsv, opts, &prompt, &mut writer)?;
            (samples, vec![describe_source(tsv)?])
        }
    };
    let file = DatasetFile {
        schema_version: schema_version_for(&samples),
        set: "coco".into(),
        name: format!("coco_val_{}", opts.num_samples),
        vlmbench_version: env!("CARGO_PKG_VERSION").into(),
        seed: Some(opts.seed),
        num_samples: samples.len(),
        sources,
        params,
        samples,
    };
    writer.finish(&file)?;
    Ok(file)
}

fn from_annotations(
    annotations: &Path,
    images_dir: &Path,
    opts: &CocoOptions,
    prompt: &str,
    writer: &mut SetWriter,
) -> Result<Vec<Sample>> {
    let file = std::fs::File::open(annotations)
        .with_context(|| format!("cannot open COCO annotation file {}", annotations.display()))?;
    let parsed: CaptionsFile = serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
        anyhow!(
            "{} is not a COCO captions annotation file ({e}); expected `images` [{{id, file_name}}] and `annotations` [{{image_id, id, caption}}]",
            annotations.display()
        )
    })?;
    if !images_dir.is_dir() {
        bail!("COCO image folder {} does not exist", images_dir.display());
    }
    let images: HashMap<i64, &CocoImage> = parsed.images.iter().map(|i| (i.id, i)).collect();
    let mut captions: HashMap<i64, Vec<(i64, &str)>> = HashMap::new();
    for a in &parsed.annotations {
        if !images.contains_key(&a.image_id) {
            bail!(
                "{}: annotation id {}, field `image_id`: image {} is not listed in `images`",
                annotations.display(),
                a.id,
                a.image_id
            );
        }
        captions
            .entry(a.image_id)
            .or_default()
            .push((a.id, &a.caption));
    }
    let mut candidates: Vec<i64> = captions.keys().copied().collect();
    candidates.sort_unstable();
    if candidates.is_empty() {
        bail!("{}: no image has a caption", annotations.display());
    }
    let chosen = SeededRng::new(opts.seed).choose_sorted(candidates.len(), opts.num_samples);
    let mut samples = Vec::with_capacity(chosen.len());
    for pos in chosen {
        let id = candidates[pos];
        let image = images[&id];
        let src = images_dir.join(&image.file_name);
        let head = read_head(&src).map_err(|e| {
            anyhow!(
                "image id {id}: cannot read {} ({e}); is --images the folder named by the annotation file?",
                src.display()
            )
        })?;
        let info = probe_image(&head)
            .or_else(|_| {
                std::fs::read(&src)
                    .map_err(|e| e.to_string())
                    .and_then(|b| probe_image(&b))
            })
            .map_err(|e| anyhow!("image id {id}: {}: {e}", src.display()))?;
        let rel = writer.copy_image(&image.file_name, &src)?;
        let mut refs = captions.remove(&id).unwrap_or_default();
        refs.sort_unstable_by_key(|(ann_id, _)| *ann_id);
        let mut fields = BTreeMap::new();
        fields.insert(
            "references".into(),
            refs.iter()
                .map(|(_, c)| c.to_string())
                .collect::<Vec<_>>()
                .into(),
        );
        fields.insert("file_name".into(), image.file_name.clone().into());
        fields.insert(
            "width".into(),
            image.width.unwrap_or(info.width as u64).into(),
        );
        fields.insert(
            "height".into(),
            image.height.unwrap_or(info.height as u64).into(),
        );
        samples.push(Sample {
            index: id,
            prompt: prompt.to_string(),
            images: vec![rel],
            fields,
        });
    }
    Ok(samples)
}

/// The first 64 KiB of a file: enough for any image header.
fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(64 * 1024);
    std::fs::File::open(path)?
        .take(64 * 1024)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

fn from_tsv(
    tsv: &Path,
    opts: &CocoOptions,
    prompt: &str,
    writer: &mut SetWriter,
) -> Result<Vec<Sample>> {
    // Pass 1: the indices only, to choose.
    let mut reader = TsvReader::open(tsv)?;
    let index_col = reader.require("index")?;
    reader.require("image")?;
    let mut record = csv::StringRecord::new();
    let mut indices = Vec::new();
    let mut seen = HashSet::new();
    while let Some(line) = reader.next_record(&mut record)? {
        let cell = record.get(index_col).unwrap_or("");
        let index = parse_index(cell).ok_or_else(|| {
            anyhow!(
                "{}: line {line}, field `index`: {cell:?} is not an integer",
                tsv.display()
            )
        })?;
        ensure_unique(tsv, index, &mut seen)?;
        indices.push(index);
    }
    if indices.is_empty() {
        bail!("{}: no rows", tsv.display());
    }
    indices.sort_unstable();
    let chosen: HashSet<i64> = SeededRng::new(opts.seed)
        .choose_sorted(indices.len(), opts.num_samples)
        .into_iter()
        .map(|p| indices[p])
        .collect();

    // Pass 2: decode and write the chosen rows' images.
    let mut reader = TsvReader::open(tsv)?;
    let image_col = reader.require("image")?;
    let answer_col = reader.column("answer");
    let mut samples = Vec::with_capacity(chosen.len());
    while reader.next_record(&mut record)?.is_some() {
        let index = parse_index(record.get(index_col).unwrap_or("")).unwrap_or(i64::MIN);
        if !chosen.contains(&index) {
            continue;
        }
        let cell = record.get(image_col).unwrap_or("");
        if cell.trim().len() <= 64 {
            return Err(row_error(
                tsv,
                index,
                "image",
                "expected a base64 image (references to other rows are not used in COCO_VAL)",
            ));
        }
        let bytes = decode_base64(cell).map_err(|e| row_error(tsv, index, "image", e))?;
        let info = probe_image(&bytes).map_err(|e| row_error(tsv, index, "image", e))?;
        let rel = writer.write_image(&index.to_string(), &bytes, &info)?;
        let mut fields = BTreeMap::new();
        if let Some(col) = answer_col {
            let raw = record.get(col).unwrap_or("");
            let refs = parse_str_list(raw).map_err(|e| {
                row_error(
                    tsv,
                    index,
                    "answer",
                    format!("not a Python list of strings: {e}"),
                )
            })?;
            fields.insert("references".into(), refs.into());
        }
        fields.insert("width".into(), info.width.into());
        fields.insert("height".into(), info.height.into());
        samples.push(Sample {
            index,
            prompt: prompt.to_string(),
            images: vec![rel],
            fields,
        });
    }
    samples.sort_by_key(|s| s.index);
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prompt_is_vlmevalkits_bytes() {
        assert!(DEFAULT_PROMPT.ends_with("\"This image depicts\". "));
        assert_eq!(DEFAULT_PROMPT.len(), 122);
        assert!(DEFAULT_PROMPT.starts_with("Please describe this image in general. Directly"));
    }
}
