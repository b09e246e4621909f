//! Frozen benchmark inputs: one JSON file per set, written by `vlmbench prepare` and read by
//! `vlmbench run`.
//!
//! Every set shares one schema ([`DatasetFile`]) so the runner never needs to know where a
//! sample came from. The file is deterministic: the same inputs and seed give the same bytes on
//! any machine (no absolute paths, no timestamps, keys in a fixed order).
//!
//! Uses rng, fsutil and synth's built-in tokenizer (the default for synthetic prompt lengths).
//! Must not depend on engine, bench, report or commands.

pub mod cache_sets;
pub mod coco;
pub mod jsonl;
pub mod mmbench;
pub mod output;
pub mod prompts;
pub mod pyliteral;
pub mod synthetic;
pub mod tsv;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped whenever a field changes meaning or disappears, or a new one would be misread by
/// older readers; readers refuse newer versions. Version 2 added several images per sample
/// (`images`), which a version-1 reader would silently run as text.
pub const DATASET_SCHEMA_VERSION: u32 = 2;

/// The version a file of `samples` is written as: the oldest that holds them, so a set
/// without several-image samples stays byte-identical and readable by older builds.
pub fn schema_version_for(samples: &[Sample]) -> u32 {
    if samples.iter().any(|s| s.images.len() > 1) {
        2
    } else {
        1
    }
}

/// One frozen set: a header describing where it came from, then the samples in index order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetFile {
    /// Version of this schema ([`DATASET_SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Which kind of set: `coco`, `mmbench`, `prompts`, `synthetic`, `jsonl`, `shared-prefix`
    /// or `conversations`.
    pub set: String,
    /// Human name of the set, e.g. `coco_val_500` or `prompts_short`.
    pub name: String,
    /// vlmbench version that wrote the file.
    pub vlmbench_version: String,
    /// Seed of the random generator, where the set uses one.
    pub seed: Option<u64>,
    /// Number of samples in `samples`.
    pub num_samples: usize,
    /// Input files, by file name (not path, so the file is the same on every machine) and hash.
    pub sources: Vec<SourceFile>,
    /// Set-specific settings that shaped the samples (prompt, filters, distributions...).
    pub params: BTreeMap<String, serde_json::Value>,
    /// The samples, sorted by `index`.
    pub samples: Vec<Sample>,
}

/// An input file that went into a set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceFile {
    /// File name (or a description such as `built-in:short` for data shipped in the binary).
    pub name: String,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// One benchmark input.
///
/// In the file, a sample with one image names it as `"image": "rel/path"`, a text-only sample
/// as `"image": null`, and a sample with two or more as `"images": ["a", "b"]` (and no `image`
/// key): files with one image per sample read and write exactly as before several were allowed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "SampleJson", into = "SampleJson")]
pub struct Sample {
    /// Stable identifier from the source (COCO image id, MMBench index, line number...).
    pub index: i64,
    /// The exact text sent to the model (before any chat template).
    pub prompt: String,
    /// Image paths relative to the JSON file, `/`-separated, in the order the model sees them;
    /// empty for text-only samples.
    pub images: Vec<String>,
    /// Source fields that matter for this set (reference captions, answer, category, target
    /// token counts...). Keys are sorted.
    pub fields: BTreeMap<String, serde_json::Value>,
}

/// A sample as the file holds it: `image` (one path or `null`) or `images` (a list).
#[derive(Serialize, Deserialize)]
struct SampleJson {
    index: i64,
    prompt: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    image: Option<serde_json::Value>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    images: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    fields: BTreeMap<String, serde_json::Value>,
}

/// A key that is there, even as `null` (absent keys take the default, `None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

impl TryFrom<SampleJson> for Sample {
    type Error = String;

    fn try_from(s: SampleJson) -> Result<Self, String> {
        use serde_json::Value;
        let at = format!("sample {}", s.index);
        let images = match (s.image, s.images) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{at} has both `image` and `images`; keep one (`images` for two or more)"
                ))
            }
            (None | Some(Value::Null), None) => Vec::new(),
            (Some(Value::String(path)), None) => vec![path],
            (Some(other), None) => {
                return Err(format!(
                    "{at}: `image` must be a path (a string) or null, not {other}"
                ))
            }
            (None, Some(Value::Array(list))) => list
                .into_iter()
                .enumerate()
                .map(|(k, v)| match v {
                    Value::String(path) => Ok(path),
                    other => Err(format!(
                        "{at}: `images[{k}]` must be a path (a string), not {other}"
                    )),
                })
                .collect::<Result<_, _>>()?,
            (None, Some(other)) => {
                return Err(format!(
                    "{at}: `images` must be a list of paths, not {other}"
                ))
            }
        };
        Ok(Self {
            index: s.index,
            prompt: s.prompt,
            images,
            fields: s.fields,
        })
    }
}

