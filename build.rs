//! Records the git commit (and whether the tree was dirty), the rustc and candle versions and,
//! for CUDA builds, the CUDA toolkit version in the binary, for the report's environment.
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(commit) = commit {
        println!("cargo:rustc-env=VLMBENCH_GIT_COMMIT={commit}");
    }
    // Uncommitted changes to tracked files (untracked files do not change the build).
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| !o.stdout.is_empty());
    if let Some(dirty) = dirty {
        println!("cargo:rustc-env=VLMBENCH_GIT_DIRTY={dirty}");
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    if let Some(v) = first_line_of(&rustc, &["--version"]) {
        println!("cargo:rustc-env=VLMBENCH_RUSTC_VERSION={v}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
        let release = Command::new(&nvcc)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                // "Cuda compilation tools, release 12.8, V12.8.93"
                let v = text
                    .split("release ")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .trim()
                    .to_string();
                Some(v)
            });
        println!(
            "cargo:rustc-env=VLMBENCH_CUDA_RUNTIME_VERSION={}",
            release.unwrap_or_else(|| "unknown".into())
        );
        println!("cargo:rerun-if-env-changed=NVCC");
    }
    // Edits of the sources change the dirty flag; git index changes (add, commit) too.
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=.git/index");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-changed=Cargo.lock");
    // The exact candle-core version resolved in Cargo.lock.
    if let Ok(lock) = std::fs::read_to_string("Cargo.lock") {
        let mut lines = lock.lines();
        while let Some(l) = lines.next() {
            if l == "name = \"candle-core\"" {
                if let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = \"")) {
                    println!(
                        "cargo:rustc-env=VLMBENCH_CANDLE_VERSION={}",
                        v.trim_end_matches('"')
                    );
                }
                break;
            }
        }
    }
}

/// The first line a command prints, trimmed.
fn first_line_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(text.lines().next()?.trim().to_string()).filter(|s| !s.is_empty())
}
