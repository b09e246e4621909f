//! A Llama-family decoder owned by vlmbench, built from candle's kernels, with a preallocated
//! KV cache.
//!
//! Why not `candle_transformers::models::llama`: its cache concatenates the whole cache every
//! step (`Tensor::cat`), which costs time that grows with the sequence and would be measured as
//! the model's. Here each layer's keys and values live in one buffer of fixed capacity, written
//! in place (`slice_set`) and read as a narrowed view.
//!
//! API: [`LlamaModel::from_hf`] (safetensors through a `VarBuilder`, any name prefix, so LLaVA
//! checkpoints can hold the language model under `language_model.`), [`LlamaModel::from_gguf`]
//! (llama.cpp's GGUF, quantised matmuls kept quantised), [`LlamaModel::embed_tokens`],
//! [`LlamaModel::forward_embeds`] (appends to a [`KvCache`], returns last-position logits) and
//! [`LlamaModel::new_cache`].
//!
//! Rotary embeddings: Hugging Face checkpoints rotate the two halves of each head
//! (`rotate_half`); llama.cpp's converter permutes the q/k rows so GGUF models rotate
//! interleaved pairs. The model picks the variant from the source.

use std::collections::HashMap;
use std::io::{Read, Seek};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::gemv;
use crate::profile;

/// Shape and numerics of a Llama model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// `rope_scaling` variants from config.json that change the frequencies.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// transformers' defaults for configs that omit keys, by `model_type`.
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
        }
        _ => return None,
    }
    Some(d)
}

fn get_usize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(Value::as_u64).map(|x| x as usize)
}

/// Token ids from a JSON int or list of ints.
pub fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl LlamaConfig {
    /// Reads a Hugging Face `config.json` (or a LLaVA `text_config`).
    ///
    /// Keys a LLaVA `text_config` leaves out take transformers' defaults for its `model_type`
    /// (llava-hf configs list only what differs from `LlamaConfig()` / `MistralConfig()`).
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let defaults = model_type_defaults(v.get("model_type").and_then(Value::as_str));
        let merged;
        let v = match defaults {
            Some(Value::Object(mut d)) => {
                if let Some(obj) = v.as_object() {
                    for (k, x) in obj {
                        if !x.is_null() || !d.contains_key(k) {
                            d.insert(k.clone(), x.clone());
                        }
                    }
                }
                merged = Value::Object(d);
                &merged
            }
            _ => v,
        };
        let need = |k: &str| {
            get_usize(v, k).ok_or_else(|| anyhow!("config.json: missing or invalid `{k}`"))
        };
        let hidden_size = need("hidden_size")?;
        let num_heads = need("num_attention_heads")?;
        // transformers 5 moved `rope_theta` and `rope_scaling` into `rope_parameters`.
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        let rope_scaling = match v
            .get("rope_scaling")
            .filter(|s| s.is_object())
            .or(rope_params)
        {
            Some(s) if s.is_object() => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let f = |k: &str, d: f64| s.get(k).and_then(Value::as_f64).unwrap_or(d);
                match kind {
                    "linear" => Some(RopeScaling::Linear { factor: f("factor", 1.0) }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: f("factor", 8.0),
                        low_freq_factor: f("low_freq_factor", 1.0),
                        high_freq_factor: f("high_freq_factor", 4.0),
                        original_max_position_embeddings: f("original_max_position_embeddings", 8192.0),
                    }),
                    "default" | "" => None,
                    other => bail!("config.json: rope_scaling type {other:?} is not supported (supported: linear, llama3)"),
                }
            }
            _ => None,
        };
        Ok(Self {
            hidden_size,
            intermediate_size: need("intermediate_size")?,
            num_layers: need("num_hidden_layers")?,
            num_heads,
            num_kv_heads: get_usize(v, "num_key_value_heads").unwrap_or(num_heads),
            head_dim: get_usize(v, "head_dim").unwrap_or(hidden_size / num_heads),
            vocab_size: need("vocab_size")?,
            max_position_embeddings: get_usize(v, "max_position_embeddings").unwrap_or(4096),
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6),
            rope_theta: v
                .get("rope_theta")
                .and_then(Value::as_f64)
                .or_else(|| rope_params.and_then(|p| p.get("rope_theta")?.as_f64()))
                .unwrap_or(10_000.0),
            rope_scaling,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: ids_of(v.get("bos_token_id")).first().copied(),
            eos_token_ids: ids_of(v.get("eos_token_id")),
        })
    }

    /// Reads llama.cpp's GGUF metadata (`llama.*` keys).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "llama".into());
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| -> Result<usize> {
            md.get(&key(k))
                .ok_or_else(|| anyhow!("GGUF metadata `{}` is missing", key(k)))?
                .to_u32()
                .map(|x| x as usize)
                .map_err(|e| anyhow!("GGUF metadata `{}`: {e}", key(k)))
        };
        let f = |k: &str, d: f64| {
            md.get(&key(k))
                .and_then(|v| v.to_f32().ok())
                .map(f64::from)
                .unwrap_or(d)
        };
        let hidden_size = u("embedding_length")?;
        let num_heads = u("attention.head_count")?;
        let vocab_size = match md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
        {
            Some(t) => t.len(),
            None => content
                .tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims()[0])
                .ok_or_else(|| anyhow!("GGUF: no vocabulary and no token_embd.weight"))?,
        };
        let tok_u32 = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        Ok(Self {
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_layers: u("block_count")?,
            num_heads,
            num_kv_heads: u("attention.head_count_kv").unwrap_or(num_heads),
            head_dim: u("attention.key_length").unwrap_or(hidden_size / num_heads),
            vocab_size,
            max_position_embeddings: u("context_length").unwrap_or(4096),
            rms_norm_eps: f("attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta: f("rope.freq_base", 10_000.0),
            rope_scaling: None,
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            bos_token_id: tok_u32("tokenizer.ggml.bos_token_id"),
            eos_token_ids: tok_u32("tokenizer.ggml.eos_token_id").into_iter().collect(),
        })
    }

    /// Parameter count (embeddings and head included).
    pub fn parameters(&self) -> u64 {
        let (h, i, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let layer = h * q * 2 + h * kv * 2 + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_layers as u64 * layer + h + head
    }

    /// Inverse frequencies per rotary pair, with `rope_scaling` applied.
    fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64);
                let f = match &self.rope_scaling {
                    None => f,
                    Some(RopeScaling::Linear { factor }) => f / factor,
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    }) => {
                        let low_wavelen = original_max_position_embeddings / low_freq_factor;
                        let high_wavelen = original_max_position_embeddings / high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original_max_position_embeddings / wavelen
                                - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                };
                f as f32
            })
            .collect()
    }
}

