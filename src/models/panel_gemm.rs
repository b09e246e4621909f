//! The prefill product `x · wᵀ` on packed weight panels: 16 weight rows at a time are widened
//! to f32 and interleaved (`panel[p · 16 + j]` is row `j`'s value `p`), then every group of six
//! activation rows is multiplied by the panel in registers: per value `p`, two 8-lane loads of
//! the panel, six broadcasts of the activations and twelve fused multiply-adds, each output
//! written once. Each parallel task widens up to 8 panels and runs 24 activation rows at a
//! time through all of them, so a long prompt's rows stay in L2.
//!
//! Why not the `gemm` crate here: for the prefill's shape (a prompt's rows times a weight widened
//! a tile at a time) it repacks the whole activation matrix for every tile of the weight, and
//! the widened tile a second time into its own layout; on AVX2 machines those copies cost about
//! a fifth of the product. Here the activations are read in place and each weight value is
//! widened straight into the layout the kernel reads, once.

use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::gemv::Rows;
use super::kernels::SendPtr;
use super::kquants;

/// Weight rows per panel: two 8-lane registers.
pub const PANEL: usize = 16;
/// Activation rows per register tile: 6 × 2 accumulators plus the two panel registers and a
/// broadcast fill 15 of the 16 AVX2 registers.
const ROWS: usize = 6;
/// Activation rows per block: 24 rows of a 1,024-wide model are 96 KiB, of a 2,816-wide
/// down projection 270 KiB, inside a core's L2 while the task's panels run over them.
const BLOCK: usize = 24;
/// Panels per parallel task: each block of activation rows is read from L2 once per panel.
const GROUP: usize = 8;

/// `(m, n)` row-major `x · wᵀ` for `xs` `(m, k)` row-major and a weight of `n` rows of `k` in
/// any format the decode kernels read. Panels are spread over the current rayon pool. `simd`:
/// the AVX2 kernels (the caller checked the CPU has them) or their portable twins.
pub(super) fn product(
    xs: &[f32],
    m: usize,
    k: usize,
    n: usize,
    rows: Rows<'_>,
    simd: bool,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    let dst = SendPtr(out.as_mut_ptr());
    let panels = n.div_ceil(PANEL);
    // Panels per task: up to `GROUP`, fewer where that would leave a thread without work.
    let group = GROUP
        .min(panels.div_ceil(4 * rayon::current_num_threads()))
        .max(1);
    (0..panels.div_ceil(group)).into_par_iter().for_each_init(
        || (Vec::<AlignedPanel>::new(), Vec::new()),
        |(buffers, widened), t| {
            let first = t * group * PANEL;
            let last = n.min(first + group * PANEL);
            buffers.resize_with(group, AlignedPanel::default);
            let filled: Vec<(&[f32], usize)> = buffers
                .iter_mut()
                .zip((first..last).step_by(PANEL))
                .map(|(buffer, start)| {
                    let count = PANEL.min(last - start);
                    (buffer.fill(rows, k, start, count, widened, simd), count)
                })
                .collect();
            // SAFETY: `dst` is `out`, `(m, n)` row-major and alive for the whole loop; this
            // task writes only columns `first..last`, which no other task touches.
            unsafe { blocked_product(xs, m, k, &filled, dst.at(first), n, simd) };
        },
    );
    out
}

/// One thread's buffers for [`product_serial`] and [`product_serial_columns`], kept between
/// calls so the products allocate nothing.
#[derive(Default)]
pub struct Scratch {
    panel: AlignedPanel,
    widened: Vec<f32>,
}

/// [`product`] on the calling thread into `out` (`(m, n)` row-major), for products too small to
/// split (the attention's blocks, which run in parallel themselves).
#[allow(clippy::too_many_arguments)]
pub(super) fn product_serial(
    xs: &[f32],
    m: usize,
    k: usize,
    n: usize,
    rows: Rows<'_>,
    out: &mut [f32],
    scratch: &mut Scratch,
    simd: bool,
) {
    assert!(xs.len() >= m * k && out.len() >= m * n, "operand sizes");
    for first in (0..n).step_by(PANEL) {
        let count = PANEL.min(n - first);
        let panel = scratch
            .panel
            .fill(rows, k, first, count, &mut scratch.widened, simd);
        one_panel_product(xs, m, k, panel, count, out, first, n, simd);
    }
}

