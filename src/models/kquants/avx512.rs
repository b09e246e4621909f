//! The AVX-512 K-quant decode kernels (F/BW/VL, VNNI): twins of the AVX2 ones in this
//! module's parent, twice as wide.
//!
//! Every function here is `unsafe`: the caller guarantees the CPU has AVX-512 F/BW/VL and VNNI
//! (`KernelSet::Avx512`), which also implies AVX2/FMA/F16C.

use std::arch::x86_64::*;

use super::{Q8KRow, QK_K};

fn k_blocks(x: &Q8KRow, row: &[u8], bytes: usize) -> usize {
    (row.len() / bytes)
        .min(x.d.len())
        .min(x.qs.len() / QK_K)
        .min(x.bsums.len() / 16)
}

/// 16-bit lane indices: `a` in lanes 0–15, `b` in lanes 16–31 (for `vpermw`).
#[inline(always)]
unsafe fn halves(a: i16, b: i16) -> __m512i {
    _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_set1_epi16(a)),
        _mm256_set1_epi16(b),
        1,
    )
}

/// 16-bit lane indices: `g..g + 4`, each for 8 lanes (for `vpermw`).
#[inline(always)]
unsafe fn quarters(g: i16) -> __m512i {
    let lo = _mm256_set_m128i(_mm_set1_epi16(g + 1), _mm_set1_epi16(g));
    let hi = _mm256_set_m128i(_mm_set1_epi16(g + 3), _mm_set1_epi16(g + 2));
    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
}

#[inline(always)]
unsafe fn wide(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
}

/// Q4_K (`FIVE = false`) or Q5_K: the 64 weights of each 32 nibble bytes in one register (low
/// nibbles then high), one `maddubs` against 64 Q8_K quants and one `madd` by the two
/// sub-block scales (spread by `vpermw` from one register of all eight); minimums through the
/// Q8_K sums once per block.
#[inline(always)]
unsafe fn dot_q45k<const FIVE: bool>(x: &Q8KRow, row: &[u8]) -> f32 {
    let bytes = if FIVE { 176 } else { 144 };
    let blocks = k_blocks(x, row, bytes);
    let nibble = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let idx = [halves(0, 1), halves(2, 3), halves(4, 5), halves(6, 7)];
    let mut acc = _mm512_setzero_ps();
    let mut mins_total = _mm_setzero_ps();
    for b in 0..blocks {
        let bp = row.as_ptr().add(b * bytes);
        let xq = x.qs.as_ptr().add(b * QK_K);
        let xd = *x.d.get_unchecked(b);
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128((bp as *const i32).read_unaligned()));
        let sm = unpack_scales(bp.add(4));
        let sm16 = _mm256_cvtepu8_epi16(_mm_loadu_si128(sm.as_ptr() as *const __m128i));
        // Minimums: the 8 mins against the 8 pair sums of the Q8_K sums.
        let bs = _mm256_loadu_si256(x.bsums.as_ptr().add(b * 16) as *const __m256i);
        let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        let mins = _mm_madd_epi16(_mm256_extracti128_si256(sm16, 1), pairs);
        let dmin = _mm_set1_ps(xd * _mm_cvtss_f32(_mm_movehdup_ps(dd)));
        mins_total = _mm_fmadd_ps(dmin, _mm_cvtepi32_ps(mins), mins_total);
        let scales = _mm512_castsi256_si512(sm16);
        let qh = if FIVE {
            _mm256_loadu_si256(bp.add(16) as *const __m256i)
        } else {
            _mm256_setzero_si256()
        };
        let qs = bp.add(if FIVE { 48 } else { 16 });
        let mut sumi = _mm512_setzero_si512();
        for (c, sub_scales) in idx.iter().enumerate() {
            let q = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
            let mut lo = _mm256_and_si256(q, nibble);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble);
            if FIVE {
                let bit = |s: usize| {
                    let b =
                        _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(s as i32)), one);
                    _mm256_slli_epi16(b, 4)
                };
                lo = _mm256_or_si256(lo, bit(2 * c));
                hi = _mm256_or_si256(hi, bit(2 * c + 1));
            }
            let xv = _mm512_loadu_si512(xq.add(64 * c) as *const __m512i);
            let p = _mm512_maddubs_epi16(wide(lo, hi), xv);
            let sc = _mm512_permutexvar_epi16(*sub_scales, scales);
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p, sc));
        }
        let d = _mm_cvtss_f32(dd);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(xd * d), _mm512_cvtepi32_ps(sumi), acc);
    }
    let m = _mm_add_ps(mins_total, _mm_movehl_ps(mins_total, mins_total));
    let m = _mm_cvtss_f32(_mm_add_ss(m, _mm_shuffle_ps(m, m, 1)));
    _mm512_reduce_add_ps(acc) - m
}

