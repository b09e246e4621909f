//! vlmbench computes what Hugging Face transformers computes.
//!
//! `tests/fixtures/parity/` holds tiny checkpoints written by transformers' own
//! `save_pretrained` (Llama, LLaVA 1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, and one per text
//! family and config variant), with test images and transformers' results (`expected.json`):
//! prompt token ids, image token count, a digest of the processor's pixel values and the greedy
//! tokens (the text families' from a plain argmax loop over the KV cache, so end-of-sequence
//! tokens are kept, which `--ignore-eos` reproduces; the Qwen2-VL family's from an argmax loop
//! over full forward passes, one case per image and one with two images in one prompt). They were made by
//! `scripts/parity/make_fixtures.py` (versions in `VERSIONS` and each `expected.json`); `gguf/`
//! holds llama.cpp converter output of some of them (`scripts/parity/make_gguf.py`). The real
//! binary runs each and must produce the same tokens, token for token.

mod common;

use common::{prepare_jsonl, read_json, vlmbench};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use vlmbench::models::llava::preprocess::ImageProcessor;
use vlmbench::models::qwen2vl::preprocess::Qwen2VlImageProcessor;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// Runs the checkpoint on its expected prompt (and image) and returns the report's sample.
fn run_fixture(name: &str) -> (Value, Value) {
    let model = fixture(name);
    let expected = read_json(&model.join("expected.json"));
    (run_model(&model, &expected), expected)
}

/// Runs `model` (a folder or a .gguf file) on `expected`'s prompt; the report's sample.
fn run_model(model: &Path, expected: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut line = serde_json::json!({"text": expected["prompt"]});
    if let Some(img) = expected["image"].as_str() {
        line["image"] = model.join(img).display().to_string().into();
    }
    let model = model.to_path_buf();
    let data = prepare_jsonl(dir.path(), &[line]);
    let report = dir.path().join("r.json");
    let max_new = ids(&expected["output_ids"]).len().to_string();
    vlmbench()
        .args([
            "run", "--quiet", "--warmup", "0", "--device", "cpu", "--dtype", "f32",
        ])
        .args(["--max-new-tokens", &max_new, "--ignore-eos"])
        .arg("--model-path")
        .arg(&model)
        .arg("--data-file")
        .arg(&data)
        .arg("--report-file")
        .arg(&report)
        .assert()
        .success();
    read_json(&report)["samples"][0].clone()
}

/// The fixture's further prompts (`expected.json` `more`: a very short one, one with accents,
/// digits, tabs and a newline) run through `model` give transformers' tokens too.
fn assert_more_prompts(name: &str, model: &Path, expected: &Value) {
    for (k, case) in expected["more"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let sample = run_model(model, case);
        assert_eq!(sample["ok"], true, "{name} prompt {k}: {sample}");
        assert_eq!(
            sample["input_tokens"].as_u64().unwrap() as usize,
            case["input_ids"].as_array().unwrap().len(),
            "{name} ({}) prompt {:?}: prompt length differs",
            model.display(),
            case["prompt"]
        );
        assert_eq!(
            ids(&sample["output_token_ids"]),
            ids(&case["output_ids"]),
            "{name} ({}) prompt {:?}: greedy tokens differ from transformers'",
            model.display(),
            case["prompt"]
        );
    }
}

fn assert_same_tokens(name: &str) {
    let (sample, expected) = run_fixture(name);
    assert_more_prompts(name, &fixture(name), &expected);
    assert_eq!(sample["ok"], true, "{name}: {sample}");
    assert_eq!(
        ids(&sample["output_token_ids"]),
        ids(&expected["output_ids"]),
        "{name}: greedy tokens differ from transformers'"
    );
    assert_eq!(
        sample["input_tokens"].as_u64().unwrap() as usize,
        expected["input_ids"].as_array().unwrap().len(),
        "{name}: prompt length (image tokens included) differs"
    );
    if let Some(n) = expected["image_tokens"].as_u64() {
        assert_eq!(sample["image_tokens"].as_u64(), Some(n), "{name}");
    }
}

#[test]
fn llama_greedy_tokens_equal_transformers() {
    assert_same_tokens("llama");
}

#[test]
fn llava_1_5_greedy_tokens_equal_transformers() {
    assert_same_tokens("llava");
}

