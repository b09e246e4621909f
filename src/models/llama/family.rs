//! The text model families the decoder in [`super`] runs, and how each family's
//! `config.json` maps onto [`LlamaConfig`].
//!
//! Both layouts transformers writes are read: 4.x (top-level `rope_theta`, `rope_scaling`,
//! `partial_rotary_factor`, `rope_local_base_freq`...) and 5.x (`rope_parameters`, flat or
//! nested by layer type as Gemma 3 writes it). A key that changes the computation and is not
//! implemented is an error that names it.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use super::{ids_of, LlamaConfig};
use crate::models::rope::{parse_scaling, RopeScaling};

/// A text decoder family: fixes the weight names and the block's structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Phi3,
    Gpt2,
    GptNeox,
}

/// The normalisation layers of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `x / rms(x) · w`.
    Rms,
    /// Gemma's `x / rms(x) · (1 + w)`.
    RmsPlusOne,
    /// `(x − mean) / std · w + b`.
    LayerNorm,
}

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    /// GELU with erf.
    Gelu,
}

/// `(model_type, architectures)` of each family, for detection and messages.
pub const FAMILIES: &[(&str, Family, &[&str])] = &[
    ("llama", Family::Llama, &["LlamaForCausalLM"]),
    ("mistral", Family::Mistral, &["MistralForCausalLM"]),
    ("qwen2", Family::Qwen2, &["Qwen2ForCausalLM"]),
    ("qwen3", Family::Qwen3, &["Qwen3ForCausalLM"]),
    ("gemma2", Family::Gemma2, &["Gemma2ForCausalLM"]),
    ("gemma3_text", Family::Gemma3, &["Gemma3ForCausalLM"]),
    ("phi3", Family::Phi3, &["Phi3ForCausalLM"]),
    ("gpt2", Family::Gpt2, &["GPT2LMHeadModel"]),
    ("gpt_neox", Family::GptNeox, &["GPTNeoXForCausalLM"]),
];

impl Family {
    /// From `architectures` (first match) or `model_type`.
    pub fn detect(config: &Value) -> Option<Family> {
        let archs: Vec<&str> = config
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (_, family, names) in FAMILIES {
            if archs.iter().any(|a| names.contains(a)) {
                return Some(*family);
            }
        }
        let model_type = config.get("model_type").and_then(Value::as_str)?;
        FAMILIES
            .iter()
            .find(|(t, _, _)| *t == model_type)
            .map(|(_, f, _)| *f)
    }

    /// The name reports and messages use (the `model_type`).
    pub fn name(self) -> &'static str {
        FAMILIES
            .iter()
            .find(|(_, f, _)| *f == self)
            .map_or("llama", |(t, _, _)| t)
    }

    /// Whether the MLP is gated (`down(act(gate) · up)`) rather than `fc2(act(fc1))`.
    pub fn gated_mlp(self) -> bool {
        !matches!(self, Family::Gpt2 | Family::GptNeox)
    }

    /// llama.cpp's `general.architecture` for this family.
    pub fn gguf_arch(self) -> &'static str {
        match self {
            Family::Llama | Family::Mistral => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3",
            Family::Phi3 => "phi3",
            Family::Gpt2 => "gpt2",
            Family::GptNeox => "gptneox",
        }
    }

    pub fn from_gguf_arch(arch: &str) -> Option<Family> {
        Some(match arch {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "gemma2" => Family::Gemma2,
            "gemma3" => Family::Gemma3,
            "phi3" => Family::Phi3,
            "gpt2" => Family::Gpt2,
            "gptneox" => Family::GptNeox,
            _ => return None,
        })
    }
}

