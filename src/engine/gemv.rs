//! Matrix × vector for CPU decode steps: one token's activations times a dense weight.
//!
//! Why: a decode step multiplies a single row by every weight matrix, so it is bound by how
//! fast the weights stream from memory. candle's general matmul handles this shape at about
//! 60 % of the bandwidth a plain row-parallel dot product reaches on the same cores (measured
//! 8.3 vs 13.9 GB/s for a 2816×1024 f32 matrix on 2 threads). Here each output is the dot
//! product of the activations with one contiguous weight row, rows split across the rayon
//! pool (which `--threads` sizes), and f16 / bf16 weights are widened to f32 in registers, so
//! half-precision models read half the bytes. AVX2+FMA(+F16C) kernels are chosen at run time;
//! other CPUs get the portable loop.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

/// Output rows per rayon task: big enough to amortise scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 16;

/// `x · wᵀ` for `x` of one row (`(1, 1, k)` or `(1, k)`) and a contiguous CPU weight `(n, k)` in
/// f32, f16 or bf16; `None` when the operands do not have that shape (the caller then uses
/// candle's matmul).
pub fn matvec(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !matches!(w.device(), Device::Cpu) || x.elem_count() == 0 {
        return Ok(None);
    }
    let Ok((n, k)) = w.dims2() else {
        return Ok(None);
    };
    if x.elem_count() != k || !w.is_contiguous() {
        return Ok(None);
    }
    let xs: Vec<f32> = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let offset = layout.start_offset();
    let mut out = vec![0f32; n];
    match cpu {
        CpuStorage::F32(data) => run(&xs, &data[offset..offset + n * k], &mut out, dot_f32),
        CpuStorage::F16(data) => run(&xs, &data[offset..offset + n * k], &mut out, dot_f16),
        CpuStorage::BF16(data) => run(&xs, &data[offset..offset + n * k], &mut out, dot_bf16),
        _ => return Ok(None),
    }
    drop(storage);
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Ok(Some(
        Tensor::from_vec(out, shape, &Device::Cpu)?.to_dtype(x.dtype())?,
    ))
}

/// llama.cpp's Q8_0: blocks of 32 weights, an f16 scale then 32 signed bytes.
const Q8_0_BLOCK: usize = 32;
const Q8_0_BYTES: usize = 34;

/// `x · wᵀ` for a Q8_0 weight of `n` rows × `k` columns stored as llama.cpp lays it out;
/// `None` when `k` is not a whole number of blocks or the data is short.
pub fn matvec_q8_0(
    x: &Tensor,
    data: &[u8],
    n: usize,
    k: usize,
) -> candle_core::Result<Option<Tensor>> {
    if k % Q8_0_BLOCK != 0 || x.elem_count() != k || data.len() < n * k / Q8_0_BLOCK * Q8_0_BYTES {
        return Ok(None);
    }
    let xs: Vec<f32> = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    // The activations are quantised to Q8_0 too, as llama.cpp and candle do: the block dot
    // products then run on 8-bit integers.
    let xq = QuantizedRow::new(&xs);
    let row_bytes = k / Q8_0_BLOCK * Q8_0_BYTES;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(chunk, rows)| {
            for (i, o) in rows.iter_mut().enumerate() {
                let r = chunk * ROWS_PER_TASK + i;
                *o = dot_q8_0(&xq, &data[r * row_bytes..(r + 1) * row_bytes]);
            }
        });
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Ok(Some(
        Tensor::from_vec(out, shape, &Device::Cpu)?.to_dtype(x.dtype())?,
    ))
}

/// A row of activations in Q8_0: per block of 32, a scale (rounded to f16 as stored) and
/// `round(x / scale)`.
struct QuantizedRow {
    scales: Vec<f32>,
    quants: Vec<i8>,
}

impl QuantizedRow {
    fn new(x: &[f32]) -> Self {
        let mut scales = Vec::with_capacity(x.len() / Q8_0_BLOCK);
        let mut quants = Vec::with_capacity(x.len());
        for block in x.chunks_exact(Q8_0_BLOCK) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
            scales.push(half::f16::from_f32(d).to_f32());
            quants.extend(block.iter().map(|v| (v * inv).round() as i8));
        }
        Self { scales, quants }
    }
}

