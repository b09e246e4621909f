//! Decode attention of the 181 M reference Llama (16 query heads on 4 key/value heads of 64,
//! 16 layers) at 128 and 2,048 cached positions, with the f32 and the f16 KV cache. Why: the
//! growth of the time between tokens with context is this kernel's; the figure is KV-cache
//! bytes read per second, to set beside the machine's read bandwidth and the weight-streaming
//! kernels of `decode_kernels`.
//!
//! `cargo bench --bench decode_attention` (threads: `RAYON_NUM_THREADS`, default all cores).

mod common;

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use common::{announce_kernel_set, time_on_pool};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vlmbench::models::gemv::decode_attention_window;

const LAYERS: usize = 16;
const HEADS: usize = 16;
const KV_HEADS: usize = 4;
const HEAD_DIM: usize = 64;

fn attention(c: &mut Criterion) {
    announce_kernel_set();
    let mut group = c.benchmark_group("decode_attention");
    for (cache, dtype) in [("f32", DType::F32), ("f16", DType::F16)] {
        for context in [128usize, 2048] {
            // Every layer its own cache, so a long context's rows stream from memory as in a
            // real step rather than staying in the last-level cache.
            let caches: Vec<(Tensor, Tensor)> = (0..LAYERS)
                .map(|_| {
                    let kv = || {
                        Tensor::randn(0f32, 1.0, (1, KV_HEADS, context, HEAD_DIM), &Device::Cpu)
                            .and_then(|t| t.to_dtype(dtype))
                            .unwrap()
                    };
                    (kv(), kv())
                })
                .collect();
            // On the pages the engine gives its cache (`VLMBENCH_HUGE_PAGES=off`: 4 KiB ones).
            vlmbench::memory::huge_pages::collapse_large_buffers();
            let q: Vec<f32> = (0..HEADS * HEAD_DIM)
                .map(|i| ((i as f32) * 0.37).sin())
                .collect();
            let bytes = 2 * LAYERS * KV_HEADS * context * HEAD_DIM * dtype.size_in_bytes();
            group.throughput(Throughput::Bytes(bytes as u64));
            group.bench_function(format!("{cache}_cache/{context}"), |b| {
                b.iter_custom(|iters| {
                    time_on_pool(iters, || {
                        for (k, v) in &caches {
                            let out =
                                decode_attention_window(&q, HEADS, k, v, 0..context, 0.125, None);
                            black_box(out.unwrap().expect("the kernel applies"));
                        }
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500));
    targets = attention
}
criterion_main!(benches);
