//! Qwen2-VL and Qwen2.5-VL: a native-resolution vision transformer ([`vision`]), its image
//! processor ([`preprocess`]) and a Qwen2 language model with multimodal rotary positions.
//!
//! Weight layouts (detected from the tensor names):
//! - as Qwen publishes them (`visual.*`, `model.*`, `lm_head.*`);
//! - transformers ≥ 4.52 / 5 `save_pretrained` (`model.visual.*`, `model.language_model.*`,
//!   `lm_head.*`).
//!
//! M-RoPE: each rotary pair of the language model's heads belongs to one of three sections
//! (`mrope_section`, e.g. 16/24/24 pairs) that rotate with a token's temporal, height and width
//! position. Text tokens have the same value in all three, counting on from the last position
//! used; an image's tokens (one per merged 2 × 2 patch block) share the temporal position of the
//! image's start and take `start + row` / `start + column`; the text after the image continues
//! from `start + max(rows, columns)`, and a further image starts where that text left off.
//! Decode steps then rotate as `slot + delta`, where `delta = last position + 1 − prompt
//! length`.

pub mod preprocess;
pub mod vision;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::llama::{LlamaConfig, LlamaModel};
use preprocess::PatchedImage;
use vision::{QwenVisionConfig, QwenVisionTower, VisionKind};

/// The placeholder tokens of the Qwen2-VL tokenizer.
pub const VISION_START: &str = "<|vision_start|>";
pub const VISION_END: &str = "<|vision_end|>";
pub const IMAGE_PAD: &str = "<|image_pad|>";

/// Everything config.json says about a Qwen2-VL / Qwen2.5-VL model.
#[derive(Debug, Clone)]
pub struct Qwen2VlConfig {
    pub text: LlamaConfig,
    pub vision: QwenVisionConfig,
    /// Rotary pairs per section (temporal, height, width).
    pub mrope_section: [usize; 3],
    pub image_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

/// Where a checkpoint keeps each part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `visual.*`, `model.*`, `lm_head.*`, as Qwen publishes the checkpoints.
    Published,
    /// `model.visual.*`, `model.language_model.*`, `lm_head.*` (transformers ≥ 4.52).
    Nested,
}

impl Layout {
    pub fn detect(vb: &VarBuilder) -> Result<Self> {
        if vb.contains_tensor("model.visual.patch_embed.proj.weight") {
            Ok(Self::Nested)
        } else if vb.contains_tensor("visual.patch_embed.proj.weight") {
            Ok(Self::Published)
        } else {
            bail!("no Qwen2-VL vision tower in the weights: looked for visual.patch_embed.proj.weight and model.visual.patch_embed.proj.weight")
        }
    }

    fn parts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Published => ("visual", "model", "lm_head"),
            Self::Nested => ("model.visual", "model.language_model", "lm_head"),
        }
    }
}

fn mrope_section(text: &Value) -> Result<Option<[usize; 3]>> {
    let found = ["rope_scaling", "rope_parameters"]
        .iter()
        .filter_map(|k| text.get(*k))
        .find_map(|r| r.get("mrope_section"));
    let Some(list) = found else {
        return Ok(None);
    };
    let a = list
        .as_array()
        .filter(|a| a.len() == 3)
        .context("mrope_section must be a list of 3 integers")?;
    let mut out = [0usize; 3];
    for (o, x) in out.iter_mut().zip(a) {
        *o = x.as_u64().context("mrope_section must hold integers")? as usize;
    }
    Ok(Some(out))
}

