//! The helpers every integration test shares: the binary under test, reading its JSON output,
//! and the small inputs (prompt sets, random-weight models, images, COCO/MMBench files) made in
//! the real formats.
#![allow(dead_code)]

pub mod fixtures;
pub mod http;
pub mod openai_server;
pub mod scripts;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

/// The `vlmbench` binary built by this cargo run.
pub fn vlmbench() -> Command {
    Command::cargo_bin("vlmbench").unwrap()
}

/// A JSON file the binary wrote.
pub fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// `vlmbench prepare prompts` over `lines` (one prompt a line); returns the set's path.
pub fn prepare_prompts(dir: &Path, lines: &str) -> PathBuf {
    let txt = dir.join("p.txt");
    std::fs::write(&txt, lines).unwrap();
    let out = dir.join("prompts_p.json");
    vlmbench()
        .args(["prepare", "prompts", "--file"])
        .arg(&txt)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    out
}

/// `vlmbench prepare jsonl` over `lines` (one JSON object a line, written to `dir/in.jsonl`,
/// whose folder relative image paths resolve against); returns the set's path,
/// `dir/set.json`.
pub fn prepare_jsonl(dir: &Path, lines: &[Value]) -> PathBuf {
    let jsonl = dir.join("in.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&jsonl, text).unwrap();
    let out = dir.join("set.json");
    vlmbench()
        .args(["prepare", "jsonl", "--file"])
        .arg(&jsonl)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    out
}

/// `vlmbench synth-model --preset <preset>` into `dir/<preset>`; returns the model folder.
pub fn synth_model(dir: &Path, preset: &str) -> PathBuf {
    let out = dir.join(preset);
    vlmbench()
        .args(["synth-model", "--preset", preset, "--out"])
        .arg(&out)
        .assert()
        .success();
    out
}
