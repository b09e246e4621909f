//! The shared greedy decode loop: prefill a sequence of embeddings, then one token per step,
//! stamping each token's arrival. Both in-process engines (text and LLaVA) call it.

use std::sync::atomic::Ordering;
use std::time::Instant;

use candle_core::Tensor;

use super::{EngineError, GenerationRequest, ModelThreads, StopReason};
use crate::memory::DevicePool;
use crate::models::llama::{KvCache, LlamaModel};
use crate::profile;

/// Greedy choice; reading the id back to the host also waits for the device.
pub fn argmax(logits: &Tensor) -> candle_core::Result<u32> {
    logits.argmax(0)?.to_scalar::<u32>()
}

/// What [`prefill_and_decode`] measured.
pub(crate) struct Decoded {
    pub arrivals: Vec<std::time::Duration>,
    pub tokens: Vec<u32>,
    pub stop_reason: StopReason,
    pub prefill_peak: Option<u64>,
    pub decode_peak: Option<u64>,
}

/// Makes room in `cache` for `needed` positions; called before timing starts, so a bigger
/// cache is never allocated inside a timed step.
pub(crate) fn ensure_cache(
    model: &LlamaModel,
    cache: &mut KvCache,
    needed: usize,
) -> anyhow::Result<()> {
    let context = model.config.max_position_embeddings;
    let needed = needed.min(context);
    if needed > cache.capacity() {
        *cache = model.new_cache(needed.next_power_of_two().min(context))?;
    }
    cache.reset();
    profile::note("kv_cache_bytes", cache.bytes() as u64);
    profile::note("kv_cache_capacity_tokens", cache.capacity() as u64);
    Ok(())
}

/// Prefills `embeds` (`(seq, hidden)`) and decodes greedily; arrivals are offsets from `start`.
/// On the CPU this runs on the engine's [`ModelThreads`]; the CUDA memory pool (CUDA only) is
/// read on the calling thread's side.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prefill_and_decode(
    threads: &ModelThreads,
    model: &LlamaModel,
    cache: &mut KvCache,
    embeds: &Tensor,
    req: &GenerationRequest<'_>,
    eos: &[u32],
    start: Instant,
    pool: Option<&DevicePool>,
) -> Result<Decoded, EngineError> {
    match pool {
        Some(pool) => decode_loop(model, cache, embeds, req, eos, start, Some(pool)),
        // No CUDA memory pool to read (and its handle may not cross threads).
        None => threads.run(|| decode_loop(model, cache, embeds, req, eos, start, None)),
    }
}

fn decode_loop(
    model: &LlamaModel,
    cache: &mut KvCache,
    embeds: &Tensor,
    req: &GenerationRequest<'_>,
    eos: &[u32],
    start: Instant,
    pool: Option<&DevicePool>,
) -> Result<Decoded, EngineError> {
    let context = model.config.max_position_embeddings;
    if let Some(p) = pool {
        p.reset_peak();
    }
    let mut next = {
        let _span = profile::span("phase", "prefill");
        let logits = model.forward_embeds(embeds, cache)?;
        argmax(&logits).map_err(anyhow::Error::from)?
    };
    let mut arrivals = vec![start.elapsed()];
    let mut tokens = vec![next];
    let prefill_peak = pool.and_then(|p| {
        let peak = p.peak();
        p.reset_peak();
        peak
    });
    let stop_reason = loop {
        if !req.ignore_eos && eos.contains(&next) {
            break StopReason::Eos;
        }
        if tokens.len() >= req.max_new_tokens {
            break StopReason::MaxTokens;
        }
        if cache.len() >= context {
            break StopReason::ContextFull;
        }
        if req.cancel.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        {
            let _span = profile::span("phase", "decode_step");
            let step = model.embed_tokens(&[next])?;
            let logits = model.forward_embeds(&step, cache)?;
            next = argmax(&logits).map_err(anyhow::Error::from)?;
        }
        arrivals.push(start.elapsed());
        tokens.push(next);
    };
    Ok(Decoded {
        arrivals,
        tokens,
        stop_reason,
        prefill_peak,
        decode_peak: pool.and_then(DevicePool::peak),
    })
}
