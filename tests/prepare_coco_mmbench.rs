//! `vlmbench prepare coco | mmbench` through the real binary on generated files in the real
//! formats, and on the real sample files in ../shared/data when they are there.

mod common;

use std::path::{Path, PathBuf};

use common::fixtures::*;
use common::{read_json, vlmbench};
use predicates::str::contains;
use serde_json::Value;

fn indices(v: &Value) -> Vec<i64> {
    v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["index"].as_i64().unwrap())
        .collect()
}

fn coco_run(ann: &Path, imgs: &Path, out: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    vlmbench()
        .args(["prepare", "coco", "--annotations"])
        .arg(ann)
        .arg("--images")
        .arg(imgs)
        .arg("--out")
        .arg(out)
        .args(extra)
        .assert()
}

const IDS: [i64; 12] = [
    391895, 42, 522418, 184613, 318219, 554625, 397133, 37777, 252219, 87038, 174482, 403385,
];

#[test]
fn coco_annotations_subset_is_seeded_sorted_and_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, imgs) = coco(dir.path(), &IDS, coco2014_name);
    let out = dir.path().join("out/coco.json");
    coco_run(&ann, &imgs, &out, &["--num-samples", "5"]).success();
    let v = read_json(&out);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["set"], "coco");
    assert_eq!(v["seed"], 42);
    assert_eq!(v["num_samples"], 5);
    assert_eq!(v["sources"][0]["name"], "captions_val2014.json");
    let idx = indices(&v);
    assert!(
        idx.windows(2).all(|w| w[0] < w[1]),
        "sorted by index: {idx:?}"
    );
    // Pinned: which images seed 42 picks from these 12 must never change.
    assert_eq!(idx, vec![174482, 184613, 318219, 391895, 522418]);
    let s0 = &v["samples"][0];
    assert_eq!(
        s0["prompt"],
        "Please describe this image in general. Directly provide the description, do not include prefix like \"This image depicts\". "
    );
    assert_eq!(
        s0["fields"]["references"],
        serde_json::json!(["first caption of 174482", "second caption of 174482"])
    );
    let rel = s0["image"].as_str().unwrap();
    assert_eq!(rel, "coco_images/COCO_val2014_000000174482.jpg");
    assert_eq!(
        std::fs::read(out.parent().unwrap().join(rel)).unwrap(),
        jpeg(174482, 24, 16)
    );

    let first = std::fs::read(&out).unwrap();
    coco_run(&ann, &imgs, &out, &["--num-samples", "5"]).success();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        first,
        "same inputs + seed = same bytes"
    );
    coco_run(&ann, &imgs, &out, &["--num-samples", "5", "--seed", "7"]).success();
    assert_ne!(
        indices(&read_json(&out)),
        idx,
        "another seed, another subset"
    );
    coco_run(
        &ann,
        &imgs,
        &out,
        &["--num-samples", "5", "--prompt", "Caption it."],
    )
    .success();
    assert_eq!(read_json(&out)["samples"][0]["prompt"], "Caption it.");
}

#[test]
fn coco_2017_names_and_default_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, imgs) = coco(dir.path(), &IDS[..4], coco2017_name);
    let out_dir = dir.path().join("perf");
    coco_run(&ann, &imgs, &out_dir, &["--num-samples", "500"]).success();
    let v = read_json(&out_dir.join("coco_val_500.json"));
    assert_eq!(v["num_samples"], 4, "fewer images than asked: all of them");
    assert_eq!(v["samples"][0]["fields"]["file_name"], "000000000042.jpg");
}