/// The 12 scale bytes of a Q4_K / Q5_K block as 8 scales then 8 mins (see `kquants`).
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

/// Safety: see the module.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q4k(x: &Q8KRow, row: &[u8]) -> f32 {
    dot_q45k::<false>(x, row)
}

/// Safety: see the module.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q5k(x: &Q8KRow, row: &[u8]) -> f32 {
    dot_q45k::<true>(x, row)
}

/// Q6_K: per 128 weights one 64-byte load of nibbles and the 32 high-bit bytes give two
/// registers of 6-bit quants in weight order (64 weights each), each one `maddubs` and one
/// `madd` by its four 16-weight group scales; the −32 offset through the Q8_K sums.
///
/// Safety: see the module.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q6k(x: &Q8KRow, row: &[u8]) -> f32 {
    let blocks = k_blocks(x, row, 210);
    let nibble = _mm512_set1_epi8(0x0F);
    let two = _mm512_set1_epi8(3);
    let idx = [quarters(0), quarters(4), quarters(8), quarters(12)];
    let mut acc = _mm512_setzero_ps();
    let mut offset_total = 0f32;
    for b in 0..blocks {
        let bp = row.as_ptr().add(b * 210);
        let xq = x.qs.as_ptr().add(b * QK_K);
        let xd = *x.d.get_unchecked(b);
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
            (bp.add(208) as *const u16).read_unaligned(),
        ))));
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(192) as *const __m128i));
        let bs = _mm256_loadu_si256(x.bsums.as_ptr().add(b * 16) as *const __m256i);
        let off = _mm256_madd_epi16(sc16, bs);
        let off = _mm_add_epi32(
            _mm256_castsi256_si128(off),
            _mm256_extracti128_si256(off, 1),
        );
        let off = _mm_add_epi32(off, _mm_shuffle_epi32(off, 0b01_00_11_10));
        let off = _mm_add_epi32(off, _mm_shuffle_epi32(off, 0b10_11_00_01));
        offset_total += xd * d * (32 * _mm_cvtsi128_si32(off)) as f32;
        let scales = _mm512_castsi256_si512(sc16);
        let mut sumi = _mm512_setzero_si512();
        for n in 0..2 {
            let ql = _mm512_loadu_si512(bp.add(64 * n) as *const __m512i);
            let h = _mm256_loadu_si256(bp.add(128 + 32 * n) as *const __m256i);
            let qh = wide(h, _mm256_srli_epi16(h, 2));
            let high = |v: __m512i| _mm512_slli_epi16(_mm512_and_si512(v, two), 4);
            let first = _mm512_or_si512(_mm512_and_si512(ql, nibble), high(qh));
            let second = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16(ql, 4), nibble),
                high(_mm512_srli_epi16(qh, 4)),
            );
            for (t, q) in [first, second].into_iter().enumerate() {
                let xv = _mm512_loadu_si512(xq.add(128 * n + 64 * t) as *const __m512i);
                let p = _mm512_maddubs_epi16(q, xv);
                let sc = _mm512_permutexvar_epi16(idx[2 * n + t], scales);
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p, sc));
            }
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(xd * d), _mm512_cvtepi32_ps(sumi), acc);
    }
    _mm512_reduce_add_ps(acc) - offset_total
}
