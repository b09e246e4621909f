//! Random-weight Qwen2-VL / Qwen2.5-VL presets, in memory or written in the layout Qwen
//! publishes (`visual.*`, `model.*`, `lm_head.*`, the language model's keys at the top of
//! config.json).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::weight_rng::WeightRng;
use super::{
    llama_preset, tokenizer_json, torch_dtype_name, write, write_configs, write_safetensors,
    write_tokenizer_files, LlamaShape, BOS, EOS, PAD,
};
use crate::models::llava::preprocess::{CLIP_MEAN, CLIP_STD};
use crate::models::qwen2vl::vision::VisionKind;
use crate::models::qwen2vl::{IMAGE_PAD, VISION_END, VISION_START};

/// The Qwen2-VL family presets.
pub const QWEN_VL_PRESETS: &[&str] = &[
    "tiny-qwen2.5-vl",
    "tiny-qwen2-vl",
    "qwen2.5-vl-7b",
    "qwen2-vl-7b",
];

/// Special tokens of the preset tokenizer, at the last ids in this order.
pub const SPECIALS: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    VISION_START,
    VISION_END,
    IMAGE_PAD,
    "<|video_pad|>",
];

/// A preset's shape.
#[derive(Debug, Clone)]
pub struct QwenVlShape {
    pub kind: VisionKind,
    pub text: LlamaShape,
    pub vision_hidden: usize,
    pub vision_intermediate: usize,
    pub vision_depth: usize,
    pub vision_heads: usize,
    pub window_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
    pub mrope_section: [usize; 3],
    pub min_pixels: u64,
    pub max_pixels: u64,
}

pub fn qwen_vl_preset(name: &str) -> Option<QwenVlShape> {
    let tiny_text = LlamaShape {
        max_position_embeddings: 4096,
        rms_norm_eps: 1e-6,
        ..llama_preset("tiny-llama")?
    };
    // Qwen2-VL-7B and Qwen2.5-VL-7B share the language model's shape.
    let big_text = LlamaShape {
        hidden_size: 3584,
        intermediate_size: 18944,
        num_hidden_layers: 28,
        num_attention_heads: 28,
        num_key_value_heads: 4,
        vocab_size: 152064,
        max_position_embeddings: 128000,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        initializer_range: 0.02,
    };
    let tiny = |kind| QwenVlShape {
        kind,
        text: tiny_text.clone(),
        vision_hidden: 32,
        vision_intermediate: 64,
        vision_depth: 3,
        vision_heads: 2,
        window_size: 56,
        fullatt_block_indexes: vec![1],
        mrope_section: [2, 3, 3],
        min_pixels: 56 * 56,
        max_pixels: 28 * 28 * 64,
    };
    let big = |kind| QwenVlShape {
        kind,
        text: big_text.clone(),
        vision_hidden: 1280,
        vision_intermediate: if kind == VisionKind::Qwen25 {
            3420
        } else {
            5120
        },
        vision_depth: 32,
        vision_heads: 16,
        window_size: 112,
        fullatt_block_indexes: vec![7, 15, 23, 31],
        mrope_section: [16, 24, 24],
        min_pixels: 56 * 56,
        max_pixels: 28 * 28 * 16384,
    };
    Some(match name {
        "tiny-qwen2.5-vl" => tiny(VisionKind::Qwen25),
        "tiny-qwen2-vl" => tiny(VisionKind::Qwen2),
        "qwen2.5-vl-7b" => big(VisionKind::Qwen25),
        "qwen2-vl-7b" => big(VisionKind::Qwen2),
        _ => return None,
    })
}

impl QwenVlShape {
    fn special_id(&self, token: &str) -> u32 {
        let pos = SPECIALS.iter().position(|s| *s == token).unwrap_or(0);
        (self.text.vocab_size - SPECIALS.len() + pos) as u32
    }

    pub fn image_token_id(&self) -> u32 {
        self.special_id(IMAGE_PAD)
    }

