//! Random-weight LLaVA presets, in memory or written in llava-hf's published layout.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::models::clip::{Activation, ClipVisionConfig};
use crate::models::llava::preprocess::{CLIP_MEAN, CLIP_STD};
use crate::models::llava::DEFAULT_GRID;
use crate::synth::weight_rng::WeightRng;
use crate::synth::{
    llama_preset, tokenizer_json, torch_dtype_name, write, write_configs, write_safetensors,
    write_tokenizer_files, LlamaShape, PAD,
};

/// The vision presets.
pub const VISION_PRESETS: &[&str] = &[
    "tiny-llava",
    "tiny-llava-next",
    "llava-1.5-7b",
    "llava-1.6-7b",
];

/// A LLaVA shape: language model, CLIP tower, and whether it is LLaVA-NeXT.
#[derive(Debug, Clone)]
pub struct LlavaShape {
    pub text: LlamaShape,
    pub vision: ClipVisionConfig,
    pub next: bool,
}

/// Shape of a vision preset.
pub fn llava_preset(name: &str) -> Option<LlavaShape> {
    let tiny_vision = ClipVisionConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 2,
        image_size: 336,
        patch_size: 14,
        num_channels: 3,
        layer_norm_eps: 1e-5,
        activation: Activation::QuickGelu,
    };
    // Room for LLaVA-NeXT's up to 2,928 image tokens, a prompt and 512 new tokens.
    let tiny_text = LlamaShape {
        max_position_embeddings: 4096,
        ..llama_preset("tiny-llama")?
    };
    let big_text = LlamaShape {
        vocab_size: 32064,
        ..llama_preset("llama-2-7b")?
    };
    Some(match name {
        "tiny-llava" => LlavaShape {
            text: tiny_text,
            vision: tiny_vision,
            next: false,
        },
        "tiny-llava-next" => LlavaShape {
            text: tiny_text,
            vision: tiny_vision,
            next: true,
        },
        "llava-1.5-7b" => LlavaShape {
            text: big_text,
            vision: ClipVisionConfig::vit_large_336(),
            next: false,
        },
        "llava-1.6-7b" => LlavaShape {
            text: big_text,
            vision: ClipVisionConfig::vit_large_336(),
            next: true,
        },
        _ => return None,
    })
}

impl LlavaShape {
    /// The `<image>` token: the last id of the preset tokenizer.
    pub fn image_token_id(&self) -> u32 {
        self.text.vocab_size as u32 - 1
    }

