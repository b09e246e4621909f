//! The vision transformer of Qwen2-VL and Qwen2.5-VL.
//!
//! - Patch embedding: a 3-D convolution over `(2 frames, 14, 14)` patches with equal stride,
//!   i.e. one matmul over the flattened patches the processor made.
//! - 2-D rotary embeddings: a quarter of each head's dimensions rotate with the patch's row, a
//!   quarter with its column (the frequencies of a `head_dim / 2` rotary), halves rotated.
//! - Blocks: pre-norm attention (fused `qkv` with bias) and MLP. Qwen2-VL: LayerNorm and a
//!   `fc1 → quick_gelu → fc2` MLP. Qwen2.5-VL: RMSNorm and a SwiGLU MLP with biases, and
//!   windowed attention — the merged 2 × 2 units are regrouped into windows of
//!   `window_size / 28` units per side (row-major windows over the image, each window's units
//!   row-major) and every layer attends within its window, except the layers of
//!   `fullatt_block_indexes`, which see the whole image.
//! - Patch merger: norm, then each 2 × 2 group of patches concatenated and projected to the
//!   language model's width through `Linear → GELU → Linear`. Qwen2.5-VL undoes the window
//!   order after the merger.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde_json::Value;

use super::preprocess::PatchedImage;
use crate::models::clip::Activation;

/// Which generation of the tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionKind {
    /// Qwen2-VL: LayerNorm, quick-GELU MLP, full attention everywhere.
    Qwen2,
    /// Qwen2.5-VL: RMSNorm, SwiGLU MLP, windowed attention.
    Qwen25,
}

/// `vision_config` of a Qwen2-VL / Qwen2.5-VL checkpoint. An absent key takes transformers'
/// default (`Qwen2VLVisionConfig`, `Qwen2_5_VLVisionConfig`), so a checkpoint means here what
/// it means there, except Qwen2.5-VL's `hidden_size`: the tower's width, whose transformers
/// default (3584) is the language model's width and no released tower's, so it must be given.
/// A key given with the wrong type, or a zero shape, is refused, naming the key.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenVisionConfig {
    pub kind: VisionKind,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// Width of the merger's output: the language model's hidden size.
    pub out_hidden_size: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    pub in_channels: usize,
    /// Window side in pixels (Qwen2.5-VL).
    pub window_size: usize,
    /// Layers with full attention (Qwen2.5-VL; every layer in Qwen2-VL).
    pub fullatt_block_indexes: Vec<usize>,
    pub activation: Activation,
    pub rope_theta: f64,
}