    pub fn architecture(&self) -> &'static str {
        match self.kind {
            VisionKind::Qwen2 => "qwen2_vl",
            VisionKind::Qwen25 => "qwen2_5_vl",
        }
    }

    /// config.json as Qwen publishes it.
    pub fn hf_config(&self, dtype: DType) -> Value {
        let t = &self.text;
        let vision = match self.kind {
            VisionKind::Qwen25 => json!({
                "depth": self.vision_depth, "hidden_act": "silu", "hidden_size": self.vision_hidden,
                "intermediate_size": self.vision_intermediate, "num_heads": self.vision_heads,
                "in_chans": 3, "out_hidden_size": t.hidden_size, "patch_size": 14,
                "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": self.window_size,
                "fullatt_block_indexes": self.fullatt_block_indexes, "tokens_per_second": 2,
                "temporal_patch_size": 2,
            }),
            VisionKind::Qwen2 => json!({
                "depth": self.vision_depth, "embed_dim": self.vision_hidden,
                "mlp_ratio": self.vision_intermediate as f64 / self.vision_hidden as f64,
                "num_heads": self.vision_heads, "in_chans": 3, "hidden_size": t.hidden_size,
                "hidden_act": "quick_gelu", "patch_size": 14, "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            }),
        };
        json!({
            "architectures": [match self.kind {
                VisionKind::Qwen25 => "Qwen2_5_VLForConditionalGeneration",
                VisionKind::Qwen2 => "Qwen2VLForConditionalGeneration",
            }],
            "model_type": self.architecture(),
            "attention_dropout": 0.0,
            "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD,
            "vision_start_token_id": self.special_id(VISION_START),
            "vision_end_token_id": self.special_id(VISION_END),
            "image_token_id": self.image_token_id(),
            "video_token_id": self.special_id("<|video_pad|>"),
            "hidden_act": "silu",
            "hidden_size": t.hidden_size,
            "initializer_range": t.initializer_range,
            "intermediate_size": t.intermediate_size,
            "max_position_embeddings": t.max_position_embeddings,
            "max_window_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_hidden_layers": t.num_hidden_layers,
            "num_key_value_heads": t.num_key_value_heads,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "rope_scaling": {"type": "mrope", "mrope_section": self.mrope_section},
            "sliding_window": 32768, "use_sliding_window": false,
            "tie_word_embeddings": false,
            "torch_dtype": torch_dtype_name(dtype),
            "use_cache": true,
            "vocab_size": t.vocab_size,
            "vision_config": vision,
        })
    }

    /// preprocessor_config.json as Qwen publishes it.
    pub fn preprocessor_config(&self) -> Value {
        json!({
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": match self.kind {
                VisionKind::Qwen25 => "Qwen2_5_VLProcessor",
                VisionKind::Qwen2 => "Qwen2VLProcessor",
            },
            "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
            "rescale_factor": 1.0 / 255.0, "resample": 3,
            "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
            "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
            "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        })
    }

    /// Random weights under the published names.
    pub fn random_weights(
        &self,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let mut w = self.text.random_weights(seed, dtype, device, "")?;
        let t = &self.text;
        let hd = t.hidden_size / t.num_attention_heads;
        // A second stream, so the text weights equal those of the text preset with this seed.
        let mut rng = WeightRng::new(seed ^ 0x9e37_0001, device)?;
        let mut put = |w: &mut HashMap<String, Tensor>,
                       name: String,
                       shape: &[usize],
                       fill: Option<f64>|
         -> Result<()> {
            let tensor = match fill {
                Some(x) => (Tensor::ones(shape, dtype, device)? * x)?,
                None => rng.uniform(shape, 0.02, dtype, device)?,
            };
            w.insert(name, tensor);
            Ok(())
        };
        for l in 0..t.num_hidden_layers {
            let p = format!("model.layers.{l}.self_attn");
            put(&mut w, format!("{p}.q_proj.bias"), &[t.hidden_size], None)?;
            for kv in ["k_proj", "v_proj"] {
                put(
                    &mut w,
                    format!("{p}.{kv}.bias"),
                    &[t.num_key_value_heads * hd],
                    None,
                )?;
            }
        }
        let (h, i) = (self.vision_hidden, self.vision_intermediate);
        let v = "visual";
        put(
            &mut w,
            format!("{v}.patch_embed.proj.weight"),
            &[h, 3, 2, 14, 14],
            None,
        )?;
        let layer_norm = self.kind == VisionKind::Qwen2;
        for l in 0..self.vision_depth {
            let b = format!("{v}.blocks.{l}");
            for n in ["norm1", "norm2"] {
                put(&mut w, format!("{b}.{n}.weight"), &[h], Some(1.0))?;
                if layer_norm {
                    put(&mut w, format!("{b}.{n}.bias"), &[h], Some(0.0))?;
                }
            }
            put(&mut w, format!("{b}.attn.qkv.weight"), &[3 * h, h], None)?;
            put(&mut w, format!("{b}.attn.qkv.bias"), &[3 * h], None)?;
            put(&mut w, format!("{b}.attn.proj.weight"), &[h, h], None)?;
            put(&mut w, format!("{b}.attn.proj.bias"), &[h], None)?;
            let mlp: &[(&str, usize, usize)] = if layer_norm {
                &[("fc1", i, h), ("fc2", h, i)]
            } else {
                &[("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)]
            };
            for &(name, o, inp) in mlp {
                put(&mut w, format!("{b}.mlp.{name}.weight"), &[o, inp], None)?;
                put(&mut w, format!("{b}.mlp.{name}.bias"), &[o], None)?;
            }
        }
        let merged = 4 * h;
        put(&mut w, format!("{v}.merger.ln_q.weight"), &[h], Some(1.0))?;
        if layer_norm {
            put(&mut w, format!("{v}.merger.ln_q.bias"), &[h], Some(0.0))?;
        }
        put(
            &mut w,
            format!("{v}.merger.mlp.0.weight"),
            &[merged, merged],
            None,
        )?;
        put(&mut w, format!("{v}.merger.mlp.0.bias"), &[merged], None)?;
        put(
            &mut w,
            format!("{v}.merger.mlp.2.weight"),
            &[t.hidden_size, merged],
            None,
        )?;
        put(
            &mut w,
            format!("{v}.merger.mlp.2.bias"),
            &[t.hidden_size],
            None,
        )?;
        Ok(w)
    }
}

/// The preset tokenizer, with the Qwen2-VL special tokens as its last ids.
pub fn tokenizer(shape: &QwenVlShape) -> Result<String> {
    tokenizer_json(shape.text.vocab_size, SPECIALS)
}

/// Writes a preset in the layout Qwen publishes.
/// Without weights when `weights_seed` is `None` (configs, tokenizer and processor files only).
pub fn write_model(
    shape: &QwenVlShape,
    out: &Path,
    dtype: DType,
    weights_seed: Option<u64>,
) -> Result<()> {
    std::fs::create_dir_all(out)?;
    write_configs(out, &shape.hf_config(dtype))?;
    write(
        out,
        "preprocessor_config.json",
        &serde_json::to_vec_pretty(&shape.preprocessor_config())?,
    )?;
    write_tokenizer_files(out, &tokenizer(shape)?, SPECIALS)?;
    let Some(seed) = weights_seed else {
        return Ok(());
    };
    let weights = shape.random_weights(seed, dtype, &Device::Cpu)?;
    write_safetensors(out, &weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::open::{open_engine, EngineOptions};
    use crate::engine::GenerationRequest;
    use std::sync::atomic::AtomicBool;

    /// The 7 B presets have the published models' shapes: Qwen2.5-VL-7B-Instruct has
    /// 8,292,166,656 parameters, Qwen2-VL-7B-Instruct 8,291,375,616.
    #[test]
    fn big_presets_have_the_published_parameter_counts() {
        use crate::models::qwen2vl::Qwen2VlConfig;
        for (preset, want) in [
            ("qwen2.5-vl-7b", 8_292_166_656u64),
            ("qwen2-vl-7b", 8_291_375_616),
        ] {
            let shape = qwen_vl_preset(preset).unwrap();
            let c = Qwen2VlConfig::from_json(&shape.hf_config(DType::BF16), shape.kind).unwrap();
            assert_eq!(
                c.vision.parameters() + c.text.parameters(),
                want,
                "{preset}"
            );
            assert_eq!(c.mrope_section, [16, 24, 24]);
        }
    }

    /// The preset written to disk (Qwen's published layout and config.json) computes what the
    /// in-memory preset computes, and counts the image tokens the processor implies.
    #[test]
    fn written_preset_loads_and_matches_the_in_memory_one() {
        for preset in ["tiny-qwen2.5-vl", "tiny-qwen2-vl"] {
            let dir = tempfile::tempdir().unwrap();
            crate::synth::presets::write_model(preset, dir.path(), DType::F32, 4).unwrap();
            let image = dir.path().join("frame.png");
            image::RgbImage::from_fn(300, 200, |x, y| {
                image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
            })
            .save(&image)
            .unwrap();
            let open = |model: String, seed| {
                open_engine(&EngineOptions {
                    model,
                    dtype: Some(DType::F32),
                    device: "cpu".into(),
                    tokenizer: None,
                    seed,
                    prompt_template: None,
                    kv_cache_dtype: None,
                })
                .unwrap()
            };
            let cancel = AtomicBool::new(false);
            let req = GenerationRequest {
                prompt: "What is in the picture?",
                images: std::slice::from_ref(&image),
                max_new_tokens: 6,
                ignore_eos: true,
                cancel: &cancel,
            };
            let mut disk = open(dir.path().display().to_string(), 0);
            let mut memory = open(format!("random:{preset}"), 4);
            let (a, b) = (disk.generate(&req).unwrap(), memory.generate(&req).unwrap());
            // 300x200 rounds to 308x196, above the preset's 64 tokens: scaled down to
            // 252x168, 18x12 patches, 9x6 merged tokens.
            assert_eq!(a.image_tokens, 54, "{preset}");
            assert_eq!(a.image_tokens, b.image_tokens);
            assert_eq!(a.input_tokens, b.input_tokens);
            assert_eq!(a.output_token_ids, b.output_token_ids, "{preset}");
            assert_eq!(a.output_token_ids.len(), 6);
            assert!(a.vision_encode.is_some());
            let text_only = GenerationRequest { images: &[], ..req };
            let t = disk.generate(&text_only).unwrap();
            assert_eq!(t.image_tokens, 0);
            assert_eq!(t.input_tokens, a.input_tokens - 54 - 2);
        }
    }
}
