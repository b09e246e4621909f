//! Model code and kernels: the Llama-family language model, LLaVA and its CLIP tower, the CPU
//! matrix-vector kernels, and the tokenizer read from GGUF metadata.

pub mod clip;
pub mod gemv;
pub mod gguf_tokenizer;
pub mod llama;
pub mod llava;
