//! In-process text generation with the Llama decoder: tokenize, prefill, greedy decode.
//!
//! Text models get the prompt as the tokenizer encodes it (its post-processor adds BOS for
//! Llama); no chat template is applied, so every engine sees the same tokens (llama.cpp's
//! `llama-bench` and the peer scripts time raw prompts the same way).

use std::time::Instant;

use anyhow::Result;
use tokenizers::Tokenizer;

use super::decode::{fit_prompt, prefill_and_decode, reserve_cache};
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
        let pool = DevicePool::for_candle_device(model.device());
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

    /// The prompt's token ids as the model runs them (template applied, BOS added).
    fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>, EngineError> {
        let text = match &self.template {
            Some(t) => t.render(prompt, false),
            None => prompt.to_string(),
        };
        Ok(self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::Sample(format!("tokenizer failed: {e}")))?
            .get_ids()
            .to_vec())
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

    fn decoder(&self) -> Option<(&LlamaModel, &ModelThreads)> {
        Some((&self.model, &self.threads))
    }

    fn decoder_and_cache(&mut self) -> Option<(&mut LlamaModel, &mut KvCache)> {
        Some((&mut self.model, &mut self.cache))
    }

    fn reserve(&mut self, requests: &[GenerationRequest<'_>]) -> Result<(), EngineError> {
        let mut needed = 0;
        for r in requests.iter().filter(|r| r.images.is_empty()) {
            if let Ok(ids) = self.prompt_ids(r.prompt) {
                needed = needed.max(ids.len() + r.max_new_tokens);
            }
        }
        reserve_cache(&self.model, &mut self.cache, needed)?;
        Ok(())
    }

    fn generate(&mut self, req: &GenerationRequest<'_>) -> Result<Generation, EngineError> {
        let _sample = profile::span("sample", "sample");
        let start = Instant::now();
        let preprocess_span = profile::span("phase", "preprocess");
        if !req.images.is_empty() {
            return Err(EngineError::Sample(format!(
                "{} is a text-only model and cannot take the sample's image",
                self.info.model
            )));
        }
        let ids = self.prompt_ids(req.prompt)?;
        fit_prompt(
            &self.model,
            &mut self.cache,
            ids.len(),
            0,
            req.max_new_tokens,
        )?;
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
            images: 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::llama::LlamaConfig;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;
    use std::sync::atomic::AtomicBool;

    /// The tiny random Llama with a 4096-token context (the cache starts at 1024).
    fn tiny_long_context() -> CandleTextEngine {
        let mut shape = crate::synth::llama_preset("tiny-llama").unwrap();
        shape.max_position_embeddings = 4096;
        let (dtype, device) = (DType::F32, Device::Cpu);
        let cfg = LlamaConfig::from_hf_json(&shape.hf_config(dtype)).unwrap();
        let weights = shape.random_weights(1, dtype, &device, "").unwrap();
        let vb = VarBuilder::from_tensors(weights, dtype, &device);
        let model = LlamaModel::from_hf(cfg, vb, "model", "lm_head").unwrap();
        let tokenizer = Tokenizer::from_bytes(
            crate::synth::tokenizer_json(shape.vocab_size, &[])
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        let info = EngineInfo {
            backend: "candle".into(),
            model: "test".into(),
            architecture: "llama".into(),
            dtype: "f32".into(),
            device: "cpu".into(),
            parameters: None,
            context_length: 4096,
            vision: false,
        };
        CandleTextEngine::new(model, tokenizer, vec![crate::synth::EOS], info).unwrap()
    }

    #[test]
    fn a_reserved_cache_is_not_grown_inside_a_timed_request() {
        let mut e = tiny_long_context();
        let cancel = AtomicBool::new(false);
        let long = "word ".repeat(1200);
        let request = |prompt| GenerationRequest {
            prompt,
            images: &[],
            max_new_tokens: 3,
            ignore_eos: true,
            cancel: &cancel,
        };
        let prompt_tokens = e.prompt_ids(&long).unwrap().len();
        assert!(
            prompt_tokens > 1024,
            "the prompt must outgrow the first cache"
        );
        e.reserve(&[request("short"), request(&long)]).unwrap();
        assert_eq!(e.cache.capacity(), prompt_tokens + 3, "sized exactly");
        let g = e.generate(&request(&long)).unwrap();
        assert_eq!(g.output_token_ids.len(), 3);
        assert_eq!(
            e.cache.capacity(),
            prompt_tokens + 3,
            "the timed request did not reallocate the cache"
        );
        assert_eq!(e.cpu_threads(), Some(rayon::current_num_threads()));
    }
}