impl Qwen2VlConfig {
    /// Reads config.json of a `qwen2_vl` or `qwen2_5_vl` model. Qwen's published configs keep
    /// the language model's keys at the top level; transformers 5 nests them in `text_config`.
    pub fn from_json(v: &Value, kind: VisionKind) -> Result<Self> {
        let mut text_json = match v.get("text_config").filter(|t| t.is_object()) {
            Some(t) => t.clone(),
            None => v.clone(),
        };
        // The language model is Qwen2 (biases on q/k/v). Its rotary frequencies are the
        // default ones; the sections (read below) are applied by this model, not the decoder.
        let section = mrope_section(&text_json)?.unwrap_or([16, 24, 24]);
        text_json["model_type"] = "qwen2".into();
        for key in ["rope_scaling", "rope_parameters"] {
            if let Some(Value::Object(r)) = text_json.get_mut(key) {
                r.remove("mrope_section");
                for k in ["type", "rope_type"] {
                    if r.get(k).and_then(Value::as_str) == Some("mrope") {
                        r.insert(k.into(), "default".into());
                    }
                }
            }
        }
        if text_json.get("tie_word_embeddings").is_none() {
            if let Some(t) = v.get("tie_word_embeddings") {
                text_json["tie_word_embeddings"] = t.clone();
            }
        }
        let text = LlamaConfig::from_hf_json(&text_json).context("reading the text config")?;
        let vision_json = v
            .get("vision_config")
            .filter(|x| x.is_object())
            .context("config.json has no vision_config")?;
        let vision =
            QwenVisionConfig::from_json(vision_json, kind).context("reading vision_config")?;
        if vision.out_hidden_size != text.hidden_size {
            bail!(
                "vision_config's output width {} differs from the language model's hidden size {}",
                vision.out_hidden_size,
                text.hidden_size
            );
        }
        let half = text.head_dim / 2;
        if section.iter().sum::<usize>() != half {
            bail!("mrope_section {section:?} must add up to half the head size ({half})");
        }
        let id = |k: &str, d: u32| v.get(k).and_then(Value::as_u64).map_or(d, |x| x as u32);
        Ok(Self {
            text,
            vision,
            mrope_section: section,
            image_token_id: id("image_token_id", 151655),
            vision_start_token_id: id("vision_start_token_id", 151652),
            vision_end_token_id: id("vision_end_token_id", 151653),
        })
    }

    pub fn kind(&self) -> VisionKind {
        self.vision.kind
    }
}

/// A run of the prompt: text tokens, or one image of `(rows, columns)` merged tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Text(usize),
    Image { rows: usize, cols: usize },
}

/// M-RoPE positions `[temporal, height, width]` of every prompt token, and the shift decode
/// steps take (`last position + 1 − prompt length`).
pub fn mrope_positions(segments: &[Segment]) -> (Vec<[u32; 3]>, i64) {
    let mut out = Vec::new();
    let mut next = 0u32;
    for s in segments {
        match *s {
            Segment::Text(n) => {
                for i in 0..n as u32 {
                    out.push([next + i; 3]);
                }
                next += n as u32;
            }
            Segment::Image { rows, cols } => {
                for r in 0..rows as u32 {
                    for c in 0..cols as u32 {
                        out.push([next, next + r, next + c]);
                    }
                }
                next += rows.max(cols) as u32;
            }
        }
    }
    let shift = i64::from(next) - out.len() as i64;
    (out, shift)
}

/// A loaded model.
pub struct Qwen2VlModel {
    pub config: Qwen2VlConfig,
    pub llm: LlamaModel,
    vision: QwenVisionTower,
}

impl Qwen2VlModel {
    pub fn load(config: Qwen2VlConfig, vb: VarBuilder, layout: Layout) -> Result<Self> {
        let (visual, model, head) = layout.parts();
        let llm = LlamaModel::from_hf(config.text.clone(), vb.clone(), model, head)
            .context("loading the language model")?;
        // On the CPU, half-precision checkpoints compute in f32 (as the language model does);
        // the tower is a small share of the weights and is widened as it loads.
        let vb_vision = if vb.device().is_cpu() && matches!(vb.dtype(), DType::F16 | DType::BF16) {
            vb.set_dtype(DType::F32)
        } else {
            vb.clone()
        };
        let vision = QwenVisionTower::load(config.vision.clone(), vb_vision.pp(visual))
            .context("loading the vision tower")?;
        Ok(Self {
            config,
            llm,
            vision,
        })
    }

    pub fn device(&self) -> &Device {
        self.vision.device()
    }

    pub fn parameters(&self) -> u64 {
        self.config.vision.parameters() + self.llm.config.parameters()
    }

    /// Image features in the language model's embedding space, `(tokens, hidden)`.
    pub fn encode_image(&self, image: &PatchedImage) -> Result<Tensor> {
        let _span = crate::profile::span("op", "vision_tower");
        Ok(self.vision.forward(image)?.to_dtype(self.llm.dtype())?)
    }

    /// Merged-token grid `(rows, columns)` of an image.
    pub fn image_grid(&self, image: &PatchedImage) -> (usize, usize) {
        let m = self.config.vision.spatial_merge_size;
        (image.grid_thw.1 / m, image.grid_thw.2 / m)
    }