fn dot_q8_0(x: &QuantizedRow, row: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { x86::dot_q8_0(&x.scales, &x.quants, row) };
    }
    row.chunks_exact(Q8_0_BYTES)
        .enumerate()
        .map(|(b, block)| {
            let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
            let xq = &x.quants[b * Q8_0_BLOCK..(b + 1) * Q8_0_BLOCK];
            let s: i32 = block[2..]
                .iter()
                .zip(xq)
                .map(|(&q, &v)| i32::from(q as i8) * i32::from(v))
                .sum();
            d * x.scales[b] * s as f32
        })
        .sum()
}

/// Attention of one new token on the CPU, straight from the f32 KV-cache buffers:
/// `q` is `(1, heads, 1, head_dim)`, the caches `(1, kv_heads, capacity, head_dim)` with the
/// first `total` positions filled. Returns `(1, 1, heads × head_dim)`; `None` when the operands
/// are not f32 CPU tensors of those shapes.
///
/// Why: for a single query row the generic path is a dozen small tensor operations per layer
/// (transposes, two batched matmuls, scale, softmax, dtype casts), each allocating; here it is
/// one pass per head, with grouped-query heads reading their shared key/value head in place.
pub fn decode_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    total: usize,
    scale: f32,
) -> candle_core::Result<Option<Tensor>> {
    let cpu_f32 = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
    if !(cpu_f32(q) && cpu_f32(k_cache) && cpu_f32(v_cache))
        || !k_cache.is_contiguous()
        || !v_cache.is_contiguous()
    {
        return Ok(None);
    }
    let (_, heads, rows, hd) = q.dims4()?;
    let (_, kv_heads, capacity, khd) = k_cache.dims4()?;
    if rows != 1 || khd != hd || kv_heads == 0 || heads % kv_heads != 0 || total > capacity {
        return Ok(None);
    }
    let groups = heads / kv_heads;
    let qs: Vec<f32> = q.flatten_all()?.to_vec1()?;
    let (k_store, k_layout) = k_cache.storage_and_layout();
    let (v_store, v_layout) = v_cache.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(kd)), Storage::Cpu(CpuStorage::F32(vd))) =
        (&*k_store, &*v_store)
    else {
        return Ok(None);
    };
    let kd = &kd[k_layout.start_offset()..];
    let vd = &vd[v_layout.start_offset()..];
    let mut out = vec![0f32; heads * hd];
    out.par_chunks_mut(hd).enumerate().for_each(|(h, o)| {
        let kv = h / groups;
        let qh = &qs[h * hd..(h + 1) * hd];
        let base = kv * capacity * hd;
        let mut scores: Vec<f32> = (0..total)
            .map(|p| dot_f32(qh, &kd[base + p * hd..base + (p + 1) * hd]) * scale)
            .collect();
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for (p, &w) in scores.iter().enumerate() {
            let row = &vd[base + p * hd..base + (p + 1) * hd];
            for (acc, v) in o.iter_mut().zip(row) {
                *acc += w * v;
            }
        }
        for acc in o.iter_mut() {
            *acc /= sum;
        }
    });
    drop((k_store, v_store));
    Ok(Some(Tensor::from_vec(
        out,
        (1, 1, heads * hd),
        &Device::Cpu,
    )?))
}

fn run<W: Sync>(x: &[f32], w: &[W], out: &mut [f32], dot: fn(&[f32], &[W]) -> f32) {
    let k = x.len();
    out.par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(chunk, rows)| {
            for (i, o) in rows.iter_mut().enumerate() {
                let r = chunk * ROWS_PER_TASK + i;
                *o = dot(x, &w[r * k..(r + 1) * k]);
            }
        });
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// Sixteen independent partial sums: lets the compiler keep two vector registers of
/// accumulators busy instead of one serial chain.
#[inline(always)]
fn dot_generic<W: Copy>(x: &[f32], w: &[W], widen: impl Fn(W) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let body = x.len() / LANES * LANES;
    for (xc, wc) in x[..body]
        .chunks_exact(LANES)
        .zip(w[..body].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] += xc[l] * widen(wc[l]);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (a, b) in x[body..].iter().zip(&w[body..]) {
        sum += a * widen(*b);
    }
    sum
}

