//! Prefill products of bf16 weights on AMX tiles (Sapphire Rapids and later Xeons).
//!
//! Why: a bf16 model's prefill is a GEMM of bf16 weights, and one AMX `tdpbf16ps` does
//! 16 × 16 × 32 multiply-adds; the AVX-512 f32 GEMM reaches a small fraction of that, and has
//! to widen every weight first. PyTorch runs bf16 prefill this way (through oneDNN).
//!
//! Layout: `Y = X · Wᵀ` is computed transposed, `Yᵀ = W · Xᵀ`, so the weight (`n × k`,
//! row-major bf16) is the tiles' A operand read in place, 16 rows × 32 values per tile, and
//! only the activations are packed as B tiles (per 32 values of `k`, 16 rows of value pairs,
//! one pair per token).
//!
//! Precision: the activations stay f32 in the model, so each is split into two bf16 terms,
//! `x ≈ hi + lo` with `hi = bf16(x)` and `lo = bf16(x − hi)` (about 16 significant bits), and
//! both are multiplied: the result is the f32 product of the bf16 weights to within about
//! 1e-5 relative, at twice the tile work (still several times faster than f32 FMA). Each task owns 32 weight rows and runs
//! 2 × 2 accumulator tiles (32 rows × 32 tokens) over all of `k`, so its weight rows stay in
//! L2 while it walks the tokens.
//!
//! The tile instructions are written as inline assembly (Rust has no stable AMX intrinsics);
//! the tile registers are used only inside this module's `asm!` blocks. Linux grants a
//! process the tile state only on request (`kernels::amx_usable`); without it this declines
//! and the caller uses the AVX-512 GEMM.

use std::arch::asm;

use rayon::prelude::*;

use super::kernels::SendPtr;

/// Weight rows per tile, values of `k` per tile, tokens per tile.
const ROWS: usize = 16;
const KSTEP: usize = 32;

/// The 64-byte tile configuration: palette 1, eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn full() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64; // bytes per row (low byte of the u16)
            c[48 + t] = 16; // rows
        }
        TileConfig(c)
    }
}

