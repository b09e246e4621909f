//! Prefill attention on the CPU: for each key/value head and block of query rows, the scores
//! against the cached keys (one GEMM), scaled, soft-capped, causally masked and normalised in
//! one pass, then multiplied by the cached values (a second GEMM), read in place from the KV
//! cache. Why: as whole-tensor operations the heads × queries × keys score tensor is written
//! and read five times (scale, cap, mask, softmax, product) by mostly single-threaded passes;
//! at 2,048 tokens that was most of the prefill.

use std::ops::Range;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

use super::fast_exp;
use super::gemv::Rows;
use super::kernels::KernelSet;
use super::panel_gemm;
use super::prefill::gemm_crate_product;

/// Query rows per task: enough work per GEMM, and blocks for every thread at short prompts.
const ROW_BLOCK: usize = 64;

/// Where each score row's query sits: row `r` of a key/value head is query `offset + r % seq`
/// (the query heads of a group are stacked), key `j` is position `keys.start + j`.
#[derive(Debug, Clone, Copy)]
pub struct Causal {
    pub seq: usize,
    pub offset: usize,
    pub window: Option<usize>,
}

impl Causal {
    /// Keys `lo..hi` (of the `len` from position `start`) that score row `row` sees.
    fn row_keys(self, row: usize, start: usize, len: usize) -> (usize, usize) {
        let q = self.offset + row % self.seq;
        let earliest = self.window.map_or(0, |w| (q + 1).saturating_sub(w));
        (
            earliest.saturating_sub(start).min(len),
            (q + 1).saturating_sub(start).min(len),
        )
    }
}

/// Scales each row of raw scores, soft-caps and causally masks it, and turns it into
/// probabilities in place: the arithmetic of `scores * scale`, `(s / cap).tanh() * cap`,
/// `+ mask` and a softmax (its exponentials from [`fast_exp`], within 2 ulp of candle's,
/// summed in eight partial sums, then scaled by the sum's reciprocal). `first_row` is the
/// block's first row within its key/value head; `start` the first key's position.
fn masked_softmax_rows(
    rows: &mut [f32],
    len: usize,
    first_row: usize,
    start: usize,
    scale: f32,
    softcap: Option<f32>,
    causal: Option<Causal>,
) {
    let cap = softcap.map(|c| (1.0 / c, c));
    for (i, row) in rows.chunks_exact_mut(len).enumerate() {
        // Keys `lo..hi` of the row are visible (all of them without a mask).
        let (lo, hi) = match causal {
            Some(m) => m.row_keys(first_row + i, start, len),
            None => (0, len),
        };
        let max = match cap {
            None => fast_exp::scale_and_max(&mut row[lo..hi], scale),
            Some((inv, cap)) => {
                let mut max = f32::NEG_INFINITY;
                for v in &mut row[lo..hi] {
                    *v = (*v * scale * inv).tanh() * cap;
                    max = max.max(*v);
                }
                max
            }
        };
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
        let sum = fast_exp::exp_shifted_sum(&mut row[lo..hi], max);
        let inv = 1.0 / sum;
        for v in &mut row[lo..hi] {
            *v *= inv;
        }
    }
}

/// Keys `lo..hi` (of the `len` from position `start`) that any of the `n` score rows from
/// `first` sees under the mask `m`.
fn visible_keys(m: Causal, first: usize, n: usize, start: usize, len: usize) -> (usize, usize) {
    (first..first + n)
        .map(|row| m.row_keys(row, start, len))
        .fold((len, 0), |(lo, hi), (l, h)| (lo.min(l), hi.max(h)))
}

