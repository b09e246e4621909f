//! Which CPU kernel set the engine runs, decided once per process from the CPU's features.
//!
//! Why one place: every SIMD kernel (decode products, activation quantisation, prefill GEMM)
//! asks [`KernelSet::active`] instead of probing features itself, so a run uses one consistent
//! set and the report can say which (see `report::environment`), making figures from different
//! CPU generations comparable.
//!
//! `VLMBENCH_CPU_KERNELS=portable|avx2|avx512` caps the set (for comparing sets on one machine);
//! a set the CPU lacks is never chosen.

use std::sync::OnceLock;

/// The kernel sets, weakest first (`Ord` follows capability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelSet {
    /// Plain Rust loops (any CPU).
    Portable,
    /// AVX2 + FMA + F16C (x86-64-v3: Haswell, Zen 1 and later).
    Avx2,
    /// AVX2 set plus AVX-512 F/BW/VL and VNNI int8 dot products (Ice Lake, Sapphire Rapids,
    /// Zen 4 and later).
    Avx512,
}

/// Environment variable that caps the kernel set.
pub const CAP_VAR: &str = "VLMBENCH_CPU_KERNELS";

impl KernelSet {
    /// The set this process uses: the strongest the CPU supports, capped by [`CAP_VAR`].
    pub fn active() -> KernelSet {
        static SET: OnceLock<KernelSet> = OnceLock::new();
        *SET.get_or_init(|| {
            let best = Self::supported();
            match std::env::var(CAP_VAR).ok().and_then(|v| Self::parse(&v)) {
                Some(cap) => best.min(cap),
                None => best,
            }
        })
    }

    /// The strongest set the CPU supports.
    pub fn supported() -> KernelSet {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            let avx512 = avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
            if avx512 {
                return KernelSet::Avx512;
            }
            if avx2 {
                return KernelSet::Avx2;
            }
        }
        KernelSet::Portable
    }

    /// Whether the CPU supports this set (tests of a set skip when it does not).
    pub fn available(self) -> bool {
        self <= Self::supported()
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Portable => "portable",
            KernelSet::Avx2 => "avx2",
            KernelSet::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<KernelSet> {
        [KernelSet::Portable, KernelSet::Avx2, KernelSet::Avx512]
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
    }
}

/// The CPU features the kernel sets look at that this CPU has, in a fixed order, e.g.
/// `["avx2", "fma", "f16c", "avx512f", ...]`. AMX is listed as usable only where the kernel
/// granted this process the tile state (see [`amx_usable`]).
pub fn detected_features() -> Vec<&'static str> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if is_x86_feature_detected!($f) {
                    out.push($f);
                }
            )*};
        }
        probe!(
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "avx512fp16"
        );
        if amx_usable() {
            out.push("amx-bf16");
        }
    }
    out
}

/// Whether AMX bf16 tiles can be used: the CPU has them and Linux granted this process the
/// tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, asked once). `false` elsewhere, and when
/// the kernel set is capped below AVX-512.
pub fn amx_usable() -> bool {
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| KernelSet::active() >= KernelSet::Avx512 && request_amx())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_amx() -> bool {
    // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
    // CPUID leaf 7 exists on every CPU with the AVX-512 set checked by the caller.
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it only changes which register
    // state the kernel lets this process use.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_amx() -> bool {
    false
}

/// Prints why a test of `set`'s kernels does not run on this CPU; returns whether it may run.
/// Why: a test that silently passes on a CPU without the instructions would claim coverage it
/// does not have.
#[cfg(test)]
pub fn test_may_run(set: KernelSet, what: &str) -> bool {
    if set.available() {
        return true;
    }
    eprintln!(
        "SKIPPED {what}: the {} kernels need CPU features this machine lacks (supported: {}; \
         detected: {:?})",
        set.name(),
        KernelSet::supported().name(),
        detected_features()
    );
    false
}

/// An output buffer's pointer shared by parallel tasks that each write their own disjoint part
/// of it (columns of a product); the buffer outlives the parallel loop.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the tasks sharing it write disjoint values, and the buffer outlives them.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer `offset` values on (a method, so closures capture the whole `Send` value).
    ///
    /// Safety: as for `pointer::add`.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_active_set_is_supported_and_named() {
        let active = KernelSet::active();
        assert!(active.available());
        assert_eq!(KernelSet::parse(active.name()), Some(active));
        assert_eq!(KernelSet::parse(" AVX2 "), Some(KernelSet::Avx2));
        assert_eq!(KernelSet::parse("sse"), None);
        let features = detected_features();
        if KernelSet::supported() >= KernelSet::Avx2 {
            assert!(features.contains(&"avx2") && features.contains(&"fma"));
        }
        if KernelSet::supported() == KernelSet::Avx512 {
            assert!(features.contains(&"avx512vnni"));
        }
    }
}
