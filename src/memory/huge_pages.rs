//! Backs the process's large anonymous mappings with 2 MiB transparent huge pages once a model
//! has loaded (`MADV_COLLAPSE`, Linux 6.1 and later).
//!
//! Why: a CPU decode step streams every weight, hundreds of megabytes, once. Where the kernel
//! gives huge pages only to memory that asks for them (transparent huge pages in `madvise`
//! mode, a common default), the weights sit on 4 KiB pages and the stream pays a page-table
//! walk every 4 KiB. Collapsing after the load touches nothing the prefill's short-lived
//! buffers use, so their allocation stays as it was.

use std::sync::atomic::{AtomicBool, Ordering};

const HUGE: usize = 2 << 20;

/// Set to `off` to keep the kernel's default pages under the weights (to compare).
pub const OPT_OUT_VAR: &str = "VLMBENCH_HUGE_PAGES";

/// Whether huge pages are wanted: not turned off through [`OPT_OUT_VAR`].
fn wanted() -> bool {
    std::env::var(OPT_OUT_VAR).map_or(true, |v| v != "off")
}

/// Whether [`collapse_large_mappings`] moved anything: what the read-bandwidth probe asks, so
/// that it reads from pages of the size the weights got.
static COLLAPSED: AtomicBool = AtomicBool::new(false);

/// Whether this process's large mappings were collapsed onto huge pages.
pub fn weights_on_huge_pages() -> bool {
    COLLAPSED.load(Ordering::Relaxed)
}

/// Asks for huge pages under `buf`'s whole 2 MiB stretches before it is first written (the
/// kernel then faults them in as huge pages); `false` where refused or not Linux.
pub fn advise_huge_pages<T>(buf: &[T]) -> bool {
    #[cfg(target_os = "linux")]
    {
        let begin = buf.as_ptr() as usize;
        let Some((start, end)) = whole_huge_pages(begin, begin + std::mem::size_of_val(buf)) else {
            return false;
        };
        // SAFETY: advice on memory `buf` owns; it changes no contents.
        unsafe { libc::madvise(start as *mut _, end - start, libc::MADV_HUGEPAGE) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = buf;
        false
    }
}

/// The 2 MiB-aligned stretch inside addresses `start..end`; `None` where it holds no whole
/// huge page.
fn whole_huge_pages(start: usize, end: usize) -> Option<(usize, usize)> {
    let (start, end) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    (end > start).then_some((start, end))
}

/// Mappings smaller than this are left alone: a model's weights and a long context's KV cache
/// are far larger, and the small ones are the allocator's working memory.
const LARGE_MAPPING_MIN_BYTES: usize = 8 << 20;

/// [`collapse_large_mappings`] for what a CPU run streams on every decode step, unless turned
/// off through [`OPT_OUT_VAR`]: called once the weights are in place, and again once the KV
/// cache is allocated (its per-layer buffers are too small to hold a huge page each, but
/// adjacent ones form one mapping). The decode benches call it to match.
pub fn collapse_large_buffers() -> Option<u64> {
    wanted()
        .then(|| collapse_large_mappings(LARGE_MAPPING_MIN_BYTES))
        .flatten()
}

/// Bytes of anonymous mappings of at least `min_bytes` that the kernel collapsed into huge
/// pages, or `None` where the platform has no such request (or refused every range).
pub fn collapse_large_mappings(min_bytes: usize) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let mut collapsed = 0u64;
        for line in maps.lines() {
            let Some((start, end)) = anonymous_writable_range(line) else {
                continue;
            };
            let Some((start, end)) = whole_huge_pages(start, end) else {
                continue;
            };
            if end - start < min_bytes {
                continue;
            }
            // SAFETY: advice on a range of this process's own mapping; it changes no contents.
            let rc = unsafe { libc::madvise(start as *mut _, end - start, libc::MADV_COLLAPSE) };
            if rc == 0 {
                collapsed += (end - start) as u64;
            }
        }
        COLLAPSED.store(collapsed > 0, Ordering::Relaxed);
        (collapsed > 0).then_some(collapsed)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = min_bytes;
        None
    }
}

/// `(start, end)` of a `/proc/self/maps` line for a private writable mapping of no file.
#[cfg(target_os = "linux")]
fn anonymous_writable_range(line: &str) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let (range, perms) = (fields.next()?, fields.next()?);
    let inode = fields.nth(2)?;
    let path = fields.next().unwrap_or("");
    if !perms.starts_with("rw") || inode != "0" || !(path.is_empty() || path == "[heap]") {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some((
        usize::from_str_radix(start, 16).ok()?,
        usize::from_str_radix(end, 16).ok()?,
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn only_private_writable_mappings_of_no_file_are_chosen() {
        let line = |s: &str| anonymous_writable_range(s);
        assert_eq!(
            line("7f0000000000-7f0000400000 rw-p 00000000 00:00 0 "),
            Some((0x7f00_0000_0000, 0x7f00_0040_0000))
        );
        assert_eq!(
            line("55d0a000-55d0e000 rw-p 00000000 00:00 0                          [heap]"),
            Some((0x55d0_a000, 0x55d0_e000))
        );
        assert_eq!(
            line("7f00-7f40 r--p 00000000 08:01 1234 /usr/lib/libc.so.6"),
            None
        );
        assert_eq!(
            line("7f00-7f40 rw-p 00000000 08:01 1234 /tmp/model.gguf"),
            None
        );
        assert_eq!(line("7ffd-7ffe rw-p 00000000 00:00 0 [stack]"), None);
        assert_eq!(line("garbage"), None);
    }

    #[test]
    fn a_large_touched_buffer_is_collapsed_or_refused_cleanly() {
        let buf = vec![1u8; 16 << 20];
        // Kernels without MADV_COLLAPSE, or with huge pages off, refuse: `None`, no error.
        if let Some(bytes) = collapse_large_mappings(8 << 20) {
            assert!(bytes >= 8 << 20);
        }
        assert!(buf.iter().all(|&b| b == 1), "contents unchanged");
    }

    #[test]
    fn advice_on_a_buffer_without_a_whole_huge_page_is_not_given() {
        assert!(!advise_huge_pages(&[0u8; 4096]));
        let big = vec![0u64; 1 << 20];
        // 8 MiB holds whole 2 MiB stretches; the kernel may still refuse (huge pages off).
        let _ = advise_huge_pages(&big);
        assert!(big.iter().all(|&v| v == 0));
    }
}