impl QwenVisionConfig {
    pub fn from_json(v: &Value, kind: VisionKind) -> Result<Self> {
        // Absent and null keys take transformers' defaults; a present one must be a count.
        let u = |k: &str| -> Result<Option<usize>> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => match x.as_u64() {
                    Some(n) => Ok(Some(n as usize)),
                    // 1280.0 is a count written as a float by some exporters.
                    None => match x.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0) {
                        Some(f) => Ok(Some(f as usize)),
                        None => bail!(
                            "config.json: `vision_config.{k}` must be a non-negative integer, not {x}"
                        ),
                    },
                },
            }
        };
        let number = |k: &str| -> Result<Option<f64>> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_f64().map(Some).with_context(|| {
                    format!("config.json: `vision_config.{k}` must be a number, not {x}")
                }),
            }
        };
        let act = |d: &str| -> Result<Activation> {
            match v.get("hidden_act") {
                None | Some(Value::Null) => Activation::from_name(d),
                Some(Value::String(name)) => Activation::from_name(name),
                Some(x) => bail!("config.json: `vision_config.hidden_act` must be a name, not {x}"),
            }
        };
        let in_channels = u("in_channels")?.or(u("in_chans")?).unwrap_or(3);
        let rope_theta = v
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        // Both generations' defaults.
        let depth = u("depth")?.unwrap_or(32);
        let num_heads = u("num_heads")?.unwrap_or(16);
        let patch_size = u("patch_size")?.unwrap_or(14);
        let temporal_patch_size = u("temporal_patch_size")?.unwrap_or(2);
        let spatial_merge_size = u("spatial_merge_size")?.unwrap_or(2);
        let cfg = match kind {
            VisionKind::Qwen2 => {
                // Qwen2VLVisionConfig: `embed_dim` is the tower's width, `hidden_size` the output.
                let embed = u("embed_dim")?.unwrap_or(1280);
                let ratio = number("mlp_ratio")?.unwrap_or(4.0);
                Self {
                    kind,
                    hidden_size: embed,
                    intermediate_size: (embed as f64 * ratio) as usize,
                    depth,
                    num_heads,
                    out_hidden_size: u("hidden_size")?.unwrap_or(3584),
                    patch_size,
                    temporal_patch_size,
                    spatial_merge_size,
                    in_channels,
                    window_size: 0,
                    fullatt_block_indexes: (0..depth).collect(),
                    activation: act("quick_gelu")?,
                    rope_theta,
                }
            }
            VisionKind::Qwen25 => {
                let full = match v.get("fullatt_block_indexes") {
                    None | Some(Value::Null) => vec![7, 15, 23, 31],
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|x| {
                            x.as_u64().map(|x| x as usize).context(
                                "config.json: `vision_config.fullatt_block_indexes` must hold layer numbers",
                            )
                        })
                        .collect::<Result<_>>()?,
                    Some(other) => {
                        bail!("config.json: `vision_config.fullatt_block_indexes` must be a list, not {other}")
                    }
                };
                // transformers' default `hidden_size` is 3584, the language model's width (no
                // Qwen2.5-VL tower is that wide): the tower's width is not guessed.
                let hidden_size = u("hidden_size")?.context(
                    "config.json: missing `vision_config.hidden_size`, the vision tower's width; add it (it is in the checkpoint's original config.json)",
                )?;
                Self {
                    kind,
                    hidden_size,
                    intermediate_size: u("intermediate_size")?.unwrap_or(3420),
                    depth,
                    num_heads,
                    out_hidden_size: u("out_hidden_size")?.unwrap_or(3584),
                    patch_size,
                    temporal_patch_size,
                    spatial_merge_size,
                    in_channels,
                    window_size: u("window_size")?.unwrap_or(112),
                    fullatt_block_indexes: full,
                    activation: act("silu")?,
                    rope_theta,
                }
            }
        };
        // Qwen2-VL names the tower's width `embed_dim` and the merger's output `hidden_size`.
        let (width_key, out_key) = match kind {
            VisionKind::Qwen2 => ("embed_dim", "hidden_size"),
            VisionKind::Qwen25 => ("hidden_size", "out_hidden_size"),
        };
        for (key, value) in [
            ("depth", cfg.depth),
            (width_key, cfg.hidden_size),
            (out_key, cfg.out_hidden_size),
            ("patch_size", cfg.patch_size),
            ("temporal_patch_size", cfg.temporal_patch_size),
            ("spatial_merge_size", cfg.spatial_merge_size),
            ("in_channels", cfg.in_channels),
        ] {
            if value == 0 {
                bail!("config.json: `vision_config.{key}` is 0; a vision tower needs at least one");
            }
        }
        if cfg.num_heads == 0 || cfg.hidden_size % cfg.num_heads != 0 {
            bail!(
                "vision_config: hidden size {} is not a multiple of num_heads {}",
                cfg.hidden_size,
                cfg.num_heads
            );
        }
        if cfg.head_dim() % 4 != 0 {
            bail!(
                "vision_config: head size {} must be a multiple of 4 for the 2-D rotary embedding",
                cfg.head_dim()
            );
        }
        if cfg.kind == VisionKind::Qwen25
            && (cfg.window_size == 0
                || cfg.window_size % (cfg.spatial_merge_size * cfg.patch_size) != 0)
        {
            bail!(
                "vision_config: window_size {} must be a positive multiple of {}",
                cfg.window_size,
                cfg.spatial_merge_size * cfg.patch_size
            );
        }
        Ok(cfg)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Values per flattened patch.
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    pub fn parameters(&self) -> u64 {
        let (h, i, o) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.out_hidden_size as u64,
        );
        let m = (self.spatial_merge_size * self.spatial_merge_size) as u64;
        let (norms, mlp) = match self.kind {
            VisionKind::Qwen2 => (4 * h, 2 * h * i + i + h),
            VisionKind::Qwen25 => (2 * h, 3 * h * i + 2 * i + h),
        };
        let block = 3 * h * h + 3 * h + h * h + h + norms + mlp;
        let merger_norm = if self.kind == VisionKind::Qwen2 {
            2 * h
        } else {
            h
        };
        let merger = merger_norm + (h * m) * (h * m) + h * m + h * m * o + o;
        self.patch_len() as u64 * h + self.depth as u64 * block + merger
    }
}

