//! Peak memory: host RSS from the kernel, GPU memory from NVML sampled on a background thread.
//!
//! A missing measurement is `None` with a reason, never a made-up zero.
//!
//! [`server_gpus`] samples a served model's GPUs per serving level; [`huge_pages`] moves a
//! loaded CPU model's weights onto huge pages; [`allocator`] keeps freed buffers for reuse.
//!
//! A leaf: depends on no other vlmbench module.

pub mod allocator;
pub mod huge_pages;
pub mod server_gpus;

use serde::{Deserialize, Serialize};

/// A memory figure that may be unavailable, with the reason why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MaybeBytes {
    pub bytes: Option<u64>,
    /// Why `bytes` is null (absent when it is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
}

impl MaybeBytes {
    pub fn known(bytes: u64) -> Self {
        Self {
            bytes: Some(bytes),
            unavailable_reason: None,
        }
    }
    pub fn unknown(reason: impl Into<String>) -> Self {
        Self {
            bytes: None,
            unavailable_reason: Some(reason.into()),
        }
    }
}

/// Peak memory of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemoryReport {
    /// Highest resident set size of this process over its lifetime (model load included),
    /// from `VmHWM` in /proc/self/status (Linux) or `getrusage` elsewhere.
    pub host_peak_rss: MaybeBytes,
    /// Highest GPU memory used by this process, from NVML, sampled during the run.
    pub gpu_peak_process: MaybeBytes,
    /// Highest GPU memory used on the whole device (all processes), from NVML, sampled.
    pub gpu_peak_device: MaybeBytes,
    /// Sampling interval of the GPU sampler, in milliseconds (short spikes can be missed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_sample_interval_ms: Option<u64>,
    /// Exact peak of CUDA memory-pool allocations during prefill (vision encoder included for
    /// vision models), the maximum over samples.
    #[serde(default = "not_measured")]
    pub gpu_pool_peak_prefill: MaybeBytes,
    /// The same during decode.
    #[serde(default = "not_measured")]
    pub gpu_pool_peak_decode: MaybeBytes,
}

/// Peak bytes allocated from the CUDA memory pool in each phase of one sample
/// (see [`DevicePool`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhasePeaks {
    pub vision_bytes: Option<u64>,
    pub prefill_bytes: Option<u64>,
    pub decode_bytes: Option<u64>,
}

fn not_measured() -> MaybeBytes {
    MaybeBytes::unknown("not measured")
}

impl MemoryReport {
    /// Fills the pool peaks from the samples' per-phase measurements.
    pub fn with_pool_peaks<'a>(mut self, peaks: impl Iterator<Item = &'a PhasePeaks>) -> Self {
        let (mut prefill, mut decode, mut any) = (None::<u64>, None::<u64>, false);
        for p in peaks {
            any = true;
            prefill = prefill.max(p.prefill_bytes.max(p.vision_bytes));
            decode = decode.max(p.decode_bytes);
        }
        let reason = if any {
            "the driver reported no memory-pool peak"
        } else {
            "no CUDA memory pool: the model did not run on a CUDA device"
        };
        self.gpu_pool_peak_prefill =
            prefill.map_or_else(|| MaybeBytes::unknown(reason), MaybeBytes::known);
        self.gpu_pool_peak_decode =
            decode.map_or_else(|| MaybeBytes::unknown(reason), MaybeBytes::known);
        self
    }
}

/// Peak resident set size of this process so far.
pub fn host_peak_rss() -> MaybeBytes {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        {
            return MaybeBytes::known(kb * 1024);
        }
    }
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        // ru_maxrss is in kilobytes on Linux, bytes on macOS.
        let raw = usage.ru_maxrss as u64;
        let bytes = if cfg!(target_os = "macos") {
            raw
        } else {
            raw * 1024
        };
        return MaybeBytes::known(bytes);
    }
    MaybeBytes::unknown("neither /proc/self/status nor getrusage is available")
}