/// A projection: dense weights (safetensors) or llama.cpp-quantised blocks (GGUF).
#[derive(Debug, Clone)]
enum Linear {
    /// (out, in) weight.
    Dense(Tensor),
    Quant(QMatMul),
}

impl Linear {
    /// The weight as the CPU decode kernels see it.
    fn decode_weight(&self) -> gemv::Weight<'_> {
        match self {
            Linear::Dense(w) | Linear::Quant(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => {
                gemv::Weight::Dense(w)
            }
            Linear::Quant(QMatMul::QTensor(t)) => gemv::Weight::Quantized(t),
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, i) = x.dims3()?;
        // One token on the CPU: the bandwidth-bound matrix-vector kernels.
        if b * s == 1 {
            if let Some(y) = gemv::matvec_one(x, self.decode_weight())? {
                return Ok(y);
            }
        }
        // Several rows on the CPU: the tiled GEMM that widens the weight a tile at a time.
        if let Some(y) = super::prefill::matmul(x, self.decode_weight())? {
            return Ok(y);
        }
        match self {
            Linear::Dense(w) => dense_matmul(x, w, (b, s, i)),
            Linear::Quant(q) => {
                // Prefill on the CPU: candle's quantised matmul runs many rows about 4x
                // slower than widening the block to f32 and using the dense GEMM.
                if let QMatMul::QTensor(t) = q {
                    if b * s > 1 && t.device().is_cpu() {
                        let wide = match gemv::dequantize(t)? {
                            Some(w) => w,
                            None => t.dequantize(&t.device())?,
                        };
                        return dense_matmul(x, &wide, (b, s, i));
                    }
                }
                q.forward(x)
            }
        }
    }
}

