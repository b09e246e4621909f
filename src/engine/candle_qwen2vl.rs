//! In-process Qwen2-VL / Qwen2.5-VL: patch each image, template and tokenize the prompt (one
//! `<|vision_start|>` ... `<|vision_end|>` block per image, in order, each expanded to one
//! `<|image_pad|>` per token of its image), encode the images one by one, prefill text and
//! image features with multimodal rotary positions, decode greedily.
//!
//! Phases as timed: preprocessing (image decode, resize, normalise, patching, tokenize) →
//! vision encoding (the vision transformer and patch merger, every image) → prefill → decode
//! steps.

use std::time::Instant;

use anyhow::Result;
use tokenizers::Tokenizer;

use super::decode::{fit_prompt, prefill_and_decode, reserve_cache};
use super::template::{PromptTemplate, IMAGE_PLACEHOLDER};
use super::{
    sample_error, Engine, EngineError, EngineInfo, Generation, GenerationRequest, ModelThreads,
    PhasePeaks,
};
use crate::memory::DevicePool;
use crate::models::llama::{KvCache, LlamaModel};
use crate::models::qwen2vl::preprocess::{smart_resize, Qwen2VlImageProcessor};
use crate::models::qwen2vl::{
    mrope_positions, Qwen2VlModel, Segment, IMAGE_PAD, VISION_END, VISION_START,
};
use crate::profile;

/// The system turn Qwen2-VL's and Qwen2.5-VL's chat templates add when a conversation has none.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// The chat format of Qwen2-VL checkpoints (ChatML, the image before the question in the user
/// turn): with the default system turn when the checkpoint's chat template adds one (or when
/// the checkpoint has no template), without it otherwise.
pub fn qwen_template(chat_template: Option<&str>) -> PromptTemplate {
    let system = chat_template.is_none_or(|t| t.contains(DEFAULT_SYSTEM));
    let head = if system {
        format!("<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
    } else {
        String::new()
    };
    PromptTemplate::from(format!(
        "{head}<|im_start|>user\n{IMAGE_PLACEHOLDER}{{prompt}}<|im_end|>\n<|im_start|>assistant\n"
    ))
}

/// The prompt's tokens with the image placeholder expanded, and its runs for M-RoPE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QwenPrompt {
    pub ids: Vec<u32>,
    pub segments: Vec<Segment>,
}

/// Tokenizes `text` (rendered from the template), whose `<image>` marks stand for the images
/// of `grids` (`(rows, columns)` of merged tokens each, in order): each becomes
/// `<|vision_start|>` + one `<|image_pad|>` per image token + `<|vision_end|>`, as the Qwen2-VL
/// processor expands it before tokenizing.
pub fn tokenize_with_images(
    tokenizer: &Tokenizer,
    text: &str,
    grids: &[(usize, usize)],
) -> Result<QwenPrompt, String> {
    let marks = text.matches(IMAGE_PLACEHOLDER).count();
    if marks != grids.len() {
        return Err(format!(
            "the prompt holds {marks} {IMAGE_PLACEHOLDER} placeholders for {} images",
            grids.len()
        ));
    }
    let pad_id = tokenizer
        .token_to_id(IMAGE_PAD)
        .ok_or_else(|| format!("the tokenizer has no {IMAGE_PAD} token"))?;
    let one = text.replace(
        IMAGE_PLACEHOLDER,
        &format!("{VISION_START}{IMAGE_PAD}{VISION_END}"),
    );
    let encoded = tokenizer
        .encode(one, true)
        .map_err(|e| format!("tokenizer failed: {e}"))?;
    let mut ids = Vec::with_capacity(encoded.len());
    let mut segments = Vec::new();
    let mut text_run = 0usize;
    let mut images = grids.iter();
    for &id in encoded.get_ids() {
        if id != pad_id {
            ids.push(id);
            text_run += 1;
            continue;
        }
        let Some(&(rows, cols)) = images.next() else {
            return Err(format!("the prompt text itself holds {IMAGE_PAD}"));
        };
        if text_run > 0 {
            segments.push(Segment::Text(text_run));
            text_run = 0;
        }
        ids.extend(std::iter::repeat_n(pad_id, rows * cols));
        segments.push(Segment::Image { rows, cols });
    }
    if images.next().is_some() {
        return Err(format!(
            "the tokenizer did not keep {IMAGE_PAD} as one token"
        ));
    }
    if text_run > 0 {
        segments.push(Segment::Text(text_run));
    }
    Ok(QwenPrompt { ids, segments })
}

