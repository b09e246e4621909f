//! `exp` in straight-line f32 arithmetic, and the loops of the CPU forward built on it
//! (softmax rows, SiLU-gated products).
//!
//! Why: the C library's `expf` is a call per value that no loop vectorises; a prompt's MLP
//! activations (128 tokens × 2,816 for the 181 M reference model, per layer) and attention
//! probabilities spent more time there than in anything but the weight products. This is the
//! classic Cephes reduction (`x = n·ln 2 + r`, a degree-6 polynomial in `r`, `2ⁿ` put in the
//! exponent bits): within 2 ulp of `f32::exp` over its range, exactly 0 at −∞, and compiled
//! once more for AVX2 + FMA so the loops below run eight lanes at a time.

use super::kernels::KernelSet;

/// Inputs below this give 0 (the true result is below f32's normal range).
const LOWEST: f32 = -87.336_55;
/// Inputs above this give `f32::MAX`-ish values; above it `exp` overflows.
const HIGHEST: f32 = 88.376_26;

/// `e^x` for one value; see the module note.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Selects rather than `min`/`max`, so the loops vectorise (NaN becomes LOWEST's result).
    let x = if x > HIGHEST { HIGHEST } else { x };
    let under = x.is_nan() || x < LOWEST;
    let x = if under { LOWEST } else { x };
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts, so `n · ln 2` is subtracted without rounding away `r`.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let z = r * r;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * z + r + 1.0;
    // 2ⁿ with n in -126..=128: at 128 the product with y ≤ √2/2·2 stays finite only through
    // splitting the power in two halves.
    let half = (n * 0.5).floor();
    let pow = |e: f32| f32::from_bits(((e as i32 + 127) << 23) as u32);
    let out = y * pow(half) * pow(n - half);
    if under {
        0.0
    } else {
        out
    }
}

/// `row[i] = e^(row[i] - max)`; returns the sum of the new values (summed in eight strided
/// partial sums, then those in order).
pub fn exp_shifted_sum(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if KernelSet::active() >= KernelSet::Avx2 {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { x86::exp_shifted_sum(row, max) };
    }
    exp_shifted_sum_portable(row, max)
}

/// Scales `row` in place and returns its largest value, in eight lanes (so it
/// vectorises: one `max` chain per value waited on the previous one's latency).
pub fn scale_and_max(row: &mut [f32], scale: f32) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (v, m) in c.iter_mut().zip(lanes.iter_mut()) {
            *v *= scale;
            *m = if *v > *m { *v } else { *m };
        }
    }
    for (v, m) in chunks.into_remainder().iter_mut().zip(lanes.iter_mut()) {
        *v *= scale;
        *m = if *v > *m { *v } else { *m };
    }
    lanes
        .into_iter()
        .fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a })
}

/// `gate[i] = silu(gate[i]) · up[i]`, SiLU being `x / (1 + e^-x)`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if KernelSet::active() >= KernelSet::Avx2 {
        // SAFETY: as above.
        return unsafe { x86::silu_mul(gate, up) };
    }
    silu_mul_portable(gate, up)
}

/// SiLU of one value.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[inline(always)]
fn exp_shifted_sum_portable(row: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (v, s) in c.iter_mut().zip(lanes.iter_mut()) {
            *v = exp(*v - max);
            *s += *v;
        }
    }
    for (v, s) in chunks.into_remainder().iter_mut().zip(lanes.iter_mut()) {
        *v = exp(*v - max);
        *s += *v;
    }
    lanes.iter().sum()
}