/// Several projections of the same input (q/k/v, gate/up), each through [`Linear::forward`].
/// (One-token steps on the CPU fuse them instead: [`mlp`], `LlamaModel::decode_attention_cpu`.)
fn project<const N: usize>(x: &Tensor, linears: [&Linear; N]) -> candle_core::Result<[Tensor; N]> {
    let mut tensors = Vec::with_capacity(N);
    for l in linears {
        tensors.push(l.forward(x)?);
    }
    <[Tensor; N]>::try_from(tensors)
        .map_err(|_| candle_core::Error::Msg("projection count mismatch".into()))
}

/// `down(silu(gate(x)) · up(x))`. For one token on the CPU, gate and up run as one pass of the
/// decode kernels and the gating is applied to their rows directly.
fn mlp(layer: &Layer, x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, s, _) = x.dims3()?;
    if b * s == 1 {
        let weights = [layer.gate.decode_weight(), layer.up.decode_weight()];
        if let Some(outs) = gemv::matvec_many(x, &weights)? {
            if let Ok([mut gate, up]) = <[Vec<f32>; 2]>::try_from(outs) {
                for (g, u) in gate.iter_mut().zip(&up) {
                    *g = *g / (1.0 + (-*g).exp()) * u;
                }
                return layer.down.forward(&gemv::row_tensor(gate, x)?);
            }
        }
    }
    let [gate, up] = project(x, [&layer.gate, &layer.up])?;
    layer.down.forward(&(gate.silu()? * up)?)
}

/// `x · wᵀ` for `x` of `dims` `(batch, seq, in)`, returned in `x`'s dtype. Half-precision
/// weights under f32 activations on the CPU (GGUF f16, or f16/bf16 safetensors) are widened to
/// f32 for the product: the f32 GEMM is faster than candle's half-precision one on the CPU,
/// and the activations are not rounded to half precision on the way.
fn dense_matmul(
    x: &Tensor,
    w: &Tensor,
    (b, s, i): (usize, usize, usize),
) -> candle_core::Result<Tensor> {
    if x.dtype() == DType::F32 && w.dtype() != DType::F32 {
        if let Some(wide) = gemv::widen_to_f32(w)? {
            return x
                .reshape((b * s, i))?
                .matmul(&wide.t()?)?
                .reshape((b, s, ()));
        }
    }
    x.reshape((b * s, i))?
        .to_dtype(w.dtype())?
        .matmul(&w.t()?)?
        .to_dtype(x.dtype())?
        .reshape((b, s, ()))
}

#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The decoder.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    pub config: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    interleaved_rope: bool,
    device: Device,
    /// Activation dtype.
    dtype: DType,
}