fn dot_f32(x: &[f32], w: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { x86::dot_f32(x, w) };
    }
    dot_generic(x, w, |v| v)
}

fn dot_f16(x: &[f32], w: &[half::f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as above.
        return unsafe { x86::dot_f16(x, w) };
    }
    dot_generic(x, w, half::f16::to_f32)
}

fn dot_bf16(x: &[f32], w: &[half::bf16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as above.
        return unsafe { x86::dot_bf16(x, w) };
    }
    dot_generic(x, w, half::bf16::to_f32)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(v, 1);
        let lo = _mm256_castps256_ps128(v);
        let s = _mm_add_ps(hi, lo);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Two accumulators of 8 lanes, 16 elements per iteration; unaligned loads.
    macro_rules! kernel {
        ($name:ident, $w:ty, $load:expr, $widen:expr) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name(x: &[f32], w: &[$w]) -> f32 {
                let n = x.len().min(w.len());
                let body = n / 16 * 16;
                let (xp, wp) = (x.as_ptr(), w.as_ptr());
                let mut a0 = _mm256_setzero_ps();
                let mut a1 = _mm256_setzero_ps();
                let mut i = 0;
                while i < body {
                    let load = $load;
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), load(wp.add(i)), a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i + 8)), load(wp.add(i + 8)), a1);
                    i += 16;
                }
                let mut sum = hsum(_mm256_add_ps(a0, a1));
                let widen = $widen;
                while i < n {
                    sum += *xp.add(i) * widen(*wp.add(i));
                    i += 1;
                }
                sum
            }
        };
    }

    /// One Q8_0 row against Q8_0 activations: per block, 32 byte products summed in integers
    /// (`maddubs` needs an unsigned operand: |w| times x with w's sign), then scaled.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0(xs: &[f32], xq: &[i8], row: &[u8]) -> f32 {
        let blocks = row.len() / 34;
        let rp = row.as_ptr();
        let ones = _mm256_set1_epi16(1);
        let mut total = _mm256_setzero_ps();
        for b in 0..blocks {
            let block = rp.add(b * 34);
            let d = half::f16::from_le_bytes([*block, *block.add(1)]).to_f32() * xs[b];
            let w = _mm256_loadu_si256(block.add(2) as *const __m256i);
            let x = _mm256_loadu_si256(xq.as_ptr().add(b * 32) as *const __m256i);
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            total = _mm256_fmadd_ps(_mm256_set1_ps(d), sums, total);
        }
        hsum(total)
    }

    kernel!(dot_f32, f32, |p: *const f32| _mm256_loadu_ps(p), |v: f32| v);
    kernel!(
        dot_f16,
        half::f16,
        |p: *const half::f16| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
        half::f16::to_f32
    );
    kernel!(
        dot_bf16,
        half::bf16,
        |p: *const half::bf16| {
            let raw = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16))
        },
        half::bf16::to_f32
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &Tensor, w: &Tensor) -> Vec<f32> {
        x.to_dtype(DType::F32)
            .unwrap()
            .reshape((1, ()))
            .unwrap()
            .matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn matches_candle_for_every_dtype_and_odd_sizes() {
        for (n, k) in [(37usize, 70usize), (64, 1024), (3, 5)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, 1, k), &Device::Cpu).unwrap();
            for dt in [DType::F32, DType::F16, DType::BF16] {
                let (wd, xd) = (w.to_dtype(dt).unwrap(), x.to_dtype(dt).unwrap());
                let got = matvec(&xd, &wd)
                    .unwrap()
                    .expect("a CPU row and a 2-D weight");
                assert_eq!(got.dims(), &[1, 1, n]);
                assert_eq!(got.dtype(), dt);
                let got: Vec<f32> = got
                    .to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                // The reference sees the same rounded inputs (x in dt, widened to f32).
                let want = reference(&xd.to_dtype(DType::F32).unwrap(), &wd);
                let tol = if dt == DType::F32 { 1e-4 } else { 0.1 };
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= tol * (1.0 + b.abs()),
                        "{dt:?} {n}x{k}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn q8_0_matches_candle_dequantised() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let (n, k) = (19usize, 96usize);
        // Deterministic values of mixed sign and size.
        let wv: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 5) as f32))
            .collect();
        let xv: Vec<f32> = (0..k)
            .map(|i| ((i as f32) * 0.37).sin() * (1.0 + (i % 3) as f32))
            .collect();
        let w = Tensor::from_vec(wv, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let x = Tensor::from_vec(xv.clone(), (1, 1, k), &Device::Cpu).unwrap();
        let data = q.data().unwrap().into_owned();
        let got: Vec<f32> = matvec_q8_0(&x, &data, n, k)
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(matvec_q8_0(&x, &data, n, k + 1).unwrap().is_none());
        // Within the activations' quantisation error of the exact product with the dequantised
        // weights: each x moves by at most half a step (amax / 127) plus its f16-rounded scale.
        let deq = q.dequantize(&Device::Cpu).unwrap();
        let exact = reference(&x, &deq);
        let wd: Vec<Vec<f32>> = deq.to_vec2().unwrap();
        for (r, (a, b)) in got.iter().zip(&exact).enumerate() {
            let bound: f32 = (0..k)
                .map(|i| {
                    let block = &xv[i / 32 * 32..i / 32 * 32 + 32];
                    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                    wd[r][i].abs() * (amax / 127.0 / 2.0 + amax / 2048.0)
                })
                .sum();
            assert!(
                (a - b).abs() <= bound * 1.01 + 1e-5,
                "row {r}: {a} vs {b} (bound {bound})"
            );
        }
        // ...and equal, up to summation order, to candle's Q8_0 matmul, which also quantises
        // the activations.
        use candle_core::Module;
        let candle = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
        let want: Vec<f32> = candle
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn decode_attention_matches_the_tensor_formula() {
        let (heads, kv_heads, cap, hd, total) = (8usize, 2usize, 16usize, 8usize, 11usize);
        let q = Tensor::randn(0f32, 1.0, (1, heads, 1, hd), &Device::Cpu).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, kv_heads, cap, hd), &Device::Cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, kv_heads, cap, hd), &Device::Cpu).unwrap();
        let scale = 1.0 / (hd as f32).sqrt();
        let got = decode_attention(&q, &k, &v, total, scale).unwrap().unwrap();
        assert_eq!(got.dims(), &[1, 1, heads * hd]);
        let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        // softmax(q kᵀ · scale) v per head, each query head on its group's key/value head.
        let groups = heads / kv_heads;
        for h in 0..heads {
            let kv = h / groups;
            let qh = q.get(0).unwrap().get(h).unwrap(); // (1, hd)
            let kh = k
                .get(0)
                .unwrap()
                .get(kv)
                .unwrap()
                .narrow(0, 0, total)
                .unwrap();
            let vh = v
                .get(0)
                .unwrap()
                .get(kv)
                .unwrap()
                .narrow(0, 0, total)
                .unwrap();
            let scores = (qh.matmul(&kh.t().unwrap()).unwrap() * f64::from(scale)).unwrap();
            let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            let want: Vec<f32> = probs
                .matmul(&vh)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (a, b) in got[h * hd..(h + 1) * hd].iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "head {h}: {a} vs {b}");
            }
        }
        let f16 = q.to_dtype(DType::F16).unwrap();
        assert!(decode_attention(&f16, &k, &v, total, scale)
            .unwrap()
            .is_none());
        assert!(decode_attention(&q, &k, &v, cap + 1, scale)
            .unwrap()
            .is_none());
    }

    #[test]
    fn declines_shapes_it_does_not_handle() {
        let w = Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap();
        let two_rows = Tensor::zeros((2, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(matvec(&two_rows, &w).unwrap().is_none());
        let transposed = Tensor::zeros((8, 4), DType::F32, &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        let x = Tensor::zeros((1, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(matvec(&x, &transposed).unwrap().is_none());
    }
}
