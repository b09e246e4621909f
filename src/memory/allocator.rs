//! Lets the C allocator (glibc) keep the memory a prefill frees, for the next layer to reuse.
//!
//! Why: a long prompt's per-layer buffers are tens of megabytes (2,048 tokens × 2,816 values
//! of f32 is 23 MB). glibc gives each worker thread its own arena of at most 64 MB heaps, so
//! those buffers came from fresh mappings and went back to the kernel when freed: the next
//! layer faulted every page in and the kernel zeroed it again. At 2,048 tokens that was
//! 345,000 page faults (1.4 GB) and about a tenth of the prefill; at 512 tokens almost none.
//! With one arena and no trimming the buffers are reused, and the process's peak resident
//! memory stays where it was (the peak is the model's load).

/// Set by the user to tune glibc's allocator themselves: vlmbench then leaves it alone.
pub const USER_TUNABLES_VAR: &str = "GLIBC_TUNABLES";

/// Largest request glibc serves from its heap rather than its own mapping (glibc's ceiling).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;

/// One arena for every thread, requests up to 32 MB from the heap, and freed memory kept
/// instead of returned to the kernel; `false` where not glibc, the user tuned it (see
/// [`USER_TUNABLES_VAR`]), or glibc refused. Call before the model's threads start.
pub fn keep_freed_memory() -> bool {
    if std::env::var_os(USER_TUNABLES_VAR).is_some() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes the allocator's parameters; each returns 1 on success.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the fresh test process [`freed_buffers_are_reused`] starts.
    const CHILD_VAR: &str = "VLMBENCH_ALLOCATOR_TEST_CHILD";

    /// The settings apply to threads that first allocate after them, and this process's test
    /// threads already have arenas of their own: the check runs in a fresh process, on a
    /// thread started after the settings, as the model's pool threads are.
    #[test]
    fn freed_buffers_are_reused() {
        if std::env::var_os(CHILD_VAR).is_some() {
            if !keep_freed_memory() {
                return; // not glibc, or tuned by the user: nothing to check
            }
            // A 16 MB buffer, freed, then asked for again: served from the same heap memory
            // (by default glibc maps it afresh and unmaps it on free).
            let reused = std::thread::spawn(|| {
                // `black_box`: the compiler must not leave out allocations nobody reads.
                let first = std::hint::black_box(vec![1u8; 16 << 20]);
                let address = first.as_ptr() as usize;
                drop(first);
                let second = std::hint::black_box(vec![2u8; 16 << 20]);
                second.as_ptr() as usize == address
            })
            .join()
            .expect("the allocating thread ran");
            assert!(reused, "a freed 16 MB buffer was not reused");
            return;
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "memory::allocator::tests::freed_buffers_are_reused",
            ])
            .env(CHILD_VAR, "1")
            .output()
            .expect("the test binary runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the check ran"
        );
    }
}