/// `out = xs · v` on the calling thread, for `xs` `(m, k)` and `v` `(k, n)` row-major (a
/// weight given by its columns: each panel is 16 columns of `v`, copied row by row).
#[allow(clippy::too_many_arguments)]
pub(super) fn product_serial_columns(
    xs: &[f32],
    m: usize,
    k: usize,
    v: &[f32],
    n: usize,
    out: &mut [f32],
    scratch: &mut Scratch,
    simd: bool,
) {
    assert!(
        xs.len() >= m * k && v.len() >= k * n && out.len() >= m * n,
        "operand sizes"
    );
    for first in (0..n).step_by(PANEL) {
        let count = PANEL.min(n - first);
        let panel = scratch.panel.sized(k);
        for (p, dst) in panel.chunks_exact_mut(PANEL).enumerate() {
            dst[..count].copy_from_slice(&v[p * n + first..p * n + first + count]);
            dst[count..].fill(0.0);
        }
        one_panel_product(xs, m, k, panel, count, out, first, n, simd);
    }
}

/// Columns `first..first + count` of `out` (`(m, n)` row-major, checked by the callers) from
/// one panel: the serial products' step.
#[allow(clippy::too_many_arguments)]
fn one_panel_product(
    xs: &[f32],
    m: usize,
    k: usize,
    panel: &[f32],
    count: usize,
    out: &mut [f32],
    first: usize,
    n: usize,
    simd: bool,
) {
    assert!(out.len() >= m * n && first + count <= n, "output columns");
    // SAFETY: `out` holds `(m, n)` values and the panel's columns lie inside its rows (asserted
    // above); `xs` and the panel are sized by the callers' own checks.
    unsafe {
        blocked_product(
            xs,
            m,
            k,
            &[(panel, count)],
            out.as_mut_ptr().add(first),
            n,
            simd,
        )
    };
}

/// Rows `first..last` of a weight with rows of `k` widened to f32 into `buf`.
pub(super) fn widen(rows: Rows<'_>, k: usize, first: usize, last: usize, buf: &mut [f32]) {
    match rows {
        Rows::F32(w) => buf.copy_from_slice(&w[first * k..last * k]),
        Rows::F16(w) => w[first * k..last * k].convert_to_f32_slice(buf),
        Rows::BF16(w) => w[first * k..last * k].convert_to_f32_slice(buf),
        Rows::Quant(format, data) => {
            let bytes = k / format.block_len() * format.block_bytes();
            for (r, dst) in (first..last).zip(buf.chunks_exact_mut(k)) {
                kquants::dequantize_row(format, &data[r * bytes..(r + 1) * bytes], dst);
            }
        }
        Rows::Interleaved(w) => {
            for (r, dst) in (first..last).zip(buf.chunks_exact_mut(k)) {
                w.dequantize_row(r, dst);
            }
        }
    }
}

