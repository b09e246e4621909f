//! K-quant weights (Q4_K, Q5_K, Q6_K) with eight rows interleaved, so one pass computes eight
//! outputs at once.
//!
//! Why: the row-at-a-time K-quant kernels spend about a third of their instructions on per-row
//! work (unpacking scale bytes, broadcasting each scale, a horizontal sum per row). With 4-byte
//! groups of eight rows side by side, one 32-byte load feeds all eight rows, each group of four
//! activations is broadcast once for the eight, a sub-block's eight scales are one vector, and
//! the eight sums land in the eight lanes of one register. Prefill runs the same loop over
//! several tokens, so each loaded weight serves all of them: an int8 product with activations
//! quantised to Q8_K, as llama.cpp repacks Q4_K for its own CPU kernels, instead of widening
//! every weight to f32. The weights are repacked once, at load time, and replace the original
//! blocks.
//!
//! Q4_K layout, per group of 8 rows and per 256-weight block (1184 bytes: 8 × 144 plus 32 for
//! the unpacked scales and mins):
//! - bytes 0–15: the rows' f16 `d`; 16–31: their f16 `dmin`;
//! - 32–95: the 6-bit scales, sub-block-major: byte `32 + 8 j + r` is row `r`'s scale of
//!   sub-block `j`;
//! - 96–159: the 6-bit mins, two sub-blocks at a time: byte `96 + 16 p + 2 r + h` is row `r`'s
//!   min of sub-block `2 p + h` (so one widening `madd` pairs them with two Q8_K sums);
//! - 160–1183: the quant bytes: byte `160 + 256 c + 32 g + 4 r + i` is row `r`'s quant byte
//!   `32 c + 4 g + i` of the block, whose low nibble is weight `64 c + 4 g + i` and whose high
//!   nibble is weight `64 c + 32 + 4 g + i`.
//!
//! Q5_K layout: the Q4_K layout (its nibbles in the same places), then 256 bytes of fifth bits
//! (1440 bytes in all, 8 × 176 plus 32): byte `1184 + 32 g + 4 r + i` is row `r`'s `qh[4 g + i]`,
//! whose bit `j` is the fifth bit of weight `32 j + 4 g + i`.
//!
//! Q6_K layout, per group and block (1680 bytes, 8 × 210: the same bytes, reordered):
//! - bytes 0–15: the rows' f16 `d`;
//! - 16–143: the signed 8-bit scales of the 16-weight groups: byte `16 + 8 s + r` is row `r`'s
//!   scale of group `s`;
//! - 144–1167: the low-nibble bytes `ql`: byte `144 + 256 c + 32 g + 4 r + i` is row `r`'s
//!   `ql[32 c + 4 g + i]`;
//! - 1168–1679: the high-bit bytes `qh`: byte `1168 + 256 n + 32 g + 4 r + i` is row `r`'s
//!   `qh[32 n + 4 g + i]`.

use rayon::prelude::*;

use super::{f16_at, scales_mins, Q8KRow, QuantFormat, QK_K};
use crate::models::kernels::{KernelSet, SendPtr};

/// Rows per interleaved group.
pub const ROWS: usize = 8;
/// Tokens per pass of the prefill product: each loaded weight vector serves this many.
const TOKENS_PER_PASS: usize = 4;
/// Groups of rows per rayon task in the prefill product.
const GROUPS_PER_TASK: usize = 2;

/// Bytes of one group's block in each layout (see the module's doc); Q5_K's fifth bits start
/// where a Q4_K block ends.
const Q4K_GROUP_BYTES: usize = 1184;
const Q5K_GROUP_BYTES: usize = Q4K_GROUP_BYTES + 256;
const Q6K_GROUP_BYTES: usize = 1680;

/// Bytes of one group's block of 256 weights in `format`'s interleaved layout.
fn group_block_bytes(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q6K => Q6K_GROUP_BYTES,
        QuantFormat::Q5K => Q5K_GROUP_BYTES,
        _ => Q4K_GROUP_BYTES,
    }
}

