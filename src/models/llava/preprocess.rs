//! Image preprocessing as LLaVA checkpoints were trained with it, pixel for pixel.
//!
//! The reference is Hugging Face's CLIP / LLaVA / LLaVA-NeXT image processors, which resize with
//! Pillow. Pillow's resampler is reproduced exactly here (separable convolution, filter support
//! widened by the downscale factor, 22-bit fixed-point coefficients, rounding and clipping to
//! 8 bits after each pass), so the tensors the vision tower sees are the ones transformers feeds
//! it — the precondition for matching its greedy tokens.
//!
//! Pipeline (`preprocessor_config.json` decides each step):
//! - optional pad to a square with the mean colour (original LLaVA's `image_aspect_ratio: pad`,
//!   `LlavaImageProcessor.do_pad`);
//! - resize so the shortest edge is `size`, centre-crop to `crop_size` (CLIP);
//! - LLaVA-NeXT "anyres": pick the grid resolution that keeps most of the image, resize into it
//!   keeping the aspect ratio, pad with black, cut into crop-sized tiles, and prepend the whole
//!   image squashed to one tile;
//! - rescale by 1/255 and normalise with the CLIP mean/std, channels first.

use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde_json::Value;

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// CLIP's normalisation constants (also LLaVA's).
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Pillow's resampling filters, by their `PIL.Image.Resampling` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Nearest,
    Lanczos,
    Bilinear,
    Bicubic,
}

impl Resample {
    /// From the integer in `preprocessor_config.json` (`resample`).
    pub fn from_pil_code(code: u64) -> Result<Self> {
        Ok(match code {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            other => bail!("preprocessor_config.json: resample {other} is not supported (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic)"),
        })
    }

