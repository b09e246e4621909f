//! In-process LLaVA: load + preprocess the image, template and tokenize the prompt, encode the
//! image, prefill text and image features together, decode greedily.
//!
//! Phases as timed (offsets from the call, device synchronised before each reading):
//! preprocessing (image decode, resize, normalise, tokenize) → vision encoding (CLIP tower +
//! projector + LLaVA-NeXT packing) → prefill (embedding lookup, merge, forward) → decode steps.

use std::time::Instant;

use anyhow::{bail, Result};
use tokenizers::Tokenizer;

use super::candle_text::{ensure_cache, prefill_and_decode};
use super::llama::KvCache;
use super::llava::preprocess::ImageProcessor;
use super::llava::{LlavaConfig, LlavaModel, Variant};
use super::{
    Engine, EngineError, EngineInfo, Generation, GenerationRequest, ModelThreads, PhasePeaks,
};
use crate::memory::DevicePool;
use crate::profile;

/// The placeholder that marks where the image goes, in templates and prompts.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// How a sample's prompt becomes the model's input text: `{prompt}` is replaced by the
/// sample's prompt, `<image>` marks the image (dropped, with the newline after it, for samples
/// without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate(pub String);

impl PromptTemplate {
    /// The conversation format each LLaVA release was trained with (llava-hf's chat templates;
    /// the original release's `vicuna_v1` / `llava_v1` system prompt).
    pub fn for_llava(config: &LlavaConfig) -> Self {
        const VICUNA_SYSTEM: &str = "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";
        let text = if config.text_model_type == "mistral" {
            "[INST] <image>\n{prompt} [/INST]".to_string()
        } else if config.variant == Variant::Next || config.image_token_id.is_none() {
            format!("{VICUNA_SYSTEM} USER: <image>\n{{prompt}} ASSISTANT:")
        } else {
            "USER: <image>\n{prompt} ASSISTANT:".to_string()
        };
        Self(text)
    }

    /// A user's template; it must say where the prompt goes.
    pub fn custom(text: &str) -> Result<Self> {
        if !text.contains("{prompt}") {
            bail!("--prompt-template must contain {{prompt}} (and <image> where the image goes), e.g. \"USER: <image>\\n{{prompt}} ASSISTANT:\"");
        }
        // Shells make typing a newline awkward: accept the two characters `\n` for one.
        Ok(Self(text.replace("\\n", "\n")))
    }

    /// The model's input text for `prompt`.
    pub fn render(&self, prompt: &str, has_image: bool) -> String {
        let drop_placeholder = !has_image || prompt.contains(IMAGE_PLACEHOLDER);
        let template = if drop_placeholder {
            self.0
                .replace("<image>\n", "")
                .replace(IMAGE_PLACEHOLDER, "")
        } else {
            self.0.clone()
        };
        template.replace("{prompt}", prompt)
    }
}

/// Tokens around the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    pub before: Vec<u32>,
    /// `None` for a text-only sample.
    pub after: Option<Vec<u32>>,
}

/// Splits `text` at its single `<image>`: by the image token id when the tokenizer has one
/// (llava-hf), else by the text, tokenizing each piece and dropping the BOS of the later
/// piece (the original release's `tokenizer_image_token`).
pub fn tokenize_around_image(
    tokenizer: &Tokenizer,
    text: &str,
    image_token_id: Option<u32>,
    has_image: bool,
) -> Result<TokenizedPrompt, String> {
    let encode = |s: &str| -> Result<Vec<u32>, String> {
        Ok(tokenizer
            .encode(s, true)
            .map_err(|e| format!("tokenizer failed: {e}"))?
            .get_ids()
            .to_vec())
    };
    if !has_image {
        return Ok(TokenizedPrompt {
            before: encode(text)?,
            after: None,
        });
    }
    let count = text.matches(IMAGE_PLACEHOLDER).count();
    if count != 1 {
        return Err(format!(
            "the prompt holds {count} {IMAGE_PLACEHOLDER} placeholders; one image needs exactly one"
        ));
    }
    let id = image_token_id
        .filter(|id| tokenizer.id_to_token(*id).as_deref() == Some(IMAGE_PLACEHOLDER));
    if let Some(id) = id {
        let ids = encode(text)?;
        let Some(pos) = ids.iter().position(|&t| t == id) else {
            return Err(format!(
                "the tokenizer did not turn {IMAGE_PLACEHOLDER} into token {id}"
            ));
        };
        return Ok(TokenizedPrompt {
            before: ids[..pos].to_vec(),
            after: Some(ids[pos + 1..].to_vec()),
        });
    }
    let (head, tail) = text
        .split_once(IMAGE_PLACEHOLDER)
        .ok_or_else(|| "no image placeholder".to_string())?;
    let before = encode(head)?;
    let mut after = encode(tail)?;
    let bos = before.first().copied();
    if bos.is_some() && after.first().copied() == bos {
        after.remove(0);
    }
    Ok(TokenizedPrompt {
        before,
        after: Some(after),
    })
}

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
        let pool = match model.device().location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => DevicePool::for_device(gpu_id),
            _ => None,
        };
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

fn sample_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Sample(e.to_string())
}

impl Engine for CandleLlavaEngine {
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
        let image = match req.image {
            Some(path) => Some(
                self.processor
                    .prepare_file(path)
                    .map_err(|e| sample_error(format!("{e:#}")))?,
            ),
            None => None,
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
        let context = self.model.llm.config.max_position_embeddings;
        if input_tokens >= context {
            return Err(sample_error(format!(
                "prompt of {input_tokens} tokens ({image_tokens} for the image) does not fit the model's context of {context} tokens"
            )));
        }
        ensure_cache(
            &self.model.llm,
            &mut self.cache,
            input_tokens + req.max_new_tokens,
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
    use crate::engine::llava::synth::{llava_preset, tokenizer};

    #[test]
    fn templates_place_prompt_and_image() {
        let t = PromptTemplate("USER: <image>\n{prompt} ASSISTANT:".into());
        assert_eq!(t.render("Hi?", true), "USER: <image>\nHi? ASSISTANT:");
        assert_eq!(t.render("Hi?", false), "USER: Hi? ASSISTANT:");
        // A prompt that places the image itself keeps its own placeholder only.
        assert_eq!(
            t.render("Look: <image>", true),
            "USER: Look: <image> ASSISTANT:"
        );
        assert!(PromptTemplate::custom("no slot").is_err());
        assert_eq!(
            PromptTemplate::custom("<image>\\n{prompt}").unwrap().0,
            "<image>\n{prompt}"
        );
    }

    #[test]
    fn image_split_by_token_and_by_text_agree() {
        let shape = llava_preset("tiny-llava").unwrap();
        let tok = Tokenizer::from_bytes(tokenizer(&shape).unwrap().as_bytes()).unwrap();
        let text = "USER: <image>\nWhat is this? ASSISTANT:";
        let by_id = tokenize_around_image(&tok, text, Some(shape.image_token_id()), true).unwrap();
        let by_text = tokenize_around_image(&tok, text, None, true).unwrap();
        assert_eq!(by_id.before[0], crate::engine::synth::BOS);
        assert_eq!(by_id.before, by_text.before);
        assert_eq!(by_id.after, by_text.after);
        assert!(!by_id
            .after
            .as_ref()
            .unwrap()
            .contains(&crate::engine::synth::BOS));
        let two = tokenize_around_image(&tok, "<image><image>", None, true).unwrap_err();
        assert!(two.contains("2"), "{two}");
        let none = tokenize_around_image(&tok, "hello", None, false).unwrap();
        assert_eq!(none.after, None);
    }
}
