//! Qwen2-VL / Qwen2.5-VL image preprocessing, as transformers' Pillow-backed
//! `Qwen2VLImageProcessor` does it, pixel for pixel.
//!
//! 1. `smart_resize`: each side rounded to a multiple of `patch_size × merge_size` (28), then
//!    the whole scaled down (sides floored) or up (sides ceiled) until the pixel count lies in
//!    `[min_pixels, max_pixels]`, keeping the aspect ratio as closely as the grid allows;
//! 2. Pillow's resampler (bicubic by default) to that size, exactly as LLaVA's processors
//!    resize (shared code);
//! 3. rescale by 1/255, normalise with the CLIP mean/std (f32, channels first);
//! 4. a still image is one frame, repeated to fill the temporal patch (2 frames);
//! 5. cut into 14 × 14 patches, each flattened `(channel, frame, row, column)` — the layout of the
//!    patch-embedding convolution's weight — and ordered so that the `merge_size × merge_size`
//!    patches the merger joins are consecutive: merged rows, merged columns, then the patches
//!    inside each 2 × 2 block row by row.
//!
//! Image tokens: `(height / 14) × (width / 14) / merge_size²` after resizing.

use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde_json::Value;

use crate::models::llava::preprocess::{
    json_triple, load_rgb, normalize_into, resize, Resample, CLIP_MEAN, CLIP_STD,
};

/// Settings of `preprocessor_config.json` (`Qwen2VLImageProcessor`).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlImageProcessor {
    pub do_resize: bool,
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub patch_size: u32,
    pub temporal_patch_size: u32,
    pub merge_size: u32,
    pub resample: Resample,
    pub rescale_factor: Option<f64>,
    pub mean: Option<[f64; 3]>,
    pub std: [f64; 3],
}

/// One image cut into the vision tower's patches.
#[derive(Debug, Clone)]
pub struct PatchedImage {
    /// `(grid_t × grid_h × grid_w, channels × temporal × patch × patch)`, row-major.
    pub patches: Vec<f32>,
    /// Patches along time, height and width (transformers' `image_grid_thw`).
    pub grid_thw: (usize, usize, usize),
    /// Values per patch.
    pub patch_len: usize,
    /// The image's size before processing, `(height, width)`.
    pub original_size: (u32, u32),
}

impl PatchedImage {
    /// Tokens the language model sees for this image (after the `merge × merge` merger).
    pub fn tokens(&self, merge_size: usize) -> usize {
        let (t, h, w) = self.grid_thw;
        t * h * w / (merge_size * merge_size)
    }
}

/// The size `(height, width)` transformers' `smart_resize` gives an image of `(height, width)`:
/// multiples of `factor` with a pixel count in `[min_pixels, max_pixels]`.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32)> {
    if height == 0 || width == 0 {
        bail!("the image is empty ({width}x{height})");
    }
    let (h, w, f) = (f64::from(height), f64::from(width), f64::from(factor));
    if h.max(w) / h.min(w) > 200.0 {
        bail!(
            "image of {width}x{height}: the aspect ratio must be below 200 for Qwen2-VL's processor"
        );
    }
    // Python's round() rounds halves to even.
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as u32, w_bar as u32))
}

impl Default for Qwen2VlImageProcessor {
    /// The settings Qwen2-VL and Qwen2.5-VL checkpoints ship.
    fn default() -> Self {
        Self {
            do_resize: true,
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            resample: Resample::Bicubic,
            rescale_factor: Some(1.0 / 255.0),
            mean: Some(CLIP_MEAN),
            std: CLIP_STD,
        }
    }
}

