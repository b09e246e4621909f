//! Prefill products on the CPU: many rows of activations times a weight in any format the
//! decode kernels read (f32, f16, bf16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K).
//!
//! Why: widening a whole half-precision or quantised weight to f32 before the GEMM writes and
//! re-reads four bytes per weight through memory (for the 181 M reference model, 700 MB per
//! prompt), which cost a third of a 128-token prefill. Here the weight's rows are widened a tile
//! at a time into a buffer that stays in the core's cache, tiles spread over the rayon pool that
//! `--threads` sizes. Under the AVX2 set the tiles are packed panels multiplied by
//! `panel_gemm`'s kernel (f16 / bf16 rows widen straight into the panel); under the others
//! they run through the `gemm` crate's f32 kernels (its AVX-512 ones where the CPU has them).
//! Interleaved K-quant rows multiply in 8-bit integers on Q8_K activations, and bf16 weights
//! go to AMX tiles where the CPU and OS offer them (`amx`).

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::gemv::{Rows, Weight};
use super::kernels::{KernelSet, SendPtr};
use super::kquants::Q8KRow;
use super::panel_gemm::{self, widen};

/// Widened weight bytes per tile: well inside a core's L2 (1–2 MiB on current x86 parts).
const TILE_BYTES: usize = 512 * 1024;

/// `x · wᵀ` for `x` of `(batch, seq, k)` f32 on the CPU and a weight of `(n, k)`, as
/// `(batch, seq, n)` f32; `None` when an operand is not of a layout this reads (the caller
/// then uses candle's matmul).
pub fn matmul(x: &Tensor, w: Weight<'_>) -> candle_core::Result<Option<Tensor>> {
    if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let Ok((b, s, _)) = x.dims3() else {
        return Ok(None);
    };
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let Some(out) = product_rows(&xs, b * s, w)? else {
        return Ok(None);
    };
    let n = out.len() / (b * s);
    Ok(Some(Tensor::from_vec(out, (b, s, n), &Device::Cpu)?))
}

/// [`matmul`] on `m` rows of activations already in a slice (`xs` `(m, k)` row-major), as an
/// `(m, n)` row-major vector: what a caller that goes on in plain slices uses, to skip the
/// copies in and out of tensors. `None` as for [`matmul`].
pub fn product_rows(xs: &[f32], m: usize, w: Weight<'_>) -> candle_core::Result<Option<Vec<f32>>> {
    let Some(((n, k), held)) = w.hold()? else {
        return Ok(None);
    };
    let Some(rows) = held.rows(n, k) else {
        return Ok(None);
    };
    if m == 0 || k == 0 || n == 0 || xs.len() != m * k {
        return Ok(None);
    }
    // bf16 weights on AMX tiles where the CPU and OS offer them (the f32 activations split in
    // two bf16 terms, see `amx`).
    #[cfg(target_arch = "x86_64")]
    if let Rows::BF16(w) = rows {
        if let Some(out) = super::amx::matmul_bf16(xs, m, k, w, n) {
            drop(held);
            return Ok(Some(out));
        }
    }
    // Interleaved K-quant rows: 8-bit products on activations quantised to Q8_K.
    if let Rows::Interleaved(w) = rows {
        let quantised: Vec<Q8KRow> = xs.par_chunks(k).map(Q8KRow::new).collect();
        return Ok(Some(w.product(&quantised)));
    }
    let out = product(xs, m, k, n, rows, rayon::current_num_threads());
    drop(held);
    Ok(Some(out))
}

/// The tiled product of [`matmul`] on plain slices: `xs` is `(m, k)` row-major; returns
/// `(m, n)` row-major.
pub(super) fn product(
    xs: &[f32],
    m: usize,
    k: usize,
    n: usize,
    rows: Rows<'_>,
    threads: usize,
) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if KernelSet::active() == KernelSet::Avx2 {
        return panel_gemm::product(xs, m, k, n, rows, true);
    }
    let mut out = vec![0f32; m * n];
    // Rows per tile: as many as fit the tile budget, a multiple of 16, and small enough that
    // every thread gets at least one tile.
    let by_cache = (TILE_BYTES / (4 * k)).max(16) / 16 * 16;
    let per_thread = n.div_ceil(threads.max(1)).div_ceil(16) * 16;
    let tile = by_cache.min(per_thread).max(16);
    let dst = SendPtr(out.as_mut_ptr());
    (0..n.div_ceil(tile))
        .into_par_iter()
        .for_each_init(Vec::<f32>::new, |buf, t| {
            let (first, last) = (t * tile, ((t + 1) * tile).min(n));
            let count = last - first;
            let weights: &[f32] = match rows {
                Rows::F32(w) => &w[first * k..last * k],
                other => {
                    buf.resize(count * k, 0.0);
                    widen(other, k, first, last, buf);
                    buf
                }
            };
            // SAFETY: `dst` is `out`, `(m, n)` row-major, alive for the whole parallel loop;
            // this task writes only columns `first..last`, which no other task touches.
            unsafe { gemm_crate_product(xs, weights, true, (m, count, k), dst.at(first), n) }
        });
    out
}

