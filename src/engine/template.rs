//! Prompt templates: how a sample's prompt becomes a model's input text, and where the image
//! goes in its tokens. Shared by the text and LLaVA engines.

use anyhow::{bail, Result};
use tokenizers::Tokenizer;

use crate::models::llava::{LlavaConfig, Variant};

/// The placeholder that marks where the image goes, in templates and prompts.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// How a sample's prompt becomes the model's input text: `{prompt}` is replaced by the
/// sample's prompt, `<image>` marks the image (dropped, with the newline after it, for samples
/// without one, unless the template says otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    pub text: String,
    /// The form for samples without an image where dropping `<image>\n` would not give the
    /// model's own (OneVision's chat template writes the newline before the text, not after
    /// the images).
    pub text_only: Option<String>,
}

impl From<String> for PromptTemplate {
    fn from(text: String) -> Self {
        Self {
            text,
            text_only: None,
        }
    }
}

impl PromptTemplate {
    /// The conversation format each LLaVA release was trained with (llava-hf's chat templates;
    /// the original release's `vicuna_v1` / `llava_v1` system prompt).
    pub fn for_llava(config: &LlavaConfig) -> Self {
        const VICUNA_SYSTEM: &str = "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";
        if matches!(config.variant, Variant::OneVision { .. }) {
            // llava-hf's OneVision chat template: ChatML with a space after the role, the
            // images, then "\n" + the text; no newline between turns, no system turn.
            return Self {
                text: "<|im_start|>user <image>\n{prompt}<|im_end|><|im_start|>assistant\n".into(),
                text_only: Some(
                    "<|im_start|>user \n{prompt}<|im_end|><|im_start|>assistant\n".into(),
                ),
            };
        }
        let text = if config.text_model_type == "mistral" {
            "[INST] <image>\n{prompt} [/INST]".to_string()
        } else if config.variant == Variant::Next || config.image_token_id.is_none() {
            format!("{VICUNA_SYSTEM} USER: <image>\n{{prompt}} ASSISTANT:")
        } else {
            "USER: <image>\n{prompt} ASSISTANT:".to_string()
        };
        text.into()
    }

    /// A user's template; it must say where the prompt goes.
    pub fn custom(text: &str) -> Result<Self> {
        if !text.contains("{prompt}") {
            bail!("--prompt-template must contain {{prompt}} (and <image> where the image goes), e.g. \"USER: <image>\\n{{prompt}} ASSISTANT:\"");
        }
        // Shells make typing a newline awkward: accept the two characters `\n` for one.
        Ok(text.replace("\\n", "\n").into())
    }

    /// The model's input text for `prompt`, with or without one image.
    pub fn render(&self, prompt: &str, has_image: bool) -> String {
        self.render_images(prompt, usize::from(has_image))
    }

    /// The model's input text for `prompt` with `images` images: the template's `<image>`
    /// stands for all of them, one mark per image in order (as a chat template renders a user
    /// turn whose content lists the images, then the text).
    pub fn render_images(&self, prompt: &str, images: usize) -> String {
        let template = match &self.text_only {
            Some(text_only) if images == 0 => text_only.clone(),
            _ if images == 0 || prompt.contains(IMAGE_PLACEHOLDER) => self
                .text
                .replace("<image>\n", "")
                .replace(IMAGE_PLACEHOLDER, ""),
            _ => self
                .text
                .replace(IMAGE_PLACEHOLDER, &IMAGE_PLACEHOLDER.repeat(images)),
        };
        template.replace("{prompt}", prompt)
    }
}

/// A prompt's tokens, cut where its images go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// The text before the first image, between images, and after the last: one more piece
    /// than there are images (a text-only prompt is one piece).
    pub pieces: Vec<Vec<u32>>,
}

impl TokenizedPrompt {
    /// Text tokens, all pieces together.
    pub fn text_tokens(&self) -> usize {
        self.pieces.iter().map(Vec::len).sum()
    }
}

