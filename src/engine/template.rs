//! Prompt templates: how a sample's prompt becomes a model's input text, and where the image
//! goes in its tokens. Shared by the text and LLaVA engines.

use anyhow::{bail, Result};
use tokenizers::Tokenizer;

use crate::models::llava::{LlavaConfig, Variant};

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

    /// The model's input text for `prompt`, with or without one image.
    pub fn render(&self, prompt: &str, has_image: bool) -> String {
        self.render_images(prompt, usize::from(has_image))
    }

    /// The model's input text for `prompt` with `images` images: the template's `<image>`
    /// stands for all of them, one mark per image in order (as a chat template renders a user
    /// turn whose content lists the images, then the text).
    pub fn render_images(&self, prompt: &str, images: usize) -> String {
        let template = if images == 0 || prompt.contains(IMAGE_PLACEHOLDER) {
            self.0
                .replace("<image>\n", "")
                .replace(IMAGE_PLACEHOLDER, "")
        } else {
            self.0
                .replace(IMAGE_PLACEHOLDER, &IMAGE_PLACEHOLDER.repeat(images))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::llava::{llava_preset, tokenizer};

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
        assert_eq!(by_id.before[0], crate::synth::BOS);
        assert_eq!(by_id.before, by_text.before);
        assert_eq!(by_id.after, by_text.after);
        assert!(!by_id.after.as_ref().unwrap().contains(&crate::synth::BOS));
        let two = tokenize_around_image(&tok, "<image><image>", None, true).unwrap_err();
        assert!(two.contains("2"), "{two}");
        let none = tokenize_around_image(&tok, "hello", None, false).unwrap();
        assert_eq!(none.after, None);
    }
}
