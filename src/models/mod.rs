//! Model code and kernels: the Llama-family language model (and the other text families it
//! runs), LLaVA and its CLIP tower, Qwen2-VL / Qwen2.5-VL, the CPU matrix-vector kernels, and
//! the tokenizer read from GGUF metadata.
//!
//! Depends on candle and [`crate::profile`] only. Must not depend on engine (which wraps these
//! models), synth, dataset or anything above; unit tests may borrow synth's preset shapes.

pub mod clip;
pub mod family;
pub mod gemv;
pub mod gguf_tokenizer;
pub mod llama;
pub mod llava;
pub mod qwen2vl;
pub mod rope;
pub mod weights;
