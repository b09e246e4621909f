//! CLIP's vision transformer, as LLaVA uses it: the hidden states of one (or several) inner
//! layers, not the pooled output. SigLIP's (LLaVA-OneVision's tower) is the same encoder with
//! other embeddings: no class token, a bias on the patch convolution, no norm before the
//! first layer; [`TowerKind`] says which.
//!
//! Why not `candle_transformers::models::clip`: LLaVA selects `hidden_states[-2]` in
//! transformers' numbering, where `hidden_states[0]` is the embedding output; candle's list
//! starts after the first layer, so the same index picks a different layer. Owning the tower
//! also means running only the layers the selected feature needs (the last one is skipped for
//! `-2`), as transformers' output would not change without it.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{LayerNorm, Module, VarBuilder};
use serde_json::Value;

/// `vision_config` of a LLaVA checkpoint (transformers' `CLIPVisionConfig`; absent keys take
/// its defaults, as transformers does).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    pub kind: TowerKind,
}

/// Which vision transformer: they share the encoder layers and differ in the embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TowerKind {
    /// CLIP: a class token first, a bias-free patch convolution, `pre_layrnorm`.
    Clip,
    /// SigLIP: patches only, a patch convolution with a bias, no norm before the encoder.
    Siglip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, CLIP's default.
    QuickGelu,
    /// The exact (erf) GELU.
    Gelu,
    /// tanh-approximated GELU.
    GeluTanh,
    /// `x * sigmoid(x)` (Qwen2.5-VL's vision MLP).
    Silu,
}

impl Activation {
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "silu" | "swish" => Self::Silu,
            other => {
                bail!("activation {other:?} is not supported (quick_gelu, gelu, gelu_pytorch_tanh, silu)")
            }
        })
    }

    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Silu => x.silu(),
        }
    }
}

impl ClipVisionConfig {
    /// The tower of `openai/clip-vit-large-patch14-336`, which LLaVA 1.5 and 1.6 use.
    pub fn vit_large_336() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_layers: 24,
            num_heads: 16,
            image_size: 336,
            patch_size: 14,
            num_channels: 3,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
            kind: TowerKind::Clip,
        }
    }

    /// `google/siglip-so400m-patch14-384`, LLaVA-OneVision's tower (27 × 27 patches: the
    /// convolution drops the last 6 pixels of each side).
    pub fn siglip_so400m_384() -> Self {
        Self {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_layers: 27,
            num_heads: 16,
            image_size: 384,
            patch_size: 14,
            num_channels: 3,
            layer_norm_eps: 1e-6,
            activation: Activation::GeluTanh,
            kind: TowerKind::Siglip,
        }
    }

    /// Reads a `vision_config`; absent keys take transformers' defaults for its `model_type`
    /// (`clip_vision_model` unless it names SigLIP).
    pub fn from_json(v: &Value) -> Result<Self> {
        let u = |k: &str, d: usize| v.get(k).and_then(Value::as_u64).map_or(d, |x| x as usize);
        let kind = match v.get("model_type").and_then(Value::as_str) {
            Some(t) if t.starts_with("siglip") => TowerKind::Siglip,
            _ => TowerKind::Clip,
        };
        let (patch, eps, act) = match kind {
            TowerKind::Clip => (32, 1e-5, "quick_gelu"),
            TowerKind::Siglip => (16, 1e-6, "gelu_pytorch_tanh"),
        };
        let cfg = Self {
            hidden_size: u("hidden_size", 768),
            intermediate_size: u("intermediate_size", 3072),
            num_layers: u("num_hidden_layers", 12),
            num_heads: u("num_attention_heads", 12),
            image_size: u("image_size", 224),
            patch_size: u("patch_size", patch),
            num_channels: u("num_channels", 3),
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(eps),
            activation: Activation::from_name(
                v.get("hidden_act").and_then(Value::as_str).unwrap_or(act),
            )?,
            kind,
        };
        // The patch convolution has no padding: a remainder of the image is ignored, but
        // patches there must be.
        if cfg.patch_size == 0 || cfg.image_size < cfg.patch_size {
            bail!(
                "vision_config: image_size {} holds no patch of patch_size {}",
                cfg.image_size,
                cfg.patch_size
            );
        }
        if cfg.num_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_heads) {
            bail!(
                "vision_config: hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size,
                cfg.num_heads
            );
        }
        Ok(cfg)
    }

    /// Patches per side of the square input.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens the tower outputs per tile: the patches, plus CLIP's class token.
    pub fn tokens_per_tile(&self) -> usize {
        self.patches_per_side().pow(2) + usize::from(self.kind == TowerKind::Clip)
    }

    pub fn parameters(&self) -> u64 {
        let (h, i) = (self.hidden_size as u64, self.intermediate_size as u64);
        let p = (self.patch_size * self.patch_size * self.num_channels) as u64;
        let positions = self.tokens_per_tile() as u64;
        let layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h;
        // CLIP: class embedding + pre- and post-norm; SigLIP: convolution bias + post-norm.
        let extra = match self.kind {
            TowerKind::Clip => h + 4 * h,
            TowerKind::Siglip => h + 2 * h,
        };
        p * h + extra + positions * h + layer * self.num_layers as u64
    }
}