/// The rotary angles of one position, `head_dim / 2` each.
struct RopeRow {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Keys and values of every layer, preallocated to `capacity` positions.
#[derive(Debug)]
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets the contents (the buffers are kept).
    pub fn reset(&mut self) {
        self.len = 0;
    }
    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        self.k
            .iter()
            .chain(&self.v)
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

impl LlamaModel {
    /// Builds from safetensors through `vb` rooted where `model.` and `lm_head.` live.
    pub fn from_hf(
        config: LlamaConfig,
        vb: VarBuilder,
        model_prefix: &str,
        lm_head_prefix: &str,
    ) -> Result<Self> {
        let c = &config;
        let vbm = vb.pp(model_prefix);
        let embed = vbm
            .get((c.vocab_size, c.hidden_size), "embed_tokens.weight")
            .context("loading embed_tokens")?;
        let q_out = c.num_heads * c.head_dim;
        let kv_out = c.num_kv_heads * c.head_dim;
        let lin = |vb: &VarBuilder, o: usize, i: usize, name: &str| -> Result<Linear> {
            Ok(Linear::Dense(
                vb.get((o, i), name)
                    .with_context(|| format!("loading {name}"))?,
            ))
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let vbl = vbm.pp(format!("layers.{l}"));
            let a = vbl.pp("self_attn");
            let m = vbl.pp("mlp");
            layers.push(Layer {
                attn_norm: vbl.get(c.hidden_size, "input_layernorm.weight")?,
                q: lin(&a, q_out, c.hidden_size, "q_proj.weight")?,
                k: lin(&a, kv_out, c.hidden_size, "k_proj.weight")?,
                v: lin(&a, kv_out, c.hidden_size, "v_proj.weight")?,
                o: lin(&a, c.hidden_size, q_out, "o_proj.weight")?,
                ffn_norm: vbl.get(c.hidden_size, "post_attention_layernorm.weight")?,
                gate: lin(&m, c.intermediate_size, c.hidden_size, "gate_proj.weight")?,
                up: lin(&m, c.intermediate_size, c.hidden_size, "up_proj.weight")?,
                down: lin(&m, c.hidden_size, c.intermediate_size, "down_proj.weight")?,
            });
        }
        let norm = vbm.get(c.hidden_size, "norm.weight")?;
        let lm_head = if c.tie_word_embeddings {
            Linear::Dense(embed.clone())
        } else {
            lin(
                &vb.pp(lm_head_prefix),
                c.vocab_size,
                c.hidden_size,
                "weight",
            )?
        };
        let device = vb.device().clone();
        let mut dtype = vb.dtype();
        let (mut embed, mut norm) = (embed, norm);
        if device.is_cpu() && matches!(dtype, DType::F16 | DType::BF16) {
            // On the CPU, half-precision weights are read as stored and widened in registers,
            // and the activations are f32 (as llama.cpp does with f16 GGUF weights): CPUs have
            // no fast half-precision arithmetic, and candle's f16 ops on the CPU run at a
            // fraction of its f32 speed.
            dtype = DType::F32;
            embed = embed.to_dtype(DType::F32)?;
            norm = norm.to_dtype(DType::F32)?;
            for layer in &mut layers {
                layer.attn_norm = layer.attn_norm.to_dtype(DType::F32)?;
                layer.ffn_norm = layer.ffn_norm.to_dtype(DType::F32)?;
            }
        }
        Self::assemble(config, embed, layers, norm, lm_head, false, device, dtype)
    }