/// A Q4_K, Q5_K or Q6_K weight of `(rows, cols)` in the interleaved layouts of this module.
#[derive(Debug, Clone)]
pub struct Interleaved {
    format: QuantFormat,
    data: Vec<u8>,
    rows: usize,
    cols: usize,
}

impl Interleaved {
    /// Repacks `rows` rows of `cols` weights in llama.cpp's row-major `format` blocks; `None`
    /// for formats other than the K-quants, shapes that do not interleave (`rows` not a
    /// multiple of 8, `cols` not of 256) or `blocks` too short.
    pub fn repack(format: QuantFormat, blocks: &[u8], rows: usize, cols: usize) -> Option<Self> {
        if !format.wants_q8k()
            || rows == 0
            || !rows.is_multiple_of(ROWS)
            || cols == 0
            || !cols.is_multiple_of(QK_K)
        {
            return None;
        }
        let (per_row, bytes) = (cols / QK_K, format.block_bytes());
        if blocks.len() < rows * per_row * bytes {
            return None;
        }
        let out_bytes = group_block_bytes(format);
        let mut data = vec![0u8; rows / ROWS * per_row * out_bytes];
        for (g, group) in data.chunks_exact_mut(per_row * out_bytes).enumerate() {
            for (b, out) in group.chunks_exact_mut(out_bytes).enumerate() {
                for r in 0..ROWS {
                    let at = ((g * ROWS + r) * per_row + b) * bytes;
                    let block = &blocks[at..at + bytes];
                    match format {
                        QuantFormat::Q4K | QuantFormat::Q5K => repack_q45k(format, block, r, out),
                        _ => repack_q6k(block, r, out),
                    }
                }
            }
        }
        Some(Self {
            format,
            data,
            rows,
            cols,
        })
    }

    pub fn format(&self) -> QuantFormat {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held (what a product reads).
    pub fn stored_bytes(&self) -> usize {
        self.data.len()
    }

    fn group(&self, g: usize) -> &[u8] {
        let len = self.cols / QK_K * group_block_bytes(self.format);
        &self.data[g * len..(g + 1) * len]
    }

    /// Widens row `r` into `out` (`cols` values): the same values as the original blocks'
    /// widening (`super::dequantize_row`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (group, lane) = (self.group(r / ROWS), r % ROWS);
        let blocks = group.chunks_exact(group_block_bytes(self.format));
        for (block, y) in blocks.zip(out.chunks_exact_mut(QK_K)) {
            match self.format {
                QuantFormat::Q4K | QuantFormat::Q5K => {
                    let five = self.format == QuantFormat::Q5K;
                    let (d, dmin) = (f16_at(block, 2 * lane), f16_at(block, 16 + 2 * lane));
                    for (i, o) in y.iter_mut().enumerate() {
                        let j = i / 32;
                        let scale = d * f32::from(block[32 + 8 * j + lane]);
                        let min = dmin * f32::from(block[96 + 16 * (j / 2) + 2 * lane + j % 2]);
                        *o = scale * f32::from(q45k_quant(block, five, lane, i)) - min;
                    }
                }
                _ => {
                    let d = f16_at(block, 2 * lane);
                    for (i, o) in y.iter_mut().enumerate() {
                        let scale = d * f32::from(block[16 + 8 * (i / 16) + lane] as i8);
                        *o = scale * (f32::from(q6k_quant(block, lane, i)) - 32.0);
                    }
                }
            }
        }
    }

    /// The eight outputs of group `g` against one token's activations.
    pub fn group_dot(&self, g: usize, x: &Q8KRow) -> [f32; ROWS] {
        let mut out = [[0f32; ROWS]; 1];
        group_dots::<1>(self.format, self.group(g), [x], &mut out);
        out[0]
    }

