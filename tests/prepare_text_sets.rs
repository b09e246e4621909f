//! `vlmbench prepare prompts | jsonl | synthetic` through the real binary.

mod common;

use common::{read_json, vlmbench};
use std::path::Path;

use base64::Engine as _;
use predicates::str::contains;

fn tiny_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(4, 3, |x, y| image::Rgb([x as u8 * 50, y as u8 * 70, 9]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn builtin_prompt_sets_need_no_input_and_are_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    vlmbench()
        .args(["prepare", "prompts", "--out"])
        .arg(dir.path())
        .assert()
        .success();
    for name in ["short", "medium", "long"] {
        let p = dir.path().join(format!("prompts_{name}.json"));
        let v = read_json(&p);
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["set"], "prompts");
        assert_eq!(v["name"], format!("prompts_{name}"));
        let samples = v["samples"].as_array().unwrap();
        assert_eq!(v["num_samples"].as_u64().unwrap() as usize, samples.len());
        assert!(samples.iter().all(|s| s["image"].is_null()));
        let idx: Vec<i64> = samples
            .iter()
            .map(|s| s["index"].as_i64().unwrap())
            .collect();
        assert!(idx.windows(2).all(|w| w[0] < w[1]));
        assert!(v["sources"][0]["sha256"].as_str().unwrap().len() == 64);
    }
    let first = std::fs::read(dir.path().join("prompts_long.json")).unwrap();
    vlmbench()
        .args(["prepare", "prompts", "--builtin", "long", "--out"])
        .arg(dir.path())
        .assert()
        .success();
    assert_eq!(
        std::fs::read(dir.path().join("prompts_long.json")).unwrap(),
        first
    );
}

#[test]
fn prompt_file_skips_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mine.txt");
    std::fs::write(&input, "What is Rust?\n\n   \nWrite a haiku.\r\n").unwrap();
    let out = dir.path().join("out.json");
    vlmbench()
        .args(["prepare", "prompts", "--file"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let v = read_json(&out);
    assert_eq!(v["name"], "prompts_mine");
    let s = v["samples"].as_array().unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[1]["index"], 4);
    assert_eq!(s[1]["prompt"], "Write a haiku.");
}