/// Samples GPU memory while a run is in progress.
pub struct GpuSampler {
    #[cfg(feature = "cuda")]
    inner: Option<nvml_sampler::Running>,
    reason: Option<String>,
}

impl GpuSampler {
    /// Starts sampling device `ordinal`, or records why it cannot (`ordinal` is `None` on CPU).
    pub fn start(ordinal: Option<usize>, interval_ms: u64) -> Self {
        let Some(ordinal) = ordinal else {
            return Self::unavailable("the model runs on the CPU: no GPU memory is used");
        };
        #[cfg(feature = "cuda")]
        {
            match nvml_sampler::Running::start(ordinal, interval_ms) {
                Ok(r) => Self {
                    inner: Some(r),
                    reason: None,
                },
                Err(e) => Self::unavailable(format!("NVML unavailable: {e}")),
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (ordinal, interval_ms);
            Self::unavailable("vlmbench was built without the `cuda` feature (no NVML)")
        }
    }

    fn unavailable(reason: impl Into<String>) -> Self {
        Self {
            #[cfg(feature = "cuda")]
            inner: None,
            reason: Some(reason.into()),
        }
    }

    /// Stops sampling and returns the peaks.
    pub fn finish(self) -> MemoryReport {
        #[cfg(feature = "cuda")]
        if let Some(running) = self.inner {
            let (process, device, interval) = running.stop();
            return MemoryReport {
                host_peak_rss: host_peak_rss(),
                gpu_peak_process: process,
                gpu_peak_device: device,
                gpu_sample_interval_ms: Some(interval),
                gpu_pool_peak_prefill: not_measured(),
                gpu_pool_peak_decode: not_measured(),
            };
        }
        let reason = self.reason.unwrap_or_else(|| "not sampled".into());
        MemoryReport {
            host_peak_rss: host_peak_rss(),
            gpu_peak_process: MaybeBytes::unknown(reason.clone()),
            gpu_peak_device: MaybeBytes::unknown(reason),
            gpu_sample_interval_ms: None,
            gpu_pool_peak_prefill: not_measured(),
            gpu_pool_peak_decode: not_measured(),
        }
    }
}

#[cfg(feature = "cuda")]
mod nvml_sampler {
    use super::MaybeBytes;
    use nvml_wrapper::enums::device::UsedGpuMemory;
    use nvml_wrapper::Nvml;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    pub struct Running {
        stop: Arc<AtomicBool>,
        handle: JoinHandle<(MaybeBytes, MaybeBytes)>,
        interval_ms: u64,
    }

    impl Running {
        pub fn start(ordinal: usize, interval_ms: u64) -> Result<Self, String> {
            let nvml = Nvml::init().map_err(|e| e.to_string())?;
            let bus_id = super::cuda_pci_bus_id(ordinal)?;
            // Fail now, not silently in the thread, if the device cannot be read.
            super::nvml_device(&nvml, ordinal)?
                .memory_info()
                .map_err(|e| e.to_string())?;
            let stop = Arc::new(AtomicBool::new(false));
            let stop_thread = stop.clone();
            let pid = std::process::id();
            let handle = std::thread::spawn(move || {
                let mut peak_device = 0u64;
                let mut peak_process: Option<u64> = None;
                let mut process_reason = String::from("NVML reported no per-process usage");
                loop {
                    if let Ok(dev) = nvml.device_by_pci_bus_id(bus_id.clone()) {
                        if let Ok(m) = dev.memory_info() {
                            peak_device = peak_device.max(m.used);
                        }
                        match dev.running_compute_processes() {
                            Ok(procs) => {
                                for p in procs.iter().filter(|p| p.pid == pid) {
                                    match p.used_gpu_memory {
                                        UsedGpuMemory::Used(b) => {
                                            peak_process = Some(peak_process.unwrap_or(0).max(b))
                                        }
                                        UsedGpuMemory::Unavailable => {
                                            process_reason = "NVML cannot attribute memory to processes here (e.g. inside a container)".into()
                                        }
                                    }
                                }
                            }
                            Err(e) => process_reason = format!("NVML: {e}"),
                        }
                    }
                    if stop_thread.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(interval_ms));
                }
                let process = match peak_process {
                    Some(b) => MaybeBytes::known(b),
                    None => MaybeBytes::unknown(process_reason),
                };
                (process, MaybeBytes::known(peak_device))
            });
            Ok(Self {
                stop,
                handle,
                interval_ms,
            })
        }

