//! Random-weight LLaVA presets (1.5, 1.6 and OneVision), in memory or written in llava-hf's
//! published layout.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::models::clip::{Activation, ClipVisionConfig, TowerKind};
use crate::models::llava::preprocess::{CLIP_MEAN, CLIP_STD};
use crate::models::llava::{onevision_grid, DEFAULT_GRID};
use crate::synth::weight_rng::WeightRng;
use crate::synth::{
    llama_preset, tokenizer_json, torch_dtype_name, write, write_configs, write_safetensors,
    write_tokenizer_files, LlamaShape, BOS, PAD,
};

/// The vision presets.
pub const VISION_PRESETS: &[&str] = &[
    "tiny-llava",
    "tiny-llava-next",
    "tiny-llava-onevision",
    "llava-1.5-7b",
    "llava-1.6-7b",
    "llava-onevision-7b",
];

/// Which LLaVA generation a preset is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlavaKind {
    V15,
    Next,
    /// SigLIP tower, Qwen2 language model, `anyres_max_9`.
    OneVision,
}

/// A LLaVA shape: language model, vision tower, and its generation.
#[derive(Debug, Clone)]
pub struct LlavaShape {
    pub text: LlamaShape,
    pub vision: ClipVisionConfig,
    pub kind: LlavaKind,
    /// OneVision's grid resolutions `(height, width)` (multiples of the tower's input).
    pub grid: Vec<(u32, u32)>,
}

/// The `<image>` placeholder, and OneVision's chat-format tokens before it.
const ONEVISION_SPECIALS: &[&str] = &["<|im_start|>", "<|im_end|>", "<video>", "<image>"];

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
        kind: TowerKind::Clip,
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
    let shape = |text, vision, kind| LlavaShape {
        text,
        vision,
        kind,
        grid: DEFAULT_GRID.to_vec(),
    };
    Some(match name {
        "tiny-llava" => shape(tiny_text, tiny_vision, LlavaKind::V15),
        "tiny-llava-next" => shape(tiny_text, tiny_vision, LlavaKind::Next),
        "llava-1.5-7b" => shape(big_text, ClipVisionConfig::vit_large_336(), LlavaKind::V15),
        "llava-1.6-7b" => shape(big_text, ClipVisionConfig::vit_large_336(), LlavaKind::Next),
        // A 60-pixel SigLIP (4 × 4 patches, the last 4 pixels unseen) on a grid of up to
        // 6 × 6 tiles, so the shrink to 9 tiles happens on small images.
        "tiny-llava-onevision" => LlavaShape {
            text: LlamaShape {
                max_position_embeddings: 32768,
                rms_norm_eps: 1e-6,
                ..tiny_text
            },
            vision: ClipVisionConfig {
                image_size: 60,
                layer_norm_eps: 1e-6,
                activation: Activation::GeluTanh,
                kind: TowerKind::Siglip,
                ..tiny_vision
            },
            kind: LlavaKind::OneVision,
            grid: onevision_grid(60),
        },
        // llava-hf/llava-onevision-qwen2-7b-ov-hf: Qwen2-7B and 26 layers of SigLIP so400m.
        "llava-onevision-7b" => LlavaShape {
            text: LlamaShape {
                hidden_size: 3584,
                intermediate_size: 18944,
                num_hidden_layers: 28,
                num_attention_heads: 28,
                num_key_value_heads: 4,
                vocab_size: 152_128,
                max_position_embeddings: 32768,
                rms_norm_eps: 1e-6,
                rope_theta: 1_000_000.0,
                initializer_range: 0.02,
            },
            vision: ClipVisionConfig {
                num_layers: 26,
                ..ClipVisionConfig::siglip_so400m_384()
            },
            kind: LlavaKind::OneVision,
            grid: onevision_grid(384),
        },
        _ => return None,
    })
}