    /// `xs · selfᵀ` for `m = xs.len()` tokens of Q8_K activations, as `(m, rows)` row-major:
    /// the prefill product, groups of rows spread over the rayon pool.
    pub fn product(&self, xs: &[Q8KRow]) -> Vec<f32> {
        let (m, n) = (xs.len(), self.rows);
        let mut out = vec![0f32; m * n];
        let dst = SendPtr(out.as_mut_ptr());
        let groups = n / ROWS;
        (0..groups.div_ceil(GROUPS_PER_TASK))
            .into_par_iter()
            .for_each(|task| {
                let first = task * GROUPS_PER_TASK;
                for g in first..(first + GROUPS_PER_TASK).min(groups) {
                    let weights = self.group(g);
                    let mut t = 0;
                    while t < m {
                        let mut sums = [[0f32; ROWS]; TOKENS_PER_PASS];
                        let count = if m - t >= TOKENS_PER_PASS {
                            let x = std::array::from_fn(|i| &xs[t + i]);
                            group_dots::<TOKENS_PER_PASS>(self.format, weights, x, &mut sums);
                            TOKENS_PER_PASS
                        } else {
                            group_dots::<1>(self.format, weights, [&xs[t]], &mut sums[..1]);
                            1
                        };
                        for (i, row) in sums.iter().take(count).enumerate() {
                            // SAFETY: `dst` is `out`, alive for the whole loop; this task
                            // alone writes columns `8 g..8 g + 8`, and `t + i < m`.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    row.as_ptr(),
                                    dst.at((t + i) * n + g * ROWS),
                                    ROWS,
                                );
                            }
                        }
                        t += count;
                    }
                }
            });
        out
    }
}

/// Row `r`'s Q4_K or Q5_K block placed into the group block `out` (layouts in the module's
/// doc).
fn repack_q45k(format: QuantFormat, block: &[u8], r: usize, out: &mut [u8]) {
    let qs = if format == QuantFormat::Q5K {
        for g in 0..8 {
            let to = Q4K_GROUP_BYTES + 32 * g + 4 * r;
            out[to..to + 4].copy_from_slice(&block[16 + 4 * g..][..4]);
        }
        48
    } else {
        16
    };
    out[2 * r..2 * r + 2].copy_from_slice(&block[0..2]);
    out[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&block[2..4]);
    let (sc, m) = scales_mins(&block[4..16]);
    for j in 0..8 {
        out[32 + 8 * j + r] = sc[j];
        out[96 + 16 * (j / 2) + 2 * r + j % 2] = m[j];
    }
    for c in 0..4 {
        for q in 0..8 {
            let to = 160 + 256 * c + 32 * q + 4 * r;
            let from = qs + 32 * c + 4 * q;
            out[to..to + 4].copy_from_slice(&block[from..from + 4]);
        }
    }
}

/// Row `r`'s Q6_K block placed into the group block `out` (layout in the module's doc).
fn repack_q6k(block: &[u8], r: usize, out: &mut [u8]) {
    out[2 * r..2 * r + 2].copy_from_slice(&block[208..210]);
    for s in 0..16 {
        out[16 + 8 * s + r] = block[192 + s];
    }
    for q in 0..8 {
        for c in 0..4 {
            let to = 144 + 256 * c + 32 * q + 4 * r;
            out[to..to + 4].copy_from_slice(&block[32 * c + 4 * q..][..4]);
        }
        for n in 0..2 {
            let to = 1168 + 256 * n + 32 * q + 4 * r;
            out[to..to + 4].copy_from_slice(&block[128 + 32 * n + 4 * q..][..4]);
        }
    }
}

/// The 4-bit (Q4_K) or 5-bit (Q5_K, `five`) quant of weight `i` of row `lane` in a group
/// block.
fn q45k_quant(block: &[u8], five: bool, lane: usize, i: usize) -> u8 {
    let (c, l) = (i / 64, i % 64);
    let at = 32 * (l % 32 / 4) + 4 * lane + l % 4;
    let byte = block[160 + 256 * c + at];
    let low = if l < 32 { byte & 0xF } else { byte >> 4 };
    if five {
        low | (((block[Q4K_GROUP_BYTES + at] >> (i / 32)) & 1) << 4)
    } else {
        low
    }
}