#[test]
fn coco_errors_name_the_problem_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ann, imgs) = coco(dir.path(), &IDS[..3], coco2014_name);
    let out = dir.path().join("out");
    // A chosen image is missing.
    std::fs::remove_file(imgs.join(coco2014_name(42))).unwrap();
    coco_run(&ann, &imgs, &out, &[])
        .code(1)
        .stderr(contains("image id 42"))
        .stderr(contains("COCO_val2014_000000000042.jpg"));
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0);
    // Not a COCO file.
    let bogus = dir.path().join("bogus.json");
    std::fs::write(&bogus, r#"{"categories": []}"#).unwrap();
    coco_run(&bogus, &imgs, &out, &[])
        .code(1)
        .stderr(contains("bogus.json"))
        .stderr(contains("not a COCO captions"));
    // Undecodable image.
    std::fs::write(imgs.join(coco2014_name(42)), b"definitely not a jpeg").unwrap();
    coco_run(&ann, &imgs, &out, &[])
        .code(1)
        .stderr(contains("image id 42"))
        .stderr(contains("COCO_val2014_000000000042.jpg"));
    // Missing annotation file.
    coco_run(&dir.path().join("nope.json"), &imgs, &out, &[])
        .code(1)
        .stderr(contains("nope.json"));
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0);
}

#[test]
fn coco_tsv_keeps_python_list_references() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("COCO_VAL.tsv");
    let mut body = String::from("index\timage\tanswer\n");
    for i in [30i64, 10, 20] {
        let refs = format!("['A photo number {i}.', \"It's {i}\"]");
        body.push_str(&format!(
            "{i}\t{}\t{}\n",
            b64(&jpeg(i as u32, 8, 8)),
            tsv_field(&refs)
        ));
    }
    std::fs::write(&tsv, body).unwrap();
    let out = dir.path().join("c.json");
    vlmbench()
        .args(["prepare", "coco", "--tsv"])
        .arg(&tsv)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let v = read_json(&out);
    assert_eq!(indices(&v), vec![10, 20, 30]);
    assert_eq!(
        v["samples"][0]["fields"]["references"],
        serde_json::json!(["A photo number 10.", "It's 10"])
    );
    let rel = v["samples"][2]["image"].as_str().unwrap();
    assert_eq!(std::fs::read(dir.path().join(rel)).unwrap(), jpeg(30, 8, 8));
    // A broken literal names row and field.
    std::fs::write(
        &tsv,
        format!(
            "index\timage\tanswer\n5\t{}\t['unclosed\n",
            b64(&jpeg(1, 8, 8))
        ),
    )
    .unwrap();
    vlmbench()
        .args(["prepare", "coco", "--tsv"])
        .arg(&tsv)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(contains("row index 5, field `answer`"));
}

fn mmbench_fixture(dir: &Path) -> PathBuf {
    let img_a = b64(&jpeg(1, 16, 16));
    let img_b = b64(&jpeg(2, 16, 16));
    let rows = [
        // A rotated copy that points forward to its original (rows are not in index order).
        McqRow {
            index: 1000002,
            question: "Which animal?",
            hint: "nan",
            options: ["dog", "cat", "NA", ""],
            answer: "A",
            image: "2".into(),
        },
        McqRow {
            index: 2,
            question: "Which animal?",
            hint: "nan",
            options: ["cat", "dog", "NA", ""],
            answer: "B",
            image: img_b.clone(),
        },
        McqRow {
            index: 1,
            question: "What colour is the \"sky\"?",
            hint: "Look up.\nThen think.",
            options: ["blue", "green", "red", "None"],
            answer: "A",
            image: img_a,
        },
        McqRow {
            index: 1000001,
            question: "What colour is the \"sky\"?",
            hint: "Look up.\nThen think.",
            options: ["green", "red", "blue", "None"],
            answer: "C",
            image: "1".into(),
        },
        McqRow {
            index: 3,
            question: "Shared image?",
            hint: "",
            options: ["yes", "no", "", ""],
            answer: "A",
            image: "2".into(),
        },
    ];
    let tsv = dir.join("MMBench_DEV_EN.tsv");
    mmbench_tsv(&tsv, &rows);
    tsv
}

