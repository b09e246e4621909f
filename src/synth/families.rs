//! `random:` presets of the text families beyond Llama (listed in the preset registry), in the
//! real shapes people benchmark, and seeded random weights for any text config.
//!
//! A preset is the `config.json` transformers writes for that model (shape keys as released,
//! special token ids those of the preset tokenizer). The weights come from the parsed config
//! through [`weight_specs`], the names each family's loader reads, so `random:` and
//! `synth-model` exercise the real loading code. `NAME@N` keeps the first N layers of a preset
//! (same widths), for timing comparisons on machines that cannot hold the whole model.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::weight_rng::WeightRng;
use super::{torch_dtype_name, BOS, EOS, PAD};
use crate::models::llama::family::{Family, NormKind};
use crate::models::llama::LlamaConfig;

/// Family presets (the Llama ones live in [`super::TEXT_PRESETS`]).
pub const FAMILY_PRESETS: &[&str] = &[
    "tiny-mistral",
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-phi3",
    "tiny-gpt2",
    "tiny-pythia",
    "llama-3.2-1b",
    "mistral-7b",
    "qwen2.5-0.5b",
    "qwen2.5-7b",
    "qwen3-0.6b",
    "qwen3-8b",
    "gemma-2-2b",
    "gemma-3-1b",
    "gemma-3-4b",
    "phi-3.5-mini",
    "gpt2",
    "pythia-70m",
];

fn specials(mut v: Value, dtype: DType) -> Value {
    v["bos_token_id"] = BOS.into();
    v["eos_token_id"] = EOS.into();
    v["pad_token_id"] = PAD.into();
    v["torch_dtype"] = torch_dtype_name(dtype).into();
    v["initializer_range"] = v.get("initializer_range").cloned().unwrap_or(json!(0.02));
    v
}

fn llama_like(arch: &str, model_type: &str, shape: Value) -> Value {
    let mut v = json!({"architectures": [arch], "model_type": model_type, "hidden_act": "silu",
        "rms_norm_eps": 1e-6, "attention_dropout": 0.0, "use_cache": true});
    for (k, x) in shape.as_object().into_iter().flatten() {
        v[k] = x.clone();
    }
    v
}

fn gemma(arch: &str, model_type: &str, shape: Value) -> Value {
    let mut v = llama_like(arch, model_type, shape);
    v["hidden_activation"] = "gelu_pytorch_tanh".into();
    v.as_object_mut().map(|o| o.remove("hidden_act"));
    v["tie_word_embeddings"] = true.into();
    v
}

/// Phi-3.5-mini's longrope factors have this shape (48 per set for head_dim 96); the values
/// here are smooth stand-ins (timing does not depend on them).
fn longrope_factors(half: usize, top: f64) -> Vec<f64> {
    (0..half)
        .map(|i| 1.0 + (top - 1.0) * i as f64 / (half.max(2) - 1) as f64)
        .collect()
}

