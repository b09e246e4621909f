//! The tokenizer a GGUF file carries in its metadata, as a Hugging Face `tokenizers` tokenizer.
//!
//! llama.cpp's converter stores the vocabulary (`tokenizer.ggml.tokens`, `token_type`) and either
//! BPE merges (`tokenizer.ggml.model = "gpt2"`: GPT-2-style byte-level BPE) or SentencePiece
//! scores (`"llama"`: Llama 1/2, Mistral). The same tokenizer is rebuilt here the way
//! transformers' converters build `tokenizer.json` from those sources, so a `.gguf` file runs on
//! its own, without the original repository's `tokenizer.json`.

use anyhow::{anyhow, bail, Result};
use candle_core::quantized::gguf_file::{Content, Value as G};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

/// llama.cpp's token types.
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// Qwen2's pre-tokenizer split (`tokenizer.ggml.pre = "qwen2"`): Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's pre-tokenizer split (`tokenizer.ggml.pre = "llama-bpe"`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn strings(md: &std::collections::HashMap<String, G>, key: &str) -> Result<Vec<String>> {
    let v = md
        .get(key)
        .ok_or_else(|| anyhow!("GGUF metadata `{key}` is missing"))?
        .to_vec()
        .map_err(|e| anyhow!("GGUF metadata `{key}`: {e}"))?;
    v.iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|e| anyhow!("GGUF metadata `{key}`: {e}"))
        })
        .collect()
}

fn numbers(md: &std::collections::HashMap<String, G>, key: &str) -> Option<Vec<f64>> {
    let v = md.get(key)?.to_vec().ok()?;
    v.iter()
        .map(|x| match x {
            G::F32(f) => Some(f64::from(*f)),
            G::F64(f) => Some(*f),
            G::I32(i) => Some(f64::from(*i)),
            G::U32(i) => Some(f64::from(*i)),
            G::I8(i) => Some(f64::from(*i)),
            G::U8(i) => Some(f64::from(*i)),
            G::I16(i) => Some(f64::from(*i)),
            G::U16(i) => Some(f64::from(*i)),
            _ => None,
        })
        .collect()
}

/// Builds the tokenizer from `content`'s metadata.
pub fn from_gguf(content: &Content) -> Result<Tokenizer> {
    let json = tokenizer_json(content)?;
    Tokenizer::from_bytes(json.to_string().as_bytes())
        .map_err(|e| anyhow!("the GGUF's tokenizer could not be built: {e}"))
}