        pub fn stop(self) -> (MaybeBytes, MaybeBytes, u64) {
            self.stop.store(true, Ordering::Relaxed);
            let (p, d) = self.handle.join().unwrap_or_else(|_| {
                (
                    MaybeBytes::unknown("GPU sampler thread panicked"),
                    MaybeBytes::unknown("GPU sampler thread panicked"),
                )
            });
            (p, d, self.interval_ms)
        }
    }
}

/// The NVML handle of CUDA device `ordinal`. NVML numbers devices in PCI bus order and ignores
/// `CUDA_VISIBLE_DEVICES`, so a CUDA ordinal is not an NVML index: the device is looked up by
/// the PCI bus id the CUDA driver reports for that ordinal.
#[cfg(feature = "cuda")]
pub fn nvml_device(
    nvml: &nvml_wrapper::Nvml,
    ordinal: usize,
) -> Result<nvml_wrapper::Device<'_>, String> {
    let bus_id = cuda_pci_bus_id(ordinal)?;
    nvml.device_by_pci_bus_id(bus_id.clone()).map_err(|e| {
        format!("NVML has no device at PCI bus id {bus_id} (CUDA device {ordinal}): {e}")
    })
}

/// The PCI bus id (`0000:01:00.0`) of CUDA device `ordinal`, as the CUDA driver numbers it.
#[cfg(feature = "cuda")]
fn cuda_pci_bus_id(ordinal: usize) -> Result<String, String> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let mut buf = [0 as std::ffi::c_char; 32];
    // SAFETY: driver queries with out-pointers to locals; the buffer is NUL-terminated by the
    // driver within its stated length (and zeroed beforehand).
    unsafe {
        let mut dev: sys::CUdevice = 0;
        let rc = sys::cuDeviceGet(&mut dev, ordinal as i32);
        if rc != sys::CUresult::CUDA_SUCCESS {
            return Err(format!("CUDA device {ordinal}: {rc:?}"));
        }
        let rc = sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), (buf.len() - 1) as i32, dev);
        if rc != sys::CUresult::CUDA_SUCCESS {
            return Err(format!("PCI bus id of CUDA device {ordinal}: {rc:?}"));
        }
        Ok(std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned())
    }
}

/// Whether a pool peak can be trusted: only when the reset that opened its window succeeded
/// (otherwise `USED_MEM_HIGH` still holds an older, larger peak).
#[derive(Debug, Default)]
struct PeakWindow {
    reset_ok: std::cell::Cell<bool>,
}

impl PeakWindow {
    fn opened(&self, reset_ok: bool) -> bool {
        self.reset_ok.set(reset_ok);
        reset_ok
    }
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn read(&self, raw: Option<u64>) -> Option<u64> {
        raw.filter(|_| self.reset_ok.get())
    }
}

/// Exact high-water mark of the CUDA memory pool candle allocates from.
///
/// cudarc (candle's CUDA layer) allocates with `cuMemAllocAsync` from the device's default
/// memory pool where the driver supports it. The pool's `USED_MEM_HIGH` attribute is the exact
/// peak of bytes allocated since its last reset, so it can be reset and read per phase
/// (vision encoder, prefill, decode), which NVML sampling cannot do: NVML sees the whole
/// process (CUDA context, cuBLAS workspaces, pool reserve) and misses spikes shorter than its
/// sampling interval. What it counts: every byte allocated from the pool and not yet freed,
/// so a window's peak includes the weights and the KV cache already resident, plus the phase's
/// activations and workspaces.
pub struct DevicePool {
    #[cfg(feature = "cuda")]
    pool: candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool,
    window: PeakWindow,
}

