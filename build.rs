//! Records the git commit and the candle version in the binary, for the report's environment.
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
