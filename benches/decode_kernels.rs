//! Memory throughput of the CPU decode kernels on the projections of the 181 M reference Llama
//! (hidden 1024, intermediate 2816, 4 of 16 heads for keys/values, 16 layers), per weight
//! format. A decode step is bound by how fast it streams the weights from memory, so the figure
//! is weight bytes read per second, to compare with the machine's memory bandwidth (about
//! 28 GB/s on two cores of the CI machine kind, from a plain AVX2 streaming loop).
//!
//! Each iteration runs one decode step's projections, layer after layer: the fused q/k/v, the
//! fused gate/up and the down projection of all 16 layers. The weights of all layers (190 MB in
//! Q8_0 up to 720 MB in f32) do not fit in the caches, so they stream from memory as in a real
//! step; a single layer's would stay in the last-level cache and overstate the speed.
//!
//! `cargo bench --bench decode_kernels` (threads: `RAYON_NUM_THREADS`, default all cores; kernel
//! set: `VLMBENCH_CPU_KERNELS=avx2` to compare with the AVX2 kernels on an AVX-512 machine).

mod common;

use std::hint::black_box;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use common::{announce_kernel_set, interleaved, time_on_pool, weight, HIDDEN, INTERMEDIATE, KV};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlmbench::models::gemv::{matvec_many, Weight};
use vlmbench::models::kquants::rows8::Interleaved;

const LAYERS: usize = 16;

/// One layer's projections as the decode step groups them: q/k/v, gate/up, down.
const GROUPS: [&[(usize, usize)]; 3] = [
    &[(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN)],
    &[(INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN)],
    &[(HIDDEN, INTERMEDIATE)],
];

fn kernels(c: &mut Criterion) {
    announce_kernel_set();
    let mut group = c.benchmark_group("decode_step_projections");
    for (format, bytes_per_weight) in [
        ("q4_k", 144.0 / 256.0),
        ("q4_k_x8", 148.0 / 256.0),
        ("q5_k", 176.0 / 256.0),
        ("q5_k_x8", 180.0 / 256.0),
        ("q6_k", 210.0 / 256.0),
        ("q6_k_x8", 210.0 / 256.0),
        ("q8_0", 34.0 / 32.0),
        ("f16", 2.0),
        ("bf16", 2.0),
        ("f32", 4.0),
    ] {
        // [layer][group][matrix]
        let mut dense: Vec<Vec<Vec<Tensor>>> = Vec::new();
        let mut quant: Vec<Vec<Vec<QTensor>>> = Vec::new();
        for layer in 0..LAYERS {
            let mut dl = Vec::new();
            let mut ql = Vec::new();
            for (g, mats) in GROUPS.iter().enumerate() {
                let ws: Vec<Tensor> = mats
                    .iter()
                    .enumerate()
                    .map(|(i, &(n, k))| weight(n, k, (layer * 16 + g * 4 + i) as u64))
                    .collect();
                let block_format = match format {
                    "q4_k" | "q4_k_x8" => Some(GgmlDType::Q4K),
                    "q5_k" | "q5_k_x8" => Some(GgmlDType::Q5K),
                    "q6_k" | "q6_k_x8" => Some(GgmlDType::Q6K),
                    "q8_0" => Some(GgmlDType::Q8_0),
                    _ => None,
                };
                match format {
                    _ if block_format.is_some() => {
                        let dtype = block_format.unwrap_or(GgmlDType::Q8_0);
                        ql.push(
                            ws.iter()
                                .map(|w| QTensor::quantize(w, dtype).unwrap())
                                .collect(),
                        );
                        dl.push(Vec::new());
                    }
                    "f16" => dl.push(ws.iter().map(|w| w.to_dtype(DType::F16).unwrap()).collect()),
                    "bf16" => dl.push(
                        ws.iter()
                            .map(|w| w.to_dtype(DType::BF16).unwrap())
                            .collect(),
                    ),
                    _ => dl.push(ws),
                }
            }
            dense.push(dl);
            quant.push(ql);
        }
        let packed: Vec<Vec<Vec<Interleaved>>> = quant
            .iter()
            .map(|layer| {
                layer
                    .iter()
                    .map(|mats| {
                        mats.iter()
                            .filter(|_| format.ends_with("_x8"))
                            .map(interleaved)
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let steps: Vec<Vec<Weight<'_>>> = (0..LAYERS)
            .flat_map(|l| {
                let (dense, quant, packed) = (&dense, &quant, &packed);
                (0..GROUPS.len()).map(move |g| {
                    if packed[l].get(g).is_some_and(|p| !p.is_empty()) {
                        packed[l][g].iter().map(Weight::Interleaved).collect()
                    } else if quant[l].get(g).is_some_and(|q| !q.is_empty()) {
                        quant[l][g].iter().map(Weight::Quantized).collect()
                    } else {
                        dense[l][g].iter().map(Weight::Dense).collect()
                    }
                })
            })
            .collect();
        let row = |k: usize| {
            Tensor::from_vec(
                (0..k)
                    .map(|i| ((i as f32) * 0.37).sin())
                    .collect::<Vec<f32>>(),
                (1, 1, k),
                &Device::Cpu,
            )
            .unwrap()
        };
        let (x_hidden, x_inter) = (row(HIDDEN), row(INTERMEDIATE));
        let elems: usize = GROUPS
            .iter()
            .flat_map(|g| g.iter())
            .map(|(n, k)| n * k)
            .sum::<usize>()
            * LAYERS;
        group.throughput(Throughput::Bytes((elems as f64 * bytes_per_weight) as u64));
        // On the pages the engine gives its weights after loading (`VLMBENCH_HUGE_PAGES=off`:
        // the kernel's default ones, as the engine then keeps them).
        vlmbench::memory::huge_pages::collapse_large_buffers();
        group.bench_function(format, |b| {
            b.iter_custom(|iters| {
                time_on_pool(iters, || {
                    for (i, weights) in steps.iter().enumerate() {
                        let x = if i % 3 == 2 { &x_inter } else { &x_hidden };
                        black_box(matvec_many(x, weights).unwrap().expect("kernel applies"));
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500));
    targets = kernels
}
criterion_main!(benches);
