//! Where each family keeps its weights, in safetensors as transformers writes them and in GGUF
//! as llama.cpp's converter writes them, and how they become the decoder's [`Parts`].
//!
//! Fused projections (Phi-3's `qkv_proj` / `gate_up_proj`, GPT-2's `c_attn`, GPT-NeoX's
//! per-head `query_key_value`, GGUF's `attn_qkv`) are split into q/k/v (gate/up) at load, so
//! every family runs the same kernels; the one-token CPU path fuses them again in one pass.

use std::io::{Read, Seek};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::family::{Activation, Family, NormKind};
use super::{Layer, Linear, LinearWeight, LlamaConfig, Norm, Parts};
use crate::models::rope::RopeScaling;

fn get(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Tensor> {
    vb.get(shape, name)
        .with_context(|| format!("loading {}", vb.prefix_name(name)))
}

trait PrefixName {
    fn prefix_name(&self, name: &str) -> String;
}

impl PrefixName for VarBuilder<'_> {
    fn prefix_name(&self, name: &str) -> String {
        let p = self.prefix();
        if p.is_empty() {
            name.to_string()
        } else {
            format!("{p}.{name}")
        }
    }
}

/// `rows` of `t` (out, ...) split at the given sizes, each made contiguous.
fn split_rows(t: &Tensor, sizes: &[usize]) -> Result<Vec<Tensor>> {
    let mut at = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for &n in sizes {
        out.push(t.narrow(0, at, n)?.contiguous()?);
        at += n;
    }
    if at != t.dim(0)? {
        bail!(
            "fused weight has {} rows, expected {at}",
            t.dim(0).unwrap_or(0)
        );
    }
    Ok(out)
}

/// A norm as the decoder applies it (Gemma's `1 + w` added here).
fn hf_norm(vb: &VarBuilder, c: &LlamaConfig, name: &str, dim: usize) -> Result<Norm> {
    match c.norm {
        NormKind::Rms => Norm::new(get(vb, &[dim], &format!("{name}.weight"))?, None),
        NormKind::RmsPlusOne => Norm::new(
            (get(vb, &[dim], &format!("{name}.weight"))?.to_dtype(DType::F32)? + 1.0)?,
            None,
        ),
        NormKind::LayerNorm => Norm::new(
            get(vb, &[dim], &format!("{name}.weight"))?,
            Some(get(vb, &[dim], &format!("{name}.bias"))?),
        ),
    }
}

fn hf_linear(vb: &VarBuilder, out: usize, inp: usize, name: &str, bias: bool) -> Result<Linear> {
    let w = get(vb, &[out, inp], &format!("{name}.weight"))?;
    let b = bias
        .then(|| get(vb, &[out], &format!("{name}.bias")))
        .transpose()?;
    Linear::dense(w, b)
}

/// Safetensors weights of `c`'s family; `model_prefix` / `lm_head_prefix` root Llama-style
/// checkpoints (`model`, `lm_head`; LLaVA's `language_model.model`...).
pub(crate) fn load_hf(
    c: &LlamaConfig,
    vb: &VarBuilder,
    model_prefix: &str,
    lm_head_prefix: &str,
) -> Result<Parts> {
    match c.family {
        Family::Gpt2 => load_gpt2(c, vb),
        Family::GptNeox => load_gpt_neox(c, vb),
        _ => load_llama_style(c, vb, model_prefix, lm_head_prefix),
    }
}

