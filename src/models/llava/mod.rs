//! LLaVA 1.5 and 1.6 (LLaVA-NeXT): a CLIP vision tower, a small MLP projector and a Llama-family
//! language model, assembled from the project's own parts. LLaVA-OneVision is the same
//! machine with a SigLIP tower, a Qwen2 language model, a larger grid and one more step: a
//! grid of more than `anyres_max_N` tiles' worth of features is shrunk (bilinear) to about N.
//!
//! Why not `candle_transformers::models::llava`: it loads only LLaVA-1.6 Vicuna checkpoints
//! (1.5 has no `image_newline`, Mistral-based 1.6 does not load), its CLIP feature index is
//! one layer off transformers', and its language model re-copies the KV cache every step.
//!
//! Three weight layouts are read (detected from the tensor names, not the config):
//! - llava-hf as published (`vision_tower.*`, `multi_modal_projector.*`,
//!   `language_model.model.*`, `language_model.lm_head.*`);
//! - transformers ≥ 4.52 / 5 `save_pretrained` (`model.vision_tower.*`,
//!   `model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.*`);
//! - the original `liuhaotian/llava-v1.5-*` / `v1.6-*` release (`model.*`, `lm_head.*`,
//!   `model.mm_projector.{0,2}`, `model.image_newline`), whose CLIP tower is a separate
//!   checkpoint named by `mm_vision_tower`.

pub mod preprocess;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarBuilder};
use serde_json::Value;

use super::llama::{LlamaConfig, LlamaModel};
use crate::models::clip::{Activation, ClipVisionConfig, ClipVisionTower};
use preprocess::{select_best_resolution, ImageProcessor, PreparedImage};

/// transformers' default LLaVA-NeXT grid, `(height, width)`.
pub const DEFAULT_GRID: &[(u32, u32)] =
    &[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)];

/// LLaVA-OneVision's grid for tiles of `tile` pixels: every `(tile i, tile j)` for i, j in
/// 1..=6 (transformers' default, with 384-pixel tiles).
pub fn onevision_grid(tile: u32) -> Vec<(u32, u32)> {
    (1..=6u32)
        .flat_map(|i| (1..=6u32).map(move |j| (tile * i, tile * j)))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// One tile of 576 patches.
    V15,
    /// "anyres": the whole image plus a grid of tiles, unpadded, with a newline per row.
    Next,
    /// LLaVA-NeXT's packing, then the grid shrunk to about `max_tiles` tiles of features
    /// (`vision_aspect_ratio` = `anyres_max_{max_tiles}`).
    OneVision { max_tiles: u32 },
}

impl Variant {
    /// Whether an image becomes the whole image plus a grid of tiles (and has a newline).
    pub fn any_resolution(self) -> bool {
        !matches!(self, Self::V15)
    }
}

/// Where a checkpoint keeps each part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    HfLegacy,
    HfNested,
    Original,
}

impl Layout {
    /// Detects the layout from the tensor names `vb` can see.
    pub fn detect(vb: &VarBuilder) -> Result<Self> {
        if vb.contains_tensor("multi_modal_projector.linear_1.weight") {
            Ok(Self::HfLegacy)
        } else if vb.contains_tensor("model.multi_modal_projector.linear_1.weight") {
            Ok(Self::HfNested)
        } else if vb.contains_tensor("model.mm_projector.0.weight")
            || vb.contains_tensor("model.mm_projector.weight")
        {
            Ok(Self::Original)
        } else {
            bail!("no LLaVA projector in the weights: looked for multi_modal_projector.linear_1, model.multi_modal_projector.linear_1 and model.mm_projector.0")
        }
    }

    fn language_model(self) -> (&'static str, &'static str) {
        match self {
            Self::HfLegacy => ("language_model.model", "language_model.lm_head"),
            Self::HfNested => ("model.language_model", "lm_head"),
            Self::Original => ("model", "lm_head"),
        }
    }

    /// Where the vision tower's `vision_model` may sit inside this checkpoint (transformers 5
    /// drops the `vision_model` level when it saves).
    pub fn vision_model_candidates(self) -> &'static [&'static str] {
        match self {
            Self::HfLegacy => &["vision_tower.vision_model", "vision_tower"],
            Self::HfNested => &["model.vision_tower.vision_model", "model.vision_tower"],
            Self::Original => &["model.vision_tower.vision_tower.vision_model"],
        }
    }

    /// The tower's prefix this checkpoint uses, if it holds the tower.
    pub fn vision_model(self, vb: &VarBuilder) -> Option<&'static str> {
        self.vision_model_candidates()
            .iter()
            .copied()
            .find(|p| vb.contains_tensor(&format!("{p}.{TOWER_MARK}")))
    }

    fn image_newline(self) -> &'static str {
        match self {
            Self::HfLegacy => "image_newline",
            Self::HfNested | Self::Original => "model.image_newline",
        }
    }
}

