//! Arithmetic rate of the CPU prefill products on one layer of the 181 M reference Llama
//! (hidden 1024, intermediate 2816, 4 of 16 heads for keys/values) for a 128-token prompt, per
//! weight format: the q, k, v, o, gate, up and down projections, 0.69 GFLOP together. Prefill
//! is bound by arithmetic, so the figure is FLOP/s (criterion's "elements" are FLOPs), to
//! compare with the `prefill_compute.machine_flops_per_s` a run reports.
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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(500));
    targets = kernels
}
criterion_main!(benches);
