//! In-process text generation with the Llama decoder: tokenize, prefill, greedy decode.
//!
//! Text models get the prompt as the tokenizer encodes it (its post-processor adds BOS for
//! Llama); no chat template is applied, so every engine sees the same tokens (llama.cpp's
//! `llama-bench` and the peer scripts time raw prompts the same way).

use std::time::Instant;

use anyhow::Result;
use tokenizers::Tokenizer;

use super::decode::{ensure_cache, prefill_and_decode};
use super::template::PromptTemplate;
use super::{
    Engine, EngineError, EngineInfo, Generation, GenerationRequest, ModelThreads, PhasePeaks,
};
use crate::memory::DevicePool;
use crate::models::llama::{KvCache, LlamaModel};
use crate::profile;

pub struct CandleTextEngine {
    model: LlamaModel,
    cache: KvCache,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    info: EngineInfo,
    /// CUDA memory pool, for exact per-phase peaks (None on CPU).
    pool: Option<DevicePool>,
    /// `--prompt-template`, when the user gave one.
    template: Option<PromptTemplate>,
    threads: ModelThreads,
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
        let model_device = &model.device().clone();
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
            template: None,
            threads: ModelThreads::for_device(model_device)?,
        })
    }

    /// Wraps every prompt in `template` before tokenizing.
    pub fn with_template(mut self, template: Option<PromptTemplate>) -> Self {
        self.template = template;
        self
    }
}

impl Engine for CandleTextEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn device(&self) -> Option<candle_core::Device> {
        Some(self.model.device().clone())
    }

    fn generate(&mut self, req: &GenerationRequest<'_>) -> Result<Generation, EngineError> {
        let _sample = profile::span("sample", "sample");
        let start = Instant::now();
        let preprocess_span = profile::span("phase", "preprocess");
        if req.image.is_some() {
            return Err(EngineError::Sample(format!(
                "{} is a text-only model and cannot take the sample's image",
                self.info.model
            )));
        }
        let text = match &self.template {
            Some(t) => t.render(req.prompt, false),
            None => req.prompt.to_string(),
        };
        let ids = self
            .tokenizer
            .encode(text, true)
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
        ensure_cache(&self.model, &mut self.cache, ids.len() + req.max_new_tokens)?;
        drop(preprocess_span);
        let preprocess = start.elapsed();
        // The embedding lookup is the first step of the model's forward pass: timed as prefill.
        let embeds = self.model.embed_tokens(&ids)?;
        let d = prefill_and_decode(
            &self.threads,
            &self.model,
            &mut self.cache,
            &embeds,
            req,
            &self.eos,
            start,
            self.pool.as_ref(),
        )?;
        let text = self.tokenizer.decode(&d.tokens, true).unwrap_or_default();
        Ok(Generation {
            preprocess,
            vision_encode: None,
            token_arrivals: d.arrivals,
            end: start.elapsed(),
            input_tokens: ids.len(),
            image_tokens: 0,
            output_token_ids: d.tokens,
            text,
            stop_reason: d.stop_reason,
            pool_peaks: self.pool.is_some().then_some(PhasePeaks {
                vision_bytes: None,
                prefill_bytes: d.prefill_peak,
                decode_bytes: d.decode_peak,
            }),
        })
    }
}
