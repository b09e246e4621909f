//! Seeded synthetic sets in the way GenAI-Perf / AIPerf make them: image sizes drawn from normal
//! distributions, prompts whose length in tokens is drawn from a normal distribution and then
//! made exact against a tokenizer.
//!
//! - Every image is different (seeded noise over a seeded colour field, plus the sample number
//!   drawn as a bar code), so a server's multimodal cache cannot flatter the numbers.
//! - Prompt length counts the tokens of the prompt text alone, without special tokens (BOS) or
//!   chat template; the engine reports the full input length it actually ran.
//! - Prompt words are drawn from the built-in prompt sets' vocabulary.
//! - Draws use [`SeededRng`] in a fixed order per sample (width, height, input length, output
//!   length, image pixels, words), so one seed gives one file on every machine.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{ImageFormat, RgbImage};
use tokenizers::Tokenizer;

use super::output::{probe_image, SetWriter};
use super::prompts::Builtin;
use super::{
    describe_source, schema_version_for, sha256_hex, DatasetFile, Sample, SourceFile,
    OUTPUT_TOKENS_FIELD,
};
use crate::rng::SeededRng;

/// Images are clamped to this range of sides so a wide distribution cannot make a 0-pixel or a
/// gigapixel image.
pub const MIN_IMAGE_SIDE: u32 = 16;
pub const MAX_IMAGE_SIDE: u32 = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthImageFormat {
    Png,
    Jpeg,
}

#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub width_mean: f64,
    pub width_stddev: f64,
    pub height_mean: f64,
    pub height_stddev: f64,
    pub format: SynthImageFormat,
}

#[derive(Debug, Clone)]
pub struct SyntheticOptions {
    pub name: String,
    pub num_samples: usize,
    pub seed: u64,
    /// `None` for a text-only set.
    pub images: Option<ImageSpec>,
    pub input_tokens_mean: f64,
    pub input_tokens_stddev: f64,
    /// (mean, stddev) of the requested output length, stored per sample as `output_tokens`.
    pub output_tokens: Option<(f64, f64)>,
    /// tokenizer.json to count prompt tokens with; `None` = the random presets' tokenizer.
    pub tokenizer: Option<PathBuf>,
}

/// `synthetic_<name>.json`.
pub fn default_file_name(name: &str) -> String {
    format!("synthetic_{}.json", crate::fsutil::sanitize_file_stem(name))
}

/// Generates the set and writes it to `out`.
pub fn prepare(opts: &SyntheticOptions, out: &Path) -> Result<DatasetFile> {
    if opts.num_samples == 0 {
        bail!("--num-samples must be at least 1");
    }
    if opts.input_tokens_mean.is_nan()
        || opts.input_tokens_mean < 1.0
        || opts.input_tokens_stddev < 0.0
    {
        bail!("--input-tokens-mean must be at least 1 and --input-tokens-stddev not negative");
    }
    let (tokenizer, tokenizer_source) = load_tokenizer(opts.tokenizer.as_deref())?;
    let words = vocabulary();
    let mut fitter = PromptFitter::new(&tokenizer, &words)?;
    let mut rng = SeededRng::new(opts.seed);
    let mut writer = SetWriter::new(out)?;
    let mut samples = Vec::with_capacity(opts.num_samples);
    for i in 0..opts.num_samples {
        let index = i as i64;
        let mut fields = BTreeMap::new();
        let size = opts.images.as_ref().map(|spec| {
            (
                draw_side(&mut rng, spec.width_mean, spec.width_stddev),
                draw_side(&mut rng, spec.height_mean, spec.height_stddev),
            )
        });
        let target = rng
            .normal(opts.input_tokens_mean, opts.input_tokens_stddev)
            .round()
            .max(1.0) as usize;
        if let Some((mean, sd)) = opts.output_tokens {
            let n = rng.normal(mean, sd).round().max(1.0) as u64;
            fields.insert(OUTPUT_TOKENS_FIELD.into(), n.into());
        }
        let image = match (size, &opts.images) {
            (Some((w, h)), Some(spec)) => {
                let bytes = render_image(&mut rng, i, w, h, spec.format)?;
                let info =
                    probe_image(&bytes).map_err(|e| anyhow::anyhow!("synthetic image {i}: {e}"))?;
                fields.insert("image_width".into(), w.into());
                fields.insert("image_height".into(), h.into());
                Some(writer.write_image(&format!("{i:06}"), &bytes, &info)?)
            }
            _ => None,
        };
        let prompt = fitter.fit(&mut rng, target).with_context(|| {
            format!("sample {i}: cannot make a prompt of exactly {target} tokens")
        })?;
        fields.insert("input_tokens".into(), target.into());
        samples.push(Sample {
            index,
            prompt,
            images: image.into_iter().collect(),
            fields,
        });
    }
    let mut params = BTreeMap::new();
    params.insert("input_tokens_mean".into(), opts.input_tokens_mean.into());
    params.insert(
        "input_tokens_stddev".into(),
        opts.input_tokens_stddev.into(),
    );
    if let Some((m, s)) = opts.output_tokens {
        params.insert("output_tokens_mean".into(), m.into());
        params.insert("output_tokens_stddev".into(), s.into());
    }
    if let Some(spec) = &opts.images {
        params.insert("image_width_mean".into(), spec.width_mean.into());
        params.insert("image_width_stddev".into(), spec.width_stddev.into());
        params.insert("image_height_mean".into(), spec.height_mean.into());
        params.insert("image_height_stddev".into(), spec.height_stddev.into());
        params.insert(
            "image_format".into(),
            match spec.format {
                SynthImageFormat::Png => "png",
                SynthImageFormat::Jpeg => "jpeg",
            }
            .into(),
        );
    }
    params.insert(
        "token_count".into(),
        "prompt text without special tokens".into(),
    );
    let file = DatasetFile {
        schema_version: schema_version_for(&samples),
        set: "synthetic".into(),
        name: format!("synthetic_{}", opts.name),
        vlmbench_version: env!("CARGO_PKG_VERSION").into(),
        seed: Some(opts.seed),
        num_samples: samples.len(),
        sources: vec![tokenizer_source],
        params,
        samples,
    };
    writer.finish(&file)?;
    Ok(file)
}