    /// Rotary cos / sin rows (`tokens × head_dim / 2`, row-major) of M-RoPE positions: pair `j`
    /// rotates with the temporal, height or width position by the section it falls in.
    pub fn rotary(&self, positions: &[[u32; 3]]) -> (Vec<f32>, Vec<f32>) {
        let spec = self.config.text.rope_spec(false);
        let inv = spec.inv_freq(positions.len());
        let [t, h, _] = self.config.mrope_section;
        let section = |j: usize| {
            if j < t {
                0
            } else if j < t + h {
                1
            } else {
                2
            }
        };
        let af = spec.attention_factor();
        let mut cos = Vec::with_capacity(positions.len() * inv.len());
        let mut sin = Vec::with_capacity(positions.len() * inv.len());
        for p in positions {
            for (j, f) in inv.iter().enumerate() {
                let a = p[section(j)] as f32 * f;
                cos.push(a.cos() * af);
                sin.push(a.sin() * af);
            }
        }
        (cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn positions_follow_transformers_get_rope_index() {
        // 3 text tokens, an image of 2x3 merged tokens, 2 text tokens.
        let (pos, shift) = mrope_positions(&[
            Segment::Text(3),
            Segment::Image { rows: 2, cols: 3 },
            Segment::Text(2),
        ]);
        assert_eq!(pos.len(), 11);
        assert_eq!(pos[2], [2, 2, 2]);
        assert_eq!(pos[3], [3, 3, 3]);
        assert_eq!(pos[5], [3, 3, 5]);
        assert_eq!(pos[6], [3, 4, 3]);
        assert_eq!(pos[8], [3, 4, 5]);
        // Text continues from the image's start + max(rows, columns).
        assert_eq!(pos[9], [6, 6, 6]);
        assert_eq!(pos[10], [7, 7, 7]);
        assert_eq!(shift, 8 - 11);
        let (text, none) = mrope_positions(&[Segment::Text(4)]);
        assert_eq!((text[3], none), ([3, 3, 3], 0));
    }

    /// Several images, as `get_rope_index` walks them: each image starts where the text before
    /// it left off, and the text after each continues from its start + max(rows, columns).
    #[test]
    fn several_images_each_start_where_the_text_before_left_off() {
        // 2 text, a 2x3 image, 2 text (`<|vision_end|><|vision_start|>`), a 4x1 image, 1 text.
        let (pos, shift) = mrope_positions(&[
            Segment::Text(2),
            Segment::Image { rows: 2, cols: 3 },
            Segment::Text(2),
            Segment::Image { rows: 4, cols: 1 },
            Segment::Text(1),
        ]);
        assert_eq!(pos.len(), 2 + 6 + 2 + 4 + 1);
        assert_eq!(pos[2], [2, 2, 2]);
        assert_eq!(pos[7], [2, 3, 4]);
        // First image: start 2, max(2, 3) = 3, so the text between continues at 5.
        assert_eq!(pos[8], [5, 5, 5]);
        assert_eq!(pos[9], [6, 6, 6]);
        // Second image starts at 7: rows go 7..=10, its single column stays at 7.
        assert_eq!(pos[10], [7, 7, 7]);
        assert_eq!(pos[13], [7, 10, 7]);
        // Then 7 + max(4, 1) = 11.
        assert_eq!(pos[14], [11, 11, 11]);
        // Decode continues at max position + 1 = 12: slot 15 + shift.
        assert_eq!(shift, 12 - 15);
    }

    fn hub_config() -> Value {
        // Qwen/Qwen2.5-VL-7B-Instruct's config.json (the keys that matter).
        json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
            "max_position_embeddings": 128000, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
            "tie_word_embeddings": false, "bos_token_id": 151643, "eos_token_id": 151645,
            "image_token_id": 151655, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
                "intermediate_size": 3420, "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584,
                "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                "tokens_per_second": 2, "temporal_patch_size": 2}
        })
    }

    #[test]
    fn published_config_is_read() {
        let c = Qwen2VlConfig::from_json(&hub_config(), VisionKind::Qwen25).unwrap();
        assert_eq!(c.text.hidden_size, 3584);
        assert_eq!(c.text.head_dim, 128);
        assert_eq!(c.text.num_kv_heads, 4);
        assert_eq!(c.text.rope_theta, 1e6);
        assert_eq!(c.mrope_section, [16, 24, 24]);
        assert_eq!(c.vision.window_size, 112);
        assert_eq!(c.image_token_id, 151655);
        let mut bad = hub_config();
        bad["rope_scaling"]["mrope_section"] = json!([16, 24, 20]);
        assert!(Qwen2VlConfig::from_json(&bad, VisionKind::Qwen25).is_err());
        let mut narrow = hub_config();
        narrow["vision_config"]["out_hidden_size"] = 2048.into();
        assert!(Qwen2VlConfig::from_json(&narrow, VisionKind::Qwen25).is_err());
    }
}
