//! Rotary position embeddings as transformers computes them: the inverse frequencies of each
//! `rope_type` (default, linear, dynamic, yarn, llama3, longrope), the attention factor some
//! types multiply cos/sin with, and the angles of a run of positions.
//!
//! Why the angles are computed per forward call rather than tabled once: two types (dynamic,
//! longrope) change their frequencies with the length of the sequence so far, exactly as
//! transformers re-derives them from the largest position of each forward call; and a table of
//! every position of a 128 k-context model would cost more memory than the computation costs
//! time (a few thousand sines per step).

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

/// A `rope_type` with the parameters that change the frequencies.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Linear {
        factor: f64,
    },
    /// NTK-aware scaling whose base grows once the sequence passes the config's
    /// `max_position_embeddings` (kept here: the decoder's context is `factor` times that).
    Dynamic {
        factor: f64,
        original_max_position_embeddings: f64,
    },
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        attention_factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Phi-3's: per-frequency factors, the long set once the sequence passes the original
    /// context.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: f64,
        attention_factor: f64,
    },
}

/// Everything that fixes the rotary angles of one kind of layer.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    pub scaling: Option<RopeScaling>,
    /// Dimensions of each head that rotate (`head_dim × partial_rotary_factor`), even.
    pub rotary_dim: usize,
}

fn num(s: &Value, k: &str) -> Option<f64> {
    s.get(k).and_then(Value::as_f64)
}

/// Reads a `rope_scaling` / `rope_parameters` object. `max_position_embeddings` and a
/// top-level `original_max_position_embeddings` (Phi-3 keeps it outside) fill what the object
/// leaves out, as transformers' standardisation does.
pub fn parse_scaling(
    s: &Value,
    max_position_embeddings: usize,
    top_level_original_max: Option<f64>,
) -> Result<Option<RopeScaling>> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let max_pos = max_position_embeddings as f64;
    let original = || {
        top_level_original_max
            .filter(|_| kind == "longrope" || kind == "yarn" || kind == "llama3")
            .or_else(|| num(s, "original_max_position_embeddings"))
            .unwrap_or(max_pos)
    };
    let factor = |what: &str| {
        num(s, "factor").ok_or_else(|| anyhow!("rope_scaling type {what:?} needs `factor`"))
    };
    Ok(Some(match kind {
        "default" => return Ok(None),
        "linear" => RopeScaling::Linear {
            factor: factor("linear")?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: factor("dynamic")?,
            original_max_position_embeddings: max_pos,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor("llama3")?,
            low_freq_factor: num(s, "low_freq_factor")
                .ok_or_else(|| anyhow!("rope_scaling llama3 needs `low_freq_factor`"))?,
            high_freq_factor: num(s, "high_freq_factor")
                .ok_or_else(|| anyhow!("rope_scaling llama3 needs `high_freq_factor`"))?,
            original_max_position_embeddings: original(),
        },
        "yarn" => {
            let original = original();
            let factor = num(s, "factor").unwrap_or(max_pos / original);
            let mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match num(s, "attention_factor") {
                Some(a) => a,
                None => match (num(s, "mscale"), num(s, "mscale_all_dim")) {
                    (Some(m), Some(a)) if m != 0.0 && a != 0.0 => {
                        mscale(factor, m) / mscale(factor, a)
                    }
                    _ => mscale(factor, 1.0),
                },
            };
            let beta = |k: &str, d: f64| num(s, k).filter(|b| *b != 0.0).unwrap_or(d);
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                attention_factor,
                beta_fast: beta("beta_fast", 32.0),
                beta_slow: beta("beta_slow", 1.0),
                truncate: s.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            }
        }
        "longrope" => {
            let list = |k: &str| -> Result<Vec<f64>> {
                s.get(k)
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_f64).collect())
                    .ok_or_else(|| anyhow!("rope_scaling longrope needs `{k}` (a list)"))
            };
            let original = original();
            let factor = num(s, "factor").unwrap_or(max_pos / original);
            let attention_factor = num(s, "attention_factor").unwrap_or(if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / original.ln()).sqrt()
            });
            RopeScaling::LongRope {
                short_factor: list("short_factor")?,
                long_factor: list("long_factor")?,
                original_max_position_embeddings: original,
                attention_factor,
            }
        }
        other => bail!(
            "rope_scaling type {other:?} is not supported (supported: default, linear, dynamic, yarn, llama3, longrope)"
        ),
    }))
}

impl RopeSpec {
    /// The factor cos and sin are multiplied by (yarn, longrope), 1 otherwise.
    pub fn attention_factor(&self) -> f32 {
        match &self.scaling {
            Some(RopeScaling::Yarn {
                attention_factor, ..
            })
            | Some(RopeScaling::LongRope {
                attention_factor, ..
            }) => *attention_factor as f32,
            _ => 1.0,
        }
    }