/// A tensor every CLIP and SigLIP tower has, to find where the tower sits.
const TOWER_MARK: &str = "embeddings.patch_embedding.weight";

/// Everything config.json says about a LLaVA model.
#[derive(Debug, Clone)]
pub struct LlavaConfig {
    pub variant: Variant,
    pub text: LlamaConfig,
    /// `llama` or `mistral`: picks the prompt template.
    pub text_model_type: String,
    pub vision: ClipVisionConfig,
    /// Id of the `<image>` placeholder; `None` for original checkpoints, whose tokenizer has no
    /// such token (the prompt is split around the text `<image>` instead).
    pub image_token_id: Option<u32>,
    pub feature_layers: Vec<i64>,
    /// `full` strategy: keep the tower's first token (CLIP's class token) as an image token;
    /// `default` drops it (from a SigLIP tower too, which has no class token, as transformers
    /// does).
    pub keep_first_token: bool,
    pub projector_act: Activation,
    /// `multimodal_projector_bias`: the projector's linear layers have biases.
    pub projector_bias: bool,
    /// Grid resolutions for LLaVA-NeXT.
    pub grid_pinpoints: Vec<(u32, u32)>,
    /// Original checkpoints: hub id or path of the separate CLIP tower.
    pub vision_tower_ref: Option<String>,
    /// Original LLaVA 1.5 pads images to a square with the mean colour.
    pub pad_to_square: bool,
}

fn layers_of(v: Option<&Value>) -> Result<Vec<i64>> {
    match v {
        None | Some(Value::Null) => Ok(vec![-2]),
        Some(Value::Number(n)) => Ok(vec![n
            .as_i64()
            .context("vision_feature_layer must be an integer")?]),
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_i64()
                    .context("vision_feature_layer must hold integers")
            })
            .collect(),
        Some(other) => bail!("vision_feature_layer {other} is not an integer or a list of them"),
    }
}

impl LlavaConfig {
    /// Reads config.json of an `architecture` (`llava`, `llava_next` or `llava_onevision`,
    /// as detected).
    pub fn from_json(v: &Value, architecture: &str) -> Result<Self> {
        let original = v.get("mm_vision_tower").is_some()
            || v.get("text_config").is_none() && v.get("mm_projector_type").is_some();
        if original {
            return Self::from_original_json(v);
        }
        let onevision = architecture == "llava_onevision";
        // transformers' sub-config defaults: Llama for LLaVA, Qwen2 for OneVision.
        let default_text = if onevision { "qwen2" } else { "llama" };
        let mut text_json = v
            .get("text_config")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        if text_json.get("model_type").is_none() {
            text_json["model_type"] = default_text.into();
        }
        let text_model_type = text_json["model_type"]
            .as_str()
            .unwrap_or("llama")
            .to_string();
        let text = LlamaConfig::from_hf_json(&text_json).context("reading text_config")?;
        let vision = match v.get("vision_config") {
            Some(vc) if vc.is_object() => {
                let mut vc = vc.clone();
                if onevision && vc.get("model_type").is_none() {
                    vc["model_type"] = "siglip_vision_model".into();
                }
                ClipVisionConfig::from_json(&vc).context("reading vision_config")?
            }
            _ if onevision => ClipVisionConfig {
                num_layers: 26,
                ..ClipVisionConfig::siglip_so400m_384()
            },
            _ => ClipVisionConfig::vit_large_336(),
        };
        let image_token_id = v
            .get("image_token_index")
            .or_else(|| v.get("image_token_id"))
            .and_then(Value::as_u64)
            .map_or(if onevision { 151_646 } else { 32000 }, |x| x as u32);
        let strategy = v
            .get("vision_feature_select_strategy")
            .and_then(Value::as_str)
            .unwrap_or(if onevision { "full" } else { "default" });
        let variant = match architecture {
            "llava_next" => Variant::Next,
            "llava_onevision" => Variant::OneVision {
                max_tiles: parse_aspect_ratio(
                    v.get("vision_aspect_ratio")
                        .and_then(Value::as_str)
                        .unwrap_or("anyres_max_9"),
                )?,
            },
            _ => Variant::V15,
        };
        let feature_layers = match v.get("vision_feature_layer") {
            None if onevision => vec![-1],
            layer => layers_of(layer)?,
        };
        Ok(Self {
            variant,
            text,
            text_model_type,
            vision,
            image_token_id: Some(image_token_id),
            feature_layers,
            keep_first_token: parse_strategy(strategy)?,
            projector_act: Activation::from_name(
                v.get("projector_hidden_act")
                    .and_then(Value::as_str)
                    .unwrap_or("gelu"),
            )?,
            projector_bias: v
                .get("multimodal_projector_bias")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            grid_pinpoints: match v.get("image_grid_pinpoints") {
                Some(g) if !g.is_null() => preprocess::parse_pinpoints(g)?,
                _ if onevision => onevision_grid(384),
                _ => DEFAULT_GRID.to_vec(),
            },
            vision_tower_ref: None,
            pad_to_square: false,
        })
    }