/// A normalisation layer of either generation.
enum Norm {
    Layer(LayerNorm),
    Rms { weight: Tensor, eps: f32 },
}

impl Norm {
    fn load(kind: VisionKind, size: usize, vb: VarBuilder, name: &str) -> Result<Self> {
        let eps = 1e-6;
        Ok(match kind {
            VisionKind::Qwen2 => Norm::Layer(
                candle_nn::layer_norm(size, eps, vb.pp(name))
                    .with_context(|| format!("loading {name}"))?,
            ),
            VisionKind::Qwen25 => Norm::Rms {
                weight: vb
                    .get(size, &format!("{name}.weight"))
                    .with_context(|| format!("loading {name}"))?,
                eps: eps as f32,
            },
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Norm::Layer(l) => l.forward(x),
            Norm::Rms { weight, eps } => candle_nn::ops::rms_norm(x, weight, *eps),
        }
    }
}

enum Mlp {
    /// `fc2(act(fc1(x)))`.
    Plain {
        fc1: Linear,
        fc2: Linear,
        act: Activation,
    },
    /// `down(act(gate(x)) · up(x))`.
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
        act: Activation,
    },
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Mlp::Plain { fc1, fc2, act } => fc2.forward(&act.apply(&fc1.forward(x)?)?),
            Mlp::Gated {
                gate,
                up,
                down,
                act,
            } => down.forward(&(act.apply(&gate.forward(x)?)? * up.forward(x)?)?),
        }
    }
}

struct Block {
    norm1: Norm,
    qkv: Linear,
    proj: Linear,
    norm2: Norm,
    mlp: Mlp,
}

fn linear(vb: &VarBuilder, i: usize, o: usize, name: &str) -> Result<Linear> {
    candle_nn::linear(i, o, vb.pp(name)).with_context(|| format!("loading {name}"))
}

/// The loaded tower.
pub struct QwenVisionTower {
    config: QwenVisionConfig,
    /// `(hidden, patch_len)`: the 3-D convolution as a matmul.
    patch_weight: Tensor,
    blocks: Vec<Block>,
    merger_norm: Norm,
    merger_fc1: Linear,
    merger_fc2: Linear,
    /// Inverse frequencies of the 2-D rotary, `head_dim / 4` of them.
    inv_freq: Vec<f32>,
    dtype: DType,
    device: Device,
}

/// Where each patch sits and which patches attend together.
struct Layout {
    /// Patch `(row, column)` in the processor's order.
    positions: Vec<(usize, usize)>,
    /// Processor order of each merged unit, in window order (identity without windows).
    window_units: Vec<usize>,
    /// Patch counts of consecutive windows, in window order.
    window_lengths: Vec<usize>,
}

