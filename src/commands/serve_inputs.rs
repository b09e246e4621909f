//! What each served request sends, made before any clock starts: images read once per file,
//! request bodies, and the files a run reads (which its report must not replace).

use anyhow::{Context, Result};

use crate::bench::unique_inputs::SentInput;
use crate::cli::RunArgs;
use crate::client::http::{build_body, ClientConfig, ImagePayload};
use crate::dataset::{LoadedDataset, Sample};

use super::serve_load;

/// The files a run reads, which its report must not replace.
pub fn run_inputs(args: &RunArgs) -> Vec<(&'static str, &std::path::Path)> {
    let mut inputs: Vec<(&'static str, &std::path::Path)> = Vec::new();
    if let Some(d) = &args.data_file {
        inputs.push(("--data-file", d.as_path()));
    }
    if let Some(t) = &args.tokenizer {
        inputs.push(("--tokenizer", t.as_path()));
    }
    inputs
}

/// Image files read once each, with their MIME type.
#[derive(Default)]
pub struct ImageCache {
    by_path: std::collections::HashMap<std::path::PathBuf, (&'static str, Vec<u8>)>,
}

impl ImageCache {
    /// The sample's images (MIME type and bytes), in order; empty for a text-only sample.
    pub fn get(
        &mut self,
        dataset: &LoadedDataset,
        sample: &Sample,
    ) -> Result<Vec<(&'static str, Vec<u8>)>> {
        dataset
            .image_paths(sample)
            .into_iter()
            .map(|path| self.read(sample, path))
            .collect()
    }

    fn read(
        &mut self,
        sample: &Sample,
        path: std::path::PathBuf,
    ) -> Result<(&'static str, Vec<u8>)> {
        if let Some(hit) = self.by_path.get(&path) {
            return Ok(hit.clone());
        }
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "sample {}: cannot read image {}",
                sample.index,
                path.display()
            )
        })?;
        let mime = match image::guess_format(&bytes) {
            Ok(image::ImageFormat::Png) => "image/png",
            Ok(image::ImageFormat::Gif) => "image/gif",
            Ok(image::ImageFormat::WebP) => "image/webp",
            Ok(image::ImageFormat::Bmp) => "image/bmp",
            _ => "image/jpeg",
        };
        self.by_path.insert(path, (mime, bytes.clone()));
        Ok((mime, bytes))
    }
}

/// A replayed trace request's own output length (its max_tokens).
pub fn replay_max_tokens(dataset: &LoadedDataset, sample: &Sample) -> Option<usize> {
    (dataset.file.set == "trace")
        .then(|| sample.fields.get(serve_load::REPLAY_MAX_TOKENS_FIELD))
        .flatten()
        .and_then(|v| v.as_u64())
        .map(|n| n as usize)
}

pub fn body_for(cfg: &ClientConfig, input: &SentInput, max_tokens: Option<usize>) -> Vec<u8> {
    let own;
    let cfg = match max_tokens {
        Some(n) => {
            own = ClientConfig {
                max_tokens: n,
                ..cfg.clone()
            };
            &own
        }
        None => cfg,
    };
    let images: Vec<ImagePayload<'_>> = input
        .images
        .iter()
        .map(|(mime, bytes)| ImagePayload { mime, bytes })
        .collect();
    build_body(cfg, &input.prompt, &images)
}
