//! Bring your own data: GenAI-Perf / AIPerf style input JSONL, frozen into the common schema.
//!
//! ```text
//! {"text_input": "What is in this image?", "image": "images/cat.png"}
//! {"text": "Describe the chart.", "image": "data:image/png;base64,iVBORw0..."}
//! {"text": "A text-only prompt"}
//! ```
//! - Text: `text_input` (GenAI-Perf), `text` (newer GenAI-Perf and AIPerf), or `texts` with
//!   exactly one string.
//! - Images (optional): `image` (one), or `images` (a list, in the order the model sees them;
//!   several where the model takes several, as Qwen2-VL does), not both. Each is a file path
//!   (relative paths resolve against the JSONL file's folder) or a `data:image/...;base64,`
//!   URL. Images are copied into the set with their original bytes; remote URLs are refused
//!   (download them first, so the set stays frozen).
//! - Blank lines are skipped; `index` is the 1-based line number. Other scalar keys are kept in
//!   `fields`, with the image sizes: `image_width` and `image_height` for one image,
//!   `image_sizes` (`[[width, height], ...]`, in order) for several.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::Value;

use super::output::{probe_image, SetWriter};
use super::{describe_source, schema_version_for, DatasetFile, Sample};
use crate::fsutil::parent_dir;

/// `jsonl_<name>.json`.
pub fn default_file_name(name: &str) -> String {
    format!("jsonl_{}.json", crate::fsutil::sanitize_file_stem(name))
}