/// The tokenizer.json equivalent of `content`'s metadata.
pub fn tokenizer_json(content: &Content) -> Result<Value> {
    let md = &content.metadata;
    let model = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| anyhow!("the GGUF holds no tokenizer (no tokenizer.ggml.model)"))?;
    let tokens = strings(md, "tokenizer.ggml.tokens")?;
    let types: Vec<i32> = numbers(md, "tokenizer.ggml.token_type")
        .map(|v| v.into_iter().map(|x| x as i32).collect())
        .unwrap_or_else(|| vec![1; tokens.len()]);
    let id_of = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
    let flag = |key: &str, default: bool| {
        md.get(key)
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(default)
    };
    let bos = id_of("tokenizer.ggml.bos_token_id");
    let add_bos = flag("tokenizer.ggml.add_bos_token", model == "llama");
    let unk = id_of("tokenizer.ggml.unknown_token_id").or_else(|| {
        types
            .iter()
            .position(|&t| t == TYPE_UNKNOWN)
            .map(|i| i as u32)
    });

    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(&TYPE_CONTROL | &TYPE_USER_DEFINED | &TYPE_UNKNOWN)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": types[i] == TYPE_USER_DEFINED, "special": types[i] != TYPE_USER_DEFINED})
        })
        .collect();
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let post_processor = match bos.filter(|_| add_bos) {
        Some(b) => {
            let bos_token = tokens
                .get(b as usize)
                .ok_or_else(|| anyhow!("GGUF bos_token_id {b} is outside the vocabulary"))?;
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_token, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_token.as_str(): {"id": bos_token, "ids": [b], "tokens": [bos_token]}}
            })
        }
        None => Value::Null,
    };
    let unk_token = unk.and_then(|u| tokens.get(u as usize)).cloned();

    let (normalizer, pre_tokenizer, decoder, model_json) = match model.as_str() {
        "gpt2" => {
            let merges = strings(md, "tokenizer.ggml.merges")?;
            let merges: Vec<Value> = merges
                .iter()
                .map(|m| {
                    let (a, b) = m
                        .split_once(' ')
                        .ok_or_else(|| anyhow!("GGUF merge {m:?} is not two tokens"))?;
                    Ok(json!([a, b]))
                })
                .collect::<Result<_>>()?;
            let pre = md
                .get("tokenizer.ggml.pre")
                .and_then(|v| v.to_string().ok())
                .cloned()
                .unwrap_or_default();
            let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
            let pre_tokenizer = match pre.as_str() {
                "llama-bpe" | "llama3" | "smaug-bpe" => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
                ]}),
                // Qwen2's tokenizer.json: NFC, then the split, then bytes.
                "qwen2" => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
                ]}),
                _ => byte_level.clone(),
            };
            let normalizer = if pre == "qwen2" {
                json!({"type": "NFC"})
            } else {
                Value::Null
            };
            (
                normalizer,
                pre_tokenizer,
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
                json!({
                    "type": "BPE", "dropout": null, "unk_token": unk_token, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                    "ignore_merges": matches!(pre.as_str(), "llama-bpe" | "llama3"),
                    "vocab": vocab, "merges": merges
                }),
            )
        }
        "llama" => {
            let scores = numbers(md, "tokenizer.ggml.scores")
                .ok_or_else(|| anyhow!("GGUF metadata `tokenizer.ggml.scores` is missing (SentencePiece tokenizer)"))?;
            if scores.len() != tokens.len() {
                bail!("GGUF tokenizer: {} scores for {} tokens", scores.len(), tokens.len());
            }
            let merges = sentencepiece_merges(&tokens, &scores);
            // Llama 1/2 and Mistral prefix a space (SentencePiece's dummy prefix); Gemma's
            // converter stores `add_space_prefix = false` and its tokenizer.json only maps
            // spaces to `▁`.
            let space_prefix = flag("tokenizer.ggml.add_space_prefix", true);
            let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            let normalizer = if space_prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
                json!({"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": "\u{2581}"}, replace
                ]})
            } else {
                replace
            };
            (
                normalizer,
                Value::Null,
                json!({"type": "Sequence", "decoders": decoders}),
                json!({
                    "type": "BPE", "dropout": null, "unk_token": unk_token, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                    "vocab": vocab, "merges": merges
                }),
            )
        }
        other => bail!(
            "the GGUF's tokenizer type {other:?} is not supported (gpt2, llama); pass --tokenizer with the model's tokenizer.json"
        ),
    };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor, "decoder": decoder, "model": model_json
    }))
}