#[test]
fn llava_next_greedy_tokens_equal_transformers() {
    assert_same_tokens("llava_next");
}

/// The pixel values are bit-identical to transformers' Pillow-backed processors: resize,
/// crop, LLaVA-NeXT's grid, padding and normalisation all agree.
#[test]
fn pixel_values_equal_transformers_bit_for_bit() {
    for name in ["llava", "llava_next"] {
        let dir = fixture(name);
        let expected = read_json(&dir.join("expected.json"));
        let processor_json =
            read_json(&dir.join("processor_config.json"))["image_processor"].clone();
        let processor = ImageProcessor::from_json(&processor_json, 336).unwrap();
        let image = processor
            .prepare_file(&dir.join(expected["image"].as_str().unwrap()))
            .unwrap();
        let shape = ids(&expected["pixel_values"]["shape"]);
        let tiles = shape[shape.len() - 4..][0] as usize;
        assert_eq!(image.tiles, tiles, "{name}");
        let bytes: Vec<u8> = image.pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sum: f64 = image.pixels.iter().map(|&v| f64::from(v)).sum();
        assert!(
            (sum - expected["pixel_values"]["sum"].as_f64().unwrap()).abs() < 1e-3,
            "{name}: pixel sum {sum}"
        );
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            expected["pixel_values"]["sha256"].as_str().unwrap(),
            "{name}: pixel values differ from transformers'"
        );
    }
}

/// Text families and config variants: each fixture is a checkpoint transformers wrote, with
/// the greedy tokens of a plain argmax loop over its KV cache (`scripts/parity/make_fixtures.py`).
macro_rules! text_parity {
    ($($test:ident => $name:literal,)*) => {$(
        #[test]
        fn $test() {
            assert_same_tokens($name);
        }
    )*};
}

text_parity! {
    llama_5x_layout_bias_head_dim_equal_transformers => "llama_v5_bias_headdim",
    llama_4x_layout_linear_rope_equal_transformers => "llama_v4_linear",
    llama_dynamic_rope_past_the_context_equal_transformers => "llama_dynamic",
    llama_yarn_rope_equal_transformers => "llama_yarn",
    llama3_rope_tied_mqa_equal_transformers => "llama3_tied_mqa",
    mistral_sliding_window_equal_transformers => "mistral_window",
    qwen2_equal_transformers => "qwen2",
    qwen2_sliding_window_layers_equal_transformers => "qwen2_window",
    qwen3_equal_transformers => "qwen3",
    gemma2_equal_transformers => "gemma2",
    gemma2_head_dim_scale_equal_transformers => "gemma2_gguf",
    gemma3_equal_transformers => "gemma3",
    phi3_longrope_equal_transformers => "phi3_longrope",
    gpt2_equal_transformers => "gpt2",
    pythia_equal_transformers => "pythia",
}

/// The GGUF llama.cpp's converter writes of a fixture (`scripts/parity/make_gguf.py`: f32,
/// tokenizer in the metadata, no tokenizer.json beside it) gives transformers' tokens too: the
/// same weights read under GGUF names, and the tokenizer rebuilt from the GGUF reproduces the
/// prompt's ids.
fn assert_gguf_same_tokens(name: &str) {
    let expected = read_json(&fixture(name).join("expected.json"));
    let gguf = fixture("gguf").join(format!("{name}.gguf"));
    let sample = run_model(&gguf, &expected);
    assert_more_prompts(name, &gguf, &expected);
    assert_eq!(sample["ok"], true, "{name}: {sample}");
    assert_eq!(
        sample["input_tokens"].as_u64().unwrap() as usize,
        expected["input_ids"].as_array().unwrap().len(),
        "{name}.gguf: prompt length differs (tokenizer rebuilt from GGUF metadata)"
    );
    assert_eq!(
        ids(&sample["output_token_ids"]),
        ids(&expected["output_ids"]),
        "{name}.gguf: greedy tokens differ from the safetensors checkpoint's (transformers')"
    );
}

macro_rules! gguf_parity {
    ($($test:ident => $name:literal,)*) => {$(
        #[test]
        fn $test() {
            assert_gguf_same_tokens($name);
        }
    )*};
}

