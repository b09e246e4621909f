//! Re-quantises a Llama GGUF (f32 or f16) to the Q4_K_M mix llama.cpp's quantizer writes,
//! with candle's K-quant quantizers: Q4_K everywhere, Q6_K for `output.weight` and, in the
//! layers llama.cpp gives more bits (the first and last eighth and every third in between),
//! for `attn_v` and `ffn_down`; norms stay f32. Rows whose length is not a multiple of 256
//! fall back to Q8_0.
//!
//! Why: the speed benchmark needs a Q4_K_M file of its reference model where llama.cpp's own
//! quantizer is not installed. (llama.cpp quantises with importance-weighted searches, so the
//! values differ slightly; the layout, sizes and kernels exercised are the same.)
//!
//! `cargo run --release --example quantize_gguf -- model-f16.gguf model-q4_k_m.gguf`

use std::fs::File;
use std::io::BufReader;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

/// llama.cpp's `use_more_bits`: the layers of a Q4_K_M file that get Q6_K `attn_v`/`ffn_down`.
fn more_bits(layer: usize, layers: usize) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

fn target_type(name: &str, layers: usize, cols: usize) -> GgmlDType {
    if name.ends_with("norm.weight") {
        return GgmlDType::F32;
    }
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|l| l.parse::<usize>().ok());
    let more_bits_tensor = (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
        && layer.is_some_and(|l| more_bits(l, layers));
    let wanted = if name == "output.weight" || more_bits_tensor {
        GgmlDType::Q6K
    } else {
        GgmlDType::Q4K
    };
    if cols.is_multiple_of(256) {
        wanted
    } else {
        GgmlDType::Q8_0
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: quantize_gguf IN.gguf OUT.gguf");
    };
    let mut reader = BufReader::new(File::open(input).with_context(|| format!("opening {input}"))?);
    let content =
        gguf_file::Content::read(&mut reader).with_context(|| format!("reading {input}"))?;
    let layers = content
        .metadata
        .get("llama.block_count")
        .and_then(|v| v.to_u32().ok())
        .context("llama.block_count missing: not a Llama GGUF")? as usize;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for name in names {
        let q = content.tensor(&mut reader, name, &Device::Cpu)?;
        let dims = q.shape().dims().to_vec();
        let cols = *dims.last().unwrap_or(&0);
        let dtype = if dims.len() == 2 {
            target_type(name, layers, cols)
        } else {
            GgmlDType::F32
        };
        let wide = q.dequantize(&Device::Cpu)?;
        tensors.push((name.clone(), QTensor::quantize(&wide, dtype)?));
    }
    let mut metadata = content.metadata.clone();
    // llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M.
    metadata.insert("general.file_type".into(), gguf_file::Value::U32(15));
    let md: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = File::create(output).with_context(|| format!("creating {output}"))?;
    gguf_file::write(&mut out, &md, &ts)?;
    let q4 = tensors
        .iter()
        .filter(|(_, t)| t.dtype() == GgmlDType::Q4K)
        .count();
    let q6 = tensors
        .iter()
        .filter(|(_, t)| t.dtype() == GgmlDType::Q6K)
        .count();
    println!(
        "wrote {output}: {q4} Q4_K and {q6} Q6_K tensors of {}",
        tensors.len()
    );
    Ok(())
}
