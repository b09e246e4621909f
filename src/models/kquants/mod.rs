//! llama.cpp's Q4_0 and K-quant (Q4_K, Q5_K, Q6_K) weight blocks for the CPU kernels: the
//! row · activations dot products of decode steps and the widening of rows for prefill.
//!
//! Why here: candle multiplies these formats one weight at a time, so a decode step of a
//! Q4_K_M file (Q4_K and Q6_K tensors) could not use the fused multi-weight passes of
//! `gemv::matvec_many`. As in llama.cpp, the activations are quantised once per pass:
//! to Q8_0 (blocks of 32) for Q4_0, to Q8_K (blocks of 256 with sums of 16) for the K-quants,
//! and each block's dot product runs on 8-bit integers.
//!
//! Block layouts (as llama.cpp's `ggml-common.h` defines them, little-endian):
//! - Q4_0, 32 weights in 18 bytes: f16 scale `d`, 16 bytes of nibbles; weight `j < 16` is the
//!   low nibble of byte `j`, weight `j + 16` its high nibble; value `d · (q − 8)`.
//! - Q4_K, 256 weights in 144 bytes: f16 `d`, f16 `dmin`, 12 bytes of 6-bit sub-block scales
//!   and mins (8 sub-blocks of 32), 128 bytes of nibbles; 64 weights per 32 bytes (low nibbles
//!   the first sub-block, high nibbles the second); value `d · sc · q − dmin · m`.
//! - Q5_K, 176 bytes: as Q4_K with 32 bytes of high bits after the scales: bit `j` of byte `l`
//!   is the fifth bit of weight `32 j + l`.
//! - Q6_K, 210 bytes: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 signed 8-bit
//!   scales (one per 16 weights), f16 `d`; value `d · sc · (q − 32)`.

use candle_core::quantized::GgmlDType;

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod rows8;

use super::kernels::KernelSet;

/// Weights per K-quant super-block (llama.cpp's `QK_K`).
pub const QK_K: usize = 256;

/// The llama.cpp block formats the CPU kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    Q8_0,
    Q4_0,
    Q4K,
    Q5K,
    Q6K,
}

impl QuantFormat {
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        Some(match dtype {
            GgmlDType::Q8_0 => QuantFormat::Q8_0,
            GgmlDType::Q4_0 => QuantFormat::Q4_0,
            GgmlDType::Q4K => QuantFormat::Q4K,
            GgmlDType::Q5K => QuantFormat::Q5K,
            GgmlDType::Q6K => QuantFormat::Q6K,
            _ => return None,
        })
    }

    /// Weights per block.
    pub fn block_len(self) -> usize {
        match self {
            QuantFormat::Q8_0 | QuantFormat::Q4_0 => 32,
            _ => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4K => 144,
            QuantFormat::Q5K => 176,
            QuantFormat::Q6K => 210,
        }
    }

    /// Whether the activations it multiplies are quantised to Q8_K (otherwise Q8_0).
    pub fn wants_q8k(self) -> bool {
        matches!(self, QuantFormat::Q4K | QuantFormat::Q5K | QuantFormat::Q6K)
    }
}

/// A row of activations in Q8_K: per block of 256, a scale `d`, 256 quants `round(x / d)` and
/// the sums of each 16 quants (the K-quants subtract their minimums through those sums).
/// `d = max / −127` for the value of largest magnitude `max`, as llama.cpp and candle quantise.
pub struct Q8KRow {
    pub d: Vec<f32>,
    pub qs: Vec<i8>,
    pub bsums: Vec<i16>,
}

impl Q8KRow {
    /// `x.len()` must be a multiple of 256 (checked by the callers; trailing values are
    /// ignored otherwise).
    pub fn new(x: &[f32]) -> Self {
        let blocks = x.len() / QK_K;
        let mut out = Q8KRow {
            d: vec![0.0; blocks],
            qs: vec![0; blocks * QK_K],
            bsums: vec![0; blocks * QK_K / 16],
        };
        for (b, xs) in x.chunks_exact(QK_K).enumerate() {
            let Some(max) = signed_absmax(xs) else {
                continue;
            };
            let iscale = -127.0 / max;
            let qs = &mut out.qs[b * QK_K..(b + 1) * QK_K];
            quantize_q8k_block(iscale, xs, qs);
            for (s, group) in out.bsums[b * 16..(b + 1) * 16]
                .iter_mut()
                .zip(qs.chunks_exact(16))
            {
                *s = group.iter().map(|&q| i16::from(q)).sum();
            }
            out.d[b] = 1.0 / iscale;
        }
        out
    }
}