/// The tokenizer prompt lengths are counted with (`--tokenizer`, else the random presets'
/// built-in one) and how the set names it among its sources.
pub(super) fn load_tokenizer(path: Option<&Path>) -> Result<(Tokenizer, SourceFile)> {
    Ok(match path {
        Some(path) => (
            Tokenizer::from_file(path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot load tokenizer {}: {e} (expected a Hugging Face tokenizer.json)",
                    path.display()
                )
            })?,
            describe_source(path)?,
        ),
        None => {
            let json = crate::synth::builtin_tokenizer_json();
            let tok = Tokenizer::from_bytes(json.as_bytes())
                .map_err(|e| anyhow::anyhow!("built-in tokenizer: {e}"))?;
            let sf = SourceFile {
                name: "built-in:tokenizer".into(),
                sha256: sha256_hex(json.as_bytes()),
                bytes: json.len() as u64,
            };
            (tok, sf)
        }
    })
}

fn draw_side(rng: &mut SeededRng, mean: f64, stddev: f64) -> u32 {
    (rng.normal(mean, stddev).round() as i64).clamp(MIN_IMAGE_SIDE as i64, MAX_IMAGE_SIDE as i64)
        as u32
}

/// Distinct lowercase words of the built-in prompt sets, sorted (a fixed vocabulary).
pub(super) fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = Builtin::ALL
        .iter()
        .flat_map(|b| b.text().split_whitespace())
        .map(|w| {
            w.chars()
                .filter(|c| c.is_ascii_alphabetic())
                .collect::<String>()
                .to_ascii_lowercase()
        })
        .filter(|w| (2..=12).contains(&w.len()))
        .collect();
    words.sort();
    words.dedup();
    words
}

/// Builds prompts of an exact token count. Word costs are cached; a full encode verifies the
/// result, and a few fill/trim steps repair tokenizer merges across word boundaries.
pub(super) struct PromptFitter<'a> {
    tokenizer: &'a Tokenizer,
    words: Vec<(String, usize)>,
    /// Words (with their leading space) that cost exactly one token.
    fillers: Vec<String>,
}

impl<'a> PromptFitter<'a> {
    pub(super) fn new(tokenizer: &'a Tokenizer, vocab: &[String]) -> Result<Self> {
        let mut words = Vec::with_capacity(vocab.len());
        let mut fillers = Vec::new();
        for w in vocab {
            let spaced = format!(" {w}");
            let cost = count(tokenizer, &spaced)?;
            if cost == 1 {
                fillers.push(spaced);
            }
            words.push((w.clone(), cost));
        }
        for p in [".", ",", " a", " I", "!", "?", " -", ";", ":", " "] {
            if count(tokenizer, p)? == 1 {
                fillers.push(p.to_string());
            }
        }
        if words.is_empty() {
            bail!("no vocabulary to build prompts from");
        }
        Ok(Self {
            tokenizer,
            words,
            fillers,
        })
    }