    fn support(self) -> f64 {
        match self {
            Self::Nearest => 0.5,
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Nearest => {
                if (-0.5..0.5).contains(&x) {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// For each output position: first input index and fixed-point weights.
struct Coefficients {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn coefficients(in_size: usize, out_size: usize, filter: Resample) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let mut starts = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // Pillow truncates toward zero, then clamps.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let raw: Vec<f64> = (xmin..xmax)
            .map(|x| filter.weight((x as f64 - center + 0.5) / filter_scale))
            .collect();
        let total: f64 = raw.iter().sum();
        let fixed = raw
            .iter()
            .map(|w| {
                let w = if total != 0.0 { w / total } else { *w };
                let f = w * f64::from(1u32 << PRECISION_BITS);
                if w < 0.0 {
                    (f - 0.5) as i32
                } else {
                    (f + 0.5) as i32
                }
            })
            .collect();
        starts.push(xmin);
        weights.push(fixed);
    }
    Coefficients { starts, weights }
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like `PIL.Image.resize((width, height), resample)` on an RGB image.
///
/// Two separable passes, each rounded to 8 bits. Their order matters for the result and is
/// Pillow's (13): the vertical pass first when the height shrinks by more than twice as many
/// pixels as the width does, the horizontal pass first otherwise.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Resample) -> RgbImage {
    let (w0, h0) = img.dimensions();
    if (w0, h0) == (width, height) {
        return img.clone();
    }
    if filter == Resample::Nearest {
        return resize_nearest(img, width, height);
    }
    let shrink_h = i64::from(h0) - i64::from(height);
    let shrink_w = i64::from(w0) - i64::from(width);
    let vertical_first = shrink_h > 0 && shrink_h > 2 * shrink_w;
    if vertical_first {
        let tall = resize_vertical(img, height, filter);
        resize_horizontal(&tall, width, filter)
    } else {
        let wide = resize_horizontal(img, width, filter);
        resize_vertical(&wide, height, filter)
    }
}

/// Pillow's horizontal pass (the identity when the width does not change).
fn resize_horizontal(img: &RgbImage, width: u32, filter: Resample) -> RgbImage {
    let (w0, h0) = img.dimensions();
    if width == w0 {
        return img.clone();
    }
    let c = coefficients(w0 as usize, width as usize, filter);
    let mut out = RgbImage::new(width, h0);
    let src = img.as_raw();
    let dst: &mut [u8] = &mut out;
    for y in 0..h0 as usize {
        let row = &src[y * w0 as usize * 3..(y + 1) * w0 as usize * 3];
        for (xx, (start, ws)) in c.starts.iter().zip(&c.weights).enumerate() {
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (k, w) in ws.iter().enumerate() {
                let px = &row[(start + k) * 3..(start + k) * 3 + 3];
                for ch in 0..3 {
                    acc[ch] += i32::from(px[ch]) * w;
                }
            }
            let o = (y * width as usize + xx) * 3;
            for ch in 0..3 {
                dst[o + ch] = clip8(acc[ch]);
            }
        }
    }
    out
}

/// Pillow's vertical pass (the identity when the height does not change).
fn resize_vertical(img: &RgbImage, height: u32, filter: Resample) -> RgbImage {
    let (w0, h0) = img.dimensions();
    if height == h0 {
        return img.clone();
    }
    let c = coefficients(h0 as usize, height as usize, filter);
    let w = w0 as usize;
    let mut out = RgbImage::new(w0, height);
    let src = img.as_raw();
    let dst: &mut [u8] = &mut out;
    for (yy, (start, ws)) in c.starts.iter().zip(&c.weights).enumerate() {
        for x in 0..w {
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (k, wt) in ws.iter().enumerate() {
                let o = ((start + k) * w + x) * 3;
                for ch in 0..3 {
                    acc[ch] += i32::from(src[o + ch]) * wt;
                }
            }
            let o = (yy * w + x) * 3;
            for ch in 0..3 {
                dst[o + ch] = clip8(acc[ch]);
            }
        }
    }
    out
}

/// Pillow's nearest neighbour: the source pixel under each output pixel's centre.
fn resize_nearest(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w0, h0) = img.dimensions();
    let sx = f64::from(w0) / f64::from(width);
    let sy = f64::from(h0) / f64::from(height);
    RgbImage::from_fn(width, height, |x, y| {
        let xs = (((f64::from(x) + 0.5) * sx) as u32).min(w0 - 1);
        let ys = (((f64::from(y) + 0.5) * sy) as u32).min(h0 - 1);
        *img.get_pixel(xs, ys)
    })
}

/// Output size when the shortest edge becomes `short` (transformers' `get_resize_output_image_size`
/// with `default_to_square=False`): the long edge is truncated, not rounded.
pub fn shortest_edge_size(width: u32, height: u32, short: u32) -> (u32, u32) {
    let (s, l) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let long = (u64::from(short) * u64::from(l)) as f64 / f64::from(s);
    let long = long as u32;
    if width <= height {
        (short, long)
    } else {
        (long, short)
    }
}

/// Centre crop as transformers does it (top/left rounded down), zero-padding a side that is
/// smaller than the crop.
pub fn center_crop(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w0, h0) = img.dimensions();
    if w0 >= width && h0 >= height {
        let left = (w0 - width) / 2;
        let top = (h0 - height) / 2;
        return image::imageops::crop_imm(img, left, top, width, height).to_image();
    }
    let padded_w = w0.max(width);
    let padded_h = h0.max(height);
    let mut canvas = RgbImage::new(padded_w, padded_h);
    let left = (padded_w - w0) / 2;
    let top = (padded_h - h0) / 2;
    image::imageops::replace(&mut canvas, img, i64::from(left), i64::from(top));
    center_crop(&canvas, width, height)
}

/// Original LLaVA's `expand2square`: the image centred on a square of `background`.
pub fn pad_to_square(img: &RgbImage, background: [u8; 3]) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img.clone();
    }
    let side = w.max(h);
    let mut canvas = RgbImage::from_pixel(side, side, image::Rgb(background));
    let (x, y) = if w > h {
        (0, (w - h) / 2)
    } else {
        ((h - w) / 2, 0)
    };
    image::imageops::replace(&mut canvas, img, i64::from(x), i64::from(y));
    canvas
}