pub struct CandleQwen2VlEngine {
    model: Qwen2VlModel,
    processor: Qwen2VlImageProcessor,
    cache: KvCache,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    template: PromptTemplate,
    info: EngineInfo,
    pool: Option<DevicePool>,
    threads: ModelThreads,
}

impl CandleQwen2VlEngine {
    pub fn new(
        model: Qwen2VlModel,
        processor: Qwen2VlImageProcessor,
        tokenizer: Tokenizer,
        eos: Vec<u32>,
        template: PromptTemplate,
        info: EngineInfo,
    ) -> Result<Self> {
        let cache = model.llm.new_cache(2048)?;
        let device = model.device().clone();
        let pool = DevicePool::for_candle_device(&device);
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

    /// The merged-token grid `(rows, columns)` the image at `path` will have, from its header
    /// alone: the size the processor resizes it to, cut as [`Qwen2VlModel::image_grid`] cuts
    /// it. `None` where the image cannot be read or processed (the request fails when run).
    fn planned_grid(&self, path: &std::path::Path) -> Option<(usize, usize)> {
        // Opened as `prepare_file` opens it, so both see the same size.
        let (width, height) = image::ImageReader::open(path)
            .ok()?
            .with_guessed_format()
            .ok()?
            .into_dimensions()
            .ok()?;
        let p = &self.processor;
        let (h, w) = if p.do_resize {
            let factor = p.patch_size * p.merge_size;
            smart_resize(height, width, factor, p.min_pixels, p.max_pixels).ok()?
        } else {
            (height, width)
        };
        let patch = p.patch_size as usize;
        let merge = self.model.config.vision.spatial_merge_size;
        Some((h as usize / patch / merge, w as usize / patch / merge))
    }
}

impl Engine for CandleQwen2VlEngine {
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