/// The first value of largest magnitude (NaNs ignored); `None` when all are zero.
fn signed_absmax(xs: &[f32]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if KernelSet::active() >= KernelSet::Avx2 && xs.len().is_multiple_of(8) {
        // SAFETY: the CPU has the AVX2 set; whole vectors of `xs` only.
        let amax = unsafe { x86::absmax(xs) };
        return (amax > 0.0)
            .then(|| xs.iter().copied().find(|v| v.abs() == amax))
            .flatten();
    }
    signed_absmax_portable(xs)
}

fn signed_absmax_portable(xs: &[f32]) -> Option<f32> {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in xs {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax > 0.0).then_some(max)
}

/// `qs[i] = round(iscale · xs[i])` (half away from zero) clamped to i8, with the active
/// kernel set: it runs on every row of a prefill's activations for K-quant weights.
fn quantize_q8k_block(iscale: f32, xs: &[f32], qs: &mut [i8]) {
    #[cfg(target_arch = "x86_64")]
    if KernelSet::active() >= KernelSet::Avx2 && xs.len() == QK_K && qs.len() == QK_K {
        // SAFETY: the CPU has the AVX2 set; both slices hold one whole block.
        return unsafe { x86::quantize_q8k_block(iscale, xs, qs) };
    }
    quantize_q8k_block_portable(iscale, xs, qs);
}