    /// transformers' default frequencies for `base`, in f32 as it computes them.
    fn base_freqs(&self, base: f64) -> Vec<f32> {
        let d = self.rotary_dim;
        (0..d / 2)
            .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / d as f32))
            .collect()
    }

    /// Inverse frequencies (`rotary_dim / 2`) for a forward call whose last position is
    /// `seq_len - 1`.
    pub fn inv_freq(&self, seq_len: usize) -> Vec<f32> {
        let d = self.rotary_dim;
        match &self.scaling {
            None => self.base_freqs(self.theta),
            Some(RopeScaling::Linear { factor }) => self
                .base_freqs(self.theta)
                .into_iter()
                .map(|f| f / *factor as f32)
                .collect(),
            Some(RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings: max_pos,
            }) => {
                let max_pos = *max_pos;
                let seq = (seq_len as f64).max(max_pos);
                let base = self.theta
                    * ((factor * seq / max_pos) - (factor - 1.0)).powf(d as f64 / (d as f64 - 2.0));
                self.base_freqs(base)
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            }) => {
                // In f32, as transformers computes it.
                let (factor, lo, hi, old) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                    *old as f32,
                );
                let (low_wavelen, high_wavelen) = (old / lo, old / hi);
                self.base_freqs(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast,
                beta_slow,
                truncate,
                ..
            }) => {
                let base = self.theta;
                let dim = d as f64;
                let correction = |rotations: f64| {
                    dim * (original / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction(*beta_fast), correction(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001;
                }
                let factor = *factor as f32;
                (0..d / 2)
                    .map(|i| {
                        let pos_freq = (base as f32).powf((2 * i) as f32 / d as f32);
                        let extrapolation = 1.0 / pos_freq;
                        let interpolation = 1.0 / (factor * pos_freq);
                        let ramp = ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
                        let extra_factor = 1.0 - ramp;
                        interpolation * (1.0 - extra_factor) + extrapolation * extra_factor
                    })
                    .collect()
            }
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: original,
                ..
            }) => {
                let ext = if seq_len as f64 > *original {
                    long_factor
                } else {
                    short_factor
                };
                (0..d / 2)
                    .map(|i| {
                        let shape = (2 * i) as f32 / d as f32;
                        let e = ext.get(i).copied().unwrap_or(1.0) as f32;
                        1.0 / (e * (self.theta as f32).powf(shape))
                    })
                    .collect()
            }
        }
    }

    /// Whether the frequencies depend on the sequence length (dynamic, longrope).
    pub fn is_dynamic(&self) -> bool {
        matches!(
            self.scaling,
            Some(RopeScaling::Dynamic { .. }) | Some(RopeScaling::LongRope { .. })
        )
    }

    /// Checks that list-valued parameters fit the rotary dimension.
    pub fn validate(&self) -> Result<()> {
        if self.rotary_dim == 0 || !self.rotary_dim.is_multiple_of(2) {
            bail!(
                "rotary dimension {} must be even and positive",
                self.rotary_dim
            );
        }
        if let Some(RopeScaling::LongRope {
            short_factor,
            long_factor,
            ..
        }) = &self.scaling
        {
            let half = self.rotary_dim / 2;
            if short_factor.len() != half || long_factor.len() != half {
                bail!(
                    "rope_scaling longrope: short_factor and long_factor need {half} entries (rotary dim / 2), found {} and {}",
                    short_factor.len(),
                    long_factor.len()
                );
            }
        }
        Ok(())
    }

    /// cos and sin (`seq × rotary_dim / 2` each, row-major) of positions
    /// `offset..offset + seq` in one forward call, attention factor applied.
    pub fn angles(&self, offset: usize, seq: usize) -> (Vec<f32>, Vec<f32>) {
        let inv = self.inv_freq(offset + seq);
        let af = self.attention_factor();
        let mut cos = Vec::with_capacity(seq * inv.len());
        let mut sin = Vec::with_capacity(seq * inv.len());
        for p in offset..offset + seq {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos() * af);
                sin.push(a.sin() * af);
            }
        }
        (cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(scaling: Option<RopeScaling>) -> RopeSpec {
        RopeSpec {
            theta: 10_000.0,
            scaling,
            rotary_dim: 8,
        }
    }

    #[test]
    fn linear_divides_every_frequency() {
        let s = parse_scaling(&json!({"rope_type": "linear", "factor": 4.0}), 64, None).unwrap();
        let (a, b) = (spec(None).inv_freq(1), spec(s).inv_freq(1));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(*y, x / 4.0);
        }
    }

    #[test]
    fn dynamic_changes_only_past_the_context() {
        let s = parse_scaling(&json!({"type": "dynamic", "factor": 2.0}), 64, None).unwrap();
        let d = spec(s);
        assert_eq!(d.inv_freq(10), spec(None).inv_freq(10));
        assert_eq!(d.inv_freq(64), spec(None).inv_freq(64));
        let long = d.inv_freq(100);
        assert!(long[1] < spec(None).inv_freq(100)[1]);
        assert_eq!(long[0], 1.0);
    }

    #[test]
    fn longrope_switches_sets_and_scales_attention() {
        let s = parse_scaling(
            &json!({"rope_type": "longrope", "short_factor": [1.0, 1.0, 1.0, 1.0],
                    "long_factor": [2.0, 2.0, 2.0, 2.0]}),
            128,
            Some(32.0),
        )
        .unwrap();
        let d = spec(s);
        d.validate().unwrap();
        assert_eq!(d.inv_freq(32), spec(None).inv_freq(32));
        assert_eq!(d.inv_freq(33)[1], spec(None).inv_freq(33)[1] / 2.0);
        let want = (1.0 + 4f64.ln() / 32f64.ln()).sqrt() as f32;
        assert!((d.attention_factor() - want).abs() < 1e-7);
    }

    #[test]
    fn yarn_defaults_and_unknown_types() {
        let s = parse_scaling(
            &json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
            64,
            None,
        )
        .unwrap();
        let d = spec(s);
        assert!((d.attention_factor() - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        // The highest frequency is extrapolated (kept), the lowest interpolated (divided).
        let (base, got) = (spec(None).inv_freq(1), d.inv_freq(1));
        assert_eq!(got[0], base[0]);
        assert!((got[3] - base[3] / 4.0).abs() < 1e-9);
        let e = parse_scaling(&json!({"rope_type": "mrope"}), 64, None).unwrap_err();
        assert!(e.to_string().contains("mrope"), "{e}");
    }
}