fn load_llama_style(
    c: &LlamaConfig,
    vb: &VarBuilder,
    model_prefix: &str,
    lm_head_prefix: &str,
) -> Result<Parts> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let q_out = c.num_heads * c.head_dim;
    let kv_out = c.num_kv_heads * c.head_dim;
    let vbm = vb.pp(model_prefix);
    let embed = get(&vbm, &[c.vocab_size, h], "embed_tokens.weight")?;
    let mut layers = Vec::with_capacity(c.num_layers);
    for l in 0..c.num_layers {
        let vbl = vbm.pp(format!("layers.{l}"));
        let a = vbl.pp("self_attn");
        let m = vbl.pp("mlp");
        let (q, k, v) = if c.family == Family::Phi3 {
            let w = get(&a, &[q_out + 2 * kv_out, h], "qkv_proj.weight")?;
            let [q, k, v] = <[Tensor; 3]>::try_from(split_rows(&w, &[q_out, kv_out, kv_out])?)
                .map_err(|_| anyhow!("qkv split"))?;
            (
                Linear::dense(q, None)?,
                Linear::dense(k, None)?,
                Linear::dense(v, None)?,
            )
        } else {
            (
                hf_linear(&a, q_out, h, "q_proj", c.qkv_bias)?,
                hf_linear(&a, kv_out, h, "k_proj", c.qkv_bias)?,
                hf_linear(&a, kv_out, h, "v_proj", c.qkv_bias)?,
            )
        };
        let (gate, up) = if c.family == Family::Phi3 {
            let w = get(&m, &[2 * i, h], "gate_up_proj.weight")?;
            let [g, u] = <[Tensor; 2]>::try_from(split_rows(&w, &[i, i])?)
                .map_err(|_| anyhow!("gate/up split"))?;
            (Linear::dense(g, None)?, Linear::dense(u, None)?)
        } else {
            (
                hf_linear(&m, i, h, "gate_proj", c.mlp_bias)?,
                hf_linear(&m, i, h, "up_proj", c.mlp_bias)?,
            )
        };
        let gemma = c.sandwich_norms;
        let (q_norm, k_norm) = if c.qk_norm {
            (
                Some(hf_norm(&a, c, "q_norm", c.head_dim)?),
                Some(hf_norm(&a, c, "k_norm", c.head_dim)?),
            )
        } else {
            (None, None)
        };
        layers.push(Layer {
            attn_norm: hf_norm(&vbl, c, "input_layernorm", h)?,
            q,
            k,
            v,
            o: hf_linear(&a, h, q_out, "o_proj", c.out_bias)?,
            q_norm,
            k_norm,
            post_attn_norm: gemma
                .then(|| hf_norm(&vbl, c, "post_attention_layernorm", h))
                .transpose()?,
            ffn_norm: if gemma {
                hf_norm(&vbl, c, "pre_feedforward_layernorm", h)?
            } else {
                hf_norm(&vbl, c, "post_attention_layernorm", h)?
            },
            post_ffn_norm: gemma
                .then(|| hf_norm(&vbl, c, "post_feedforward_layernorm", h))
                .transpose()?,
            gate: Some(gate),
            up,
            down: hf_linear(&m, h, i, "down_proj", c.mlp_bias)?,
        });
    }
    let norm = hf_norm(&vbm, c, "norm", h)?;
    let lm_head = if c.tie_word_embeddings {
        Linear::dense(embed.clone(), None)?
    } else {
        Linear::dense(
            get(&vb.pp(lm_head_prefix), &[c.vocab_size, h], "weight")?,
            None,
        )?
    };
    Ok(Parts {
        embed,
        positions: None,
        layers,
        norm,
        lm_head,
    })
}

/// GPT-2: `transformer.*` (or unprefixed, as the original release), Conv1D weights stored
/// `(in, out)`, `c_attn` holding q/k/v side by side; the head is tied to `wte`.
fn load_gpt2(c: &LlamaConfig, vb: &VarBuilder) -> Result<Parts> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let vbt = if vb.contains_tensor("transformer.wte.weight") {
        vb.pp("transformer")
    } else {
        vb.clone()
    };
    // Conv1D: y = x · W + b with W (in, out).
    let conv = |vb: &VarBuilder, inp: usize, out: usize, name: &str| -> Result<(Tensor, Tensor)> {
        let w = get(vb, &[inp, out], &format!("{name}.weight"))?
            .t()?
            .contiguous()?;
        Ok((w, get(vb, &[out], &format!("{name}.bias"))?))
    };
    let embed = get(&vbt, &[c.vocab_size, h], "wte.weight")?;
    let positions = get(&vbt, &[c.max_position_embeddings, h], "wpe.weight")?;
    let mut layers = Vec::with_capacity(c.num_layers);
    for l in 0..c.num_layers {
        let vbl = vbt.pp(format!("h.{l}"));
        let (w, b) = conv(&vbl.pp("attn"), h, 3 * h, "c_attn")?;
        let ws = split_rows(&w, &[h, h, h])?;
        let bs = split_rows(&b, &[h, h, h])?;
        let lin = |k: usize| Linear::dense(ws[k].clone(), Some(bs[k].clone()));
        let (ow, ob) = conv(&vbl.pp("attn"), h, h, "c_proj")?;
        let (fw, fb) = conv(&vbl.pp("mlp"), h, i, "c_fc")?;
        let (pw, pb) = conv(&vbl.pp("mlp"), i, h, "c_proj")?;
        layers.push(Layer {
            attn_norm: hf_norm(&vbl, c, "ln_1", h)?,
            q: lin(0)?,
            k: lin(1)?,
            v: lin(2)?,
            o: Linear::dense(ow, Some(ob))?,
            q_norm: None,
            k_norm: None,
            post_attn_norm: None,
            ffn_norm: hf_norm(&vbl, c, "ln_2", h)?,
            post_ffn_norm: None,
            gate: None,
            up: Linear::dense(fw, Some(fb))?,
            down: Linear::dense(pw, Some(pb))?,
        });
    }
    let norm = hf_norm(&vbt, c, "ln_f", h)?;
    let lm_head = if c.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
        Linear::dense(embed.clone(), None)?
    } else {
        Linear::dense(get(vb, &[c.vocab_size, h], "lm_head.weight")?, None)?
    };
    Ok(Parts {
        embed,
        positions: Some(positions),
        layers,
        norm,
        lm_head,
    })
}

