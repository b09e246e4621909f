//! The optional outputs of a serving run beside its report: vLLM-layout results
//! (`--save-vllm-result`) and the Chrome/Perfetto timeline (`--trace`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cli::LoadControlArgs;
use crate::fsutil::write_atomic;
use crate::report::serving::ServingReport;
use crate::report::{timeline, vllm_export};

/// `PATH` for one level, `PATH` with `-k` before the extension for level k of several.
fn per_level(path: &Path, k: usize, levels: usize) -> PathBuf {
    if levels <= 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!("{stem}-{}{ext}", k + 1))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(v).context("cannot serialise")?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes what `a` asks for beside the report.
pub fn write_extras(report: &ServingReport, a: &LoadControlArgs) -> Result<()> {
    if let Some(p) = &a.save_vllm_result {
        for (k, level) in report.levels.iter().enumerate() {
            let path = per_level(p, k, report.levels.len());
            write_json(&path, &vllm_export::vllm_result(report, level))?;
            eprintln!("vLLM-layout result: {}", path.display());
        }
    }
    if let Some(p) = &a.trace {
        write_json(p, &timeline::chrome_trace(report))?;
        eprintln!("timeline (Chrome/Perfetto trace): {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_file_names() {
        let p = Path::new("out/res.json");
        assert_eq!(per_level(p, 0, 1), PathBuf::from("out/res.json"));
        assert_eq!(per_level(p, 1, 3), PathBuf::from("out/res-2.json"));
    }
}
