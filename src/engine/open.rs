//! Finding a model and opening the right engine for it.
//!
//! `--model-path` may be:
//! - `random:<preset>`: a real architecture with seeded random weights, built in memory;
//! - a `.gguf` file (llama.cpp's format); its tokenizer is `tokenizer.json` beside it or
//!   `--tokenizer`;
//! - a local folder in the Hugging Face layout (`config.json`, `tokenizer.json`,
//!   `model.safetensors` or shards with `model.safetensors.index.json`);
//! - a Hugging Face hub id (`org/name`), downloaded with hf-hub into its cache when a network is
//!   there.
//!
//! The architecture comes from `config.json` (`architectures` / `model_type`) or GGUF
//! `general.architecture`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde_json::Value;
use tokenizers::Tokenizer;

use super::candle_llava::CandleLlavaEngine;
use super::candle_qwen2vl::{qwen_template, CandleQwen2VlEngine};
use super::candle_text::CandleTextEngine;
use super::template::PromptTemplate;
use super::{Engine, EngineInfo};
use crate::models::config_check;
use crate::models::llama::family::Family;
use crate::models::llama::{ids_of, safetensor_files, shard_files, LlamaConfig, LlamaModel};
use crate::models::llava::{self, LlavaConfig, LlavaModel};
use crate::models::qwen2vl::{self, preprocess::Qwen2VlImageProcessor, vision::VisionKind};
use crate::synth;
use crate::synth::presets::Preset;

/// Architectures this build runs, for error messages.
pub const SUPPORTED: &str =
    "text: llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, gpt2, gpt_neox \
(LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM, \
Gemma3ForCausalLM, Phi3ForCausalLM, GPT2LMHeadModel, GPTNeoXForCausalLM) from safetensors or GGUF; \
llava (LlavaForConditionalGeneration, original LlavaLlamaForCausalLM), llava_next \
(LlavaNextForConditionalGeneration), llava_onevision (LlavaOnevisionForConditionalGeneration), \
qwen2_vl (Qwen2VLForConditionalGeneration) and qwen2_5_vl (Qwen2_5_VLForConditionalGeneration) \
from safetensors";

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Path, hub id or `random:<preset>`.
    pub model: String,
    /// Weight/activation dtype for safetensors and random models; `None` = f16 on CUDA, f32 on CPU.
    pub dtype: Option<DType>,
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    /// tokenizer.json overriding the model's.
    pub tokenizer: Option<PathBuf>,
    /// Seed of random weights.
    pub seed: u64,
    /// Template for vision models' prompts (`{prompt}`, `<image>`); `None` = the model's own.
    pub prompt_template: Option<String>,
    /// KV cache dtype; `None` = the activation dtype.
    pub kv_cache_dtype: Option<DType>,
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    if s == "auto" {
        #[cfg(feature = "cuda")]
        if let Ok(d) = Device::new_cuda(0) {
            return Ok(d);
        }
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| anyhow!("invalid device {s:?}: use cpu, cuda or cuda:N"))?,
        None => bail!("invalid device {s:?}: use cpu, cuda or cuda:N"),
    };
    if cfg!(feature = "cuda") {
        Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
    } else {
        bail!("device {s} requested, but this vlmbench was built without CUDA: rebuild with `cargo build --release --features cuda` (see README, CUDA)")
    }
}

/// `cpu` or `cuda:N`.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => match d.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".into(),
        },
        other => format!("{:?}", other.location()),
    }
}

fn dtype_name(d: DType) -> &'static str {
    d.as_str()
}

/// Opens the engine for `opts.model`, with its KV cache in `opts.kv_cache_dtype` when given.
pub fn open_engine(opts: &EngineOptions) -> Result<Box<dyn Engine>> {
    let mut engine = open_model(opts)?;
    if let Some(dtype) = opts.kv_cache_dtype {
        engine
            .set_kv_cache_dtype(dtype)
            .context("--kv-cache-dtype")?;
    }
    Ok(engine)
}

/// [`open_engine`] without the KV cache choice.
fn open_model(opts: &EngineOptions) -> Result<Box<dyn Engine>> {
    let device = parse_device(&opts.device)?;
    let dtype = opts.dtype.unwrap_or(if device.is_cuda() {
        DType::F16
    } else {
        DType::F32
    });
    if let Some(preset) = opts.model.strip_prefix("random:") {
        return open_random(preset, opts, &device, dtype);
    }
    let path = PathBuf::from(&opts.model);
    if path.is_file() {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return open_gguf(&path, opts, &device);
        }
        bail!("{} is a file but not a .gguf model; give a model folder, a .gguf file, a hub id or random:<preset>", path.display());
    }
    let dir = if path.is_dir() {
        path
    } else if looks_like_hub_id(&opts.model) {
        fetch_from_hub(&opts.model)?
    } else {
        bail!(
            "model {:?} not found: it is not a local folder or .gguf file, and not a hub id (org/name)",
            opts.model
        );
    };
    open_hf_dir(&dir, opts, &device, dtype)
}

fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
}