impl LlavaShape {
    /// The extra special tokens of the preset tokenizer, `<image>` last.
    fn specials(&self) -> &'static [&'static str] {
        match self.kind {
            LlavaKind::OneVision => ONEVISION_SPECIALS,
            _ => &["<image>"],
        }
    }

    /// The `<image>` token: the last id of the preset tokenizer.
    pub fn image_token_id(&self) -> u32 {
        self.text.vocab_size as u32 - 1
    }

    /// `<|im_end|>`, which ends OneVision's turns (its generation config's EOS).
    fn im_end_id(&self) -> u32 {
        (self.text.vocab_size - ONEVISION_SPECIALS.len() + 1) as u32
    }

    /// The end-of-sequence token the preset's generation config names.
    pub fn eos_id(&self) -> u32 {
        match self.kind {
            LlavaKind::OneVision => self.im_end_id(),
            _ => crate::synth::EOS,
        }
    }

    pub fn architecture(&self) -> &'static str {
        match self.kind {
            LlavaKind::V15 => "llava",
            LlavaKind::Next => "llava_next",
            LlavaKind::OneVision => "llava_onevision",
        }
    }

    fn class_name(&self) -> &'static str {
        match self.kind {
            LlavaKind::V15 => "LlavaForConditionalGeneration",
            LlavaKind::Next => "LlavaNextForConditionalGeneration",
            LlavaKind::OneVision => "LlavaOnevisionForConditionalGeneration",
        }
    }

    /// config.json as llava-hf publishes it.
    pub fn hf_config(&self, dtype: DType) -> Value {
        let v = &self.vision;
        let onevision = self.kind == LlavaKind::OneVision;
        let mut text = self.text.hf_config(dtype);
        if onevision {
            text["architectures"] = json!(["Qwen2ForCausalLM"]);
            text["model_type"] = "qwen2".into();
            text["eos_token_id"] = self.im_end_id().into();
            text["use_sliding_window"] = false.into();
        }
        let mut vision = json!({
            "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_layers, "num_attention_heads": v.num_heads,
            "image_size": v.image_size, "patch_size": v.patch_size,
            "num_channels": v.num_channels, "layer_norm_eps": v.layer_norm_eps,
        });
        let own = if onevision {
            json!({"model_type": "siglip_vision_model", "hidden_act": "gelu_pytorch_tanh",
                "vision_use_head": false})
        } else {
            json!({"model_type": "clip_vision_model", "hidden_act": "quick_gelu",
                "projection_dim": 768})
        };
        if let (Some(all), Some(own)) = (vision.as_object_mut(), own.as_object()) {
            all.extend(own.clone());
        }
        let mut c = json!({
            "architectures": [self.class_name()],
            "model_type": self.architecture(),
            "ignore_index": -100,
            "image_token_index": self.image_token_id(),
            "pad_token_id": PAD,
            "projector_hidden_act": "gelu",
            "vision_feature_layer": if onevision { -1 } else { -2 },
            "vision_feature_select_strategy": if onevision { "full" } else { "default" },
            "image_seq_length": v.patches_per_side().pow(2),
            "tie_word_embeddings": false,
            "torch_dtype": torch_dtype_name(dtype),
            "text_config": text,
            "vision_config": vision,
        });
        match self.kind {
            LlavaKind::V15 => {}
            LlavaKind::Next => c["image_grid_pinpoints"] = grid_json(&self.grid),
            LlavaKind::OneVision => {
                c["image_grid_pinpoints"] = grid_json(&self.grid);
                c["vision_aspect_ratio"] = "anyres_max_9".into();
                c["multimodal_projector_bias"] = true.into();
                c["video_token_index"] = (self.image_token_id() - 1).into();
            }
        }
        c
    }

    /// preprocessor_config.json of llava-hf's checkpoints.
    pub fn preprocessor_config(&self) -> Value {
        let size = self.vision.image_size;
        if self.kind == LlavaKind::OneVision {
            return json!({
                "image_processor_type": "LlavaOnevisionImageProcessor",
                "size": {"height": size, "width": size},
                "do_convert_rgb": true, "do_normalize": true, "do_pad": true,
                "do_rescale": true, "do_resize": true, "resample": 3,
                "rescale_factor": 1.0 / 255.0,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                "image_grid_pinpoints": grid_json(&self.grid),
            });
        }
        let next = self.kind == LlavaKind::Next;
        let mut p = json!({
            "image_processor_type": if next { "LlavaNextImageProcessor" } else { "CLIPImageProcessor" },
            "crop_size": {"height": size, "width": size},
            "size": {"shortest_edge": size},
            "do_center_crop": true, "do_convert_rgb": true, "do_normalize": true,
            "do_rescale": true, "do_resize": true, "resample": 3,
            "rescale_factor": 1.0 / 255.0,
            "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        });
        if next {
            p["image_grid_pinpoints"] = grid_json(&self.grid);
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
        let clip = v.kind == TowerKind::Clip;
        if clip {
            put(format!("{vm}.embeddings.class_embedding"), &[h], None)?;
        } else {
            put(format!("{vm}.embeddings.patch_embedding.bias"), &[h], None)?;
        }
        put(
            format!("{vm}.embeddings.patch_embedding.weight"),
            &[h, v.num_channels, p, p],
            None,
        )?;
        put(
            format!("{vm}.embeddings.position_embedding.weight"),
            &[v.tokens_per_tile(), h],
            None,
        )?;
        let norms: &[&str] = if clip {
            &["pre_layrnorm", "post_layernorm"]
        } else {
            &["post_layernorm"]
        };
        for norm in norms {
            put(format!("{vm}.{norm}.weight"), &[h], Some(1.0))?;
            put(format!("{vm}.{norm}.bias"), &[h], Some(0.0))?;
        }
        if self.kind == LlavaKind::OneVision {
            // Qwen2's attention biases.
            let tx = &self.text;
            let kv = tx.num_key_value_heads * (tx.hidden_size / tx.num_attention_heads);
            for l in 0..tx.num_hidden_layers {
                let a = format!("language_model.model.layers.{l}.self_attn");
                put(format!("{a}.q_proj.bias"), &[tx.hidden_size], None)?;
                put(format!("{a}.k_proj.bias"), &[kv], None)?;
                put(format!("{a}.v_proj.bias"), &[kv], None)?;
            }
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
        if self.kind != LlavaKind::V15 {
            put("image_newline".into(), &[t], None)?;
        }
        Ok(w)
    }
}

fn grid_json(grid: &[(u32, u32)]) -> Value {
    grid.iter()
        .map(|&(h, w)| json!([h, w]))
        .collect::<Vec<_>>()
        .into()
}

/// The preset tokenizer, with `<image>` as its last id (OneVision's chat tokens before it).
pub fn tokenizer(shape: &LlavaShape) -> Result<String> {
    tokenizer_json(shape.text.vocab_size, shape.specials())
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
    let processor = match shape.kind {
        LlavaKind::OneVision => json!({
            "processor_class": "LlavaOnevisionProcessor",
            "num_image_tokens": shape.vision.tokens_per_tile(),
            "vision_feature_select_strategy": "full",
            "vision_aspect_ratio": "anyres_max_9",
            "image_token": "<image>",
            "video_token": "<video>",
        }),
        kind => json!({
            "processor_class": if kind == LlavaKind::Next { "LlavaNextProcessor" } else { "LlavaProcessor" },
            "patch_size": shape.vision.patch_size,
            "vision_feature_select_strategy": "default",
            "num_additional_image_tokens": 1,
            "image_token": "<image>",
        }),
    };
    write(
        out,
        "processor_config.json",
        &serde_json::to_vec_pretty(&processor)?,
    )?;
    write_tokenizer_files(out, &tokenizer(shape)?, shape.specials())?;
    if shape.kind == LlavaKind::OneVision {
        let generation = json!({"bos_token_id": BOS, "eos_token_id": shape.eos_id(),
            "pad_token_id": PAD, "do_sample": false});
        write(
            out,
            "generation_config.json",
            &serde_json::to_vec_pretty(&generation)?,
        )?;
    }
    let Some(seed) = weights_seed else {
        return Ok(());
    };
    let weights = shape.random_weights(seed, dtype, &Device::Cpu)?;
    write_safetensors(out, &weights)
}