impl QwenVisionTower {
    /// Loads the tower rooted at `visual` (`vb` there).
    pub fn load(config: QwenVisionConfig, vb: VarBuilder) -> Result<Self> {
        let c = &config;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let patch_weight = vb
            .get(
                (
                    h,
                    c.in_channels,
                    c.temporal_patch_size,
                    c.patch_size,
                    c.patch_size,
                ),
                "patch_embed.proj.weight",
            )
            .context("loading patch_embed.proj")?
            .reshape((h, c.patch_len()))?;
        let mut blocks = Vec::with_capacity(c.depth);
        for l in 0..c.depth {
            let b = vb.pp(format!("blocks.{l}"));
            let m = b.pp("mlp");
            let mlp = match c.kind {
                VisionKind::Qwen2 => Mlp::Plain {
                    fc1: linear(&m, h, i, "fc1")?,
                    fc2: linear(&m, i, h, "fc2")?,
                    act: c.activation,
                },
                VisionKind::Qwen25 => Mlp::Gated {
                    gate: linear(&m, h, i, "gate_proj")?,
                    up: linear(&m, h, i, "up_proj")?,
                    down: linear(&m, i, h, "down_proj")?,
                    act: c.activation,
                },
            };
            blocks.push(Block {
                norm1: Norm::load(c.kind, h, b.clone(), "norm1")?,
                qkv: linear(&b.pp("attn"), h, 3 * h, "qkv")?,
                proj: linear(&b.pp("attn"), h, h, "proj")?,
                norm2: Norm::load(c.kind, h, b.clone(), "norm2")?,
                mlp,
            });
        }
        let merged = h * c.spatial_merge_size * c.spatial_merge_size;
        let mg = vb.pp("merger");
        let merger_norm = Norm::load(c.kind, h, mg.clone(), "ln_q")?;
        let merger_fc1 = linear(&mg.pp("mlp"), merged, merged, "0")?;
        let merger_fc2 = linear(&mg.pp("mlp"), merged, c.out_hidden_size, "2")?;
        let spatial = c.head_dim() / 2;
        let inv_freq = (0..spatial / 2)
            .map(|k| (1.0 / c.rope_theta.powf(2.0 * k as f64 / spatial as f64)) as f32)
            .collect();
        Ok(Self {
            patch_weight,
            blocks,
            merger_norm,
            merger_fc1,
            merger_fc2,
            inv_freq,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            config,
        })
    }

    pub fn config(&self) -> &QwenVisionConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Patch positions and windows of a `(grid_h, grid_w)` image (one frame).
    fn layout(&self, grid_h: usize, grid_w: usize) -> Layout {
        let m = self.config.spatial_merge_size;
        let (uh, uw) = (grid_h / m, grid_w / m);
        let mut positions = Vec::with_capacity(grid_h * grid_w);
        for bh in 0..uh {
            for bw in 0..uw {
                for mh in 0..m {
                    for mw in 0..m {
                        positions.push((bh * m + mh, bw * m + mw));
                    }
                }
            }
        }
        let unit = m * m;
        let (window_units, window_lengths) = match self.config.kind {
            VisionKind::Qwen2 => ((0..uh * uw).collect(), vec![grid_h * grid_w]),
            VisionKind::Qwen25 => {
                let side = self.config.window_size / m / self.config.patch_size;
                let mut units = Vec::with_capacity(uh * uw);
                let mut lengths = Vec::new();
                for wy in (0..uh).step_by(side) {
                    for wx in (0..uw).step_by(side) {
                        let before = units.len();
                        for y in wy..(wy + side).min(uh) {
                            for x in wx..(wx + side).min(uw) {
                                units.push(y * uw + x);
                            }
                        }
                        lengths.push((units.len() - before) * unit);
                    }
                }
                (units, lengths)
            }
        };
        Layout {
            positions,
            window_units,
            window_lengths,
        }
    }

