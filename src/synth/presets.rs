//! The one registry of random-weight presets: every name that `random:<preset>` and
//! `vlmbench synth-model --preset` accept, and what it stands for. Text presets are listed in
//! [`super::TEXT_PRESETS`] and [`super::families::FAMILY_PRESETS`], vision presets in
//! [`super::llava::VISION_PRESETS`] and [`super::qwen2vl::QWEN_VL_PRESETS`]; everything else
//! (help text, errors, loading, writing) asks this module.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::DType;

use super::families::FAMILY_PRESETS;
use super::llava::{llava_preset, LlavaShape, VISION_PRESETS};
use super::qwen2vl::{qwen_vl_preset, QwenVlShape, QWEN_VL_PRESETS};
use super::{llama_preset, LlamaShape, TEXT_PRESETS};

/// A preset's shape: a Llama text model, another text family (its config.json, see
/// [`super::families`]), LLaVA (CLIP tower + projector + Llama) or Qwen2-VL.
#[derive(Debug, Clone)]
pub enum Preset {
    Text(LlamaShape),
    Family(serde_json::Value),
    Vision(LlavaShape),
    QwenVl(QwenVlShape),
}

/// Every preset name, text presets first.
pub fn names() -> impl Iterator<Item = &'static str> {
    TEXT_PRESETS
        .iter()
        .chain(FAMILY_PRESETS)
        .chain(VISION_PRESETS)
        .chain(QWEN_VL_PRESETS)
        .copied()
}

/// The names, comma-separated, for help text and errors.
pub fn list() -> String {
    let mut l = names().collect::<Vec<_>>().join(", ");
    l.push_str("; a text preset NAME@N keeps its first N layers");
    l
}

/// The preset called `name` (text presets also as `NAME@N`), if there is one. Family configs
/// carry `dtype` as their `torch_dtype`.
pub fn lookup_with(name: &str, dtype: DType) -> Result<Option<Preset>> {
    if let Some(v) = llava_preset(name) {
        return Ok(Some(Preset::Vision(v)));
    }
    if let Some(q) = qwen_vl_preset(name) {
        return Ok(Some(Preset::QwenVl(q)));
    }
    if let Some(config) = super::families::preset_config(name, dtype)? {
        return Ok(Some(Preset::Family(config)));
    }
    Ok(llama_preset(name).map(Preset::Text))
}

/// The preset called `name`, if there is one (f32 configs; a malformed `NAME@N` is none).
pub fn lookup(name: &str) -> Option<Preset> {
    lookup_with(name, DType::F32).ok().flatten()
}

/// Writes a preset in the Hugging Face layout (vision presets in llava-hf's).
pub fn write_model(preset: &str, out: &Path, dtype: DType, seed: u64) -> Result<()> {
    write_preset(preset, out, dtype, Some(seed))
}

/// Writes a preset's files; with `weights_seed` `None`, everything but the weights (configs,
/// tokenizer, processor files): enough to make data sets exact against its tokenizer or to
/// build the same architecture elsewhere, without gigabytes on disk.
pub fn write_preset(
    preset: &str,
    out: &Path,
    dtype: DType,
    weights_seed: Option<u64>,
) -> Result<()> {
    let Some(shape) = lookup_with(preset, dtype)? else {
        bail!("unknown preset {preset:?}; presets: {}", list());
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    match shape {
        Preset::Text(shape) => super::write_llama(&shape, out, dtype, weights_seed),
        Preset::Family(config) => super::write_family(&config, out, dtype, weights_seed),
        Preset::Vision(shape) => super::llava::write_model(&shape, out, dtype, weights_seed),
        Preset::QwenVl(shape) => super::qwen2vl::write_model(&shape, out, dtype, weights_seed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_is_a_preset_of_its_kind() {
        for name in TEXT_PRESETS {
            assert!(matches!(lookup(name), Some(Preset::Text(_))), "{name}");
        }
        for name in FAMILY_PRESETS {
            assert!(matches!(lookup(name), Some(Preset::Family(_))), "{name}");
        }
        for name in VISION_PRESETS {
            assert!(matches!(lookup(name), Some(Preset::Vision(_))), "{name}");
        }
        for name in QWEN_VL_PRESETS {
            assert!(matches!(lookup(name), Some(Preset::QwenVl(_))), "{name}");
        }
        assert!(lookup("no-such-preset").is_none());
        assert!(matches!(lookup("perf-181m@2"), Some(Preset::Family(_))));
        assert_eq!(
            names().count(),
            TEXT_PRESETS.len()
                + FAMILY_PRESETS.len()
                + VISION_PRESETS.len()
                + QWEN_VL_PRESETS.len()
        );
        assert!(list().starts_with("tiny-llama, "), "{}", list());
    }

    #[test]
    fn unknown_preset_names_the_presets() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_model("nope", dir.path(), DType::F32, 0).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"nope\"") && msg.contains("tiny-llava-next"),
            "{msg}"
        );
    }
}