#[test]
fn mmbench_prompts_images_and_back_references() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = mmbench_fixture(dir.path());
    let out = dir.path().join("frozen");
    vlmbench()
        .args(["prepare", "mmbench", "--tsv"])
        .arg(&tsv)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let json = out.join("mmbench_dev_en.json");
    let v = read_json(&json);
    assert_eq!(v["set"], "mmbench");
    assert_eq!(indices(&v), vec![1, 2, 3, 1000001, 1000002]);
    let s = v["samples"].as_array().unwrap();
    assert_eq!(
        s[0]["prompt"],
        "Hint: Look up.\nThen think.\nQuestion: What colour is the \"sky\"?\nOptions:\nA. blue\nB. green\nC. red\nPlease select the correct answer from the options above. \n"
    );
    assert_eq!(
        s[1]["prompt"],
        "Question: Which animal?\nOptions:\nA. cat\nB. dog\nPlease select the correct answer from the options above. \n"
    );
    assert_eq!(s[0]["fields"]["answer"], "A");
    assert_eq!(s[0]["fields"]["category"], "attribute_recognition");
    assert!(
        s[0]["fields"].get("comment").is_none(),
        "nan comment is absent"
    );
    // Back-references share the owner's file; images are written once, bytes unchanged.
    assert_eq!(s[3]["image"], s[0]["image"]);
    assert_eq!(s[4]["image"], s[1]["image"]);
    assert_eq!(s[2]["image"], s[1]["image"]);
    let files = std::fs::read_dir(out.join("mmbench_dev_en_images"))
        .unwrap()
        .count();
    assert_eq!(files, 2);
    assert_eq!(
        std::fs::read(out.join(s[0]["image"].as_str().unwrap())).unwrap(),
        jpeg(1, 16, 16)
    );
    let first = std::fs::read(&json).unwrap();
    vlmbench()
        .args(["prepare", "mmbench", "--tsv"])
        .arg(&tsv)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(std::fs::read(&json).unwrap(), first);

    vlmbench()
        .args(["prepare", "mmbench", "--originals-only", "--tsv"])
        .arg(&tsv)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(indices(&read_json(&json)), vec![1, 2, 3]);
}

#[test]
fn mmbench_errors_name_row_and_field_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = |tsv: &Path| {
        vlmbench()
            .args(["prepare", "mmbench", "--tsv"])
            .arg(tsv)
            .arg("--out")
            .arg(&out)
            .assert()
    };
    let tsv = dir.path().join("t.tsv");
    // Missing required column.
    std::fs::write(&tsv, "index\thint\tA\n1\tx\ty\n").unwrap();
    run(&tsv)
        .code(1)
        .stderr(contains("`question`"))
        .stderr(contains("t.tsv"));
    // Undecodable image.
    let row = |image: String| McqRow {
        index: 7,
        question: "q",
        hint: "",
        options: ["a", "b", "", ""],
        answer: "A",
        image,
    };
    mmbench_tsv(&tsv, &[row("x".repeat(100))]);
    run(&tsv)
        .code(1)
        .stderr(contains("t.tsv: row index 7, field `image`"));
    mmbench_tsv(&tsv, &[row(b64(&[7u8; 200]))]);
    run(&tsv)
        .code(1)
        .stderr(contains("t.tsv: row index 7, field `image`"));
    // Reference to a row that does not exist.
    mmbench_tsv(&tsv, &[row("99".into())]);
    run(&tsv)
        .code(1)
        .stderr(contains("t.tsv: row index 7, field `image`"))
        .stderr(contains("row 99"));
    // Missing file.
    run(&dir.path().join("absent.tsv"))
        .code(1)
        .stderr(contains("absent.tsv"));
    assert!(
        !out.exists() || std::fs::read_dir(&out).unwrap().count() == 0,
        "nothing left behind"
    );
}