/// LLaVA-NeXT's choice of grid resolution `(height, width)` for an image of `(height, width)`:
/// the one that keeps the most pixels, then wastes the fewest.
pub fn select_best_resolution(original: (u32, u32), candidates: &[(u32, u32)]) -> (u32, u32) {
    let (oh, ow) = (f64::from(original.0), f64::from(original.1));
    let mut best = candidates[0];
    let mut max_effective = 0u64;
    let mut min_wasted = u64::MAX;
    for &(h, w) in candidates {
        let scale = (f64::from(w) / ow).min(f64::from(h) / oh);
        let dw = (ow * scale) as u64;
        let dh = (oh * scale) as u64;
        let effective = (dw * dh).min(u64::from(original.0) * u64::from(original.1));
        let wasted = u64::from(w) * u64::from(h) - effective;
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            max_effective = effective;
            min_wasted = wasted;
            best = (h, w);
        }
    }
    best
}

/// Size the image takes inside `target` `(height, width)` keeping its aspect ratio (rounded
/// up, as transformers' `get_patch_output_size`), as `(height, width)`.
fn fit_within(original: (u32, u32), target: (u32, u32)) -> (u32, u32) {
    let (oh, ow) = original;
    let (th, tw) = target;
    let scale_w = f64::from(tw) / f64::from(ow);
    let scale_h = f64::from(th) / f64::from(oh);
    if scale_w < scale_h {
        let h = (f64::from(oh) * scale_w).ceil() as u32;
        (h.min(th), tw)
    } else {
        let w = (f64::from(ow) * scale_h).ceil() as u32;
        (th, w.min(tw))
    }
}

/// How an image becomes pixel values, from `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// Shortest edge after resizing (`size.shortest_edge`), or an exact `(height, width)`.
    pub resize: Option<ResizeTo>,
    pub crop: Option<(u32, u32)>,
    pub resample: Resample,
    pub rescale_factor: Option<f64>,
    pub mean: Option<[f64; 3]>,
    pub std: [f64; 3],
    /// Pad to a square of this colour first.
    pub pad_to_square: Option<[u8; 3]>,
    /// LLaVA-NeXT grid resolutions `(height, width)`; `None` for single-tile models.
    pub grid_pinpoints: Option<Vec<(u32, u32)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    ShortestEdge(u32),
    Exact { height: u32, width: u32 },
}

/// Pixel values ready for the vision tower.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// `tiles × 3 × height × width`, channels first.
    pub pixels: Vec<f32>,
    pub tiles: usize,
    pub height: u32,
    pub width: u32,
    /// The image's size before any processing, `(height, width)`.
    pub original_size: (u32, u32),
}

impl ImageProcessor {
    /// CLIP's processor for a tower of `image_size` pixels (llava-hf 1.5's settings).
    pub fn clip(image_size: u32) -> Self {
        Self {
            resize: Some(ResizeTo::ShortestEdge(image_size)),
            crop: Some((image_size, image_size)),
            resample: Resample::Bicubic,
            rescale_factor: Some(1.0 / 255.0),
            mean: Some(CLIP_MEAN),
            std: CLIP_STD,
            pad_to_square: None,
            grid_pinpoints: None,
        }
    }

    /// The colour original LLaVA pads with: the mean, scaled to bytes and truncated.
    pub fn mean_color(&self) -> [u8; 3] {
        let m = self.mean.unwrap_or(CLIP_MEAN);
        [
            (m[0] * 255.0) as u8,
            (m[1] * 255.0) as u8,
            (m[2] * 255.0) as u8,
        ]
    }

