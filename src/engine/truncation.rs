//! Checks that a weights file holds all the bytes its own header describes, so a file cut
//! short (an interrupted download or copy) is called truncated, by name, instead of failing
//! later with a parser's out-of-bounds message or, memory-mapped, a bus error.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;

fn truncated(path: &Path, needed: u64, have: u64) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is truncated: its header describes {needed} bytes but the file holds {have} (an interrupted download or copy?); fetch it again",
        path.display()
    )
}

/// A safetensors file: an 8-byte header length, the JSON header, then the tensors' bytes at
/// the `data_offsets` the header gives.
pub fn check_safetensors(path: &Path) -> Result<()> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let have = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        return Err(truncated(path, 8, have));
    }
    let header_len = u64::from_le_bytes(len);
    if 8 + header_len > have {
        return Err(truncated(path, 8 + header_len, have));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let Ok(header) = serde_json::from_slice::<serde_json::Value>(&header) else {
        // Not ours to judge: the safetensors reader names what is wrong with the header.
        return Ok(());
    };
    let end = header
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let needed = 8 + header_len + end;
    if needed > have {
        return Err(truncated(path, needed, have));
    }
    Ok(())
}

/// The tensor names a safetensors file's header lists (empty where the header cannot be read:
/// the loader then says why).
pub fn safetensors_names(path: &Path) -> Vec<String> {
    let read = || -> Option<Vec<String>> {
        let mut f = std::fs::File::open(path).ok()?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).ok()?;
        let n = u64::from_le_bytes(len);
        if n > f.metadata().ok()?.len() {
            return None;
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&header).ok()?;
        Some(
            v.as_object()?
                .keys()
                .filter(|k| *k != "__metadata__")
                .cloned()
                .collect(),
        )
    };
    read().unwrap_or_default()
}

/// A GGUF file, once its header is read: every tensor's bytes must lie inside the file.
pub fn check_gguf(path: &Path, content: &gguf_file::Content) -> Result<()> {
    let have = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let needed = content
        .tensor_infos
        .values()
        .map(|t| {
            let blocks = t.shape.elem_count() / t.ggml_dtype.block_size();
            content.tensor_data_offset + t.offset + (blocks * t.ggml_dtype.type_size()) as u64
        })
        .max()
        .unwrap_or(0);
    if needed > have {
        return Err(truncated(path, needed, have));
    }
    Ok(())
}

/// Reads a GGUF header; a file that ends inside it is called truncated.
pub fn read_gguf(path: &Path, file: &mut std::fs::File) -> Result<gguf_file::Content> {
    match gguf_file::Content::read(file) {
        Ok(c) => {
            check_gguf(path, &c)?;
            Ok(c)
        }
        Err(e) => {
            let eof = matches!(&e, candle_core::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
                || e.to_string().contains("failed to fill whole buffer");
            if eof {
                let have = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                bail!(
                    "{} is truncated: the file ({have} bytes) ends inside its GGUF header (an interrupted download or copy?); fetch it again",
                    path.display()
                );
            }
            Err(anyhow::Error::from(e)
                .context(format!("{} is not a valid GGUF file", path.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    #[test]
    fn cut_safetensors_files_are_called_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        let t = Tensor::arange(0f32, 64., &Device::Cpu).unwrap();
        candle_core::safetensors::save(&std::collections::HashMap::from([("w", t)]), &p).unwrap();
        check_safetensors(&p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        for cut in [4, 20, bytes.len() - 1] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let e = check_safetensors(&p).unwrap_err().to_string();
            assert!(e.contains("is truncated"), "cut at {cut}: {e}");
        }
    }

    #[test]
    fn cut_gguf_files_are_called_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let t = Tensor::arange(0f32, 256., &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
        let name = gguf_file::Value::String("x".to_string());
        let mut f = std::fs::File::create(&p).unwrap();
        gguf_file::write(&mut f, &[("general.name", &name)], &[("w", &q)]).unwrap();
        drop(f);
        let bytes = std::fs::read(&p).unwrap();
        read_gguf(&p, &mut std::fs::File::open(&p).unwrap()).unwrap();
        for cut in [10, bytes.len() - 4] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let e = read_gguf(&p, &mut std::fs::File::open(&p).unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains("is truncated"), "cut at {cut}: {e}");
        }
    }
}