/// `out[i · ldo + g · 16 + j] = Σ_p xs[i · k + p] · panels[g].0[p · 16 + j]` for `i < m` and
/// `j < panels[g].1`: the panels side by side.
///
/// The AVX2 kernels run block by block: `BLOCK` activation rows through every panel of the
/// task before the next rows, so the rows come from L2. Run straight through, a long prompt's
/// activations (8 MiB for 2,048 tokens of a 1,024-wide model) streamed from the last-level
/// cache or memory once per panel: 4–9 % of a 2,048-token prefill (paired runs; no change at
/// 128 and 512 tokens, where they stay in the caches either way).
///
/// Safety: `out` is valid for writes at those offsets; `xs` holds `m · k` values and each panel
/// `k · 16`.
unsafe fn blocked_product(
    xs: &[f32],
    m: usize,
    k: usize,
    panels: &[(&[f32], usize)],
    out: *mut f32,
    ldo: usize,
    simd: bool,
) {
    for m0 in (0..m).step_by(BLOCK) {
        let block = BLOCK.min(m - m0);
        for (g, &(panel, cols)) in panels.iter().enumerate() {
            let mut i = m0;
            while i < m0 + block {
                let rows = ROWS.min(m0 + block - i);
                let x = &xs[i * k..(i + rows) * k];
                let o = out.add(i * ldo + g * PANEL);
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: the caller checked the CPU's features; sizes as documented above.
                    match rows {
                        6 => avx2::tile::<6>(x, k, panel, o, ldo, cols),
                        5 => avx2::tile::<5>(x, k, panel, o, ldo, cols),
                        4 => avx2::tile::<4>(x, k, panel, o, ldo, cols),
                        3 => avx2::tile::<3>(x, k, panel, o, ldo, cols),
                        2 => avx2::tile::<2>(x, k, panel, o, ldo, cols),
                        _ => avx2::tile::<1>(x, k, panel, o, ldo, cols),
                    }
                    i += rows;
                    continue;
                }
                let _ = simd;
                tile_portable(x, rows, k, panel, o, ldo, cols);
                i += rows;
            }
        }
    }
}

/// The register tile's arithmetic in plain loops, in the kernel's order: per output, the
/// products added in `p` order, each rounded before its addition (the kernel's fused
/// multiply-add rounds once, so the two agree to rounding, not bit for bit).
unsafe fn tile_portable(
    x: &[f32],
    rows: usize,
    k: usize,
    panel: &[f32],
    out: *mut f32,
    ldo: usize,
    cols: usize,
) {
    for i in 0..rows {
        let mut acc = [0f32; PANEL];
        for p in 0..k {
            let xv = x[i * k + p];
            for (a, w) in acc.iter_mut().zip(&panel[p * PANEL..(p + 1) * PANEL]) {
                *a += xv * w;
            }
        }
        std::ptr::copy_nonoverlapping(acc.as_ptr(), out.add(i * ldo), cols);
    }
}

/// A panel buffer aligned to a cache line, so each value's 16 weights are one line.
#[derive(Default)]
struct AlignedPanel {
    buf: Vec<f32>,
}

impl AlignedPanel {
    /// The aligned panel of `k` values (16 weights each), grown as needed.
    fn sized(&mut self, k: usize) -> &mut [f32] {
        if self.buf.len() < k * PANEL + PANEL {
            self.buf.resize(k * PANEL + PANEL, 0.0);
        }
        let skip = self.buf.as_ptr().align_offset(64).min(PANEL);
        &mut self.buf[skip..skip + k * PANEL]
    }

    /// Rows `first..first + count` widened and interleaved; rows past `count` are zero. The
    /// rows are widened row by row into `widened` (f32 rows are read in place), then
    /// interleaved eight rows by eight values at a time.
    fn fill(
        &mut self,
        rows: Rows<'_>,
        k: usize,
        first: usize,
        count: usize,
        widened: &mut Vec<f32>,
        simd: bool,
    ) -> &[f32] {
        let panel = self.sized(k);
        // Half-precision rows widen straight into the panel: one pass over the stored values
        // instead of a widening pass and an interleaving pass (a tenth of an f16 prefill).
        #[cfg(target_arch = "x86_64")]
        if simd && count == PANEL && k.is_multiple_of(8) {
            let (begin, end) = (first * k, (first + PANEL) * k);
            match rows {
                // SAFETY: the caller checked the CPU's features; each source holds the 16
                // rows of `k` values sliced here, and `panel` `16 · k` values.
                Rows::F16(w) => unsafe {
                    avx2::interleave(w[begin..end].as_ptr(), k, k, panel);
                    return panel;
                },
                // SAFETY: as above.
                Rows::BF16(w) => unsafe {
                    avx2::interleave(w[begin..end].as_ptr(), k, k, panel);
                    return panel;
                },
                _ => {}
            }
        }
        let source: &[f32] = match rows {
            Rows::F32(w) if count == PANEL => &w[first * k..(first + PANEL) * k],
            _ => {
                widened.resize(PANEL * k, 0.0);
                widen(rows, k, first, first + count, &mut widened[..count * k]);
                widened[count * k..].fill(0.0);
                widened
            }
        };
        interleave(source, k, panel, simd);
        panel
    }
}