/// `dst = a · b` for `a` `(m, k)` and `b` `(k, n)`, both row-major (`b_transposed`: `b` given
/// as its transpose, `(n, k)` row-major), on the calling thread with the `gemm` crate's kernels
/// (its AVX-512 ones where the CPU has them); row `i` of the result starts at `dst + i · ldd`.
///
/// Safety: `dst` is writable at `i · ldd + j` for `i < m`, `j < n`, and nothing else reads or
/// writes those values meanwhile.
pub(super) unsafe fn gemm_crate_product(
    a: &[f32],
    b: &[f32],
    b_transposed: bool,
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ldd: usize,
) {
    assert!(a.len() >= m * k && b.len() >= k * n, "operand sizes");
    let (b_col_stride, b_row_stride) = if b_transposed { (k, 1) } else { (1, n) };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ldd as isize,
        false,
        a.as_ptr(),
        1,
        k as isize,
        b.as_ptr(),
        b_col_stride as isize,
        b_row_stride as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// The `(m, k, n)` of [`gemm_rate`]: a 256-token prompt through a 2048 × 2048 projection, the
/// shape of a small model's prefill (2.1 GFLOP, enough for the kernels' full speed).
pub const GEMM_PROBE: [usize; 3] = [256, 2048, 2048];

/// FLOP/s of an f32 weight product of [`GEMM_PROBE`]'s shape run by [`product`] on the
/// current rayon pool (the prefill's own path, with f32 weights so no widening is timed):
/// the best of 3 after a warm-up. The ceiling prefill's arithmetic is measured against.
pub fn gemm_rate() -> (f64, [usize; 3]) {
    let [m, k, n] = GEMM_PROBE;
    let xs: Vec<f32> = (0..m * k)
        .map(|i| ((i % 251) as f32 - 125.0) / 256.0)
        .collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i % 241) as f32 - 120.0) / 512.0)
        .collect();
    let threads = rayon::current_num_threads();
    let mut best = f64::INFINITY;
    for pass in 0..4 {
        let start = std::time::Instant::now();
        let out = product(&xs, m, k, n, Rows::F32(&w), threads);
        std::hint::black_box(out);
        if pass > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    ((2 * m * k * n) as f64 / best, GEMM_PROBE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gemm_probe_gives_a_plausible_rate() {
        let (rate, shape) = gemm_rate();
        eprintln!("RATE {rate:e}");
        assert_eq!(shape, GEMM_PROBE);
        // Between 0.1 GFLOP/s and 100 TFLOP/s on any machine that runs the tests.
        assert!(rate > 1e8 && rate < 1e14, "{rate}");
    }
    use candle_core::quantized::{GgmlDType, QTensor};

    fn reference(x: &Tensor, w: &Tensor) -> Vec<f32> {
        let (b, s, k) = x.dims3().unwrap();
        x.reshape((b * s, k))
            .unwrap()
            .matmul(&w.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{what} [{i}]: {a} vs {b}"
            );
        }
    }

    /// Within a bound derived from the product's magnitude, `sum |x||w|` per output: a
    /// reordered or two-term-bf16 (AMX) sum errs relative to that, not to the result, which
    /// cancellation can make arbitrarily small.
    fn close_to_product(got: &[f32], x: &Tensor, w: &Tensor, what: &str) {
        let want = reference(x, w);
        let mag = reference(&x.abs().unwrap(), &w.abs().unwrap());
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, ((a, b), m)) in got.iter().zip(&want).zip(&mag).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + m),
                "{what} [{i}]: {a} vs {b} (magnitude {m})"
            );
        }
    }

    #[test]
    fn every_format_equals_the_f32_product_of_its_widened_weight() {
        // Odd row counts (a partial last tile), a k of several K-quant blocks.
        let (m, n, k) = (7usize, 53usize, 512usize);
        let x = Tensor::randn(0f32, 1.0, (1, m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let wd = w.to_dtype(dt).unwrap();
            let got = matmul(&x, Weight::Dense(&wd)).unwrap().unwrap();
            assert_eq!(got.dims(), &[1, m, n]);
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            close_to_product(
                &got,
                &x,
                &wd.to_dtype(DType::F32).unwrap(),
                &format!("{dt:?}"),
            );
        }
        for q in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let qt = QTensor::quantize(&w, q).unwrap();
            let got = matmul(&x, Weight::Quantized(&qt)).unwrap().unwrap();
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            close_to_product(
                &got,
                &x,
                &qt.dequantize(&Device::Cpu).unwrap(),
                &format!("{q:?}"),
            );
        }
    }

    #[test]
    fn tiles_cover_every_column_for_any_thread_count() {
        let (m, n, k) = (3usize, 37usize, 40usize);
        let xs: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: Vec<f32> = (0..m * n)
            .map(|o| {
                let (i, j) = (o / n, o % n);
                (0..k).map(|p| xs[i * k + p] * w[j * k + p]).sum()
            })
            .collect();
        for threads in [1, 2, 3, 64] {
            let got = product(&xs, m, k, n, Rows::F32(&w), threads);
            close(&got, &want, &format!("{threads} threads"));
        }
    }

    #[test]
    fn declines_what_it_does_not_read() {
        let w = Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap();
        let x16 = Tensor::zeros((1, 2, 8), DType::F16, &Device::Cpu).unwrap();
        assert!(matmul(&x16, Weight::Dense(&w)).unwrap().is_none());
        let wide = Tensor::zeros((1, 2, 9), DType::F32, &Device::Cpu).unwrap();
        assert!(matmul(&wide, Weight::Dense(&w)).unwrap().is_none());
    }
}