#[inline(always)]
fn silu_mul_portable(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{exp, silu, HIGHEST, LOWEST};

    /// [`exp`] on eight lanes, operation for operation (separate multiplies and adds, no
    /// fused ones), so each lane equals the scalar result bit for bit.
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_blendv_ps(
            x,
            _mm256_set1_ps(HIGHEST),
            _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(HIGHEST)),
        );
        let under = _mm256_cmp_ps::<_CMP_NGE_UQ>(x, _mm256_set1_ps(LOWEST));
        let x = _mm256_blendv_ps(x, _mm256_set1_ps(LOWEST), under);
        let add = _mm256_add_ps;
        let mul = _mm256_mul_ps;
        let n = _mm256_floor_ps(add(
            mul(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _mm256_set1_ps(0.5),
        ));
        let r = add(
            _mm256_sub_ps(x, mul(n, _mm256_set1_ps(0.693_359_4))),
            mul(n, _mm256_set1_ps(2.121_944_4e-4)),
        );
        let z = mul(r, r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = add(mul(p, r), _mm256_set1_ps(c));
        }
        let y = add(add(mul(p, z), r), _mm256_set1_ps(1.0));
        let half = _mm256_floor_ps(mul(n, _mm256_set1_ps(0.5)));
        let pow = |e: __m256| {
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvttps_epi32(e),
                _mm256_set1_epi32(127),
            )))
        };
        let out = mul(mul(y, pow(half)), pow(_mm256_sub_ps(n, half)));
        _mm256_andnot_ps(under, out)
    }

    /// [`super::exp_shifted_sum`] eight lanes at a time (lane `l` sums values `l, l + 8, …`,
    /// as the portable loop does).
    ///
    /// Safety: the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted_sum(row: &mut [f32], max: f32) -> f32 {
        let body = row.len() / 8 * 8;
        let p = row.as_mut_ptr();
        let m = _mm256_set1_ps(max);
        let mut sums = _mm256_setzero_ps();
        let mut i = 0;
        while i < body {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), e);
            sums = _mm256_add_ps(sums, e);
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sums);
        for (v, s) in row[body..].iter_mut().zip(lanes.iter_mut()) {
            *v = exp(*v - max);
            *s += *v;
        }
        lanes.iter().sum()
    }

    /// [`super::silu_mul`] eight lanes at a time.
    ///
    /// Safety: the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        let len = gate.len().min(up.len());
        let body = len / 8 * 8;
        let (g, u) = (gate.as_mut_ptr(), up.as_ptr());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i < body {
            let x = _mm256_loadu_ps(g.add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
            _mm256_storeu_ps(g.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(u.add(i))));
            i += 8;
        }
        for (g, u) in gate[body..len].iter_mut().zip(&up[body..len]) {
            *g = silu(*g) * u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_library_over_its_range() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.3 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(ulps(got, want));
            x += 0.000_731;
        }
        assert!(worst <= 2, "worst {worst} ulp");
        for x in [0.0f32, -0.0, 1.0, -1.0, 1e-8, -1e-8, 88.0, -87.0] {
            assert!(ulps(exp(x), x.exp()) <= 2, "{x}");
        }
    }

    #[test]
    fn exp_saturates_at_the_ends() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(88.7).is_finite() && exp(88.7) > 2.0e38);
        assert!(exp(f32::INFINITY).is_finite());
    }

    #[test]
    fn the_vector_loops_equal_their_portable_twins_on_awkward_lengths() {
        for len in [0usize, 1, 7, 8, 9, 33, 130] {
            let vals: Vec<f32> = (0..len).map(|i| ((i as f32) * 1.37).sin() * 9.0).collect();
            let mut a = vals.clone();
            let mut b = vals.clone();
            // A masked (−∞) score must come out exactly 0.
            if len > 2 {
                a[1] = f32::NEG_INFINITY;
                b[1] = f32::NEG_INFINITY;
            }
            let sa = exp_shifted_sum(&mut a, 9.0);
            let sb = exp_shifted_sum_portable(&mut b, 9.0);
            assert_eq!(a, b, "exp, length {len}");
            assert_eq!(sa, sb, "sum, length {len}");
            if len > 2 {
                assert_eq!(a[1], 0.0);
            }
            let want: f32 = vals
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    if i == 1 && len > 2 {
                        0.0
                    } else {
                        (v - 9.0).exp()
                    }
                })
                .sum();
            assert!((sa - want).abs() <= 1e-5 * want.max(1.0), "{sa} vs {want}");

            let up: Vec<f32> = (0..len).map(|i| (i as f32 * 0.3).cos()).collect();
            let (mut g1, mut g2) = (vals.clone(), vals.clone());
            silu_mul(&mut g1, &up);
            silu_mul_portable(&mut g2, &up);
            assert_eq!(g1, g2, "silu, length {len}");
            for ((g, v), u) in g1.iter().zip(&vals).zip(&up) {
                let want = v / (1.0 + (-v).exp()) * u;
                assert!(
                    (g - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{g} vs {want}"
                );
            }
        }
    }
}
