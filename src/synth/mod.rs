//! Weightless benchmarking: real architectures with seeded random weights.
//!
//! Timing does not depend on weight values, so a random model of the right shape is a real
//! benchmark. `random:<preset>` builds one in memory; [`presets::write_model`] writes it in the Hugging
//! Face layout (config.json, generation_config.json, safetensors, tokenizer.json,
//! tokenizer_config.json, special_tokens_map.json) so the real loading code is what runs.
//!
//! The tokenizer is a byte-level BPE over ASCII built by rule, not trained: the 128 ASCII
//! bytes, then merges `space+letter`, `letter+letter`, `space+letter+letter`, three-letter
//! groups... until the vocabulary is full. Every id decodes to valid UTF-8 by itself, so a
//! random model's output never produces partial characters.
//!
//! Which presets exist is said in one place, [`presets`]. Uses models (configurations and the
//! CLIP constants) and rng. Must not depend on engine, dataset or anything above.

pub mod families;
pub mod llava;
pub mod presets;
pub mod qwen2vl;
pub mod weight_rng;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use weight_rng::WeightRng;

/// Special tokens of every preset tokenizer, at these ids.
pub const UNK: u32 = 0;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
pub const PAD: u32 = 3;

/// A Llama-family shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaShape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub initializer_range: f64,
}

/// The text presets. (Vision presets build on these in the LLaVA module.)
pub const TEXT_PRESETS: &[&str] = &["tiny-llama", "perf-181m", "llama-2-7b"];

/// Shape of a text preset.
pub fn llama_preset(name: &str) -> Option<LlamaShape> {
    let base = LlamaShape {
        hidden_size: 64,
        intermediate_size: 176,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        vocab_size: 1024,
        max_position_embeddings: 1024,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        initializer_range: 0.2,
    };
    Some(match name {
        "tiny-llama" => base,
        // The 181 M-parameter Llama the peer engines are timed on (hidden 1024, 16 layers).
        "perf-181m" => LlamaShape {
            hidden_size: 1024,
            intermediate_size: 2816,
            num_hidden_layers: 16,
            num_attention_heads: 16,
            num_key_value_heads: 4,
            vocab_size: 512,
            max_position_embeddings: 4096,
            initializer_range: 0.02,
            ..base
        },
        "llama-2-7b" => LlamaShape {
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 32,
            vocab_size: 32000,
            max_position_embeddings: 4096,
            initializer_range: 0.02,
            ..base
        },
        _ => return None,
    })
}

impl LlamaShape {
    /// config.json as transformers writes it for `LlamaForCausalLM`.
    pub fn hf_config(&self, dtype: DType) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": BOS,
            "eos_token_id": EOS,
            "pad_token_id": PAD,
            "head_dim": self.hidden_size / self.num_attention_heads,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": self.initializer_range,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "mlp_bias": false,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": null,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": false,
            "torch_dtype": torch_dtype_name(dtype),
            "use_cache": true,
            "vocab_size": self.vocab_size,
        })
    }

    /// Random weights under HF names with the given prefix (`model.` / `lm_head.` by default).
    pub fn random_weights(
        &self,
        seed: u64,
        dtype: DType,
        device: &Device,
        prefix: &str,
    ) -> Result<HashMap<String, Tensor>> {
        let mut rng = WeightRng::new(seed, device)?;
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let hd = h / self.num_attention_heads;
        let kv = self.num_key_value_heads * hd;
        let std = self.initializer_range;
        let mut w = HashMap::new();
        let mut put = |name: String, shape: &[usize], ones: bool| -> Result<()> {
            let t = if ones {
                Tensor::ones(shape, dtype, device)?
            } else {
                rng.uniform(shape, std, dtype, device)?
            };
            w.insert(name, t);
            Ok(())
        };
        put(format!("{prefix}model.embed_tokens.weight"), &[v, h], false)?;
        for l in 0..self.num_hidden_layers {
            let p = format!("{prefix}model.layers.{l}");
            put(format!("{p}.self_attn.q_proj.weight"), &[h, h], false)?;
            put(format!("{p}.self_attn.k_proj.weight"), &[kv, h], false)?;
            put(format!("{p}.self_attn.v_proj.weight"), &[kv, h], false)?;
            put(format!("{p}.self_attn.o_proj.weight"), &[h, h], false)?;
            put(format!("{p}.mlp.gate_proj.weight"), &[i, h], false)?;
            put(format!("{p}.mlp.up_proj.weight"), &[i, h], false)?;
            put(format!("{p}.mlp.down_proj.weight"), &[h, i], false)?;
            put(format!("{p}.input_layernorm.weight"), &[h], true)?;
            put(format!("{p}.post_attention_layernorm.weight"), &[h], true)?;
        }
        put(format!("{prefix}model.norm.weight"), &[h], true)?;
        put(format!("{prefix}lm_head.weight"), &[v, h], false)?;
        Ok(w)
    }
}

