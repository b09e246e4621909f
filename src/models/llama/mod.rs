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
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use serde_json::Value;

pub mod family;
pub mod weights;

pub use self::family::{Activation, Family, NormKind};
use super::fast_exp;
use super::gemv;
use super::kernels::KernelSet;
use super::kquants::rows8::Interleaved;
use super::kquants::QuantFormat;
pub use super::rope::RopeScaling;
use super::rope::RopeSpec;
use crate::profile;
use std::sync::atomic::{AtomicBool, Ordering};

/// A forward pass gave up between layers because it was asked to stop (Ctrl-C).
#[derive(Debug, thiserror::Error)]
#[error("stopped between layers")]
pub struct Stopped;

/// Shape and numerics of a decoder of any supported family (see [`Family`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    /// Epsilon of the normalisation layers (RMSNorm or LayerNorm).
    pub rms_norm_eps: f64,
    /// Rotary base and scaling of global-attention layers.
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// Rotating dimensions of each head (`head_dim × partial_rotary_factor`); 0 without rotary.
    pub rotary_dim: usize,
    /// Rotary base and scaling of sliding-window layers where they differ (Gemma 3).
    pub local_rope: Option<(f64, Option<RopeScaling>)>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Biases on the q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub out_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm of each head's queries and keys before the rotation (Qwen3, Gemma 3).
    pub qk_norm: bool,
    pub norm: NormKind,
    pub activation: Activation,
    /// Norms after attention and after the MLP as well as before (Gemma 2/3).
    pub sandwich_norms: bool,
    /// Token embeddings multiplied by this (Gemma: √hidden).
    pub embed_scale: Option<f64>,
    /// Multiplier of q·k (1/√head_dim, or Gemma's `query_pre_attn_scalar`^-½).
    pub attn_scale: f64,
    /// `tanh(s / c) · c` on attention scores / final logits (Gemma 2).
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// Keys a query sees on sliding-window layers, itself included.
    pub sliding_window: Option<usize>,
    /// Per layer: whether the sliding window applies.
    pub sliding_layers: Vec<bool>,
    /// `x + attn(ln1(x)) + mlp(ln2(x))` (GPT-NeoX).
    pub parallel_residual: bool,
    /// Learned absolute position embeddings added to the tokens' (GPT-2).
    pub learned_positions: bool,
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
    /// Reads a Hugging Face `config.json` of any supported family (or a LLaVA `text_config`).
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        self::family::parse_hf_config(v)
    }

    /// Reads llama.cpp's GGUF metadata (see [`self::weights::config_from_gguf`]).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        self::weights::config_from_gguf(content)
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
        let b = |on: bool, n: u64| if on { n } else { 0 };
        let norm = if self.norm == NormKind::LayerNorm {
            2 * h
        } else {
            h
        };
        let mlp = if self.family.gated_mlp() {
            3 * h * i + b(self.mlp_bias, 2 * i + h)
        } else {
            2 * h * i + b(self.mlp_bias, i + h)
        };
        let norms = norm * if self.sandwich_norms { 4 } else { 2 }
            + if self.qk_norm {
                2 * self.head_dim as u64
            } else {
                0
            };
        let layer = h * q * 2
            + h * kv * 2
            + b(self.qkv_bias, q + 2 * kv)
            + b(self.out_bias, h)
            + mlp
            + norms;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        let positions = if self.learned_positions {
            self.max_position_embeddings as u64 * h
        } else {
            0
        };
        v * h + positions + self.num_layers as u64 * layer + norm + head
    }
}

/// The weights of a projection: dense (safetensors, float GGUF) or llama.cpp-quantised blocks.
#[derive(Debug, Clone)]
pub(crate) enum LinearWeight {
    /// (out, in) weight.
    Dense(Tensor),
    Quant(QMatMul),
    /// K-quant rows repacked eight at a time for the CPU kernels (they replace the blocks).
    Interleaved(Arc<Interleaved>),
}

impl LinearWeight {
    /// A quantised tensor as the engine keeps it: the K-quants (Q4_K, Q5_K, Q6_K) on a CPU with
    /// the AVX2 set (or stronger) repacked eight rows at a time for the int8 kernels,
    /// everything else as is.
    pub(crate) fn quantized(t: QTensor) -> Result<Self> {
        let format = QuantFormat::from_ggml(t.dtype());
        if format.is_some_and(QuantFormat::wants_q8k)
            && t.device().is_cpu()
            && KernelSet::active() >= KernelSet::Avx2
        {
            if let (Ok((n, k)), Some(format)) = (t.shape().dims2(), format) {
                if let Some(packed) = Interleaved::repack(format, &t.data()?, n, k) {
                    return Ok(LinearWeight::Interleaved(Arc::new(packed)));
                }
            }
        }
        Ok(LinearWeight::Quant(QMatMul::from_qtensor(t)?))
    }
}

/// A projection, with its bias where the family has one.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: LinearWeight,
    /// The bias as a tensor (prefill) and as a row (the one-token CPU path).
    bias: Option<(Tensor, Vec<f32>)>,
}

impl Linear {
    pub(crate) fn new(weight: LinearWeight, bias: Option<Tensor>) -> Result<Self> {
        let bias = match bias {
            Some(b) => {
                let b = b.to_dtype(DType::F32)?;
                let row = b.flatten_all()?.to_vec1::<f32>()?;
                Some((b, row))
            }
            None => None,
        };
        Ok(Self { weight, bias })
    }

    pub(crate) fn dense(w: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Self::new(LinearWeight::Dense(w), bias)
    }