#[test]
fn missing_prompt_file_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    vlmbench()
        .args([
            "prepare",
            "prompts",
            "--file",
            "/no/such/prompts.txt",
            "--out",
        ])
        .arg(dir.path())
        .assert()
        .code(1)
        .stderr(contains("/no/such/prompts.txt"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn jsonl_paths_and_data_urls_are_frozen_beside_the_json() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("img")).unwrap();
    std::fs::write(src.join("img/a.png"), tiny_png()).unwrap();
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(tiny_png())
    );
    let lines = [
        r#"{"text_input": "What is this?", "image": "img/a.png"}"#.to_string(),
        String::new(),
        format!(r#"{{"text": "And this?", "image": "{data_url}"}}"#),
        r#"{"text": "No image here", "session_id": "s1"}"#.to_string(),
    ];
    std::fs::write(src.join("in.jsonl"), lines.join("\n")).unwrap();
    let out_dir = dir.path().join("frozen");
    vlmbench()
        .args(["prepare", "jsonl", "--file"])
        .arg(src.join("in.jsonl"))
        .arg("--out")
        .arg(&out_dir)
        .assert()
        .success();
    let json = out_dir.join("jsonl_in.json");
    let v = read_json(&json);
    let s = v["samples"].as_array().unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(
        s.iter()
            .map(|x| x["index"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    for x in &s[..2] {
        let rel = x["image"].as_str().unwrap();
        assert!(!Path::new(rel).is_absolute());
        assert_eq!(std::fs::read(out_dir.join(rel)).unwrap(), tiny_png());
    }
    assert_eq!(s[2]["fields"]["session_id"], "s1");
    // The set moves as a whole: paths are relative to the JSON file.
    let moved = dir.path().join("moved");
    std::fs::rename(&out_dir, &moved).unwrap();
    let rel = s[0]["image"].as_str().unwrap();
    assert!(moved.join(rel).is_file());
}

/// `images` with several entries (paths and data URLs alike) freezes each, in order, with their
/// sizes, and the set lists them under `images`.
#[test]
fn jsonl_several_images_per_line_are_frozen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let wide = {
        let img = image::RgbImage::from_fn(9, 2, |x, _| image::Rgb([x as u8 * 20, 0, 0]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    std::fs::write(dir.path().join("wide.png"), &wide).unwrap();
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(tiny_png())
    );
    let line = serde_json::json!({"text": "Which is wider?", "images": ["wide.png", data_url]});
    std::fs::write(dir.path().join("in.jsonl"), format!("{line}\n")).unwrap();
    let out = dir.path().join("frozen/set.json");
    vlmbench()
        .args(["prepare", "jsonl", "--file"])
        .arg(dir.path().join("in.jsonl"))
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stdout(contains("1 with images"));
    let v = read_json(&out);
    let s = &v["samples"][0];
    assert!(s.get("image").is_none(), "{s}");
    let rels: Vec<&str> = s["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(rels.len(), 2);
    let frozen = out.parent().unwrap();
    assert_eq!(std::fs::read(frozen.join(rels[0])).unwrap(), wide);
    assert_eq!(std::fs::read(frozen.join(rels[1])).unwrap(), tiny_png());
    assert_eq!(
        s["fields"]["image_sizes"],
        serde_json::json!([[9, 2], [4, 3]])
    );
}

#[test]
fn jsonl_errors_name_the_line_and_field_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("{\"text\": \"ok\"}\n{not json}\n", "in.jsonl:2"),
        ("{\"image\": \"a.png\"}\n", "text_input"),
        (
            "{\"text\": \"x\", \"image\": \"missing.png\"}\n",
            "missing.png",
        ),
        (
            "{\"text\": \"x\", \"image\": \"https://example.com/a.png\"}\n",
            "download",
        ),
        (
            "{\"text\": \"ok\"}\n{\"text\": \"x\", \"images\": [\"a.png\", \"missing.png\"]}\n",
            "in.jsonl:2: field `images[1]`: cannot read image",
        ),
        (
            "{\"text\": \"x\", \"image\": \"a.png\", \"images\": [\"a.png\"]}\n",
            "both `image` and `images`",
        ),
    ];
    std::fs::write(dir.path().join("a.png"), tiny_png()).unwrap();
    for (content, expected) in cases {
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, content).unwrap();
        let out = dir.path().join("out");
        vlmbench()
            .args(["prepare", "jsonl", "--file"])
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .assert()
            .code(1)
            .stderr(contains(expected));
        assert!(
            !out.exists() || std::fs::read_dir(&out).unwrap().count() == 0,
            "{content}: output left behind"
        );
    }
}

#[test]
fn synthetic_set_with_given_tokenizer_file() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    // A smaller vocabulary than the built-in tokenizer's: the same prompt is more tokens, so
    // lengths counted with the built-in one instead would not match.
    let json = vlmbench::synth::tokenizer_json(300, &[]).unwrap();
    std::fs::write(&tok, &json).unwrap();
    let given = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
    let builtin =
        tokenizers::Tokenizer::from_bytes(vlmbench::synth::builtin_tokenizer_json().as_bytes())
            .unwrap();
    let out = dir.path().join("s.json");
    let args = [
        "prepare",
        "synthetic",
        "--num-samples",
        "3",
        "--image-width-mean",
        "40",
        "--image-height-mean",
        "30",
        "--image-format",
        "jpeg",
        "--input-tokens-mean",
        "20",
        "--input-tokens-stddev",
        "5",
    ];
    vlmbench()
        .args(args)
        .arg("--tokenizer")
        .arg(&tok)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let v = read_json(&out);
    assert_eq!(v["set"], "synthetic");
    assert_eq!(v["seed"], 42);
    assert_eq!(v["sources"][0]["name"], "tokenizer.json");
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    assert_eq!(v["num_samples"], 3);
    let mut differs = false;
    for s in samples {
        let prompt = s["prompt"].as_str().unwrap();
        let want = s["fields"]["input_tokens"].as_u64().unwrap() as usize;
        let n = given.encode(prompt, false).unwrap().len();
        assert_eq!(n, want, "{prompt:?} is {n} tokens of the given tokenizer");
        differs |= builtin.encode(prompt, false).unwrap().len() != want;
        let rel = s["image"].as_str().unwrap();
        assert!(rel.ends_with(".jpg"), "{rel}");
        let bytes = std::fs::read(dir.path().join(rel)).unwrap();
        assert_eq!(
            image::guess_format(&bytes).unwrap(),
            image::ImageFormat::Jpeg,
            "{rel}"
        );
        let img = image::load_from_memory(&bytes).unwrap();
        // The standard deviations default to 0: every image is exactly the mean size.
        assert_eq!((img.width(), img.height()), (40, 30), "{rel}");
        assert_eq!(
            (
                s["fields"]["image_width"].as_u64(),
                s["fields"]["image_height"].as_u64()
            ),
            (Some(40), Some(30))
        );
    }
    assert!(
        differs,
        "the built-in tokenizer counts these prompts the same; the test cannot tell them apart"
    );
    let first = std::fs::read(&out).unwrap();
    vlmbench()
        .args(args)
        .arg("--tokenizer")
        .arg(&tok)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(std::fs::read(&out).unwrap(), first);
}