/// BPE merges equivalent to a SentencePiece vocabulary, as transformers derives them: every
/// split of a piece into two pieces of the vocabulary, ranked by the merged piece's score
/// (highest first), ties by the pieces' ids.
fn sentencepiece_merges(tokens: &[String], scores: &[f64]) -> Vec<Value> {
    let ids: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(usize, usize, f64)> = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(usize, usize, f64)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.split_at(at);
                Some((*ids.get(l)?, *ids.get(r)?, score))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local);
    }
    // Stable: equal scores keep vocabulary order.
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    merges
        .into_iter()
        .map(|(l, r, _)| json!([tokens[l], tokens[r]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn content(md: Vec<(&str, G)>) -> Content {
        let mut buf = std::io::Cursor::new(Vec::new());
        let refs: Vec<(&str, &G)> = md.iter().map(|(k, v)| (*k, v)).collect();
        candle_core::quantized::gguf_file::write(&mut buf, &refs, &[]).unwrap();
        buf.set_position(0);
        Content::read(&mut buf).unwrap()
    }

    fn strs(v: &[&str]) -> G {
        G::Array(v.iter().map(|s| G::String((*s).into())).collect())
    }

    #[test]
    fn gpt2_style_gguf_tokenizes_like_its_tokenizer_json() {
        // The preset tokenizer, carried the way llama.cpp's converter writes it.
        let json: Value = serde_json::from_str(&crate::synth::builtin_tokenizer_json()).unwrap();
        let reference = Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap();
        let vocab = reference.get_vocab(true);
        let mut tokens = vec![String::new(); vocab.len()];
        for (t, id) in &vocab {
            tokens[*id as usize] = t.clone();
        }
        let merges: Vec<String> = json["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect();
        let types: Vec<G> = (0..tokens.len())
            .map(|i| G::I32(if i < 4 { TYPE_CONTROL } else { 1 }))
            .collect();
        let tok_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let merge_refs: Vec<&str> = merges.iter().map(String::as_str).collect();
        let c = content(vec![
            ("tokenizer.ggml.model", G::String("gpt2".into())),
            ("tokenizer.ggml.pre", G::String("gpt-2".into())),
            ("tokenizer.ggml.tokens", strs(&tok_refs)),
            ("tokenizer.ggml.token_type", G::Array(types)),
            ("tokenizer.ggml.merges", strs(&merge_refs)),
            ("tokenizer.ggml.bos_token_id", G::U32(1)),
            ("tokenizer.ggml.add_bos_token", G::Bool(true)),
        ]);
        let built = from_gguf(&c).unwrap();
        for text in [
            "The quick brown fox, 42 times!",
            "  spaces\tand\nnewlines ",
            "Describe this image.",
        ] {
            let a = reference.encode(text, true).unwrap();
            let b = built.encode(text, true).unwrap();
            assert_eq!(a.get_ids(), b.get_ids(), "{text:?}");
            assert_eq!(built.decode(b.get_ids(), true).unwrap(), text);
        }
    }

    #[test]
    fn sentencepiece_style_gguf_merges_by_score() {
        // A tiny SentencePiece vocabulary: bytes, pieces and scores as llama.cpp stores them.
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![
            G::I32(TYPE_UNKNOWN),
            G::I32(TYPE_CONTROL),
            G::I32(TYPE_CONTROL),
        ];
        let mut scores = vec![G::F32(0.0); 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(G::I32(6));
            scores.push(G::F32(0.0));
        }
        for (p, s) in [
            ("\u{2581}", -1.0),
            ("h", -2.0),
            ("e", -2.0),
            ("l", -2.0),
            ("o", -2.0),
            ("ll", -3.0),
            ("he", -4.0),
            ("\u{2581}he", -5.0),
            ("llo", -6.0),
            ("\u{2581}hello", -7.0),
        ] {
            tokens.push(p.into());
            types.push(G::I32(1));
            scores.push(G::F32(s));
        }
        let tok_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let c = content(vec![
            ("tokenizer.ggml.model", G::String("llama".into())),
            ("tokenizer.ggml.tokens", strs(&tok_refs)),
            ("tokenizer.ggml.token_type", G::Array(types)),
            ("tokenizer.ggml.scores", G::Array(scores)),
            ("tokenizer.ggml.bos_token_id", G::U32(1)),
            ("tokenizer.ggml.unknown_token_id", G::U32(0)),
        ]);
        let tok = from_gguf(&c).unwrap();
        let ids: HashMap<String, u32> = tok.get_vocab(true);
        let enc = tok.encode("hello", true).unwrap();
        assert_eq!(enc.get_ids(), &[1, ids["\u{2581}hello"]]);
        // Characters outside the vocabulary fall back to their UTF-8 bytes.
        let enc = tok.encode("hé", true).unwrap();
        assert_eq!(
            enc.get_ids(),
            &[1, ids["\u{2581}"], ids["h"], ids["<0xC3>"], ids["<0xA9>"]]
        );
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "hé");
        // Gemma's GGUFs: no dummy prefix, so a leading word has no `▁`.
        let mut md = c.metadata.clone();
        md.insert("tokenizer.ggml.add_space_prefix".into(), G::Bool(false));
        let gemma = from_gguf(&Content { metadata: md, ..c }).unwrap();
        let enc = gemma.encode("hello hello", true).unwrap();
        assert_eq!(
            enc.get_ids(),
            &[1, ids["he"], ids["llo"], ids["\u{2581}hello"]]
        );
        assert_eq!(gemma.decode(enc.get_ids(), true).unwrap(), "hello hello");
    }
}