struct ClipLayer {
    norm1: LayerNorm,
    q: candle_nn::Linear,
    k: candle_nn::Linear,
    v: candle_nn::Linear,
    out: candle_nn::Linear,
    norm2: LayerNorm,
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
}

/// The vision tower, truncated after the deepest layer a feature needs.
pub struct ClipVisionTower {
    config: ClipVisionConfig,
    /// `(hidden, channels * patch * patch)`: the patch convolution as a matmul.
    patch_weight: Tensor,
    /// SigLIP's convolution bias.
    patch_bias: Option<Tensor>,
    /// CLIP's class token.
    class_embedding: Option<Tensor>,
    position_embedding: Tensor,
    /// CLIP's `pre_layrnorm`.
    pre_norm: Option<LayerNorm>,
    layers: Vec<ClipLayer>,
    /// Indices into transformers' `hidden_states` (0 = embeddings), non-negative.
    feature_layers: Vec<usize>,
    dtype: DType,
    device: Device,
}

fn layer_norm(vb: &VarBuilder, size: usize, eps: f64, name: &str) -> Result<LayerNorm> {
    candle_nn::layer_norm(size, eps, vb.pp(name)).with_context(|| format!("loading {name}"))
}

fn linear(vb: &VarBuilder, i: usize, o: usize, name: &str) -> Result<candle_nn::Linear> {
    candle_nn::linear(i, o, vb.pp(name)).with_context(|| format!("loading {name}"))
}

