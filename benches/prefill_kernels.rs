//! Arithmetic rate of the CPU prefill products on one layer of the 181 M reference Llama
//! (hidden 1024, intermediate 2816, 4 of 16 heads for keys/values) for a 128-token prompt, per
//! weight format: the q, k, v, o, gate, up and down projections, 0.69 GFLOP together. Prefill
//! is bound by arithmetic, so the figure is FLOP/s (criterion's "elements" are FLOPs), to
//! compare with the `prefill_compute.machine_flops_per_s` a run reports.
//!
//! A second group times one layer's causal attention at 512 and 2,048 tokens (the part of a
//! long prompt's prefill that grows with the square of its length).
//!
//! `cargo bench --bench prefill_kernels` (threads: `RAYON_NUM_THREADS`, default all cores;
//! kernel set: `VLMBENCH_CPU_KERNELS=avx2` to compare with the AVX2 kernels on an AVX-512
//! machine).

mod common;

use std::hint::black_box;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use common::{announce_kernel_set, interleaved, weight, HIDDEN, INTERMEDIATE, KV};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlmbench::models::gemv::Weight;
use vlmbench::models::kquants::rows8::Interleaved;
use vlmbench::models::prefill;

const TOKENS: usize = 128;

/// `(n, k)` of each projection of one layer, in the order a layer runs them.
const PROJECTIONS: [(usize, usize); 7] = [
    (HIDDEN, HIDDEN),
    (KV, HIDDEN),
    (KV, HIDDEN),
    (HIDDEN, HIDDEN),
    (INTERMEDIATE, HIDDEN),
    (INTERMEDIATE, HIDDEN),
    (HIDDEN, INTERMEDIATE),
];

fn activations(k: usize) -> Tensor {
    let v: Vec<f32> = (0..TOKENS * k).map(|i| ((i as f32) * 0.37).sin()).collect();
    Tensor::from_vec(v, (1, TOKENS, k), &Device::Cpu).unwrap()
}

fn kernels(c: &mut Criterion) {
    announce_kernel_set();
    let mut group = c.benchmark_group("prefill_layer_projections");
    let flops: usize = PROJECTIONS.iter().map(|(n, k)| 2 * TOKENS * n * k).sum();
    group.throughput(Throughput::Elements(flops as u64));
    let (x_hidden, x_inter) = (activations(HIDDEN), activations(INTERMEDIATE));
    let f32_weights: Vec<Tensor> = PROJECTIONS
        .iter()
        .enumerate()
        .map(|(i, &(n, k))| weight(n, k, i as u64))
        .collect();
    for format in [
        "f32", "f16", "bf16", "q8_0", "q4_k", "q4_k_x8", "q5_k", "q5_k_x8", "q6_k", "q6_k_x8",
    ] {
        let quant = match format {
            "q8_0" => Some(GgmlDType::Q8_0),
            "q4_k" | "q4_k_x8" => Some(GgmlDType::Q4K),
            "q5_k" | "q5_k_x8" => Some(GgmlDType::Q5K),
            "q6_k" | "q6_k_x8" => Some(GgmlDType::Q6K),
            _ => None,
        };
        let dense: Vec<Tensor> = match format {
            "f16" => f32_weights
                .iter()
                .map(|w| w.to_dtype(DType::F16).unwrap())
                .collect(),
            "bf16" => f32_weights
                .iter()
                .map(|w| w.to_dtype(DType::BF16).unwrap())
                .collect(),
            _ => f32_weights.clone(),
        };
        let quantized: Vec<QTensor> = quant
            .map(|q| {
                f32_weights
                    .iter()
                    .map(|w| QTensor::quantize(w, q).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        let packed: Vec<Interleaved> = quantized
            .iter()
            .filter(|_| format.ends_with("_x8"))
            .map(interleaved)
            .collect();
        let weights: Vec<Weight<'_>> = if !packed.is_empty() {
            packed.iter().map(Weight::Interleaved).collect()
        } else if quantized.is_empty() {
            dense.iter().map(Weight::Dense).collect()
        } else {
            quantized.iter().map(Weight::Quantized).collect()
        };
        group.bench_function(format, |b| {
            b.iter(|| {
                for (w, &(_, k)) in weights.iter().zip(&PROJECTIONS) {
                    let x = if k == HIDDEN { &x_hidden } else { &x_inter };
                    black_box(prefill::matmul(x, *w).unwrap().expect("kernel applies"));
                }
            })
        });
    }
    group.finish();
}

/// One layer's causal attention (16 query heads on 4 key/value heads of 64) over a whole
/// prompt of 512 and of 2,048 tokens, from the f32 KV cache: the part of a prefill that grows
/// with the square of the prompt. FLOPs: the scores and the weighted values of every visible
/// (query, key) pair, 4 · heads · 64 each.
fn attention(c: &mut Criterion) {
    use vlmbench::models::attention::{prefill_attention_cpu, Causal};
    const HEADS: usize = 16;
    const KV_HEADS: usize = 4;
    const HEAD_DIM: usize = 64;
    let mut group = c.benchmark_group("prefill_attention");
    for seq in [512usize, 2048] {
        let dev = Device::Cpu;
        let q = Tensor::randn(
            0f32,
            1.0,
            (KV_HEADS, HEADS / KV_HEADS * seq, HEAD_DIM),
            &dev,
        )
        .unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, KV_HEADS, seq, HEAD_DIM), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, KV_HEADS, seq, HEAD_DIM), &dev).unwrap();
        let pairs = seq * (seq + 1) / 2;
        group.throughput(Throughput::Elements((4 * HEADS * HEAD_DIM * pairs) as u64));
        let causal = Causal {
            seq,
            offset: 0,
            window: None,
        };
        group.bench_function(format!("{seq}_tokens"), |b| {
            b.iter(|| {
                black_box(
                    prefill_attention_cpu(&q, &k, &v, 0..seq, 0.125, None, Some(causal))
                        .unwrap()
                        .expect("the kernel applies"),
                )
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(500));
    targets = kernels, attention
}
criterion_main!(benches);