    /// Reads `preprocessor_config.json`; keys it lacks keep CLIP's values for `image_size`.
    pub fn from_json(v: &Value, image_size: u32) -> Result<Self> {
        let mut p = Self::clip(image_size);
        let flag = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
        let size_of = |s: &Value| -> Option<ResizeTo> {
            if let Some(e) = s.as_u64() {
                return Some(ResizeTo::ShortestEdge(e as u32));
            }
            if let Some(e) = s.get("shortest_edge").and_then(Value::as_u64) {
                return Some(ResizeTo::ShortestEdge(e as u32));
            }
            let h = s.get("height").and_then(Value::as_u64)?;
            let w = s.get("width").and_then(Value::as_u64)?;
            Some(ResizeTo::Exact {
                height: h as u32,
                width: w as u32,
            })
        };
        if let Some(s) = v.get("size").and_then(size_of) {
            p.resize = Some(s);
        }
        if !flag("do_resize", true) {
            p.resize = None;
        }
        if let Some(c) = v.get("crop_size").and_then(size_of) {
            p.crop = Some(match c {
                ResizeTo::ShortestEdge(e) => (e, e),
                ResizeTo::Exact { height, width } => (height, width),
            });
        }
        if !flag("do_center_crop", true) {
            p.crop = None;
        }
        if let Some(r) = v.get("resample").and_then(Value::as_u64) {
            p.resample = Resample::from_pil_code(r)?;
        }
        if let Some(f) = v.get("rescale_factor").and_then(Value::as_f64) {
            p.rescale_factor = Some(f);
        }
        if !flag("do_rescale", true) {
            p.rescale_factor = None;
        }
        let triple = |k: &str| json_triple(v, k);
        if let Some(m) = triple("image_mean")? {
            p.mean = Some(m);
        }
        if let Some(s) = triple("image_std")? {
            p.std = s;
        }
        if !flag("do_normalize", true) {
            p.mean = None;
        }
        if flag("do_pad", false)
            && v.get("image_processor_type").and_then(Value::as_str) == Some("LlavaImageProcessor")
        {
            p.pad_to_square = Some(p.mean_color());
        }
        if let Some(g) = v.get("image_grid_pinpoints") {
            p.grid_pinpoints = Some(parse_pinpoints(g)?);
        }
        Ok(p)
    }

    /// Loads, decodes and processes an image file.
    pub fn prepare_file(&self, path: &std::path::Path) -> Result<PreparedImage> {
        Ok(self.prepare(&load_rgb(path)?))
    }

    /// Processes a decoded RGB image.
    pub fn prepare(&self, img: &RgbImage) -> PreparedImage {
        let original_size = (img.height(), img.width());
        let img = match self.pad_to_square {
            Some(bg) => pad_to_square(img, bg),
            None => img.clone(),
        };
        let tiles: Vec<RgbImage> = match (&self.grid_pinpoints, self.tile_size()) {
            (Some(grid), Some((tile_h, tile_w))) if !grid.is_empty() => {
                let best = select_best_resolution(original_size, grid);
                let (nh, nw) = fit_within((img.height(), img.width()), best);
                let resized = resize(&img, nw, nh, self.resample);
                let mut canvas = RgbImage::new(best.1, best.0);
                image::imageops::replace(
                    &mut canvas,
                    &resized,
                    i64::from((best.1 - nw) / 2),
                    i64::from((best.0 - nh) / 2),
                );
                let whole = match self.resize {
                    Some(ResizeTo::Exact { height, width }) => {
                        resize(&img, width, height, self.resample)
                    }
                    Some(ResizeTo::ShortestEdge(e)) => resize(&img, e, e, self.resample),
                    None => img.clone(),
                };
                let mut tiles = vec![whole];
                for y in (0..best.0).step_by(tile_h as usize) {
                    for x in (0..best.1).step_by(tile_w as usize) {
                        tiles.push(
                            image::imageops::crop_imm(&canvas, x, y, tile_w, tile_h).to_image(),
                        );
                    }
                }
                tiles
            }
            _ => vec![img],
        };
        let tiles: Vec<RgbImage> = tiles.iter().map(|t| self.resize_and_crop(t)).collect();
        let (width, height) = tiles[0].dimensions();
        let mut pixels = Vec::with_capacity(tiles.len() * 3 * (width * height) as usize);
        for t in &tiles {
            self.normalize_into(t, &mut pixels);
        }
        PreparedImage {
            pixels,
            tiles: tiles.len(),
            height,
            width,
            original_size,
        }
    }