/// The 6-bit quant (0..64) of weight `i` of row `lane` in a Q6_K group block: weight
/// `128 n + 32 t + l` has its low nibble in `ql[64 n + 32 (t % 2) + l]` (the high nibble for
/// `t ≥ 2`) and its top two bits at bit `2 t` of `qh[32 n + l]`.
fn q6k_quant(block: &[u8], lane: usize, i: usize) -> u8 {
    let (n, t, l) = (i / 128, i % 128 / 32, i % 32);
    let at = 32 * (l / 4) + 4 * lane + l % 4;
    let low = (block[144 + 256 * (2 * n + t % 2) + at] >> (4 * (t / 2))) & 0xF;
    let high = (block[1168 + 256 * n + at] >> (2 * t)) & 3;
    low | (high << 4)
}

/// `out[t][r] = Σ row r · x[t]` for the group's rows and `T` tokens, with the active kernel set.
fn group_dots<const T: usize>(
    format: QuantFormat,
    weights: &[u8],
    x: [&Q8KRow; T],
    out: &mut [[f32; ROWS]],
) {
    let blocks = weights.len() / group_block_bytes(format);
    assert!(
        out.len() >= T
            && x.iter().all(|x| x.d.len() >= blocks
                && x.qs.len() >= blocks * QK_K
                && x.bsums.len() >= blocks * 16),
        "activations shorter than the weight rows"
    );
    #[cfg(target_arch = "x86_64")]
    if KernelSet::active() >= KernelSet::Avx2 {
        // SAFETY: the CPU has the AVX2 set; the kernels read `blocks` whole blocks of
        // `weights` and of each `x` (checked above).
        unsafe {
            match format {
                QuantFormat::Q4K => x86::q45k_dots::<T, false>(weights.as_ptr(), blocks, &x, out),
                QuantFormat::Q5K => x86::q45k_dots::<T, true>(weights.as_ptr(), blocks, &x, out),
                _ => x86::q6k_dots::<T>(weights.as_ptr(), blocks, &x, out),
            }
        }
        return;
    }
    group_dots_portable(format, weights, &x, out);
}

