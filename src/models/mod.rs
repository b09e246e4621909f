//! Model code and kernels: the text decoder of every supported family ([`llama`], configured by
//! [`family`] and [`rope`], weights found by [`weights`]), LLaVA and its CLIP tower, Qwen2-VL / Qwen2.5-VL ([`qwen2vl`]), the CPU
//! matrix-vector kernels, and the tokenizer read from GGUF metadata.
//!
//! Depends on candle, [`crate::profile`] and [`crate::memory`] (a leaf) only. Must not depend on engine (which wraps these
//! models), synth, dataset or anything above; unit tests may borrow synth's preset shapes.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod bandwidth;
pub mod clip;
pub mod config_check;
pub mod fast_exp;
pub mod gemv;
pub mod gguf_tokenizer;
pub mod kernels;
pub mod kquants;
pub mod llama;
pub mod llava;
pub mod panel_gemm;
pub mod prefill;
pub mod qwen2vl;
pub mod rope;
#[cfg(test)]
mod testutil;
