//! Bring your own data: GenAI-Perf / AIPerf style input JSONL, frozen into the common schema.
//!
//! ```text
//! {"text_input": "What is in this image?", "image": "images/cat.png"}
//! {"text": "Describe the chart.", "image": "data:image/png;base64,iVBORw0..."}
//! {"text": "A text-only prompt"}
//! ```
//! - Text: `text_input` (GenAI-Perf), `text` (newer GenAI-Perf and AIPerf), or `texts` with
//!   exactly one string.
//! - Image (optional): `image`, or `images` with at most one entry: a file path (relative paths
//!   resolve against the JSONL file's folder) or a `data:image/...;base64,` URL. Images are
//!   copied into the set with their original bytes; remote URLs are refused (download them
//!   first, so the set stays frozen).
//! - Blank lines are skipped; `index` is the 1-based line number. Other scalar keys are kept in
//!   `fields`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::Value;

use super::output::{probe_image, SetWriter};
use super::{describe_source, DatasetFile, Sample, DATASET_SCHEMA_VERSION};
use crate::fsutil::parent_dir;

/// `jsonl_<name>.json`.
pub fn default_file_name(name: &str) -> String {
    format!("jsonl_{}.json", crate::fsutil::sanitize_file_stem(name))
}

/// Where one line's image comes from.
enum ImageRef {
    File(PathBuf),
    Inline(Vec<u8>),
}

pub fn prepare(input: &Path, name: &str, out: &Path) -> Result<DatasetFile> {
    let source = describe_source(input)?;
    let file = std::fs::File::open(input)
        .with_context(|| format!("cannot open JSONL file {}", input.display()))?;
    let base = parent_dir(input);
    let mut writer = SetWriter::new(out)?;
    let mut samples = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let at = || format!("{}:{line_no}", input.display());
        let line = line.with_context(|| format!("{}: cannot read (is it UTF-8?)", at()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line).map_err(|e| {
            anyhow!(
                "{}: invalid JSON ({e}); each line must be one JSON object",
                at()
            )
        })?;
        let Value::Object(obj) = value else {
            bail!(
                "{}: each line must be a JSON object, like {{\"text\": \"...\"}}",
                at()
            );
        };
        let prompt = text_of(&obj).map_err(|e| anyhow!("{}: {e}", at()))?;
        let image = image_of(&obj, &base).map_err(|e| anyhow!("{}: {e}", at()))?;
        let mut fields: BTreeMap<String, Value> = obj
            .iter()
            .filter(|(k, v)| {
                !matches!(
                    k.as_str(),
                    "text" | "text_input" | "texts" | "image" | "images"
                ) && !v.is_object()
                    && !v.is_array()
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let image_path = match image {
            None => None,
            Some(img) => {
                let bytes = match &img {
                    ImageRef::File(p) => std::fs::read(p).with_context(|| {
                        format!("{}: field `image`: cannot read image {}", at(), p.display())
                    })?,
                    ImageRef::Inline(b) => b.clone(),
                };
                let info =
                    probe_image(&bytes).map_err(|e| anyhow!("{}: field `image`: {e}", at()))?;
                fields.insert("image_width".into(), info.width.into());
                fields.insert("image_height".into(), info.height.into());
                Some(writer.write_image(&line_no.to_string(), &bytes, &info)?)
            }
        };
        samples.push(Sample {
            index: line_no as i64,
            prompt,
            image: image_path,
            fields,
        });
    }
    if samples.is_empty() {
        bail!(
            "{}: no samples (the file has no non-blank line)",
            input.display()
        );
    }
    let file = DatasetFile {
        schema_version: DATASET_SCHEMA_VERSION,
        set: "jsonl".into(),
        name: format!("jsonl_{name}"),
        vlmbench_version: env!("CARGO_PKG_VERSION").into(),
        seed: None,
        num_samples: samples.len(),
        sources: vec![source],
        params: BTreeMap::new(),
        samples,
    };
    writer.finish(&file)?;
    Ok(file)
}

fn text_of(obj: &serde_json::Map<String, Value>) -> Result<String, String> {
    for key in ["text_input", "text"] {
        if let Some(v) = obj.get(key) {
            return v
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("field `{key}` must be a string"));
        }
    }
    if let Some(v) = obj.get("texts") {
        return match v.as_array().map(Vec::as_slice) {
            Some([Value::String(s)]) => Ok(s.clone()),
            _ => Err("field `texts` must be a list with exactly one string".into()),
        };
    }
    Err("no text: add a `text_input` or `text` field".into())
}

fn image_of(obj: &serde_json::Map<String, Value>, base: &Path) -> Result<Option<ImageRef>, String> {
    let raw = match (obj.get("image"), obj.get("images")) {
        (Some(Value::String(s)), _) => s.clone(),
        (Some(Value::Null), _) | (None, None) => return Ok(None),
        (Some(_), _) => return Err("field `image` must be a string (a path or a data URL)".into()),
        (None, Some(v)) => match v.as_array().map(Vec::as_slice) {
            Some([]) => return Ok(None),
            Some([Value::String(s)]) => s.clone(),
            _ => return Err("field `images` must be a list with at most one string".into()),
        },
    };
    if let Some(rest) = raw.strip_prefix("data:") {
        let (_, b64) = rest
            .split_once(";base64,")
            .ok_or("field `image`: a data URL must be `data:image/<type>;base64,<data>`")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("field `image`: invalid base64 in data URL ({e})"))?;
        return Ok(Some(ImageRef::Inline(bytes)));
    }
    if raw.starts_with("http://") || raw.starts_with("https://") {
        return Err(format!(
            "field `image`: remote URL {raw:?} is not frozen; download it and give the local path"
        ));
    }
    let path = Path::new(&raw);
    Ok(Some(ImageRef::File(if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    })))
}