    pub fn architecture(&self) -> &'static str {
        if self.next {
            "llava_next"
        } else {
            "llava"
        }
    }

    /// config.json as llava-hf publishes it.
    pub fn hf_config(&self, dtype: DType) -> Value {
        let v = &self.vision;
        let mut c = json!({
            "architectures": [if self.next { "LlavaNextForConditionalGeneration" } else { "LlavaForConditionalGeneration" }],
            "model_type": self.architecture(),
            "ignore_index": -100,
            "image_token_index": self.image_token_id(),
            "pad_token_id": PAD,
            "projector_hidden_act": "gelu",
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "image_seq_length": v.patches_per_side().pow(2),
            "tie_word_embeddings": false,
            "torch_dtype": torch_dtype_name(dtype),
            "text_config": self.text.hf_config(dtype),
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_layers, "num_attention_heads": v.num_heads,
                "image_size": v.image_size, "patch_size": v.patch_size,
                "num_channels": v.num_channels, "layer_norm_eps": v.layer_norm_eps,
                "hidden_act": "quick_gelu", "projection_dim": 768,
            },
        });
        if self.next {
            c["image_grid_pinpoints"] = grid_json();
        }
        c
    }

    /// preprocessor_config.json of llava-hf's checkpoints.
    pub fn preprocessor_config(&self) -> Value {
        let size = self.vision.image_size;
        let mut p = json!({
            "image_processor_type": if self.next { "LlavaNextImageProcessor" } else { "CLIPImageProcessor" },
            "crop_size": {"height": size, "width": size},
            "size": {"shortest_edge": size},
            "do_center_crop": true, "do_convert_rgb": true, "do_normalize": true,
            "do_rescale": true, "do_resize": true, "resample": 3,
            "rescale_factor": 1.0 / 255.0,
            "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        });
        if self.next {
            p["image_grid_pinpoints"] = grid_json();
            p["do_pad"] = true.into();
        }
        p
    }

    /// Random weights under llava-hf's published names.
    pub fn random_weights(
        &self,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let mut w = self
            .text
            .random_weights(seed, dtype, device, "language_model.")?;
        // A second stream, so the text weights equal those of the text preset with this seed.
        let mut rng = WeightRng::new(seed ^ 0x11a7a, device)?;
        let v = &self.vision;
        let (h, i, p) = (v.hidden_size, v.intermediate_size, v.patch_size);
        let t = self.text.hidden_size;
        let std = 0.02;
        let mut put = |name: String, shape: &[usize], fill: Option<f64>| -> Result<()> {
            let tensor = match fill {
                Some(x) => (Tensor::ones(shape, dtype, device)? * x)?,
                None => rng.uniform(shape, std, dtype, device)?,
            };
            w.insert(name, tensor);
            Ok(())
        };
        let vm = "vision_tower.vision_model";
        put(format!("{vm}.embeddings.class_embedding"), &[h], None)?;
        put(
            format!("{vm}.embeddings.patch_embedding.weight"),
            &[h, v.num_channels, p, p],
            None,
        )?;
        put(
            format!("{vm}.embeddings.position_embedding.weight"),
            &[v.patches_per_side().pow(2) + 1, h],
            None,
        )?;
        for norm in ["pre_layrnorm", "post_layernorm"] {
            put(format!("{vm}.{norm}.weight"), &[h], Some(1.0))?;
            put(format!("{vm}.{norm}.bias"), &[h], Some(0.0))?;
        }
        for l in 0..v.num_layers {
            let lp = format!("{vm}.encoder.layers.{l}");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                put(format!("{lp}.self_attn.{proj}.weight"), &[h, h], None)?;
                put(format!("{lp}.self_attn.{proj}.bias"), &[h], Some(0.0))?;
            }
            for norm in ["layer_norm1", "layer_norm2"] {
                put(format!("{lp}.{norm}.weight"), &[h], Some(1.0))?;
                put(format!("{lp}.{norm}.bias"), &[h], Some(0.0))?;
            }
            put(format!("{lp}.mlp.fc1.weight"), &[i, h], None)?;
            put(format!("{lp}.mlp.fc1.bias"), &[i], Some(0.0))?;
            put(format!("{lp}.mlp.fc2.weight"), &[h, i], None)?;
            put(format!("{lp}.mlp.fc2.bias"), &[h], Some(0.0))?;
        }
        put(
            "multi_modal_projector.linear_1.weight".into(),
            &[t, h],
            None,
        )?;
        put(
            "multi_modal_projector.linear_1.bias".into(),
            &[t],
            Some(0.0),
        )?;
        put(
            "multi_modal_projector.linear_2.weight".into(),
            &[t, t],
            None,
        )?;
        put(
            "multi_modal_projector.linear_2.bias".into(),
            &[t],
            Some(0.0),
        )?;
        if self.next {
            put("image_newline".into(), &[t], None)?;
        }
        Ok(w)
    }
}

fn grid_json() -> Value {
    DEFAULT_GRID
        .iter()
        .map(|&(h, w)| json!([h, w]))
        .collect::<Vec<_>>()
        .into()
}

/// The preset tokenizer, with `<image>` as its last id.
pub fn tokenizer(shape: &LlavaShape) -> Result<String> {
    tokenizer_json(shape.text.vocab_size, &["<image>"])
}

/// Writes a vision preset in llava-hf's layout (without weights when `weights_seed` is `None`).
pub fn write_model(
    shape: &LlavaShape,
    out: &Path,
    dtype: DType,
    weights_seed: Option<u64>,
) -> Result<()> {
    write_configs(out, &shape.hf_config(dtype))?;
    write(
        out,
        "preprocessor_config.json",
        &serde_json::to_vec_pretty(&shape.preprocessor_config())?,
    )?;
    let processor = json!({
        "processor_class": if shape.next { "LlavaNextProcessor" } else { "LlavaProcessor" },
        "patch_size": shape.vision.patch_size,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
        "image_token": "<image>",
    });
    write(
        out,
        "processor_config.json",
        &serde_json::to_vec_pretty(&processor)?,
    )?;
    write_tokenizer_files(out, &tokenizer(shape)?, &["<image>"])?;
    let Some(seed) = weights_seed else {
        return Ok(());
    };
    let weights = shape.random_weights(seed, dtype, &Device::Cpu)?;
    write_safetensors(out, &weights)
}
