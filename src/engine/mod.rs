//! In-process engines that turn a prompt (and maybe images) into tokens, and say when each
//! token arrived: the [`Engine`] trait, opening a model ([`open`]), the candle engines (one file
//! each), their shared greedy decode loop ([`decode`]) and prompt templates ([`template`]).
//! The model math itself is in `models`; the HTTP client for servers is
//! `client`, driven by the serving loop rather than through this trait.
//!
//! Uses models, synth (for `random:` presets), memory and profile. Must not depend on bench,
//! report, client, dataset or commands: an engine knows nothing about reports or data sets.
//!
//! Timing contract: every `Duration` in a [`Generation`] is measured from the moment
//! [`Engine::generate`] was called, with the host clock read only after the device finished the
//! work being timed (on CUDA: the model thread's stream is synchronised; reading a token id back
//! to the host is itself a synchronisation point).

pub mod candle_llava;
pub mod candle_qwen2vl;
pub mod candle_text;
pub mod decode;
pub mod open;
pub mod template;
pub mod truncation;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The CPU kernel set the in-process engines run (`portable`, `avx2` or `avx512`) and the CPU
/// features it was chosen from, for reports to record without reaching into the model code.
pub fn cpu_kernels() -> (&'static str, Vec<&'static str>) {
    use crate::models::kernels;
    (
        kernels::KernelSet::active().name(),
        kernels::detected_features(),
    )
}

/// The threads an in-process engine runs its CPU work on: a rayon pool of its own, sized by
/// `RAYON_NUM_THREADS` (which `--threads` sets) or the core count; none on CUDA.
///
/// Why a pool of the engine's own, entered once per request: called from outside a pool, every
/// parallel kernel (a hundred or more per decode step) hands its work over and puts the calling
/// thread to sleep until the pool wakes it, and that wake-up latency would be timed as the
/// model's. Inside the pool, the kernels' halves are taken by the other workers while this one
/// works too, and candle's own parallel operations use the same workers. A pool per engine also
/// keeps one engine's work (and profile) apart from another's in the same process. CUDA work
/// stays on the calling thread, since candle's streams are per thread.
pub struct ModelThreads(Option<rayon::ThreadPool>);

impl ModelThreads {
    /// Worker threads of the pool (`None` on CUDA, where the work runs on the calling thread).
    pub fn count(&self) -> Option<usize> {
        self.0.as_ref().map(rayon::ThreadPool::current_num_threads)
    }

    pub fn for_device(device: &candle_core::Device) -> anyhow::Result<Self> {
        if !device.is_cpu() {
            return Ok(Self(None));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("vlmbench-cpu-{i}"))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the CPU thread pool: {e}"))?;
        Ok(Self(Some(pool)))
    }

    /// Runs `work` on the pool (on the calling thread where there is none); a profile being
    /// recorded on the calling thread is recorded on the worker too.
    pub fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        match &self.0 {
            Some(pool) => {
                let record = crate::profile::recording_here();
                pool.install(|| {
                    let _record = crate::profile::record_on_this_thread(record);
                    work()
                })
            }
            None => work(),
        }
    }
}

/// What the runner asks an engine to do for one sample.
#[derive(Debug, Clone)]
pub struct GenerationRequest<'a> {
    /// Text of the user turn, before the model's chat template.
    pub prompt: &'a str,
    /// Image files for vision models, in the order the prompt shows them; empty for text-only
    /// samples. Models that take one image per sample refuse more as a failure of the sample.
    pub images: &'a [PathBuf],
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Keep decoding past end-of-sequence tokens (fixed-length decode).
    pub ignore_eos: bool,
    /// Set by the Ctrl-C handler; engines check it between decode steps.
    pub cancel: &'a AtomicBool,
}

/// Why decoding stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-sequence token (it is counted as an output token).
    Eos,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The model's context window is full.
    ContextFull,
}

/// Everything an engine measured for one sample. Durations are offsets from request start.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Image load + resize + normalise + tokenize (prompt template included).
    pub preprocess: Duration,
    /// Vision tower + projector, for vision models with an image.
    pub vision_encode: Option<Duration>,
    /// Offset at which each generated token id was on the host; `[0]` is the TTFT.
    pub token_arrivals: Vec<Duration>,
    /// Offset at which the whole request finished (text detokenized).
    pub end: Duration,
    /// Prompt length in tokens as the model saw it, image tokens included.
    pub input_tokens: usize,
    /// Of `input_tokens`, how many stand for the images (all of them together).
    pub image_tokens: usize,
    /// How many images the prompt held.
    pub images: usize,
    /// Generated token ids, in order.
    pub output_token_ids: Vec<u32>,
    /// Generated text (decoded from `output_token_ids`).
    pub text: String,
    pub stop_reason: StopReason,
    /// Exact CUDA memory-pool peaks per phase (CUDA runs only).
    pub pool_peaks: Option<PhasePeaks>,
}