impl DevicePool {
    /// The default pool of the CUDA device a model runs on; `None` on the CPU (see
    /// [`DevicePool::for_device`]).
    pub fn for_candle_device(device: &candle_core::Device) -> Option<Self> {
        match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => Self::for_device(gpu_id),
            _ => None,
        }
    }

    /// The default pool of CUDA device `ordinal`; `None` where there is no CUDA build or the
    /// driver has no memory pools.
    pub fn for_device(ordinal: usize) -> Option<Self> {
        #[cfg(feature = "cuda")]
        {
            use candle_core::cuda_backend::cudarc::driver::sys;
            // SAFETY: plain driver queries with out-pointers to locals; the driver is
            // initialised because candle opened the device before this is called.
            unsafe {
                let mut dev: sys::CUdevice = 0;
                if sys::cuDeviceGet(&mut dev, ordinal as i32) != sys::CUresult::CUDA_SUCCESS {
                    return None;
                }
                let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
                if sys::cuDeviceGetDefaultMemPool(&mut pool, dev) != sys::CUresult::CUDA_SUCCESS {
                    return None;
                }
                Some(Self {
                    pool,
                    window: PeakWindow::default(),
                })
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            None
        }
    }

    /// Starts a new measurement window: the high-water mark becomes the current usage (which
    /// still counts the weights and the KV cache). Returns whether the driver accepted the
    /// reset; until a reset succeeds, [`peak`](Self::peak) reports nothing.
    pub fn reset_peak(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            use candle_core::cuda_backend::cudarc::driver::sys;
            let mut zero: u64 = 0;
            // SAFETY: USED_MEM_HIGH takes a cuuint64_t; only resetting to 0 is allowed.
            let rc = unsafe {
                sys::cuMemPoolSetAttribute(
                    self.pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                    &mut zero as *mut u64 as *mut std::ffi::c_void,
                )
            };
            self.window.opened(rc == sys::CUresult::CUDA_SUCCESS)
        }
        #[cfg(not(feature = "cuda"))]
        {
            self.window.opened(false)
        }
    }

    /// Peak bytes in use since the last [`reset_peak`](Self::reset_peak).
    pub fn peak(&self) -> Option<u64> {
        #[cfg(feature = "cuda")]
        {
            use candle_core::cuda_backend::cudarc::driver::sys;
            let mut value: u64 = 0;
            // SAFETY: the attribute is a cuuint64_t written into `value`.
            let rc = unsafe {
                sys::cuMemPoolGetAttribute(
                    self.pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                    &mut value as *mut u64 as *mut std::ffi::c_void,
                )
            };
            self.window
                .read((rc == sys::CUresult::CUDA_SUCCESS).then_some(value))
        }
        #[cfg(not(feature = "cuda"))]
        {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_peak_after_a_failed_reset_is_not_reported() {
        let w = PeakWindow::default();
        assert_eq!(w.read(Some(5)), None, "no window opened yet");
        assert!(w.opened(true));
        assert_eq!(w.read(Some(5)), Some(5));
        assert!(!w.opened(false));
        assert_eq!(w.read(Some(7)), None, "stale high-water mark");
    }

    #[test]
    fn host_rss_is_measured_on_linux() {
        let m = host_peak_rss();
        if cfg!(target_os = "linux") {
            assert!(m.bytes.unwrap() > 1024 * 1024, "{m:?}");
        }
    }

    #[test]
    fn cpu_run_reports_gpu_as_unavailable_with_reason() {
        let r = GpuSampler::start(None, 50).finish();
        assert!(r.gpu_peak_process.bytes.is_none());
        assert!(r
            .gpu_peak_device
            .unavailable_reason
            .unwrap()
            .contains("CPU"));
    }
}