#[test]
fn data_derived_names_cannot_escape_the_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("deep/out");
    let jsonl = dir.path().join("in.jsonl");
    std::fs::write(dir.path().join("a.jpg"), jpeg(3, 8, 8)).unwrap();
    std::fs::write(&jsonl, "{\"text\": \"x\", \"image\": \"a.jpg\"}\n").unwrap();
    vlmbench()
        .args(["prepare", "jsonl", "--name", "../../evil", "--file"])
        .arg(&jsonl)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    assert!(
        out.join("jsonl_.._.._evil.json").is_file(),
        "the set name is sanitised into one file name"
    );
    // COCO file names come from data too. This one names a real image, two folders above
    // --images, so the prepare reaches the copy; copied under its raw name, the image would
    // land two folders above the staging folder: in `deep/`, outside the output folder.
    let (ann, imgs) = coco(&dir.path().join("coco"), &[5], coco2014_name);
    let mut v = read_json(&ann);
    v["images"][0]["file_name"] = "../../escape.jpg".into();
    std::fs::write(&ann, serde_json::to_vec(&v).unwrap()).unwrap();
    std::fs::write(dir.path().join("escape.jpg"), jpeg(5, 8, 8)).unwrap();
    assert!(
        imgs.join("../../escape.jpg").is_file(),
        "the planted image resolves"
    );
    let set = out.join("c.json");
    coco_run(&ann, &imgs, &set, &[]).success();
    let image = read_json(&set)["samples"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        image, "c_images/.._.._escape.jpg",
        "one sanitised file name"
    );
    assert!(
        out.join(&image).is_file(),
        "the image was copied into the set"
    );
    assert!(!dir.path().join("deep/escape.jpg").exists());
    for entry in walk(dir.path()) {
        let rel = entry.strip_prefix(dir.path()).unwrap();
        assert!(
            !rel.to_string_lossy().contains("escape")
                || rel == Path::new("escape.jpg")
                || rel.starts_with("deep/out"),
            "{rel:?} escaped"
        );
    }
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// The real COCO-mini and MMBench sample files: from `VLMBENCH_SAMPLE_DATA` when set (then
/// they must be there), else from `../shared/data` beside the checkout. A clone without them
/// skips the test, saying so on the terminal (past the test harness's output capture).
#[test]
fn real_sample_files() {
    let (shared, required) = match std::env::var_os("VLMBENCH_SAMPLE_DATA") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
            false,
        ),
    };
    if !shared.is_dir() {
        assert!(
            !required,
            "VLMBENCH_SAMPLE_DATA={} is not a folder",
            shared.display()
        );
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED real_sample_files: no sample data at {} (set VLMBENCH_SAMPLE_DATA=DIR)",
            shared.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let coco_dir = shared.join("coco-mini-val2017");
    let out = dir.path().join("coco.json");
    coco_run(
        &coco_dir.join("captions_val2017.json"),
        &coco_dir.join("val2017"),
        &out,
        &["--num-samples", "20"],
    )
    .success();
    let v = read_json(&out);
    assert_eq!(v["num_samples"], 20);
    let idx = indices(&v);
    assert!(idx.windows(2).all(|w| w[0] < w[1]));
    for s in v["samples"].as_array().unwrap() {
        assert!(s["fields"]["references"].as_array().unwrap().len() >= 5);
        assert!(dir.path().join(s["image"].as_str().unwrap()).is_file());
    }
    // A VLMEvalKit-layout TSV built from the real MMBench images.
    let imgs = shared.join("mmbench-samples/images");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&imgs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let encoded: Vec<String> = files
        .iter()
        .map(|f| b64(&std::fs::read(f).unwrap()))
        .collect();
    let rows: Vec<McqRow> = encoded
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            [
                McqRow {
                    index: i as i64,
                    question: "What is in the image?",
                    hint: "nan",
                    options: ["a", "b", "c", "d"],
                    answer: "A",
                    image: e.clone(),
                },
                McqRow {
                    index: 1_000_000 + i as i64,
                    question: "What is in the image?",
                    hint: "nan",
                    options: ["b", "c", "d", "a"],
                    answer: "D",
                    image: i.to_string(),
                },
            ]
        })
        .collect();
    let tsv = dir.path().join("MMBench_DEV_EN.tsv");
    mmbench_tsv(&tsv, &rows);
    let out = dir.path().join("mm.json");
    vlmbench()
        .args(["prepare", "mmbench", "--tsv"])
        .arg(&tsv)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let v = read_json(&out);
    assert_eq!(v["num_samples"].as_u64().unwrap() as usize, 2 * files.len());
    for (k, f) in files.iter().enumerate() {
        let rel = v["samples"][k]["image"].as_str().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(rel)).unwrap(),
            std::fs::read(f).unwrap(),
            "original bytes"
        );
    }
}
