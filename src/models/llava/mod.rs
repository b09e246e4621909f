//! LLaVA 1.5 and 1.6 (LLaVA-NeXT): a CLIP vision tower, a small MLP projector and a Llama-family
//! language model, assembled from the project's own parts.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// One tile of 576 patches.
    V15,
    /// "anyres": the whole image plus a grid of tiles, unpadded, with a newline per row.
    Next,
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

    /// Where the CLIP `vision_model` may sit inside this checkpoint (transformers 5 drops the
    /// `vision_model` level when it saves).
    pub fn vision_model_candidates(self) -> &'static [&'static str] {
        match self {
            Self::HfLegacy => &["vision_tower.vision_model", "vision_tower"],
            Self::HfNested => &["model.vision_tower.vision_model", "model.vision_tower"],
            Self::Original => &["model.vision_tower.vision_tower.vision_model"],
        }
    }

    /// The CLIP prefix this checkpoint uses, if it holds the tower.
    pub fn vision_model(self, vb: &VarBuilder) -> Option<&'static str> {
        self.vision_model_candidates()
            .iter()
            .copied()
            .find(|p| vb.contains_tensor(&format!("{p}.embeddings.class_embedding")))
    }

    fn image_newline(self) -> &'static str {
        match self {
            Self::HfLegacy => "image_newline",
            Self::HfNested | Self::Original => "model.image_newline",
        }
    }
}

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
    /// `full` strategy: keep CLIP's class token as an image token.
    pub keep_class_token: bool,
    pub projector_act: Activation,
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
    /// Reads config.json of an `architecture` (`llava` or `llava_next`, as detected).
    pub fn from_json(v: &Value, architecture: &str) -> Result<Self> {
        let original = v.get("mm_vision_tower").is_some()
            || v.get("text_config").is_none() && v.get("mm_projector_type").is_some();
        if original {
            return Self::from_original_json(v);
        }
        let text_json = v
            .get("text_config")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"model_type": "llama"}));
        let mut text_json = text_json;
        if text_json.get("model_type").is_none() {
            text_json["model_type"] = "llama".into();
        }
        let text_model_type = text_json["model_type"]
            .as_str()
            .unwrap_or("llama")
            .to_string();
        let text = LlamaConfig::from_hf_json(&text_json).context("reading text_config")?;
        let vision = match v.get("vision_config") {
            Some(vc) if vc.is_object() => {
                ClipVisionConfig::from_json(vc).context("reading vision_config")?
            }
            _ => ClipVisionConfig::vit_large_336(),
        };
        let image_token_id = v
            .get("image_token_index")
            .or_else(|| v.get("image_token_id"))
            .and_then(Value::as_u64)
            .map_or(32000, |x| x as u32);
        let strategy = v
            .get("vision_feature_select_strategy")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let variant = if architecture == "llava_next" {
            Variant::Next
        } else {
            Variant::V15
        };
        Ok(Self {
            variant,
            text,
            text_model_type,
            vision,
            image_token_id: Some(image_token_id),
            feature_layers: layers_of(v.get("vision_feature_layer"))?,
            keep_class_token: parse_strategy(strategy)?,
            projector_act: Activation::from_name(
                v.get("projector_hidden_act")
                    .and_then(Value::as_str)
                    .unwrap_or("gelu"),
            )?,
            grid_pinpoints: match v.get("image_grid_pinpoints") {
                Some(g) => preprocess::parse_pinpoints(g)?,
                None => DEFAULT_GRID.to_vec(),
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
            keep_class_token: match select {
                "patch" => false,
                "cls_patch" => true,
                other => {
                    bail!("mm_vision_select_feature {other:?} is not supported (patch, cls_patch)")
                }
            },
            projector_act: Activation::Gelu,
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

    /// Image tokens one image becomes, for an image of `original_size` `(height, width)`.
    pub fn image_token_count(&self, original_size: (u32, u32)) -> usize {
        let side = self.vision.patches_per_side();
        let per_tile = side * side + usize::from(self.keep_class_token);
        match self.variant {
            Variant::V15 => per_tile,
            Variant::Next => {
                let (h, w) = self.unpadded_grid(original_size);
                per_tile + h * (w + 1)
            }
        }
    }

    /// Rows and columns of grid features left after LLaVA-NeXT removes the padding.
    fn unpadded_grid(&self, original_size: (u32, u32)) -> (usize, usize) {
        let side = self.vision.patches_per_side();
        let tile = self.vision.image_size as u32;
        let best = select_best_resolution(original_size, &self.grid_pinpoints);
        let rows = (best.0 / tile) as usize * side;
        let cols = (best.1 / tile) as usize * side;
        unpad_range(original_size, rows, cols)
            .map(|(r, c)| (r.len(), c.len()))
            .unwrap_or((rows, cols))
    }

    /// The image processor the checkpoint expects: `preprocessor_config.json` if there is one,
    /// else CLIP's at the tower's resolution.
    pub fn image_processor(&self, preprocessor_config: Option<&Value>) -> Result<ImageProcessor> {
        let size = self.vision.image_size as u32;
        let mut p = match preprocessor_config {
            Some(v) => ImageProcessor::from_json(v, size)?,
            None => ImageProcessor::clip(size),
        };
        if self.pad_to_square {
            p.pad_to_square = Some(p.mean_color());
        }
        p.grid_pinpoints = match self.variant {
            Variant::Next => Some(
                p.grid_pinpoints
                    .take()
                    .unwrap_or_else(|| self.grid_pinpoints.clone()),
            ),
            Variant::V15 => None,
        };
        Ok(p)
    }
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
                Projector {
                    layers: vec![
                        candle_nn::linear(vision_out, text_h, p.pp("linear_1"))
                            .context("loading multi_modal_projector.linear_1")?,
                        candle_nn::linear(text_h, text_h, p.pp("linear_2"))
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
        let image_newline = if config.variant == Variant::Next {
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

    /// Parameters of tower + projector + language model.
    pub fn parameters(&self) -> u64 {
        let v = self.config.vision.hidden_size as u64 * self.config.feature_layers.len() as u64;
        let t = self.config.text.hidden_size as u64;
        let projector = match self.projector.layers.len() {
            0 => 0,
            n => v * t + t + (n as u64 - 1) * (t * t + t),
        };
        self.config.vision.parameters() + projector + self.llm.config.parameters()
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
        let features = if c.keep_class_token {
            features
        } else {
            features.narrow(1, 1, side * side)?
        };
        let _span = crate::profile::span("op", "projector");
        let projected = self.projector.forward(&features)?;
        let (tiles, per_tile, hidden) = projected.dims3()?;
        let out = match (c.variant, &self.image_newline) {
            (Variant::Next, Some(newline)) if tiles > 1 => {
                if c.keep_class_token {
                    bail!(
                        "LLaVA-NeXT with vision_feature_select_strategy \"full\" is not supported"
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
                let nl = newline
                    .to_dtype(grid.dtype())?
                    .reshape((hidden, 1, 1))?
                    .broadcast_as((hidden, rows.len(), 1))?;
                let grid = Tensor::cat(&[&grid, &nl], 2)?
                    .reshape((hidden, rows.len() * (cols.len() + 1)))?
                    .t()?;
                Tensor::cat(&[&base, &grid], 0)?
            }
            (Variant::Next, Some(newline)) => Tensor::cat(
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
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "{diff}");
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