impl From<Sample> for SampleJson {
    fn from(s: Sample) -> Self {
        use serde_json::Value;
        let (image, images) = match <[String; 1]>::try_from(s.images) {
            Ok([one]) => (Some(Value::String(one)), None),
            Err(list) if list.is_empty() => (Some(Value::Null), None),
            Err(list) => (None, Some(list.into_iter().map(Value::String).collect())),
        };
        Self {
            index: s.index,
            prompt: s.prompt,
            image,
            images,
            fields: s.fields,
        }
    }
}

/// The field in which a set asks for a per-sample output length (synthetic sets write it).
pub const OUTPUT_TOKENS_FIELD: &str = "output_tokens";

impl Sample {
    /// The output length this sample asks for, if its set gives one ([`OUTPUT_TOKENS_FIELD`]).
    pub fn requested_output_tokens(&self) -> Option<u64> {
        self.fields
            .get(OUTPUT_TOKENS_FIELD)
            .and_then(|v| v.as_u64())
    }
}

/// A set loaded for a run: the file plus the folder its image paths are relative to.
#[derive(Debug, Clone)]
pub struct LoadedDataset {
    pub file: DatasetFile,
    /// Folder that holds the JSON file; image paths resolve against it.
    pub base_dir: PathBuf,
    /// sha256 of the JSON file's bytes, so reports can prove which inputs they ran on.
    pub sha256: String,
}

impl LoadedDataset {
    /// Reads and validates a frozen set.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read data file {}", path.display()))?;
        let file: DatasetFile = serde_json::from_slice(&bytes).map_err(|e| {
            // A sample's own check names the sample; other failures mean another kind of file.
            if e.is_data() && e.to_string().starts_with("sample ") {
                anyhow!(
                    "{}: {e}; fix that sample or re-run `vlmbench prepare`",
                    path.display()
                )
            } else {
                anyhow!(e).context(format!(
                    "{} is not a vlmbench data file (make one with `vlmbench prepare`)",
                    path.display()
                ))
            }
        })?;
        if file.schema_version > DATASET_SCHEMA_VERSION {
            bail!(
                "{}: schema_version {} is newer than this vlmbench understands ({}); upgrade vlmbench",
                path.display(),
                file.schema_version,
                DATASET_SCHEMA_VERSION
            );
        }
        if file.num_samples != file.samples.len() {
            bail!(
                "{}: header says num_samples = {} but the file holds {} samples; re-run `vlmbench prepare`",
                path.display(),
                file.num_samples,
                file.samples.len()
            );
        }
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Self {
            file,
            base_dir,
            sha256: sha256_hex(&bytes),
        })
    }

    /// Absolute-or-cwd-relative paths of a sample's images, in order (empty for text-only
    /// samples).
    pub fn image_paths(&self, sample: &Sample) -> Vec<PathBuf> {
        sample
            .images
            .iter()
            .map(|rel| self.base_dir.join(rel))
            .collect()
    }
}