    /// Processes an image that is not tiled although the model tiles (LLaVA-OneVision with
    /// several images in a sample): padded to a square in the mean colour, then one tile.
    pub fn prepare_untiled(&self, img: &RgbImage) -> PreparedImage {
        let original_size = (img.height(), img.width());
        let square = pad_to_square(img, self.mean_color());
        let tile = self.resize_and_crop(&square);
        let (width, height) = tile.dimensions();
        let mut pixels = Vec::with_capacity(3 * (width * height) as usize);
        self.normalize_into(&tile, &mut pixels);
        PreparedImage {
            pixels,
            tiles: 1,
            height,
            width,
            original_size,
        }
    }

    /// Loads, decodes and processes an image file with [`Self::prepare_untiled`].
    pub fn prepare_file_untiled(&self, path: &std::path::Path) -> Result<PreparedImage> {
        Ok(self.prepare_untiled(&load_rgb(path)?))
    }

    /// The side of a grid tile, as transformers takes it: the crop, else the resize target.
    fn tile_size(&self) -> Option<(u32, u32)> {
        self.crop.or(match self.resize? {
            ResizeTo::Exact { height, width } => (height, width),
            ResizeTo::ShortestEdge(e) => (e, e),
        }
        .into())
    }

    fn resize_and_crop(&self, img: &RgbImage) -> RgbImage {
        let resized = match self.resize {
            Some(ResizeTo::ShortestEdge(e)) => {
                let (w, h) = shortest_edge_size(img.width(), img.height(), e);
                resize(img, w, h, self.resample)
            }
            Some(ResizeTo::Exact { height, width }) => resize(img, width, height, self.resample),
            None => img.clone(),
        };
        match self.crop {
            Some((h, w)) => center_crop(&resized, w, h),
            None => resized,
        }
    }

    fn normalize_into(&self, img: &RgbImage, out: &mut Vec<f32>) {
        normalize_into(img, self.rescale_factor, self.mean, self.std, out);
    }
}

/// Appends `img` channels first, rescaled then normalised in f32, as numpy does after
/// transformers' `rescale` (f64 → f32) and `normalize`; `mean: None` skips normalising.
pub fn normalize_into(
    img: &RgbImage,
    rescale_factor: Option<f64>,
    mean: Option<[f64; 3]>,
    std: [f64; 3],
    out: &mut Vec<f32>,
) {
    let raw = img.as_raw();
    for ch in 0..3 {
        let mean = mean.map(|m| m[ch] as f32);
        let std = std[ch] as f32;
        for px in raw.chunks_exact(3) {
            let v = f64::from(px[ch]);
            let x = match rescale_factor {
                Some(f) => (v * f) as f32,
                None => v as f32,
            };
            out.push(match mean {
                Some(m) => (x - m) / std,
                None => x,
            });
        }
    }
}

/// A per-channel `[r, g, b]` setting of `preprocessor_config.json` (`image_mean`, `image_std`).
pub fn json_triple(v: &Value, k: &str) -> Result<Option<[f64; 3]>> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0.0; 3];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64().with_context(|| {
                    format!("preprocessor_config.json: `{k}` must hold numbers")
                })?;
            }
            Ok(Some(out))
        }
        Some(_) => bail!("preprocessor_config.json: `{k}` must be a list of 3 numbers"),
    }
}

