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
use super::template::{tokenize_around_images, PromptTemplate, TokenizedPrompt};
use super::{
    sample_error, Engine, EngineError, EngineInfo, Generation, GenerationRequest, ModelThreads,
    PhasePeaks,
};
use crate::memory::DevicePool;
use crate::models::llama::{KvCache, LlamaModel};
use crate::models::llava::preprocess::ImageProcessor;
use crate::models::llava::{LlavaModel, Variant};
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

impl CandleLlavaEngine {
    /// Image tokens of each of a sample's images (`(height, width)` each): one image as the
    /// model tiles it; several (OneVision only, as it was trained) each untiled.
    fn image_token_counts(&self, sizes: &[(u32, u32)]) -> Result<Vec<usize>, String> {
        let c = &self.model.config;
        match sizes {
            [] => Ok(Vec::new()),
            [one] => Ok(vec![c.image_token_count(*one)]),
            several if matches!(c.variant, Variant::OneVision { .. }) => {
                Ok(vec![c.untiled_token_count(); several.len()])
            }
            several => Err(format!(
                "{} ({}) takes one image per sample; this sample has {} (LLaVA-OneVision and Qwen2-VL take several)",
                self.info.model,
                self.info.architecture,
                several.len()
            )),
        }
    }

    /// The prompt in the model's template, tokenized around its `images` images.
    fn tokenize(&self, prompt: &str, images: usize) -> Result<TokenizedPrompt, String> {
        let text = self.template.render_images(prompt, images);
        tokenize_around_images(
            &self.tokenizer,
            &text,
            self.model.config.image_token_id,
            images,
        )
    }
}

impl Engine for CandleLlavaEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn device(&self) -> Option<candle_core::Device> {
        Some(self.model.device().clone())
    }

    fn decoder(&self) -> Option<(&LlamaModel, &ModelThreads)> {
        Some((&self.model.llm, &self.threads))
    }

    fn decoder_and_cache(&mut self) -> Option<(&mut LlamaModel, &mut KvCache)> {
        Some((&mut self.model.llm, &mut self.cache))
    }

    fn reserve(&mut self, requests: &[GenerationRequest<'_>]) -> Result<(), EngineError> {
        let mut needed = 0;
        for r in requests {
            // The images' sizes decide their token counts (any-resolution models); only their
            // headers are read here.
            let Ok(sizes) = r
                .images
                .iter()
                .map(|path| image::image_dimensions(path).map(|(w, h)| (h, w)))
                .collect::<Result<Vec<_>, _>>()
            else {
                continue;
            };
            let Ok(counts) = self.image_token_counts(&sizes) else {
                continue;
            };
            let Ok(tokens) = self.tokenize(r.prompt, sizes.len()) else {
                continue;
            };
            let input = tokens.text_tokens() + counts.iter().sum::<usize>();
            needed = needed.max(input + r.max_new_tokens);
        }
        reserve_cache(&self.model.llm, &mut self.cache, needed)?;
        Ok(())
    }

    fn generate(&mut self, req: &GenerationRequest<'_>) -> Result<Generation, EngineError> {
        let _sample = profile::span("sample", "sample");
        let start = Instant::now();
        let preprocess_span = profile::span("phase", "preprocess");
        let several = req.images.len() > 1;
        let images = req
            .images
            .iter()
            .map(|path| {
                if several {
                    self.processor.prepare_file_untiled(path)
                } else {
                    self.processor.prepare_file(path)
                }
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| sample_error(format!("{e:#}")))?;
        let sizes: Vec<(u32, u32)> = images.iter().map(|i| i.original_size).collect();
        let counts = self.image_token_counts(&sizes).map_err(sample_error)?;
        let tokens = self
            .tokenize(req.prompt, images.len())
            .map_err(sample_error)?;
        let image_tokens: usize = counts.iter().sum();
        let input_tokens = tokens.text_tokens() + image_tokens;
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
        let mut features = Vec::with_capacity(images.len());
        let mut vision_encode = None;
        if !images.is_empty() {
            if let Some(p) = &self.pool {
                p.reset_peak();
            }
            let _span = profile::span("phase", "vision_encode");
            let model = &self.model;
            for (image, &expected) in images.iter().zip(&counts) {
                let f = self.threads.run(|| model.encode_image(image))?;
                let got = f.dim(0).map_err(anyhow::Error::from)?;
                if got != expected {
                    return Err(EngineError::Fatal(anyhow::anyhow!(
                        "an image became {got} features, but {expected} were expected"
                    )));
                }
                features.push(f);
            }
            self.model
                .device()
                .synchronize()
                .map_err(anyhow::Error::from)?;
            peaks.vision_bytes = self.pool.as_ref().and_then(DevicePool::peak);
            vision_encode = Some(start.elapsed() - preprocess);
        }

        // Text pieces and images interleaved: piece, image, piece, ..., piece.
        let llm = &self.model.llm;
        let mut parts = Vec::with_capacity(2 * features.len() + 1);
        for (k, piece) in tokens.pieces.iter().enumerate() {
            if !piece.is_empty() {
                parts.push(llm.embed_tokens(piece)?);
            }
            if let Some(f) = features.get(k) {
                parts.push(f.clone());
            }
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
            images: images.len(),
            output_token_ids: d.tokens,
            text,
            stop_reason: d.stop_reason,
            pool_peaks: self.pool.is_some().then_some(peaks),
        })
    }
}