    /// The image's features for the language model, `(tokens, out_hidden_size)`, in the
    /// processor's (merged row-major) order.
    pub fn forward(&self, image: &PatchedImage) -> Result<Tensor> {
        let c = &self.config;
        let (t, gh, gw) = image.grid_thw;
        if t != 1 {
            bail!("only still images are supported (the image has {t} temporal patches)");
        }
        if image.patch_len != c.patch_len() {
            bail!(
                "the image processor made patches of {} values, the vision tower expects {}",
                image.patch_len,
                c.patch_len()
            );
        }
        let m = c.spatial_merge_size;
        if gh % m != 0 || gw % m != 0 {
            bail!("a {gh}x{gw} patch grid does not divide into {m}x{m} merges");
        }
        let n = gh * gw;
        let unit = m * m;
        let layout = self.layout(gh, gw);
        // Patch order inside the tower: window order of whole merged units.
        let order: Vec<u32> = layout
            .window_units
            .iter()
            .flat_map(|&u| (u * unit..(u + 1) * unit).map(|p| p as u32))
            .collect();
        let order_t = Tensor::from_vec(order.clone(), n, &self.device)?;
        let patches = Tensor::from_slice(&image.patches, (n, c.patch_len()), &self.device)?
            .to_dtype(self.dtype)?;
        let x = {
            let _s = crate::profile::span("op", "patch_embed");
            patches
                .matmul(&self.patch_weight.t()?)?
                .index_select(&order_t, 0)?
        };
        let half = c.head_dim() / 2;
        let quarter = self.inv_freq.len();
        let mut angles = Vec::with_capacity(n * half);
        for &p in &order {
            let (row, col) = layout.positions[p as usize];
            angles.extend(self.inv_freq.iter().map(|f| row as f32 * f));
            angles.extend(self.inv_freq.iter().map(|f| col as f32 * f));
        }
        debug_assert_eq!(angles.len(), n * 2 * quarter);
        let angles = Tensor::from_vec(angles, (n, half), &self.device)?;
        let cos = angles.cos()?.to_dtype(self.dtype)?;
        let sin = angles.sin()?.to_dtype(self.dtype)?;
        let whole = [n];
        let mut x = x;
        for (l, block) in self.blocks.iter().enumerate() {
            let _s = crate::profile::span_with("layer", || format!("vision block {l}"));
            let segments: &[usize] = if c.fullatt_block_indexes.contains(&l) {
                &whole
            } else {
                &layout.window_lengths
            };
            x = self.block(block, &x, &cos, &sin, segments)?;
        }
        let _s = crate::profile::span("op", "patch_merger");
        let merged = self
            .merger_norm
            .forward(&x)?
            .reshape((n / unit, c.hidden_size * unit))?;
        let out = self
            .merger_fc2
            .forward(&self.merger_fc1.forward(&merged)?.gelu_erf()?)?;
        // Back to the processor's order of merged units.
        let mut inverse = vec![0u32; n / unit];
        for (pos, &u) in layout.window_units.iter().enumerate() {
            inverse[u] = pos as u32;
        }
        let inverse = Tensor::from_vec(inverse, n / unit, &self.device)?;
        Ok(out.index_select(&inverse, 0)?)
    }