/// `panel[p · 16 + j] = rows[j · k + p]` for the 16 rows of `k` values in `rows`.
fn interleave(rows: &[f32], k: usize, panel: &mut [f32], simd: bool) {
    let mut p0 = 0;
    #[cfg(target_arch = "x86_64")]
    if simd {
        let body = k / 8 * 8;
        // SAFETY: the caller checked the CPU's features; `rows` holds 16 rows of `k`, `panel`
        // `k · 16` values, and every 8 × 8 block read or written lies inside them.
        unsafe { avx2::interleave(rows.as_ptr(), k, body, panel) };
        p0 = body;
    }
    let _ = simd;
    for p in p0..k {
        for j in 0..PANEL {
            panel[p * PANEL + j] = rows[j * k + p];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::gemv::Lanes;
    use super::PANEL;

    /// Values `0..body` (a multiple of 8) of the 16 rows of `k` at `rows` widened to f32 and
    /// interleaved into `panel` (see [`super::interleave`]): 8 × 8 blocks transposed in
    /// registers, each value loaded once from where it is stored.
    ///
    /// Safety: the CPU has AVX2 and F16C; `rows` points at `16 · k` values and `panel` holds
    /// `16 · k`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn interleave<E: Lanes>(rows: *const E, k: usize, body: usize, panel: &mut [f32]) {
        let dst = panel.as_mut_ptr();
        for half in 0..2 {
            let src = rows.add(half * 8 * k);
            let mut p = 0;
            while p < body {
                let r = |j: usize| E::load8(src.add(j * k + p));
                let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                let (r4, r5, r6, r7) = (r(4), r(5), r(6), r(7));
                let t0 = _mm256_unpacklo_ps(r0, r1);
                let t1 = _mm256_unpackhi_ps(r0, r1);
                let t2 = _mm256_unpacklo_ps(r2, r3);
                let t3 = _mm256_unpackhi_ps(r2, r3);
                let t4 = _mm256_unpacklo_ps(r4, r5);
                let t5 = _mm256_unpackhi_ps(r4, r5);
                let t6 = _mm256_unpacklo_ps(r6, r7);
                let t7 = _mm256_unpackhi_ps(r6, r7);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let columns = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (t, c) in columns.into_iter().enumerate() {
                    _mm256_storeu_ps(dst.add((p + t) * PANEL + half * 8), c);
                }
                p += 8;
            }
        }
    }

    /// `R` activation rows times one panel; see [`super::blocked_product`].
    ///
    /// Safety: the CPU has AVX2 and FMA; `x` holds `R · k` values, `panel` `k · 16`, and `out`
    /// is writable at `i · ldo + j` for `i < R`, `j < cols`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize>(
        x: &[f32],
        k: usize,
        panel: &[f32],
        out: *mut f32,
        ldo: usize,
        cols: usize,
    ) {
        let (xp, wp) = (x.as_ptr(), panel.as_ptr());
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        for p in 0..k {
            let w0 = _mm256_loadu_ps(wp.add(p * PANEL));
            let w1 = _mm256_loadu_ps(wp.add(p * PANEL + 8));
            for i in 0..R {
                let xv = _mm256_broadcast_ss(&*xp.add(i * k + p));
                lo[i] = _mm256_fmadd_ps(xv, w0, lo[i]);
                hi[i] = _mm256_fmadd_ps(xv, w1, hi[i]);
            }
        }
        for i in 0..R {
            let o = out.add(i * ldo);
            if cols == PANEL {
                _mm256_storeu_ps(o, lo[i]);
                _mm256_storeu_ps(o.add(8), hi[i]);
            } else {
                let mut row = [0f32; PANEL];
                _mm256_storeu_ps(row.as_mut_ptr(), lo[i]);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), hi[i]);
                std::ptr::copy_nonoverlapping(row.as_ptr(), o, cols);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::kernels::{self, KernelSet};

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 + seed) * 0.618).sin())
            .collect()
    }

    fn naive(xs: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        (0..m * n)
            .map(|o| {
                let (i, j) = (o / n, o % n);
                (0..k).map(|p| xs[i * k + p] * w[j * k + p]).sum()
            })
            .collect()
    }

    fn run(xs: &[f32], w: &[f32], m: usize, k: usize, n: usize, simd: bool) -> Vec<f32> {
        product(xs, m, k, n, Rows::F32(w), simd)
    }

    #[test]
    fn the_serial_products_equal_the_parallel_one() {
        let simd = KernelSet::active() >= KernelSet::Avx2;
        let mut scratch = Scratch::default();
        for (m, n, k) in [(1, 1, 1), (7, 17, 9), (64, 40, 64), (5, 16, 130)] {
            let (xs, w) = (values(m * k, 0.75), values(n * k, 3.0));
            let want = run(&xs, &w, m, k, n, simd);
            let mut got = vec![f32::NAN; m * n];
            product_serial(&xs, m, k, n, Rows::F32(&w), &mut got, &mut scratch, simd);
            assert_eq!(got, want, "{m}x{n}x{k} by rows");
            // The same weight given by its columns: `v` is `wᵀ`, `(k, n)`.
            let v: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            let mut got = vec![f32::NAN; m * n];
            product_serial_columns(&xs, m, k, &v, n, &mut got, &mut scratch, simd);
            assert_eq!(got, want, "{m}x{n}x{k} by columns");
        }
    }

    #[test]
    fn the_portable_tile_equals_the_plain_product_on_awkward_shapes() {
        // Row counts around the 6-row tile, column counts around the 16-row panel, odd `k`.
        for (m, n, k) in [(1, 1, 1), (5, 15, 7), (6, 16, 33), (7, 17, 3), (13, 37, 64)] {
            let (xs, w) = (values(m * k, 0.5), values(n * k, 1.5));
            let got = run(&xs, &w, m, k, n, false);
            let want = naive(&xs, &w, m, k, n);
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + k as f32),
                    "{m}x{n}x{k}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn half_precision_rows_widen_straight_into_the_panel_exactly() {
        if !kernels::test_may_run(KernelSet::Avx2, "avx2 panel widening") {
            return;
        }
        for k in [8, 72, 1024] {
            let values = values(PANEL * 2 * k, 0.5);
            let f16: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
            let bf16: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
            for rows in [Rows::F16(&f16), Rows::BF16(&bf16)] {
                // The second panel of two: rows 16..32.
                let (mut fused, mut widened) = (AlignedPanel::default(), AlignedPanel::default());
                let got = fused.fill(rows, k, PANEL, PANEL, &mut Vec::new(), true);
                let want = widened.fill(rows, k, PANEL, PANEL, &mut Vec::new(), false);
                assert_eq!(got, want, "k = {k}");
                assert!(got.iter().any(|&v| v != 0.0));
            }
        }
    }

    #[test]
    fn the_avx2_tile_equals_its_portable_twin_on_awkward_shapes() {
        if !kernels::test_may_run(KernelSet::Avx2, "avx2 panel product") {
            return;
        }
        for (m, n, k) in [
            (1, 1, 1),
            (2, 3, 5),
            (5, 15, 7),
            (6, 16, 33),
            (7, 17, 3),
            (12, 32, 128),
            (13, 37, 64),
            (128, 40, 96),
            // Several 24-row blocks through tasks of several panels, a narrow last panel.
            (50, 300, 40),
        ] {
            let (xs, mut w) = (values(m * k, 0.25), values(n * k, 2.0));
            // An all-zero weight row: its column must come out exactly zero.
            w[..k].fill(0.0);
            let got = run(&xs, &w, m, k, n, true);
            let want = run(&xs, &w, m, k, n, false);
            for (o, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + k as f32),
                    "{m}x{n}x{k} [{o}]: {a} vs {b}"
                );
                if o % n == 0 {
                    assert_eq!(*a, 0.0, "{m}x{n}x{k}: zero row");
                }
            }
        }
    }
}
