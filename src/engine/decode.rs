//! The shared greedy decode loop: prefill a sequence of embeddings, then one token per step,
//! stamping each token's arrival. Both in-process engines (text and LLaVA) call it.

use std::sync::atomic::Ordering;
use std::time::Instant;

use candle_core::Tensor;

use super::{EngineError, GenerationRequest, ModelThreads, StopReason};
use crate::memory::DevicePool;
use crate::models::llama::{KvCache, LlamaModel, Stopped};
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

/// Refuses a prompt of `input_tokens` (`image_tokens` of them for images) that leaves no room in
/// the model's context, then readies `cache` for the prompt and `max_new_tokens`.
pub(crate) fn fit_prompt(
    model: &LlamaModel,
    cache: &mut KvCache,
    input_tokens: usize,
    image_tokens: usize,
    max_new_tokens: usize,
) -> Result<(), EngineError> {
    let context = model.config.max_position_embeddings;
    if input_tokens >= context {
        let images = match image_tokens {
            0 => String::new(),
            n => format!(" ({n} for the image)"),
        };
        return Err(EngineError::Sample(format!(
            "prompt of {input_tokens} tokens{images} does not fit the model's context of {context} tokens"
        )));
    }
    ensure_cache(model, cache, input_tokens + max_new_tokens)?;
    Ok(())
}

/// Makes room in `cache` for `needed` positions and empties it. The runner sizes the cache
/// for the whole set before the first request ([`super::Engine::reserve`]), so inside a timed
/// request this only resets it; growing here is the fallback for a caller that did not reserve.
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
    note_cache(cache);
    Ok(())
}

/// Sizes `cache` for exactly `needed` positions (at most the context) before timing starts:
/// the longest request of the run then never allocates. A cache already big enough is kept.
pub(crate) fn reserve_cache(
    model: &LlamaModel,
    cache: &mut KvCache,
    needed: usize,
) -> anyhow::Result<()> {
    let needed = needed.min(model.config.max_position_embeddings);
    if needed > cache.capacity() {
        // Drop the old buffers first, so peak memory is not old + new.
        *cache = model.new_cache(1)?;
        *cache = model.new_cache(needed)?;
        if model.device().is_cpu() {
            // Every decode step reads the cache as it reads the weights: huge pages under it too.
            crate::memory::huge_pages::collapse_large_buffers();
        }
    }
    cache.reset();
    note_cache(cache);
    Ok(())
}

/// [`super::Engine::set_kv_cache_dtype`] of a candle engine: the decoder's caches from now on,
/// and `cache` remade at its capacity.
pub(crate) fn set_kv_dtype(
    model: &mut LlamaModel,
    cache: &mut KvCache,
    dtype: candle_core::DType,
) -> anyhow::Result<()> {
    model.set_kv_dtype(dtype)?;
    let capacity = cache.capacity();
    // Drop the old buffers first, so peak memory is not old + new.
    *cache = model.new_cache(1)?;
    *cache = model.new_cache(capacity)?;
    Ok(())
}

fn note_cache(cache: &KvCache) {
    profile::note("kv_cache_bytes", cache.bytes() as u64);
    profile::note("kv_cache_capacity_tokens", cache.capacity() as u64);
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
        // A long prefill checks the flag between layers, not only once it is over.
        let logits = match model.forward_embeds_or_stop(embeds, cache, req.cancel) {
            Err(e) if e.is::<Stopped>() => return Err(EngineError::Cancelled),
            other => other?,
        };
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

/// The read bandwidth `threads` reach streaming `bytes`, on the CPU only (a GPU's memory is not
/// what this measures).
/// [`super::Engine::gemm_rate`] of a candle engine whose decoder is `llm`.
pub(crate) fn cpu_gemm_rate(llm: &LlamaModel, threads: &ModelThreads) -> Option<(f64, [usize; 3])> {
    llm.device()
        .is_cpu()
        .then(|| threads.run(crate::models::prefill::gemm_rate))
}

pub(crate) fn cpu_read_bandwidth(
    llm: &LlamaModel,
    threads: &ModelThreads,
    bytes: u64,
) -> Option<f64> {
    llm.device()
        .is_cpu()
        .then(|| threads.run(|| crate::models::bandwidth::read_bandwidth(bytes, 3)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::llama::LlamaConfig;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_cancelled_prefill_stops_before_the_next_layer() {
        let shape = crate::synth::llama_preset("tiny-llama").unwrap();
        let cfg = LlamaConfig::from_hf_json(&shape.hf_config(DType::F32)).unwrap();
        let w = shape
            .random_weights(1, DType::F32, &Device::Cpu, "")
            .unwrap();
        let model = LlamaModel::from_hf(
            cfg,
            VarBuilder::from_tensors(w, DType::F32, &Device::Cpu),
            "model",
            "lm_head",
        )
        .unwrap();
        let mut cache = model.new_cache(64).unwrap();
        let embeds = model.embed_tokens(&[1, 5, 9, 30, 2, 7]).unwrap();
        let cancel = AtomicBool::new(true);
        let req = GenerationRequest {
            prompt: "",
            images: &[],
            max_new_tokens: 4,
            ignore_eos: true,
            cancel: &cancel,
        };
        let threads = ModelThreads::for_device(&Device::Cpu).unwrap();
        let r = prefill_and_decode(
            &threads,
            &model,
            &mut cache,
            &embeds,
            &req,
            &[],
            Instant::now(),
            None,
        );
        assert!(matches!(r, Err(EngineError::Cancelled)));
        // No layer ran: the prefill did not finish and left the cache as it was.
        assert_eq!(cache.len(), 0);
        let e = model
            .forward_embeds_or_stop(&embeds, &mut cache, &cancel)
            .unwrap_err();
        assert!(e.is::<Stopped>(), "{e}");
        cancel.store(false, Ordering::SeqCst);
        let d = prefill_and_decode(
            &threads,
            &model,
            &mut cache,
            &embeds,
            &req,
            &[],
            Instant::now(),
            None,
        )
        .ok()
        .unwrap();
        assert_eq!(d.tokens.len(), 4);
    }
}