    /// `LlavaLlamaForCausalLM` / `LlavaMistralForCausalLM` from the original release.
    fn from_original_json(v: &Value) -> Result<Self> {
        let model_type = match v.get("model_type").and_then(Value::as_str) {
            Some("llava_mistral") => "mistral",
            _ => "llama",
        };
        let mut text_json = v.clone();
        text_json["model_type"] = model_type.into();
        let text = LlamaConfig::from_hf_json(&text_json)?;
        let select = v
            .get("mm_vision_select_feature")
            .and_then(Value::as_str)
            .unwrap_or("patch");
        let projector = v
            .get("mm_projector_type")
            .and_then(Value::as_str)
            .unwrap_or("linear");
        if projector != "linear" && !(projector.starts_with("mlp") && projector.ends_with("x_gelu"))
        {
            bail!("mm_projector_type {projector:?} is not supported (linear, mlp2x_gelu)");
        }
        let aspect = v
            .get("image_aspect_ratio")
            .and_then(Value::as_str)
            .unwrap_or("square");
        let next = aspect.contains("anyres");
        Ok(Self {
            variant: if next { Variant::Next } else { Variant::V15 },
            text,
            text_model_type: model_type.into(),
            vision: ClipVisionConfig::vit_large_336(),
            image_token_id: None,
            feature_layers: layers_of(v.get("mm_vision_select_layer"))?,
            keep_first_token: match select {
                "patch" => false,
                "cls_patch" => true,
                other => {
                    bail!("mm_vision_select_feature {other:?} is not supported (patch, cls_patch)")
                }
            },
            projector_act: Activation::Gelu,
            projector_bias: true,
            grid_pinpoints: match v.get("image_grid_pinpoints") {
                Some(g) if g.is_array() => preprocess::parse_pinpoints(g)?,
                _ => DEFAULT_GRID.to_vec(),
            },
            vision_tower_ref: v
                .get("mm_vision_tower")
                .and_then(Value::as_str)
                .map(str::to_owned),
            pad_to_square: aspect == "pad",
        })
    }

    /// Features per tile the projector outputs.
    pub fn tokens_per_tile(&self) -> usize {
        self.vision.tokens_per_tile() - usize::from(!self.keep_first_token)
    }

    /// Image tokens one image becomes, for an image of `original_size` `(height, width)`.
    pub fn image_token_count(&self, original_size: (u32, u32)) -> usize {
        let per_tile = self.tokens_per_tile();
        if !self.variant.any_resolution() {
            return per_tile;
        }
        let (h, w) = self.packed_grid(original_size);
        per_tile + h * (w + 1)
    }

    /// Image tokens of an image that is not tiled (OneVision, several images in a sample):
    /// the whole image's features and one newline.
    pub fn untiled_token_count(&self) -> usize {
        self.tokens_per_tile() + usize::from(self.variant.any_resolution())
    }

    /// Rows and columns of grid features an any-resolution model keeps: the grid without its
    /// padding, then (OneVision) shrunk to about `max_tiles` tiles.
    fn packed_grid(&self, original_size: (u32, u32)) -> (usize, usize) {
        let side = self.vision.patches_per_side();
        let tile = self.vision.image_size as u32;
        let best = select_best_resolution(original_size, &self.grid_pinpoints);
        let rows = (best.0 / tile) as usize * side;
        let cols = (best.1 / tile) as usize * side;
        let (rows, cols) = unpad_range(original_size, rows, cols)
            .map(|(r, c)| (r.len(), c.len()))
            .unwrap_or((rows, cols));
        match self.variant {
            Variant::OneVision { max_tiles } => {
                shrunk_grid(rows, cols, side, max_tiles).unwrap_or((rows, cols))
            }
            _ => (rows, cols),
        }
    }

    /// The image processor the checkpoint expects: `preprocessor_config.json` if there is one,
    /// else CLIP's at the tower's resolution.
    pub fn image_processor(&self, preprocessor_config: Option<&Value>) -> Result<ImageProcessor> {
        let size = self.vision.image_size as u32;
        let mut p = match preprocessor_config {
            Some(v) => ImageProcessor::from_json(v, size)?,
            None => ImageProcessor::clip(size),
        };
        if matches!(self.variant, Variant::OneVision { .. }) {
            // `LlavaOnevisionImageProcessor`: resized to exactly `size`, never cropped.
            let named = |k: &str| preprocessor_config.is_some_and(|v| v.get(k).is_some());
            if !named("size") {
                p.resize = Some(preprocess::ResizeTo::Exact {
                    height: size,
                    width: size,
                });
            }
            if !named("crop_size") || !named("do_center_crop") {
                p.crop = None;
            }
        }
        if self.pad_to_square {
            p.pad_to_square = Some(p.mean_color());
        }
        p.grid_pinpoints = if self.variant.any_resolution() {
            Some(
                p.grid_pinpoints
                    .take()
                    .unwrap_or_else(|| self.grid_pinpoints.clone()),
            )
        } else {
            None
        };
        Ok(p)
    }
}