/// GPT-NeoX / Pythia: `gpt_neox.*`, `query_key_value` rows grouped per head as
/// `[q_h, k_h, v_h]`, head `embed_out`.
fn load_gpt_neox(c: &LlamaConfig, vb: &VarBuilder) -> Result<Parts> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let (nh, hd) = (c.num_heads, c.head_dim);
    let vbm = vb.pp("gpt_neox");
    let embed = get(&vbm, &[c.vocab_size, h], "embed_in.weight")?;
    let mut layers = Vec::with_capacity(c.num_layers);
    for l in 0..c.num_layers {
        let vbl = vbm.pp(format!("layers.{l}"));
        let a = vbl.pp("attention");
        let w = get(&a, &[3 * nh * hd, h], "query_key_value.weight")?.reshape((nh, 3, hd, h))?;
        let b = c
            .qkv_bias
            .then(|| get(&a, &[3 * nh * hd], "query_key_value.bias"))
            .transpose()?
            .map(|b| b.reshape((nh, 3, hd)))
            .transpose()?;
        let part = |k: usize| -> Result<Linear> {
            let wk = w.narrow(1, k, 1)?.contiguous()?.reshape((nh * hd, h))?;
            let bk = b
                .as_ref()
                .map(|b| b.narrow(1, k, 1)?.contiguous()?.reshape(nh * hd))
                .transpose()?;
            Linear::dense(wk, bk)
        };
        let m = vbl.pp("mlp");
        layers.push(Layer {
            attn_norm: hf_norm(&vbl, c, "input_layernorm", h)?,
            q: part(0)?,
            k: part(1)?,
            v: part(2)?,
            o: hf_linear(&a, h, nh * hd, "dense", c.out_bias)?,
            q_norm: None,
            k_norm: None,
            post_attn_norm: None,
            ffn_norm: hf_norm(&vbl, c, "post_attention_layernorm", h)?,
            post_ffn_norm: None,
            gate: None,
            up: hf_linear(&m, i, h, "dense_h_to_4h", true)?,
            down: hf_linear(&m, h, i, "dense_4h_to_h", true)?,
        });
    }
    let norm = hf_norm(&vbm, c, "final_layer_norm", h)?;
    let lm_head = if c.tie_word_embeddings {
        Linear::dense(embed.clone(), None)?
    } else {
        Linear::dense(get(vb, &[c.vocab_size, h], "embed_out.weight")?, None)?
    };
    Ok(Parts {
        embed,
        positions: None,
        layers,
        norm,
        lm_head,
    })
}