    /// Builds from a GGUF file as llama.cpp writes it.
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let config = LlamaConfig::from_gguf(content)?;
        let mut get = |name: &str| -> Result<candle_core::quantized::QTensor> {
            content
                .tensor(reader, name, device)
                .with_context(|| format!("GGUF tensor `{name}`"))
        };
        let embed_q = get("token_embd.weight")?;
        let embed = embed_q.dequantize(device)?;
        let lm_head = if config.tie_word_embeddings {
            Linear::Quant(QMatMul::from_qtensor(embed_q)?)
        } else {
            Linear::Quant(QMatMul::from_qtensor(get("output.weight")?)?)
        };
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let mut q = |n: &str| -> Result<Linear> {
                let t = get(&format!("blk.{l}.{n}.weight"))?;
                Ok(match t.dtype() {
                    // candle would widen f16 to f32; kept as stored, decode reads half the bytes.
                    GgmlDType::F16 => Linear::Dense(t.dequantize_f16(device)?),
                    // Plain floats are dense weights: the decode kernels apply.
                    GgmlDType::F32 | GgmlDType::BF16 => Linear::Dense(t.dequantize(device)?),
                    _ => Linear::Quant(QMatMul::from_qtensor(t)?),
                })
            };
            let (wq, wk, wv, wo) = (q("attn_q")?, q("attn_k")?, q("attn_v")?, q("attn_output")?);
            let (gate, up, down) = (q("ffn_gate")?, q("ffn_up")?, q("ffn_down")?);
            layers.push(Layer {
                attn_norm: get(&format!("blk.{l}.attn_norm.weight"))?.dequantize(device)?,
                q: wq,
                k: wk,
                v: wv,
                o: wo,
                ffn_norm: get(&format!("blk.{l}.ffn_norm.weight"))?.dequantize(device)?,
                gate,
                up,
                down,
            });
        }
        let norm = get("output_norm.weight")?.dequantize(device)?;
        Self::assemble(
            config,
            embed,
            layers,
            norm,
            lm_head,
            true,
            device.clone(),
            DType::F32,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: LlamaConfig,
        embed: Tensor,
        layers: Vec<Layer>,
        norm: Tensor,
        lm_head: Linear,
        interleaved_rope: bool,
        device: Device,
        dtype: DType,
    ) -> Result<Self> {
        let inv = config.inv_freq();
        let half = inv.len();
        let max = config.max_position_embeddings;
        let inv = Tensor::from_vec(inv, (1, half), &device)?;
        let pos = Tensor::arange(0u32, max as u32, &device)?
            .to_dtype(DType::F32)?
            .reshape((max, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
            config,
            embed,
            layers,
            norm,
            lm_head,
            interleaved_rope,
            device,
            dtype,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// A cache for at most `capacity` positions (clamped to the context length).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let c = &self.config;
        let capacity = capacity.min(c.max_position_embeddings).max(1);
        let shape = (1, c.num_kv_heads, capacity, c.head_dim);
        let mut k = Vec::with_capacity(c.num_layers);
        let mut v = Vec::with_capacity(c.num_layers);
        for _ in 0..c.num_layers {
            k.push(Tensor::zeros(shape, self.dtype, &self.device)?);
            v.push(Tensor::zeros(shape, self.dtype, &self.device)?);
        }
        Ok(KvCache {
            k,
            v,
            len: 0,
            capacity,
        })
    }

    /// Token embeddings, `(seq, hidden)` in the activation dtype.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        let _span = profile::span("op", "embed");
        let ids = Tensor::new(ids, &self.device)?;
        Ok(self.embed.index_select(&ids, 0)?.to_dtype(self.dtype)?)
    }

    /// Runs `embeds` (`(seq, hidden)`) after what the cache holds; returns the logits of the
    /// last position, `(vocab,)` in f32.
    pub fn forward_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (seq, _) = embeds.dims2()?;
        let offset = cache.len;
        if offset + seq > cache.capacity {
            bail!(
                "sequence of {} tokens exceeds the KV cache capacity of {}",
                offset + seq,
                cache.capacity
            );
        }
        let c = &self.config;
        let mut x = embeds.unsqueeze(0)?;
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        let mask = if seq > 1 {
            Some(self.causal_mask(seq, offset)?)
        } else {
            None
        };
        // One token on the CPU in f32: the rotary angles of its position as plain rows, read
        // once for every layer's `decode_attention_cpu`.
        let decode_rope = if seq == 1 && self.device.is_cpu() && self.dtype == DType::F32 {
            Some(RopeRow {
                cos: cos.flatten_all()?.to_vec1()?,
                sin: sin.flatten_all()?.to_vec1()?,
            })
        } else {
            None
        };
        let eps = c.rms_norm_eps as f32;
        for (l, layer) in self.layers.iter().enumerate() {
            let _layer = profile::span_with("layer", || format!("layer {l}"));
            let h = {
                let _s = profile::span("op", "attn_norm");
                candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?
            };
            let attn = {
                let _s = profile::span("op", "attention");
                let fused = match &decode_rope {
                    Some(rope) => self.decode_attention_cpu(layer, &h, rope, cache, l, offset)?,
                    None => None,
                };
                match fused {
                    Some(out) => out,
                    None => {
                        self.attention(layer, &h, &cos, &sin, mask.as_ref(), cache, l, offset)?
                    }
                }
            };
            x = (x + attn)?;
            let h = {
                let _s = profile::span("op", "ffn_norm");
                candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?
            };
            let mlp = {
                let _s = profile::span("op", "mlp");
                mlp(layer, &h)?
            };
            x = (x + mlp)?;
        }
        cache.len = offset + seq;
        let _head = profile::span("op", "lm_head");
        let last = x.narrow(1, seq - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
        Ok(self
            .lm_head
            .forward(&last)?
            .flatten_all()?
            .to_dtype(DType::F32)?)
    }

    /// `(seq, offset + seq)` additive mask: position `offset + i` sees keys `0..=offset + i`.
    fn causal_mask(&self, seq: usize, offset: usize) -> Result<Tensor> {
        let total = offset + seq;
        let mask: Vec<f32> = (0..seq)
            .flat_map(|i| {
                (0..total).map(move |j| {
                    if j > offset + i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        Ok(Tensor::from_vec(mask, (seq, total), &self.device)?.to_dtype(self.dtype)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        l: usize,
        offset: usize,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (_, seq, _) = x.dims3()?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let [q, k, v] = project(x, [&layer.q, &layer.k, &layer.v])?;
        let q = q.reshape((1, seq, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let k = k
            .reshape((1, seq, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = v
            .reshape((1, seq, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let (q, k) = if self.interleaved_rope {
            (
                candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
                candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
            )
        } else {
            (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            )
        };
        cache.k[l].slice_set(&k, 2, offset)?;
        cache.v[l].slice_set(&v, 2, offset)?;
        let total = offset + seq;
        let scale = 1.0 / (hd as f64).sqrt();
        if seq == 1 {
            if let Some(out) =
                super::gemv::decode_attention(&q, &cache.k[l], &cache.v[l], total, scale as f32)?
            {
                return Ok(layer.o.forward(&out)?);
            }
        }
        let keys = cache.k[l].narrow(2, 0, total)?;
        let values = cache.v[l].narrow(2, 0, total)?;
        // Grouped-query attention without copying K/V per head: fold each group of query heads
        // into the rows of its key/value head.
        let groups = nh / nkv;
        let q = q.reshape((nkv, groups * seq, hd))?;
        let keys = keys.squeeze(0)?;
        let values = values.squeeze(0)?;
        let scores = (q.matmul(&keys.t()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores
                .reshape((nkv, groups, seq, total))?
                .broadcast_add(m)?
                .reshape((nkv, groups * seq, total))?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
            .to_dtype(self.dtype)?;
        let out = probs.matmul(&values)?; // (nkv, groups*seq, hd)
        let out = out
            .reshape((1, nh, seq, hd))?
            .transpose(1, 2)?
            .reshape((1, seq, nh * hd))?;
        Ok(layer.o.forward(&out)?)
    }

    /// One token's attention on the CPU in f32 without intermediate tensors: q/k/v as one pass
    /// of the decode kernels, rotary embedding applied to the rows in place, keys and values
    /// written into the cache, attention read straight from the cache buffers. Why: the
    /// general path is a dozen small tensor operations per layer (reshapes, copies, two rope
    /// calls that each dispatch to the thread pool), which for one token cost a noticeable
    /// share of the step. `None` when the weights are of a layout the kernels do not read.
    fn decode_attention_cpu(
        &self,
        layer: &Layer,
        x: &Tensor,
        rope: &RopeRow,
        cache: &mut KvCache,
        l: usize,
        offset: usize,
    ) -> Result<Option<Tensor>> {
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let weights = [&layer.q, &layer.k, &layer.v].map(Linear::decode_weight);
        let Some(outs) = gemv::matvec_many(x, &weights)? else {
            return Ok(None);
        };
        let Ok([mut q, mut k, v]) = <[Vec<f32>; 3]>::try_from(outs) else {
            return Ok(None);
        };
        gemv::rope_in_place(&mut q, hd, &rope.cos, &rope.sin, self.interleaved_rope);
        gemv::rope_in_place(&mut k, hd, &rope.cos, &rope.sin, self.interleaved_rope);
        let k = Tensor::from_vec(k, (1, nkv, 1, hd), &self.device)?;
        let v = Tensor::from_vec(v, (1, nkv, 1, hd), &self.device)?;
        cache.k[l].slice_set(&k, 2, offset)?;
        cache.v[l].slice_set(&v, 2, offset)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let Some(out) =
            gemv::decode_attention_rows(&q, nh, &cache.k[l], &cache.v[l], offset + 1, scale)?
        else {
            bail!("decode attention: the KV cache is not an f32 CPU buffer");
        };
        let out = Tensor::from_vec(out, (1, 1, nh * hd), &self.device)?;
        Ok(Some(layer.o.forward(&out)?))
    }
}

/// Rows of a HF q/k projection permuted into llama.cpp's GGUF order (the inverse of what its
/// converter undoes): within each head, interleave the two halves.
pub fn permute_for_gguf(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    Ok(w.reshape((heads, 2, out / heads / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// The files an index (`*.index.json`) names in its `weight_map`, sorted, each once.
pub fn shard_files(index: &Value) -> Vec<String> {
    let mut files: Vec<String> = index["weight_map"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.dedup();
    files
}

/// Loads every `*.safetensors` of a checkpoint (single file or sharded with an index).
pub fn safetensor_files(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v: Value = serde_json::from_slice(&std::fs::read(&index)?)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        if !v.get("weight_map").is_some_and(Value::is_object) {
            bail!("{}: no `weight_map`", index.display());
        }
        return shard_files(&v)
            .into_iter()
            .map(|f| {
                let p = dir.join(&f);
                if p.is_file() {
                    Ok(p)
                } else {
                    bail!(
                        "{} names shard {f}, which is missing in {}",
                        index.display(),
                        dir.display()
                    )
                }
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    bail!(
        "no weights in {}: looked for model.safetensors and model.safetensors.index.json",
        dir.display()
    )
}

/// Named tensors, as the random presets build them.
pub type Weights = HashMap<String, Tensor>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::synth::llama_preset;

    fn tiny() -> (LlamaModel, Weights) {
        let shape = llama_preset("tiny-llama").unwrap();
        let w = shape
            .random_weights(3, DType::F32, &Device::Cpu, "")
            .unwrap();
        let cfg = LlamaConfig::from_hf_json(&shape.hf_config(DType::F32)).unwrap();
        let vb = VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
        (LlamaModel::from_hf(cfg, vb, "model", "lm_head").unwrap(), w)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn incremental_decode_equals_full_forward() {
        let (m, _) = tiny();
        let ids: Vec<u32> = vec![1, 50, 300, 7, 99, 512, 3, 1000];
        let mut full = m.new_cache(64).unwrap();
        let want = m
            .forward_embeds(&m.embed_tokens(&ids).unwrap(), &mut full)
            .unwrap();
        let mut inc = m.new_cache(64).unwrap();
        m.forward_embeds(&m.embed_tokens(&ids[..5]).unwrap(), &mut inc)
            .unwrap();
        let mut got = None;
        for &t in &ids[5..] {
            got = Some(
                m.forward_embeds(&m.embed_tokens(&[t]).unwrap(), &mut inc)
                    .unwrap(),
            );
        }
        assert_eq!(inc.len(), 8);
        assert!(max_diff(&want, &got.unwrap()) < 1e-4);
        // Reset reuses the buffers and gives the same answer again.
        inc.reset();
        let again = m
            .forward_embeds(&m.embed_tokens(&ids).unwrap(), &mut inc)
            .unwrap();
        assert!(max_diff(&want, &again) < 1e-5);
    }

    /// Half-precision weights on the CPU keep f32 activations and compute what the f32 model of
    /// the same (rounded) weights computes, prefill and decode steps alike.
    #[test]
    fn half_weights_on_the_cpu_run_f32_activations() {
        let shape = llama_preset("tiny-llama").unwrap();
        let w = shape
            .random_weights(3, DType::F32, &Device::Cpu, "")
            .unwrap();
        let cfg = LlamaConfig::from_hf_json(&shape.hf_config(DType::F32)).unwrap();
        for dt in [DType::F16, DType::BF16] {
            let rounded: Weights = w
                .iter()
                .map(|(k, t)| {
                    (
                        k.clone(),
                        t.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap(),
                    )
                })
                .collect();
            let vb = VarBuilder::from_tensors(rounded.clone(), dt, &Device::Cpu);
            let half = LlamaModel::from_hf(cfg.clone(), vb, "model", "lm_head").unwrap();
            assert_eq!(half.dtype(), DType::F32);
            let vb = VarBuilder::from_tensors(rounded, DType::F32, &Device::Cpu);
            let full = LlamaModel::from_hf(cfg.clone(), vb, "model", "lm_head").unwrap();
            let (mut ch, mut cf) = (half.new_cache(16).unwrap(), full.new_cache(16).unwrap());
            for ids in [&[1u32, 50, 300, 7][..], &[99], &[512]] {
                let a = half
                    .forward_embeds(&half.embed_tokens(ids).unwrap(), &mut ch)
                    .unwrap();
                let b = full
                    .forward_embeds(&full.embed_tokens(ids).unwrap(), &mut cf)
                    .unwrap();
                assert!(max_diff(&a, &b) < 1e-4, "{dt:?}: {}", max_diff(&a, &b));
            }
        }
    }

    #[test]
    fn cache_capacity_is_enforced() {
        let (m, _) = tiny();
        let mut cache = m.new_cache(4).unwrap();
        let err = m
            .forward_embeds(&m.embed_tokens(&[1, 2, 3, 4, 5]).unwrap(), &mut cache)
            .unwrap_err();
        assert!(err.to_string().contains("capacity"));
    }

    /// The same weights written as GGUF (q/k permuted as llama.cpp's converter does) give the
    /// same logits through the interleaved-rope path.
    #[test]
    fn gguf_matches_safetensors() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let (m, w) = tiny();
        let c = &m.config;
        let q = |t: &Tensor| QTensor::quantize(t, GgmlDType::F32).unwrap();
        let mut tensors: Vec<(String, QTensor)> = vec![
            (
                "token_embd.weight".into(),
                q(&w["model.embed_tokens.weight"]),
            ),
            ("output_norm.weight".into(), q(&w["model.norm.weight"])),
            ("output.weight".into(), q(&w["lm_head.weight"])),
        ];
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let g = |n: &str| format!("blk.{l}.{n}.weight");
            tensors.push((
                g("attn_q"),
                q(
                    &permute_for_gguf(&w[&format!("{p}.self_attn.q_proj.weight")], c.num_heads)
                        .unwrap(),
                ),
            ));
            tensors.push((
                g("attn_k"),
                q(
                    &permute_for_gguf(&w[&format!("{p}.self_attn.k_proj.weight")], c.num_kv_heads)
                        .unwrap(),
                ),
            ));
            tensors.push((g("attn_v"), q(&w[&format!("{p}.self_attn.v_proj.weight")])));
            tensors.push((
                g("attn_output"),
                q(&w[&format!("{p}.self_attn.o_proj.weight")]),
            ));
            tensors.push((g("ffn_gate"), q(&w[&format!("{p}.mlp.gate_proj.weight")])));
            tensors.push((g("ffn_up"), q(&w[&format!("{p}.mlp.up_proj.weight")])));
            tensors.push((g("ffn_down"), q(&w[&format!("{p}.mlp.down_proj.weight")])));
            tensors.push((
                g("attn_norm"),
                q(&w[&format!("{p}.input_layernorm.weight")]),
            ));
            tensors.push((
                g("ffn_norm"),
                q(&w[&format!("{p}.post_attention_layernorm.weight")]),
            ));
        }
        use gguf_file::Value as V;
        let md: Vec<(&str, V)> = vec![
            ("general.architecture", V::String("llama".into())),
            ("llama.embedding_length", V::U32(c.hidden_size as u32)),
            (
                "llama.feed_forward_length",
                V::U32(c.intermediate_size as u32),
            ),
            ("llama.block_count", V::U32(c.num_layers as u32)),
            ("llama.attention.head_count", V::U32(c.num_heads as u32)),
            (
                "llama.attention.head_count_kv",
                V::U32(c.num_kv_heads as u32),
            ),
            (
                "llama.context_length",
                V::U32(c.max_position_embeddings as u32),
            ),
            (
                "llama.attention.layer_norm_rms_epsilon",
                V::F32(c.rms_norm_eps as f32),
            ),
            ("llama.rope.freq_base", V::F32(c.rope_theta as f32)),
        ];
        let mut buf = std::io::Cursor::new(Vec::new());
        let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (*k, v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut buf, &md_refs, &t_refs).unwrap();
        buf.set_position(0);
        let content = gguf_file::Content::read(&mut buf).unwrap();
        let g = LlamaModel::from_gguf(&content, &mut buf, &Device::Cpu).unwrap();
        assert_eq!(g.config.num_layers, c.num_layers);
        let ids = [1u32, 20, 30, 40, 50];
        let (mut ca, mut cb) = (m.new_cache(16).unwrap(), g.new_cache(16).unwrap());
        let a = m
            .forward_embeds(&m.embed_tokens(&ids).unwrap(), &mut ca)
            .unwrap();
        let b = g
            .forward_embeds(&g.embed_tokens(&ids).unwrap(), &mut cb)
            .unwrap();
        assert!(max_diff(&a, &b) < 1e-4, "{}", max_diff(&a, &b));
        // Decode steps (the one-token path, interleaved rope on the GGUF side) agree too.
        for t in [7u32, 99, 3] {
            let a = m
                .forward_embeds(&m.embed_tokens(&[t]).unwrap(), &mut ca)
                .unwrap();
            let b = g
                .forward_embeds(&g.embed_tokens(&[t]).unwrap(), &mut cb)
                .unwrap();
            assert!(max_diff(&a, &b) < 1e-4, "decode: {}", max_diff(&a, &b));
        }
    }
}
