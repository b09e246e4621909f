//! `vlmbench run --profile`: a timeline of the in-process run as a Chrome trace, and a table of
//! where the time went.
//!
//! The engine code marks regions with [`span`] (sample, preprocessing, vision tower, projector,
//! prefill, each decode step, each layer's norms / attention / MLP, the LM head). Spans are
//! recorded only while a profile is active, on the thread that started it: otherwise a span is one relaxed atomic load, so an
//! unprofiled run measures what it always measured. While profiling on CUDA each span ends with
//! a device synchronisation, so a span's length is the GPU's time, not the launch time; that
//! synchronisation is also why a profiled run is slower, and why profiling is opt-in.
//!
//! Output: `<report>.trace.json` (Chrome trace event format, complete `"X"` events in
//! microseconds; opens in chrome://tracing and ui.perfetto.dev) and `<report>.profiler_stats.txt`
//! (top operations by total time, with calls and share, and the KV-cache size).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;

static ACTIVE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Spans are recorded on the thread that started the profile (the one driving the model),
    /// not from other threads of the process that happen to run model code meanwhile.
    static ON_THIS_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
static STATE: Mutex<Option<State>> = Mutex::new(None);

struct State {
    origin: Instant,
    events: Vec<TraceEvent>,
    device: Option<candle_core::Device>,
    notes: BTreeMap<String, u64>,
}

/// One complete event of the Chrome trace format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TraceEvent {
    pub name: String,
    pub cat: String,
    /// Always `"X"` (complete event).
    pub ph: String,
    /// Start, microseconds since the profile began.
    pub ts: f64,
    /// Duration, microseconds.
    pub dur: f64,
    pub pid: u32,
    pub tid: u64,
}

/// The whole trace file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    #[serde(rename = "traceEvents")]
    pub trace_events: Vec<TraceEvent>,
    #[serde(rename = "displayTimeUnit")]
    pub display_time_unit: String,
    /// Facts recorded along the way (KV-cache bytes and capacity...).
    #[serde(default)]
    pub metadata: BTreeMap<String, u64>,
}

/// Starts recording; `device` is synchronised at the end of every span (CUDA).
pub fn start(device: Option<candle_core::Device>) {
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    *state = Some(State {
        origin: Instant::now(),
        events: Vec::new(),
        device: device.filter(|d| d.is_cuda()),
        notes: BTreeMap::new(),
    });
    ON_THIS_THREAD.with(|on| on.set(true));
    ACTIVE.store(true, Ordering::Release);
}

/// Stops recording and returns what was recorded (`None` if nothing was started).
pub fn finish() -> Option<Trace> {
    ACTIVE.store(false, Ordering::Release);
    ON_THIS_THREAD.with(|on| on.set(false));
    let state = STATE.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    Some(Trace {
        trace_events: state.events,
        display_time_unit: "ms".into(),
        metadata: state.notes,
    })
}

pub fn is_active() -> bool {
    ACTIVE.load(Ordering::Relaxed) && ON_THIS_THREAD.with(std::cell::Cell::get)
}

/// Whether spans opened on this thread are recorded: the value to hand to
/// [`record_on_this_thread`] when the model's work moves to another thread.
pub fn recording_here() -> bool {
    is_active()
}

/// Makes the current thread record spans (or not) until the guard drops, for the thread the
/// model's work was handed to (the engine's thread pool) by the thread that started the profile.
pub fn record_on_this_thread(record: bool) -> RecordGuard {
    let previous = ON_THIS_THREAD.with(|on| on.replace(record));
    RecordGuard { previous }
}

/// Restores the thread's previous recording state on drop.
#[must_use = "recording stops when this guard is dropped"]
pub struct RecordGuard {
    previous: bool,
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        ON_THIS_THREAD.with(|on| on.set(self.previous));
    }
}

/// Records a number for the stats file (the latest value wins), e.g. the KV-cache size.
pub fn note(key: &str, value: u64) {
    if !is_active() {
        return;
    }
    if let Some(s) = STATE.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        s.notes.insert(key.to_string(), value);
    }
}

/// A region of the timeline, recorded when the guard drops.
#[must_use = "the span ends when this guard is dropped"]
pub struct Span {
    open: Option<(&'static str, &'static str, Instant)>,
    label: Option<String>,
}

/// Opens a span named `name` in category `cat` (e.g. `layer`, `phase`, `op`).
#[inline]
pub fn span(cat: &'static str, name: &'static str) -> Span {
    if !is_active() {
        return Span {
            open: None,
            label: None,
        };
    }
    Span {
        open: Some((cat, name, Instant::now())),
        label: None,
    }
}