/// Hex sha256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Describes an input file by name, hash and size, streaming it through the hasher.
pub fn describe_source(path: &Path) -> Result<SourceFile> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(SourceFile {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
        sha256: hex::encode(hasher.finalize()),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(images: &[&str]) -> Sample {
        Sample {
            index: 7,
            prompt: "p".into(),
            images: images.iter().map(|s| s.to_string()).collect(),
            fields: BTreeMap::new(),
        }
    }

    /// Files with at most one image per sample are written byte for byte as before several
    /// images were allowed; two or more go in `images`.
    #[test]
    fn one_image_keeps_the_image_key_and_several_use_images() {
        let text = serde_json::to_string(&sample(&[])).unwrap();
        assert_eq!(text, r#"{"index":7,"prompt":"p","image":null}"#);
        let one = serde_json::to_string(&sample(&["x_images/1.png"])).unwrap();
        assert_eq!(one, r#"{"index":7,"prompt":"p","image":"x_images/1.png"}"#);
        let two = serde_json::to_string(&sample(&["a.png", "b.jpg"])).unwrap();
        assert_eq!(
            two,
            r#"{"index":7,"prompt":"p","images":["a.png","b.jpg"]}"#
        );
        let mut with_fields = sample(&["a.png"]);
        with_fields.fields.insert("k".into(), 1.into());
        assert_eq!(
            serde_json::to_string(&with_fields).unwrap(),
            r#"{"index":7,"prompt":"p","image":"a.png","fields":{"k":1}}"#
        );
        for s in [
            sample(&[]),
            sample(&["a"]),
            sample(&["a", "b", "c"]),
            with_fields,
        ] {
            let back: Sample = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn either_key_reads_and_a_missing_one_is_text_only() {
        let read = |j: &str| serde_json::from_str::<Sample>(j).map(|s| s.images);
        assert_eq!(
            read(r#"{"index":1,"prompt":"p"}"#).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            read(r#"{"index":1,"prompt":"p","images":[]}"#).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            read(r#"{"index":1,"prompt":"p","images":["a"]}"#).unwrap(),
            ["a"]
        );
        assert_eq!(
            read(r#"{"index":1,"prompt":"p","images":["a","b"]}"#).unwrap(),
            ["a", "b"]
        );
    }

    #[test]
    fn malformed_image_keys_name_the_sample() {
        let err = |j: &str| serde_json::from_str::<Sample>(j).unwrap_err().to_string();
        let both = err(r#"{"index":12,"prompt":"p","image":"a","images":["b","c"]}"#);
        assert!(
            both.contains("sample 12 has both `image` and `images`"),
            "{both}"
        );
        let null_too = err(r#"{"index":12,"prompt":"p","image":null,"images":["b","c"]}"#);
        assert!(null_too.contains("both"), "{null_too}");
        let entry = err(r#"{"index":5,"prompt":"p","images":["a",3]}"#);
        assert!(
            entry.contains("sample 5: `images[1]` must be a path"),
            "{entry}"
        );
        let not_list = err(r#"{"index":5,"prompt":"p","images":"a"}"#);
        assert!(
            not_list.contains("sample 5: `images` must be a list"),
            "{not_list}"
        );
        let bad_one = err(r#"{"index":9,"prompt":"p","image":4}"#);
        assert!(
            bad_one.contains("sample 9: `image` must be a path"),
            "{bad_one}"
        );
    }

    #[test]
    fn image_paths_resolve_against_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set.json");
        let file = DatasetFile {
            schema_version: DATASET_SCHEMA_VERSION,
            set: "jsonl".into(),
            name: "x".into(),
            vlmbench_version: "0".into(),
            seed: None,
            num_samples: 2,
            sources: Vec::new(),
            params: BTreeMap::new(),
            samples: vec![sample(&["i/b.png", "i/a.png"]), sample(&[])],
        };
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let loaded = LoadedDataset::load(&path).unwrap();
        assert_eq!(loaded.file, file);
        assert_eq!(
            loaded.image_paths(&loaded.file.samples[0]),
            [dir.path().join("i/b.png"), dir.path().join("i/a.png")]
        );
        assert!(loaded.image_paths(&loaded.file.samples[1]).is_empty());
        std::fs::write(
            &path,
            br#"{"schema_version":1,"set":"jsonl","name":"x","vlmbench_version":"0","seed":null,
"num_samples":1,"sources":[],"params":{},"samples":[{"index":3,"prompt":"p","image":"a","images":["b"]}]}"#,
        )
        .unwrap();
        let err = format!("{:#}", LoadedDataset::load(&path).unwrap_err());
        assert!(err.contains("sample 3 has both"), "{err}");
        assert!(!err.contains("not a vlmbench data file"), "{err}");
    }

    /// Files without several-image samples keep version 1 (older builds read them); one with
    /// such a sample is version 2, which a version-1 reader refuses instead of running it as
    /// text.
    #[test]
    fn the_schema_version_is_the_oldest_that_holds_the_samples() {
        assert_eq!(schema_version_for(&[sample(&["a.png"]), sample(&[])]), 1);
        assert_eq!(schema_version_for(&[sample(&["a.png", "b.png"])]), 2);
    }
}
