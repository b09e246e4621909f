//! A server's GPUs during a serving level, when they are on this machine: NVML sampled on a
//! background thread (device memory, the memory of the server's processes given by
//! `--server-pid`, utilisation, power), peak and mean per device.
//!
//! NVML is loaded at run time (`libnvidia-ml.so.1`, installed with the driver), so the CPU
//! build samples a local server's GPUs too; where there is no NVML the level records why.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

/// One GPU over one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuDeviceUse {
    /// NVML's index (PCI bus order, not CUDA's numbering).
    pub nvml_index: u32,
    pub name: String,
    pub pci_bus_id: String,
    pub samples: usize,
    pub memory_total_bytes: u64,
    pub memory_used_peak_bytes: u64,
    pub memory_used_mean_bytes: u64,
    /// Memory of the `--server-pid` processes on this device (summed), peak; null without
    /// `--server-pid` or where NVML cannot attribute memory to processes (containers).
    pub server_process_memory_peak_bytes: Option<u64>,
    pub utilization_pct_peak: Option<f64>,
    pub utilization_pct_mean: Option<f64>,
    pub power_w_peak: Option<f64>,
    pub power_w_mean: Option<f64>,
}

/// The server's GPUs over one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuLevelUse {
    pub interval_ms: u64,
    pub server_pids: Vec<u32>,
    pub devices: Vec<GpuDeviceUse>,
}

/// Running totals of one device.
#[derive(Default)]
struct Acc {
    samples: usize,
    mem_peak: u64,
    mem_sum: f64,
    proc_peak: Option<u64>,
    util: Vec<f64>,
    power: Vec<f64>,
}

fn peak_mean(v: &[f64]) -> (Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None);
    }
    (
        Some(v.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
        Some(v.iter().sum::<f64>() / v.len() as f64),
    )
}

/// NVML opened once per run; each level starts a [`LevelWatch`] on it.
pub struct ServerGpus {
    nvml: Arc<Nvml>,
    pids: Vec<u32>,
    interval_ms: u64,
}

impl ServerGpus {
    /// Opens NVML, or says why the server's GPUs cannot be sampled here.
    pub fn open(pids: Vec<u32>, interval_ms: u64) -> Result<Self, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML unavailable on this machine: {e}"))?;
        let n = nvml.device_count().map_err(|e| format!("NVML: {e}"))?;
        if n == 0 {
            return Err("NVML sees no GPU on this machine".into());
        }
        Ok(Self {
            nvml: Arc::new(nvml),
            pids,
            interval_ms: interval_ms.max(1),
        })
    }

    /// Starts sampling every device until [`LevelWatch::finish`].
    pub fn watch(&self) -> LevelWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (nvml, pids, interval) = (self.nvml.clone(), self.pids.clone(), self.interval_ms);
        let stop_thread = stop.clone();
        let handle = std::thread::spawn(move || {
            let count = nvml.device_count().unwrap_or(0);
            let mut accs: Vec<Acc> = (0..count).map(|_| Acc::default()).collect();
            loop {
                for (i, acc) in accs.iter_mut().enumerate() {
                    let Ok(dev) = nvml.device_by_index(i as u32) else {
                        continue;
                    };
                    let Ok(mem) = dev.memory_info() else {
                        continue;
                    };
                    acc.samples += 1;
                    acc.mem_peak = acc.mem_peak.max(mem.used);
                    acc.mem_sum += mem.used as f64;
                    if let Ok(u) = dev.utilization_rates() {
                        acc.util.push(u.gpu as f64);
                    }
                    if let Ok(mw) = dev.power_usage() {
                        acc.power.push(mw as f64 / 1000.0);
                    }
                    if !pids.is_empty() {
                        if let Ok(procs) = dev.running_compute_processes() {
                            let used: Option<u64> = procs
                                .iter()
                                .filter(|p| pids.contains(&p.pid))
                                .map(|p| match p.used_gpu_memory {
                                    UsedGpuMemory::Used(b) => Some(b),
                                    UsedGpuMemory::Unavailable => None,
                                })
                                .sum();
                            if let Some(b) = used {
                                acc.proc_peak = Some(acc.proc_peak.unwrap_or(0).max(b));
                            }
                        }
                    }
                }
                if stop_thread.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(interval));
            }
            accs.into_iter()
                .enumerate()
                .filter(|(_, a)| a.samples > 0)
                .map(|(i, a)| {
                    let dev = nvml.device_by_index(i as u32).ok();
                    let (util_peak, util_mean) = peak_mean(&a.util);
                    let (power_peak, power_mean) = peak_mean(&a.power);
                    GpuDeviceUse {
                        nvml_index: i as u32,
                        name: dev.as_ref().and_then(|d| d.name().ok()).unwrap_or_default(),
                        pci_bus_id: dev
                            .as_ref()
                            .and_then(|d| d.pci_info().ok())
                            .map(|p| p.bus_id)
                            .unwrap_or_default(),
                        samples: a.samples,
                        memory_total_bytes: dev
                            .as_ref()
                            .and_then(|d| d.memory_info().ok())
                            .map(|m| m.total)
                            .unwrap_or(0),
                        memory_used_peak_bytes: a.mem_peak,
                        memory_used_mean_bytes: (a.mem_sum / a.samples as f64) as u64,
                        server_process_memory_peak_bytes: a.proc_peak,
                        utilization_pct_peak: util_peak,
                        utilization_pct_mean: util_mean,
                        power_w_peak: power_peak,
                        power_w_mean: power_mean,
                    }
                })
                .collect()
        });
        LevelWatch {
            stop,
            handle,
            interval_ms: self.interval_ms,
            pids: self.pids.clone(),
        }
    }
}

/// Sampling in progress for one level.
pub struct LevelWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<GpuDeviceUse>>,
    interval_ms: u64,
    pids: Vec<u32>,
}

impl LevelWatch {
    pub fn finish(self) -> GpuLevelUse {
        self.stop.store(true, Ordering::Relaxed);
        GpuLevelUse {
            interval_ms: self.interval_ms,
            server_pids: self.pids,
            devices: self.handle.join().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_and_means_of_samples() {
        assert_eq!(peak_mean(&[]), (None, None));
        assert_eq!(peak_mean(&[1.0, 3.0, 2.0]), (Some(3.0), Some(2.0)));
    }

    #[test]
    fn without_nvml_the_reason_is_said() {
        // On a machine with a driver this opens; elsewhere it must say why, naming NVML.
        match ServerGpus::open(vec![], 100) {
            Ok(g) => {
                let used = g.watch().finish();
                assert!(!used.devices.is_empty());
                assert!(used.devices.iter().all(|d| d.samples >= 1));
            }
            Err(why) => assert!(why.contains("NVML"), "{why}"),
        }
    }
}