impl Qwen2VlImageProcessor {
    /// Reads `preprocessor_config.json` (or the `image_processor` part of transformers 5's
    /// `processor_config.json`); absent keys keep transformers' defaults. `min_pixels` /
    /// `max_pixels` win over `size`, as in transformers.
    pub fn from_json(v: &Value) -> Result<Self> {
        let mut p = Self::default();
        let u = |k: &str| v.get(k).and_then(Value::as_u64);
        let flag = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
        if let Some(size) = v.get("size").filter(|s| s.is_object()) {
            let s = |k: &str| size.get(k).and_then(Value::as_u64);
            if let Some(min) = s("shortest_edge").or_else(|| s("min_pixels")) {
                p.min_pixels = min;
            }
            if let Some(max) = s("longest_edge").or_else(|| s("max_pixels")) {
                p.max_pixels = max;
            }
        }
        if let Some(min) = u("min_pixels") {
            p.min_pixels = min;
        }
        if let Some(max) = u("max_pixels") {
            p.max_pixels = max;
        }
        if p.min_pixels > p.max_pixels {
            bail!(
                "preprocessor_config.json: min_pixels {} is above max_pixels {}",
                p.min_pixels,
                p.max_pixels
            );
        }
        for (key, slot) in [
            ("patch_size", &mut p.patch_size),
            ("temporal_patch_size", &mut p.temporal_patch_size),
            ("merge_size", &mut p.merge_size),
        ] {
            if let Some(x) = u(key) {
                if x == 0 {
                    bail!("preprocessor_config.json: `{key}` must be positive");
                }
                *slot = x as u32;
            }
        }
        if let Some(r) = u("resample") {
            p.resample = Resample::from_pil_code(r)?;
        }
        if let Some(f) = v.get("rescale_factor").and_then(Value::as_f64) {
            p.rescale_factor = Some(f);
        }
        if !flag("do_rescale", true) {
            p.rescale_factor = None;
        }
        if let Some(m) = json_triple(v, "image_mean")? {
            p.mean = Some(m);
        }
        if let Some(s) = json_triple(v, "image_std")? {
            p.std = s;
        }
        if !flag("do_normalize", true) {
            p.mean = None;
        }
        p.do_resize = flag("do_resize", true);
        Ok(p)
    }

    /// Loads, decodes and processes an image file.
    pub fn prepare_file(&self, path: &std::path::Path) -> Result<PatchedImage> {
        self.prepare(&load_rgb(path)?)
            .with_context(|| format!("image {}", path.display()))
    }

