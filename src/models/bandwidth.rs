//! The read bandwidth a decode step can reach on this machine, measured by streaming a buffer
//! as large as the step's working set with the engine's own thread pool.
//!
//! Why the working set's size and not a fixed one: a decode step reads every weight once, and
//! whether those bytes come from DRAM or partly from a large last-level cache depends on their
//! total size; a buffer of the same size read by the same threads is the fair ceiling for
//! "how close to the machine's limit" (see README "Metrics", decode read bandwidth).

use std::time::Instant;

use rayon::prelude::*;

/// Bytes per parallel chunk of the read loop.
const CHUNK: usize = 1 << 20;

/// Bytes per second read by the rayon pool from a buffer of `bytes` (at least 64 MiB, at most
/// 4 GiB): the best of `passes` full passes after one warm-up pass.
pub fn read_bandwidth(bytes: u64, passes: usize) -> f64 {
    let words = (bytes.clamp(64 << 20, 4 << 30) / 8) as usize;
    let mut buf = vec![0u64; words];
    // On pages of the size the weights got (see `memory::huge_pages`), or the probe would
    // measure the page walks the weights no longer pay.
    if crate::memory::huge_pages::weights_on_huge_pages() {
        crate::memory::huge_pages::advise_huge_pages(&buf);
    }
    // Touch every page from the pool (first-touch placement, no page faults while timing).
    buf.par_chunks_mut(CHUNK / 8)
        .enumerate()
        .for_each(|(i, c)| {
            c.iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v = (i ^ j) as u64)
        });
    let mut best = f64::INFINITY;
    for pass in 0..=passes.max(1) {
        let start = Instant::now();
        let sum: u64 = buf
            .par_chunks(CHUNK / 8)
            .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        let t = start.elapsed().as_secs_f64();
        if pass > 0 {
            best = best.min(t);
        }
    }
    (words * 8) as f64 / best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plausible_bandwidth() {
        let bw = read_bandwidth(1 << 20, 1);
        // Between 100 MB/s and 10 TB/s on any machine that runs the tests.
        assert!(bw > 1e8 && bw < 1e13, "{bw}");
    }
}