gguf_parity! {
    qwen2_gguf_equals_safetensors => "qwen2",
    qwen3_gguf_equals_safetensors => "qwen3",
    // llama.cpp scales Gemma 2's scores by 1/sqrt(head_dim), so its GGUF fixture has
    // query_pre_attn_scalar = head_dim (as the released 2B and 9B do).
    gemma2_gguf_equals_safetensors => "gemma2_gguf",
    gemma3_gguf_equals_safetensors => "gemma3",
    phi3_longrope_gguf_equals_safetensors => "phi3_longrope",
    gpt2_gguf_equals_safetensors => "gpt2",
    pythia_gguf_equals_safetensors => "pythia",
}

/// Runs every case of a several-image fixture (`expected.json` `cases`) in one run; returns the
/// report's samples in data-file order, and the cases.
fn run_cases(name: &str) -> (Vec<Value>, Vec<Value>) {
    let model = fixture(name);
    let expected = read_json(&model.join("expected.json"));
    let cases = expected["cases"].as_array().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<Value> = cases
        .iter()
        .map(|c| {
            let path = |name: &str| model.join(name).display().to_string();
            let mut line = serde_json::json!({"text": c["prompt"]});
            match c["images"].as_array() {
                // Several images in one prompt, in order.
                Some(names) => {
                    line["images"] = names.iter().map(|n| path(n.as_str().unwrap())).collect()
                }
                // One image, or none: a text-only turn of a vision model.
                None => {
                    if let Some(name) = c["image"].as_str() {
                        line["image"] = path(name).into();
                    }
                }
            }
            line
        })
        .collect();
    let data = prepare_jsonl(dir.path(), &lines);
    let max_new = ids(&cases[0]["output_ids"]).len().to_string();
    let report = dir.path().join("r.json");
    // The reference is an argmax loop of fixed length: it runs on past end-of-sequence tokens.
    vlmbench()
        .args([
            "run",
            "--quiet",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--dtype",
            "f32",
            "--ignore-eos",
        ])
        .args(["--max-new-tokens", &max_new])
        .arg("--model-path")
        .arg(&model)
        .arg("--data-file")
        .arg(&data)
        .arg("--report-file")
        .arg(&report)
        .assert()
        .success();
    let prepared = read_json(&data);
    let mut samples = read_json(&report)["samples"].as_array().unwrap().clone();
    // Data-file order (the report lists samples as they ran).
    let order: Vec<i64> = prepared["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["index"].as_i64().unwrap())
        .collect();
    samples.sort_by_key(|s| {
        let i = s["index"].as_i64().unwrap();
        order.iter().position(|&o| o == i).unwrap()
    });
    assert_eq!(samples.len(), cases.len(), "{name}");
    (samples, cases)
}

/// A case's image names, in order: its `images`, its one `image`, or none.
fn case_images(case: &Value) -> Vec<&str> {
    match case["images"].as_array() {
        Some(names) => names.iter().map(|n| n.as_str().unwrap()).collect(),
        None => case["image"].as_str().into_iter().collect(),
    }
}

fn assert_cases_equal(name: &str) {
    let (samples, cases) = run_cases(name);
    assert!(
        cases.iter().any(|c| case_images(c).len() > 1),
        "{name}: expected.json has no case with several images"
    );
    for (sample, case) in samples.iter().zip(&cases) {
        let names = case_images(case);
        let image = names.join(" + ");
        assert_eq!(sample["ok"], true, "{name} {image}: {sample}");
        assert_eq!(
            sample["image_tokens"].as_u64(),
            case["image_tokens"].as_u64(),
            "{name} {image}: image token count (all images together)"
        );
        assert_eq!(
            sample["images"].as_u64(),
            Some(names.len() as u64),
            "{name} {image}: number of images"
        );
        assert_eq!(
            sample["input_tokens"].as_u64().unwrap() as usize,
            case["input_ids"].as_array().unwrap().len(),
            "{name} {image}: prompt length (image tokens included) differs"
        );
        assert_eq!(
            ids(&sample["output_token_ids"]),
            ids(&case["output_ids"]),
            "{name} {image}: greedy tokens differ from transformers'"
        );
    }
}

#[test]
fn qwen2_5_vl_greedy_tokens_equal_transformers() {
    assert_cases_equal("qwen2_5_vl");
}

#[test]
fn qwen2_vl_greedy_tokens_equal_transformers() {
    assert_cases_equal("qwen2_vl");
}

/// LLaVA-OneVision: SigLIP tower, Qwen2 language model, a grid shrunk to `anyres_max_9`,
/// images resized up and down, two images in one prompt (each untiled), and a text-only turn
/// (the chat template's newline before the text stays).
#[test]
fn llava_onevision_greedy_tokens_equal_transformers() {
    assert_cases_equal("llava_onevision");
}

/// LLaVA-OneVision's pixel values are bit-identical to transformers' Pillow-backed processor:
/// the whole image, the grid's tiles (a 5 × 6 grid for 640 × 480) and their padding.
#[test]
fn llava_onevision_pixels_equal_transformers_bit_for_bit() {
    let dir = fixture("llava_onevision");
    let expected = read_json(&dir.join("expected.json"));
    let settings = read_json(&dir.join("processor_config.json"))["image_processor"].clone();
    let processor = ImageProcessor::from_json(&settings, 60).unwrap();
    let mut checked = 0;
    for case in expected["cases"].as_array().unwrap() {
        let Some(image_name) = case["image"].as_str() else {
            continue;
        };
        let image = processor.prepare_file(&dir.join(image_name)).unwrap();
        let shape = ids(&case["pixel_values"]["shape"]);
        assert_eq!(image.tiles as u64, shape[1], "{image_name}");
        let bytes: Vec<u8> = image.pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            case["pixel_values"]["sha256"].as_str().unwrap(),
            "{image_name}: pixel values differ from transformers'"
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
    // Several images in one prompt: each padded to a square in the mean colour, one tile.
    let case = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["images"].is_array())
        .unwrap();
    let mut bytes = Vec::new();
    for name in case["images"].as_array().unwrap() {
        let image = processor
            .prepare_file_untiled(&dir.join(name.as_str().unwrap()))
            .unwrap();
        assert_eq!(image.tiles, 1);
        bytes.extend(image.pixels.iter().flat_map(|v| v.to_le_bytes()));
    }
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        case["pixel_values"]["sha256"].as_str().unwrap(),
        "two images: pixel values differ from transformers'"
    );
}