    /// Sizes the cache for what each request needs: each image's token count follows from the
    /// image's size (read from its header) as the processor resizes it.
    fn reserve(&mut self, requests: &[GenerationRequest<'_>]) -> Result<(), EngineError> {
        let mut needed = 0;
        for r in requests {
            let Some(grids) = r
                .images
                .iter()
                .map(|path| self.planned_grid(path))
                .collect::<Option<Vec<(usize, usize)>>>()
            else {
                continue;
            };
            let text = self.template.render_images(r.prompt, grids.len());
            if let Ok(prompt) = tokenize_with_images(&self.tokenizer, &text, &grids) {
                needed = needed.max(prompt.ids.len() + r.max_new_tokens);
            }
        }
        reserve_cache(&self.model.llm, &mut self.cache, needed)?;
        Ok(())
    }

    fn generate(&mut self, req: &GenerationRequest<'_>) -> Result<Generation, EngineError> {
        let _sample = profile::span("sample", "sample");
        let start = Instant::now();
        let preprocess_span = profile::span("phase", "preprocess");
        let images = req
            .images
            .iter()
            .map(|path| {
                self.processor
                    .prepare_file(path)
                    .map_err(|e| sample_error(format!("{e:#}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let grids: Vec<(usize, usize)> = images.iter().map(|i| self.model.image_grid(i)).collect();
        let text = self.template.render_images(req.prompt, images.len());
        let prompt = tokenize_with_images(&self.tokenizer, &text, &grids).map_err(sample_error)?;
        let image_tokens: usize = grids.iter().map(|(r, c)| r * c).sum();
        let input_tokens = prompt.ids.len();
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
        // Each image through the tower on its own (attention never crosses images), in order.
        let (features, vision_encode) = if images.is_empty() {
            (Vec::new(), None)
        } else {
            if let Some(p) = &self.pool {
                p.reset_peak();
            }
            let _span = profile::span("phase", "vision_encode");
            let model = &self.model;
            let features = self.threads.run(|| {
                images
                    .iter()
                    .map(|img| model.encode_image(img))
                    .collect::<Result<Vec<_>>>()
            })?;
            self.model
                .device()
                .synchronize()
                .map_err(anyhow::Error::from)?;
            peaks.vision_bytes = self.pool.as_ref().and_then(DevicePool::peak);
            for (k, (f, (rows, cols))) in features.iter().zip(&grids).enumerate() {
                let got = f.dim(0).map_err(anyhow::Error::from)?;
                if got != rows * cols {
                    return Err(EngineError::Fatal(anyhow::anyhow!(
                        "image {k} became {got} features, but {} were expected",
                        rows * cols
                    )));
                }
            }
            (features, Some(start.elapsed() - preprocess))
        };

        let llm = &self.model.llm;
        // Text runs embedded, image runs replaced by their image's features, in prompt order.
        let mut parts = Vec::with_capacity(prompt.segments.len());
        let mut at = 0usize;
        let mut image_features = features.into_iter();
        for s in &prompt.segments {
            match *s {
                Segment::Text(n) => {
                    parts.push(llm.embed_tokens(&prompt.ids[at..at + n])?);
                    at += n;
                }
                Segment::Image { rows, cols } => {
                    let f = image_features
                        .next()
                        .ok_or_else(|| sample_error("an image run without an image"))?;
                    parts.push(f);
                    at += rows * cols;
                }
            }
        }
        let embeds = candle_core::Tensor::cat(&parts, 0).map_err(anyhow::Error::from)?;
        if !images.is_empty() {
            let (positions, shift) = mrope_positions(&prompt.segments);
            let (cos, sin) = self.model.rotary(&positions);
            self.cache.set_rotary(cos, sin, shift);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::qwen2vl::{Layout, Qwen2VlConfig};
    use crate::synth::qwen2vl::{qwen_vl_preset, tokenizer};
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;
    use std::sync::atomic::AtomicBool;

    /// The tiny random Qwen2.5-VL (a 4096-token context; the cache starts at 2048).
    fn tiny_engine() -> CandleQwen2VlEngine {
        let shape = qwen_vl_preset("tiny-qwen2.5-vl").unwrap();
        let (dtype, device) = (DType::F32, Device::Cpu);
        let cfg = Qwen2VlConfig::from_json(&shape.hf_config(dtype), shape.kind).unwrap();
        let processor = Qwen2VlImageProcessor::from_json(&shape.preprocessor_config()).unwrap();
        let weights = shape.random_weights(1, dtype, &device).unwrap();
        let vb = VarBuilder::from_tensors(weights, dtype, &device);
        let model = Qwen2VlModel::load(cfg, vb, Layout::Published).unwrap();
        let tok = Tokenizer::from_bytes(tokenizer(&shape).unwrap().as_bytes()).unwrap();
        let info = EngineInfo {
            backend: "candle".into(),
            model: "test".into(),
            architecture: "qwen2.5-vl".into(),
            dtype: "f32".into(),
            device: "cpu".into(),
            parameters: None,
            context_length: 4096,
            vision: true,
        };
        let eos = vec![crate::synth::EOS];
        CandleQwen2VlEngine::new(model, processor, tok, eos, qwen_template(None), info).unwrap()
    }

    /// Each image's token count is planned from its header (the size the processor resizes
    /// it to), so the cache is sized exactly for the longest request (here, two images) before
    /// any is timed.
    #[test]
    fn a_reserved_cache_is_not_grown_inside_a_timed_request() {
        let mut e = tiny_engine();
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("photo.png");
        image::RgbImage::from_fn(640, 480, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 40])
        })
        .save(&image)
        .unwrap();
        let small = dir.path().join("small.png");
        image::RgbImage::from_fn(213, 130, |x, y| {
            image::Rgb([(y % 256) as u8, 7, (x % 256) as u8])
        })
        .save(&small)
        .unwrap();
        let unreadable = dir.path().join("broken.png");
        std::fs::write(&unreadable, b"not an image").unwrap();
        let cancel = AtomicBool::new(false);
        let long = "word ".repeat(700);
        let request = |prompt, images| GenerationRequest {
            prompt,
            images,
            max_new_tokens: 3,
            ignore_eos: true,
            cancel: &cancel,
        };
        let one = [image.clone()];
        let two = [image.clone(), small.clone()];
        let broken = [image.clone(), unreadable.clone()];
        let initial = e.cache.capacity();
        e.reserve(&[
            request("short", &one),
            request(&long, &two),
            request(&long, &one),
            request(&long, &broken),
            request("text only", &[]),
        ])
        .unwrap();
        let reserved = e.cache.capacity();
        let g = e.generate(&request(&long, &two)).unwrap();
        // 640x480 within 28*28*64 pixels: resized to 252x168, 9x6 merged tokens; 213x130 only
        // rounded to 224x140, 8x5.
        assert_eq!((g.image_tokens, g.images), (54 + 40, 2));
        assert!(
            g.input_tokens + 3 > initial,
            "the request must outgrow the first cache"
        );
        assert_eq!(reserved, g.input_tokens + 3, "sized exactly");
        assert_eq!(g.output_token_ids.len(), 3);
        assert_eq!(
            e.cache.capacity(),
            reserved,
            "the timed request did not reallocate the cache"
        );
        let g1 = e.generate(&request(&long, &one)).unwrap();
        assert_eq!((g1.image_tokens, g1.images), (54, 1));
        // The second image adds its tokens and its own vision start and end marks.
        assert_eq!(g.input_tokens - g1.input_tokens, 40 + 2);
        match e.generate(&request("x", &broken)) {
            Err(EngineError::Sample(m)) => assert!(m.contains("broken.png"), "{m}"),
            other => panic!(
                "an unreadable second image fails the sample: {:?}",
                other.map(|g| g.images)
            ),
        }
        assert_eq!(e.cpu_threads(), Some(rayon::current_num_threads()));
    }

    #[test]
    fn template_follows_the_checkpoint() {
        let t = qwen_template(None);
        assert_eq!(
            t.render("What is it?", true),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>What is it?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render("Hi", false),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let bare = qwen_template(Some(
            "{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}",
        ));
        assert!(bare.text.starts_with("<|im_start|>user\n"), "{}", bare.text);
    }

    #[test]
    fn placeholders_expand_to_one_pad_per_image_token() {
        let shape = qwen_vl_preset("tiny-qwen2.5-vl").unwrap();
        let tok = Tokenizer::from_bytes(tokenizer(&shape).unwrap().as_bytes()).unwrap();
        let pad = shape.image_token_id();
        let text = qwen_template(None).render("Describe.", true);
        let p = tokenize_with_images(&tok, &text, &[(2, 3)]).unwrap();
        assert_eq!(p.ids.iter().filter(|&&t| t == pad).count(), 6);
        let first = p.ids.iter().position(|&t| t == pad).unwrap();
        assert_eq!(
            tok.id_to_token(p.ids[first - 1]).as_deref(),
            Some(VISION_START)
        );
        assert_eq!(
            tok.id_to_token(p.ids[first + 6]).as_deref(),
            Some(VISION_END)
        );
        assert_eq!(p.segments[0], Segment::Text(first));
        assert_eq!(p.segments[1], Segment::Image { rows: 2, cols: 3 });
        let Segment::Text(tail) = p.segments[2] else {
            panic!("{:?}", p.segments)
        };
        assert_eq!(first + 6 + tail, p.ids.len());
        assert!(tokenize_with_images(&tok, &text, &[]).is_err());
        let none =
            tokenize_with_images(&tok, &qwen_template(None).render("x", false), &[]).unwrap();
        assert_eq!(none.segments.len(), 1);
        // Two images: one block each, in order, with their own sizes, text only around them.
        let text = qwen_template(None).render_images("Compare.", 2);
        assert!(
            text.contains("user\n<image><image>Compare.<|im_end|>"),
            "{text}"
        );
        let p = tokenize_with_images(&tok, &text, &[(2, 3), (1, 4)]).unwrap();
        let Segment::Text(head) = p.segments[0] else {
            panic!("{:?}", p.segments)
        };
        assert_eq!(p.segments[1], Segment::Image { rows: 2, cols: 3 });
        // <|vision_end|><|vision_start|> between the two images.
        assert_eq!(p.segments[2], Segment::Text(2));
        assert_eq!(p.segments[3], Segment::Image { rows: 1, cols: 4 });
        assert_eq!(p.ids.iter().filter(|&&t| t == pad).count(), 10);
        let name = |i: usize| tok.id_to_token(p.ids[i]);
        assert_eq!(name(head + 6).as_deref(), Some(VISION_END));
        assert_eq!(name(head + 7).as_deref(), Some(VISION_START));
        assert_eq!(name(head + 12).as_deref(), Some(VISION_END));
        assert!(tokenize_with_images(&tok, &text, &[(2, 3)]).is_err());
    }
}