/// Downloads the files a checkpoint needs into the hf-hub cache (and the optional ones it has).
fn fetch_from_hub(id: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::Api::new().context("cannot set up the Hugging Face hub client")?;
    let repo = api.model(id.to_string());
    let wanted =
        "config.json, tokenizer.json, model.safetensors or model.safetensors.index.json + shards";
    let offline = |e: hf_hub::api::sync::ApiError| {
        anyhow!(
            "cannot fetch {id} from the Hugging Face hub ({e}); looked for {wanted}. Without a network, download the model elsewhere and pass its local folder with --model-path"
        )
    };
    let config = repo.get("config.json").map_err(offline)?;
    repo.get("tokenizer.json").map_err(offline)?;
    // Optional: generation settings, a vision model's image processor and chat template.
    for optional in [
        "generation_config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "chat_template.json",
        "chat_template.jinja",
        "tokenizer_config.json",
    ] {
        let _ = repo.get(optional);
    }
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            let v: Value = serde_json::from_slice(&std::fs::read(&index)?)?;
            for f in shard_files(&v) {
                repo.get(&f).map_err(offline)?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors").map_err(offline)?;
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// `--tokenizer`, else the folder's tokenizer.json; `hint` says what to do when neither exists.
fn folder_tokenizer(dir: &Path, opts: &EngineOptions, hint: &str) -> Result<Tokenizer> {
    let path = opts
        .tokenizer
        .clone()
        .unwrap_or_else(|| dir.join("tokenizer.json"));
    if !path.is_file() {
        bail!("no tokenizer: looked for {} ({hint})", path.display());
    }
    load_tokenizer(&path)
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| {
        anyhow!(
            "cannot load tokenizer {}: {e} (expected a Hugging Face tokenizer.json)",
            path.display()
        )
    })
}

/// What `config.json` says the model is.
pub fn detect_architecture(config: &Value) -> Result<&'static str> {
    let archs: Vec<&str> = config
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let named = |n: &str| archs.contains(&n);
    if named("LlavaForConditionalGeneration")
        || named("LlavaLlamaForCausalLM")
        || model_type == "llava"
    {
        return Ok("llava");
    }
    if named("LlavaNextForConditionalGeneration") || model_type == "llava_next" {
        return Ok("llava_next");
    }
    if named("LlavaOnevisionForConditionalGeneration") || model_type == "llava_onevision" {
        return Ok("llava_onevision");
    }
    if named("Qwen2_5_VLForConditionalGeneration") || model_type == "qwen2_5_vl" {
        return Ok("qwen2_5_vl");
    }
    if named("Qwen2VLForConditionalGeneration") || model_type == "qwen2_vl" {
        return Ok("qwen2_vl");
    }
    if let Some(family) = Family::detect(config) {
        return Ok(family.name());
    }
    bail!(
        "unsupported architecture {} (model_type {:?}); supported: {SUPPORTED}",
        if archs.is_empty() {
            "(none listed)".to_string()
        } else {
            archs.join(", ")
        },
        model_type
    )
}

fn open_hf_dir(
    dir: &Path,
    opts: &EngineOptions,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn Engine>> {
    let config_path = dir.join("config.json");
    let config: Value =
        serde_json::from_slice(&std::fs::read(&config_path).with_context(|| {
            format!(
                "no config.json in {} (looked for {})",
                dir.display(),
                config_path.display()
            )
        })?)
        .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    let arch = detect_architecture(&config)?;
    if let Some(kind) = qwen_kind(arch) {
        return open_qwen_vl_dir(dir, &config, kind, opts, device, dtype);
    }
    if matches!(arch, "llava" | "llava_next" | "llava_onevision") {
        return open_llava_dir(dir, &config, arch, opts, device, dtype);
    }
    // A text model's own config names its shape (only a LLaVA `text_config` may leave keys
    // at transformers' defaults).
    let cfg = config_check::check_required(&config)
        .and_then(|()| LlamaConfig::from_hf_json(&config))
        .with_context(|| format!("reading {}", config_path.display()))?;
    let tokenizer = folder_tokenizer(
        dir,
        opts,
        "pass --tokenizer FILE for a tokenizer.json elsewhere",
    )?;
    config_check::check_vocab(cfg.vocab_size, &tokenizer)?;
    check_checkpoint_layers(dir, cfg.num_layers)?;
    let vb = open_weights(dir, dtype, device)?;
    let eos = eos_ids(dir, &config);
    let model = LlamaModel::from_hf(cfg, vb, "model", "lm_head")
        .with_context(|| format!("loading the weights in {}", dir.display()))?;
    let info = candle_info(opts, &model.config, dtype_name(dtype).into(), device);
    Ok(Box::new(
        CandleTextEngine::new(model, tokenizer, eos, info)?.with_template(text_template(opts)?),
    ))
}

/// Refuses a safetensors checkpoint holding decoder layers past `num_layers` (the config
/// describes another model than the weights).
fn check_checkpoint_layers(dir: &Path, num_layers: usize) -> Result<()> {
    let Ok(files) = safetensor_files(dir) else {
        return Ok(());
    };
    let names: Vec<String> = files
        .iter()
        .flat_map(|f| super::truncation::safetensors_names(f))
        .collect();
    config_check::check_layer_weights(
        names.iter().map(String::as_str),
        num_layers,
        "num_hidden_layers",
    )
    .with_context(|| format!("{}", dir.join("config.json").display()))
}

/// The weights of a checkpoint folder: safetensors (single or sharded), else PyTorch
/// `pytorch_model*.bin` as older releases (the original LLaVA among them) ship them.
pub fn open_weights(dir: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    match safetensor_files(dir) {
        Ok(files) => {
            for f in &files {
                super::truncation::check_safetensors(f)?;
            }
            // SAFETY: the files are memory-mapped read-only; vlmbench does not modify them
            // while running, and a user who rewrites a checkpoint mid-run gets garbage
            // numbers, not UB in practice on Linux (pages keep the old contents or fault).
            Ok(unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device)? })
        }
        Err(no_safetensors) => {
            let bins = pytorch_files(dir);
            if bins.is_empty() {
                let looked_for_none = !dir.join("model.safetensors").is_file()
                    && !dir.join("model.safetensors.index.json").is_file();
                if looked_for_none {
                    bail!(
                        "no weights in {}: looked for model.safetensors, model.safetensors.index.json and pytorch_model.bin",
                        dir.display()
                    );
                }
                return Err(no_safetensors);
            }
            let mut tensors = std::collections::HashMap::new();
            for f in &bins {
                for (name, t) in candle_core::pickle::read_all(f)
                    .with_context(|| format!("cannot read PyTorch weights {}", f.display()))?
                {
                    tensors.insert(name, t);
                }
            }
            Ok(VarBuilder::from_tensors(tensors, dtype, device))
        }
    }
}