/// The decoder config from llama.cpp's GGUF metadata (`<arch>.*` keys), with what the
/// converter leaves implied by the architecture filled in as llama.cpp does.
pub fn config_from_gguf(content: &gguf_file::Content) -> Result<LlamaConfig> {
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| "llama".into());
    let family = Family::from_gguf_arch(&arch)
        .ok_or_else(|| anyhow!("GGUF architecture {arch:?} is not supported"))?;
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| -> Result<usize> {
        md.get(&key(k))
            .ok_or_else(|| anyhow!("GGUF metadata `{}` is missing", key(k)))?
            .to_u32()
            .map(|x| x as usize)
            .map_err(|e| anyhow!("GGUF metadata `{}`: {e}", key(k)))
    };
    let f = |k: &str| md.get(&key(k)).and_then(|v| v.to_f32().ok()).map(f64::from);
    let has = |name: &str| content.tensor_infos.contains_key(name);
    let hidden_size = u("embedding_length")?;
    let num_heads = u("attention.head_count")?;
    let vocab_size = match content.tensor_infos.get("token_embd.weight") {
        Some(t) => t.shape.dims()[0],
        None => bail!("GGUF: no token_embd.weight"),
    };
    let head_dim = u("attention.key_length").unwrap_or(hidden_size / num_heads);
    let num_layers = u("block_count")?;
    let max_position_embeddings = u("context_length").unwrap_or(4096);
    let gemma = matches!(family, Family::Gemma2 | Family::Gemma3);
    let window = u("attention.sliding_window").ok().filter(|w| *w > 0);
    let sliding_layers: Vec<bool> = match family {
        Family::Gemma2 => (0..num_layers).map(|i| i % 2 == 0).collect(),
        Family::Gemma3 => {
            let pattern = u("attention.sliding_window_pattern").unwrap_or(6);
            (0..num_layers).map(|i| (i + 1) % pattern != 0).collect()
        }
        _ => vec![window.is_some(); num_layers],
    };
    let tok_u32 = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
    let rope_scaling = match md
        .get(&key("rope.scaling.type"))
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
    {
        None | Some("none") => None,
        Some("linear") => Some(RopeScaling::Linear {
            factor: f("rope.scaling.factor").unwrap_or(1.0),
        }),
        Some(other) => bail!("GGUF rope scaling {other:?} is not supported"),
    };
    let layer_norm = matches!(family, Family::Gpt2 | Family::GptNeox);
    let eps = if layer_norm {
        f("attention.layer_norm_epsilon").unwrap_or(1e-5)
    } else {
        f("attention.layer_norm_rms_epsilon").unwrap_or(1e-6)
    };
    let rotary_dim = match family {
        Family::Gpt2 => 0,
        _ => u("rope.dimension_count").unwrap_or(head_dim),
    };
    let qkv_bias = has("blk.0.attn_q.bias") || has("blk.0.attn_qkv.bias");
    let attn_softcap = f("attn_logit_softcapping");
    let final_softcap = f("final_logit_softcapping");
    let cfg = LlamaConfig {
        family,
        hidden_size,
        intermediate_size: u("feed_forward_length")?,
        num_layers,
        num_heads,
        num_kv_heads: u("attention.head_count_kv").unwrap_or(num_heads),
        head_dim,
        vocab_size,
        max_position_embeddings,
        rms_norm_eps: eps,
        rope_theta: f("rope.freq_base").unwrap_or(10_000.0),
        rope_scaling,
        rotary_dim,
        local_rope: (family == Family::Gemma3)
            .then(|| (f("rope.freq_base_swa").unwrap_or(10_000.0), None)),
        tie_word_embeddings: !has("output.weight"),
        bos_token_id: tok_u32("tokenizer.ggml.bos_token_id"),
        eos_token_ids: tok_u32("tokenizer.ggml.eos_token_id").into_iter().collect(),
        qkv_bias,
        out_bias: has("blk.0.attn_output.bias"),
        mlp_bias: has("blk.0.ffn_down.bias"),
        qk_norm: has("blk.0.attn_q_norm.weight"),
        norm: if layer_norm {
            NormKind::LayerNorm
        } else {
            NormKind::Rms
        },
        activation: match family {
            Family::Gemma2 | Family::Gemma3 | Family::Gpt2 => Activation::GeluTanh,
            Family::GptNeox => Activation::Gelu,
            _ => Activation::Silu,
        },
        sandwich_norms: gemma,
        embed_scale: gemma.then(|| (hidden_size as f64).sqrt()),
        // llama.cpp scales Gemma's scores by 1/√head_dim (`query_pre_attn_scalar` is not
        // stored; the released models have it equal to head_dim), except Gemma 2 27B (46
        // layers), whose scalar is hidden/heads, as llama.cpp knows it.
        attn_scale: if family == Family::Gemma2 && num_layers == 46 {
            1.0 / ((hidden_size / num_heads) as f64).sqrt()
        } else {
            1.0 / (head_dim as f64).sqrt()
        },
        attn_softcap: if family == Family::Gemma2 {
            attn_softcap
        } else {
            None
        },
        final_softcap: if gemma { final_softcap } else { None },
        sliding_window: window.filter(|_| sliding_layers.iter().any(|s| *s)),
        sliding_layers,
        parallel_residual: family == Family::GptNeox
            && md
                .get(&key("use_parallel_residual"))
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(true),
        learned_positions: family == Family::Gpt2,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Phi-3's long-context rotary factors, which llama.cpp's converter stores as the tensors
/// `rope_factors_long` / `rope_factors_short` beside `phi3.rope.scaling.original_context_length`
/// and `.attn_factor`. They are applied as transformers applies longrope: the short factors
/// while the sequence fits the original context, the long ones past it (llama.cpp instead
/// picks by the context size it was started with). `None` where the file has no factors.
pub(crate) fn gguf_longrope<R: Read + Seek>(
    c: &LlamaConfig,
    content: &gguf_file::Content,
    reader: &mut R,
) -> Result<Option<RopeScaling>> {
    if c.family != Family::Phi3
        || !content
            .tensor_infos
            .contains_key("rope_factors_long.weight")
    {
        return Ok(None);
    }
    let mut factors = |name: &str| -> Result<Vec<f64>> {
        let t = content
            .tensor(reader, name, &Device::Cpu)
            .with_context(|| format!("GGUF tensor `{name}`"))?
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_dtype(DType::F64)?;
        Ok(t.to_vec1::<f64>()?)
    };
    let long_factor = factors("rope_factors_long.weight")?;
    let short_factor = if content
        .tensor_infos
        .contains_key("rope_factors_short.weight")
    {
        factors("rope_factors_short.weight")?
    } else {
        long_factor.clone()
    };
    let md = &content.metadata;
    let original = md
        .get("phi3.rope.scaling.original_context_length")
        .and_then(|v| v.to_u32().ok())
        .ok_or_else(|| {
            anyhow!("GGUF: Phi-3 rope factors without `phi3.rope.scaling.original_context_length`")
        })? as f64;
    let attention_factor = match md
        .get("phi3.rope.scaling.attn_factor")
        .and_then(|v| v.to_f32().ok())
    {
        Some(a) => a as f64,
        None => {
            let factor = c.max_position_embeddings as f64 / original;
            if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / original.ln()).sqrt()
            }
        }
    };
    Ok(Some(RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings: original,
        attention_factor,
    }))
}