/// Qwen2-VL's patches are bit-identical to transformers' Pillow-backed processor for images
/// resized down, up and only rounded: smart_resize, resampling, normalisation, the temporal
/// repeat and the patch order. For a case with several images, transformers' pixel values are
/// every image's patches one after the other, and its grids one row per image.
#[test]
fn qwen2_vl_patches_equal_transformers_bit_for_bit() {
    for name in ["qwen2_5_vl", "qwen2_vl"] {
        let dir = fixture(name);
        let expected = read_json(&dir.join("expected.json"));
        let settings = read_json(&dir.join("processor_config.json"))["image_processor"].clone();
        let processor = Qwen2VlImageProcessor::from_json(&settings).unwrap();
        for case in expected["cases"].as_array().unwrap() {
            let names = case_images(case);
            let image_name = names.join(" + ");
            let grids: Vec<Vec<u64>> = match case["images"].as_array() {
                Some(_) => case["image_grid_thw"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(ids)
                    .collect(),
                None => vec![ids(&case["image_grid_thw"])],
            };
            assert_eq!(grids.len(), names.len(), "{name} {image_name}");
            let (mut bytes, mut rows) = (Vec::new(), 0u64);
            for (image_name, grid) in names.iter().zip(&grids) {
                let image = processor.prepare_file(&dir.join(image_name)).unwrap();
                let (t, h, w) = image.grid_thw;
                assert_eq!(
                    &vec![t as u64, h as u64, w as u64],
                    grid,
                    "{name} {image_name}"
                );
                assert_eq!(
                    ids(&case["pixel_values"]["shape"])[1],
                    image.patch_len as u64,
                    "{name} {image_name}"
                );
                rows += (t * h * w) as u64;
                bytes.extend(image.patches.iter().flat_map(|v| v.to_le_bytes()));
            }
            assert_eq!(
                ids(&case["pixel_values"]["shape"])[0],
                rows,
                "{name} {image_name}"
            );
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                case["pixel_values"]["sha256"].as_str().unwrap(),
                "{name} {image_name}: pixel values differ from transformers'"
            );
        }
    }
}
