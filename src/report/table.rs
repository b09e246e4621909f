//! The terminal summary: one row per metric, the statistics as columns (as the seeds print it).

use std::fmt::Write;

use super::{Report, RunSummary};
use crate::memory::MaybeBytes;
use crate::stats::Summary;

/// The summary's metrics in display order, with their names and units.
pub fn metric_rows(s: &RunSummary) -> [(&'static str, &Option<Summary>); 10] {
    [
        ("TTFT (ms)", &s.ttft_ms),
        ("TBT (ms)", &s.tbt_ms),
        ("TPOT (ms)", &s.tpot_ms),
        ("TPS per sample (tok/s)", &s.tps),
        ("E2E (ms)", &s.e2e_ms),
        ("Prefill (ms)", &s.prefill_ms),
        ("Preprocess (ms)", &s.preprocess_ms),
        ("Vision enc (ms)", &s.vision_encode_ms),
        ("Input tokens", &s.input_tokens),
        ("Output tokens", &s.output_tokens),
    ]
}

/// Renders the summary table and the run totals as plain text.
pub fn render(report: &Report) -> String {
    let s = &report.summary;
    let rows = metric_rows(s);
    let mut out = String::new();
    let e = &report.engine;
    let _ = writeln!(
        out,
        "{} on {} ({}, {}) — {} [{}]",
        e.model, e.device, e.architecture, e.dtype, report.dataset.name, report.dataset.set
    );
    let _ = writeln!(
        out,
        "{:<22} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "metric", "n", "mean", "median", "p90", "p95", "p99", "min", "max", "stddev"
    );
    for (name, summary) in rows {
        let Some(v) = summary else { continue };
        let _ = writeln!(
            out,
            "{:<22} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            name,
            v.count,
            num(v.mean),
            num(v.median),
            num(v.p90),
            num(v.p95),
            num(v.p99),
            num(v.min),
            num(v.max),
            num(v.stddev)
        );
    }
    let _ = writeln!(
        out,
        "success {}/{} ({:.1}%), {:.2} s, {:.3} req/s, {:.2} output tok/s",
        s.succeeded,
        s.num_samples,
        s.success_rate * 100.0,
        s.duration_s,
        s.request_throughput,
        s.output_throughput
    );
    if let Some(pooled) = s.decode_tps_pooled {
        let _ = writeln!(
            out,
            "pooled decode throughput {} tok/s (all decode tokens / all decode time)",
            num(pooled)
        );
    }
    if let Some(b) = &report.decode_bandwidth {
        let _ = writeln!(
            out,
            "decode read {:.2} GB/s (weights {:.1} MB + KV {:.2} MB a token) = {:.0} % of this machine's {:.2} GB/s",
            b.read_bytes_per_s / 1e9,
            b.weight_bytes_per_token as f64 / 1e6,
            b.kv_bytes_per_token_mean / 1e6,
            b.utilisation * 100.0,
            b.machine_read_bytes_per_s / 1e9
        );
        if b.utilisation > 1.0 {
            // Memory cannot be outrun: either the weights were served from the caches, which
            // the larger probe buffer was not, or the probe itself was slowed down.
            let why = if b.weight_bytes_per_token < b.probe_bytes {
                "the weights fit the CPU's caches better than the larger probe buffer does"
            } else {
                "the machine's bandwidth moved between the probes (before and after the samples) and decode: other work on it; repeat on a quiet machine"
            };
            let _ = writeln!(out, "  (over 100 %: {why})");
        }
    }
    if let Some(c) = &report.prefill_compute {
        let _ = writeln!(
            out,
            "prefill {:.1} GFLOP/s = {:.0} % of this machine's f32 matrix product rate {:.1} GFLOP/s",
            c.flops_per_s / 1e9,
            c.utilisation * 100.0,
            c.machine_flops_per_s / 1e9
        );
    }
    for (reason, count) in &s.failure_reasons {
        let _ = writeln!(out, "  failed x{count}: {reason}");
    }
    let m = &report.memory;
    let _ = writeln!(
        out,
        "peak host RSS {}, peak GPU (process) {}, peak GPU (device) {}",
        bytes(&m.host_peak_rss),
        bytes(&m.gpu_peak_process),
        bytes(&m.gpu_peak_device)
    );
    out
}

/// Four significant-ish digits without scientific notation for the usual ranges.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A memory figure in MiB, or `n/a` where it was not measured.
pub fn bytes(m: &MaybeBytes) -> String {
    match m.bytes {
        Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        None => "n/a".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::bandwidth::DecodeBandwidth;
    use crate::report::testutil;

    fn with_utilisation(utilisation: f64, weight_bytes_per_token: u64) -> String {
        let mut report = testutil::report(vec![testutil::sample(0, 100.0, 10, &[20.0])], 1.0);
        report.decode_bandwidth = Some(DecodeBandwidth {
            weight_bytes_per_token,
            kv_bytes_per_token_mean: 0.0,
            read_bytes_per_s: utilisation * 20e9,
            machine_read_bytes_per_s: 20e9,
            probe_bytes: 1 << 30,
            utilisation,
        });
        render(&report)
    }

    /// A utilisation above 100 % is printed as measured, with the reason it can happen.
    #[test]
    fn bandwidth_over_the_probe_is_explained() {
        let over = with_utilisation(1.65, 2 << 30);
        assert!(
            over.contains("= 165 % of this machine's 20.00 GB/s"),
            "{over}"
        );
        assert!(over.contains("other work on it"), "{over}");
        // A model smaller than the probe's buffer can be read from the caches.
        let cached = with_utilisation(1.65, 20 << 20);
        assert!(cached.contains("fit the CPU's caches"), "{cached}");
        let under = with_utilisation(0.8, 2 << 30);
        assert!(under.contains("= 80 % of"), "{under}");
        assert!(!under.contains("over 100 %"), "{under}");
    }

    #[test]
    fn prefill_compute_is_printed_beside_the_machine_rate() {
        let mut report = testutil::report(vec![testutil::sample(0, 100.0, 10, &[20.0])], 1.0);
        assert!(!render(&report).contains("GFLOP/s"));
        report.prefill_compute = Some(crate::report::compute::PrefillCompute {
            flops: 1e9,
            flops_per_s: 45e9,
            machine_flops_per_s: 60e9,
            probe_shape: [256, 2048, 2048],
            utilisation: 0.75,
        });
        let text = render(&report);
        assert!(
            text.contains(
                "prefill 45.0 GFLOP/s = 75 % of this machine's f32 matrix product rate 60.0 GFLOP/s"
            ),
            "{text}"
        );
    }
}
