//! The OpenAI-compatible HTTP client: streaming chat/completions requests to a server
//! (llama.cpp's llama-server, vLLM, SGLang, TGI), timed from the client side, and the probe of
//! what the server says about itself.
//!
//! Depends on no other vlmbench module: it knows nothing about data sets, load patterns
//! (`bench::serving` drives it) or reports.

pub mod cache_reset;
pub mod http;
pub mod probe;
pub mod retry;
pub mod secret;
pub mod server_metrics;
pub mod sse;
pub mod stream;
