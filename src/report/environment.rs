//! Where and how a run happened, recorded with every report so numbers can be compared honestly.

use serde::{Deserialize, Serialize};

/// Facts about the machine and build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Environment {
    pub vlmbench_version: String,
    /// Git commit vlmbench was built from (`unknown` outside a git checkout).
    pub git_commit: String,
    /// Whether the working tree had uncommitted changes to tracked files when the binary was
    /// built (`null` outside a git checkout): a dirty build is not quite `git_commit`.
    #[serde(default)]
    pub git_dirty: Option<bool>,
    /// `rustc --version` of the compiler that built the binary.
    #[serde(default = "unknown")]
    pub rustc_version: String,
    /// candle-core version compiled in.
    pub candle_version: String,
    /// Whether the binary was built with the `cuda` feature.
    pub cuda_build: bool,
    /// CUDA runtime (toolkit) version the binary's kernels were built with and whose libraries
    /// (cuBLAS) it loads, from `nvcc --version` at build time; `null` without the `cuda`
    /// feature. The driver's own CUDA version is `gpu.cuda_driver_version`.
    #[serde(default)]
    pub cuda_runtime_version: Option<String>,
    pub os: String,
    pub arch: String,
    pub cpu_model: String,
    /// Logical CPUs available to this process.
    pub cpu_threads: usize,
    /// The CPU kernel set the in-process engine runs and the features it was chosen from, so
    /// figures from different CPU generations can be told apart.
    #[serde(default)]
    pub cpu_kernels: Option<CpuKernels>,
    /// Threads the model's CPU work actually ran on (the engine's pool, sized by `--threads`,
    /// else `RAYON_NUM_THREADS`, else the core count); `null` on a GPU or against a server.
    #[serde(default)]
    pub model_threads: Option<usize>,
    /// `RAYON_NUM_THREADS` as set in the environment vlmbench was started from (not by
    /// `--threads`), since it sizes thread pools too.
    #[serde(default)]
    pub rayon_num_threads_env: Option<String>,
    /// Bytes of memory (the CPU engine's weights, once loaded) the kernel moved onto 2 MiB
    /// huge pages at vlmbench's request; `null` where none were (a GPU or server run, not
    /// Linux 6.1+, huge pages off, or `VLMBENCH_HUGE_PAGES=off`). Decode streams the weights,
    /// and huge pages change how fast it does.
    #[serde(default)]
    pub huge_page_bytes: Option<u64>,
    /// GPU name, driver and CUDA driver version where NVML is available.
    #[serde(default)]
    pub gpu: Option<GpuInfo>,
    /// The command line, with secrets (API keys) removed.
    pub command_line: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CpuKernels {
    /// `portable`, `avx2` or `avx512` (see `engine::cpu_kernels`).
    pub set: String,
    /// The features detected, e.g. `avx2`, `avx512vnni`, `amx-bf16` (AMX only where the OS
    /// granted its tile state).
    pub features: Vec<String>,
}

impl CpuKernels {
    pub fn detect() -> Self {
        let (set, features) = crate::engine::cpu_kernels();
        Self {
            set: set.to_string(),
            features: features.into_iter().map(String::from).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuInfo {
    pub name: String,
    pub driver_version: String,
    /// CUDA version the driver supports, e.g. `13.0`.
    pub cuda_driver_version: String,
    pub memory_total_bytes: u64,
}

impl Environment {
    /// Captures the environment. `gpu_ordinal` is the CUDA device in use, if any.
    pub fn capture(gpu_ordinal: Option<usize>) -> Self {
        Self {
            vlmbench_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: option_env!("VLMBENCH_GIT_COMMIT")
                .unwrap_or("unknown")
                .to_string(),
            git_dirty: option_env!("VLMBENCH_GIT_DIRTY").map(|d| d == "true"),
            rustc_version: option_env!("VLMBENCH_RUSTC_VERSION")
                .unwrap_or("unknown")
                .to_string(),
            candle_version: option_env!("VLMBENCH_CANDLE_VERSION")
                .unwrap_or("unknown")
                .to_string(),
            cuda_build: cfg!(feature = "cuda"),
            cuda_runtime_version: option_env!("VLMBENCH_CUDA_RUNTIME_VERSION").map(String::from),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cpu_model: cpu_model(),
            cpu_threads: logical_cpus(),
            cpu_kernels: Some(CpuKernels::detect()),
            model_threads: None,
            rayon_num_threads_env: std::env::var("RAYON_NUM_THREADS").ok(),
            huge_page_bytes: None,
            gpu: gpu_ordinal.and_then(gpu_info),
            command_line: redact_secrets(std::env::args()),
        }
    }
}

fn unknown() -> String {
    "unknown".into()
}

/// Logical CPUs available to this process (its affinity mask included).
pub fn logical_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Replaces the value of secret-bearing flags (`--api-key X`, `--api-key=X`) with `***`.
pub fn redact_secrets(args: impl IntoIterator<Item = String>) -> Vec<String> {
    const SECRET_FLAGS: &[&str] = &["--api-key"];
    let mut out = Vec::new();
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("***".into());
            hide_next = false;
        } else if let Some(flag) = SECRET_FLAGS
            .iter()
            .find(|f| a.starts_with(&format!("{f}=")))
        {
            out.push(format!("{flag}=***"));
        } else {
            hide_next = SECRET_FLAGS.contains(&a.as_str());
            out.push(a);
        }
    }
    out
}

#[cfg(feature = "cuda")]
fn gpu_info(ordinal: usize) -> Option<GpuInfo> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let dev = crate::memory::nvml_device(&nvml, ordinal).ok()?;
    let cuda = nvml.sys_cuda_driver_version().ok()?;
    Some(GpuInfo {
        name: dev.name().ok()?,
        driver_version: nvml.sys_driver_version().ok()?,
        cuda_driver_version: format!("{}.{}", cuda / 1000, (cuda % 1000) / 10),
        memory_total_bytes: dev.memory_info().ok()?.total,
    })
}

#[cfg(not(feature = "cuda"))]
fn gpu_info(_ordinal: usize) -> Option<GpuInfo> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_is_described() {
        let e = Environment::capture(None);
        assert!(e.rustc_version.starts_with("rustc "), "{}", e.rustc_version);
        // This crate is built from a git checkout, so cleanliness is known.
        assert!(e.git_dirty.is_some());
        assert_eq!(e.cuda_runtime_version.is_some(), cfg!(feature = "cuda"));
        assert_eq!(e.model_threads, None, "filled in by the run, not guessed");
    }

    #[test]
    fn api_keys_never_reach_the_report() {
        let args = [
            "vlmbench",
            "run",
            "--api-key",
            "sk-secret",
            "--api-key=sk-2",
            "--x",
        ]
        .map(String::from);
        let red = redact_secrets(args);
        assert!(!red.iter().any(|a| a.contains("sk-")), "{red:?}");
        assert_eq!(red[3], "***");
        assert_eq!(red[4], "--api-key=***");
    }
}
