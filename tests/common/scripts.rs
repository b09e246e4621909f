//! Running the repository's shell and Python scripts from tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `PATH` without the folders that hold `program`, so a script sees a machine without it.
pub fn path_without(program: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|d| !d.join(program).exists())
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `bash SCRIPT ARGS...` from the repository root with extra environment variables.
pub fn bash(script: &str, args: &[&Path], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.current_dir(repo()).arg(repo().join(script)).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("bash runs")
}

/// Runs `python3 SCRIPT ARGS...` from the repository root.
pub fn python(script: &str, args: &[&Path]) -> Output {
    Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .current_dir(repo())
        .arg(repo().join(script))
        .args(args)
        .output()
        .expect("python3 runs")
}

/// Standard error as text, for assertions and failure messages.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