/// `(nkv, rows, hd)` attention outputs of queries `q` `(nkv, rows, hd)` over cached keys and
/// values `(1, nkv, capacity, hd)` at positions `keys`; `None` where the tensors are not
/// contiguous f32 on the CPU.
pub fn prefill_attention_cpu(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    keys: Range<usize>,
    scale: f32,
    softcap: Option<f32>,
    causal: Option<Causal>,
) -> candle_core::Result<Option<Tensor>> {
    let cpu_f32 = |t: &Tensor| {
        matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && t.is_contiguous()
    };
    if !(cpu_f32(q) && cpu_f32(k_cache) && cpu_f32(v_cache)) {
        return Ok(None);
    }
    let (nkv, rows, hd) = q.dims3()?;
    let (_, cache_heads, capacity, cache_hd) = k_cache.dims4()?;
    if cache_heads != nkv || cache_hd != hd || keys.end > capacity || keys.start >= keys.end {
        return Ok(None);
    }
    let len = keys.len();
    let qs = q.flatten_all()?.to_vec1::<f32>()?;
    let (k_store, k_layout) = k_cache.storage_and_layout();
    let (v_store, v_layout) = v_cache.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(kd)), Storage::Cpu(CpuStorage::F32(vd))) =
        (&*k_store, &*v_store)
    else {
        return Ok(None);
    };
    let (kd, vd) = (
        &kd[k_layout.start_offset()..],
        &vd[v_layout.start_offset()..],
    );
    // The AVX2 set multiplies on packed panels (see `panel_gemm`); the others use the `gemm`
    // crate's kernels (AVX-512 ones where present).
    let panels = KernelSet::active() == KernelSet::Avx2;
    let mut out = vec![0f32; nkv * rows * hd];
    out.par_chunks_mut(rows * hd)
        .enumerate()
        .flat_map(|(b, head_out)| {
            head_out
                .par_chunks_mut(ROW_BLOCK * hd)
                .enumerate()
                .map(move |(blk, o)| (b, blk, o))
        })
        .for_each_init(
            || (Vec::<f32>::new(), panel_gemm::Scratch::default()),
            |(scores, scratch), (b, blk, o)| {
                let first = blk * ROW_BLOCK;
                let n = o.len() / hd;
                // Only the keys some row of the block sees: under a causal mask the later keys of
                // an early block (half the products of a long prompt) are skipped.
                let (lo, hi) = match causal {
                    Some(m) => visible_keys(m, first, n, keys.start, len),
                    None => (0, len),
                };
                if hi <= lo {
                    o.fill(0.0);
                    return;
                }
                let len = hi - lo;
                let base = (b * capacity + keys.start + lo) * hd;
                let (k, v) = (&kd[base..base + len * hd], &vd[base..base + len * hd]);
                let qb = &qs[(b * rows + first) * hd..(b * rows + first + n) * hd];
                scores.resize(n * len, 0.0);
                if panels {
                    panel_gemm::product_serial(qb, n, hd, len, Rows::F32(k), scores, scratch, true);
                } else {
                    // SAFETY: `scores` holds `(n, len)` values, this task's own.
                    unsafe {
                        gemm_crate_product(qb, k, true, (n, len, hd), scores.as_mut_ptr(), len)
                    };
                }
                masked_softmax_rows(scores, len, first, keys.start + lo, scale, softcap, causal);
                if panels {
                    panel_gemm::product_serial_columns(scores, n, len, v, hd, o, scratch, true);
                } else {
                    // SAFETY: `o` holds `(n, hd)` values, this task's own.
                    unsafe {
                        gemm_crate_product(scores, v, false, (n, hd, len), o.as_mut_ptr(), hd)
                    };
                }
            },
        );
    drop((k_store, v_store));
    Ok(Some(Tensor::from_vec(out, (nkv, rows, hd), q.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole-tensor path: scores, scale, cap, additive mask, softmax, product.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        c: Causal,
        scale: f64,
        cap: Option<f64>,
    ) -> Tensor {
        let mut s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        if let Some(cap) = cap {
            s = ((s / cap).unwrap().tanh().unwrap() * cap).unwrap();
        }
        let (nkv, rows, len) = s.dims3().unwrap();
        let mask: Vec<f32> = (0..nkv * rows * len)
            .map(|i| {
                let (r, j) = ((i / len) % rows, i % len);
                let q = c.offset + r % c.seq;
                let old = c.window.is_some_and(|w| j + w <= q);
                if j > q || old {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let s = (s + Tensor::from_vec(mask, (nkv, rows, len), &Device::Cpu).unwrap()).unwrap();
        candle_nn::ops::softmax_last_dim(&s)
            .unwrap()
            .matmul(v)
            .unwrap()
    }

    #[test]
    fn equals_the_whole_tensor_path_with_windows_caps_groups_and_row_blocks() {
        let dev = Device::Cpu;
        // Two kv heads, two query heads each, 70 queries (two row blocks) after 5 cached.
        let (nkv, groups, seq, offset, hd) = (2, 2, 70, 5, 8);
        let total = offset + seq;
        let capacity = total + 3;
        let q = Tensor::randn(0f32, 1.0, (nkv, groups * seq, hd), &dev).unwrap();
        let k_cache = Tensor::randn(0f32, 1.0, (1, nkv, capacity, hd), &dev).unwrap();
        let v_cache = Tensor::randn(0f32, 1.0, (1, nkv, capacity, hd), &dev).unwrap();
        for (window, cap) in [
            (None, None),
            (Some(9), None),
            (None, Some(3.0)),
            (Some(4), Some(1.5)),
        ] {
            let c = Causal {
                seq,
                offset,
                window,
            };
            let got = prefill_attention_cpu(
                &q,
                &k_cache,
                &v_cache,
                0..total,
                0.35,
                cap.map(|x| x as f32),
                Some(c),
            )
            .unwrap()
            .unwrap();
            let k = k_cache.squeeze(0).unwrap().narrow(1, 0, total).unwrap();
            let v = v_cache.squeeze(0).unwrap().narrow(1, 0, total).unwrap();
            let want = reference(&q, &k, &v, c, 0.35, cap);
            let diff = crate::models::testutil::max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "window {window:?} cap {cap:?}: {diff}");
        }
    }

    #[test]
    fn other_layouts_are_left_to_the_general_path() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 4, 8), DType::F16, &dev).unwrap();
        let kv = Tensor::zeros((1, 1, 8, 8), DType::F32, &dev).unwrap();
        assert!(prefill_attention_cpu(&q, &kv, &kv, 0..4, 1.0, None, None)
            .unwrap()
            .is_none());
    }
}
