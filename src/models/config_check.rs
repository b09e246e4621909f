//! `config.json` values that change the model, checked rather than defaulted: a key that is
//! present must have the type its meaning needs, the keys that fix the model's shape must be
//! there (a top-level config of a text model names its own shape; only a LLaVA `text_config`
//! may leave keys at transformers' defaults, as llava-hf releases do), a shape of zero is
//! refused, weights the config does not account for are refused, and so is a vocabulary
//! smaller than the tokenizer's. Every error names the key and runs before warm-up.

use anyhow::{bail, Result};
use serde_json::Value;

/// Keys that hold a count or a size (non-negative integers), under any family's name.
const INTEGER_KEYS: &[&str] = &[
    "hidden_size",
    "n_embd",
    "intermediate_size",
    "n_inner",
    "num_hidden_layers",
    "n_layer",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "n_positions",
    "original_max_position_embeddings",
    "sliding_window",
    "max_window_layers",
    "sliding_window_pattern",
];

/// Keys that hold a real number.
const NUMBER_KEYS: &[&str] = &[
    "rope_theta",
    "rotary_emb_base",
    "partial_rotary_factor",
    "rotary_pct",
    "rms_norm_eps",
    "layer_norm_eps",
    "layer_norm_epsilon",
    "rope_local_base_freq",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "beta_fast",
    "beta_slow",
    "attention_factor",
    "mscale",
    "mscale_all_dim",
];

/// Keys that hold a flag.
const BOOL_KEYS: &[&str] = &[
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "use_sliding_window",
    "scale_attn_weights",
    "use_parallel_residual",
];

/// The shape keys a top-level text config must give (each as one of its names; GPT-2's
/// `n_inner` may be null, meaning 4 × `n_embd`, so only gated families need `intermediate_size`).
const REQUIRED: &[&[&str]] = &[
    &["hidden_size", "n_embd"],
    &["num_hidden_layers", "n_layer"],
    &["num_attention_heads", "n_head"],
    &["vocab_size"],
];

fn type_error(path: &str, want: &str, got: &Value) -> anyhow::Error {
    anyhow::anyhow!("config.json: `{path}` must be {want}, not {got}")
}

/// Every known key present (and not null) has the type its meaning needs; rotary parameter
/// objects (`rope_scaling`, `rope_parameters`, nested by layer type or not) are checked too.
pub fn check_types(v: &Value) -> Result<()> {
    check_object(v, "")?;
    for outer in ["rope_scaling", "rope_parameters"] {
        let Some(obj) = v.get(outer).filter(|x| x.is_object()) else {
            continue;
        };
        check_object(obj, &format!("{outer}."))?;
        for (k, inner) in obj.as_object().into_iter().flatten() {
            if inner.is_object() {
                check_object(inner, &format!("{outer}.{k}."))?;
            }
        }
    }
    Ok(())
}

fn check_object(v: &Value, prefix: &str) -> Result<()> {
    let Some(obj) = v.as_object() else {
        return Ok(());
    };
    for (k, x) in obj {
        if x.is_null() {
            continue;
        }
        let path = format!("{prefix}{k}");
        if INTEGER_KEYS.contains(&k.as_str()) && x.as_u64().is_none() {
            // 4096.0 is a count written as a float by some exporters: accepted when whole.
            let whole = x.as_f64().is_some_and(|f| f >= 0.0 && f.fract() == 0.0);
            if !whole {
                return Err(type_error(&path, "a non-negative integer", x));
            }
        }
        if NUMBER_KEYS.contains(&k.as_str()) && !x.is_number() {
            return Err(type_error(&path, "a number", x));
        }
        if BOOL_KEYS.contains(&k.as_str()) && !x.is_boolean() {
            return Err(type_error(&path, "true or false", x));
        }
    }
    Ok(())
}

/// The keys that fix the shape are present in a top-level config (not left to defaults).
pub fn check_required(v: &Value) -> Result<()> {
    for names in REQUIRED {
        if !names
            .iter()
            .any(|k| v.get(*k).is_some_and(|x| !x.is_null()))
        {
            bail!(
                "config.json: missing `{}`, which fixes the model's shape; add it (it is in the checkpoint's original config.json)",
                names[0]
            );
        }
    }
    if v.get("n_embd").is_none() && v.get("intermediate_size").is_none_or(Value::is_null) {
        bail!("config.json: missing `intermediate_size`, which fixes the model's shape; add it (it is in the checkpoint's original config.json)");
    }
    Ok(())
}

/// A shape that cannot be a model: zero layers, zero width, zero heads (a zero vocabulary is
/// smaller than any tokenizer's: [`check_vocab`]).
pub fn check_shape(hidden_size: usize, num_layers: usize, num_heads: usize) -> Result<()> {
    for (key, value) in [
        ("num_hidden_layers", num_layers),
        ("hidden_size", hidden_size),
        ("num_attention_heads", num_heads),
    ] {
        if value == 0 {
            bail!("config.json: `{key}` is 0; a model needs at least one");
        }
    }
    Ok(())
}