/// transformers' defaults for Llama/Mistral/Qwen2 configs that omit keys (llava-hf
/// `text_config`s list only what differs from `LlamaConfig()` / `MistralConfig()` /
/// `Qwen2Config()`).
fn model_type_defaults(model_type: Option<&str>) -> Option<Value> {
    let mut d = serde_json::json!({
        "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "bos_token_id": 1, "eos_token_id": 2,
    });
    match model_type? {
        "llama" => {}
        "mistral" => {
            d["intermediate_size"] = 14336.into();
            d["num_key_value_heads"] = 8.into();
            d["max_position_embeddings"] = (4096 * 32).into();
            d["sliding_window"] = 4096.into();
        }
        // LLaVA-OneVision's `text_config` (`Qwen2Config()`; its window is off by default).
        "qwen2" => {
            d["vocab_size"] = 151_936.into();
            d["intermediate_size"] = 22016.into();
            d["num_key_value_heads"] = 32.into();
            d["max_position_embeddings"] = 32768.into();
            d["bos_token_id"] = Value::Null;
            d["eos_token_id"] = Value::Null;
        }
        _ => return None,
    }
    Some(d)
}

fn get_usize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(Value::as_u64).map(|x| x as usize)
}

fn get_f64(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn get_bool(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(Value::as_bool)
}

/// The first of `keys` present (GPT-2 names its shape `n_embd`, `n_layer`...).
fn first_usize(v: &Value, keys: &[&str]) -> Option<usize> {
    keys.iter().find_map(|k| get_usize(v, k))
}

fn activation(v: &Value, keys: &[&str], default: &str) -> Result<Activation> {
    let (key, name) = keys
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str).map(|s| (*k, s)))
        .unwrap_or((keys[0], default));
    Ok(match name {
        "silu" | "swish" => Activation::Silu,
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" | "gelu_tanh" => Activation::GeluTanh,
        "gelu" => Activation::Gelu,
        other => bail!("config.json: `{key}` = {other:?} is not supported (supported: silu, gelu, gelu_new, gelu_pytorch_tanh)"),
    })
}