    pub(super) fn fit(&mut self, rng: &mut SeededRng, target: usize) -> Result<String> {
        let mut parts: Vec<String> = Vec::new();
        let mut estimate = 0usize;
        while estimate < target {
            let (w, cost) = &self.words[rng.below(self.words.len() as u64) as usize];
            let part = if parts.is_empty() {
                capitalise(w)
            } else {
                format!(" {w}")
            };
            if estimate + cost > target + 1 && !self.fillers.is_empty() {
                let f = &self.fillers[rng.below(self.fillers.len() as u64) as usize];
                parts.push(f.clone());
                estimate += 1;
            } else {
                parts.push(part);
                estimate += cost;
            }
        }
        for _ in 0..4 * target + 64 {
            let text = parts.concat();
            let n = count(self.tokenizer, &text)?;
            if n == target {
                return Ok(text);
            }
            if n > target {
                parts.pop();
            } else if self.fillers.is_empty() {
                let (w, _) = &self.words[rng.below(self.words.len() as u64) as usize];
                parts.push(format!(" {w}"));
            } else {
                let f = &self.fillers[rng.below(self.fillers.len() as u64) as usize];
                parts.push(f.clone());
            }
            if parts.is_empty() {
                let (w, _) = &self.words[rng.below(self.words.len() as u64) as usize];
                parts.push(capitalise(w));
            }
        }
        bail!("the tokenizer's merges never landed on the exact length; try another --seed")
    }
}

fn capitalise(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

pub(super) fn count(tokenizer: &Tokenizer, text: &str) -> Result<usize> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))?
        .len())
}

/// A unique image: a seeded two-colour gradient, seeded noise, and the sample number drawn as
/// a row of black and white bars along the top (so no two samples can ever be equal).
fn render_image(
    rng: &mut SeededRng,
    sample: usize,
    width: u32,
    height: u32,
    format: SynthImageFormat,
) -> Result<Vec<u8>> {
    let c0: [u8; 3] = std::array::from_fn(|_| rng.below(256) as u8);
    let c1: [u8; 3] = std::array::from_fn(|_| rng.below(256) as u8);
    let noise_seed = rng.next_u64();
    let mut noise = SeededRng::new(noise_seed);
    let mut img = RgbImage::new(width, height);
    let bar = (width / 64).max(1);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let t = (x + y) as f64 / (width + height) as f64;
        let jitter = noise.next_u64();
        *px = image::Rgb(std::array::from_fn(|c| {
            let base = c0[c] as f64 * (1.0 - t) + c1[c] as f64 * t;
            let j = ((jitter >> (c * 8)) & 0x1f) as f64 - 16.0;
            (base + j).clamp(0.0, 255.0) as u8
        }));
        if y < bar.min(height) {
            let bit = (x / bar) as usize;
            if bit < 64 {
                let on = (sample as u64 >> bit) & 1 == 1;
                *px = if on {
                    image::Rgb([255; 3])
                } else {
                    image::Rgb([0; 3])
                };
            }
        }
    }
    let mut out = Cursor::new(Vec::new());
    match format {
        SynthImageFormat::Png => img.write_to(&mut out, ImageFormat::Png)?,
        SynthImageFormat::Jpeg => {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
            img.write_with_encoder(enc)?
        }
    }
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(seed: u64, dir: &Path) -> (SyntheticOptions, PathBuf) {
        (
            SyntheticOptions {
                name: "t".into(),
                num_samples: 4,
                seed,
                images: Some(ImageSpec {
                    width_mean: 64.0,
                    width_stddev: 8.0,
                    height_mean: 48.0,
                    height_stddev: 0.0,
                    format: SynthImageFormat::Png,
                }),
                input_tokens_mean: 40.0,
                input_tokens_stddev: 10.0,
                output_tokens: Some((20.0, 0.0)),
                tokenizer: None,
            },
            dir.join("synthetic_t.json"),
        )
    }

    #[test]
    fn exact_lengths_unique_images_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let (o, out) = opts(42, dir.path());
        let file = prepare(&o, &out).unwrap();
        let tok = Tokenizer::from_bytes(crate::synth::builtin_tokenizer_json().as_bytes()).unwrap();
        let mut hashes = std::collections::BTreeSet::new();
        for s in &file.samples {
            let want = s.fields["input_tokens"].as_u64().unwrap() as usize;
            assert_eq!(
                tok.encode(s.prompt.as_str(), false).unwrap().len(),
                want,
                "{:?}",
                s.prompt
            );
            let bytes = std::fs::read(dir.path().join(&s.images[0])).unwrap();
            let img = image::load_from_memory(&bytes).unwrap();
            assert_eq!(
                img.width() as u64,
                s.fields["image_width"].as_u64().unwrap()
            );
            assert_eq!(img.height(), 48);
            hashes.insert(sha256_hex(&bytes));
            assert_eq!(s.fields["output_tokens"], 20);
        }
        assert_eq!(hashes.len(), 4, "every image must differ");
        let first = std::fs::read(&out).unwrap();
        prepare(&o, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), first, "same seed, same bytes");
        let (o2, out2) = opts(43, dir.path());
        let out2 = out2.with_file_name("other.json");
        prepare(&o2, &out2).unwrap();
        assert_ne!(std::fs::read(&out2).unwrap(), first);
    }
}