    /// Resizes, normalises and cuts a decoded RGB image into patches.
    pub fn prepare(&self, img: &RgbImage) -> Result<PatchedImage> {
        let original_size = (img.height(), img.width());
        let ps = self.patch_size as usize;
        let m = self.merge_size as usize;
        let factor = self.patch_size * self.merge_size;
        let resized = if self.do_resize {
            let (h, w) = smart_resize(
                img.height(),
                img.width(),
                factor,
                self.min_pixels,
                self.max_pixels,
            )?;
            resize(img, w, h, self.resample)
        } else {
            img.clone()
        };
        let (height, width) = (resized.height() as usize, resized.width() as usize);
        if height % (ps * m) != 0 || width % (ps * m) != 0 {
            bail!(
                "image of {width}x{height} is not a multiple of {} on each side (do_resize is off)",
                ps * m
            );
        }
        let mut chw = Vec::with_capacity(3 * height * width);
        normalize_into(&resized, self.rescale_factor, self.mean, self.std, &mut chw);
        let (gh, gw) = (height / ps, width / ps);
        let frames = self.temporal_patch_size as usize;
        let patch_len = 3 * frames * ps * ps;
        let mut patches = Vec::with_capacity(gh * gw * patch_len);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let (row0, col0) = ((bh * m + mh) * ps, (bw * m + mw) * ps);
                        for ch in 0..3 {
                            let plane = &chw[ch * height * width..(ch + 1) * height * width];
                            // A still image: every frame of the temporal patch is the same.
                            for _ in 0..frames {
                                for y in 0..ps {
                                    let start = (row0 + y) * width + col0;
                                    patches.extend_from_slice(&plane[start..start + ps]);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(PatchedImage {
            patches,
            grid_thw: (1, gh, gw),
            patch_len,
            original_size,
        })
    }

    /// Image tokens for an image of `(height, width)`, without processing it.
    pub fn token_count(&self, height: u32, width: u32) -> Result<usize> {
        let (h, w) = if self.do_resize {
            smart_resize(
                height,
                width,
                self.patch_size * self.merge_size,
                self.min_pixels,
                self.max_pixels,
            )?
        } else {
            (height, width)
        };
        let per = (self.patch_size * self.merge_size) as usize;
        Ok((h as usize / per) * (w as usize / per))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_transformers() {
        // Values from transformers' smart_resize (factor 28, 56*56 .. 28*28*1280).
        let (min, max) = (56 * 56, 28 * 28 * 1280);
        assert_eq!(smart_resize(480, 640, 28, min, max).unwrap(), (476, 644));
        assert_eq!(smart_resize(1080, 1920, 28, min, max).unwrap(), (728, 1316));
        assert_eq!(smart_resize(20, 30, 28, min, max).unwrap(), (56, 84));
        // Halves round to even: 42 / 28 = 1.5 -> 2, 70 / 28 = 2.5 -> 2.
        assert_eq!(smart_resize(42, 70, 28, 0, max).unwrap(), (56, 56));
        assert_eq!(
            smart_resize(480, 640, 28, min, 28 * 28 * 64).unwrap(),
            (168, 252)
        );
        assert!(smart_resize(10, 3000, 28, min, max).is_err());
        assert!(smart_resize(0, 30, 28, min, max).is_err());
    }

    #[test]
    fn patches_are_ordered_for_the_merger() {
        let p = Qwen2VlImageProcessor {
            mean: None,
            rescale_factor: None,
            do_resize: false,
            ..Default::default()
        };
        // 56x84: a 4x6 patch grid, 2x3 merged blocks; pixel value = patch id in row-major.
        let img = RgbImage::from_fn(84, 56, |x, y| {
            let id = (y / 14 * 6 + x / 14) as u8;
            image::Rgb([id, id + 100, 0])
        });
        let out = p.prepare(&img).unwrap();
        assert_eq!(out.grid_thw, (1, 4, 6));
        assert_eq!(out.patch_len, 3 * 2 * 14 * 14);
        assert_eq!(out.tokens(2), 6);
        let first = |i: usize| out.patches[i * out.patch_len];
        // Block (0,0): patches (0,0) (0,1) (1,0) (1,1); then block (0,1): (0,2) (0,3) ...
        let order: Vec<f32> = (0..8).map(first).collect();
        assert_eq!(order, vec![0.0, 1.0, 6.0, 7.0, 2.0, 3.0, 8.0, 9.0]);
        // Within a patch: channel, then the two (equal) frames.
        let patch = &out.patches[..out.patch_len];
        assert!(patch[..2 * 196].iter().all(|&v| v == 0.0));
        assert!(patch[2 * 196..4 * 196].iter().all(|&v| v == 100.0));
    }

    #[test]
    fn config_keys_are_read() {
        let v = serde_json::json!({
            "image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 3136,
            "max_pixels": 12845056, "size": {"shortest_edge": 100, "longest_edge": 200},
            "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "resample": 3,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        });
        let p = Qwen2VlImageProcessor::from_json(&v).unwrap();
        assert_eq!((p.min_pixels, p.max_pixels), (3136, 12845056));
        assert_eq!(p.mean, Some([0.5; 3]));
        let v5 = serde_json::json!({"size": {"shortest_edge": 100, "longest_edge": 50000}});
        let p5 = Qwen2VlImageProcessor::from_json(&v5).unwrap();
        assert_eq!((p5.min_pixels, p5.max_pixels), (100, 50000));
        assert_eq!(p5.token_count(480, 640).unwrap(), 6 * 9);
        assert!(Qwen2VlImageProcessor::from_json(&serde_json::json!({"merge_size": 0})).is_err());
    }
}