/// Parses a Hugging Face config of any supported family (or a LLaVA `text_config`).
pub fn parse_hf_config(v: &Value) -> Result<LlamaConfig> {
    crate::models::config_check::check_types(v)?;
    let model_type = v.get("model_type").and_then(Value::as_str);
    let family =
        match (Family::detect(v), model_type) {
            (Some(f), _) => f,
            // LLaVA `text_config`s of older releases name no type: a Llama.
            (None, None) => Family::Llama,
            (None, Some(other)) => {
                bail!(
            "config.json: model_type {other:?} is not a supported text family (supported: {})",
            FAMILIES.iter().map(|(t, _, _)| *t).collect::<Vec<_>>().join(", ")
        )
            }
        };
    let merged;
    let v = match model_type_defaults(model_type) {
        Some(Value::Object(mut d)) => {
            if let Some(obj) = v.as_object() {
                for (k, x) in obj {
                    // An explicit `"sliding_window": null` means no window (Mistral's
                    // default is 4096); other nulls keep transformers' defaults.
                    if !x.is_null() || !d.contains_key(k) || k == "sliding_window" {
                        d.insert(k.clone(), x.clone());
                    }
                }
            }
            merged = Value::Object(d);
            &merged
        }
        _ => v,
    };
    let need = |keys: &[&str]| {
        first_usize(v, keys).ok_or_else(|| anyhow!("config.json: missing or invalid `{}`", keys[0]))
    };
    let hidden_size = need(&["hidden_size", "n_embd"])?;
    let num_heads = need(&["num_attention_heads", "n_head"])?;
    let num_layers = need(&["num_hidden_layers", "n_layer"])?;
    crate::models::config_check::check_shape(hidden_size, num_layers, num_heads)?;
    let max_position_embeddings = first_usize(v, &["max_position_embeddings", "n_positions"])
        .unwrap_or(match family {
            Family::Gpt2 => 1024,
            _ => 4096,
        });
    let intermediate_size = match family {
        Family::Gpt2 => get_usize(v, "n_inner").unwrap_or(4 * hidden_size),
        _ => need(&["intermediate_size"])?,
    };
    let head_dim = get_usize(v, "head_dim").unwrap_or(hidden_size / num_heads);
    let num_kv_heads = get_usize(v, "num_key_value_heads").unwrap_or(num_heads);
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        bail!("config.json: num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}");
    }

    // Rotary parameters: 5.x `rope_parameters` (flat, or nested by layer type), else 4.x
    // `rope_scaling` with top-level `rope_theta`.
    let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
    let nested = |kind: &str| {
        rope_params
            .and_then(|p| p.get(kind))
            .filter(|x| x.is_object())
    };
    let nested_layout = nested("full_attention").is_some() || nested("sliding_attention").is_some();
    let global_params = if nested_layout {
        nested("full_attention")
    } else {
        v.get("rope_scaling")
            .filter(|s| s.is_object())
            .or(rope_params)
    };
    let default_theta = if family == Family::Gemma3 {
        1_000_000.0
    } else {
        10_000.0
    };
    let rope_theta = global_params
        .and_then(|p| get_f64(p, "rope_theta"))
        .or_else(|| rope_params.and_then(|p| get_f64(p, "rope_theta")))
        .or_else(|| get_f64(v, "rope_theta"))
        .or_else(|| get_f64(v, "rotary_emb_base"))
        .unwrap_or(default_theta);
    let partial = global_params
        .and_then(|p| get_f64(p, "partial_rotary_factor"))
        .or_else(|| get_f64(v, "partial_rotary_factor"))
        .or_else(|| get_f64(v, "rotary_pct"))
        .unwrap_or(if family == Family::GptNeox { 0.25 } else { 1.0 });
    let rotary_dim = (head_dim as f64 * partial) as usize;
    let top_original = get_f64(v, "original_max_position_embeddings");
    let rope_scaling = match global_params {
        // Phi-3 configs of transformers 4.x call longrope "su" or "yarn".
        Some(p) if family == Family::Phi3 => {
            let mut p = p.clone();
            if matches!(
                p.get("rope_type")
                    .or_else(|| p.get("type"))
                    .and_then(Value::as_str),
                Some("su" | "yarn")
            ) {
                p["rope_type"] = "longrope".into();
            }
            parse_scaling(&p, max_position_embeddings, top_original)?
        }
        Some(p) => parse_scaling(p, max_position_embeddings, top_original)?,
        None => None,
    };
    // Dynamic scaling exists to run past `max_position_embeddings`: the context is `factor`
    // times longer.
    let max_position_embeddings = match &rope_scaling {
        Some(RopeScaling::Dynamic { factor, .. }) => {
            (max_position_embeddings as f64 * factor.max(1.0)) as usize
        }
        _ => max_position_embeddings,
    };
    let local_rope = if family == Family::Gemma3 {
        let local = nested("sliding_attention");
        let theta = local
            .and_then(|p| get_f64(p, "rope_theta"))
            .or_else(|| get_f64(v, "rope_local_base_freq"))
            .unwrap_or(10_000.0);
        let scaling = match local {
            Some(p) => parse_scaling(p, max_position_embeddings, None)?,
            None => None,
        };
        Some((theta, scaling))
    } else {
        None
    };
    if rope_params
        .and_then(|p| p.get("mrope_section"))
        .or_else(|| v.get("rope_scaling").and_then(|s| s.get("mrope_section")))
        .is_some()
    {
        bail!("config.json: `mrope_section` (multimodal rotary) is not supported for a text model");
    }

    // Attention windows per layer.
    let layer_types: Option<Vec<String>> =
        v.get("layer_types").and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        });
    if let Some(t) = &layer_types {
        if t.len() != num_layers {
            bail!(
                "config.json: `layer_types` lists {} layers, num_hidden_layers is {num_layers}",
                t.len()
            );
        }
        if let Some(other) = t
            .iter()
            .find(|x| *x != "full_attention" && *x != "sliding_attention")
        {
            bail!("config.json: `layer_types` entry {other:?} is not supported (supported: full_attention, sliding_attention)");
        }
    }
    let window = get_usize(v, "sliding_window");
    let (sliding_window, sliding_layers) = match family {
        Family::Mistral | Family::Phi3 => (window, vec![window.is_some(); num_layers]),
        Family::Qwen2 | Family::Qwen3 => {
            let window = window.filter(|_| get_bool(v, "use_sliding_window").unwrap_or(false));
            let layers = match &layer_types {
                Some(t) => t.iter().map(|x| x == "sliding_attention").collect(),
                None => {
                    let from = get_usize(v, "max_window_layers").unwrap_or(28);
                    (0..num_layers)
                        .map(|i| window.is_some() && i >= from)
                        .collect()
                }
            };
            (window, layers)
        }
        Family::Gemma2 | Family::Gemma3 => {
            let pattern = if family == Family::Gemma2 {
                2
            } else {
                get_usize(v, "sliding_window_pattern").unwrap_or(6)
            };
            let layers = match &layer_types {
                Some(t) => t.iter().map(|x| x == "sliding_attention").collect(),
                None => (0..num_layers).map(|i| (i + 1) % pattern != 0).collect(),
            };
            (Some(window.unwrap_or(4096)), layers)
        }
        Family::Llama | Family::Gpt2 | Family::GptNeox => (None, vec![false; num_layers]),
    };
    let sliding_window = if sliding_layers.iter().any(|s| *s) {
        sliding_window
    } else {
        None
    };

    // Per-family structure.
    let attention_bias = get_bool(v, "attention_bias");
    let (qkv_bias, out_bias) = match family {
        Family::Qwen2 => (true, false),
        Family::Gpt2 => (true, true),
        Family::GptNeox => {
            let b = attention_bias.unwrap_or(true);
            (b, b)
        }
        Family::Phi3 => (false, false),
        _ => {
            let b = attention_bias.unwrap_or(false);
            (b, b)
        }
    };
    let mlp_bias = match family {
        Family::Llama => get_bool(v, "mlp_bias").unwrap_or(false),
        Family::Gpt2 | Family::GptNeox => true,
        _ => false,
    };
    let (norm, eps_keys, default_eps): (NormKind, &[&str], f64) = match family {
        Family::Gemma2 | Family::Gemma3 => (NormKind::RmsPlusOne, &["rms_norm_eps"], 1e-6),
        Family::Gpt2 => (NormKind::LayerNorm, &["layer_norm_epsilon"], 1e-5),
        Family::GptNeox => (NormKind::LayerNorm, &["layer_norm_eps"], 1e-5),
        Family::Phi3 => (NormKind::Rms, &["rms_norm_eps"], 1e-5),
        _ => (NormKind::Rms, &["rms_norm_eps"], 1e-6),
    };
    let act = match family {
        Family::Gemma2 | Family::Gemma3 => {
            activation(v, &["hidden_activation", "hidden_act"], "gelu_pytorch_tanh")?
        }
        Family::Gpt2 => activation(v, &["activation_function"], "gelu_new")?,
        Family::GptNeox => activation(v, &["hidden_act"], "gelu")?,
        _ => activation(v, &["hidden_act"], "silu")?,
    };
    let gemma = matches!(family, Family::Gemma2 | Family::Gemma3);
    let attn_scale = if gemma {
        1.0 / get_f64(v, "query_pre_attn_scalar").unwrap_or(256.0).sqrt()
    } else if family == Family::Gpt2 && get_bool(v, "scale_attn_weights") == Some(false) {
        1.0
    } else {
        1.0 / (head_dim as f64).sqrt()
    };
    let (attn_softcap, final_softcap) = match family {
        Family::Gemma2 => (
            v.get("attn_logit_softcapping")
                .map_or(Some(50.0), Value::as_f64),
            v.get("final_logit_softcapping")
                .map_or(Some(30.0), Value::as_f64),
        ),
        Family::Gemma3 => (
            get_f64(v, "attn_logit_softcapping"),
            get_f64(v, "final_logit_softcapping"),
        ),
        _ => (None, None),
    };
    // Keys that would change the computation in ways this decoder does not implement.
    let unsupported: &[(&str, bool)] = &[
        (
            "scale_attn_by_inverse_layer_idx",
            family == Family::Gpt2 && get_bool(v, "scale_attn_by_inverse_layer_idx") == Some(true),
        ),
        (
            "use_bidirectional_attention",
            gemma && get_bool(v, "use_bidirectional_attention") == Some(true),
        ),
        (
            "attn_logit_softcapping",
            !gemma && get_f64(v, "attn_logit_softcapping").is_some(),
        ),
        (
            "final_logit_softcapping",
            !gemma && get_f64(v, "final_logit_softcapping").is_some(),
        ),
        (
            "attention_chunk_size",
            get_usize(v, "attention_chunk_size").is_some(),
        ),
    ];
    if let Some((key, _)) = unsupported.iter().find(|(_, set)| *set) {
        bail!(
            "config.json: `{key}` changes the computation and is not supported for {}",
            family.name()
        );
    }
    let parallel_residual =
        family == Family::GptNeox && get_bool(v, "use_parallel_residual").unwrap_or(true);
    let tie_default = matches!(family, Family::Gemma2 | Family::Gemma3 | Family::Gpt2);
    let cfg = LlamaConfig {
        family,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size: need(&["vocab_size"])?,
        max_position_embeddings,
        rms_norm_eps: eps_keys
            .iter()
            .find_map(|k| get_f64(v, k))
            .unwrap_or(default_eps),
        rope_theta,
        rope_scaling,
        rotary_dim: if family == Family::Gpt2 {
            0
        } else {
            rotary_dim
        },
        local_rope,
        tie_word_embeddings: get_bool(v, "tie_word_embeddings").unwrap_or(tie_default),
        bos_token_id: ids_of(v.get("bos_token_id")).first().copied(),
        eos_token_ids: ids_of(v.get("eos_token_id")),
        qkv_bias,
        out_bias,
        mlp_bias,
        qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
        norm,
        activation: act,
        sandwich_norms: gemma,
        embed_scale: gemma.then(|| (hidden_size as f64).sqrt()),
        attn_scale,
        attn_softcap,
        final_softcap,
        sliding_window,
        sliding_layers,
        parallel_residual,
        learned_positions: family == Family::Gpt2,
    };
    cfg.validate()?;
    Ok(cfg)
}