pub use crate::memory::PhasePeaks;

/// Errors the runner treats differently: a failed sample is recorded and the run goes on;
/// a cancellation ends the run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// This sample cannot be run (missing image, prompt longer than the context...).
    #[error("{0}")]
    Sample(String),
    /// Ctrl-C arrived while this sample ran.
    #[error("interrupted")]
    Cancelled,
    /// The engine itself is broken (device error...); the run stops.
    #[error(transparent)]
    Fatal(#[from] anyhow::Error),
}

/// A failure of this sample only, from any error a model step returns.
pub(crate) fn sample_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Sample(e.to_string())
}

/// Static facts about a loaded engine, recorded in the report's environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineInfo {
    /// `candle` for in-process runs, `openai` for HTTP servers.
    pub backend: String,
    /// Model identifier as the user gave it (path, hub id or `random:<preset>`).
    pub model: String,
    /// Architecture detected from config.json / GGUF metadata, e.g. `llama`, `llava-1.5`.
    pub architecture: String,
    /// `f32`, `f16`, `bf16`, or a GGUF quantisation such as `q8_0`.
    pub dtype: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Parameter count, where known.
    pub parameters: Option<u64>,
    /// Context window in tokens.
    pub context_length: usize,
    /// Whether the model takes images.
    pub vision: bool,
}

pub use crate::models::llama::DecodeBytes;
use crate::models::llama::{KvCache, LlamaModel};

/// A model that generates greedily and times itself.
pub trait Engine {
    fn info(&self) -> &EngineInfo;
    /// Runs one request to completion (greedy, temperature 0).
    fn generate(&mut self, request: &GenerationRequest<'_>) -> Result<Generation, EngineError>;
    /// The device the model runs on, for profiling's synchronisation (`None`: not in-process).
    fn device(&self) -> Option<candle_core::Device> {
        None
    }
    /// Sizes the engine's buffers (the KV cache) for the longest of `requests` (prompt plus
    /// its `max_new_tokens`), once, before any of them is timed: a cache grown inside a request
    /// would be allocated (and zeroed) inside its TTFT. Requests that cannot run (a missing
    /// image) are skipped here; they fail when they are run.
    fn reserve(&mut self, _requests: &[GenerationRequest<'_>]) -> Result<(), EngineError> {
        Ok(())
    }
    /// The project's decoder behind an in-process engine and the threads it runs on (`None`:
    /// a server, or a scripted engine); the figures below follow from it.
    fn decoder(&self) -> Option<(&LlamaModel, &ModelThreads)> {
        None
    }
    /// The decoder and its KV cache, to change the cache.
    fn decoder_and_cache(&mut self) -> Option<(&mut LlamaModel, &mut KvCache)> {
        None
    }
    /// Threads the engine's CPU work runs on (`None` where it runs on a GPU or a server).
    fn cpu_threads(&self) -> Option<usize> {
        self.decoder().and_then(|(_, threads)| threads.count())
    }
    /// What one decode step reads from memory with `context` positions cached (`None`: not
    /// known).
    fn decode_read_bytes(&self, context: usize) -> Option<DecodeBytes> {
        self.decoder()
            .map(|(llm, _)| llm.decode_read_bytes(context))
    }
    /// The read bandwidth the engine's CPU threads reach streaming `bytes` (`None` off the CPU).
    fn read_bandwidth(&self, bytes: u64) -> Option<f64> {
        let (llm, threads) = self.decoder()?;
        decode::cpu_read_bandwidth(llm, threads, bytes)
    }
    /// Keeps the KV cache in `dtype` from now on (`--kv-cache-dtype`).
    fn set_kv_cache_dtype(&mut self, dtype: candle_core::DType) -> anyhow::Result<()> {
        match self.decoder_and_cache() {
            Some((llm, cache)) => decode::set_kv_dtype(llm, cache, dtype),
            None => anyhow::bail!(
                "this engine keeps no KV cache of its own, so a {} cache cannot be chosen",
                dtype.as_str()
            ),
        }
    }
    /// Floating-point operations of a prefill of `prompt` tokens (`None`: not known).
    fn prefill_flops(&self, prompt: usize) -> Option<u64> {
        self.decoder().map(|(llm, _)| llm.prefill_flops(prompt))
    }
    /// The f32 matrix-product rate (FLOP/s) the engine's CPU threads reach with its prefill
    /// kernels, and the `(m, k, n)` it was measured on (`None` off the CPU).
    fn gemm_rate(&self) -> Option<(f64, [usize; 3])> {
        let (llm, threads) = self.decoder()?;
        decode::cpu_gemm_rate(llm, threads)
    }
}