/// Splits `text` at its `images` `<image>` marks: by the image token id when the tokenizer has
/// one (llava-hf), else by the text, tokenizing each piece and dropping the BOS of the later
/// pieces (the original release's `tokenizer_image_token`).
pub fn tokenize_around_images(
    tokenizer: &Tokenizer,
    text: &str,
    image_token_id: Option<u32>,
    images: usize,
) -> Result<TokenizedPrompt, String> {
    let encode = |s: &str| -> Result<Vec<u32>, String> {
        Ok(tokenizer
            .encode(s, true)
            .map_err(|e| format!("tokenizer failed: {e}"))?
            .get_ids()
            .to_vec())
    };
    if images == 0 {
        return Ok(TokenizedPrompt {
            pieces: vec![encode(text)?],
        });
    }
    let count = text.matches(IMAGE_PLACEHOLDER).count();
    if count != images {
        return Err(format!(
            "the prompt holds {count} {IMAGE_PLACEHOLDER} placeholders for {images} image(s); each image needs one"
        ));
    }
    let id = image_token_id
        .filter(|id| tokenizer.id_to_token(*id).as_deref() == Some(IMAGE_PLACEHOLDER));
    if let Some(id) = id {
        let ids = encode(text)?;
        let pieces: Vec<Vec<u32>> = ids.split(|&t| t == id).map(<[u32]>::to_vec).collect();
        if pieces.len() != images + 1 {
            return Err(format!(
                "the tokenizer turned {images} {IMAGE_PLACEHOLDER} marks into {} tokens {id}",
                pieces.len() - 1
            ));
        }
        return Ok(TokenizedPrompt { pieces });
    }
    let mut pieces = Vec::with_capacity(images + 1);
    for (k, part) in text.split(IMAGE_PLACEHOLDER).enumerate() {
        let mut ids = encode(part)?;
        let bos = pieces.first().and_then(|p: &Vec<u32>| p.first().copied());
        if k > 0 && bos.is_some() && ids.first().copied() == bos {
            ids.remove(0);
        }
        pieces.push(ids);
    }
    Ok(TokenizedPrompt { pieces })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::llava::{llava_preset, tokenizer};

    #[test]
    fn templates_place_prompt_and_image() {
        let t = PromptTemplate::from("USER: <image>\n{prompt} ASSISTANT:".to_string());
        assert_eq!(t.render("Hi?", true), "USER: <image>\nHi? ASSISTANT:");
        assert_eq!(t.render("Hi?", false), "USER: Hi? ASSISTANT:");
        // A prompt that places the image itself keeps its own placeholder only.
        assert_eq!(
            t.render("Look: <image>", true),
            "USER: Look: <image> ASSISTANT:"
        );
        assert_eq!(
            t.render_images("Hi?", 3),
            "USER: <image><image><image>\nHi? ASSISTANT:"
        );
        assert_eq!(t.render_images("Hi?", 0), t.render("Hi?", false));
        assert_eq!(
            t.render_images("<image> then <image>", 2),
            "USER: <image> then <image> ASSISTANT:"
        );
        assert!(PromptTemplate::custom("no slot").is_err());
        // OneVision's template puts the newline before the text, with or without images.
        let cfg = crate::models::llava::LlavaConfig::from_json(
            &serde_json::json!({"model_type": "llava_onevision"}),
            "llava_onevision",
        )
        .unwrap();
        let ov = PromptTemplate::for_llava(&cfg);
        assert_eq!(
            ov.render_images("Hi?", 2),
            "<|im_start|>user <image><image>\nHi?<|im_end|><|im_start|>assistant\n"
        );
        assert_eq!(
            ov.render_images("Hi?", 0),
            "<|im_start|>user \nHi?<|im_end|><|im_start|>assistant\n"
        );
        assert_eq!(
            PromptTemplate::custom("<image>\\n{prompt}").unwrap().text,
            "<image>\n{prompt}"
        );
    }

    #[test]
    fn image_split_by_token_and_by_text_agree() {
        let shape = llava_preset("tiny-llava").unwrap();
        let tok = Tokenizer::from_bytes(tokenizer(&shape).unwrap().as_bytes()).unwrap();
        for (text, images) in [
            ("USER: <image>\nWhat is this? ASSISTANT:", 1),
            ("USER: <image><image>\nWhich differs? ASSISTANT:", 2),
            ("<image> and <image> then <image>", 3),
        ] {
            let by_id =
                tokenize_around_images(&tok, text, Some(shape.image_token_id()), images).unwrap();
            let by_text = tokenize_around_images(&tok, text, None, images).unwrap();
            assert_eq!(by_id.pieces.len(), images + 1, "{text}");
            assert_eq!(by_id.pieces[0][0], crate::synth::BOS);
            assert_eq!(by_id, by_text, "{text}");
            assert!(
                by_id.pieces[1..]
                    .iter()
                    .all(|p| !p.contains(&crate::synth::BOS)),
                "{text}"
            );
            // The pieces are the whole prompt's tokens, the marks taken out.
            let whole = tok.encode(text, true).unwrap();
            assert_eq!(
                by_id.text_tokens() + images,
                whole.get_ids().len(),
                "{text}"
            );
        }
        let two = tokenize_around_images(&tok, "<image><image>", None, 1).unwrap_err();
        assert!(two.contains("2"), "{two}");
        let none = tokenize_around_images(&tok, "hello", None, 0).unwrap();
        assert_eq!(none.pieces.len(), 1);
    }
}