impl LlamaConfig {
    /// Checks shapes the decoder relies on.
    pub fn validate(&self) -> Result<()> {
        if self.family != Family::Gpt2 {
            for local in [false, true] {
                self.rope_spec(local)
                    .validate()
                    .map_err(|e| anyhow!("config.json: {e}"))?;
            }
        }
        if self.sliding_layers.len() != self.num_layers {
            bail!("internal: one sliding-window flag per layer expected");
        }
        Ok(())
    }

    /// The rotary parameters of global (`local = false`) or sliding-window layers.
    pub fn rope_spec(&self, local: bool) -> crate::models::rope::RopeSpec {
        let (theta, scaling): (f64, Option<RopeScaling>) = match (&self.local_rope, local) {
            (Some((t, s)), true) => (*t, s.clone()),
            _ => (self.rope_theta, self.rope_scaling.clone()),
        };
        crate::models::rope::RopeSpec {
            theta,
            scaling,
            rotary_dim: self.rotary_dim,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base(extra: Value) -> Value {
        let mut v = json!({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
            "max_position_embeddings": 256});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn both_rope_layouts_give_the_same_config() {
        let old = base(json!({"model_type": "llama", "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0}}));
        let new = base(json!({"model_type": "llama",
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}}));
        let (a, b) = (
            parse_hf_config(&old).unwrap(),
            parse_hf_config(&new).unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(a.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
    }

    #[test]
    fn gemma3_nested_rope_parameters_and_layer_pattern() {
        let v = base(json!({"model_type": "gemma3_text", "sliding_window": 8,
            "sliding_window_pattern": 2,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}));
        let c = parse_hf_config(&v).unwrap();
        assert_eq!(c.sliding_layers, vec![true, false, true, false]);
        assert_eq!(c.rope_spec(false).theta, 1e6);
        assert_eq!(c.rope_spec(true).theta, 1e4);
        assert_eq!(c.rope_spec(true).scaling, None);
        assert!(c.tie_word_embeddings && c.qk_norm && c.sandwich_norms);
        assert_eq!(c.attn_scale, 1.0 / 16.0);
        // 4.x layout of the same.
        let old = base(json!({"model_type": "gemma3_text", "sliding_window": 8,
            "sliding_window_pattern": 2, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}}));
        assert_eq!(parse_hf_config(&old).unwrap(), c);
    }

    #[test]
    fn mistral_window_defaults_and_null() {
        let omitted = base(json!({"model_type": "mistral"}));
        assert_eq!(
            parse_hf_config(&omitted).unwrap().sliding_window,
            Some(4096)
        );
        let null = base(json!({"model_type": "mistral", "sliding_window": null}));
        let c = parse_hf_config(&null).unwrap();
        assert_eq!(c.sliding_window, None);
        assert!(c.sliding_layers.iter().all(|s| !s));
    }

    #[test]
    fn qwen2_window_only_when_enabled() {
        let off =
            base(json!({"model_type": "qwen2", "sliding_window": 4, "use_sliding_window": false}));
        let c = parse_hf_config(&off).unwrap();
        assert_eq!(c.sliding_window, None);
        assert!(c.qkv_bias && !c.out_bias);
        let on = base(json!({"model_type": "qwen2", "sliding_window": 4,
            "use_sliding_window": true, "max_window_layers": 2}));
        let c = parse_hf_config(&on).unwrap();
        assert_eq!(c.sliding_layers, vec![false, false, true, true]);
        assert_eq!(c.sliding_window, Some(4));
    }

    #[test]
    fn unimplemented_keys_are_named() {
        let v = base(json!({"model_type": "llama", "hidden_act": "relu2"}));
        let e = parse_hf_config(&v).unwrap_err().to_string();
        assert!(e.contains("hidden_act") && e.contains("relu2"), "{e}");
        let v = base(json!({"model_type": "llama", "final_logit_softcapping": 30.0}));
        let e = parse_hf_config(&v).unwrap_err().to_string();
        assert!(e.contains("final_logit_softcapping"), "{e}");
        let v = base(
            json!({"model_type": "llama", "rope_scaling": {"rope_type": "su", "factor": 2.0}}),
        );
        let e = parse_hf_config(&v).unwrap_err().to_string();
        assert!(e.contains("\"su\""), "{e}");
        let v = base(json!({"model_type": "falcon"}));
        let e = parse_hf_config(&v).unwrap_err().to_string();
        assert!(e.contains("falcon") && e.contains("qwen2"), "{e}");
    }

    #[test]
    fn gpt_neox_partial_rotary_and_gpt2_names() {
        let v =
            base(json!({"model_type": "gpt_neox", "rotary_pct": 0.25, "rotary_emb_base": 10000}));
        let c = parse_hf_config(&v).unwrap();
        assert_eq!(c.rotary_dim, 4);
        assert!(c.parallel_residual && c.qkv_bias && c.mlp_bias);
        let g = json!({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 32,
            "n_layer": 2, "n_head": 4, "n_positions": 64, "vocab_size": 50});
        let c = parse_hf_config(&g).unwrap();
        assert_eq!(
            (c.hidden_size, c.intermediate_size, c.num_layers),
            (32, 128, 2)
        );
        assert!(c.learned_positions && c.tie_word_embeddings);
    }
}
