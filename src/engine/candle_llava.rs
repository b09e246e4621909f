//! In-process LLaVA: load + preprocess the image, template and tokenize the prompt, encode the
//! image, prefill text and image features together, decode greedily.
//!
//! Phases as timed (offsets from the call, device synchronised before each reading):
//! preprocessing (image decode, resize, normalise, tokenize) → vision encoding (CLIP tower +
//! projector + LLaVA-NeXT packing) → prefill (embedding lookup, merge, forward) → decode steps.

use std::time::Instant;

use anyhow::Result;
use tokenizers::Tokenizer;

use super::decode::{fit_prompt, prefill_and_decode, reserve_cache};
use super::template::{tokenize_around_image, PromptTemplate};
use super::{
    sample_error, Engine, EngineError, EngineInfo, Generation, GenerationRequest, ModelThreads,
    PhasePeaks,
};
use crate::memory::DevicePool;
use crate::models::llama::KvCache;
use crate::models::llava::preprocess::ImageProcessor;
use crate::models::llava::LlavaModel;
use crate::profile;

pub struct CandleLlavaEngine {
    model: LlavaModel,
    processor: ImageProcessor,
    cache: KvCache,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    template: PromptTemplate,
    info: EngineInfo,
    pool: Option<DevicePool>,
    threads: ModelThreads,
}

impl CandleLlavaEngine {
    pub fn new(
        model: LlavaModel,
        processor: ImageProcessor,
        tokenizer: Tokenizer,
        eos: Vec<u32>,
        template: PromptTemplate,
        info: EngineInfo,
    ) -> Result<Self> {
        let cache = model.llm.new_cache(2048)?;
        let device = model.device().clone();
        let pool = DevicePool::for_candle_device(model.device());
        Ok(Self {
            model,
            processor,
            cache,
            tokenizer,
            eos,
            template,
            info,
            pool,
            threads: ModelThreads::for_device(&device)?,
        })
    }
}

impl Engine for CandleLlavaEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn device(&self) -> Option<candle_core::Device> {
        Some(self.model.device().clone())
    }

    fn cpu_threads(&self) -> Option<usize> {
        self.threads.count()
    }

    fn decode_read_bytes(&self, context: usize) -> Option<super::DecodeBytes> {
        Some(self.model.llm.decode_read_bytes(context))
    }

    fn read_bandwidth(&self, bytes: u64) -> Option<f64> {
        super::decode::cpu_read_bandwidth(&self.model.llm, &self.threads, bytes)
    }

    fn reserve(&mut self, requests: &[GenerationRequest<'_>]) -> Result<(), EngineError> {
        let mut needed = 0;
        for r in requests {
            // The image's size decides its token count (any-resolution models); only its
            // header is read here.
            let size = match r.images {
                [] => None,
                [path] => match image::image_dimensions(path) {
                    Ok((w, h)) => Some((h, w)),
                    Err(_) => continue,
                },
                // Refused when run.
                _ => continue,
            };
            let text = self.template.render(r.prompt, size.is_some());
            let Ok(tokens) = tokenize_around_image(
                &self.tokenizer,
                &text,
                self.model.config.image_token_id,
                size.is_some(),
            ) else {
                continue;
            };
            let image_tokens = size.map_or(0, |s| self.model.config.image_token_count(s));
            let input =
                tokens.before.len() + image_tokens + tokens.after.as_ref().map_or(0, Vec::len);
            needed = needed.max(input + r.max_new_tokens);
        }
        reserve_cache(&self.model.llm, &mut self.cache, needed)?;
        Ok(())
    }

    fn generate(&mut self, req: &GenerationRequest<'_>) -> Result<Generation, EngineError> {
        let _sample = profile::span("sample", "sample");
        let start = Instant::now();
        let preprocess_span = profile::span("phase", "preprocess");
        let image = match req.images {
            [] => None,
            [path] => Some(
                self.processor
                    .prepare_file(path)
                    .map_err(|e| sample_error(format!("{e:#}")))?,
            ),
            several => {
                return Err(sample_error(format!(
                    "{} ({}) takes one image per sample; this sample has {}",
                    self.info.model,
                    self.info.architecture,
                    several.len()
                )))
            }
        };
        let text = self.template.render(req.prompt, image.is_some());
        let tokens = tokenize_around_image(
            &self.tokenizer,
            &text,
            self.model.config.image_token_id,
            image.is_some(),
        )
        .map_err(sample_error)?;
        let image_tokens = image
            .as_ref()
            .map_or(0, |i| self.model.config.image_token_count(i.original_size));
        let input_tokens =
            tokens.before.len() + image_tokens + tokens.after.as_ref().map_or(0, Vec::len);
        fit_prompt(
            &self.model.llm,
            &mut self.cache,
            input_tokens,
            image_tokens,
            req.max_new_tokens,
        )?;
        drop(preprocess_span);
        let preprocess = start.elapsed();

        let mut peaks = PhasePeaks::default();
        let (features, vision_encode) = match &image {
            Some(img) => {
                if let Some(p) = &self.pool {
                    p.reset_peak();
                }
                let _span = profile::span("phase", "vision_encode");
                let model = &self.model;
                let f = self.threads.run(|| model.encode_image(img))?;
                self.model
                    .device()
                    .synchronize()
                    .map_err(anyhow::Error::from)?;
                peaks.vision_bytes = self.pool.as_ref().and_then(DevicePool::peak);
                if f.dim(0).map_err(anyhow::Error::from)? != image_tokens {
                    return Err(EngineError::Fatal(anyhow::anyhow!(
                        "the image became {} features, but {image_tokens} were expected",
                        f.dim(0).unwrap_or(0)
                    )));
                }
                (Some(f), Some(start.elapsed() - preprocess))
            }
            None => (None, None),
        };

        let llm = &self.model.llm;
        let mut parts = vec![llm.embed_tokens(&tokens.before)?];
        if let Some(f) = features {
            parts.push(f);
        }
        if let Some(after) = tokens.after.as_ref().filter(|a| !a.is_empty()) {
            parts.push(llm.embed_tokens(after)?);
        }
        let embeds = candle_core::Tensor::cat(&parts, 0).map_err(anyhow::Error::from)?;
        let d = prefill_and_decode(
            &self.threads,
            llm,
            &mut self.cache,
            &embeds,
            req,
            &self.eos,
            start,
            self.pool.as_ref(),
        )?;
        let text = self.tokenizer.decode(&d.tokens, true).unwrap_or_default();
        peaks.prefill_bytes = d.prefill_peak;
        peaks.decode_bytes = d.decode_peak;
        Ok(Generation {
            preprocess,
            vision_encode,
            token_arrivals: d.arrivals,
            end: start.elapsed(),
            input_tokens,
            image_tokens,
            images: usize::from(image.is_some()),
            output_token_ids: d.tokens,
            text,
            stop_reason: d.stop_reason,
            pool_peaks: self.pool.is_some().then_some(peaks),
        })
    }
}