/// The field of a sample with several images that holds their sizes, `[[width, height], ...]`
/// in order (a sample with one image has `image_width` and `image_height`).
pub const IMAGE_SIZES_FIELD: &str = "image_sizes";

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
        let images = images_of(&obj, &base).map_err(|e| anyhow!("{}: {e}", at()))?;
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
        let several = images.len() > 1;
        let mut paths = Vec::with_capacity(images.len());
        let mut sizes = Vec::with_capacity(images.len());
        for (k, (field, img)) in images.into_iter().enumerate() {
            let bytes = match img {
                ImageRef::File(p) => std::fs::read(&p).with_context(|| {
                    format!(
                        "{}: field `{field}`: cannot read image {}",
                        at(),
                        p.display()
                    )
                })?,
                ImageRef::Inline(b) => b,
            };
            let info =
                probe_image(&bytes).map_err(|e| anyhow!("{}: field `{field}`: {e}", at()))?;
            // One image keeps the name it always had; several are numbered as in `images`.
            let id = if several {
                format!("{line_no}_{k}")
            } else {
                line_no.to_string()
            };
            paths.push(writer.write_image(&id, &bytes, &info)?);
            sizes.push((info.width, info.height));
        }
        match sizes.as_slice() {
            [] => {}
            [(w, h)] => {
                fields.insert("image_width".into(), (*w).into());
                fields.insert("image_height".into(), (*h).into());
            }
            all => {
                let list = all
                    .iter()
                    .map(|&(w, h)| serde_json::json!([w, h]))
                    .collect();
                fields.insert(IMAGE_SIZES_FIELD.into(), Value::Array(list));
            }
        }
        samples.push(Sample {
            index: line_no as i64,
            prompt,
            images: paths,
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
        schema_version: schema_version_for(&samples),
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

/// The line's images in order, each with the field it came from (`image`, `images[1]`...).
fn images_of(
    obj: &serde_json::Map<String, Value>,
    base: &Path,
) -> Result<Vec<(String, ImageRef)>, String> {
    let image = obj.get("image").filter(|v| !v.is_null());
    let images = obj.get("images").filter(|v| !v.is_null());
    let entries: Vec<(String, &Value)> = match (image, images) {
        (Some(_), Some(_)) => {
            return Err(
                "both `image` and `images` are given; keep one (`images` for several)".into(),
            )
        }
        (None, None) => Vec::new(),
        (Some(v), None) => vec![("image".to_string(), v)],
        (None, Some(Value::Array(list))) => list
            .iter()
            .enumerate()
            .map(|(k, v)| (format!("images[{k}]"), v))
            .collect(),
        (None, Some(_)) => {
            return Err("field `images` must be a list of strings (paths or data URLs)".into())
        }
    };
    entries
        .into_iter()
        .map(|(field, v)| {
            let raw = v.as_str().ok_or_else(|| {
                format!("field `{field}` must be a string (a path or a data URL)")
            })?;
            image_ref(raw, base)
                .map(|r| (field.clone(), r))
                .map_err(|e| format!("field `{field}`: {e}"))
        })
        .collect()
}

fn image_ref(raw: &str, base: &Path) -> Result<ImageRef, String> {
    if let Some(rest) = raw.strip_prefix("data:") {
        let (_, b64) = rest
            .split_once(";base64,")
            .ok_or("a data URL must be `data:image/<type>;base64,<data>`")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("invalid base64 in data URL ({e})"))?;
        return Ok(ImageRef::Inline(bytes));
    }
    if raw.starts_with("http://") || raw.starts_with("https://") {
        return Err(format!(
            "remote URL {raw:?} is not frozen; download it and give the local path"
        ));
    }
    let path = Path::new(raw);
    Ok(ImageRef::File(if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 3]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn data_url(bytes: &[u8]) -> String {
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    #[test]
    fn several_images_are_frozen_in_order_with_their_sizes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wide.png"), png(6, 2)).unwrap();
        let lines = [
            serde_json::json!({"text": "two", "images": ["wide.png", data_url(&png(3, 5))]}),
            serde_json::json!({"text": "one", "images": [data_url(&png(4, 4))]}),
            serde_json::json!({"text": "none", "images": []}),
            serde_json::json!({"text": "single", "image": "wide.png", "images": null}),
        ];
        let input = dir.path().join("in.jsonl");
        let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        std::fs::write(&input, text.join("\n")).unwrap();
        let out = dir.path().join("set.json");
        let file = prepare(&input, "in", &out).unwrap();
        let s = &file.samples;
        assert_eq!(s[0].images, ["set_images/1_0.png", "set_images/1_1.png"]);
        assert_eq!(
            s[0].fields[IMAGE_SIZES_FIELD],
            serde_json::json!([[6, 2], [3, 5]])
        );
        assert!(!s[0].fields.contains_key("image_width"));
        assert_eq!(
            std::fs::read(dir.path().join(&s[0].images[0])).unwrap(),
            png(6, 2)
        );
        assert_eq!(
            std::fs::read(dir.path().join(&s[0].images[1])).unwrap(),
            png(3, 5)
        );
        // One image: the name and fields it always had.
        assert_eq!(s[1].images, ["set_images/2.png"]);
        assert_eq!(s[1].fields["image_width"], 4);
        assert!(!s[1].fields.contains_key(IMAGE_SIZES_FIELD));
        assert!(s[2].images.is_empty() && s[2].fields.is_empty());
        assert_eq!(s[3].images, ["set_images/4.png"]);
        // Written as `images` for the sample with two, as `image` for the others.
        let json: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert!(json["samples"][0].get("image").is_none());
        assert_eq!(json["samples"][0]["images"][1], "set_images/1_1.png");
        assert_eq!(json["samples"][1]["image"], "set_images/2.png");
        assert!(json["samples"][2]["image"].is_null());
    }

    #[test]
    fn errors_name_the_line_field_and_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok.png"), png(2, 2)).unwrap();
        std::fs::write(dir.path().join("bad.png"), b"not an image").unwrap();
        let cases = [
            (
                r#"{"text": "x", "images": ["ok.png", "missing.png"]}"#,
                "in.jsonl:1: field `images[1]`: cannot read image",
            ),
            (
                r#"{"text": "x", "images": ["ok.png", "bad.png"]}"#,
                "in.jsonl:1: field `images[1]`: not a recognised image",
            ),
            (
                r#"{"text": "x", "images": ["ok.png", 7]}"#,
                "in.jsonl:1: field `images[1]` must be a string",
            ),
            (
                r#"{"text": "x", "images": ["https://example.com/a.png"]}"#,
                "field `images[0]`: remote URL",
            ),
            (
                r#"{"text": "x", "images": ["ok.png", "data:image/png;base64,@@"]}"#,
                "field `images[1]`: invalid base64",
            ),
            (
                r#"{"text": "x", "images": "ok.png"}"#,
                "field `images` must be a list",
            ),
            (
                r#"{"text": "x", "image": "ok.png", "images": ["ok.png"]}"#,
                "both `image` and `images`",
            ),
            (
                r#"{"text": "x", "image": 3}"#,
                "field `image` must be a string",
            ),
        ];
        for (line, want) in cases {
            let input = dir.path().join("in.jsonl");
            std::fs::write(&input, format!("{line}\n")).unwrap();
            let out = dir.path().join("out/set.json");
            let err = format!("{:#}", prepare(&input, "x", &out).unwrap_err());
            assert!(err.contains(want), "{line}: {err}");
            assert!(!out.exists(), "{line}: output left behind");
        }
    }
}