impl ClipVisionTower {
    /// Loads the tower under `vb` (rooted at `vision_model`), keeping the layers needed for
    /// `feature_layers` (transformers' `vision_feature_layer`: an index into `hidden_states`,
    /// negative from the end).
    pub fn load(config: ClipVisionConfig, vb: VarBuilder, feature_layers: &[i64]) -> Result<Self> {
        let c = &config;
        let states = c.num_layers as i64 + 1;
        let mut resolved = Vec::with_capacity(feature_layers.len());
        for &l in feature_layers {
            let idx = if l < 0 { states + l } else { l };
            if !(0..states).contains(&idx) {
                bail!(
                    "vision_feature_layer {l} is out of range for a tower of {} layers",
                    c.num_layers
                );
            }
            resolved.push(idx as usize);
        }
        let keep = resolved.iter().copied().max().unwrap_or(c.num_layers);
        let emb = vb.pp("embeddings");
        let patch_dim = c.num_channels * c.patch_size * c.patch_size;
        let patch_weight = emb
            .get(
                (c.hidden_size, c.num_channels, c.patch_size, c.patch_size),
                "patch_embedding.weight",
            )
            .context("loading embeddings.patch_embedding")?
            .reshape((c.hidden_size, patch_dim))?;
        let clip = c.kind == TowerKind::Clip;
        let patch_bias = if clip {
            None
        } else {
            Some(
                emb.get(c.hidden_size, "patch_embedding.bias")
                    .context("loading embeddings.patch_embedding.bias")?,
            )
        };
        let class_embedding = if clip {
            Some(
                emb.get(c.hidden_size, "class_embedding")
                    .context("loading embeddings.class_embedding")?,
            )
        } else {
            None
        };
        let position_embedding = emb
            .get(
                (c.tokens_per_tile(), c.hidden_size),
                "position_embedding.weight",
            )
            .context("loading embeddings.position_embedding")?;
        // transformers spells it `pre_layrnorm`.
        let pre_norm = if clip {
            Some(layer_norm(
                &vb,
                c.hidden_size,
                c.layer_norm_eps,
                "pre_layrnorm",
            )?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(keep);
        for l in 0..keep {
            let vbl = vb.pp(format!("encoder.layers.{l}"));
            let a = vbl.pp("self_attn");
            let (h, i) = (c.hidden_size, c.intermediate_size);
            layers.push(ClipLayer {
                norm1: layer_norm(&vbl, h, c.layer_norm_eps, "layer_norm1")?,
                q: linear(&a, h, h, "q_proj")?,
                k: linear(&a, h, h, "k_proj")?,
                v: linear(&a, h, h, "v_proj")?,
                out: linear(&a, h, h, "out_proj")?,
                norm2: layer_norm(&vbl, h, c.layer_norm_eps, "layer_norm2")?,
                fc1: linear(&vbl.pp("mlp"), h, i, "fc1")?,
                fc2: linear(&vbl.pp("mlp"), i, h, "fc2")?,
            });
        }
        Ok(Self {
            patch_weight,
            patch_bias,
            class_embedding,
            position_embedding,
            pre_norm,
            layers,
            feature_layers: resolved,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            config,
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// Selected hidden states of `pixels` (`tiles × channels × size × size`), concatenated
    /// along the feature axis: `(tiles, tokens per tile, hidden × features)`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, ch, h, w) = pixels.dims4()?;
        if ch != c.num_channels || h != c.image_size || w != c.image_size {
            bail!(
                "vision tower expects {}x{}x{} pixels, got {ch}x{h}x{w}",
                c.num_channels,
                c.image_size,
                c.image_size
            );
        }
        let (p, side) = (c.patch_size, c.patches_per_side());
        // Non-overlapping patches: the strided convolution is one matmul over flattened patches,
        // flattened in the weight's (channel, row, column) order; pixels past the last whole
        // patch are not seen, as by the unpadded convolution.
        let covered = side * p;
        let patches = pixels
            .to_dtype(self.dtype)?
            .narrow(2, 0, covered)?
            .narrow(3, 0, covered)?
            .reshape((b, ch, side, p, side, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * side * side, ch * p * p))?;
        let embedded =
            patches
                .matmul(&self.patch_weight.t()?)?
                .reshape((b, side * side, c.hidden_size))?;
        let embedded = match &self.patch_bias {
            Some(bias) => embedded.broadcast_add(bias)?,
            None => embedded,
        };
        let tokens = match &self.class_embedding {
            Some(class) => {
                let class =
                    class
                        .reshape((1, 1, c.hidden_size))?
                        .broadcast_as((b, 1, c.hidden_size))?;
                Tensor::cat(&[&class, &embedded], 1)?
            }
            None => embedded,
        };
        let x = tokens.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        let mut x = match &self.pre_norm {
            Some(norm) => norm.forward(&x)?,
            None => x,
        };
        let mut selected: Vec<Option<Tensor>> = vec![None; self.feature_layers.len()];
        let mut keep = |state: usize, x: &Tensor| {
            for (slot, &want) in selected.iter_mut().zip(&self.feature_layers) {
                if want == state {
                    *slot = Some(x.clone());
                }
            }
        };
        keep(0, &x);
        for (l, layer) in self.layers.iter().enumerate() {
            x = self.layer(layer, &x)?;
            keep(l + 1, &x);
        }
        let parts: Vec<Tensor> = selected.into_iter().flatten().collect();
        Ok(Tensor::cat(&parts, D::Minus1)?)
    }

    fn layer(&self, layer: &ClipLayer, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, s, h) = x.dims3()?;
        let heads = c.num_heads;
        let hd = h / heads;
        let n = layer.norm1.forward(x)?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, s, heads, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = split((layer.q.forward(&n)? * (hd as f64).powf(-0.5))?)?;
        let k = split(layer.k.forward(&n)?)?;
        let v = split(layer.v.forward(&n)?)?;
        let scores = q.matmul(&k.t()?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
            .to_dtype(self.dtype)?;
        let attn = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, s, h))?
            .apply(&layer.out)?;
        let x = (x + attn)?;
        let n = layer.norm2.forward(&x)?;
        let m = c
            .activation
            .apply(&layer.fc1.forward(&n)?)?
            .apply(&layer.fc2)?;
        Ok((x + m)?)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::testutil::max_abs_diff;
    use candle_nn::VarMap;

    fn tiny() -> ClipVisionConfig {
        ClipVisionConfig {
            hidden_size: 16,
            intermediate_size: 32,
            num_layers: 3,
            num_heads: 2,
            image_size: 28,
            patch_size: 14,
            num_channels: 3,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
            kind: TowerKind::Clip,
        }
    }

    #[test]
    fn config_defaults_follow_transformers() {
        let c = ClipVisionConfig::from_json(&serde_json::json!({
            "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
            "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14
        }))
        .unwrap();
        assert_eq!(c, ClipVisionConfig::vit_large_336());
        assert_eq!(c.patches_per_side(), 24);
        // CLIP ViT-L/14-336's vision tower has 303.5 M parameters (without its projection).
        assert_eq!(c.parameters() / 100_000, 3035);
        assert!(ClipVisionConfig::from_json(
            &serde_json::json!({"image_size": 10, "patch_size": 14})
        )
        .is_err());
        // LLaVA-OneVision's tower as llava-hf's config.json lists it.
        let s = ClipVisionConfig::from_json(&serde_json::json!({
            "model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 384,
            "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 26,
            "patch_size": 14, "vision_use_head": false
        }))
        .unwrap();
        assert_eq!(
            s,
            ClipVisionConfig {
                num_layers: 26,
                ..ClipVisionConfig::siglip_so400m_384()
            }
        );
        assert_eq!((s.patches_per_side(), s.tokens_per_tile()), (27, 729));
        // SigLIP so400m/14-384's vision tower without its attention-pooling head: 412.9 M.
        assert_eq!(
            ClipVisionConfig::siglip_so400m_384().parameters() / 100_000,
            4129
        );
    }

    /// SigLIP's embeddings: the biased strided convolution over the whole patches (the
    /// remainder of a 32-pixel side is ignored by 14-pixel patches), plus positions, no class
    /// token and no norm.
    #[test]
    fn siglip_embeds_patches_with_bias_and_no_class_token() {
        let c = ClipVisionConfig {
            image_size: 32,
            kind: TowerKind::Siglip,
            ..tiny()
        };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        ClipVisionTower::load(c.clone(), vb.clone(), &[-1]).unwrap();
        for var in varmap.data().lock().unwrap().values() {
            let t = Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap();
            var.set(&t).unwrap();
        }
        assert!(!varmap
            .data()
            .lock()
            .unwrap()
            .keys()
            .any(|k| k.contains("class_embedding") || k.contains("pre_layrnorm")));
        let pixels = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let embeddings = ClipVisionTower::load(c.clone(), vb.clone(), &[0])
            .unwrap()
            .forward(&pixels)
            .unwrap();
        let vars = varmap.data().lock().unwrap();
        let var = |name: &str| vars[name].as_tensor().clone();
        let reference = pixels
            .conv2d(&var("embeddings.patch_embedding.weight"), 0, 14, 1, 1)
            .unwrap()
            .broadcast_add(
                &var("embeddings.patch_embedding.bias")
                    .reshape((1, 16, 1, 1))
                    .unwrap(),
            )
            .unwrap()
            .flatten_from(2)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .broadcast_add(&var("embeddings.position_embedding.weight"))
            .unwrap();
        drop(vars);
        assert_eq!(embeddings.dims(), &[2, 4, 16]);
        let diff = max_abs_diff(&embeddings, &reference);
        assert!(diff < 1e-4, "{diff}");
        let last = ClipVisionTower::load(c, vb, &[-1]).unwrap();
        assert_eq!(last.layers.len(), 3);
        assert_eq!(last.forward(&pixels).unwrap().dims(), &[2, 4, 16]);
    }

    #[test]
    fn forward_embeds_patches_as_the_strided_convolution_does() {
        let c = tiny();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        // Loading creates the variables (layer norms as (1, 0)); then every weight is made
        // random and the tower loaded again over them.
        ClipVisionTower::load(c.clone(), vb.pp("vision_model"), &[-2]).unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let t = Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap();
            var.set(&t).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let tower = ClipVisionTower::load(c.clone(), vb.pp("vision_model"), &[-2]).unwrap();
        assert_eq!(
            tower.layers.len(),
            2,
            "hidden_states[-2] needs 2 of 3 layers"
        );
        let pixels = Tensor::randn(0f32, 1.0, (2, 3, 28, 28), &Device::Cpu).unwrap();
        // hidden_states[0] is the embedding output: patches, class token, positions, pre-norm.
        // The real forward, asked for it, must equal the same computed independently, with
        // candle's strided convolution and a layer norm written out here.
        let embeddings = ClipVisionTower::load(c.clone(), vb.pp("vision_model"), &[0])
            .unwrap()
            .forward(&pixels)
            .unwrap();
        let vars = varmap.data().lock().unwrap();
        let var = |name: &str| vars[&format!("vision_model.{name}")].as_tensor().clone();
        let conv = pixels
            .conv2d(&var("embeddings.patch_embedding.weight"), 0, 14, 1, 1)
            .unwrap()
            .flatten_from(2)
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        let class = var("embeddings.class_embedding")
            .reshape((1, 1, 16))
            .unwrap()
            .broadcast_as((2, 1, 16))
            .unwrap();
        let x = Tensor::cat(&[&class, &conv], 1)
            .unwrap()
            .broadcast_add(&var("embeddings.position_embedding.weight"))
            .unwrap();
        let mean = x.mean_keepdim(2).unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var_x = centred.sqr().unwrap().mean_keepdim(2).unwrap();
        let reference = centred
            .broadcast_div(&(var_x + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&var("pre_layrnorm.weight"))
            .unwrap()
            .broadcast_add(&var("pre_layrnorm.bias"))
            .unwrap();
        drop(vars);
        assert_eq!(embeddings.dims(), &[2, 5, 16]);
        let diff = max_abs_diff(&embeddings, &reference);
        assert!(diff < 1e-4, "{diff}");
        let out = tower.forward(&pixels).unwrap();
        assert_eq!(out.dims(), &[2, 5, 16]);
        let two = ClipVisionTower::load(c, vb.pp("vision_model"), &[-2, -1]).unwrap();
        assert_eq!(two.forward(&pixels).unwrap().dims(), &[2, 5, 32]);
    }
}