/// `pytorch_model.bin`, or the shards its index names.
fn pytorch_files(dir: &Path) -> Vec<PathBuf> {
    let index = dir.join("pytorch_model.bin.index.json");
    if let Some(v) = std::fs::read(&index)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    {
        return shard_files(&v).into_iter().map(|f| dir.join(f)).collect();
    }
    let single = dir.join("pytorch_model.bin");
    if single.is_file() {
        vec![single]
    } else {
        Vec::new()
    }
}

/// EOS ids from generation_config.json, else config.json (or its `text_config`).
fn eos_ids(dir: &Path, config: &Value) -> Vec<u32> {
    let gen: Option<Value> = std::fs::read(dir.join("generation_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let from_gen = gen
        .as_ref()
        .map(|g| ids_of(g.get("eos_token_id")))
        .unwrap_or_default();
    if !from_gen.is_empty() {
        return from_gen;
    }
    let top = ids_of(config.get("eos_token_id"));
    if !top.is_empty() {
        return top;
    }
    ids_of(
        config
            .get("text_config")
            .and_then(|t| t.get("eos_token_id")),
    )
}

/// A LLaVA checkpoint folder (any of the layouts in [`llava`]).
fn open_llava_dir(
    dir: &Path,
    config: &Value,
    arch: &str,
    opts: &EngineOptions,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn Engine>> {
    let mut cfg = LlavaConfig::from_json(config, arch)
        .with_context(|| format!("reading {}", dir.join("config.json").display()))?;
    let tokenizer = folder_tokenizer(
        dir,
        opts,
        "the original LLaVA release ships only tokenizer.model: pass --tokenizer with the tokenizer.json of the matching llava-hf checkpoint, e.g. llava-hf/llava-1.5-7b-hf",
    )?;
    config_check::check_vocab(cfg.text.vocab_size, &tokenizer)?;
    check_checkpoint_layers(dir, cfg.text.num_layers)?;
    let vb = open_weights(dir, dtype, device)?;
    let layout = llava::Layout::detect(&vb).with_context(|| format!("in {}", dir.display()))?;
    let mut preprocessor = image_processor_json(dir)?;
    let tower_vb = if layout == llava::Layout::Original && layout.vision_model(&vb).is_none() {
        let tower_dir = find_vision_tower(dir, cfg.vision_tower_ref.as_deref())?;
        let tower_config: Value = read_json_if_present(&tower_dir.join("config.json"))?
            .with_context(|| {
                format!("no config.json in the vision tower {}", tower_dir.display())
            })?;
        let vision_json = tower_config.get("vision_config").unwrap_or(&tower_config);
        cfg.vision = crate::models::clip::ClipVisionConfig::from_json(vision_json)
            .with_context(|| format!("reading {}", tower_dir.join("config.json").display()))?;
        if preprocessor.is_none() {
            preprocessor = read_json_if_present(&tower_dir.join("preprocessor_config.json"))?;
        }
        Some(open_weights(&tower_dir, dtype, device)?.pp("vision_model"))
    } else {
        None
    };
    let processor = cfg.image_processor(preprocessor.as_ref())?;
    let template = match &opts.prompt_template {
        Some(t) => PromptTemplate::custom(t)?,
        None => PromptTemplate::for_llava(&cfg),
    };
    let eos = eos_ids(dir, config);
    let model = LlavaModel::load(cfg, vb, layout, tower_vb)
        .with_context(|| format!("loading the weights in {}", dir.display()))?;
    let info = llava_info(opts, &model, dtype, device);
    Ok(Box::new(CandleLlavaEngine::new(
        model, processor, tokenizer, eos, template, info,
    )?))
}

/// What a candle engine reports, as a text model whose decoder is `llm` reports it (`dtype`:
/// a dtype or GGUF quantisation name); the vision engines replace the architecture, the
/// parameter count and `vision`.
fn candle_info(
    opts: &EngineOptions,
    llm: &LlamaConfig,
    dtype: String,
    device: &Device,
) -> EngineInfo {
    EngineInfo {
        backend: "candle".into(),
        model: opts.model.clone(),
        architecture: llm.family.name().into(),
        dtype,
        device: device_name(device),
        parameters: Some(llm.parameters()),
        context_length: llm.max_position_embeddings,
        vision: false,
    }
}

fn llava_info(
    opts: &EngineOptions,
    model: &LlavaModel,
    dtype: DType,
    device: &Device,
) -> EngineInfo {
    EngineInfo {
        architecture: match model.config.variant {
            llava::Variant::V15 => "llava-1.5".into(),
            llava::Variant::Next => "llava-1.6".into(),
            llava::Variant::OneVision { .. } => "llava-onevision".into(),
        },
        parameters: Some(model.parameters()),
        vision: true,
        ..candle_info(opts, &model.llm.config, dtype_name(dtype).into(), device)
    }
}

/// `--prompt-template` for a text model (none: the raw prompt).
fn text_template(opts: &EngineOptions) -> Result<Option<PromptTemplate>> {
    opts.prompt_template
        .as_deref()
        .map(PromptTemplate::custom)
        .transpose()
}

fn read_json_if_present(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not valid JSON", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The separate CLIP checkpoint of an original LLaVA release: `mm_vision_tower` as a folder,
/// a folder of that name beside the model, or the hub.
fn find_vision_tower(model_dir: &Path, reference: Option<&str>) -> Result<PathBuf> {
    let reference = reference.context(
        "the checkpoint has no vision tower weights and its config.json names none (mm_vision_tower)",
    )?;
    let direct = PathBuf::from(reference);
    if direct.join("config.json").is_file() {
        return Ok(direct);
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let beside = model_dir.parent().map(|p| p.join(last));
    if let Some(b) = beside.filter(|b| b.join("config.json").is_file()) {
        return Ok(b);
    }
    if !looks_like_hub_id(reference) {
        bail!(
            "vision tower {reference:?} not found (looked for it as a folder and beside the model)"
        );
    }
    let api = hf_hub::api::sync::Api::new().context("cannot set up the Hugging Face hub client")?;
    let repo = api.model(reference.to_string());
    let fail = |e: hf_hub::api::sync::ApiError| {
        anyhow!(
            "cannot fetch the vision tower {reference} from the Hugging Face hub ({e}); without a network, download it elsewhere and put its folder beside the model as {}",
            model_dir.parent().unwrap_or(model_dir).join(last).display()
        )
    };
    let config = repo.get("config.json").map_err(fail)?;
    let _ = repo.get("preprocessor_config.json");
    if repo.get("model.safetensors").is_err() {
        repo.get("pytorch_model.bin").map_err(fail)?;
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn open_gguf(path: &Path, opts: &EngineOptions, device: &Device) -> Result<Box<dyn Engine>> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let content = super::truncation::read_gguf(path, &mut file)?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if Family::from_gguf_arch(&arch).is_none() {
        bail!(
            "{}: GGUF architecture {arch:?} is not supported; supported: llama, qwen2, qwen3, gemma2, gemma3, phi3, gpt2, gptneox",
            path.display()
        );
    }
    // A tokenizer.json given or beside the file wins; else the one the GGUF carries.
    let beside = path.with_file_name("tokenizer.json");
    let tokenizer = match opts.tokenizer.clone().or_else(|| beside.is_file().then_some(beside)) {
        Some(p) => load_tokenizer(&p)?,
        None => crate::models::gguf_tokenizer::from_gguf(&content).with_context(|| {
            format!(
                "{}: no tokenizer.json beside it and its own tokenizer could not be used; pass --tokenizer FILE",
                path.display()
            )
        })?,
    };
    let quant = content
        .tensor_infos
        .get("blk.0.attn_q.weight")
        .or_else(|| content.tensor_infos.get("blk.0.attn_qkv.weight"))
        .map(|t| format!("{:?}", t.ggml_dtype).to_ascii_lowercase())
        .unwrap_or_else(|| "unknown".into());
    let model = LlamaModel::from_gguf(&content, &mut file, device)
        .with_context(|| format!("loading {}", path.display()))?;
    config_check::check_vocab(model.config.vocab_size, &tokenizer)
        .and_then(|()| {
            config_check::check_layer_weights(
                content.tensor_infos.keys().map(String::as_str),
                model.config.num_layers,
                "block_count",
            )
        })
        .with_context(|| format!("{}", path.display()))?;
    let eos = model.config.eos_token_ids.clone();
    let info = candle_info(opts, &model.config, quant, device);
    Ok(Box::new(
        CandleTextEngine::new(model, tokenizer, eos, info)?.with_template(text_template(opts)?),
    ))
}

fn open_random(
    preset: &str,
    opts: &EngineOptions,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn Engine>> {
    let shape = match synth::presets::lookup_with(preset, dtype)? {
        Some(Preset::Vision(shape)) => return open_random_llava(&shape, opts, device, dtype),
        Some(Preset::QwenVl(shape)) => return open_random_qwen_vl(&shape, opts, device, dtype),
        Some(Preset::Text(shape)) => shape,
        Some(Preset::Family(config)) => return open_random_family(&config, opts, device, dtype),
        None => bail!(
            "unknown preset random:{preset}; presets in this build: {} (a text preset NAME@N keeps its first N layers)",
            synth::presets::names()
                .map(|p| format!("random:{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let tokenizer = match &opts.tokenizer {
        Some(p) => load_tokenizer(p)?,
        None => Tokenizer::from_bytes(synth::tokenizer_json(shape.vocab_size, &[])?.as_bytes())
            .map_err(|e| anyhow!("built-in tokenizer: {e}"))?,
    };
    let cfg = LlamaConfig::from_hf_json(&shape.hf_config(dtype))?;
    let weights = shape.random_weights(opts.seed, dtype, device, "")?;
    let vb = VarBuilder::from_tensors(weights, dtype, device);
    let model = LlamaModel::from_hf(cfg, vb, "model", "lm_head")?;
    let info = candle_info(opts, &model.config, dtype_name(dtype).into(), device);
    Ok(Box::new(
        CandleTextEngine::new(model, tokenizer, vec![synth::EOS], info)?
            .with_template(text_template(opts)?),
    ))
}

/// A family preset's config with seeded random weights, through the family's real loader.
fn open_random_family(
    config: &Value,
    opts: &EngineOptions,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn Engine>> {
    let cfg = LlamaConfig::from_hf_json(config)?;
    let tokenizer = match &opts.tokenizer {
        Some(p) => load_tokenizer(p)?,
        None => Tokenizer::from_bytes(synth::tokenizer_json(cfg.vocab_size, &[])?.as_bytes())
            .map_err(|e| anyhow!("built-in tokenizer: {e}"))?,
    };
    let std = config["initializer_range"].as_f64().unwrap_or(0.02);
    let weights = synth::families::random_weights(&cfg, std, opts.seed, dtype, device)?;
    let vb = VarBuilder::from_tensors(weights, dtype, device);
    let model = LlamaModel::from_hf(cfg, vb, "model", "lm_head")?;
    let info = candle_info(opts, &model.config, dtype_name(dtype).into(), device);
    Ok(Box::new(
        CandleTextEngine::new(model, tokenizer, vec![synth::EOS], info)?
            .with_template(text_template(opts)?),
    ))
}

/// The Qwen2-VL generation of an architecture name from [`detect_architecture`].
fn qwen_kind(arch: &str) -> Option<VisionKind> {
    match arch {
        "qwen2_vl" => Some(VisionKind::Qwen2),
        "qwen2_5_vl" => Some(VisionKind::Qwen25),
        _ => None,
    }
}

/// The image processor's settings: preprocessor_config.json, else the `image_processor` part
/// of transformers 5's processor_config.json.
fn image_processor_json(dir: &Path) -> Result<Option<Value>> {
    match read_json_if_present(&dir.join("preprocessor_config.json"))? {
        Some(p) => Ok(Some(p)),
        None => Ok(read_json_if_present(&dir.join("processor_config.json"))?
            .and_then(|p| p.get("image_processor").cloned())),
    }
}

/// The checkpoint's chat template text: chat_template.jinja, chat_template.json or
/// tokenizer_config.json's `chat_template`.
fn chat_template_text(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Ok(Some(
            std::fs::read_to_string(&jinja)
                .with_context(|| format!("cannot read {}", jinja.display()))?,
        ));
    }
    for file in ["chat_template.json", "tokenizer_config.json"] {
        if let Some(v) = read_json_if_present(&dir.join(file))? {
            if let Some(t) = v.get("chat_template").and_then(Value::as_str) {
                return Ok(Some(t.to_string()));
            }
        }
    }
    Ok(None)
}

/// A Qwen2-VL / Qwen2.5-VL checkpoint folder.
fn open_qwen_vl_dir(
    dir: &Path,
    config: &Value,
    kind: VisionKind,
    opts: &EngineOptions,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn Engine>> {
    // The language model's keys name its shape: at the top of config.json as Qwen publishes
    // it, in `text_config` as transformers 5 saves it (every key written out).
    let text_config = config.get("text_config").filter(|t| t.is_object());
    let cfg = match text_config {
        Some(t) => config_check::check_required(t).context("in `text_config`"),
        None => config_check::check_required(config),
    }
    .and_then(|()| qwen2vl::Qwen2VlConfig::from_json(config, kind))
    .with_context(|| format!("reading {}", dir.join("config.json").display()))?;
    let tokenizer = folder_tokenizer(
        dir,
        opts,
        "pass --tokenizer FILE for a tokenizer.json elsewhere",
    )?;
    config_check::check_vocab(cfg.text.vocab_size, &tokenizer)?;
    check_checkpoint_layers(dir, cfg.text.num_layers)?;
    let processor = match image_processor_json(dir)? {
        Some(p) => Qwen2VlImageProcessor::from_json(&p).with_context(|| {
            format!("reading the image processor settings in {}", dir.display())
        })?,
        None => Qwen2VlImageProcessor::default(),
    };
    let template = match &opts.prompt_template {
        Some(t) => PromptTemplate::custom(t)?,
        None => qwen_template(chat_template_text(dir)?.as_deref()),
    };
    let vb = open_weights(dir, dtype, device)?;
    let layout = qwen2vl::Layout::detect(&vb).with_context(|| format!("in {}", dir.display()))?;
    let eos = eos_ids(dir, config);
    let model = qwen2vl::Qwen2VlModel::load(cfg, vb, layout)
        .with_context(|| format!("loading the weights in {}", dir.display()))?;
    let info = qwen_vl_info(opts, &model, dtype, device);
    Ok(Box::new(CandleQwen2VlEngine::new(
        model, processor, tokenizer, eos, template, info,
    )?))
}

fn qwen_vl_info(
    opts: &EngineOptions,
    model: &qwen2vl::Qwen2VlModel,
    dtype: DType,
    device: &Device,
) -> EngineInfo {
    EngineInfo {
        architecture: match model.config.kind() {
            VisionKind::Qwen2 => "qwen2-vl".into(),
            VisionKind::Qwen25 => "qwen2.5-vl".into(),
        },
        parameters: Some(model.parameters()),
        vision: true,
        ..candle_info(opts, &model.llm.config, dtype_name(dtype).into(), device)
    }
}

fn open_random_qwen_vl(
    shape: &synth::qwen2vl::QwenVlShape,
    opts: &EngineOptions,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn Engine>> {
    let tokenizer = match &opts.tokenizer {
        Some(p) => load_tokenizer(p)?,
        None => Tokenizer::from_bytes(synth::qwen2vl::tokenizer(shape)?.as_bytes())
            .map_err(|e| anyhow!("built-in tokenizer: {e}"))?,
    };
    let cfg = qwen2vl::Qwen2VlConfig::from_json(&shape.hf_config(dtype), shape.kind)?;
    let processor = Qwen2VlImageProcessor::from_json(&shape.preprocessor_config())?;
    let template = match &opts.prompt_template {
        Some(t) => PromptTemplate::custom(t)?,
        None => qwen_template(None),
    };
    let weights = shape.random_weights(opts.seed, dtype, device)?;
    let vb = VarBuilder::from_tensors(weights, dtype, device);
    let model = qwen2vl::Qwen2VlModel::load(cfg, vb, qwen2vl::Layout::Published)?;
    let info = qwen_vl_info(opts, &model, dtype, device);
    Ok(Box::new(CandleQwen2VlEngine::new(
        model,
        processor,
        tokenizer,
        vec![synth::EOS],
        template,
        info,
    )?))
}

fn open_random_llava(
    shape: &synth::llava::LlavaShape,
    opts: &EngineOptions,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn Engine>> {
    let tokenizer = match &opts.tokenizer {
        Some(p) => load_tokenizer(p)?,
        None => Tokenizer::from_bytes(synth::llava::tokenizer(shape)?.as_bytes())
            .map_err(|e| anyhow!("built-in tokenizer: {e}"))?,
    };
    let config = shape.hf_config(dtype);
    let cfg = LlavaConfig::from_json(&config, shape.architecture())?;
    let processor = cfg.image_processor(Some(&shape.preprocessor_config()))?;
    let template = match &opts.prompt_template {
        Some(t) => PromptTemplate::custom(t)?,
        None => PromptTemplate::for_llava(&cfg),
    };
    let weights = shape.random_weights(opts.seed, dtype, device)?;
    let vb = VarBuilder::from_tensors(weights, dtype, device);
    let model = LlavaModel::load(cfg, vb, llava::Layout::HfLegacy, None)?;
    let info = llava_info(opts, &model, dtype, device);
    Ok(Box::new(CandleLlavaEngine::new(
        model,
        processor,
        tokenizer,
        vec![shape.eos_id()],
        template,
        info,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn architectures_are_detected_or_listed() {
        assert_eq!(
            detect_architecture(&json!({"architectures": ["LlamaForCausalLM"]})).unwrap(),
            "llama"
        );
        assert_eq!(
            detect_architecture(&json!({"model_type": "llava"})).unwrap(),
            "llava"
        );
        assert_eq!(
            detect_architecture(&json!({"architectures": ["LlavaNextForConditionalGeneration"]}))
                .unwrap(),
            "llava_next"
        );
        let err =
            detect_architecture(&json!({"architectures": ["BertModel"], "model_type": "bert"}))
                .unwrap_err();
        assert!(
            err.to_string().contains("BertModel") && err.to_string().contains("llama"),
            "{err}"
        );
    }

    #[test]
    fn a_folder_without_weights_says_so_in_one_sentence() {
        let dir = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            open_weights(dir.path(), DType::F32, &Device::Cpu)
                .err()
                .unwrap()
        );
        assert_eq!(
            e,
            format!(
                "no weights in {}: looked for model.safetensors, model.safetensors.index.json and pytorch_model.bin",
                dir.path().display()
            )
        );
    }

    #[test]
    fn devices() {
        assert!(matches!(parse_device("cpu").unwrap(), Device::Cpu));
        assert!(parse_device("tpu").is_err());
        if !cfg!(feature = "cuda") {
            let e = parse_device("cuda:1").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
            assert!(matches!(parse_device("auto").unwrap(), Device::Cpu));
        }
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let opts = EngineOptions {
            model: dir.path().display().to_string(),
            dtype: None,
            device: "cpu".into(),
            tokenizer: None,
            seed: 0,
            prompt_template: None,
            kv_cache_dtype: None,
        };
        let e = open_engine(&opts).err().unwrap().to_string();
        assert!(e.contains("config.json"), "{e}");
        synth::presets::write_model("tiny-llama", dir.path(), DType::F32, 0).unwrap();
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let e = format!("{:#}", open_engine(&opts).err().unwrap());
        assert!(e.contains("model.safetensors"), "{e}");
    }

    #[test]
    fn written_preset_loads_and_matches_the_in_memory_one() {
        use crate::engine::GenerationRequest;
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        synth::presets::write_model("tiny-llama", dir.path(), DType::F32, 5).unwrap();
        let cancel = AtomicBool::new(false);
        let req = GenerationRequest {
            prompt: "Hello world",
            images: &[],
            max_new_tokens: 6,
            ignore_eos: true,
            cancel: &cancel,
        };
        let mut from_disk = open_engine(&EngineOptions {
            model: dir.path().display().to_string(),
            dtype: None,
            device: "cpu".into(),
            tokenizer: None,
            seed: 0,
            prompt_template: None,
            kv_cache_dtype: None,
        })
        .unwrap();
        let mut in_memory = open_engine(&EngineOptions {
            model: "random:tiny-llama".into(),
            dtype: None,
            device: "cpu".into(),
            tokenizer: None,
            seed: 5,
            prompt_template: None,
            kv_cache_dtype: None,
        })
        .unwrap();
        let a = from_disk.generate(&req).unwrap();
        let b = in_memory.generate(&req).unwrap();
        assert_eq!(a.output_token_ids, b.output_token_ids);
        assert_eq!(a.output_token_ids.len(), 6);
        assert_eq!(a.token_arrivals.len(), 6);
        assert_eq!(from_disk.info().architecture, "llama");
    }

    /// Every tiny family preset written by `synth-model` loads through the folder path and
    /// generates what the in-memory `random:` preset of the same seed generates.
    #[test]
    fn written_family_presets_match_the_in_memory_ones() {
        use crate::engine::GenerationRequest;
        use std::sync::atomic::AtomicBool;
        let cancel = AtomicBool::new(false);
        let req = GenerationRequest {
            prompt: "Hello world, 12 times",
            images: &[],
            max_new_tokens: 5,
            ignore_eos: true,
            cancel: &cancel,
        };
        let open = |model: String, seed: u64| {
            open_engine(&EngineOptions {
                model,
                dtype: None,
                device: "cpu".into(),
                tokenizer: None,
                seed,
                prompt_template: None,
                kv_cache_dtype: None,
            })
            .unwrap()
        };
        for (preset, arch) in [
            ("tiny-mistral", "mistral"),
            ("tiny-qwen2", "qwen2"),
            ("tiny-qwen3", "qwen3"),
            ("tiny-gemma2", "gemma2"),
            ("tiny-gemma3", "gemma3_text"),
            ("tiny-phi3", "phi3"),
            ("tiny-gpt2", "gpt2"),
            ("tiny-pythia", "gpt_neox"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            synth::presets::write_model(preset, dir.path(), DType::F32, 4).unwrap();
            let mut disk = open(dir.path().display().to_string(), 0);
            let mut memory = open(format!("random:{preset}"), 4);
            assert_eq!(disk.info().architecture, arch, "{preset}");
            let (a, b) = (disk.generate(&req).unwrap(), memory.generate(&req).unwrap());
            assert_eq!(a.output_token_ids, b.output_token_ids, "{preset}");
            assert_eq!(a.output_token_ids.len(), 5, "{preset}");
        }
    }

    /// A Qwen2-VL folder gets the checks every other loader makes: the keys that fix the
    /// language model's shape (at the top, or in `text_config`), the vision tower's width, a
    /// vocabulary as large as the tokenizer's and weights the config accounts for; each error
    /// names the file and the key.
    #[test]
    fn a_qwen_vl_config_missing_a_shape_key_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        synth::presets::write_model("tiny-qwen2.5-vl", dir.path(), DType::F32, 2).unwrap();
        let path = dir.path().join("config.json");
        let original: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let opts = EngineOptions {
            model: dir.path().display().to_string(),
            dtype: Some(DType::F32),
            device: "cpu".into(),
            tokenizer: None,
            seed: 0,
            prompt_template: None,
            kv_cache_dtype: None,
        };
        let open_with = |config: &Value| {
            std::fs::write(&path, config.to_string()).unwrap();
            open_engine(&opts).map(|e| e.info().clone())
        };
        let refused = |config: &Value| format!("{:#}", open_with(config).err().unwrap());
        let info = open_with(&original).unwrap();
        assert_eq!(info.architecture, "qwen2.5-vl");

        let mut c = original.clone();
        c.as_object_mut().unwrap().remove("num_hidden_layers");
        let e = refused(&c);
        assert!(
            e.contains("config.json") && e.contains("missing `num_hidden_layers`"),
            "{e}"
        );

        let mut c = original.clone();
        c["vision_config"]
            .as_object_mut()
            .unwrap()
            .remove("hidden_size");
        let e = refused(&c);
        assert!(
            e.contains(&path.display().to_string())
                && e.contains("missing `vision_config.hidden_size`"),
            "{e}"
        );

        // transformers 5's layout: the language model's keys in `text_config`.
        let mut c = original.clone();
        let mut text = original.clone();
        text.as_object_mut().unwrap().remove("vision_config");
        text.as_object_mut().unwrap().remove("intermediate_size");
        c["text_config"] = text;
        let e = refused(&c);
        assert!(
            e.contains("`text_config`") && e.contains("missing `intermediate_size`"),
            "{e}"
        );

        let mut c = original.clone();
        c["vocab_size"] = 100.into();
        let e = refused(&c);
        assert!(e.contains("(`vocab_size`) is 100"), "{e}");

        let mut c = original.clone();
        c["num_hidden_layers"] = 1.into();
        let e = refused(&c);
        assert!(
            e.contains("weights for layer 1") && e.contains("`num_hidden_layers` is 1"),
            "{e}"
        );
    }

    /// The original LLaVA release's layout (`model.*`, `model.mm_projector.{0,2}`, the CLIP
    /// tower as a separate checkpoint named by `mm_vision_tower`, no `<image>` token id)
    /// computes what the llava-hf layout of the same weights computes.
    #[test]
    fn original_llava_layout_matches_llava_hf() {
        use crate::engine::GenerationRequest;
        use std::collections::HashMap;
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let hf = dir.path().join("hf");
        synth::presets::write_model("tiny-llava", &hf, DType::F32, 3).unwrap();
        let shape = synth::llava::llava_preset("tiny-llava").unwrap();
        let weights = shape.random_weights(3, DType::F32, &Device::Cpu).unwrap();
        let (mut main, mut tower) = (HashMap::new(), HashMap::new());
        for (name, t) in weights {
            if let Some(rest) = name.strip_prefix("vision_tower.") {
                tower.insert(rest.to_string(), t);
                continue;
            }
            let renamed = name
                .replace("language_model.model.", "model.")
                .replace("language_model.lm_head.", "lm_head.")
                .replace("multi_modal_projector.linear_1.", "model.mm_projector.0.")
                .replace("multi_modal_projector.linear_2.", "model.mm_projector.2.");
            main.insert(renamed, t);
        }
        let clip_dir = dir.path().join("clip-tiny-336");
        std::fs::create_dir_all(&clip_dir).unwrap();
        synth::write_safetensors(&clip_dir, &tower).unwrap();
        let hf_config = shape.hf_config(DType::F32);
        let clip_config = serde_json::json!({"architectures": ["CLIPModel"], "vision_config": hf_config["vision_config"]});
        synth::write(&clip_dir, "config.json", clip_config.to_string().as_bytes()).unwrap();
        let original = dir.path().join("llava-v1.5-tiny");
        std::fs::create_dir_all(&original).unwrap();
        synth::write_safetensors(&original, &main).unwrap();
        let mut config = hf_config["text_config"].clone();
        config["architectures"] = serde_json::json!(["LlavaLlamaForCausalLM"]);
        config["model_type"] = "llava".into();
        config["mm_vision_tower"] = "openai/clip-tiny-336".into();
        config["mm_projector_type"] = "mlp2x_gelu".into();
        config["mm_vision_select_layer"] = (-2).into();
        config["mm_vision_select_feature"] = "patch".into();
        config["image_aspect_ratio"] = "pad".into();
        synth::write(&original, "config.json", config.to_string().as_bytes()).unwrap();
        std::fs::copy(hf.join("tokenizer.json"), original.join("tokenizer.json")).unwrap();
        // A square image: original LLaVA's padding to a square changes nothing.
        let image = dir.path().join("square.png");
        image::RgbImage::from_fn(400, 400, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        })
        .save(&image)
        .unwrap();
        let open = |path: &std::path::Path| {
            open_engine(&EngineOptions {
                model: path.display().to_string(),
                dtype: Some(DType::F32),
                device: "cpu".into(),
                tokenizer: None,
                seed: 0,
                prompt_template: Some("USER: <image>\\n{prompt} ASSISTANT:".into()),
                kv_cache_dtype: None,
            })
            .unwrap()
        };
        let cancel = AtomicBool::new(false);
        let req = GenerationRequest {
            prompt: "What is in the picture?",
            images: std::slice::from_ref(&image),
            max_new_tokens: 8,
            ignore_eos: true,
            cancel: &cancel,
        };
        let (mut a, mut b) = (open(&hf), open(&original));
        assert_eq!(b.info().architecture, "llava-1.5");
        let (ga, gb) = (a.generate(&req).unwrap(), b.generate(&req).unwrap());
        assert_eq!(gb.image_tokens, 576);
        assert_eq!((ga.images, gb.images), (1, 1));
        assert_eq!(ga.input_tokens, gb.input_tokens);
        assert_eq!(ga.output_token_ids, gb.output_token_ids);
        // LLaVA 1.5 takes one image per sample: two fail the sample, not the run.
        let two = [image.clone(), image.clone()];
        match a.generate(&GenerationRequest {
            images: &two,
            ..req.clone()
        }) {
            Err(crate::engine::EngineError::Sample(m)) => {
                assert!(m.contains("one image per sample; this sample has 2"), "{m}")
            }
            other => panic!(
                "two images must fail the sample: {:?}",
                other.map(|g| g.images)
            ),
        }
        a.reserve(&[GenerationRequest {
            images: &two,
            ..req.clone()
        }])
        .unwrap();
    }
}