/// `float32`, `float16`, `bfloat16`.
pub fn torch_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// GPT-2's printable stand-in for each ASCII byte (bytes 0–32 and 127 are shifted to U+0100…).
pub fn byte_symbol(b: u8) -> char {
    match b {
        33..=126 => b as char,
        0..=32 => char::from_u32(256 + b as u32).unwrap_or('?'),
        _ => char::from_u32(256 + 33).unwrap_or('?'),
    }
}

/// Builds the preset tokenizer.json with exactly `vocab_size` ids: specials, then the 128
/// ASCII byte symbols, then rule-made merges; `extra_specials` (like `<image>`) take the last
/// ids.
pub fn tokenizer_json(vocab_size: usize, extra_specials: &[&str]) -> Result<String> {
    let specials = ["<unk>", "<s>", "</s>", "<pad>"];
    let base = specials.len() + 128 + extra_specials.len();
    if vocab_size < base {
        bail!("vocab_size {vocab_size} is smaller than the {base} base tokens");
    }
    let mut vocab: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    vocab.extend((0u8..128).map(|b| byte_symbol(b).to_string()));
    let merge_budget = vocab_size - base;
    let space = byte_symbol(b' ').to_string();
    let lower: Vec<String> = ('a'..='z').map(String::from).collect();
    let upper: Vec<String> = ('A'..='Z').map(String::from).collect();
    let mut merges: Vec<(String, String)> = Vec::new();
    let mut known: std::collections::HashSet<String> = vocab.iter().cloned().collect();
    let mut add =
        |a: &str, b: &str, merges: &mut Vec<(String, String)>, vocab: &mut Vec<String>| {
            let t = format!("{a}{b}");
            if merges.len() < merge_budget && known.insert(t.clone()) {
                merges.push((a.to_string(), b.to_string()));
                vocab.push(t);
            }
        };
    // Ordered by how common the shapes are in English text.
    for l in lower.iter().chain(&upper) {
        add(&space, l, &mut merges, &mut vocab);
    }
    for a in lower.iter().chain(&upper) {
        for b in &lower {
            add(a, b, &mut merges, &mut vocab);
        }
    }
    for a in lower.iter().chain(&upper) {
        for b in &lower {
            add(&format!("{space}{a}"), b, &mut merges, &mut vocab);
        }
    }
    'outer: for a in lower.iter().chain(&upper) {
        for b in &lower {
            for c in &lower {
                if merges.len() >= merge_budget {
                    break 'outer;
                }
                add(&format!("{a}{b}"), c, &mut merges, &mut vocab);
            }
        }
    }
    'outer2: for a in lower.iter().chain(&upper) {
        for b in &lower {
            for c in &lower {
                if merges.len() >= merge_budget {
                    break 'outer2;
                }
                add(&format!("{space}{a}{b}"), c, &mut merges, &mut vocab);
            }
        }
    }
    // Any remaining ids: digit pairs, then filler tokens (never produced by the merges, but
    // decodable).
    let digits: Vec<String> = ('0'..='9').map(String::from).collect();
    for a in &digits {
        for b in &digits {
            add(a, b, &mut merges, &mut vocab);
        }
    }
    let mut filler = 0usize;
    while vocab.len() < vocab_size - extra_specials.len() {
        let t = format!("{space}~{filler}");
        if known.insert(t.clone()) {
            vocab.push(t);
        }
        filler += 1;
    }
    let mut added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| added_token(i, s))
        .collect();
    for (k, s) in extra_specials.iter().enumerate() {
        let id = vocab.len();
        vocab.push(s.to_string());
        added.push(added_token(id, s));
        let _ = k;
    }
    debug_assert_eq!(vocab.len(), vocab_size);
    let vocab_map: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), Value::from(i)))
        .collect();
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [BOS], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_map,
            "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()
        }
    });
    Ok(serde_json::to_string(&tok)?)
}

fn added_token(id: usize, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": true})
}

