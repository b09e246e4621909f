//! Throughput of `prepare mmbench` on a generated TSV the shape of MMBench DEV EN: 4,329 rows
//! (1,164 questions; 837 with three option-rotated copies and 327 with two, each copy
//! referencing its original's image), noisy 640x480 JPEGs as base64 (about 530 MB of TSV, more
//! than the real file's ~350 MB, so the figure is conservative).
//!
//! `cargo bench --bench prepare_mmbench` prints the time per run and MB/s. The generated TSV is
//! cached under target/bench-data/.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlmbench::dataset::mmbench::{prepare, MmbenchOptions};

const QUESTIONS: usize = 1164;
/// Questions with only two rotated copies (three options); the rest have three.
const TWO_ROTATION_QUESTIONS: usize = 327;
const ROWS: usize = 4329;

/// A noisy JPEG of realistic size for a photo-like benchmark image.
fn base_jpeg(seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2654435761).max(1);
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state & 0x3f) as u8;
        image::Rgb([(x / 3) as u8 ^ n, (y / 2) as u8 ^ n, n.wrapping_mul(3)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .unwrap();
    out.into_inner()
}

/// Makes image `i` distinct by inserting a JPEG comment segment after the SOI marker.
fn distinct(base: &[u8], i: usize) -> Vec<u8> {
    let text = format!("vlmbench bench image {i}");
    let len = (text.len() + 2) as u16;
    let mut out = Vec::with_capacity(base.len() + text.len() + 4);
    out.extend_from_slice(&base[..2]);
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&base[2..]);
    out
}

fn dev_en_sized_tsv() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let path = dir.join("MMBench_DEV_EN_synthetic_v2.tsv");
    if path.is_file() {
        return path;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let bases: Vec<Vec<u8>> = (0..16).map(base_jpeg).collect();
    let tmp = dir.join("tsv.tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
    writeln!(f, "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\tsplit").unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    for q in 0..QUESTIONS {
        let img = b64.encode(distinct(&bases[q % bases.len()], q));
        let hint = if q % 3 == 0 {
            "\"Read the passage.\nThen answer.\""
        } else {
            "nan"
        };
        let opts = ["red", "green", "blue", "yellow"];
        let reference = q.to_string();
        let rotations = if q < TWO_ROTATION_QUESTIONS { 2 } else { 3 };
        for r in 0..=rotations {
            let index = q + r * 1_000_000;
            let rotated: Vec<&str> = (0..4).map(|k| opts[(k + r) % 4]).collect();
            let image = if r == 0 {
                img.as_str()
            } else {
                reference.as_str()
            };
            writeln!(
                f,
                "{index}\tWhich colour appears most in image {q}?\t{hint}\t{}\t{}\t{}\t{}\tA\tattribute_recognition\t{image}\tsynthetic\tfinegrained_perception\tnan\tdev",
                rotated[0], rotated[1], rotated[2], rotated[3]
            )
            .unwrap();
        }
    }
    f.flush().unwrap();
    drop(f);
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn bench(c: &mut Criterion) {
    let tsv = dev_en_sized_tsv();
    let bytes = std::fs::metadata(&tsv).unwrap().len();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("mmbench_dev_en.json");
    let mut group = c.benchmark_group("prepare");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("mmbench_dev_en_sized", |b| {
        b.iter(|| {
            let file = prepare(&MmbenchOptions {
                tsv: tsv.clone(),
                originals_only: false,
                out: out.clone(),
            })
            .unwrap();
            assert_eq!(file.num_samples, ROWS);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