fn quantize_q8k_block_portable(iscale: f32, xs: &[f32], qs: &mut [i8]) {
    for (q, &v) in qs.iter_mut().zip(xs) {
        *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The 8 six-bit scales and 8 six-bit minimums of a Q4_K / Q5_K block's 12 scale bytes:
/// sub-blocks 0–3 in the low 6 bits of bytes 0–3 (scales) and 4–7 (mins); sub-blocks 4–7 in
/// the nibbles of bytes 8–11, with their top 2 bits in the top bits of bytes 0–7.
fn scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0xF) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// The 5-bit (Q5_K, with high bits) or 4-bit (Q4_K) quant of weight `i` of a block, with the
/// block's nibble bytes `qs` and high-bit bytes `qh`.
fn k4_quant(qs: &[u8], qh: Option<&[u8]>, i: usize) -> u8 {
    let (j, l) = (i / 32, i % 32);
    let low = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xF;
    match qh {
        Some(qh) => low | (((qh[l] >> j) & 1) << 4),
        None => low,
    }
}

/// The 6-bit quant (0..64) of weight `i` of a Q6_K block.
fn q6_quant(block: &[u8], i: usize) -> u8 {
    let (n, t, l) = (i / 128, i % 128 / 32, i % 32);
    let low = (block[64 * n + 32 * (t % 2) + l] >> (4 * (t / 2))) & 0xF;
    let high = (block[128 + 32 * n + l] >> (2 * t)) & 3;
    low | (high << 4)
}

/// Widens one row of `format` blocks into `out` (`out.len()` weights).
pub fn dequantize_row(format: QuantFormat, row: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if format == QuantFormat::Q8_0 && KernelSet::active() >= KernelSet::Avx2 {
        // SAFETY: the CPU supports the features the function is compiled for; it reads whole
        // blocks of `row` and writes whole blocks of `out` only.
        return unsafe { x86::dequantize_q8_0(row, out) };
    }
    let (len, bytes) = (format.block_len(), format.block_bytes());
    for (y, block) in out.chunks_exact_mut(len).zip(row.chunks_exact(bytes)) {
        match format {
            QuantFormat::Q8_0 => {
                let d = f16_at(block, 0);
                for (o, &q) in y.iter_mut().zip(&block[2..]) {
                    *o = d * f32::from(q as i8);
                }
            }
            QuantFormat::Q4_0 => {
                let d = f16_at(block, 0);
                for j in 0..16 {
                    y[j] = d * (f32::from(block[2 + j] & 0xF) - 8.0);
                    y[j + 16] = d * (f32::from(block[2 + j] >> 4) - 8.0);
                }
            }
            QuantFormat::Q4K | QuantFormat::Q5K => {
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                let (sc, m) = scales_mins(&block[4..16]);
                let (qh, qs) = if format == QuantFormat::Q5K {
                    (Some(&block[16..48]), &block[48..176])
                } else {
                    (None, &block[16..144])
                };
                // Sub-block by sub-block, so the loops vectorise (prefill widens every weight
                // of a Q4_K_M file this way): the same products as [`k4_quant`] per weight.
                for (j, out) in y.chunks_exact_mut(32).enumerate() {
                    let nibbles = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                    let shift = 4 * (j % 2);
                    let (scale, min) = (d * f32::from(sc[j]), dmin * f32::from(m[j]));
                    match qh {
                        Some(qh) => {
                            for ((o, &q), &h) in out.iter_mut().zip(nibbles).zip(qh) {
                                let v = ((q >> shift) & 0xF) | (((h >> j) & 1) << 4);
                                *o = scale * f32::from(v) - min;
                            }
                        }
                        None => {
                            for (o, &q) in out.iter_mut().zip(nibbles) {
                                *o = scale * f32::from((q >> shift) & 0xF) - min;
                            }
                        }
                    }
                }
            }
            QuantFormat::Q6K => {
                let d = f16_at(block, 208);
                // 16 weights per scale, in the order of [`q6_quant`].
                for (g, out) in y.chunks_exact_mut(16).enumerate() {
                    let (n, t, first) = (g / 8, g % 8 / 2, 16 * (g % 2));
                    let low = &block[64 * n + 32 * (t % 2) + first..][..16];
                    let high = &block[128 + 32 * n + first..][..16];
                    let scale = d * f32::from(block[192 + g] as i8);
                    for ((o, &lo), &hi) in out.iter_mut().zip(low).zip(high) {
                        let q = ((lo >> (4 * (t / 2))) & 0xF) | (((hi >> (2 * t)) & 3) << 4);
                        *o = scale * (f32::from(q) - 32.0);
                    }
                }
            }
        }
    }
}

/// `row · x` for a Q4_K, Q5_K or Q6_K row against Q8_K activations, with the active kernel set.
pub fn dot_k(format: QuantFormat, x: &Q8KRow, row: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if KernelSet::active() == KernelSet::Avx512 {
        // SAFETY: the CPU supports the AVX-512 set; block counts as below.
        unsafe {
            return match format {
                QuantFormat::Q4K => avx512::dot_q4k(x, row),
                QuantFormat::Q5K => avx512::dot_q5k(x, row),
                QuantFormat::Q6K => avx512::dot_q6k(x, row),
                _ => dot_k_portable(format, x, row),
            };
        }
    }
    #[cfg(target_arch = "x86_64")]
    if KernelSet::active() >= KernelSet::Avx2 {
        // SAFETY: the CPU supports AVX2/FMA/F16C (the active set); each kernel reads at most
        // as many blocks as both `row` and `x` hold.
        unsafe {
            return match format {
                QuantFormat::Q4K => x86::dot_q4k(x, row),
                QuantFormat::Q5K => x86::dot_q5k(x, row),
                QuantFormat::Q6K => x86::dot_q6k(x, row),
                _ => dot_k_portable(format, x, row),
            };
        }
    }
    dot_k_portable(format, x, row)
}

/// The portable twin of [`dot_k`]: block by block in integers, then scaled.
pub fn dot_k_portable(format: QuantFormat, x: &Q8KRow, row: &[u8]) -> f32 {
    let bytes = format.block_bytes();
    let mut sum = 0f32;
    for (b, block) in row.chunks_exact(bytes).enumerate().take(x.d.len()) {
        let xq = &x.qs[b * QK_K..(b + 1) * QK_K];
        let bsums = &x.bsums[b * 16..(b + 1) * 16];
        match format {
            QuantFormat::Q4K | QuantFormat::Q5K => {
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                let (sc, m) = scales_mins(&block[4..16]);
                let (qh, qs) = if format == QuantFormat::Q5K {
                    (Some(&block[16..48]), &block[48..176])
                } else {
                    (None, &block[16..144])
                };
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..8 {
                    let dot: i32 = (32 * j..32 * j + 32)
                        .map(|i| i32::from(k4_quant(qs, qh, i)) * i32::from(xq[i]))
                        .sum();
                    sumi += i32::from(sc[j]) * dot;
                    summ +=
                        i32::from(m[j]) * (i32::from(bsums[2 * j]) + i32::from(bsums[2 * j + 1]));
                }
                sum += x.d[b] * (d * sumi as f32 - dmin * summ as f32);
            }
            QuantFormat::Q6K => {
                let d = f16_at(block, 208);
                let mut sumi = 0i32;
                for g in 0..16 {
                    let sc = i32::from(block[192 + g] as i8);
                    let dot: i32 = (16 * g..16 * g + 16)
                        .map(|i| (i32::from(q6_quant(block, i)) - 32) * i32::from(xq[i]))
                        .sum();
                    sumi += sc * dot;
                }
                sum += x.d[b] * d * sumi as f32;
            }
            QuantFormat::Q8_0 | QuantFormat::Q4_0 => unreachable!("not a K-quant"),
        }
    }
    sum
}

/// `row · x` for a Q4_0 row against Q8_0 activations (`xs` scales, `xq` quants), with the
/// active kernel set.
pub fn dot_q4_0(xs: &[f32], xq: &[i8], row: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if KernelSet::active() >= KernelSet::Avx2 {
        // SAFETY: as in `dot_k`.
        return unsafe { x86::dot_q4_0(xs, xq, row) };
    }
    dot_q4_0_portable(xs, xq, row)
}

/// The portable twin of [`dot_q4_0`].
pub fn dot_q4_0_portable(xs: &[f32], xq: &[i8], row: &[u8]) -> f32 {
    let mut sum = 0f32;
    for (b, block) in row.chunks_exact(18).enumerate().take(xs.len()) {
        let x = &xq[b * 32..(b + 1) * 32];
        let mut s = 0i32;
        for j in 0..16 {
            s += (i32::from(block[2 + j] & 0xF) - 8) * i32::from(x[j]);
            s += (i32::from(block[2 + j] >> 4) - 8) * i32::from(x[j + 16]);
        }
        sum += f16_at(block, 0) * xs[b] * s as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q8KRow, QK_K};
    use std::arch::x86_64::*;

    /// [`super::dequantize_row`] for Q8_0, eight weights per instruction: the same product of
    /// the block's scale and each 8-bit quant (exact in f32), so the same values.
    ///
    /// Safety: the CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequantize_q8_0(row: &[u8], out: &mut [f32]) {
        let blocks = (row.len() / 34).min(out.len() / 32);
        for b in 0..blocks {
            let block = row.as_ptr().add(b * 34);
            let bits = (block as *const i16).read_unaligned();
            let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                i32::from(bits) & 0xFFFF,
            ))));
            let dst = out.as_mut_ptr().add(b * 32);
            for i in 0..4 {
                let q = _mm_loadl_epi64(block.add(2 + 8 * i) as *const __m128i);
                let w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                _mm256_storeu_ps(dst.add(8 * i), _mm256_mul_ps(d, w));
            }
        }
    }

    /// The largest magnitude in `xs` (a multiple of 8 long), NaNs ignored.
    ///
    /// Safety: the CPU supports AVX2.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn absmax(xs: &[f32]) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for c in xs.chunks_exact(8) {
            // `max` returns its second operand when either is NaN: the running maximum.
            m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(c.as_ptr())), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)))
    }

    /// [`super::quantize_q8k_block_portable`] eight values per instruction, the same results:
    /// the product is the same f32 multiply, and rounding half away from zero is done exactly
    /// (truncate, then step away from zero where the dropped fraction is at least one half).
    ///
    /// Safety: the CPU supports AVX2; `xs` and `qs` hold 256 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_q8k_block(iscale: f32, xs: &[f32], qs: &mut [i8]) {
        let scale = _mm256_set1_ps(iscale);
        let sign = _mm256_set1_ps(-0.0);
        let (one, half) = (_mm256_set1_ps(1.0), _mm256_set1_ps(0.5));
        let (low, high) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
        let round = |p: *const f32| {
            let v = _mm256_mul_ps(_mm256_loadu_ps(p), scale);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
            let away = _mm256_or_ps(_mm256_and_ps(v, sign), one);
            let step = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), away);
            let r = _mm256_add_ps(t, step);
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, low), high))
        };
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for c in 0..QK_K / 32 {
            let p = xs.as_ptr().add(32 * c);
            let w01 = _mm256_packs_epi32(round(p), round(p.add(8)));
            let w23 = _mm256_packs_epi32(round(p.add(16)), round(p.add(24)));
            let b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
            _mm256_storeu_si256(qs.as_mut_ptr().add(32 * c) as *mut __m256i, b);
        }
    }

    #[inline(always)]
    unsafe fn hsum_ps(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    #[inline(always)]
    unsafe fn hsum_epi32(v: __m128i) -> i32 {
        let s = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// `(d, dmin)` of a K-quant block starting at `p`, both f16, widened in one conversion.
    #[inline(always)]
    unsafe fn two_f16(p: *const u8) -> (f32, f32) {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    /// The 12 scale bytes of a Q4_K / Q5_K block rearranged into 8 scales then 8 mins, one
    /// byte each (the same unpacking as `super::scales_mins`, on 32-bit words).
    #[inline(always)]
    unsafe fn unpack_scales(p: *const u8) -> [u8; 16] {
        const LOW6: u32 = 0x3f3f_3f3f;
        const LOW4: u32 = 0x0f0f_0f0f;
        const LOW2: u32 = 0x0303_0303;
        let w = |i: usize| (p.add(4 * i) as *const u32).read_unaligned();
        let (w0, w1, w2) = (w(0), w(1), w(2));
        let words = [
            w0 & LOW6,
            (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4),
            w1 & LOW6,
            ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4),
        ];
        std::mem::transmute::<[u32; 4], [u8; 16]>(words)
    }

    /// `Σ mᵢ · (bsum₂ᵢ + bsum₂ᵢ₊₁)`: a K-quant block's minimums against the Q8_K sums.
    #[inline(always)]
    unsafe fn mins_dot(mins: &[u8], bsums: *const i16) -> i32 {
        let m = _mm_cvtepu8_epi16(_mm_loadl_epi64(mins.as_ptr() as *const __m128i));
        let lo = _mm_loadu_si128(bsums as *const __m128i);
        let hi = _mm_loadu_si128(bsums.add(8) as *const __m128i);
        hsum_epi32(_mm_madd_epi16(m, _mm_hadd_epi16(lo, hi)))
    }

    fn k_blocks(x: &Q8KRow, row: &[u8], bytes: usize) -> usize {
        (row.len() / bytes)
            .min(x.d.len())
            .min(x.qs.len() / QK_K)
            .min(x.bsums.len() / 16)
    }

    /// Safety: the CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4k(x: &Q8KRow, row: &[u8]) -> f32 {
        dot_q45k::<false>(x, row)
    }

    /// Safety: the CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q5k(x: &Q8KRow, row: &[u8]) -> f32 {
        dot_q45k::<true>(x, row)
    }

    /// Q4_K (`FIVE = false`) or Q5_K: per 64 weights one 32-byte load of nibbles (plus the
    /// fifth bits for Q5_K), two `maddubs` against the Q8_K quants, each weighted by its
    /// sub-block scale in the `madd` that widens to 32 bits; the minimums are subtracted once
    /// per block through the Q8_K sums.
    #[inline(always)]
    unsafe fn dot_q45k<const FIVE: bool>(x: &Q8KRow, row: &[u8]) -> f32 {
        let bytes = if FIVE { 176 } else { 144 };
        let blocks = k_blocks(x, row, bytes);
        let nibble = _mm256_set1_epi8(0x0F);
        let one = _mm256_set1_epi8(1);
        let mut acc = _mm256_setzero_ps();
        let mut mins_total = 0f32;
        for b in 0..blocks {
            let bp = row.as_ptr().add(b * bytes);
            let xq = x.qs.as_ptr().add(b * QK_K);
            let xd = *x.d.get_unchecked(b);
            let (d, dmin) = two_f16(bp);
            let sm = unpack_scales(bp.add(4));
            mins_total += xd * dmin * mins_dot(&sm[8..], x.bsums.as_ptr().add(b * 16)) as f32;
            let qh = if FIVE {
                _mm256_loadu_si256(bp.add(16) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            };
            let qs = bp.add(if FIVE { 48 } else { 16 });
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                let q = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                let mut lo = _mm256_and_si256(q, nibble);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble);
                if FIVE {
                    let bit = |s: usize| {
                        let b = _mm256_and_si256(
                            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s as i32)),
                            one,
                        );
                        _mm256_slli_epi16(b, 4)
                    };
                    lo = _mm256_or_si256(lo, bit(2 * c));
                    hi = _mm256_or_si256(hi, bit(2 * c + 1));
                }
                let xl = _mm256_loadu_si256(xq.add(64 * c) as *const __m256i);
                let xh = _mm256_loadu_si256(xq.add(64 * c + 32) as *const __m256i);
                let sl = _mm256_set1_epi16(i16::from(sm[2 * c]));
                let sh = _mm256_set1_epi16(i16::from(sm[2 * c + 1]));
                let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xl), sl);
                let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xh), sh);
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(xd * d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_ps(acc) - mins_total
    }

    /// Q6_K: per 128 weights two 32-byte loads of nibbles and one of high bits give four
    /// vectors of 6-bit quants (0..64), multiplied unsigned by the Q8_K quants; each 16-weight
    /// group is weighted by its signed scale in the widening `madd`, and the −32 offset is
    /// taken off once per block through the Q8_K sums.
    ///
    /// Safety: the CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q6k(x: &Q8KRow, row: &[u8]) -> f32 {
        let blocks = k_blocks(x, row, 210);
        let nibble = _mm256_set1_epi8(0x0F);
        let two = _mm256_set1_epi8(3);
        let mut acc = _mm256_setzero_ps();
        let mut offset_total = 0f32;
        for b in 0..blocks {
            let bp = row.as_ptr().add(b * 210);
            let xq = x.qs.as_ptr().add(b * QK_K);
            let xd = *x.d.get_unchecked(b);
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                (bp.add(208) as *const u16).read_unaligned(),
            ))));
            let scales = bp.add(192) as *const i8;
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scales as *const __m128i));
            let bs = _mm256_loadu_si256(x.bsums.as_ptr().add(b * 16) as *const __m256i);
            let off = _mm256_madd_epi16(sc16, bs);
            let off = _mm_add_epi32(
                _mm256_castsi256_si128(off),
                _mm256_extracti128_si256(off, 1),
            );
            offset_total += xd * d * (32 * hsum_epi32(off)) as f32;
            let mut sumi = _mm256_setzero_si256();
            for n in 0..2 {
                let ql0 = _mm256_loadu_si256(bp.add(64 * n) as *const __m256i);
                let ql1 = _mm256_loadu_si256(bp.add(64 * n + 32) as *const __m256i);
                let qh = _mm256_loadu_si256(bp.add(128 + 32 * n) as *const __m256i);
                let high = |h: __m256i| _mm256_slli_epi16(_mm256_and_si256(h, two), 4);
                let quants = [
                    _mm256_or_si256(_mm256_and_si256(ql0, nibble), high(qh)),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, nibble),
                        high(_mm256_srli_epi16(qh, 2)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), nibble),
                        high(_mm256_srli_epi16(qh, 4)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), nibble),
                        high(_mm256_srli_epi16(qh, 6)),
                    ),
                ];
                for (t, q) in quants.into_iter().enumerate() {
                    let g = 8 * n + 2 * t;
                    let xv = _mm256_loadu_si256(xq.add(128 * n + 32 * t) as *const __m256i);
                    let sc = _mm256_set_m128i(
                        _mm_set1_epi16(i16::from(*scales.add(g + 1))),
                        _mm_set1_epi16(i16::from(*scales.add(g))),
                    );
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), sc);
                    sumi = _mm256_add_epi32(sumi, p);
                }
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(xd * d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_ps(acc) - offset_total
    }

    /// Q4_0 against Q8_0 activations: the 16 nibble bytes of a block become 32 signed quants
    /// (`q − 8`), multiplied as the Q8_0 kernel does (`maddubs` of |w| with x carrying w's sign).
    ///
    /// Safety: the CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_0(xs: &[f32], xq: &[i8], row: &[u8]) -> f32 {
        let blocks = (row.len() / 18).min(xs.len()).min(xq.len() / 32);
        let nibble = _mm_set1_epi8(0x0F);
        let eight = _mm256_set1_epi8(8);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 2];
        for b in 0..blocks {
            let bp = row.as_ptr().add(b * 18);
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                (bp as *const u16).read_unaligned(),
            ))));
            let q = _mm_loadu_si128(bp.add(2) as *const __m128i);
            let lo = _mm_and_si128(q, nibble);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), nibble);
            let w = _mm256_sub_epi8(_mm256_set_m128i(hi, lo), eight);
            let xv = _mm256_loadu_si256(xq.as_ptr().add(32 * b) as *const __m256i);
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w));
            let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            let scale = _mm256_set1_ps(d * *xs.get_unchecked(b));
            acc[b % 2] = _mm256_fmadd_ps(scale, s, acc[b % 2]);
        }
        hsum_ps(_mm256_add_ps(acc[0], acc[1]))
    }
}

