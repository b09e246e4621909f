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

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped whenever a field changes meaning or disappears; readers refuse newer versions.
pub const DATASET_SCHEMA_VERSION: u32 = 1;

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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Stable identifier from the source (COCO image id, MMBench index, line number...).
    pub index: i64,
    /// The exact text sent to the model (before any chat template).
    pub prompt: String,
    /// Image path relative to the JSON file, `/`-separated; `null` for text-only samples.
    pub image: Option<String>,
    /// Source fields that matter for this set (reference captions, answer, category, target
    /// token counts...). Keys are sorted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, serde_json::Value>,
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
        let file: DatasetFile = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not a vlmbench data file (make one with `vlmbench prepare`)",
                path.display()
            )
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

    /// Absolute-or-cwd-relative path of a sample's image.
    pub fn image_path(&self, sample: &Sample) -> Option<PathBuf> {
        sample.image.as_ref().map(|rel| self.base_dir.join(rel))
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
