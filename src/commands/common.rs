//! What the `run` command's two sides (in-process and serving) share: exit codes, the Ctrl-C
//! handler, the data set to run, the progress bar, report paths, the clock and the dtype flag.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::DtypeArg;
use crate::dataset::{synthetic, LoadedDataset};
use crate::fsutil::sanitize_file_stem;

/// Exit code when the run finished but some samples failed (their errors are in the report).
pub const EXIT_SOME_FAILED: u8 = 3;
/// Exit code after Ctrl-C, SIGTERM or SIGHUP (the report of what finished is still written).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code for arguments that cannot be run (clap's own errors exit with it too).
pub const EXIT_USAGE: u8 = 2;

/// An argument error: `main` exits with [`EXIT_USAGE`] for it, like clap does for the ones it
/// finds itself.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Fails with a [`UsageError`].
macro_rules! usage_bail {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::commands::common::UsageError(format!($($arg)*))))
    };
}
pub(crate) use usage_bail;

/// The exit code for an error that ended a command: [`EXIT_USAGE`] for argument errors, 1
/// otherwise.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<UsageError>().is_some() {
        EXIT_USAGE
    } else {
        1
    }
}
/// The dtype `--dtype` names; `None` for `auto` (each caller picks its default).
pub fn dtype_of(arg: DtypeArg) -> Option<candle_core::DType> {
    match arg {
        DtypeArg::Auto => None,
        DtypeArg::F32 => Some(candle_core::DType::F32),
        DtypeArg::F16 => Some(candle_core::DType::F16),
        DtypeArg::Bf16 => Some(candle_core::DType::BF16),
    }
}

/// First Ctrl-C (or SIGTERM, which schedulers and `timeout` send, or SIGHUP, when the terminal
/// goes away): finish the report with what is done. Second: leave at once.
pub fn install_ctrl_c() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(EXIT_INTERRUPTED as i32);
        }
        eprintln!("\ninterrupted: stopping after the current step and writing the report (Ctrl-C again to quit now)");
    });
    cancel
}

/// The data set to run: the given file, or the built-in synthetic set (written on first use).
pub fn load_dataset(path: Option<&Path>) -> Result<(PathBuf, LoadedDataset)> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from("perf_data").join(synthetic::default_file_name(BUILTIN_SET));
            if !p.is_file() {
                eprintln!("writing the built-in synthetic set to {} ...", p.display());
                synthetic::prepare(&builtin_synthetic(), &p)?;
            }
            p
        }
    };
    let dataset = LoadedDataset::load(&path)?;
    if dataset.file.samples.is_empty() {
        bail!("{} holds no samples", path.display());
    }
    Ok((path, dataset))
}

const BUILTIN_SET: &str = "builtin";

/// The set `vlmbench run` uses without `--data-file`: 8 PNG images around 640x480 (COCO's
/// typical size) with prompts of 64±16 tokens.
pub fn builtin_synthetic() -> synthetic::SyntheticOptions {
    synthetic::SyntheticOptions {
        name: BUILTIN_SET.into(),
        num_samples: 8,
        seed: 42,
        images: Some(synthetic::ImageSpec {
            width_mean: 640.0,
            width_stddev: 64.0,
            height_mean: 480.0,
            height_stddev: 48.0,
            format: synthetic::SynthImageFormat::Png,
        }),
        input_tokens_mean: 64.0,
        input_tokens_stddev: 16.0,
        output_tokens: None,
        tokenizer: None,
    }
}

pub fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} samples  {elapsed_precise}  {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

pub fn default_report_path(model: &str, set_name: &str, stamp: &str) -> PathBuf {
    let model = model
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(model);
    PathBuf::from("reports").join(format!(
        "{}_{}_{}.json",
        sanitize_file_stem(model),
        sanitize_file_stem(set_name),
        stamp
    ))
}

/// Current UTC time as ISO 8601 (`2026-11-23T23:40:05Z`) and compact (`20261123T234005Z`).
pub fn utc_now() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let (h, mi, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z"),
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn report_path_is_safe() {
        let p = default_report_path("random:tiny-llava", "synthetic_builtin", "20260101T000000Z");
        assert_eq!(
            p,
            PathBuf::from("reports/random_tiny-llava_synthetic_builtin_20260101T000000Z.json")
        );
        let p = default_report_path("meta-llama/Llama-2-7b-hf", "x", "t");
        assert_eq!(p, PathBuf::from("reports/Llama-2-7b-hf_x_t.json"));
    }
}