    fn block(
        &self,
        block: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        segments: &[usize],
    ) -> Result<Tensor> {
        let c = &self.config;
        let (n, h) = x.dims2()?;
        let (heads, hd) = (c.num_heads, c.head_dim());
        let normed = block.norm1.forward(x)?;
        let qkv = block
            .qkv
            .forward(&normed)?
            .reshape((n, 3, heads, hd))?
            .permute((1, 2, 0, 3))?; // (3, heads, n, hd)
        let rope = |t: Tensor| -> candle_core::Result<Tensor> {
            candle_nn::rotary_emb::rope(&t.unsqueeze(0)?.contiguous()?, cos, sin)?.squeeze(0)
        };
        let q = rope(qkv.get(0)?)?;
        let k = rope(qkv.get(1)?)?;
        let v = qkv.get(2)?.contiguous()?;
        let scale = (hd as f64).powf(-0.5);
        let mut outs = Vec::with_capacity(segments.len());
        let mut start = 0;
        for &len in segments {
            let (qs, ks, vs) = (
                q.narrow(1, start, len)?,
                k.narrow(1, start, len)?,
                v.narrow(1, start, len)?,
            );
            let scores = (qs.matmul(&ks.t()?)? * scale)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
                .to_dtype(self.dtype)?;
            outs.push(probs.matmul(&vs)?);
            start += len;
        }
        let attn = Tensor::cat(&outs, 1)? // (heads, n, hd)
            .transpose(0, 1)?
            .reshape((n, h))?;
        let x = (x + block.proj.forward(&attn)?)?;
        let m = block.mlp.forward(&block.norm2.forward(&x)?)?;
        Ok((x + m)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny(kind: VisionKind) -> QwenVisionConfig {
        let v = serde_json::json!({
            "depth": 2, "hidden_size": 16, "embed_dim": 16, "intermediate_size": 24,
            "mlp_ratio": 2.0, "num_heads": 2, "out_hidden_size": 8, "window_size": 56,
            "fullatt_block_indexes": [1], "hidden_act": if kind == VisionKind::Qwen2 { "quick_gelu" } else { "silu" },
        });
        let mut c = QwenVisionConfig::from_json(&v, kind).unwrap();
        if kind == VisionKind::Qwen2 {
            c.out_hidden_size = 8;
        }
        c
    }

    fn random_tower(c: &QwenVisionConfig) -> QwenVisionTower {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        QwenVisionTower::load(c.clone(), vb.clone()).unwrap();
        for var in varmap.data().lock().unwrap().values() {
            let t = Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap();
            var.set(&t).unwrap();
        }
        QwenVisionTower::load(c.clone(), vb).unwrap()
    }

    #[test]
    fn configs_follow_transformers_defaults() {
        let c = QwenVisionConfig::from_json(
            &serde_json::json!({"hidden_size": 1280, "out_hidden_size": 3584}),
            VisionKind::Qwen25,
        )
        .unwrap();
        assert_eq!((c.depth, c.num_heads, c.intermediate_size), (32, 16, 3420));
        assert_eq!(c.fullatt_block_indexes, vec![7, 15, 23, 31]);
        assert_eq!(c.activation, Activation::Silu);
        // Qwen2.5-VL-7B's vision tower (merger included) has about 676.6 M parameters.
        assert_eq!(c.parameters() / 100_000, 6765);
        let q2 = QwenVisionConfig::from_json(
            &serde_json::json!({"embed_dim": 1280, "hidden_size": 3584, "mlp_ratio": 4}),
            VisionKind::Qwen2,
        )
        .unwrap();
        assert_eq!(
            (q2.hidden_size, q2.intermediate_size, q2.out_hidden_size),
            (1280, 5120, 3584)
        );
        assert_eq!(q2.activation, Activation::QuickGelu);
        assert_eq!(q2.fullatt_block_indexes.len(), 32);
        assert!(QwenVisionConfig::from_json(
            &serde_json::json!({"window_size": 100}),
            VisionKind::Qwen25
        )
        .is_err());
    }

    /// A key transformers has no tower default for is an error naming it, as is a key of the
    /// wrong type or a zero shape; keys left to transformers' defaults still load.
    #[test]
    fn missing_or_malformed_keys_are_named() {
        use serde_json::json;
        use VisionKind::{Qwen2, Qwen25};
        for (config, kind, named) in [
            (
                json!({"depth": 32, "out_hidden_size": 3584}),
                Qwen25,
                "config.json: missing `vision_config.hidden_size`",
            ),
            (
                json!({"hidden_size": 1280, "depth": "32"}),
                Qwen25,
                "config.json: `vision_config.depth` must be a non-negative integer",
            ),
            (
                json!({"embed_dim": 1280, "mlp_ratio": "4"}),
                Qwen2,
                "`vision_config.mlp_ratio` must be a number",
            ),
            (
                json!({"embed_dim": 1280, "hidden_act": 3}),
                Qwen2,
                "`vision_config.hidden_act` must be a name",
            ),
            (
                json!({"embed_dim": 0}),
                Qwen2,
                "`vision_config.embed_dim` is 0",
            ),
            (
                json!({"hidden_size": 1280, "depth": 0}),
                Qwen25,
                "`vision_config.depth` is 0",
            ),
            (
                json!({"hidden_size": 1280, "window_size": 100}),
                Qwen25,
                "window_size 100",
            ),
        ] {
            let e = format!(
                "{:#}",
                QwenVisionConfig::from_json(&config, kind).unwrap_err()
            );
            assert!(e.contains(named), "{config}: {e}");
        }
        // A whole float and a null are read as transformers reads them.
        let c = QwenVisionConfig::from_json(
            &json!({"hidden_size": 1280.0, "depth": null}),
            VisionKind::Qwen25,
        )
        .unwrap();
        assert_eq!((c.hidden_size, c.depth), (1280, 32));
    }

    #[test]
    fn windows_cover_the_image_in_transformers_order() {
        let tower = random_tower(&tiny(VisionKind::Qwen25));
        // 6x10 patches = 3x5 merged units; windows of 2x2 units: 2 rows x 3 columns of
        // windows, the last row and column cut short.
        let l = tower.layout(6, 10);
        assert_eq!(l.window_lengths, vec![16, 16, 8, 8, 8, 4]);
        assert_eq!(&l.window_units[..4], &[0, 1, 5, 6]);
        assert_eq!(&l.window_units[4..8], &[2, 3, 7, 8]);
        assert_eq!(&l.window_units[8..10], &[4, 9]);
        assert_eq!(l.positions[..4], [(0, 0), (0, 1), (1, 0), (1, 1)]);
        assert_eq!(l.positions[4], (0, 2));
    }

    /// The windowed layers see only their window: with every layer windowed, the features of
    /// units in one window do not change when pixels in another window do.
    #[test]
    fn windowed_attention_stays_inside_windows() {
        let mut c = tiny(VisionKind::Qwen25);
        c.fullatt_block_indexes.clear();
        let tower = random_tower(&c);
        let grid = (1, 4, 8); // 2x4 units: windows of 2x2 units, two side by side
        let len = c.patch_len();
        let n = 32;
        let mut patches: Vec<f32> = (0..n * len)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let image = |p: &Vec<f32>| PatchedImage {
            patches: p.clone(),
            grid_thw: grid,
            patch_len: len,
            original_size: (56, 112),
        };
        let a = tower.forward(&image(&patches)).unwrap();
        assert_eq!(a.dims(), &[8, 8]);
        // Change the last patch (unit 7, in the right-hand window).
        for v in &mut patches[(n - 1) * len..] {
            *v += 1.0;
        }
        let b = tower.forward(&image(&patches)).unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max(1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Units 0, 1, 4, 5 form the left window (processor order is row-major over units).
        for u in [0, 1, 4, 5] {
            assert!(diff[u] < 1e-6, "unit {u} changed by {}", diff[u]);
        }
        assert!(diff[7] > 1e-4);
        // With a full-attention layer, the change reaches everything.
        let full = random_tower(&tiny(VisionKind::Qwen25));
        let a = full.forward(&image(&patches)).unwrap();
        for v in &mut patches[(n - 1) * len..] {
            *v -= 1.0;
        }
        let b = full.forward(&image(&patches)).unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max(1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(diff[0] > 1e-6);
    }

    #[test]
    fn qwen2_tower_runs() {
        let c = tiny(VisionKind::Qwen2);
        let tower = random_tower(&c);
        let len = c.patch_len();
        let image = PatchedImage {
            patches: (0..16 * len).map(|i| (i % 13) as f32 / 13.0).collect(),
            grid_thw: (1, 4, 4),
            patch_len: len,
            original_size: (56, 56),
        };
        let out = tower.forward(&image).unwrap();
        assert_eq!(out.dims(), &[4, 8]);
    }
}