/// The portable twin of the AVX2 kernels: the same integer sums and the same f32 operations
/// in the same order (fused multiply-adds included), so the results are bit-identical.
fn group_dots_portable(
    format: QuantFormat,
    weights: &[u8],
    x: &[&Q8KRow],
    out: &mut [[f32; ROWS]],
) {
    let block_bytes = group_block_bytes(format);
    for (x, out) in x.iter().zip(out.iter_mut()) {
        let mut acc = [0f32; ROWS];
        for (b, block) in weights.chunks_exact(block_bytes).enumerate() {
            let xq = &x.qs[b * QK_K..(b + 1) * QK_K];
            let bsums = &x.bsums[b * 16..(b + 1) * 16];
            for (r, acc) in acc.iter_mut().enumerate() {
                let dot = |quant: &dyn Fn(usize) -> u8, span: std::ops::Range<usize>| -> i32 {
                    span.map(|i| i32::from(quant(i)) * i32::from(xq[i])).sum()
                };
                if format != QuantFormat::Q6K {
                    let five = format == QuantFormat::Q5K;
                    let (mut sumi, mut summ) = (0i32, 0i32);
                    for j in 0..8 {
                        let part = dot(&|i| q45k_quant(block, five, r, i), 32 * j..32 * j + 32);
                        sumi += i32::from(block[32 + 8 * j + r]) * part;
                        let min = i32::from(block[96 + 16 * (j / 2) + 2 * r + j % 2]);
                        summ += min * (i32::from(bsums[2 * j]) + i32::from(bsums[2 * j + 1]));
                    }
                    let scale = f16_at(block, 2 * r) * x.d[b];
                    let offset = f16_at(block, 16 + 2 * r) * x.d[b];
                    *acc = scale.mul_add(sumi as f32, *acc);
                    *acc = (-offset).mul_add(summ as f32, *acc);
                } else {
                    let (mut sumi, mut offset) = (0i32, 0i32);
                    for s in 0..16 {
                        let sc = i32::from(block[16 + 8 * s + r] as i8);
                        sumi += sc * dot(&|i| q6k_quant(block, r, i), 16 * s..16 * s + 16);
                        offset += sc * i32::from(bsums[s]);
                    }
                    let scale = f16_at(block, 2 * r) * x.d[b];
                    *acc = scale.mul_add((sumi - 32 * offset) as f32, *acc);
                }
            }
        }
        *out = acc;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q8KRow, Q4K_GROUP_BYTES, Q5K_GROUP_BYTES, Q6K_GROUP_BYTES, QK_K, ROWS};
    use std::arch::x86_64::*;

    /// Bytes ahead of the block in use that each block's loop asks the memory to bring in
    /// (decode streams the weights once; without this one core reads them at about half the
    /// memory's speed).
    const Q4K_PREFETCH: usize = 8 * Q4K_GROUP_BYTES;
    const Q5K_PREFETCH: usize = 8 * Q5K_GROUP_BYTES;
    const Q6K_PREFETCH: usize = 6 * Q6K_GROUP_BYTES;

    /// Eight bytes at `p` (one per row) as sixteen i16, each row's twice, sign- or
    /// zero-extended: the multiplier of the `madd` that turns a row's two i16 partial sums
    /// into its i32 lane.
    #[inline(always)]
    unsafe fn row_pairs<const SIGNED: bool>(p: *const u8) -> __m256i {
        let s = _mm_loadl_epi64(p as *const __m128i);
        let twice = _mm_unpacklo_epi8(s, s);
        if SIGNED {
            _mm256_cvtepi8_epi16(twice)
        } else {
            _mm256_cvtepu8_epi16(twice)
        }
    }

    /// The four activation quants at `p` in every 32-bit lane.
    #[inline(always)]
    unsafe fn broadcast4(p: *const i8) -> __m256i {
        _mm256_set1_epi32((p as *const i32).read_unaligned())
    }

    /// Q4_K (`FIVE` false) or Q5_K, per token: for each 4-byte group of the eight rows,
    /// `maddubs` of the nibbles (with their fifth bits for Q5_K) with the token's four quants
    /// broadcast gives each row two i16 partial sums; eight such groups for Q4_K (a 32-weight
    /// sub-block, at most 16 · 15 · 128 = 30 720 per i16, no overflow), four for Q5_K (8 · 31 ·
    /// 128 = 31 744) are added, then weighted by the sub-block's scales in the `madd` that
    /// widens to i32. The mins are
    /// taken off once per block through the Q8_K sums of 16, paired per 32.
    ///
    /// Safety: the CPU has AVX2, FMA and F16C; `weights` holds `blocks` group blocks, each
    /// `x[t]` at least `blocks` Q8_K blocks, and `out` at least `T` rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q45k_dots<const T: usize, const FIVE: bool>(
        weights: *const u8,
        blocks: usize,
        x: &[&Q8KRow; T],
        out: &mut [[f32; ROWS]],
    ) {
        let nibble = _mm256_set1_epi8(0x0F);
        let one = _mm256_set1_epi8(1);
        let (bytes, ahead) = if FIVE {
            (Q5K_GROUP_BYTES, Q5K_PREFETCH)
        } else {
            (Q4K_GROUP_BYTES, Q4K_PREFETCH)
        };
        // Groups added in i16 before the widening `madd`, within the i16 range.
        let span = if FIVE { 4 } else { 8 };
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..blocks {
            let p = weights.add(b * bytes);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i));
            let qs = p.add(160);
            let mut sumi = [_mm256_setzero_si256(); T];
            for c in 0..4 {
                for line in 0..bytes / 256 + 1 {
                    let at = ahead + bytes / 4 * c + 64 * line;
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(at) as *const i8);
                }
                let sl = row_pairs::<false>(p.add(32 + 16 * c));
                let sh = row_pairs::<false>(p.add(32 + 16 * c + 8));
                for first in (0..8).step_by(span) {
                    let mut lo = [_mm256_setzero_si256(); T];
                    let mut hi = [_mm256_setzero_si256(); T];
                    for g in first..first + span {
                        let w = _mm256_loadu_si256(qs.add(256 * c + 32 * g) as *const __m256i);
                        let mut wl = _mm256_and_si256(w, nibble);
                        let mut wh = _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble);
                        if FIVE {
                            let h = _mm256_loadu_si256(
                                p.add(Q4K_GROUP_BYTES + 32 * g) as *const __m256i
                            );
                            let bit = |j: i32| {
                                let b = _mm256_srl_epi16(h, _mm_cvtsi32_si128(j));
                                _mm256_slli_epi16(_mm256_and_si256(b, one), 4)
                            };
                            wl = _mm256_or_si256(wl, bit(2 * c as i32));
                            wh = _mm256_or_si256(wh, bit(2 * c as i32 + 1));
                        }
                        for t in 0..T {
                            let xq = x[t].qs.as_ptr().add(b * QK_K + 64 * c + 4 * g);
                            let pl = _mm256_maddubs_epi16(wl, broadcast4(xq));
                            let ph = _mm256_maddubs_epi16(wh, broadcast4(xq.add(32)));
                            lo[t] = _mm256_add_epi16(lo[t], pl);
                            hi[t] = _mm256_add_epi16(hi[t], ph);
                        }
                    }
                    for t in 0..T {
                        let s = _mm256_add_epi32(
                            _mm256_madd_epi16(lo[t], sl),
                            _mm256_madd_epi16(hi[t], sh),
                        );
                        sumi[t] = _mm256_add_epi32(sumi[t], s);
                    }
                }
            }
            let mins: [__m256i; 4] = std::array::from_fn(|q| {
                _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(96 + 16 * q) as *const __m128i))
            });
            for t in 0..T {
                // The Q8_K sums of 32: eight i16, two per 32-bit word, one word per min pair.
                let bs = x[t].bsums.as_ptr().add(b * 16);
                let pairs = _mm_hadd_epi16(
                    _mm_loadu_si128(bs as *const __m128i),
                    _mm_loadu_si128(bs.add(8) as *const __m128i),
                );
                let words: [i32; 4] = std::mem::transmute(pairs);
                let mut summ = _mm256_setzero_si256();
                for (q, min) in mins.iter().enumerate() {
                    let bsum = _mm256_set1_epi32(words[q]);
                    summ = _mm256_add_epi32(summ, _mm256_madd_epi16(*min, bsum));
                }
                let xd = _mm256_set1_ps(*x[t].d.get_unchecked(b));
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, xd), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
                acc[t] =
                    _mm256_fnmadd_ps(_mm256_mul_ps(dmin, xd), _mm256_cvtepi32_ps(summ), acc[t]);
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }

    /// Q6_K, per token: each 4-byte group of the eight rows gives four vectors of 6-bit quants
    /// (0..64, from two `ql` loads and one `qh` load), each `maddubs`ed with its four
    /// activation quants; two groups (at most 4 · 63 · 128 = 32 256 per i16) are added, then
    /// weighted by their 16-weight group's signed scales in the widening `madd`. The −32
    /// offset is taken off once per block through the Q8_K sums of 16.
    ///
    /// Safety: as for [`q45k_dots`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q6k_dots<const T: usize>(
        weights: *const u8,
        blocks: usize,
        x: &[&Q8KRow; T],
        out: &mut [[f32; ROWS]],
    ) {
        let low4 = _mm256_set1_epi8(0x0F);
        let low2 = _mm256_set1_epi8(3);
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..blocks {
            let p = weights.add(b * Q6K_GROUP_BYTES);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
            let (ql, qh) = (p.add(144), p.add(1168));
            let mut sumi = [_mm256_setzero_si256(); T];
            for n in 0..2 {
                for pair in 0..4 {
                    for line in 0..4 {
                        let ahead = Q6K_PREFETCH + 840 * n + 210 * pair + 64 * line;
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead) as *const i8);
                    }
                    let mut part = [[_mm256_setzero_si256(); 4]; T];
                    for g in 2 * pair..2 * pair + 2 {
                        let l0 = _mm256_loadu_si256(ql.add(512 * n + 32 * g) as *const __m256i);
                        let l1 =
                            _mm256_loadu_si256(ql.add(512 * n + 256 + 32 * g) as *const __m256i);
                        let h = _mm256_loadu_si256(qh.add(256 * n + 32 * g) as *const __m256i);
                        let top = |shift: i32| {
                            let bits = _mm256_and_si256(
                                _mm256_srl_epi16(h, _mm_cvtsi32_si128(shift)),
                                low2,
                            );
                            _mm256_slli_epi16(bits, 4)
                        };
                        let quants = [
                            _mm256_or_si256(_mm256_and_si256(l0, low4), top(0)),
                            _mm256_or_si256(_mm256_and_si256(l1, low4), top(2)),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                                top(4),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                                top(6),
                            ),
                        ];
                        for t in 0..T {
                            let xq = x[t].qs.as_ptr().add(b * QK_K + 128 * n + 4 * g);
                            for (s, q) in quants.iter().enumerate() {
                                let prod = _mm256_maddubs_epi16(*q, broadcast4(xq.add(32 * s)));
                                part[t][s] = _mm256_add_epi16(part[t][s], prod);
                            }
                        }
                    }
                    for s in 0..4 {
                        // Group of 16 weights: 32 s + 4 g lies in group 2 s + pair / 2.
                        let sc = row_pairs::<true>(p.add(16 + 8 * (8 * n + 2 * s + pair / 2)));
                        for (sum, products) in sumi.iter_mut().zip(&part) {
                            *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(products[s], sc));
                        }
                    }
                }
            }
            // Σ scale · bsum per row, two groups per `madd`: (s_r,2k, s_r,2k+1) pairs.
            let scale_pairs: [__m256i; 8] = std::array::from_fn(|k| {
                let a = _mm_loadl_epi64(p.add(16 + 16 * k) as *const __m128i);
                let b = _mm_loadl_epi64(p.add(24 + 16 * k) as *const __m128i);
                _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a, b))
            });
            for t in 0..T {
                let bs = x[t].bsums.as_ptr().add(b * 16);
                let words: [i32; 8] = std::mem::transmute(_mm256_loadu_si256(bs as *const __m256i));
                let mut offset = _mm256_setzero_si256();
                for (k, sc) in scale_pairs.iter().enumerate() {
                    let bsum = _mm256_set1_epi32(words[k]);
                    offset = _mm256_add_epi32(offset, _mm256_madd_epi16(*sc, bsum));
                }
                let total = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(offset, 5));
                let xd = _mm256_set1_ps(*x[t].d.get_unchecked(b));
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, xd), _mm256_cvtepi32_ps(total), acc[t]);
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::kquants::{dequantize_row, dot_k_portable};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    const FORMATS: [(QuantFormat, GgmlDType); 3] = [
        (QuantFormat::Q4K, GgmlDType::Q4K),
        (QuantFormat::Q5K, GgmlDType::Q5K),
        (QuantFormat::Q6K, GgmlDType::Q6K),
    ];

    /// Weights of mixed sign and magnitude; rows 8–15 all zero (a whole group, so its scales
    /// and mins are zero) when there are at least 24 rows.
    fn weights(dtype: GgmlDType, rows: usize, cols: usize) -> Vec<u8> {
        let mut v: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let t = (i * 7919 + 31) % 2003;
                (t as f32 / 1001.5 - 1.0) * (1.0 + ((i / 53) % 7) as f32)
            })
            .collect();
        if rows >= 24 {
            v[8 * cols..16 * cols].fill(0.0);
        }
        let w = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        q.data().unwrap().to_vec()
    }

    fn activations(cols: usize, seed: usize) -> Q8KRow {
        let mut v: Vec<f32> = (0..cols)
            .map(|i| ((i * 104_729 + seed * 7) % 1999) as f32 / 999.5 - 1.0)
            .collect();
        // A whole block of zero activations (Q8_K scale 0).
        if cols >= 2 * QK_K {
            v[QK_K..2 * QK_K].fill(0.0);
        }
        Q8KRow::new(&v)
    }

    #[test]
    fn declines_shapes_and_formats_that_do_not_interleave() {
        let bytes = weights(GgmlDType::Q4K, 16, 256);
        let q4k = QuantFormat::Q4K;
        assert!(Interleaved::repack(q4k, &bytes, 12, 256).is_none());
        assert!(Interleaved::repack(q4k, &bytes, 16, 250).is_none());
        assert!(Interleaved::repack(q4k, &bytes[..100], 16, 256).is_none());
        assert!(Interleaved::repack(QuantFormat::Q8_0, &bytes, 8, 256).is_none());
        assert!(Interleaved::repack(q4k, &bytes, 16, 256).is_some());
    }

    #[test]
    fn repacked_rows_widen_to_the_original_values() {
        let (rows, cols) = (24, 768);
        for (format, dtype) in FORMATS {
            let bytes = weights(dtype, rows, cols);
            let packed = Interleaved::repack(format, &bytes, rows, cols).unwrap();
            assert_eq!(packed.format(), format);
            let row_bytes = cols / QK_K * format.block_bytes();
            for r in 0..rows {
                let mut want = vec![0f32; cols];
                dequantize_row(format, &bytes[r * row_bytes..][..row_bytes], &mut want);
                let mut got = vec![0f32; cols];
                packed.dequantize_row(r, &mut got);
                assert_eq!(got, want, "{format:?} row {r}");
            }
        }
    }

    #[test]
    fn group_products_equal_the_row_kernel_on_awkward_shapes() {
        // One block, an odd number (the 2816 of the reference model), a zero group of rows
        // and a zero block of activations.
        for (format, dtype) in FORMATS {
            for (rows, cols) in [(8, 256), (24, 768), (16, 2816)] {
                let bytes = weights(dtype, rows, cols);
                let packed = Interleaved::repack(format, &bytes, rows, cols).unwrap();
                let row_bytes = cols / QK_K * format.block_bytes();
                let x = activations(cols, rows);
                for g in 0..rows / ROWS {
                    let mut portable = [[0f32; ROWS]; 1];
                    group_dots_portable(format, packed.group(g), &[&x], &mut portable);
                    for r in 0..ROWS {
                        let row = &bytes[(g * ROWS + r) * row_bytes..][..row_bytes];
                        let want = dot_k_portable(format, &x, row);
                        let got = portable[0][r];
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{format:?} {rows}x{cols} row {}: {got} vs {want}",
                            g * ROWS + r
                        );
                    }
                    #[cfg(target_arch = "x86_64")]
                    if crate::models::kernels::test_may_run(KernelSet::Avx2, "AVX2 x8 kernels") {
                        let mut simd = [[0f32; ROWS]; 1];
                        let blocks = cols / QK_K;
                        let w = packed.group(g).as_ptr();
                        // SAFETY: AVX2 checked just above; whole blocks of both operands.
                        unsafe {
                            match format {
                                QuantFormat::Q4K => {
                                    x86::q45k_dots::<1, false>(w, blocks, &[&x], &mut simd)
                                }
                                QuantFormat::Q5K => {
                                    x86::q45k_dots::<1, true>(w, blocks, &[&x], &mut simd)
                                }
                                _ => x86::q6k_dots::<1>(w, blocks, &[&x], &mut simd),
                            }
                        };
                        assert_eq!(simd, portable, "{format:?} {rows}x{cols} group {g}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_many_token_product_equals_one_token_at_a_time() {
        // 7 tokens: one pass of four and three single tails.
        let (rows, cols, m) = (24, 512, 7);
        for (format, dtype) in FORMATS {
            let bytes = weights(dtype, rows, cols);
            let packed = Interleaved::repack(format, &bytes, rows, cols).unwrap();
            let xs: Vec<Q8KRow> = (0..m).map(|t| activations(cols, t)).collect();
            let got = packed.product(&xs);
            assert_eq!(got.len(), m * rows);
            for (t, x) in xs.iter().enumerate() {
                for g in 0..rows / ROWS {
                    let mut want = [[0f32; ROWS]; 1];
                    group_dots_portable(format, packed.group(g), &[x], &mut want);
                    let at = t * rows + g * ROWS;
                    assert_eq!(&got[at..at + ROWS], &want[0], "{format:?} token {t}");
                }
            }
        }
    }
}