/// GGUF weights of `c`'s family.
pub(crate) fn load_gguf<R: Read + Seek>(
    c: &LlamaConfig,
    content: &gguf_file::Content,
    reader: &mut R,
    device: &Device,
) -> Result<Parts> {
    let mut get = |name: &str| -> Result<QTensor> {
        content
            .tensor(reader, name, device)
            .with_context(|| format!("GGUF tensor `{name}`"))
    };
    let has = |name: &str| content.tensor_infos.contains_key(name);
    let dense = |t: QTensor| -> Result<Tensor> { Ok(t.dequantize(device)?) };
    let linear_of = |t: QTensor| -> Result<LinearWeight> {
        Ok(match t.dtype() {
            // candle would widen f16 to f32; kept as stored, decode reads half the bytes.
            GgmlDType::F16 => LinearWeight::Dense(t.dequantize_f16(device)?),
            // Plain floats are dense weights: the decode kernels apply.
            GgmlDType::F32 | GgmlDType::BF16 => LinearWeight::Dense(t.dequantize(device)?),
            _ => LinearWeight::quantized(t)?,
        })
    };
    // A fused tensor split by rows: float parts stay dense; quantised ones are requantised
    // per part (exact for Q8_0's blocks, which lie within rows).
    let split = |t: QTensor, sizes: &[usize]| -> Result<Vec<LinearWeight>> {
        let dt = t.dtype();
        let wide = t.dequantize(device)?;
        split_rows(&wide, sizes)?
            .into_iter()
            .map(|p| {
                Ok(match dt {
                    GgmlDType::F32 | GgmlDType::BF16 => LinearWeight::Dense(p),
                    GgmlDType::F16 => LinearWeight::Dense(p.to_dtype(DType::F16)?),
                    q => LinearWeight::quantized(QTensor::quantize(&p, q)?)?,
                })
            })
            .collect()
    };
    let embed_q = get("token_embd.weight")?;
    let embed = embed_q.dequantize(device)?;
    let lm_head = if c.tie_word_embeddings {
        Linear::new(LinearWeight::quantized(embed_q)?, None)?
    } else {
        Linear::new(linear_of(get("output.weight")?)?, None)?
    };
    let positions = if c.learned_positions {
        Some(dense(get("position_embd.weight")?)?)
    } else {
        None
    };
    let q_out = c.num_heads * c.head_dim;
    let kv_out = c.num_kv_heads * c.head_dim;
    let i = c.intermediate_size;
    let mut layers = Vec::with_capacity(c.num_layers);
    for l in 0..c.num_layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        let mut norm = |s: &str| -> Result<Norm> {
            let w = dense(get(&n(&format!("{s}.weight")))?)?;
            let b = if has(&n(&format!("{s}.bias"))) {
                Some(dense(get(&n(&format!("{s}.bias")))?)?)
            } else {
                None
            };
            Norm::new(w, b)
        };
        let attn_norm = norm("attn_norm")?;
        let ffn_norm = norm("ffn_norm")?;
        let (post_attn_norm, post_ffn_norm) = if c.sandwich_norms {
            (
                Some(norm("post_attention_norm")?),
                Some(norm("post_ffw_norm")?),
            )
        } else {
            (None, None)
        };
        let (q_norm, k_norm) = if c.qk_norm {
            (Some(norm("attn_q_norm")?), Some(norm("attn_k_norm")?))
        } else {
            (None, None)
        };
        let mut bias = |s: &str| -> Result<Option<Tensor>> {
            let name = n(&format!("{s}.bias"));
            if has(&name) {
                Ok(Some(dense(get(&name)?)?))
            } else {
                Ok(None)
            }
        };
        let (qb, kb, vb) = match bias("attn_qkv")? {
            Some(b) => {
                let [q, k, v] = <[Tensor; 3]>::try_from(split_rows(&b, &[q_out, kv_out, kv_out])?)
                    .map_err(|_| anyhow!("qkv bias split"))?;
                (Some(q), Some(k), Some(v))
            }
            None => (bias("attn_q")?, bias("attn_k")?, bias("attn_v")?),
        };
        let ob = bias("attn_output")?;
        let upb = bias("ffn_up")?;
        let downb = bias("ffn_down")?;
        let mut weight = |s: &str| get(&n(&format!("{s}.weight")));
        let (q, k, v) = if has(&n("attn_qkv.weight")) {
            let mut parts = split(weight("attn_qkv")?, &[q_out, kv_out, kv_out])?.into_iter();
            let mut next = || parts.next().ok_or_else(|| anyhow!("qkv split"));
            (next()?, next()?, next()?)
        } else {
            (
                linear_of(weight("attn_q")?)?,
                linear_of(weight("attn_k")?)?,
                linear_of(weight("attn_v")?)?,
            )
        };
        let o = linear_of(weight("attn_output")?)?;
        let (gate, up) = if !c.family.gated_mlp() {
            (None, linear_of(weight("ffn_up")?)?)
        } else if has(&n("ffn_gate.weight")) {
            (
                Some(linear_of(weight("ffn_gate")?)?),
                linear_of(weight("ffn_up")?)?,
            )
        } else {
            // Phi-3: gate and up fused in `ffn_up`, gate first.
            let mut parts = split(weight("ffn_up")?, &[i, i])?.into_iter();
            let g = parts.next().ok_or_else(|| anyhow!("gate/up split"))?;
            let u = parts.next().ok_or_else(|| anyhow!("gate/up split"))?;
            (Some(g), u)
        };
        let down = linear_of(weight("ffn_down")?)?;
        layers.push(Layer {
            attn_norm,
            q: Linear::new(q, qb)?,
            k: Linear::new(k, kb)?,
            v: Linear::new(v, vb)?,
            o: Linear::new(o, ob)?,
            q_norm,
            k_norm,
            post_attn_norm,
            ffn_norm,
            post_ffn_norm,
            gate: gate.map(|g| Linear::new(g, None)).transpose()?,
            up: Linear::new(up, upb)?,
            down: Linear::new(down, downb)?,
        });
    }
    let w = dense(get("output_norm.weight")?)?;
    let b = if has("output_norm.bias") {
        Some(dense(get("output_norm.bias")?)?)
    } else {
        None
    };
    Ok(Parts {
        embed,
        positions,
        layers,
        norm: Norm::new(w, b)?,
        lm_head,
    })
}