/// `anyres_max_9` → 9 (`vision_aspect_ratio` of LLaVA-OneVision).
fn parse_aspect_ratio(s: &str) -> Result<u32> {
    s.strip_prefix("anyres_max_")
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .with_context(|| {
            format!("vision_aspect_ratio {s:?} is not supported (anyres_max_N, e.g. anyres_max_9)")
        })
}

/// The size OneVision shrinks a `rows × cols` feature grid to when it holds more than 1.1²
/// times `max_tiles` tiles of `side × side` features; `None` when it is kept.
fn shrunk_grid(rows: usize, cols: usize, side: usize, max_tiles: u32) -> Option<(usize, usize)> {
    let ratio = ((rows * cols) as f64 / (f64::from(max_tiles) * (side * side) as f64)).sqrt();
    (ratio > 1.1).then(|| {
        (
            py_floor_div(rows as f64, ratio) as usize,
            py_floor_div(cols as f64, ratio) as usize,
        )
    })
}

/// Python's `a // b` for floats (CPython's `float_floor_div`), which transformers uses for
/// the shrunk grid's size: it can differ from `floor(a / b)` when the quotient is within a
/// rounding of an integer.
fn py_floor_div(a: f64, b: f64) -> f64 {
    let m = a % b;
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div == 0.0 {
        return 0.0_f64.copysign(a / b);
    }
    let floor = div.floor();
    if div - floor > 0.5 {
        floor + 1.0
    } else {
        floor
    }
}

/// Bilinear resize of `(channels, rows, cols)` features to `(rows, cols)` = `size`, as
/// `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` computes it:
/// along the columns first, then the rows, with PyTorch's source indices and weights.
fn bilinear_resize(x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let (_, in_rows, in_cols) = x.dims3()?;
    let x = resample_axis(&x.contiguous()?, 2, in_cols, size.1)?;
    Ok(resample_axis(&x, 1, in_rows, size.0)?)
}

/// One axis of [`bilinear_resize`]: `out[i] = w0 · in[i0] + w1 · in[i1]`.
fn resample_axis(
    x: &Tensor,
    axis: usize,
    input: usize,
    output: usize,
) -> candle_core::Result<Tensor> {
    let scale = input as f32 / output as f32;
    let mut first = Vec::with_capacity(output);
    let mut second = Vec::with_capacity(output);
    let mut w_first = Vec::with_capacity(output);
    let mut w_second = Vec::with_capacity(output);
    for i in 0..output {
        let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(input - 1);
        let step = usize::from(i0 < input - 1);
        let lambda = src - i0 as f32;
        first.push(i0 as u32);
        second.push((i0 + step) as u32);
        w_first.push(1.0 - lambda);
        w_second.push(lambda);
    }
    let dev = x.device();
    let shape: Vec<usize> = (0..3).map(|d| if d == axis { output } else { 1 }).collect();
    let weights = |w: Vec<f32>| Tensor::from_vec(w, shape.as_slice(), dev)?.to_dtype(x.dtype());
    let a = x
        .index_select(&Tensor::from_vec(first, output, dev)?, axis)?
        .broadcast_mul(&weights(w_first)?)?;
    let b = x
        .index_select(&Tensor::from_vec(second, output, dev)?, axis)?
        .broadcast_mul(&weights(w_second)?)?;
    a + b
}

fn parse_strategy(s: &str) -> Result<bool> {
    match s {
        "default" => Ok(false),
        "full" => Ok(true),
        other => bail!("vision_feature_select_strategy {other:?} is not supported (default, full)"),
    }
}

/// Rows and columns of a `(rows, cols)` feature grid that hold the image, not padding
/// (transformers' `unpad_image`, including its rounding to 7 decimals).
fn unpad_range(
    original_size: (u32, u32),
    rows: usize,
    cols: usize,
) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let (oh, ow) = (f64::from(original_size.0), f64::from(original_size.1));
    let round7 = |x: f64| ((x * 1e7).round() / 1e7) as usize;
    if ow / oh > cols as f64 / rows as f64 {
        let new_rows = round7(oh * (cols as f64 / ow));
        let pad = rows.checked_sub(new_rows)? / 2;
        Some((pad..rows - pad, 0..cols))
    } else {
        let new_cols = round7(ow * (rows as f64 / oh));
        let pad = cols.checked_sub(new_cols)? / 2;
        Some((0..rows, pad..cols - pad))
    }
}