/// The AVX2 kernels by name, for tests that compare them with their portable twins.
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn dot_k_avx2(format: QuantFormat, x: &Q8KRow, row: &[u8]) -> f32 {
    assert!(KernelSet::Avx2.available());
    // SAFETY: checked just above.
    unsafe {
        match format {
            QuantFormat::Q4K => x86::dot_q4k(x, row),
            QuantFormat::Q5K => x86::dot_q5k(x, row),
            QuantFormat::Q6K => x86::dot_q6k(x, row),
            _ => unreachable!(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// Values of mixed sign and magnitude, with an all-zero stretch of 256 (one whole K-quant
    /// block, so its scales are zero) when `k` has room for it.
    fn values(len: usize, seed: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..len)
            .map(|i| {
                let t = (i * 7919 + seed * 104_729) % 2003;
                (t as f32 / 1001.5 - 1.0) * (1.0 + ((i / 37) % 5) as f32)
            })
            .collect();
        if len >= 3 * QK_K {
            v[QK_K..2 * QK_K].fill(0.0);
        }
        v
    }

    fn quantized(format: GgmlDType, n: usize, k: usize) -> (QTensor, Vec<u8>) {
        let w = Tensor::from_vec(values(n * k, 3), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, format).unwrap();
        let bytes = q.data().unwrap().to_vec();
        (q, bytes)
    }

    #[test]
    fn vector_q8k_quantisation_equals_the_portable_loop() {
        // Exact halves (rounded away from zero), the largest magnitude negative and positive,
        // values just under a half, zeros and a NaN-free spread.
        let mut xs = values(QK_K, 5);
        xs[3] = -2.5;
        xs[4] = 2.5;
        xs[5] = 0.49999997;
        xs[6] = -0.49999997;
        xs[7] = 0.0;
        xs[200] = -9.0;
        for iscale in [-127.0 / -9.0, 1.0, -1.0, 12.7, 0.0] {
            let mut want = vec![0i8; QK_K];
            quantize_q8k_block_portable(iscale, &xs, &mut want);
            #[cfg(target_arch = "x86_64")]
            if crate::models::kernels::test_may_run(KernelSet::Avx2, "AVX2 Q8_K quantisation") {
                let mut got = vec![0i8; QK_K];
                // SAFETY: AVX2 checked just above; one whole block each.
                unsafe { x86::quantize_q8k_block(iscale, &xs, &mut got) };
                assert_eq!(got, want, "iscale {iscale}");
                assert_eq!(unsafe { x86::absmax(&xs) }, 9.0);
            }
        }
        assert_eq!(signed_absmax(&xs), Some(-9.0));
        assert_eq!(signed_absmax_portable(&xs), Some(-9.0));
        assert_eq!(signed_absmax(&[0.0; 16]), None);
        // The first of equal magnitudes wins, as in the portable loop.
        let mut tie = vec![0f32; 16];
        tie[2] = 3.0;
        tie[9] = -3.0;
        assert_eq!(signed_absmax(&tie), Some(3.0));
    }

    #[test]
    fn widening_equals_candles_dequantisation() {
        for (dtype, k) in [
            (GgmlDType::Q4_0, 96),
            (GgmlDType::Q8_0, 64),
            (GgmlDType::Q8_0, 224),
            (GgmlDType::Q4K, 768),
            (GgmlDType::Q5K, 512),
            (GgmlDType::Q6K, 768),
        ] {
            let n = 3;
            let (q, bytes) = quantized(dtype, n, k);
            let format = QuantFormat::from_ggml(dtype).unwrap();
            let row_bytes = k / format.block_len() * format.block_bytes();
            assert_eq!(bytes.len(), n * row_bytes, "{dtype:?}");
            let want: Vec<Vec<f32>> = q.dequantize(&Device::Cpu).unwrap().to_vec2().unwrap();
            for (r, want) in want.iter().enumerate() {
                let mut got = vec![0f32; k];
                dequantize_row(format, &bytes[r * row_bytes..(r + 1) * row_bytes], &mut got);
                assert_eq!(&got, want, "{dtype:?} row {r}");
            }
        }
    }

    /// The exact integer-domain product of a row with Q8_K activations, from candle's widened
    /// weights: what every kernel must reproduce up to float summation order.
    fn exact(deq: &[f32], x: &Q8KRow) -> f64 {
        deq.iter()
            .enumerate()
            .map(|(i, &w)| f64::from(w) * f64::from(x.qs[i]) * f64::from(x.d[i / QK_K]))
            .sum()
    }

    #[test]
    fn k_quant_kernels_equal_the_exact_product_on_awkward_rows() {
        // One block, an odd number of blocks (3 and 11, the 2816 of the reference model), and
        // the all-zero block (zero scales) inside the longer rows.
        for dtype in [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
            let format = QuantFormat::from_ggml(dtype).unwrap();
            for k in [256usize, 768, 2816] {
                let n = 5;
                let (q, bytes) = quantized(dtype, n, k);
                let deq: Vec<Vec<f32>> = q.dequantize(&Device::Cpu).unwrap().to_vec2().unwrap();
                let mut xv = values(k, 11);
                // A block of activations that is all zero, too.
                xv[..QK_K.min(k / 2)].fill(0.0);
                let x = Q8KRow::new(&xv);
                let row_bytes = k / QK_K * format.block_bytes();
                for r in 0..n {
                    let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                    let want = exact(&deq[r], &x) as f32;
                    let tol = 1e-4 * (1.0 + want.abs()) + 1e-3;
                    let portable = dot_k_portable(format, &x, row);
                    assert!(
                        (portable - want).abs() <= tol,
                        "{dtype:?} k={k} r={r}: portable {portable} vs {want}"
                    );
                    #[cfg(target_arch = "x86_64")]
                    if crate::models::kernels::test_may_run(KernelSet::Avx2, "AVX2 K-quant kernels")
                    {
                        let simd = dot_k_avx2(format, &x, row);
                        assert!(
                            (simd - want).abs() <= tol,
                            "{dtype:?} k={k} r={r}: avx2 {simd} vs {want}"
                        );
                    }
                    #[cfg(target_arch = "x86_64")]
                    if crate::models::kernels::test_may_run(
                        KernelSet::Avx512,
                        "AVX-512 K-quant kernels",
                    ) {
                        // SAFETY: the CPU supports the set (checked just above).
                        let simd = unsafe {
                            match format {
                                QuantFormat::Q4K => super::avx512::dot_q4k(&x, row),
                                QuantFormat::Q5K => super::avx512::dot_q5k(&x, row),
                                _ => super::avx512::dot_q6k(&x, row),
                            }
                        };
                        assert!(
                            (simd - want).abs() <= tol,
                            "{dtype:?} k={k} r={r}: avx512 {simd} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn q8k_quantisation_is_llama_cpps() {
        let mut xv = values(512, 5);
        xv[256..].fill(0.0);
        xv[7] = -9.0; // the value of largest magnitude is negative: d > 0
        let x = Q8KRow::new(&xv);
        assert_eq!(x.d[1], 0.0);
        assert!(x.qs[256..].iter().all(|&q| q == 0) && x.bsums[16..].iter().all(|&s| s == 0));
        assert!((x.d[0] - 9.0 / 127.0).abs() < 1e-7);
        assert_eq!(x.qs[7], -127);
        for g in 0..16 {
            let s: i16 = x.qs[16 * g..16 * g + 16]
                .iter()
                .map(|&q| i16::from(q))
                .sum();
            assert_eq!(x.bsums[g], s);
        }
        for (i, &v) in xv[..256].iter().enumerate() {
            assert!((f32::from(x.qs[i]) * x.d[0] - v).abs() <= x.d[0] / 2.0 + 1e-6);
        }
    }

    #[test]
    fn q4_0_kernels_equal_the_exact_product() {
        for k in [32usize, 96, 352] {
            let (q, bytes) = quantized(GgmlDType::Q4_0, 4, k);
            let deq: Vec<Vec<f32>> = q.dequantize(&Device::Cpu).unwrap().to_vec2().unwrap();
            let mut xv = values(k, 2);
            xv[..32].fill(0.0);
            let xt = Tensor::from_vec(xv, (1, k), &Device::Cpu).unwrap();
            // Q8_0 activations as candle quantises them (the Q8_0 decode path's own are tested
            // against these in gemv).
            let xq = QTensor::quantize(&xt, GgmlDType::Q8_0).unwrap();
            let xb = xq.data().unwrap();
            let scales: Vec<f32> = xb.chunks_exact(34).map(|b| f16_at(b, 0)).collect();
            let quants: Vec<i8> = xb
                .chunks_exact(34)
                .flat_map(|b| b[2..].iter().map(|&v| v as i8))
                .collect();
            let row_bytes = k / 32 * 18;
            for r in 0..4 {
                let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                let want: f64 = deq[r]
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| f64::from(w) * f64::from(quants[i]) * f64::from(scales[i / 32]))
                    .sum();
                let want = want as f32;
                let tol = 1e-4 * (1.0 + want.abs()) + 1e-4;
                let portable = dot_q4_0_portable(&scales, &quants, row);
                assert!(
                    (portable - want).abs() <= tol,
                    "k={k}: {portable} vs {want}"
                );
                #[cfg(target_arch = "x86_64")]
                if crate::models::kernels::test_may_run(KernelSet::Avx2, "AVX2 Q4_0 kernel") {
                    // SAFETY: the CPU supports the set.
                    let simd = unsafe { x86::dot_q4_0(&scales, &quants, row) };
                    assert!((simd - want).abs() <= tol, "k={k}: avx2 {simd} vs {want}");
                }
            }
        }
    }
}
