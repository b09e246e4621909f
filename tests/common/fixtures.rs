//! Generators for test inputs in the real formats: JPEG/PNG images, COCO captions annotation
//! files, VLMEvalKit TSVs with base64 images.
#![allow(dead_code)]

use std::path::Path;

use base64::Engine as _;

/// A small JPEG whose pixels depend on `seed` (so images differ).
pub fn jpeg(seed: u32, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 + seed * 31) as u8,
            (y * 5 + seed * 17) as u8,
            (seed * 53) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes a COCO captions file for `ids` (listed in the given, unsorted order) with two
/// captions each, and the images named with `name(id)` into `images_dir`.
pub fn coco(
    dir: &Path,
    ids: &[i64],
    name: fn(i64) -> String,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let images_dir = dir.join("images");
    std::fs::create_dir_all(&images_dir).unwrap();
    let mut images = Vec::new();
    let mut anns = Vec::new();
    for (k, &id) in ids.iter().enumerate() {
        std::fs::write(images_dir.join(name(id)), jpeg(id as u32, 24, 16)).unwrap();
        images.push(serde_json::json!({"id": id, "file_name": name(id), "width": 24, "height": 16, "license": 1}));
        // Annotation ids deliberately out of order relative to captions.
        anns.push(serde_json::json!({"image_id": id, "id": 1000 + 2 * k + 1, "caption": format!("second caption of {id}")}));
        anns.push(serde_json::json!({"image_id": id, "id": 1000 + 2 * k, "caption": format!("first caption of {id}")}));
    }
    let file = serde_json::json!({"info": {"year": 2014}, "licenses": [], "images": images, "annotations": anns});
    let path = dir.join("captions_val2014.json");
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    (path, images_dir)
}

pub fn coco2014_name(id: i64) -> String {
    format!("COCO_val2014_{id:012}.jpg")
}

pub fn coco2017_name(id: i64) -> String {
    format!("{id:012}.jpg")
}

/// Quotes a TSV field the way pandas' `to_csv(sep='\t')` does when needed.
pub fn tsv_field(s: &str) -> String {
    if s.contains(['\t', '\n', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One MMBench row: index, question, hint, A–D, answer, category, image cell.
pub struct McqRow<'a> {
    pub index: i64,
    pub question: &'a str,
    pub hint: &'a str,
    pub options: [&'a str; 4],
    pub answer: &'a str,
    pub image: String,
}

pub const MMBENCH_HEADER: &str = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\tsplit";

pub fn mmbench_tsv(path: &Path, rows: &[McqRow]) {
    let mut out = String::from(MMBENCH_HEADER);
    out.push('\n');
    for r in rows {
        let cells = [
            r.index.to_string(),
            tsv_field(r.question),
            tsv_field(r.hint),
            tsv_field(r.options[0]),
            tsv_field(r.options[1]),
            tsv_field(r.options[2]),
            tsv_field(r.options[3]),
            r.answer.to_string(),
            "attribute_recognition".to_string(),
            r.image.clone(),
            "src".to_string(),
            "finegrained_perception".to_string(),
            "nan".to_string(),
            "dev".to_string(),
        ];
        out.push_str(&cells.join("\t"));
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}