/// The projector: linear layers with the activation between them.
struct Projector {
    layers: Vec<candle_nn::Linear>,
    act: Activation,
}

impl Projector {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            if i > 0 {
                x = self.act.apply(&x)?;
            }
            x = l.forward(&x)?;
        }
        Ok(x)
    }
}

/// A loaded LLaVA model.
pub struct LlavaModel {
    pub config: LlavaConfig,
    pub llm: LlamaModel,
    vision: ClipVisionTower,
    projector: Projector,
    image_newline: Option<Tensor>,
}

impl LlavaModel {
    /// Loads from `vb` (the checkpoint) in `layout`; `tower_vb` is the CLIP checkpoint rooted at
    /// its `vision_model` when the tower is stored separately (original layout).
    pub fn load(
        config: LlavaConfig,
        vb: VarBuilder,
        layout: Layout,
        tower_vb: Option<VarBuilder>,
    ) -> Result<Self> {
        let (model_prefix, head_prefix) = layout.language_model();
        let llm = LlamaModel::from_hf(config.text.clone(), vb.clone(), model_prefix, head_prefix)
            .context("loading the language model")?;
        // On the CPU, half-precision checkpoints compute in f32, as the language model does
        // (see `LlamaModel::from_hf`); the tower and projector, a small share of the weights,
        // are widened when they load.
        let cpu_half = vb.device().is_cpu() && matches!(vb.dtype(), DType::F16 | DType::BF16);
        fn widen(v: VarBuilder<'_>, yes: bool) -> VarBuilder<'_> {
            if yes {
                v.set_dtype(DType::F32)
            } else {
                v
            }
        }
        let tower_vb = tower_vb.map(|t| widen(t, cpu_half));
        let vb_vision = widen(vb.clone(), cpu_half);
        let tower_vb = match tower_vb {
            Some(t) => t,
            None => {
                let prefix = layout.vision_model(&vb).with_context(|| {
                    format!(
                        "no CLIP vision tower in the weights (looked for {}.embeddings.class_embedding)",
                        layout.vision_model_candidates().join(".embeddings.class_embedding, ")
                    )
                })?;
                vb_vision.pp(prefix)
            }
        };
        let vision = ClipVisionTower::load(config.vision.clone(), tower_vb, &config.feature_layers)
            .context("loading the CLIP vision tower")?;
        let vision_out = config.vision.hidden_size * config.feature_layers.len();
        let text_h = config.text.hidden_size;
        let projector = match layout {
            Layout::HfLegacy | Layout::HfNested => {
                let p = if layout == Layout::HfLegacy {
                    vb_vision.pp("multi_modal_projector")
                } else {
                    vb_vision.pp("model.multi_modal_projector")
                };
                let bias = config.projector_bias;
                Projector {
                    layers: vec![
                        candle_nn::linear_b(vision_out, text_h, bias, p.pp("linear_1"))
                            .context("loading multi_modal_projector.linear_1")?,
                        candle_nn::linear_b(text_h, text_h, bias, p.pp("linear_2"))
                            .context("loading multi_modal_projector.linear_2")?,
                    ],
                    act: config.projector_act,
                }
            }
            Layout::Original => {
                let p = vb_vision.pp("model.mm_projector");
                let layers = if p.contains_tensor("weight") {
                    vec![candle_nn::linear(vision_out, text_h, p)?]
                } else {
                    let mut layers = Vec::new();
                    let mut i = 0;
                    while p.contains_tensor(&format!("{i}.weight")) {
                        let input = if i == 0 { vision_out } else { text_h };
                        layers.push(
                            candle_nn::linear(input, text_h, p.pp(i.to_string()))
                                .with_context(|| format!("loading model.mm_projector.{i}"))?,
                        );
                        i += 2;
                    }
                    layers
                };
                Projector {
                    layers,
                    act: config.projector_act,
                }
            }
        };
        let image_newline = if config.variant.any_resolution() {
            Some(
                vb.get(text_h, layout.image_newline())
                    .with_context(|| format!("loading {} (LLaVA-NeXT)", layout.image_newline()))?,
            )
        } else {
            None
        };
        Ok(Self {
            config,
            llm,
            vision,
            projector,
            image_newline,
        })
    }

    pub fn device(&self) -> &Device {
        self.vision.device()
    }

    /// Parameters of tower + projector + newline embedding + language model (the tower's
    /// unused last layers and head included, as the checkpoint holds them).
    pub fn parameters(&self) -> u64 {
        let v = self.config.vision.hidden_size as u64 * self.config.feature_layers.len() as u64;
        let t = self.config.text.hidden_size as u64;
        let b = u64::from(self.config.projector_bias);
        let projector = match self.projector.layers.len() {
            0 => 0,
            n => v * t + b * t + (n as u64 - 1) * (t * t + b * t),
        };
        let newline = if self.image_newline.is_some() { t } else { 0 };
        self.config.vision.parameters() + projector + newline + self.llm.config.parameters()
    }

    /// Image features in the language model's embedding space, `(tokens, hidden)`.
    pub fn encode_image(&self, image: &PreparedImage) -> Result<Tensor> {
        let c = &self.config;
        let pixels = Tensor::from_slice(
            &image.pixels,
            (image.tiles, 3, image.height as usize, image.width as usize),
            self.device(),
        )?;
        let features = {
            let _span = crate::profile::span("op", "vision_tower");
            self.vision.forward(&pixels)?
        };
        let side = c.vision.patches_per_side();
        let features = if c.keep_first_token {
            features
        } else {
            let n = features.dim(1)?;
            features.narrow(1, 1, n - 1)?
        };
        let _span = crate::profile::span("op", "projector");
        let projected = self.projector.forward(&features)?;
        let (tiles, per_tile, hidden) = projected.dims3()?;
        let out = match (c.variant, &self.image_newline) {
            (variant, Some(newline)) if variant.any_resolution() && tiles > 1 => {
                if per_tile != side * side {
                    bail!(
                        "a grid of tiles needs {} features per tile, but the tower and vision_feature_select_strategy give {per_tile}",
                        side * side
                    );
                }
                let best = select_best_resolution(image.original_size, &c.grid_pinpoints);
                let tile = c.vision.image_size as u32;
                let (gh, gw) = ((best.0 / tile) as usize, (best.1 / tile) as usize);
                if gh * gw != tiles - 1 {
                    bail!(
                        "the image processor made {} tiles but the grid for this image is {gh}x{gw}",
                        tiles - 1
                    );
                }
                let base = projected.get(0)?;
                let grid = projected
                    .narrow(0, 1, tiles - 1)?
                    .reshape((gh, gw, side, side, hidden))?
                    .permute((4, 0, 2, 1, 3))?
                    .contiguous()?
                    .reshape((hidden, gh * side, gw * side))?;
                let (rows, cols) = unpad_range(image.original_size, gh * side, gw * side)
                    .context("image too small for its grid")?;
                let grid =
                    grid.narrow(1, rows.start, rows.len())?
                        .narrow(2, cols.start, cols.len())?;
                let grid = match variant {
                    Variant::OneVision { max_tiles } => {
                        match shrunk_grid(rows.len(), cols.len(), side, max_tiles) {
                            Some(size) => {
                                let _span = crate::profile::span("op", "grid_shrink");
                                bilinear_resize(&grid, size)?
                            }
                            None => grid,
                        }
                    }
                    _ => grid,
                };
                let (_, rows, cols) = grid.dims3()?;
                let nl = newline
                    .to_dtype(grid.dtype())?
                    .reshape((hidden, 1, 1))?
                    .broadcast_as((hidden, rows, 1))?;
                let grid = Tensor::cat(&[&grid, &nl], 2)?
                    .reshape((hidden, rows * (cols + 1)))?
                    .t()?;
                Tensor::cat(&[&base, &grid], 0)?
            }
            (variant, Some(newline)) if variant.any_resolution() => Tensor::cat(
                &[
                    &projected.get(0)?,
                    &newline.to_dtype(projected.dtype())?.unsqueeze(0)?,
                ],
                0,
            )?,
            _ => projected.reshape((tiles * per_tile, hidden))?,
        };
        Ok(out.to_dtype(self.llm.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn llava_hf_config_with_defaults() {
        // llava-hf/llava-1.5-7b-hf's config.json lists only what differs from the defaults.
        let v = json!({
            "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100,
            "image_token_index": 32000, "model_type": "llava", "pad_token_id": 32001,
            "projector_hidden_act": "gelu",
            "text_config": {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096,
                "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064},
            "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
            "vision_feature_layer": -2, "vision_feature_select_strategy": "default"
        });
        let c = LlavaConfig::from_json(&v, "llava").unwrap();
        assert_eq!(c.variant, Variant::V15);
        assert_eq!(c.text.hidden_size, 4096);
        assert_eq!(c.text.num_layers, 32);
        assert_eq!(c.text.vocab_size, 32064);
        assert_eq!(c.text.max_position_embeddings, 4096);
        assert_eq!(c.vision, ClipVisionConfig::vit_large_336());
        assert_eq!(c.image_token_id, Some(32000));
        assert_eq!(c.image_token_count((480, 640)), 576);
    }

    #[test]
    fn mistral_next_config_and_token_counts() {
        let v = json!({
            "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
            "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
            "text_config": {"model_type": "mistral", "rope_theta": 1000000.0, "vocab_size": 32064,
                "max_position_embeddings": 32768, "intermediate_size": 14336, "num_key_value_heads": 8},
            "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14}
        });
        let c = LlavaConfig::from_json(&v, "llava_next").unwrap();
        assert_eq!(c.variant, Variant::Next);
        assert_eq!(c.text.num_kv_heads, 8);
        assert_eq!(c.text.rope_theta, 1e6);
        // 640x480 picks the 672x672 grid (48x48 features); unpadding keeps 36 rows of 48, each
        // followed by a newline, after the 576 features of the whole image. 336x672 (height x
        // width) fills its 1x2 grid exactly: 24 rows of 48 + newline.
        assert_eq!(c.image_token_count((480, 640)), 576 + 36 * 49);
        assert_eq!(c.image_token_count((336, 672)), 576 + 24 * 49);
    }

    #[test]
    fn original_release_config() {
        let v = json!({
            "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
            "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
            "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32000,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
            "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 1024,
            "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad",
            "mm_use_im_start_end": false
        });
        let c = LlavaConfig::from_json(&v, "llava").unwrap();
        assert_eq!(c.image_token_id, None);
        assert!(c.pad_to_square);
        assert_eq!(
            c.vision_tower_ref.as_deref(),
            Some("openai/clip-vit-large-patch14-336")
        );
        let p = c.image_processor(None).unwrap();
        assert_eq!(p.pad_to_square, Some([122, 116, 104]));
    }

    /// Half-precision weights on the CPU: tower and projector compute in f32 and give the image
    /// features of the f32 model with the same (rounded) weights.
    #[test]
    fn half_weights_on_the_cpu_encode_in_f32() {
        use crate::synth::llava::llava_preset;
        let shape = llava_preset("tiny-llava").unwrap();
        let weights = shape.random_weights(5, DType::F32, &Device::Cpu).unwrap();
        let cfg =
            LlavaConfig::from_json(&shape.hf_config(DType::F32), shape.architecture()).unwrap();
        let processor = cfg
            .image_processor(Some(&shape.preprocessor_config()))
            .unwrap();
        let img = image::RgbImage::from_fn(400, 300, |x, y| {
            image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 13 * 19) as u8])
        });
        let prepared = processor.prepare(&img);
        let rounded: std::collections::HashMap<String, Tensor> = weights
            .iter()
            .map(|(k, t)| {
                let r = t
                    .to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                (k.clone(), r)
            })
            .collect();
        let load = |dtype: DType| {
            let vb = VarBuilder::from_tensors(rounded.clone(), dtype, &Device::Cpu);
            LlavaModel::load(cfg.clone(), vb, Layout::HfLegacy, None).unwrap()
        };
        let (half, full) = (load(DType::BF16), load(DType::F32));
        let a = half.encode_image(&prepared).unwrap();
        let b = full.encode_image(&prepared).unwrap();
        assert_eq!(a.dtype(), DType::F32);
        let diff = crate::models::testutil::max_abs_diff(&a, &b);
        assert!(diff < 1e-4, "{diff}");
    }

    /// llava-hf/llava-onevision-qwen2-7b-ov-hf's config.json (keys at transformers' defaults
    /// omitted, as `save_pretrained` writes them).
    fn onevision_7b() -> LlavaConfig {
        let v = json!({
            "architectures": ["LlavaOnevisionForConditionalGeneration"],
            "model_type": "llava_onevision", "image_token_index": 151646,
            "text_config": {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584,
                "intermediate_size": 18944, "model_type": "qwen2", "num_attention_heads": 28,
                "num_hidden_layers": 28, "num_key_value_heads": 4, "rope_theta": 1000000.0,
                "torch_dtype": "bfloat16", "vocab_size": 152128},
            "vision_config": {"hidden_size": 1152, "image_size": 384, "intermediate_size": 4304,
                "model_type": "siglip_vision_model", "num_attention_heads": 16,
                "num_hidden_layers": 26, "patch_size": 14, "vision_use_head": false},
            "vision_aspect_ratio": "anyres_max_9", "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full"
        });
        LlavaConfig::from_json(&v, "llava_onevision").unwrap()
    }

    #[test]
    fn onevision_config_and_token_counts_match_transformers() {
        let c = onevision_7b();
        assert_eq!(c.variant, Variant::OneVision { max_tiles: 9 });
        assert_eq!(c.text.family.name(), "qwen2");
        assert_eq!(c.text.rms_norm_eps, 1e-6);
        assert_eq!(c.text.max_position_embeddings, 32768);
        assert_eq!(c.vision.kind, crate::models::clip::TowerKind::Siglip);
        assert_eq!(c.vision.activation, Activation::GeluTanh);
        assert_eq!(c.feature_layers, vec![-1]);
        assert!(c.keep_first_token && c.projector_bias);
        assert_eq!(c.grid_pinpoints.len(), 36);
        assert_eq!(c.tokens_per_tile(), 729);
        // transformers' LlavaOnevisionProcessor._get_number_of_features for these sizes
        // (height, width): unpadded, shrunk past 9 tiles (1080p, 4000 × 3000), very wide.
        for (size, tokens) in [
            ((480, 640), 2929),
            ((427, 640), 2709),
            ((1080, 1920), 7269),
            ((3000, 4000), 7309),
            ((100, 3000), 1544),
            ((384, 384), 1485),
        ] {
            assert_eq!(c.image_token_count(size), tokens, "{size:?}");
        }
        assert_eq!(c.untiled_token_count(), 730);
        // Without the checkpoint's processor settings: LlavaOnevisionImageProcessor's own,
        // an exact 384 × 384 resize and no crop.
        let p = c.image_processor(None).unwrap();
        assert_eq!(
            p.resize,
            Some(preprocess::ResizeTo::Exact {
                height: 384,
                width: 384
            })
        );
        assert_eq!(p.crop, None);
        assert_eq!(p.grid_pinpoints.as_ref().map(Vec::len), Some(36));
        // The defaults of a config that names nothing but the architecture.
        let bare = LlavaConfig::from_json(
            &json!({"model_type": "llava_onevision", "text_config": {"model_type": "qwen2"}}),
            "llava_onevision",
        )
        .unwrap();
        assert_eq!(bare.vision.num_layers, 26);
        assert_eq!(bare.image_token_id, Some(151_646));
        assert!(LlavaConfig::from_json(
            &json!({"model_type": "llava_onevision", "vision_aspect_ratio": "pad"}),
            "llava_onevision"
        )
        .is_err());
    }

    /// The tiny OneVision preset as transformers loads it counts 266,656 parameters
    /// (`sum(p.numel() for p in model.parameters())`); the 7B shape ~8.03 B, as published.
    #[test]
    fn onevision_parameter_counts() {
        use crate::synth::llava::llava_preset;
        let shape = llava_preset("tiny-llava-onevision").unwrap();
        let weights = shape.random_weights(1, DType::F32, &Device::Cpu).unwrap();
        let cfg =
            LlavaConfig::from_json(&shape.hf_config(DType::F32), shape.architecture()).unwrap();
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let model = LlavaModel::load(cfg, vb, Layout::HfLegacy, None).unwrap();
        assert_eq!(model.parameters(), 266_656);
        let c = onevision_7b();
        let (v, t) = (c.vision.hidden_size as u64, c.text.hidden_size as u64);
        let total = c.vision.parameters() + (v * t + t) + (t * t + t) + t + c.text.parameters();
        assert_eq!(total / 10_000_000, 803, "{total}");
    }

    #[test]
    fn python_floor_division_and_bilinear_resize_match() {
        // Python: 1.0 // 0.1 == 9.0 (floor(1.0 / 0.1) is 10), 3.0 // 0.1 == 29.0.
        assert_eq!(py_floor_div(1.0, 0.1), 9.0);
        assert_eq!(py_floor_div(3.0, 0.1), 29.0);
        assert_eq!(py_floor_div(54.0, 0.8164965809277261), 66.0);
        // torch.nn.functional.interpolate(x, [3, 4], mode="bilinear") of
        // x = (arange(70) ** 1.5 / 10).reshape(1, 2, 5, 7).
        let x: Vec<f32> = (0..70).map(|i| (i as f32).powf(1.5) / 10.0).collect();
        let x = Tensor::from_vec(x, (2, 5, 7), &Device::Cpu).unwrap();
        let y: Vec<f32> = bilinear_resize(&x, (3, 4))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let torch = [
            0.693_681_4,
            1.127_554_4,
            1.705_813_3,
            2.388,
            5.452_503,
            6.476_16,
            7.558_319,
            8.695_886,
            13.372_405,
            14.730_584,
            16.133_53,
            17.579_796,
            23.222_889,
            24.851_152,
            26.516_85,
            28.219_126,
            34.695_75,
            36.555_843,
            38.448_727,
            40.373_833,
            47.745_08,
            49.809_246,
            51.903_03,
            54.026_01,
        ];
        for (a, b) in y.iter().zip(torch) {
            assert!((a - b).abs() <= 2e-6 * b.abs(), "{a} vs {b}");
        }
    }

    #[test]
    fn unpadding_matches_transformers() {
        // 640x480 into a 48x48 grid: the image fills 36 rows, 6 padded rows above and below.
        assert_eq!(unpad_range((480, 640), 48, 48), Some((6..42, 0..48)));
        // Tall image: columns are removed.
        assert_eq!(unpad_range((1000, 200), 72, 24), Some((0..72, 5..19)));
        assert_eq!(unpad_range((336, 672), 24, 48), Some((0..24, 0..48)));
    }
}