/// `[[h, w], ...]` grid resolutions.
pub fn parse_pinpoints(v: &Value) -> Result<Vec<(u32, u32)>> {
    let list = v
        .as_array()
        .context("image_grid_pinpoints must be a list of [height, width] pairs")?;
    list.iter()
        .map(|p| {
            let pair = p.as_array().filter(|a| a.len() == 2);
            let n = |i: usize| pair.and_then(|a| a[i].as_u64()).map(|x| x as u32);
            match (n(0), n(1)) {
                (Some(h), Some(w)) if h > 0 && w > 0 => Ok((h, w)),
                _ => bail!("image_grid_pinpoints: {p} is not a [height, width] pair"),
            }
        })
        .collect()
}

/// RGB, with transparency composited on white (transformers' `convert_to_rgb`).
/// Opens and decodes an image file as RGB.
pub fn load_rgb(path: &std::path::Path) -> Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?
        .decode()
        .with_context(|| format!("cannot decode image {}", path.display()))?;
    Ok(to_rgb(img))
}

pub fn to_rgb(img: image::DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = u32::from(p[3]);
        let blend = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([blend(p[0]), blend(p[1]), blend(p[2])])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x + y) * 3 % 256) as u8,
            ])
        })
    }

    #[test]
    fn shortest_edge_truncates_the_long_side() {
        assert_eq!(shortest_edge_size(640, 480, 336), (448, 336));
        assert_eq!(shortest_edge_size(500, 333, 336), (504, 336)); // 336*500/333 = 504.5
        assert_eq!(shortest_edge_size(333, 500, 336), (336, 504));
        assert_eq!(shortest_edge_size(336, 336, 336), (336, 336));
    }

    #[test]
    fn pillow_coefficients_sum_to_one_and_identity_is_exact() {
        let c = coefficients(640, 448, Resample::Bicubic);
        for w in &c.weights {
            let s: i64 = w.iter().map(|&x| i64::from(x)).sum();
            assert!((s - (1 << PRECISION_BITS)).abs() <= w.len() as i64, "{s}");
        }
        let img = gradient(31, 17);
        assert_eq!(resize(&img, 31, 17, Resample::Bicubic), img);
        // Uniform images stay uniform through any filter (weights are normalised).
        let flat = RgbImage::from_pixel(50, 40, image::Rgb([200, 10, 99]));
        for f in [Resample::Bicubic, Resample::Bilinear, Resample::Lanczos] {
            let r = resize(&flat, 23, 71, f);
            assert!(r.pixels().all(|p| p.0 == [200, 10, 99]), "{f:?}");
        }
    }

    #[test]
    fn pillow_bicubic_known_values() {
        // Pillow 13.0 on this 4x1 ramp resized to 2x1 and 8x1 with BICUBIC: the downscale
        // widens the kernel, the upscale overshoots and clips.
        let ramp = RgbImage::from_fn(4, 1, |x, _| {
            let v = [0u8, 255, 0, 255][x as usize];
            image::Rgb([v, v, v])
        });
        let down = resize(&ramp, 2, 1, Resample::Bicubic);
        let up = resize(&ramp, 8, 1, Resample::Bicubic);
        let row = |i: &RgbImage| i.pixels().map(|p| p.0[0]).collect::<Vec<_>>();
        assert_eq!(row(&down), vec![107, 148]);
        assert_eq!(row(&up), vec![0, 54, 216, 215, 40, 39, 201, 255]);
    }

    #[test]
    fn pass_order_follows_pillow() {
        // 9x17 -> 7x6: the height shrinks by 11, more than twice the width's 2, so Pillow 13
        // runs the vertical pass first (the other order gives 26 different values here).
        let img = RgbImage::from_fn(9, 17, |x, y| {
            image::Rgb([
                ((x * 37 + y * 91) % 256) as u8,
                ((x * y * 13) % 256) as u8,
                (((x + y) * 29) % 256) as u8,
            ])
        });
        let out = resize(&img, 7, 6, Resample::Bicubic);
        let red: Vec<Vec<u8>> = (0..6)
            .map(|y| (0..7).map(|x| out.get_pixel(x, y).0[0]).collect())
            .collect();
        assert_eq!(
            red,
            vec![
                vec![88, 104, 114, 156, 123, 111, 108],
                vec![118, 121, 116, 95, 130, 124, 142],
                vec![135, 141, 133, 113, 117, 104, 121],
                vec![139, 130, 157, 130, 135, 125, 102],
                vec![142, 119, 122, 134, 152, 142, 122],
                vec![152, 153, 130, 131, 96, 150, 145],
            ]
        );
    }

    #[test]
    fn anyres_picks_the_grid_transformers_picks() {
        let grid = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)];
        assert_eq!(select_best_resolution((480, 640), &grid), (672, 672));
        assert_eq!(select_best_resolution((300, 900), &grid), (336, 1008));
        assert_eq!(select_best_resolution((336, 672), &grid), (336, 672));
        assert_eq!(select_best_resolution((1000, 200), &grid), (1008, 336));
        assert_eq!(fit_within((480, 640), (672, 672)), (504, 672));
    }

    #[test]
    fn clip_pipeline_shapes_and_values() {
        let p = ImageProcessor::clip(336);
        let out = p.prepare(&gradient(640, 480));
        assert_eq!((out.tiles, out.height, out.width), (1, 336, 336));
        assert_eq!(out.pixels.len(), 3 * 336 * 336);
        assert_eq!(out.original_size, (480, 640));
        // A black pixel normalises to -mean/std in every channel.
        let black = p.prepare(&RgbImage::new(336, 336));
        for ch in 0..3 {
            let v = black.pixels[ch * 336 * 336];
            let want = (0.0f32 - CLIP_MEAN[ch] as f32) / CLIP_STD[ch] as f32;
            assert_eq!(v, want);
        }
    }

    #[test]
    fn anyres_tiles_the_image() {
        let mut p = ImageProcessor::clip(336);
        p.grid_pinpoints = Some(vec![(336, 672), (672, 336), (672, 672)]);
        let out = p.prepare(&gradient(700, 340));
        assert_eq!(out.tiles, 3, "the whole image plus a 1x2 grid");
        assert_eq!(out.pixels.len(), 3 * 3 * 336 * 336);
    }

    #[test]
    fn pad_to_square_centres_on_the_mean_colour() {
        let p = ImageProcessor::clip(336);
        assert_eq!(p.mean_color(), [122, 116, 104]);
        let sq = pad_to_square(
            &RgbImage::from_pixel(4, 2, image::Rgb([9, 9, 9])),
            [1, 2, 3],
        );
        assert_eq!(sq.dimensions(), (4, 4));
        assert_eq!(sq.get_pixel(0, 0).0, [1, 2, 3]);
        assert_eq!(sq.get_pixel(0, 1).0, [9, 9, 9]);
        assert_eq!(sq.get_pixel(3, 3).0, [1, 2, 3]);
    }

    #[test]
    fn preprocessor_config_is_read() {
        let v = serde_json::json!({
            "crop_size": {"height": 224, "width": 224}, "size": {"shortest_edge": 224},
            "resample": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "image_grid_pinpoints": [[224, 448], [448, 224]],
            "image_processor_type": "LlavaImageProcessor", "do_pad": true,
        });
        let p = ImageProcessor::from_json(&v, 336).unwrap();
        assert_eq!(p.resize, Some(ResizeTo::ShortestEdge(224)));
        assert_eq!(p.crop, Some((224, 224)));
        assert_eq!(p.resample, Resample::Bilinear);
        assert_eq!(p.pad_to_square, Some([127, 127, 127]));
        assert_eq!(p.grid_pinpoints, Some(vec![(224, 448), (448, 224)]));
        let bad = serde_json::json!({"image_grid_pinpoints": [[1]]});
        assert!(ImageProcessor::from_json(&bad, 336).is_err());
    }
}
