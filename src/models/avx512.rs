//! The AVX-512 dense and Q8_0 decode kernels (F/BW/VL, VNNI): twins of the AVX2 ones in `gemv`
//! (the K-quant ones are in `kquants::avx512`), twice as wide, with VNNI's `vpdpbusd` for the Q8_0 byte products.
//!
//! Why: on a few cores a decode step of a quantised model is bound as much by the integer
//! work per block as by memory; 512-bit registers halve the instructions per block, and the
//! wider loads let fewer cores reach the memory's bandwidth.
//!
//! Every function here is `unsafe`: the caller guarantees the CPU has AVX-512 F/BW/VL and VNNI
//! (`KernelSet::Avx512`), which also implies AVX2/FMA/F16C.

use std::arch::x86_64::*;

/// Two accumulators of 16 lanes, 32 elements per iteration, masked loads for the tail.
macro_rules! dense_kernel {
    ($name:ident, $w:ty, $load:expr, $masked:expr) => {
        /// `Σ x_i · w_i` over the shorter of the two slices.
        ///
        /// # Safety
        /// The CPU has the `KernelSet::Avx512` features (see the module).
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        pub unsafe fn $name(x: &[f32], w: &[$w]) -> f32 {
            let n = x.len().min(w.len());
            let (xp, wp) = (x.as_ptr(), w.as_ptr());
            let mut a0 = _mm512_setzero_ps();
            let mut a1 = _mm512_setzero_ps();
            let load = $load;
            let mut i = 0;
            while i + 32 <= n {
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(i)), load(wp.add(i)), a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(i + 16)), load(wp.add(i + 16)), a1);
                i += 32;
            }
            let masked = $masked;
            while i < n {
                let m: __mmask16 = if n - i >= 16 {
                    0xFFFF
                } else {
                    (1u16 << (n - i)) - 1
                };
                a0 = _mm512_fmadd_ps(
                    _mm512_maskz_loadu_ps(m, xp.add(i)),
                    masked(m, wp.add(i)),
                    a0,
                );
                i += 16;
            }
            _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
        }
    };
}

dense_kernel!(
    dot_f32,
    f32,
    |p: *const f32| _mm512_loadu_ps(p),
    |m: __mmask16, p: *const f32| _mm512_maskz_loadu_ps(m, p)
);
dense_kernel!(
    dot_f16,
    half::f16,
    |p: *const half::f16| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
    |m: __mmask16, p: *const half::f16| _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
        m,
        p as *const i16
    ))
);
dense_kernel!(
    dot_bf16,
    half::bf16,
    |p: *const half::bf16| {
        let raw = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16))
    },
    |m: __mmask16, p: *const half::bf16| {
        let raw = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p as *const i16));
        _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16))
    }
);

/// One Q8_0 row against Q8_0 activations: two blocks per 512-bit register, their 32 byte
/// products each summed by `vpdpbusd` (|w| unsigned times x carrying w's sign), scaled by
/// both blocks' scales; the weight scales of eight blocks are widened together, as in the
/// AVX2 kernel.
///
/// # Safety
/// See the module; `xs` has at least `row.len() / 34` scales and `xq` 32 quants each.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q8_0(xs: &[f32], xq: &[i8], row: &[u8]) -> f32 {
    let blocks = (row.len() / 34).min(xs.len()).min(xq.len() / 32);
    let (rp, sp, qp) = (row.as_ptr(), xs.as_ptr(), xq.as_ptr());
    let scale_bits = |b: usize| (rp.add(b * 34) as *const i16).read_unaligned();
    let pair = |b: usize| {
        let w0 = _mm256_loadu_si256(rp.add(b * 34 + 2) as *const __m256i);
        let w1 = _mm256_loadu_si256(rp.add(b * 34 + 36) as *const __m256i);
        let w = _mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1);
        let x = _mm512_loadu_si512(qp.add(b * 32) as *const __m512i);
        let neg = _mm512_movepi8_mask(w);
        let xs = _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x);
        _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(
            _mm512_setzero_si512(),
            _mm512_abs_epi8(w),
            xs,
        ))
    };
    // Lanes 0–7 take scale `2j`, lanes 8–15 scale `2j + 1`.
    let spread = |d: __m512, j: i32| {
        _mm512_permutexvar_ps(
            _mm512_set_epi32(
                2 * j + 1,
                2 * j + 1,
                2 * j + 1,
                2 * j + 1,
                2 * j + 1,
                2 * j + 1,
                2 * j + 1,
                2 * j + 1,
                2 * j,
                2 * j,
                2 * j,
                2 * j,
                2 * j,
                2 * j,
                2 * j,
                2 * j,
            ),
            d,
        )
    };
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut b = 0;
    while b + 8 <= blocks {
        let half = _mm_set_epi16(
            scale_bits(b + 7),
            scale_bits(b + 6),
            scale_bits(b + 5),
            scale_bits(b + 4),
            scale_bits(b + 3),
            scale_bits(b + 2),
            scale_bits(b + 1),
            scale_bits(b),
        );
        let d = _mm256_mul_ps(_mm256_cvtph_ps(half), _mm256_loadu_ps(sp.add(b)));
        let d = _mm512_castps256_ps512(d);
        acc[0] = _mm512_fmadd_ps(spread(d, 0), pair(b), acc[0]);
        acc[1] = _mm512_fmadd_ps(spread(d, 1), pair(b + 2), acc[1]);
        acc[2] = _mm512_fmadd_ps(spread(d, 2), pair(b + 4), acc[2]);
        acc[3] = _mm512_fmadd_ps(spread(d, 3), pair(b + 6), acc[3]);
        b += 8;
    }
    let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    ));
    while b < blocks {
        let w = _mm256_loadu_si256(rp.add(b * 34 + 2) as *const __m256i);
        let x = _mm256_loadu_si256(qp.add(b * 32) as *const __m256i);
        let s = _mm256_dpbusd_epi32(
            _mm256_setzero_si256(),
            _mm256_abs_epi8(w),
            _mm256_sign_epi8(x, w),
        );
        let s = _mm256_cvtepi32_ps(s);
        let d = half::f16::from_bits(scale_bits(b) as u16).to_f32() * *sp.add(b);
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        sum += d * _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
        b += 1;
    }
    sum
}