/// The layer number in a decoder weight's name (`model.layers.7.mlp...`, GPT-2's `h.7.`,
/// GGUF's `blk.7.`); vision-tower weights (`vision_tower`, `vision_model`) are not the
/// decoder's and give none.
fn layer_of(name: &str) -> Option<usize> {
    if name.contains("vision") {
        return None;
    }
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if matches!(p, "layers" | "h" | "blk") {
            if let Some(n) = parts.clone().next().and_then(|n| n.parse().ok()) {
                return Some(n);
            }
        }
    }
    None
}

/// Weights of decoder layers past `num_layers` mean the config describes a different model
/// than the checkpoint holds (a truncated copy of config.json, a wrong file): refused.
pub fn check_layer_weights<'a>(
    names: impl IntoIterator<Item = &'a str>,
    num_layers: usize,
    layers_key: &str,
) -> Result<()> {
    if let Some((name, n)) = names
        .into_iter()
        .filter_map(|name| layer_of(name).map(|n| (name, n)))
        .max_by_key(|(_, n)| *n)
    {
        if n >= num_layers {
            bail!(
                "the checkpoint holds weights for layer {n} ({name}) but `{layers_key}` is {num_layers}: the config and the weights describe different models"
            );
        }
    }
    Ok(())
}

/// The tokenizer must not produce ids the model has no embedding for.
pub fn check_vocab(model_vocab: usize, tokenizer: &tokenizers::Tokenizer) -> Result<()> {
    let tokenizer_vocab = tokenizer.get_vocab_size(true);
    if tokenizer_vocab > model_vocab {
        bail!(
            "the tokenizer has {tokenizer_vocab} tokens but the model's vocabulary (`vocab_size`) is {model_vocab}: ids past {} have no embedding; use the model's own tokenizer",
            model_vocab.saturating_sub(1)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wrong_types_name_the_key() {
        let e = check_types(&json!({"rope_theta": "10000"})).unwrap_err();
        assert!(
            e.to_string().contains("`rope_theta` must be a number"),
            "{e}"
        );
        let e = check_types(&json!({"hidden_size": 64.5})).unwrap_err();
        assert!(e.to_string().contains("`hidden_size`"), "{e}");
        let e = check_types(&json!({"rope_scaling": {"factor": "2"}})).unwrap_err();
        assert!(e.to_string().contains("`rope_scaling.factor`"), "{e}");
        let e = check_types(&json!({"rope_parameters": {"full_attention": {"rope_theta": []}}}))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("`rope_parameters.full_attention.rope_theta`"),
            "{e}"
        );
        let e = check_types(&json!({"tie_word_embeddings": "yes"})).unwrap_err();
        assert!(e.to_string().contains("`tie_word_embeddings`"), "{e}");
        check_types(
            &json!({"hidden_size": 64, "max_position_embeddings": 4096.0,
            "rope_theta": 1e6, "sliding_window": null, "torch_dtype": "float32"}),
        )
        .unwrap();
    }

    #[test]
    fn required_and_zero_shapes_are_refused() {
        let e = check_required(&json!({"num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": 9, "intermediate_size": 8}))
        .unwrap_err();
        assert!(e.to_string().contains("missing `hidden_size`"), "{e}");
        check_required(&json!({"n_embd": 8, "n_layer": 2, "n_head": 2, "vocab_size": 9})).unwrap();
        let e = check_shape(64, 0, 4).unwrap_err();
        assert!(e.to_string().contains("`num_hidden_layers` is 0"), "{e}");
    }

    #[test]
    fn weights_beyond_the_configured_layers_are_refused() {
        let names = [
            "model.embed_tokens.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.2.mlp.up_proj.weight",
            "vision_tower.vision_model.encoder.layers.23.x",
        ];
        let e = check_layer_weights(names, 2, "num_hidden_layers").unwrap_err();
        assert!(
            e.to_string()
                .contains("layer 2 (model.layers.2.mlp.up_proj.weight)"),
            "{e}"
        );
        check_layer_weights(names, 3, "num_hidden_layers").unwrap();
        check_layer_weights(
            ["blk.1.attn_q.weight", "token_embd.weight"],
            2,
            "block_count",
        )
        .unwrap();
        assert!(check_layer_weights(["transformer.h.5.attn.c_attn.weight"], 2, "n_layer").is_err());
    }

    #[test]
    fn a_vocabulary_smaller_than_the_tokenizer_is_refused() {
        let tok = tokenizers::Tokenizer::from_bytes(
            crate::synth::tokenizer_json(300, &[]).unwrap().as_bytes(),
        )
        .unwrap();
        let e = check_vocab(100, &tok).unwrap_err();
        assert!(e.to_string().contains("`vocab_size`) is 100"), "{e}");
        check_vocab(300, &tok).unwrap();
    }
}
