//! The OpenAI-compatible HTTP backend: streaming chat/completions requests to a server
//! (llama.cpp's llama-server, vLLM, SGLang, TGI), timed from the client side.

pub mod http;
pub mod probe;
pub mod sse;
pub mod stream;