/// The tokenizer of the `tiny-llama` preset; the default for `prepare synthetic`.
pub fn builtin_tokenizer_json() -> String {
    let shape = llama_preset("tiny-llama").expect("tiny-llama is a preset");
    tokenizer_json(shape.vocab_size, &[]).expect("the tiny-llama vocabulary fits")
}

/// Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json.
pub fn write_tokenizer_files(out: &Path, tokenizer: &str, extra_specials: &[&str]) -> Result<()> {
    write(out, "tokenizer.json", tokenizer.as_bytes())?;
    let cfg = json!({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "add_bos_token": true, "add_eos_token": false, "clean_up_tokenization_spaces": false,
        "model_max_length": 1_000_000_000_000_000_000u64, "tokenizer_class": "PreTrainedTokenizerFast",
        "additional_special_tokens": extra_specials,
    });
    write(
        out,
        "tokenizer_config.json",
        &serde_json::to_vec_pretty(&cfg)?,
    )?;
    let map = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                     "additional_special_tokens": extra_specials});
    write(
        out,
        "special_tokens_map.json",
        &serde_json::to_vec_pretty(&map)?,
    )
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))
}

/// Writes `config` as config.json, and the presets' generation_config.json (greedy, their
/// special token ids).
pub fn write_configs(out: &Path, config: &Value) -> Result<()> {
    write(out, "config.json", &serde_json::to_vec_pretty(config)?)?;
    let gen =
        json!({"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD, "do_sample": false});
    write(
        out,
        "generation_config.json",
        &serde_json::to_vec_pretty(&gen)?,
    )
}

/// Shards above this size, as transformers' `save_pretrained` does by default.
const SHARD_BYTES: usize = 2_000_000_000;

/// Writes weights as `model.safetensors`, or shards with `model.safetensors.index.json`.
pub fn write_safetensors(out: &Path, weights: &HashMap<String, Tensor>) -> Result<()> {
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let total: usize = weights
        .values()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    if total <= SHARD_BYTES {
        let path = out.join("model.safetensors");
        return candle_core::safetensors::save(weights, &path)
            .with_context(|| format!("cannot write {}", path.display()));
    }
    let mut shards: Vec<Vec<&String>> = vec![Vec::new()];
    let mut size = 0;
    for n in names {
        let b = weights[n].elem_count() * weights[n].dtype().size_in_bytes();
        if size + b > SHARD_BYTES && !shards.last().is_some_and(Vec::is_empty) {
            shards.push(Vec::new());
            size = 0;
        }
        size += b;
        if let Some(last) = shards.last_mut() {
            last.push(n);
        }
    }
    let count = shards.len();
    let mut map = serde_json::Map::new();
    for (k, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", k + 1);
        let part: HashMap<String, Tensor> = shard
            .iter()
            .map(|n| ((*n).clone(), weights[*n].clone()))
            .collect();
        candle_core::safetensors::save(&part, out.join(&file))
            .with_context(|| format!("cannot write {file}"))?;
        for n in shard {
            map.insert((*n).clone(), file.clone().into());
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": map});
    write(
        out,
        "model.safetensors.index.json",
        &serde_json::to_vec_pretty(&index)?,
    )
}

/// A text-family preset's config.json (see [`families`]) written in the Hugging Face layout
/// with seeded random weights under the family's names; without weights when `weights_seed` is
/// `None`.
pub fn write_family(
    config: &Value,
    out: &Path,
    dtype: DType,
    weights_seed: Option<u64>,
) -> Result<()> {
    let cfg = crate::models::llama::LlamaConfig::from_hf_json(config)?;
    write_configs(out, config)?;
    write_tokenizer_files(out, &tokenizer_json(cfg.vocab_size, &[])?, &[])?;
    let Some(seed) = weights_seed else {
        return Ok(());
    };
    let std = config["initializer_range"].as_f64().unwrap_or(0.02);
    let weights = families::random_weights(&cfg, std, seed, dtype, &Device::Cpu)?;
    write_safetensors(out, &weights)
}

/// Writes a text preset in the Hugging Face layout (the registry, [`presets::write_preset`],
/// picks this or the LLaVA writer); without weights when `weights_seed` is `None`.
pub fn write_llama(
    shape: &LlamaShape,
    out: &Path,
    dtype: DType,
    weights_seed: Option<u64>,
) -> Result<()> {
    write_configs(out, &shape.hf_config(dtype))?;
    write_tokenizer_files(out, &tokenizer_json(shape.vocab_size, &[])?, &[])?;
    let Some(seed) = weights_seed else {
        return Ok(());
    };
    let weights = shape.random_weights(seed, dtype, &Device::Cpu, "")?;
    write_safetensors(out, &weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::Tokenizer;

    #[test]
    fn tokenizer_covers_every_id_and_round_trips() {
        for (size, extra) in [(1024usize, vec![]), (4096, vec!["<image>"])] {
            let json = tokenizer_json(size, &extra).unwrap();
            let tok = Tokenizer::from_bytes(json.as_bytes()).unwrap();
            assert_eq!(tok.get_vocab_size(true), size);
            let text = "The quick brown fox, 42 times!";
            let enc = tok.encode(text, true).unwrap();
            assert_eq!(enc.get_ids()[0], BOS);
            assert!(enc.get_ids().len() < text.len(), "merges apply");
            assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), text);
            for id in 0..size as u32 {
                let s = tok.decode(&[id], false).unwrap();
                assert!(!s.contains('\u{fffd}'), "id {id} -> {s:?}");
            }
            if !extra.is_empty() {
                assert_eq!(tok.token_to_id("<image>"), Some(size as u32 - 1));
                let ids = tok.encode("a <image>\nb", false).unwrap();
                assert!(ids.get_ids().contains(&(size as u32 - 1)));
            }
        }
    }

    #[test]
    fn a_preset_without_weights_is_its_configs_and_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        for preset in ["llama-2-7b", "llava-1.5-7b"] {
            let out = dir.path().join(preset);
            presets::write_preset(preset, &out, DType::F16, None).unwrap();
            let mut names: Vec<String> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert!(
                names.iter().all(|n| !n.contains("safetensors")),
                "{names:?}"
            );
            for n in ["config.json", "generation_config.json", "tokenizer.json"] {
                assert!(names.contains(&n.to_string()), "{preset}: {names:?}");
            }
            let vision = preset.starts_with("llava");
            assert_eq!(names.contains(&"preprocessor_config.json".into()), vision);
            let tok = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
            let want = if vision { 32064 } else { 32000 };
            assert_eq!(tok.get_vocab_size(true), want, "{preset}");
        }
    }

    /// A preset's CPU weights depend on the seed only: the same seed, the same tensors.
    #[test]
    fn cpu_preset_weights_are_seeded() {
        let shape = llama_preset("tiny-llama").unwrap();
        let flat = |seed| {
            let w = shape
                .random_weights(seed, DType::F32, &Device::Cpu, "")
                .unwrap();
            let q = &w["model.layers.1.self_attn.q_proj.weight"];
            q.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let (a, b, c) = (flat(7), flat(7), flat(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let bound = (0.2f64 * 3f64.sqrt()) as f32 * 1.0001;
        assert!(a.iter().all(|x| x.abs() <= bound) && a.iter().any(|x| *x != 0.0));
    }

    #[test]
    fn cpu_random_tensors_are_seeded_and_spread_as_intended() {
        let mut a = WeightRng::new(1, &Device::Cpu).unwrap();
        let mut b = WeightRng::new(1, &Device::Cpu).unwrap();
        let x = a.uniform(&[3, 5], 0.02, DType::F32, &Device::Cpu).unwrap();
        let y = b.uniform(&[3, 5], 0.02, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(x.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
        let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.abs() <= 0.0347) && v.iter().any(|x| *x != 0.0));
        // Another seed, other values.
        let z = WeightRng::new(2, &Device::Cpu)
            .unwrap()
            .uniform(&[3, 5], 0.02, DType::F32, &Device::Cpu)
            .unwrap();
        assert_ne!(x.to_vec2::<f32>().unwrap(), z.to_vec2::<f32>().unwrap());
        // The intended spread: uniform on ±std·√3, so mean 0 and standard deviation `std`,
        // reaching close to both ends.
        let big = WeightRng::new(3, &Device::Cpu)
            .unwrap()
            .uniform(&[64, 64], 0.02, DType::F32, &Device::Cpu)
            .unwrap();
        let v: Vec<f64> = big
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(mean.abs() < 0.0015, "mean {mean}");
        assert!((sd / 0.02 - 1.0).abs() < 0.03, "standard deviation {sd}");
        let (lo, hi) = v
            .iter()
            .fold((0f64, 0f64), |(l, h), x| (l.min(*x), h.max(*x)));
        assert!(
            lo < -0.034 && hi > 0.034 && lo >= -0.0347 && hi <= 0.0347,
            "{lo} {hi}"
        );
    }
}
