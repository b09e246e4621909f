//! What the CPU kernel benches share: the 181 M reference Llama's projection sizes, its
//! stand-in weights and the line naming the kernel set a run measured.
// Each bench is its own crate and uses a part of this.
#![allow(dead_code)]

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use vlmbench::models::kernels;
use vlmbench::models::kquants::rows8::Interleaved;
use vlmbench::models::kquants::QuantFormat;

pub const HIDDEN: usize = 1024;
pub const INTERMEDIATE: usize = 2816;
/// Key/value width: 4 of the 16 heads of 64.
pub const KV: usize = 256;

/// An `(n, k)` f32 weight. Weight values do not change the time; fixed pseudo-random ones keep
/// it honest anyway.
pub fn weight(n: usize, k: usize, seed: u64) -> Tensor {
    let v: Vec<f32> = (0..n * k)
        .map(|i| {
            (((i as u64).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 - 1000.0)
                / 30000.0
        })
        .collect();
    Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap()
}

/// Prints the kernel set the run measures and the CPU features it was chosen from.
pub fn announce_kernel_set() {
    eprintln!(
        "kernel set: {} (features {:?})",
        kernels::KernelSet::active().name(),
        kernels::detected_features()
    );
}

/// A K-quant weight repacked eight rows at a time, as the engine loads it.
pub fn interleaved(q: &QTensor) -> Interleaved {
    let (n, k) = q.shape().dims2().unwrap();
    let format = QuantFormat::from_ggml(q.dtype()).unwrap();
    Interleaved::repack(format, &q.data().unwrap(), n, k).unwrap()
}

/// Time of `iters` calls of `step`, run on a worker of the rayon pool as the engine's decode
/// steps run (see `prefill_and_decode`): for `Bencher::iter_custom`.
pub fn time_on_pool(iters: u64, mut step: impl FnMut() + Send) -> std::time::Duration {
    rayon::scope(|_| {
        let start = std::time::Instant::now();
        for _ in 0..iters {
            step();
        }
        start.elapsed()
    })
}