/// The config.json of a family preset, without the `@N` suffix.
fn base_config(name: &str) -> Option<Value> {
    Some(match name {
        "tiny-mistral" => llama_like(
            "MistralForCausalLM",
            "mistral",
            json!({
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024,
            "max_position_embeddings": 1024, "sliding_window": 16, "rope_theta": 10000.0,
            "initializer_range": 0.2, "tie_word_embeddings": false}),
        ),
        "tiny-qwen2" => llama_like(
            "Qwen2ForCausalLM",
            "qwen2",
            json!({
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024,
            "max_position_embeddings": 1024, "rope_theta": 1000000.0, "initializer_range": 0.2,
            "tie_word_embeddings": true, "use_sliding_window": false, "sliding_window": null,
            "max_window_layers": 2}),
        ),
        "tiny-qwen3" => llama_like(
            "Qwen3ForCausalLM",
            "qwen3",
            json!({
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1024,
            "max_position_embeddings": 1024, "rope_theta": 1000000.0, "initializer_range": 0.2,
            "tie_word_embeddings": true, "attention_bias": false, "use_sliding_window": false,
            "sliding_window": null, "max_window_layers": 2}),
        ),
        "tiny-gemma2" => gemma(
            "Gemma2ForCausalLM",
            "gemma2",
            json!({
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1024,
            "max_position_embeddings": 1024, "sliding_window": 8, "query_pre_attn_scalar": 16,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
            "rope_theta": 10000.0, "initializer_range": 0.2}),
        ),
        "tiny-gemma3" => gemma(
            "Gemma3ForCausalLM",
            "gemma3_text",
            json!({
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 1024,
            "max_position_embeddings": 1024, "sliding_window": 8, "query_pre_attn_scalar": 16,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            "initializer_range": 0.2}),
        ),
        "tiny-phi3" => llama_like(
            "Phi3ForCausalLM",
            "phi3",
            json!({
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1024,
            "max_position_embeddings": 1024, "original_max_position_embeddings": 64,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "initializer_range": 0.2,
            "rope_scaling": {"type": "longrope", "short_factor": longrope_factors(8, 1.5),
                             "long_factor": longrope_factors(8, 4.0)},
            "tie_word_embeddings": false, "sliding_window": null}),
        ),
        "tiny-gpt2" => json!({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 1024, "vocab_size": 1024,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": 0.2,
            "scale_attn_weights": true, "tie_word_embeddings": true}),
        "tiny-pythia" => json!({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
            "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": 1024, "max_position_embeddings": 1024,
            "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": true,
            "hidden_act": "gelu", "layer_norm_eps": 1e-5, "initializer_range": 0.2,
            "attention_bias": true, "tie_word_embeddings": false}),
        "llama-3.2-1b" => llama_like(
            "LlamaForCausalLM",
            "llama",
            json!({
            "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
            "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "tie_word_embeddings": true, "attention_bias": false,
            "mlp_bias": false, "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}}),
        ),
        "mistral-7b" => llama_like(
            "MistralForCausalLM",
            "mistral",
            json!({
            "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "sliding_window": 4096, "tie_word_embeddings": false}),
        ),
        "qwen2.5-0.5b" => llama_like(
            "Qwen2ForCausalLM",
            "qwen2",
            json!({
            "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "tie_word_embeddings": true,
            "use_sliding_window": false, "sliding_window": 32768, "max_window_layers": 21}),
        ),
        "qwen2.5-7b" => llama_like(
            "Qwen2ForCausalLM",
            "qwen2",
            json!({
            "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "tie_word_embeddings": false,
            "use_sliding_window": false, "sliding_window": 131072, "max_window_layers": 28}),
        ),
        "qwen3-0.6b" => llama_like(
            "Qwen3ForCausalLM",
            "qwen3",
            json!({
            "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
            "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
            "vocab_size": 151936, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
            "tie_word_embeddings": true, "attention_bias": false, "use_sliding_window": false,
            "sliding_window": null, "max_window_layers": 28}),
        ),
        "qwen3-8b" => llama_like(
            "Qwen3ForCausalLM",
            "qwen3",
            json!({
            "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "vocab_size": 151936, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
            "tie_word_embeddings": false, "attention_bias": false, "use_sliding_window": false,
            "sliding_window": null, "max_window_layers": 36}),
        ),
        "gemma-2-2b" => gemma(
            "Gemma2ForCausalLM",
            "gemma2",
            json!({
            "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
            "vocab_size": 256000, "max_position_embeddings": 8192, "sliding_window": 4096,
            "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0, "rope_theta": 10000.0}),
        ),
        "gemma-3-1b" => gemma(
            "Gemma3ForCausalLM",
            "gemma3_text",
            json!({
            "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "vocab_size": 262144, "max_position_embeddings": 32768, "sliding_window": 512,
            "sliding_window_pattern": 6, "query_pre_attn_scalar": 256, "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0, "rope_scaling": null}),
        ),
        "gemma-3-4b" => gemma(
            "Gemma3ForCausalLM",
            "gemma3_text",
            json!({
            "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
            "vocab_size": 262208, "max_position_embeddings": 131072, "sliding_window": 1024,
            "sliding_window_pattern": 6, "query_pre_attn_scalar": 256, "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}}),
        ),
        "phi-3.5-mini" => llama_like(
            "Phi3ForCausalLM",
            "phi3",
            json!({
            "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
            "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": 262144,
            "rope_scaling": {"type": "longrope", "short_factor": longrope_factors(48, 1.1),
                             "long_factor": longrope_factors(48, 60.0)},
            "tie_word_embeddings": false}),
        ),
        "gpt2" => json!({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "scale_attn_weights": true, "tie_word_embeddings": true}),
        "pythia-70m" => json!({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
            "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 6,
            "num_attention_heads": 8, "vocab_size": 50304, "max_position_embeddings": 2048,
            "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": true,
            "hidden_act": "gelu", "layer_norm_eps": 1e-5, "attention_bias": true,
            "tie_word_embeddings": false}),
        _ => return None,
    })
}

/// The config.json of a family preset (`NAME` or `NAME@LAYERS`); `None` if unknown.
pub fn preset_config(name: &str, dtype: DType) -> Result<Option<Value>> {
    let (base, layers) = match name.split_once('@') {
        Some((b, n)) => {
            let n: usize = n.parse().ok().filter(|n| *n > 0).with_context(|| {
                format!("preset {name:?}: after @ give a layer count, e.g. {b}@4")
            })?;
            (b, Some(n))
        }
        None => (name, None),
    };
    let config = match base_config(base) {
        Some(c) => c,
        None => match super::llama_preset(base) {
            Some(shape) if layers.is_some() => shape.hf_config(dtype),
            _ => return Ok(None),
        },
    };
    let mut config = specials(config, dtype);
    if let Some(n) = layers {
        let key = if config.get("n_layer").is_some() {
            "n_layer"
        } else {
            "num_hidden_layers"
        };
        config[key] = n.into();
        if let Some(t) = config.get("layer_types").and_then(Value::as_array).cloned() {
            config["layer_types"] = Value::Array(t.into_iter().cycle().take(n).collect());
        }
    }
    Ok(Some(config))
}

/// How a weight starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Random,
    Ones,
    Zeros,
}

/// The safetensors names and shapes the loader reads for `c`'s family (tied heads omitted).
pub fn weight_specs(c: &LlamaConfig) -> Vec<(String, Vec<usize>, Init)> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv, hd) = (
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.head_dim,
    );
    let norm_init = if c.norm == NormKind::RmsPlusOne {
        Init::Zeros
    } else {
        Init::Ones
    };
    let mut w: Vec<(String, Vec<usize>, Init)> = Vec::new();
    let mut put = |n: String, s: &[usize], init: Init| w.push((n, s.to_vec(), init));
    let norm = |put: &mut dyn FnMut(String, &[usize], Init), name: String, d: usize| {
        put(format!("{name}.weight"), &[d], norm_init);
        if c.norm == NormKind::LayerNorm {
            put(format!("{name}.bias"), &[d], Init::Zeros);
        }
    };
    let lin = |put: &mut dyn FnMut(String, &[usize], Init),
               name: String,
               o: usize,
               inp: usize,
               bias: bool| {
        put(format!("{name}.weight"), &[o, inp], Init::Random);
        if bias {
            put(format!("{name}.bias"), &[o], Init::Random);
        }
    };
    match c.family {
        Family::Gpt2 => {
            put("transformer.wte.weight".into(), &[v, h], Init::Random);
            put(
                "transformer.wpe.weight".into(),
                &[c.max_position_embeddings, h],
                Init::Random,
            );
            for l in 0..c.num_layers {
                let p = format!("transformer.h.{l}");
                norm(&mut put, format!("{p}.ln_1"), h);
                norm(&mut put, format!("{p}.ln_2"), h);
                for (n, inp, out) in [
                    ("attn.c_attn", h, 3 * h),
                    ("attn.c_proj", h, h),
                    ("mlp.c_fc", h, i),
                    ("mlp.c_proj", i, h),
                ] {
                    put(format!("{p}.{n}.weight"), &[inp, out], Init::Random);
                    put(format!("{p}.{n}.bias"), &[out], Init::Random);
                }
            }
            norm(&mut put, "transformer.ln_f".into(), h);
        }
        Family::GptNeox => {
            put("gpt_neox.embed_in.weight".into(), &[v, h], Init::Random);
            for l in 0..c.num_layers {
                let p = format!("gpt_neox.layers.{l}");
                norm(&mut put, format!("{p}.input_layernorm"), h);
                norm(&mut put, format!("{p}.post_attention_layernorm"), h);
                lin(
                    &mut put,
                    format!("{p}.attention.query_key_value"),
                    3 * q,
                    h,
                    c.qkv_bias,
                );
                lin(&mut put, format!("{p}.attention.dense"), h, q, c.out_bias);
                lin(&mut put, format!("{p}.mlp.dense_h_to_4h"), i, h, true);
                lin(&mut put, format!("{p}.mlp.dense_4h_to_h"), h, i, true);
            }
            norm(&mut put, "gpt_neox.final_layer_norm".into(), h);
            if !c.tie_word_embeddings {
                put("embed_out.weight".into(), &[v, h], Init::Random);
            }
        }
        _ => {
            put("model.embed_tokens.weight".into(), &[v, h], Init::Random);
            for l in 0..c.num_layers {
                let p = format!("model.layers.{l}");
                norm(&mut put, format!("{p}.input_layernorm"), h);
                norm(&mut put, format!("{p}.post_attention_layernorm"), h);
                if c.sandwich_norms {
                    norm(&mut put, format!("{p}.pre_feedforward_layernorm"), h);
                    norm(&mut put, format!("{p}.post_feedforward_layernorm"), h);
                }
                let a = format!("{p}.self_attn");
                if c.family == Family::Phi3 {
                    lin(&mut put, format!("{a}.qkv_proj"), q + 2 * kv, h, false);
                    lin(&mut put, format!("{p}.mlp.gate_up_proj"), 2 * i, h, false);
                } else {
                    lin(&mut put, format!("{a}.q_proj"), q, h, c.qkv_bias);
                    lin(&mut put, format!("{a}.k_proj"), kv, h, c.qkv_bias);
                    lin(&mut put, format!("{a}.v_proj"), kv, h, c.qkv_bias);
                    lin(&mut put, format!("{p}.mlp.gate_proj"), i, h, c.mlp_bias);
                    lin(&mut put, format!("{p}.mlp.up_proj"), i, h, c.mlp_bias);
                }
                lin(&mut put, format!("{a}.o_proj"), h, q, c.out_bias);
                lin(&mut put, format!("{p}.mlp.down_proj"), h, i, c.mlp_bias);
                if c.qk_norm {
                    norm(&mut put, format!("{a}.q_norm"), hd);
                    norm(&mut put, format!("{a}.k_norm"), hd);
                }
            }
            norm(&mut put, "model.norm".into(), h);
            if !c.tie_word_embeddings {
                put("lm_head.weight".into(), &[v, h], Init::Random);
            }
        }
    }
    w
}

/// Seeded random weights for `c` (standard deviation `std`), under the names of
/// [`weight_specs`].
pub fn random_weights(
    c: &LlamaConfig,
    std: f64,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut rng = WeightRng::new(seed, device)?;
    let mut out = HashMap::new();
    for (name, shape, init) in weight_specs(c) {
        let t = match init {
            Init::Random => rng.uniform(&shape, std, dtype, device)?,
            Init::Ones => Tensor::ones(shape.as_slice(), dtype, device)?,
            Init::Zeros => Tensor::zeros(shape.as_slice(), dtype, device)?,
        };
        out.insert(name, t);
    }
    if out.is_empty() {
        bail!("no weights for this config");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarBuilder;

    /// Every preset parses, and the random weights of its tiny form load through the
    /// family's real loader and run a forward step.
    #[test]
    fn presets_parse_and_tiny_ones_load_and_run() {
        for name in FAMILY_PRESETS {
            let cfg = preset_config(name, DType::F32).unwrap().unwrap();
            let parsed =
                LlamaConfig::from_hf_json(&cfg).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            if !name.starts_with("tiny-") {
                continue;
            }
            let w = random_weights(&parsed, 0.2, 1, DType::F32, &Device::Cpu).unwrap();
            let vb = VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
            let m = crate::models::llama::LlamaModel::from_hf(parsed, vb, "model", "lm_head")
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let mut cache = m.new_cache(32).unwrap();
            let logits = m
                .forward_embeds(&m.embed_tokens(&[1, 5, 9]).unwrap(), &mut cache)
                .unwrap();
            assert_eq!(logits.dims(), &[1024], "{name}");
        }
    }

    #[test]
    fn layer_suffix_keeps_the_widths() {
        let c = preset_config("qwen2.5-7b@3", DType::F32).unwrap().unwrap();
        let p = LlamaConfig::from_hf_json(&c).unwrap();
        assert_eq!((p.num_layers, p.hidden_size), (3, 3584));
        let g = preset_config("gemma-3-4b@7", DType::F32).unwrap().unwrap();
        let p = LlamaConfig::from_hf_json(&g).unwrap();
        assert_eq!(
            p.sliding_layers,
            vec![true, true, true, true, true, false, true]
        );
        assert!(preset_config("qwen2.5-7b@x", DType::F32).is_err());
        assert!(preset_config("perf-181m@2", DType::F32).unwrap().is_some());
        assert!(preset_config("nope", DType::F32).unwrap().is_none());
    }
}
