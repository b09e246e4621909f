//! In-process text generation with the Llama decoder: tokenize, prefill, greedy decode.
//!
//! Text models get the prompt as the tokenizer encodes it (its post-processor adds BOS for
//! Llama); no chat template is applied, so every engine sees the same tokens (llama.cpp's
//! `llama-bench` and the peer scripts time raw prompts the same way).

use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use tokenizers::Tokenizer;

use super::llama::{KvCache, LlamaModel};
use super::{
    Engine, EngineError, EngineInfo, Generation, GenerationRequest, PhasePeaks, StopReason,
};
use crate::memory::DevicePool;

pub struct CandleTextEngine {
    model: LlamaModel,
    cache: KvCache,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    info: EngineInfo,
    /// CUDA memory pool, for exact per-phase peaks (None on CPU).
    pool: Option<DevicePool>,
}

impl CandleTextEngine {
    pub fn new(
        model: LlamaModel,
        tokenizer: Tokenizer,
        eos: Vec<u32>,
        info: EngineInfo,
    ) -> Result<Self> {
        // Start small; the cache grows (before prefill, outside any timed decode step) when a
        // request needs more, up to the context length.
        let cache = model.new_cache(1024)?;
        let pool = match model.device().location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => DevicePool::for_device(gpu_id),
            _ => None,
        };
        Ok(Self {
            model,
            cache,
            tokenizer,
            eos,
            info,
            pool,
        })
    }
}

/// Greedy choice; reading the id back to the host also waits for the device.
pub fn argmax(logits: &Tensor) -> candle_core::Result<u32> {
    logits.argmax(0)?.to_scalar::<u32>()
}

impl Engine for CandleTextEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn generate(&mut self, req: &GenerationRequest<'_>) -> Result<Generation, EngineError> {
        let start = Instant::now();
        if req.image.is_some() {
            return Err(EngineError::Sample(format!(
                "{} is a text-only model and cannot take the sample's image",
                self.info.model
            )));
        }
        let ids = self
            .tokenizer
            .encode(req.prompt, true)
            .map_err(|e| EngineError::Sample(format!("tokenizer failed: {e}")))?
            .get_ids()
            .to_vec();
        let context = self.model.config.max_position_embeddings;
        if ids.len() >= context {
            return Err(EngineError::Sample(format!(
                "prompt of {} tokens does not fit the model's context of {context} tokens",
                ids.len()
            )));
        }
        let needed = (ids.len() + req.max_new_tokens).min(context);
        if needed > self.cache.capacity() {
            self.cache = self
                .model
                .new_cache(needed.next_power_of_two().min(context))?;
        }
        self.cache.reset();
        let preprocess = start.elapsed();
        let mut peaks = PhasePeaks::default();
        if let Some(p) = &self.pool {
            p.reset_peak();
        }

        let embeds = self.model.embed_tokens(&ids)?;
        let logits = self.model.forward_embeds(&embeds, &mut self.cache)?;
        let mut next = argmax(&logits).map_err(anyhow::Error::from)?;
        let mut arrivals = vec![start.elapsed()];
        let mut out = vec![next];
        if let Some(p) = &self.pool {
            peaks.prefill_bytes = p.peak();
            p.reset_peak();
        }
        let stop_reason = loop {
            if !req.ignore_eos && self.eos.contains(&next) {
                break StopReason::Eos;
            }
            if out.len() >= req.max_new_tokens {
                break StopReason::MaxTokens;
            }
            if self.cache.len() >= context {
                break StopReason::ContextFull;
            }
            if req.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            let embeds = self.model.embed_tokens(&[next])?;
            let logits = self.model.forward_embeds(&embeds, &mut self.cache)?;
            next = argmax(&logits).map_err(anyhow::Error::from)?;
            arrivals.push(start.elapsed());
            out.push(next);
        };
        if let Some(p) = &self.pool {
            peaks.decode_bytes = p.peak();
        }
        let text = self.tokenizer.decode(&out, true).unwrap_or_default();
        Ok(Generation {
            preprocess,
            vision_encode: None,
            token_arrivals: arrivals,
            end: start.elapsed(),
            input_tokens: ids.len(),
            image_tokens: 0,
            output_token_ids: out,
            text,
            stop_reason,
            pool_peaks: self.pool.is_some().then_some(peaks),
        })
    }
}