/// Like [`span`], with a name built only when profiling (e.g. `layer 3`).
#[inline]
pub fn span_with(cat: &'static str, name: impl FnOnce() -> String) -> Span {
    if !is_active() {
        return Span {
            open: None,
            label: None,
        };
    }
    Span {
        open: Some((cat, "", Instant::now())),
        label: Some(name()),
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        let Some((cat, name, start)) = self.open.take() else {
            return;
        };
        let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = guard.as_mut() else {
            return;
        };
        if let Some(d) = &state.device {
            // A span means device time: wait for the work it launched.
            let _ = d.synchronize();
        }
        let end = Instant::now();
        let name = self.label.take().unwrap_or_else(|| name.to_string());
        state.events.push(TraceEvent {
            name,
            cat: cat.to_string(),
            ph: "X".into(),
            ts: start.duration_since(state.origin).as_secs_f64() * 1e6,
            dur: end.duration_since(start).as_secs_f64() * 1e6,
            pid: std::process::id(),
            tid: 1,
        });
    }
}

/// Writes `<base>.trace.json` and `<base>.profiler_stats.txt`.
pub fn write(
    trace: &Trace,
    report_path: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let trace_path = report_path.with_extension("trace.json");
    let stats_path = report_path.with_extension("profiler_stats.txt");
    write_atomic(&trace_path, &serde_json::to_vec(trace)?)?;
    write_atomic(&stats_path, stats_table(trace, 30).as_bytes())?;
    Ok((trace_path, stats_path))
}

/// Operations by total time: name, calls, total, mean, share of the profiled samples' time.
pub fn stats_table(trace: &Trace, top: usize) -> String {
    #[derive(Default)]
    struct Agg {
        calls: u64,
        total_us: f64,
    }
    // Operations are attributed to the phase they ran in (prefill and decode differ in kind).
    let mut phases: Vec<(f64, f64, &str)> = trace
        .trace_events
        .iter()
        .filter(|e| e.cat == "phase")
        .map(|e| (e.ts, e.ts + e.dur, e.name.as_str()))
        .collect();
    phases.sort_by(|a, b| a.0.total_cmp(&b.0));
    let phase_of = |e: &TraceEvent| -> Option<&str> {
        let i = phases.partition_point(|p| p.0 <= e.ts + 1e-6);
        let (start, end, name) = *phases.get(i.checked_sub(1)?)?;
        (e.ts >= start - 1e-6 && e.ts + e.dur <= end + 1e-6).then_some(name)
    };
    let mut by_name: BTreeMap<(String, String), Agg> = BTreeMap::new();
    for e in &trace.trace_events {
        // Layers are numbered in the trace; the table adds them up per kind.
        let base = e
            .name
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end();
        let name = match (e.cat.as_str(), phase_of(e)) {
            ("op" | "layer", Some(phase)) => format!("{phase}/{base}"),
            _ => base.to_string(),
        };
        let a = by_name.entry((e.cat.clone(), name)).or_default();
        a.calls += 1;
        a.total_us += e.dur;
    }
    let sample_total: f64 = trace
        .trace_events
        .iter()
        .filter(|e| e.cat == "sample")
        .map(|e| e.dur)
        .sum();
    let mut rows: Vec<_> = by_name.into_iter().collect();
    rows.sort_by(|a, b| b.1.total_us.total_cmp(&a.1.total_us));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<28} {:>8} {:>12} {:>12} {:>8}",
        "category", "operation", "calls", "total (ms)", "mean (ms)", "share"
    );
    for ((cat, name), a) in rows.iter().take(top) {
        let share = if sample_total > 0.0 {
            format!("{:.1}%", 100.0 * a.total_us / sample_total)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<10} {:<28} {:>8} {:>12.3} {:>12.4} {:>8}",
            cat,
            name,
            a.calls,
            a.total_us / 1e3,
            a.total_us / 1e3 / a.calls as f64,
            share
        );
    }
    let _ = writeln!(
        out,
        "\nshare = total time / time inside measured samples ({:.1} ms); nested operations are \
         also counted in their parents, so shares do not add up to 100%.",
        sample_total / 1e3
    );
    for (k, v) in &trace.metadata {
        let _ = writeln!(out, "{k}: {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_record_only_while_active_and_nest() {
        // The only test in the crate that starts a profile (the state is process-wide).
        {
            let _ignored = span("phase", "before");
        }
        start(None);
        {
            let _outer = span("sample", "sample");
            std::thread::sleep(std::time::Duration::from_millis(2));
            {
                let _inner = span_with("layer", || "layer 3".to_string());
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            note("kv_cache_bytes", 4096);
        }
        let trace = finish().unwrap();
        {
            let _after = span("phase", "after");
        }
        assert!(finish().is_none());
        let names: Vec<&str> = trace.trace_events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["layer 3", "sample"]);
        let (inner, outer) = (&trace.trace_events[0], &trace.trace_events[1]);
        assert!(inner.ts >= outer.ts && inner.ts + inner.dur <= outer.ts + outer.dur);
        assert!(outer.dur >= 3000.0);
        let table = stats_table(&trace, 10);
        assert!(
            table.contains("layer") && table.contains("kv_cache_bytes: 4096"),
            "{table}"
        );
        let json = serde_json::to_value(&trace).unwrap();
        assert_eq!(json["traceEvents"][0]["ph"], "X");
    }
}