/// `(m, n)` row-major `X · Wᵀ` for `xs` of `(m, k)` f32 and `w` of `(n, k)` bf16, or `None`
/// when AMX is not usable here or `k` is not a multiple of 32.
pub fn matmul_bf16(xs: &[f32], m: usize, k: usize, w: &[half::bf16], n: usize) -> Option<Vec<f32>> {
    if !super::kernels::amx_usable() || !k.is_multiple_of(KSTEP) || m == 0 || n == 0 {
        return None;
    }
    if xs.len() < m * k || w.len() < n * k {
        return None;
    }
    let packed = [
        pack_activations(xs, m, k, half::bf16::from_f32),
        pack_activations(xs, m, k, |v| {
            half::bf16::from_f32(v - half::bf16::from_f32(v).to_f32())
        }),
    ];
    let token_pairs = m.div_ceil(2 * ROWS);
    let mut out = vec![0f32; m * n];
    let dst = SendPtr(out.as_mut_ptr());
    let row_pairs = n.div_ceil(2 * ROWS);
    (0..row_pairs).into_par_iter().for_each(|rp| {
        let first = rp * 2 * ROWS;
        let count = (n - first).min(2 * ROWS);
        // The last rows of a weight whose row count is not a multiple of 32: copied with zero
        // rows after them, so the tile loads stay inside the buffer.
        let padded: Vec<half::bf16>;
        let rows: &[half::bf16] = if count == 2 * ROWS {
            &w[first * k..(first + count) * k]
        } else {
            let mut p = vec![half::bf16::ZERO; 2 * ROWS * k];
            p[..count * k].copy_from_slice(&w[first * k..(first + count) * k]);
            padded = p;
            &padded
        };
        let cfg = TileConfig::full();
        let mut tiles = [[0f32; ROWS * ROWS]; 4];
        // SAFETY: AMX is usable (checked above: CPU support and the OS's permission). The
        // config describes 16 × 64-byte tiles; every tile load reads 16 rows of 64 bytes from
        // `rows` (32 × k values: row stride 2k bytes, column offset < k) or from `packed`
        // (whole 1 KiB tiles); every store writes one 1 KiB `tiles` entry.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
            for tp in 0..token_pairs {
                tile_block(rows.as_ptr(), k, &packed, tp, &mut tiles);
                scatter(&tiles, dst.at(0), m, n, first, count, tp);
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    });
    Some(out)
}

/// `part` of each activation (its bf16 rounding, or the remainder) as B tiles, per token block
/// `t` and `k` step `s` 16 rows (value pairs `2r, 2r + 1` of the step) × 16 tokens, one 1 KiB
/// tile at `(t · steps + s) · 512` bf16 values. Tokens past `m` are zero.
fn pack_activations(
    xs: &[f32],
    m: usize,
    k: usize,
    part: impl Fn(f32) -> half::bf16 + Sync,
) -> Vec<half::bf16> {
    let steps = k / KSTEP;
    let blocks = m.div_ceil(2 * ROWS) * 2;
    let mut packed = vec![half::bf16::ZERO; blocks * steps * ROWS * KSTEP];
    packed
        .par_chunks_mut(steps * ROWS * KSTEP)
        .enumerate()
        .for_each(|(t, block)| {
            for j in 0..ROWS {
                let token = t * ROWS + j;
                if token >= m {
                    break;
                }
                let x = &xs[token * k..(token + 1) * k];
                for s in 0..steps {
                    let tile = &mut block[s * ROWS * KSTEP..(s + 1) * ROWS * KSTEP];
                    for r in 0..ROWS {
                        let at = r * 2 * ROWS + 2 * j;
                        tile[at] = part(x[s * KSTEP + 2 * r]);
                        tile[at + 1] = part(x[s * KSTEP + 2 * r + 1]);
                    }
                }
            }
        });
    packed
}

/// Four accumulator tiles over all of `k`: weight rows `0..16` and `16..32` of `rows` against
/// token blocks `2 tp` and `2 tp + 1`, both activation parts; stored to `tiles` as
/// `[rows a/b][tokens a/b]`.
///
/// Safety: the tile configuration of [`TileConfig::full`] is loaded; `rows` holds 32 rows of
/// `k` values; both `packed` parts hold the token blocks `2 tp + 1` and below.
#[inline(always)]
unsafe fn tile_block(
    rows: *const half::bf16,
    k: usize,
    packed: &[Vec<half::bf16>; 2],
    tp: usize,
    tiles: &mut [[f32; ROWS * ROWS]; 4],
) {
    let steps = k / KSTEP;
    let stride_a = 2 * k;
    let stride_b = 64usize;
    let block = |p: usize, t: usize| packed[p].as_ptr().add(t * steps * ROWS * KSTEP);
    let (b0, b1) = (block(0, 2 * tp), block(0, 2 * tp + 1));
    let (c0, c1) = (block(1, 2 * tp), block(1, 2 * tp + 1));
    let (a0, a1) = (rows, rows.add(ROWS * k));
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    for s in 0..steps {
        asm!(
            "tileloadd tmm4, [{a0} + {sa} * 1]",
            "tileloadd tmm5, [{a1} + {sa} * 1]",
            "tileloadd tmm6, [{b0} + {sb} * 1]",
            "tileloadd tmm7, [{b1} + {sb} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "tileloadd tmm6, [{c0} + {sb} * 1]",
            "tileloadd tmm7, [{c1} + {sb} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0.add(s * KSTEP),
            a1 = in(reg) a1.add(s * KSTEP),
            b0 = in(reg) b0.add(s * ROWS * KSTEP),
            b1 = in(reg) b1.add(s * ROWS * KSTEP),
            c0 = in(reg) c0.add(s * ROWS * KSTEP),
            c1 = in(reg) c1.add(s * ROWS * KSTEP),
            sa = in(reg) stride_a,
            sb = in(reg) stride_b,
            options(nostack, readonly)
        );
    }
    asm!(
        "tilestored [{t0} + {s} * 1], tmm0",
        "tilestored [{t1} + {s} * 1], tmm1",
        "tilestored [{t2} + {s} * 1], tmm2",
        "tilestored [{t3} + {s} * 1], tmm3",
        t0 = in(reg) tiles[0].as_mut_ptr(),
        t1 = in(reg) tiles[1].as_mut_ptr(),
        t2 = in(reg) tiles[2].as_mut_ptr(),
        t3 = in(reg) tiles[3].as_mut_ptr(),
        s = in(reg) 64usize,
        options(nostack)
    );
}

/// Writes the four transposed accumulator tiles (`tile[row][token]`) into `Y` (`m × n`) at
/// weight rows `first..first + count` and tokens of pair `tp`.
///
/// Safety: `dst` is `m × n`; only this task writes columns `first..first + count`.
unsafe fn scatter(
    tiles: &[[f32; ROWS * ROWS]; 4],
    dst: *mut f32,
    m: usize,
    n: usize,
    first: usize,
    count: usize,
    tp: usize,
) {
    for (t, tile) in tiles.iter().enumerate() {
        let (rb, tb) = (t / 2, t % 2);
        for i in 0..ROWS {
            let row = rb * ROWS + i;
            if row >= count {
                break;
            }
            for j in 0..ROWS {
                let token = (2 * tp + tb) * ROWS + j;
                if token >= m {
                    break;
                }
                *dst.add(token * n + first + row) = tile[i * ROWS + j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amx_product_equals_the_f32_product_of_the_bf16_weights() {
        if !super::super::kernels::amx_usable() {
            eprintln!(
                "SKIPPED AMX bf16 product: this CPU or OS offers no AMX tiles (features: {:?})",
                super::super::kernels::detected_features()
            );
            assert!(matmul_bf16(&[0.0; 32], 1, 32, &[half::bf16::ZERO; 32], 1).is_none());
            return;
        }
        // Token and row counts that are not multiples of the tiles, k of several steps.
        for (m, n, k) in [
            (1usize, 1usize, 32usize),
            (37, 53, 96),
            (33, 64, 1024),
            (128, 40, 64),
        ] {
            let xs: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.37).sin()).collect();
            let w: Vec<half::bf16> = (0..n * k)
                .map(|i| half::bf16::from_f32(((i as f32) * 0.11).cos()))
                .collect();
            let got = matmul_bf16(&xs, m, k, &w, n).expect("AMX usable");
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|p| xs[i * k + p] * w[j * k + p].to_f32());
                    let want: f32 = terms.clone().sum();
                    let size: f32 = terms.map(f32::abs).sum();
                    let g = got[i * n + j];
                    // The split activations carry about 16 significant bits.
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + size),
                        "{m}x{n}x{k} [{i},{j}]: {g} vs {want}"
                    );
                }
            }
        }
        assert!(matmul_bf16(&[0.0; 40], 1, 40, &[half::bf16::ZERO; 40], 1).is_none());
    }
}