    /// Bytes a one-token product reads: the weight as stored (quantised blocks included) and
    /// the bias.
    fn stored_bytes(&self) -> u64 {
        let weight = match &self.weight {
            LinearWeight::Dense(w)
            | LinearWeight::Quant(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => {
                w.elem_count() * w.dtype().size_in_bytes()
            }
            LinearWeight::Quant(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            LinearWeight::Interleaved(w) => w.stored_bytes(),
        };
        (weight + self.bias.as_ref().map_or(0, |(_, row)| row.len() * 4)) as u64
    }

    /// Multiply-adds a one-token product does: the weight's element count.
    fn weight_elements(&self) -> u64 {
        (match &self.weight {
            LinearWeight::Dense(w)
            | LinearWeight::Quant(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => w.elem_count(),
            LinearWeight::Quant(QMatMul::QTensor(q)) => q.shape().elem_count(),
            LinearWeight::Interleaved(w) => w.rows() * w.cols(),
        }) as u64
    }

    /// The weight as the CPU decode kernels see it.
    fn decode_weight(&self) -> gemv::Weight<'_> {
        match &self.weight {
            LinearWeight::Dense(w)
            | LinearWeight::Quant(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => {
                gemv::Weight::Dense(w)
            }
            LinearWeight::Quant(QMatMul::QTensor(t)) => gemv::Weight::Quantized(t),
            LinearWeight::Interleaved(w) => gemv::Weight::Interleaved(w),
        }
    }

    /// Adds the bias to a row the decode kernels computed.
    fn add_bias_row(&self, row: &mut [f32]) {
        if let Some((_, b)) = &self.bias {
            for (x, b) in row.iter_mut().zip(b) {
                *x += b;
            }
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.forward_weight(x)?;
        match &self.bias {
            Some((b, _)) => y.broadcast_add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }

    fn forward_weight(&self, x: &Tensor) -> candle_core::Result<Tensor> {
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
        match &self.weight {
            LinearWeight::Dense(w) => dense_matmul(x, w, (b, s, i)),
            // The kernels decline only inputs that are not f32 rows on the CPU: widen the rows
            // (every row of a repacked weight widens to its original values).
            LinearWeight::Interleaved(w) => match gemv::dequantize(gemv::Weight::Interleaved(w))? {
                Some(wide) => dense_matmul(x, &wide, (b, s, i)),
                None => candle_core::bail!("an interleaved weight always widens"),
            },
            LinearWeight::Quant(q) => {
                // Prefill on the CPU: candle's quantised matmul runs many rows about 4x
                // slower than widening the block to f32 and using the dense GEMM.
                if let QMatMul::QTensor(t) = q {
                    if b * s > 1 && t.device().is_cpu() {
                        let wide = match gemv::dequantize(gemv::Weight::Quantized(t))? {
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

    /// `m` rows of activations `xs` `(m, in)` through the CPU prefill product, bias added, as
    /// `(m, out)` rows; `None` where the kernels do not read the weight.
    fn forward_rows(&self, xs: &[f32], m: usize) -> candle_core::Result<Option<Vec<f32>>> {
        let Some(mut out) = super::prefill::product_rows(xs, m, self.decode_weight())? else {
            return Ok(None);
        };
        if let Some((_, b)) = &self.bias {
            for row in out.chunks_exact_mut(b.len()) {
                self.add_bias_row(row);
            }
        }
        Ok(Some(out))
    }

    /// Several projections of the same input as one pass of the CPU decode kernels, biases
    /// added; `None` where the kernels do not read the operands.
    fn decode_many<const N: usize>(
        x: &Tensor,
        linears: [&Linear; N],
    ) -> candle_core::Result<Option<[Vec<f32>; N]>> {
        let weights = linears.map(Linear::decode_weight);
        let Some(outs) = gemv::matvec_many(x, &weights)? else {
            return Ok(None);
        };
        let Ok(mut outs) = <[Vec<f32>; N]>::try_from(outs) else {
            return Ok(None);
        };
        for (row, l) in outs.iter_mut().zip(linears) {
            l.add_bias_row(row);
        }
        Ok(Some(outs))
    }
}

/// A normalisation layer: RMSNorm (weight as applied, so Gemma's `1 + w` is stored added) or
/// LayerNorm (with bias).
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    /// The weight as a row, for the per-head q/k norms of the one-token CPU path.
    row: Vec<f32>,
}

impl Norm {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let weight = weight.to_dtype(DType::F32)?;
        let row = weight.flatten_all()?.to_vec1::<f32>()?;
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        Ok(Self { weight, bias, row })
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            weight: self.weight.to_dtype(dtype)?,
            bias: self.bias.as_ref().map(|b| b.to_dtype(dtype)).transpose()?,
            row: self.row.clone(),
        })
    }

    fn forward(&self, x: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
        match &self.bias {
            // Several rows on the CPU in f32: plain loops over rows, split over the pool (the
            // tensor operation cost as much as a small projection).
            None if x.device().is_cpu()
                && x.dtype() == DType::F32
                && x.elem_count() > self.row.len() =>
            {
                let mut rows: Vec<f32> = x.flatten_all()?.to_vec1()?;
                let d = self.row.len().max(1);
                rows.par_chunks_mut(d * 16)
                    .for_each(|rows| self.rms_rows(rows, eps));
                Tensor::from_vec(rows, x.shape(), x.device())
            }
            None => candle_nn::ops::rms_norm(x, &self.weight, eps),
            Some(b) => candle_nn::ops::layer_norm(x, &self.weight, b, eps),
        }
    }

    /// RMSNorm of each chunk of `x` as long as the weight in place (per head for q/k norms,
    /// per token for the layer norms).
    fn rms_rows(&self, x: &mut [f32], eps: f32) {
        let d = self.row.len();
        for head in x.chunks_exact_mut(d) {
            let mean = head.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let r = 1.0 / (mean + eps).sqrt();
            for (v, w) in head.iter_mut().zip(&self.row) {
                *v = *v * r * w;
            }
        }
    }
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

/// The MLP's activation on a tensor.
fn activate(x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    match act {
        Activation::Silu => x.silu(),
        Activation::GeluTanh => x.gelu(),
        Activation::Gelu => x.gelu_erf(),
    }
}

/// The MLP's activation on one value (the one-token CPU path).
fn activate_one(x: f32, act: Activation) -> f32 {
    match act {
        Activation::Silu => fast_exp::silu(x),
        Activation::GeluTanh => {
            let c = (2.0f32 / std::f32::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * x * (1.0 + 0.044715 * x * x)).tanh())
        }
        Activation::Gelu => {
            let v = f64::from(x);
            (0.5 * v * (1.0 + candle_core::cpu::erf::erf_f64(v / std::f64::consts::SQRT_2))) as f32
        }
    }
}

/// One decoder block's weights.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub(crate) attn_norm: Norm,
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
    pub(crate) q_norm: Option<Norm>,
    pub(crate) k_norm: Option<Norm>,
    /// Gemma's norm of the attention output before the residual.
    pub(crate) post_attn_norm: Option<Norm>,
    /// The norm before the MLP.
    pub(crate) ffn_norm: Norm,
    /// Gemma's norm of the MLP output before the residual.
    pub(crate) post_ffn_norm: Option<Norm>,
    /// `None` for ungated MLPs (`down(act(up(x)))`).
    pub(crate) gate: Option<Linear>,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

impl Layer {
    fn norms_to(&mut self, dtype: DType) -> Result<()> {
        for n in [
            Some(&mut self.attn_norm),
            self.q_norm.as_mut(),
            self.k_norm.as_mut(),
            self.post_attn_norm.as_mut(),
            Some(&mut self.ffn_norm),
            self.post_ffn_norm.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            *n = n.to_dtype(dtype)?;
        }
        Ok(())
    }
}

/// The weights of a whole decoder, as a loader assembles them.
pub(crate) struct Parts {
    pub(crate) embed: Tensor,
    pub(crate) positions: Option<Tensor>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Norm,
    pub(crate) lm_head: Linear,
}

/// Bytes one decode step reads (see [`LlamaModel::decode_read_bytes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeBytes {
    pub weights: u64,
    pub kv: u64,
}

/// The decoder of every supported text family (see [`Family`]).
#[derive(Debug, Clone)]
pub struct LlamaModel {
    pub config: LlamaConfig,
    embed: Tensor,
    /// Learned absolute positions (GPT-2).
    positions: Option<Tensor>,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Linear,
    /// Rotary parameters of global and of sliding-window layers.
    ropes: [RopeSpec; 2],
    interleaved_rope: bool,
    device: Device,
    /// Activation dtype.
    dtype: DType,
    /// The KV cache's dtype: the activation dtype unless set ([`Self::set_kv_dtype`]).
    kv_dtype: Option<DType>,
}

/// The rotary angles of one forward call for one kind of layer: rows (one-token CPU path)
/// and tensors `(seq, rotary_dim / 2)` (general path).
struct Angles {
    cos_row: Vec<f32>,
    sin_row: Vec<f32>,
    cos: Tensor,
    sin: Tensor,
}

/// Keys and values of every layer, preallocated to `capacity` positions.
#[derive(Debug)]
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
    /// Rotary angles `(cos, sin)`, `seq × rotary_dim / 2` row-major, for the next forward's
    /// tokens when their positions are not their cache slots (see [`KvCache::set_rotary`]).
    pending_rotary: Option<(Vec<f32>, Vec<f32>)>,
    /// Cache slot `i` rotates as position `i + position_shift`.
    position_shift: i64,
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
    /// Forgets the contents (the buffers are kept) and any rotary positions set.
    pub fn reset(&mut self) {
        self.len = 0;
        self.pending_rotary = None;
        self.position_shift = 0;
    }
    /// Positions that are not the cache slots (Qwen2-VL's multimodal rotary, M-RoPE): the next
    /// forward's tokens rotate by `cos` / `sin` (`seq × rotary_dim / 2`, row-major), and every
    /// token after them at slot `i` as position `i + shift`.
    pub fn set_rotary(&mut self, cos: Vec<f32>, sin: Vec<f32>, shift: i64) {
        self.pending_rotary = Some((cos, sin));
        self.position_shift = shift;
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
    /// Builds from safetensors through `vb` rooted where `model.` and `lm_head.` live
    /// (the prefixes of Llama-style checkpoints; other families' names are found from the
    /// config's family).
    pub fn from_hf(
        config: LlamaConfig,
        vb: VarBuilder,
        model_prefix: &str,
        lm_head_prefix: &str,
    ) -> Result<Self> {
        let parts = self::weights::load_hf(&config, &vb, model_prefix, lm_head_prefix)?;
        let device = vb.device().clone();
        let mut dtype = vb.dtype();
        if device.is_cpu() && matches!(dtype, DType::F16 | DType::BF16) {
            // On the CPU, half-precision weights are read as stored and widened in registers,
            // and the activations are f32 (as llama.cpp does with f16 GGUF weights): CPUs have
            // no fast half-precision arithmetic, and candle's f16 ops on the CPU run at a
            // fraction of its f32 speed.
            dtype = DType::F32;
        }
        Self::assemble(config, parts, false, device, dtype)
    }

    /// Builds from a GGUF file as llama.cpp's converter writes it.
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let mut config = LlamaConfig::from_gguf(content)?;
        if let Some(longrope) = self::weights::gguf_longrope(&config, content, reader)? {
            config.rope_scaling = Some(longrope);
            config.validate()?;
        }
        let parts = self::weights::load_gguf(&config, content, reader, device)?;
        // llama.cpp's converter permutes q/k rows (interleaved rotation) only for `llama`.
        let interleaved = config.family.gguf_arch() == "llama";
        Self::assemble(config, parts, interleaved, device.clone(), DType::F32)
    }

    fn assemble(
        config: LlamaConfig,
        parts: Parts,
        interleaved_rope: bool,
        device: Device,
        dtype: DType,
    ) -> Result<Self> {
        let Parts {
            embed,
            positions,
            mut layers,
            norm,
            lm_head,
        } = parts;
        for layer in &mut layers {
            layer.norms_to(dtype)?;
        }
        let ropes = [config.rope_spec(false), config.rope_spec(true)];
        Ok(Self {
            embed: embed.to_dtype(dtype)?,
            positions: positions.map(|p| p.to_dtype(dtype)).transpose()?,
            norm: norm.to_dtype(dtype)?,
            config,
            layers,
            lm_head,
            ropes,
            interleaved_rope,
            device,
            dtype,
            kv_dtype: None,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype caches made from now on hold keys and values in.
    pub fn kv_dtype(&self) -> DType {
        self.kv_dtype.unwrap_or(self.dtype)
    }

    /// Keeps keys and values in `dtype` (f16 halves a long context's cache reads; the
    /// attention still computes in the activation dtype). Only f32 and f16 CPU caches and
    /// the activation dtype are read by the kernels.
    pub fn set_kv_dtype(&mut self, dtype: DType) -> Result<()> {
        let cpu_half = self.device.is_cpu() && self.dtype == DType::F32 && dtype == DType::F16;
        if dtype != self.dtype && !cpu_half {
            bail!(
                "a {} KV cache is not supported with {} activations on {:?} (supported: the activation dtype, or f16 with f32 activations on the CPU)",
                dtype.as_str(),
                self.dtype.as_str(),
                self.device
            );
        }
        self.kv_dtype = Some(dtype);
        Ok(())
    }

    /// A cache for at most `capacity` positions (clamped to the context length).
    /// What one decode step reads from memory with `context` positions in the KV cache:
    /// every projection's weight once (as stored), the LM head, one embedding row, and the
    /// keys and values each layer attends to (its window, on sliding-window layers). Norm
    /// weights and activations are left out (under 0.1 % of a real model's bytes).
    pub fn decode_read_bytes(&self, context: usize) -> DecodeBytes {
        let c = &self.config;
        let weights: u64 = self.projections().map(Linear::stored_bytes).sum::<u64>()
            + self.lm_head.stored_bytes()
            + (c.hidden_size * self.embed.dtype().size_in_bytes()) as u64;
        let per_position =
            (2 * c.num_kv_heads * c.head_dim * self.kv_dtype().size_in_bytes()) as u64;
        let kv: u64 = (0..c.num_layers)
            .map(|l| {
                let attended = match (c.sliding_layers.get(l), c.sliding_window) {
                    (Some(true), Some(w)) => context.min(w),
                    _ => context,
                };
                attended as u64 * per_position
            })
            .sum();
        DecodeBytes { weights, kv }
    }

    /// Every layer's projections (the gate only where the family has one).
    fn projections(&self) -> impl Iterator<Item = &Linear> {
        self.layers.iter().flat_map(|l| {
            [
                Some(&l.q),
                Some(&l.k),
                Some(&l.v),
                Some(&l.o),
                l.gate.as_ref(),
                Some(&l.up),
                Some(&l.down),
            ]
            .into_iter()
            .flatten()
        })
    }

    /// Floating-point operations (a multiply-add is two) a prefill of `prompt` tokens does in
    /// its products: every projection for every token, the LM head for the last one, and the
    /// attention scores and weighted values of each causal (query, key) pair (within the
    /// window on sliding-window layers). Norms, rotary embeddings and softmax are left out
    /// (well under 1 % of a real model's).
    pub fn prefill_flops(&self, prompt: usize) -> u64 {
        let c = &self.config;
        let n = prompt as u64;
        let per_token: u64 = self.projections().map(Linear::weight_elements).sum();
        let pairs = |window: Option<usize>| -> u64 {
            match window.map(|w| w as u64) {
                Some(w) if w < n => w * (w + 1) / 2 + (n - w) * w,
                _ => n * (n + 1) / 2,
            }
        };
        let attention: u64 = (0..c.num_layers)
            .map(|l| {
                let window = match c.sliding_layers.get(l) {
                    Some(true) => c.sliding_window,
                    _ => None,
                };
                4 * (c.num_heads * c.head_dim) as u64 * pairs(window)
            })
            .sum();
        2 * n * per_token + 2 * self.lm_head.weight_elements() * u64::from(prompt > 0) + attention
    }

    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let c = &self.config;
        let capacity = capacity.min(c.max_position_embeddings).max(1);
        let shape = (1, c.num_kv_heads, capacity, c.head_dim);
        let mut k = Vec::with_capacity(c.num_layers);
        let mut v = Vec::with_capacity(c.num_layers);
        for _ in 0..c.num_layers {
            k.push(Tensor::zeros(shape, self.kv_dtype(), &self.device)?);
            v.push(Tensor::zeros(shape, self.kv_dtype(), &self.device)?);
        }
        Ok(KvCache {
            k,
            v,
            len: 0,
            capacity,
            pending_rotary: None,
            position_shift: 0,
        })
    }

    /// Token embeddings, `(seq, hidden)` in the activation dtype, with the family's embedding
    /// scale (Gemma's √hidden) applied.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        let _span = profile::span("op", "embed");
        let ids = Tensor::new(ids, &self.device)?;
        let e = self.embed.index_select(&ids, 0)?.to_dtype(self.dtype)?;
        Ok(match self.config.embed_scale {
            // transformers multiplies by the scale rounded to the activation dtype.
            Some(s) => e.affine(s as f32 as f64, 0.0)?,
            None => e,
        })
    }

    fn angles(&self, spec: &RopeSpec, offset: usize, seq: usize) -> Result<Angles> {
        let (cos_row, sin_row) = spec.angles(offset, seq);
        self.angles_from_rows(cos_row, sin_row, seq)
    }

    /// [`Angles`] of `seq` positions from their cos/sin rows (`seq × rotary_dim / 2`).
    fn angles_from_rows(&self, cos_row: Vec<f32>, sin_row: Vec<f32>, seq: usize) -> Result<Angles> {
        let half = self.config.rotary_dim / 2;
        if cos_row.len() != seq * half || sin_row.len() != cos_row.len() {
            bail!(
                "{} rotary angles given for {seq} tokens of {half} rotary pairs",
                cos_row.len()
            );
        }
        let t = |v: &Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v.clone(), (seq, half), &self.device)?.to_dtype(self.dtype)?)
        };
        Ok(Angles {
            cos: t(&cos_row)?,
            sin: t(&sin_row)?,
            cos_row,
            sin_row,
        })
    }

    /// Runs `embeds` (`(seq, hidden)`) after what the cache holds; returns the logits of the
    /// last position, `(vocab,)` in f32.
    pub fn forward_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_embeds_or_stop(embeds, cache, &AtomicBool::new(false))
    }

    /// [`forward_embeds`](Self::forward_embeds) that gives up with [`Stopped`] before the next
    /// layer once `stop` is set, so a Ctrl-C during a long prefill acts within one layer's time.
    /// The cache keeps its previous length (the positions written so far are ignored).
    pub fn forward_embeds_or_stop(
        &self,
        embeds: &Tensor,
        cache: &mut KvCache,
        stop: &AtomicBool,
    ) -> Result<Tensor> {
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
        let embeds = match &self.positions {
            Some(p) => embeds.broadcast_add(&p.narrow(0, offset, seq)?)?,
            None => embeds.clone(),
        };
        let mut x = embeds.unsqueeze(0)?;
        // The rotary angles of this call, for global and (where they differ) local layers.
        // Positions are the cache slots, shifted after multimodal rotary positions (or given
        // explicitly for this call, see `KvCache::set_rotary`).
        let rotary = c.rotary_dim > 0;
        let shift = cache.position_shift;
        let start = || {
            usize::try_from(offset as i64 + shift)
                .map_err(|_| anyhow!("rotary position shift {shift} before the first position"))
        };
        let global = match cache.pending_rotary.take() {
            Some((cos_row, sin_row)) if rotary => {
                Some(self.angles_from_rows(cos_row, sin_row, seq)?)
            }
            _ => rotary
                .then(|| self.angles(&self.ropes[0], start()?, seq))
                .transpose()?,
        };
        let local = (rotary && self.ropes[1] != self.ropes[0])
            .then(|| self.angles(&self.ropes[1], start()?, seq))
            .transpose()?;
        let masks = if seq > 1 {
            let full = self.causal_mask(seq, offset, None)?;
            let window = c
                .sliding_window
                .map(|w| self.causal_mask(seq, offset, Some(w)))
                .transpose()?;
            Some((full, window))
        } else {
            None
        };
        // One token on the CPU in f32: the fused kernels read rows directly.
        let fast = seq == 1 && self.device.is_cpu() && self.dtype == DType::F32;
        let eps = c.rms_norm_eps as f32;
        for (l, layer) in self.layers.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                return Err(Stopped.into());
            }
            let _layer = profile::span_with("layer", || format!("layer {l}"));
            let sliding = c.sliding_layers[l];
            let window = if sliding { c.sliding_window } else { None };
            let angles = if sliding && local.is_some() {
                local.as_ref()
            } else {
                global.as_ref()
            };
            let mask = masks.as_ref().map(|(full, win)| match (window, win) {
                (Some(_), Some(w)) => w,
                _ => full,
            });
            let h = {
                let _s = profile::span("op", "attn_norm");
                layer.attn_norm.forward(&x, eps)?
            };
            let attn = {
                let _s = profile::span("op", "attention");
                let fused = if fast {
                    self.decode_attention_cpu(layer, &h, angles, window, cache, l, offset)?
                } else if seq > 1 {
                    self.prefill_attention_cpu(layer, &h, angles, window, cache, l, offset)?
                } else {
                    None
                };
                match fused {
                    Some(out) => out,
                    None => self.attention(layer, &h, angles, mask, window, cache, l, offset)?,
                }
            };
            let attn = match &layer.post_attn_norm {
                Some(n) => n.forward(&attn, eps)?,
                None => attn,
            };
            if c.parallel_residual {
                let h = layer.ffn_norm.forward(&x, eps)?;
                let m = {
                    let _s = profile::span("op", "mlp");
                    self.mlp(layer, &h)?
                };
                x = ((x + attn)? + m)?;
                continue;
            }
            x = (x + attn)?;
            let h = {
                let _s = profile::span("op", "ffn_norm");
                layer.ffn_norm.forward(&x, eps)?
            };
            let m = {
                let _s = profile::span("op", "mlp");
                self.mlp(layer, &h)?
            };
            let m = match &layer.post_ffn_norm {
                Some(n) => n.forward(&m, eps)?,
                None => m,
            };
            x = (x + m)?;
        }
        cache.len = offset + seq;
        let _head = profile::span("op", "lm_head");
        let last = x.narrow(1, seq - 1, 1)?;
        let last = self.norm.forward(&last, eps)?;
        let logits = self
            .lm_head
            .forward(&last)?
            .flatten_all()?
            .to_dtype(DType::F32)?;
        Ok(match c.final_softcap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    /// `down(act(gate(x)) · up(x))`, or `down(act(up(x)))` for ungated families. For one token
    /// on the CPU, gate and up run as one pass of the decode kernels and the gating is applied
    /// to their rows directly.
    fn mlp(&self, layer: &Layer, x: &Tensor) -> candle_core::Result<Tensor> {
        let act = self.config.activation;
        let (b, s, _) = x.dims3()?;
        let Some(gate) = &layer.gate else {
            return layer.down.forward(&activate(&layer.up.forward(x)?, act)?);
        };
        if b * s == 1 {
            if let Some([mut g, u]) = Linear::decode_many(x, [gate, &layer.up])? {
                if act == Activation::Silu {
                    fast_exp::silu_mul(&mut g, &u);
                } else {
                    for (g, u) in g.iter_mut().zip(&u) {
                        *g = activate_one(*g, act) * u;
                    }
                }
                return layer.down.forward(&gemv::row_tensor(g, x)?);
            }
        }
        // Several rows of SiLU-gated MLP on the CPU: the gate and up products in plain rows
        // and the gating in one vectorised pass, instead of three tensor operations.
        if act == Activation::Silu && x.device().is_cpu() && x.dtype() == DType::F32 {
            let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
            if let (Some(mut g), Some(u)) = (
                gate.forward_rows(&xs, b * s)?,
                layer.up.forward_rows(&xs, b * s)?,
            ) {
                const CHUNK: usize = 16 * 1024;
                g.par_chunks_mut(CHUNK)
                    .zip(u.par_chunks(CHUNK))
                    .for_each(|(g, u)| fast_exp::silu_mul(g, u));
                let inner = g.len() / (b * s);
                return layer
                    .down
                    .forward(&Tensor::from_vec(g, (b, s, inner), x.device())?);
            }
        }
        let (g, u) = (gate.forward(x)?, layer.up.forward(x)?);
        layer.down.forward(&(activate(&g, act)? * u)?)
    }

    /// `(seq, offset + seq)` additive mask: position `offset + i` sees keys `0..=offset + i`,
    /// and with a window only the last `window` of them.
    fn causal_mask(&self, seq: usize, offset: usize, window: Option<usize>) -> Result<Tensor> {
        let total = offset + seq;
        let mask: Vec<f32> = (0..seq)
            .flat_map(|i| {
                let q = offset + i;
                (0..total).map(move |j| {
                    let too_old = window.is_some_and(|w| j + w <= q);
                    if j > q || too_old {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        Ok(Tensor::from_vec(mask, (seq, total), &self.device)?.to_dtype(self.dtype)?)
    }

    /// Rotates the first `rotary_dim` dimensions of each head of `x` `(1, heads, seq, hd)`.
    fn rotate(&self, x: &Tensor, a: &Angles) -> candle_core::Result<Tensor> {
        let hd = self.config.head_dim;
        let rot = self.config.rotary_dim;
        let rope = |t: &Tensor| {
            if self.interleaved_rope {
                candle_nn::rotary_emb::rope_i(t, &a.cos, &a.sin)
            } else {
                candle_nn::rotary_emb::rope(t, &a.cos, &a.sin)
            }
        };
        if rot == hd {
            return rope(x);
        }
        let turned = rope(&x.narrow(3, 0, rot)?.contiguous()?)?;
        Tensor::cat(&[turned, x.narrow(3, rot, hd - rot)?], 3)?.contiguous()
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        angles: Option<&Angles>,
        mask: Option<&Tensor>,
        window: Option<usize>,
        cache: &mut KvCache,
        l: usize,
        offset: usize,
    ) -> Result<Tensor> {
        let c = &self.config;
        let eps = c.rms_norm_eps as f32;
        let (_, seq, _) = x.dims3()?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let (q, k, v) = (
            layer.q.forward(x)?,
            layer.k.forward(x)?,
            layer.v.forward(x)?,
        );
        let mut q = q.reshape((1, seq, nh, hd))?;
        let mut k = k.reshape((1, seq, nkv, hd))?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = qn.forward(&q.contiguous()?, eps)?;
            k = kn.forward(&k.contiguous()?, eps)?;
        }
        let q = q.transpose(1, 2)?.contiguous()?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v
            .reshape((1, seq, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let (q, k) = match angles {
            Some(a) => (self.rotate(&q, a)?, self.rotate(&k, a)?),
            None => (q, k),
        };
        cache.k[l].slice_set(&k.to_dtype(cache.k[l].dtype())?, 2, offset)?;
        cache.v[l].slice_set(&v.to_dtype(cache.v[l].dtype())?, 2, offset)?;
        let total = offset + seq;
        let scale = c.attn_scale;
        if seq == 1 && window.is_none() && c.attn_softcap.is_none() {
            if let Some(out) =
                super::gemv::decode_attention(&q, &cache.k[l], &cache.v[l], total, scale as f32)?
            {
                return Ok(layer.o.forward(&out)?);
            }
        }
        // Only the keys a window can reach are read.
        let start = match window {
            Some(w) => (offset + 1).saturating_sub(w),
            None => 0,
        };
        // A half-precision cache (`set_kv_dtype`) is read in the activation dtype.
        let (k_all, v_all) = if cache.k[l].dtype() == q.dtype() {
            (cache.k[l].clone(), cache.v[l].clone())
        } else {
            (
                cache.k[l].narrow(2, 0, total)?.to_dtype(q.dtype())?,
                cache.v[l].narrow(2, 0, total)?.to_dtype(q.dtype())?,
            )
        };
        let keys = k_all.narrow(2, start, total - start)?;
        let values = v_all.narrow(2, start, total - start)?;
        // Grouped-query attention without copying K/V per head: fold each group of query heads
        // into the rows of its key/value head.
        let groups = nh / nkv;
        let q = q.reshape((nkv, groups * seq, hd))?;
        let keys = keys.squeeze(0)?;
        let values = values.squeeze(0)?;
        let causal = mask.is_some().then_some(super::attention::Causal {
            seq,
            offset,
            window,
        });
        if let Some(out) = super::attention::prefill_attention_cpu(
            &q,
            &k_all,
            &v_all,
            start..total,
            scale as f32,
            c.attn_softcap.map(|x| x as f32),
            causal,
        )? {
            let out = out
                .reshape((1, nh, seq, hd))?
                .transpose(1, 2)?
                .reshape((1, seq, nh * hd))?;
            return Ok(layer.o.forward(&out)?);
        }
        let mut scores = (q.matmul(&keys.t()?)? * scale)?;
        if let Some(cap) = c.attn_softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let scores = match mask {
            Some(m) => scores
                .reshape((nkv, groups, seq, total - start))?
                .broadcast_add(&m.narrow(1, start, total - start)?)?
                .reshape((nkv, groups * seq, total - start))?,
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

    /// The q/k norms and the rotary embedding, in place, on token-major rows of queries `q`
    /// (tokens × heads × head_dim) and keys `k` (tokens × kv heads × head_dim): token `t` at
    /// the `t`-th position of `angles`.
    fn norm_and_rotate(
        &self,
        layer: &Layer,
        q: &mut [f32],
        k: &mut [f32],
        angles: Option<&Angles>,
    ) {
        let c = &self.config;
        let (nh, nkv, hd, rot) = (c.num_heads, c.num_kv_heads, c.head_dim, c.rotary_dim);
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            let eps = c.rms_norm_eps as f32;
            qn.rms_rows(q, eps);
            kn.rms_rows(k, eps);
        }
        let Some(a) = angles else {
            return;
        };
        let half = rot / 2;
        let rows = q
            .chunks_exact_mut(nh * hd)
            .zip(k.chunks_exact_mut(nkv * hd));
        for (t, (qr, kr)) in rows.enumerate() {
            let (cos, sin) = (
                &a.cos_row[t * half..(t + 1) * half],
                &a.sin_row[t * half..(t + 1) * half],
            );
            for head in qr.chunks_exact_mut(hd).chain(kr.chunks_exact_mut(hd)) {
                gemv::rope_in_place(&mut head[..rot], rot, cos, sin, self.interleaved_rope);
            }
        }
    }

    /// Several tokens' attention on the CPU in f32 with an f32 cache, on plain rows: the q/k/v
    /// products of one copy of the input, q/k norms and the rotary embedding applied to the
    /// rows in place, keys and values written into the cache, [`super::attention`]'s blocked
    /// attention, the output projection. Why: the general path spends about a quarter of the
    /// attention's time outside the products (reshapes, transposed copies, two rotary passes,
    /// dtype casts), each a tensor operation of its own. `None` where the operands are not of
    /// that kind (the caller then takes the general path).
    #[allow(clippy::too_many_arguments)]
    fn prefill_attention_cpu(
        &self,
        layer: &Layer,
        x: &Tensor,
        angles: Option<&Angles>,
        window: Option<usize>,
        cache: &mut KvCache,
        l: usize,
        offset: usize,
    ) -> Result<Option<Tensor>> {
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        if !(cpu_f32(x) && cpu_f32(&cache.k[l]) && cpu_f32(&cache.v[l])) || nkv == 0 {
            return Ok(None);
        }
        let (b, seq, _) = x.dims3()?;
        if b != 1 || seq < 2 || nh % nkv != 0 {
            return Ok(None);
        }
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let (Some(mut q), Some(mut k), Some(v)) = (
            layer.q.forward_rows(&xs, seq)?,
            layer.k.forward_rows(&xs, seq)?,
            layer.v.forward_rows(&xs, seq)?,
        ) else {
            return Ok(None);
        };
        self.norm_and_rotate(layer, &mut q, &mut k, angles);
        // Token-major rows to head-major `(heads, seq, hd)`, the cache's and the kernel's order.
        let by_head = |rows: &[f32], heads: usize| -> Vec<f32> {
            let mut out = vec![0f32; rows.len()];
            for (t, row) in rows.chunks_exact(heads * hd).enumerate() {
                for (h, head) in row.chunks_exact(hd).enumerate() {
                    out[(h * seq + t) * hd..(h * seq + t + 1) * hd].copy_from_slice(head);
                }
            }
            out
        };
        let dev = &self.device;
        let k = Tensor::from_vec(by_head(&k, nkv), (1, nkv, seq, hd), dev)?;
        let v = Tensor::from_vec(by_head(&v, nkv), (1, nkv, seq, hd), dev)?;
        cache.k[l].slice_set(&k, 2, offset)?;
        cache.v[l].slice_set(&v, 2, offset)?;
        let total = offset + seq;
        let start = window.map_or(0, |w| (offset + 1).saturating_sub(w));
        let groups = nh / nkv;
        let q = Tensor::from_vec(by_head(&q, nh), (nkv, groups * seq, hd), dev)?;
        let causal = super::attention::Causal {
            seq,
            offset,
            window,
        };
        let Some(out) = super::attention::prefill_attention_cpu(
            &q,
            &cache.k[l],
            &cache.v[l],
            start..total,
            c.attn_scale as f32,
            c.attn_softcap.map(|x| x as f32),
            Some(causal),
        )?
        else {
            bail!("prefill attention: the f32 KV cache was not readable as rows");
        };
        // `(heads, seq, hd)` back to token-major rows for the output projection.
        let heads: Vec<f32> = out.flatten_all()?.to_vec1()?;
        let mut rows = vec![0f32; heads.len()];
        for (h, head) in heads.chunks_exact(seq * hd).enumerate() {
            for (t, v) in head.chunks_exact(hd).enumerate() {
                rows[(t * nh + h) * hd..(t * nh + h + 1) * hd].copy_from_slice(v);
            }
        }
        match layer.o.forward_rows(&rows, seq)? {
            Some(o) => Ok(Some(Tensor::from_vec(o, (1, seq, c.hidden_size), dev)?)),
            None => Ok(Some(layer.o.forward(&Tensor::from_vec(
                rows,
                (1, seq, nh * hd),
                dev,
            )?)?)),
        }
    }

    /// One token's attention on the CPU in f32 without intermediate tensors: q/k/v as one pass
    /// of the decode kernels (biases added), q/k norms and the rotary embedding applied to the
    /// rows in place, keys and values written into the cache, attention (window and soft-cap
    /// included) read straight from the cache buffers. Why: the general path is a dozen small
    /// tensor operations per layer (reshapes, copies, two rope calls that each dispatch to the
    /// thread pool), which for one token cost a noticeable share of the step. `None` when the
    /// weights are of a layout the kernels do not read.
    #[allow(clippy::too_many_arguments)]
    fn decode_attention_cpu(
        &self,
        layer: &Layer,
        x: &Tensor,
        angles: Option<&Angles>,
        window: Option<usize>,
        cache: &mut KvCache,
        l: usize,
        offset: usize,
    ) -> Result<Option<Tensor>> {
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let Some([mut q, mut k, v]) = Linear::decode_many(x, [&layer.q, &layer.k, &layer.v])?
        else {
            return Ok(None);
        };
        self.norm_and_rotate(layer, &mut q, &mut k, angles);
        let k = Tensor::from_vec(k, (1, nkv, 1, hd), &self.device)?;
        let v = Tensor::from_vec(v, (1, nkv, 1, hd), &self.device)?;
        cache.k[l].slice_set(&k.to_dtype(cache.k[l].dtype())?, 2, offset)?;
        cache.v[l].slice_set(&v.to_dtype(cache.v[l].dtype())?, 2, offset)?;
        let total = offset + 1;
        let start = window.map_or(0, |w| total.saturating_sub(w));
        let Some(out) = gemv::decode_attention_window(
            &q,
            nh,
            &cache.k[l],
            &cache.v[l],
            start..total,
            c.attn_scale as f32,
            c.attn_softcap.map(|s| s as f32),
        )?
        else {
            bail!("decode attention: the KV cache is not an f32 or f16 CPU buffer");
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
    use crate::models::testutil::{max_abs_diff, values_f32};
    use crate::synth::llama_preset;

    fn tiny() -> (LlamaModel, Weights) {
        let shape = llama_preset("tiny-llama").unwrap();
        let w = shape
            .random_weights(3, DType::F32, &Device::Cpu, "")
            .unwrap();
        let cfg = LlamaConfig::from_hf_json(&shape.hf_config(DType::F32)).unwrap();
        let vb = VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
        (LlamaModel::from_hf(cfg, vb, "model", "lm_head").unwrap(), w)
    }

    #[test]
    fn a_decode_step_reads_every_projection_once_and_its_window_of_the_cache() {
        let (m, w) = tiny();
        let c = m.config.clone();
        // Every 2-D weight but the embedding table, as f32, plus one embedding row.
        let projections: usize = w
            .iter()
            .filter(|(name, t)| t.dims().len() == 2 && !name.contains("embed_tokens"))
            .map(|(_, t)| t.elem_count() * 4)
            .sum();
        let one = m.decode_read_bytes(1);
        assert_eq!(one.weights, (projections + c.hidden_size * 4) as u64);
        let per_position = (c.num_layers * 2 * c.num_kv_heads * c.head_dim * 4) as u64;
        assert_eq!(one.kv, per_position);
        assert_eq!(m.decode_read_bytes(10).kv, 10 * per_position);
        // A sliding window caps what its layers read.
        let mut windowed = m.clone();
        windowed.config.sliding_window = Some(4);
        windowed.config.sliding_layers = vec![true; c.num_layers];
        assert_eq!(windowed.decode_read_bytes(10).kv, 4 * per_position);
        assert_eq!(windowed.decode_read_bytes(10).weights, one.weights);
    }

    #[test]
    fn prefill_flops_count_every_product_and_causal_pair() {
        let (m, w) = tiny();
        let c = m.config.clone();
        let layer_weights: u64 = w
            .iter()
            .filter(|(name, t)| t.dims().len() == 2 && name.contains(".layers."))
            .map(|(_, t)| t.elem_count() as u64)
            .sum();
        let head = (c.vocab_size * c.hidden_size) as u64;
        let q_width = (c.num_heads * c.head_dim) as u64;
        let layers = c.num_layers as u64;
        // 3 tokens: 6 causal pairs per layer (1 + 2 + 3), 4 flops per pair and query width.
        assert_eq!(
            m.prefill_flops(3),
            2 * 3 * layer_weights + 2 * head + layers * 4 * q_width * 6
        );
        // A window of 2 over 5 tokens: 1 + 2 + 2 + 2 + 2 = 9 pairs.
        let mut windowed = m.clone();
        windowed.config.sliding_window = Some(2);
        windowed.config.sliding_layers = vec![true; c.num_layers];
        assert_eq!(
            windowed.prefill_flops(5),
            2 * 5 * layer_weights + 2 * head + layers * 4 * q_width * 9
        );
        assert_eq!(m.prefill_flops(0), 0);
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
        assert!(max_abs_diff(&want, &got.unwrap()) < 1e-4);
        // Reset reuses the buffers and gives the same answer again.
        inc.reset();
        let again = m
            .forward_embeds(&m.embed_tokens(&ids).unwrap(), &mut inc)
            .unwrap();
        assert!(max_abs_diff(&want, &again) < 1e-5);
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
                assert!(
                    max_abs_diff(&a, &b) < 1e-4,
                    "{dt:?}: {}",
                    max_abs_diff(&a, &b)
                );
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

    /// A Q4_K projection repacked for the int8 kernels gives, for one row (decode) and for
    /// several (prefill), the product of its widened weights with the activations as quantised
    /// to Q8_K (what llama.cpp's kernels compute too); shapes that do not interleave keep
    /// candle's blocks.
    #[test]
    fn repacked_q4k_projections_multiply_like_their_widened_weights() {
        use crate::models::kquants::{Q8KRow, QK_K};
        use candle_core::quantized::GgmlDType;
        let (n, k) = (24, 512);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1009) as f32 / 504.5 - 1.0) * 0.1)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        let wide: Vec<Vec<f32>> = q.dequantize(&Device::Cpu).unwrap().to_vec2().unwrap();
        let linear = Linear::new(LinearWeight::quantized(q).unwrap(), None).unwrap();
        let repacked = matches!(linear.weight, LinearWeight::Interleaved(_));
        assert_eq!(repacked, KernelSet::active() >= KernelSet::Avx2);
        for rows in [1usize, 6] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| (i * 104_729 % 997) as f32 / 498.5 - 1.0)
                .collect();
            let x_rows = Tensor::from_vec(x.clone(), (1, rows, k), &Device::Cpu).unwrap();
            let got = values_f32(&linear.forward(&x_rows).unwrap());
            for (t, x) in x.chunks_exact(k).enumerate() {
                let xq = Q8KRow::new(x);
                for (r, w) in wide.iter().enumerate() {
                    let want: f64 = (0..k)
                        .map(|i| f64::from(w[i]) * f64::from(xq.qs[i]) * f64::from(xq.d[i / QK_K]))
                        .sum();
                    let g = got[t * n + r];
                    assert!(
                        (f64::from(g) - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{rows} rows, token {t}, output {r}: {g} vs {want}"
                    );
                }
            }
        }
        // Activations in f16 the kernels do not read: the widened weights serve them.
        let x16: Vec<f32> = (0..6 * k).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
        let x16 = Tensor::from_vec(x16, (1, 6, k), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let got = values_f32(&linear.forward(&x16).unwrap());
        let x16 = values_f32(&x16);
        for (t, x) in x16.chunks_exact(k).enumerate() {
            for (r, w) in wide.iter().enumerate() {
                let want: f32 = x.iter().zip(w).map(|(a, b)| a * b).sum();
                let g = got[t * n + r];
                assert!(
                    (g - want).abs() < 1e-2 * (1.0 + want.abs()),
                    "f16 token {t} output {r}: {g} vs {want}"
                );
            }
        }
        let twelve = Tensor::from_vec(vec![0.5f32; 12 * k], (12, k), &Device::Cpu).unwrap();
        let odd = QTensor::quantize(&twelve, GgmlDType::Q4K).unwrap();
        assert!(matches!(
            LinearWeight::quantized(odd).unwrap(),
            LinearWeight::Quant(_)
        ));
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
        assert!(max_abs_diff(&a, &b) < 1e-4, "{}", max_abs_diff(&a, &b));
        // Decode steps (the one-token path, interleaved rope on the GGUF side) agree too.
        for t in [7u32, 99, 3] {
            let a = m
                .forward_embeds(&m.embed_tokens(&[t]).unwrap(), &mut ca)
                .unwrap();
            let b = g
                .forward_embeds(&g.embed_tokens(&[t]).unwrap(), &mut cb)
                .unwrap();
            assert!(
                max_abs_diff(&a, &b) < 1e-4,
                "decode: {}",
                max_abs_diff(&a, &b)
            );
        }
    }
}
