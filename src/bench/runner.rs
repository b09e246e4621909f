//! The measurement loop: feeds frozen samples to an engine one at a time and records what it
//! measured. Knows nothing about report formats.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::ProgressBar;

use crate::dataset::LoadedDataset;
use crate::engine::{Engine, EngineError, GenerationRequest};
use crate::metrics::SampleMetrics;
use crate::report::{RunStatus, SampleRecord};

/// Warm-up samples decode at most this many tokens: enough to load every kernel and touch
/// every code path, without paying for full generations that are thrown away.
pub const WARMUP_MAX_NEW_TOKENS: usize = 16;

/// How to run the samples.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub max_new_tokens: usize,
    pub ignore_eos: bool,
    /// Untimed samples first (taken from the start of the set, cycling if it is shorter).
    pub warmup: usize,
    /// Use at most this many samples of the set.
    pub limit: Option<usize>,
    /// Run the (limited) set this many times.
    pub repeat: usize,
    /// Record a profile of the measured samples (see [`crate::profile`]).
    pub profile: bool,
}

/// What the loop produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub samples: Vec<SampleRecord>,
    pub status: RunStatus,
    pub status_detail: Option<String>,
    /// Wall time of the measured part, seconds.
    pub duration_s: f64,
}

/// The output length a sample runs with: `--max-new-tokens`, or less where the set asks for a
/// per-sample length (synthetic sets do).
fn max_new_tokens_of(sample: &crate::dataset::Sample, opts: &RunOptions) -> usize {
    sample
        .requested_output_tokens()
        .map_or(opts.max_new_tokens, |n| {
            opts.max_new_tokens.min(n.max(1) as usize)
        })
}

/// Runs warm-up then the measured samples. Never panics on a bad sample: it is recorded as
/// failed and the loop goes on. Stops early on Ctrl-C (`cancel`) or a fatal engine error; the
/// samples finished so far are returned either way. `on_sample` sees each measured sample as
/// soon as it finished (the journal writes it out), in run order, with the measured wall time
/// so far in seconds; the time `on_sample` takes is not counted in the run's duration.
pub fn run(
    engine: &mut dyn Engine,
    dataset: &LoadedDataset,
    opts: &RunOptions,
    cancel: &AtomicBool,
    progress: &ProgressBar,
    on_sample: &mut dyn FnMut(&SampleRecord, f64),
) -> RunOutcome {
    let samples = &dataset.file.samples[..opts
        .limit
        .unwrap_or(usize::MAX)
        .min(dataset.file.samples.len())];
    let mut outcome = RunOutcome {
        samples: Vec::new(),
        status: RunStatus::Complete,
        status_detail: None,
        duration_s: 0.0,
    };

    // Buffers sized for the longest sample before anything is timed (warm-up runs shorter
    // outputs of the same samples, so it is covered too).
    // A missing image is left out here; its sample fails when it is run.
    let images: Vec<Vec<PathBuf>> = samples
        .iter()
        .map(|s| {
            let mut paths = dataset.image_paths(s);
            paths.retain(|p| p.is_file());
            paths
        })
        .collect();
    let planned: Vec<GenerationRequest<'_>> = samples
        .iter()
        .zip(&images)
        .map(|(sample, images)| GenerationRequest {
            prompt: &sample.prompt,
            images,
            max_new_tokens: max_new_tokens_of(sample, opts),
            ignore_eos: opts.ignore_eos,
            cancel,
        })
        .collect();
    if let Err(EngineError::Fatal(e)) = engine.reserve(&planned) {
        outcome.status = RunStatus::Aborted;
        outcome.status_detail = Some(format!("engine error while sizing the KV cache: {e:#}"));
        return outcome;
    }
    drop(planned);

    if !samples.is_empty() {
        progress.set_message("warming up");
        for i in 0..opts.warmup {
            let sample = &samples[i % samples.len()];
            let images = dataset.image_paths(sample);
            let request = GenerationRequest {
                prompt: &sample.prompt,
                images: &images,
                max_new_tokens: opts.max_new_tokens.min(WARMUP_MAX_NEW_TOKENS),
                ignore_eos: opts.ignore_eos,
                cancel,
            };
            match engine.generate(&request) {
                Ok(_) | Err(EngineError::Sample(_)) => {}
                Err(EngineError::Cancelled) => {
                    outcome.status = RunStatus::Interrupted;
                    outcome.status_detail = Some("interrupted during warm-up".into());
                    return outcome;
                }
                Err(EngineError::Fatal(e)) => {
                    outcome.status = RunStatus::Aborted;
                    outcome.status_detail = Some(format!("engine error during warm-up: {e:#}"));
                    return outcome;
                }
            }
        }
    }

    if opts.profile {
        // After warm-up: the trace covers the measured samples only.
        crate::profile::start(engine.device());
    }
    let started = Instant::now();
    let mut outside = std::time::Duration::ZERO;
    let (mut ttft_sum, mut ok_n) = (0.0, 0usize);
    // Pooled decode throughput for the progress line: all decode tokens / all decode time.
    let (mut decode_tokens, mut decode_ms) = (0usize, 0.0);
    'outer: for repeat in 0..opts.repeat {
        for sample in samples {
            if cancel.load(Ordering::SeqCst) {
                outcome.status = RunStatus::Interrupted;
                outcome.status_detail =
                    Some("interrupted by a signal (Ctrl-C, SIGTERM or SIGHUP)".into());
                break 'outer;
            }
            let images = dataset.image_paths(sample);
            let mut record = SampleRecord {
                index: sample.index,
                repeat,
                ok: false,
                error: None,
                metrics: None,
                output_token_ids: Vec::new(),
                text: String::new(),
            };
            if let Some(path) = images.iter().find(|p| !p.is_file()) {
                record.error = Some(format!("image not found: {}", path.display()));
            } else {
                // A set may ask for a per-sample output length (synthetic sets do).
                let max_new_tokens = max_new_tokens_of(sample, opts);
                let request = GenerationRequest {
                    prompt: &sample.prompt,
                    images: &images,
                    max_new_tokens,
                    ignore_eos: opts.ignore_eos,
                    cancel,
                };
                match engine.generate(&request) {
                    Ok(generation) => match SampleMetrics::from_generation(&generation) {
                        Some(m) => {
                            ok_n += 1;
                            ttft_sum += m.ttft_ms;
                            decode_tokens += m.output_tokens.saturating_sub(1);
                            decode_ms += m.decode_ms;
                            record.ok = true;
                            record.metrics = Some(m);
                            record.output_token_ids = generation.output_token_ids;
                            record.text = generation.text;
                        }
                        None => record.error = Some("the engine generated no token".into()),
                    },
                    Err(EngineError::Sample(msg)) => record.error = Some(msg),
                    Err(EngineError::Cancelled) => {
                        outcome.status = RunStatus::Interrupted;
                        outcome.status_detail =
                            Some("interrupted by a signal (Ctrl-C, SIGTERM or SIGHUP)".into());
                        break 'outer;
                    }
                    Err(EngineError::Fatal(e)) => {
                        outcome.status = RunStatus::Aborted;
                        outcome.status_detail = Some(format!("engine error: {e:#}"));
                        break 'outer;
                    }
                }
            }
            let handed = Instant::now();
            on_sample(&record, (handed - started - outside).as_secs_f64());
            outside += handed.elapsed();
            outcome.samples.push(record);
            progress.inc(1);
            if ok_n > 0 {
                let tps = if decode_ms > 0.0 {
                    format!("{:.1}", decode_tokens as f64 / (decode_ms / 1e3))
                } else {
                    "-".into()
                };
                progress.set_message(format!(
                    "mean TTFT {:.1} ms, pooled decode {tps} tok/s",
                    ttft_sum / ok_n as f64
                ));
            }
        }
    }
    outcome.duration_s = (started.elapsed() - outside).as_secs_f64();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{DatasetFile, Sample};
    use crate::engine::{EngineInfo, Generation, StopReason};
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// An engine that returns scripted results, so the loop's bookkeeping is tested without a
    /// model.
    struct Scripted {
        info: EngineInfo,
        calls: usize,
        cancel_on_call: Option<usize>,
        fail_prompt: &'static str,
        /// `(prompt, max_new_tokens)` of each request `reserve` was given, and how many
        /// `generate` calls came before it.
        reserved: Vec<(String, usize)>,
        calls_before_reserve: Option<usize>,
        /// The images each request handed to `reserve` and to `generate` had.
        reserved_images: Vec<Vec<PathBuf>>,
        generated_images: Vec<Vec<PathBuf>>,
    }

    impl Engine for Scripted {
        fn info(&self) -> &EngineInfo {
            &self.info
        }
        fn reserve(&mut self, requests: &[GenerationRequest<'_>]) -> Result<(), EngineError> {
            self.calls_before_reserve = Some(self.calls);
            self.reserved = requests
                .iter()
                .map(|r| (r.prompt.to_string(), r.max_new_tokens))
                .collect();
            self.reserved_images = requests.iter().map(|r| r.images.to_vec()).collect();
            Ok(())
        }
        fn generate(&mut self, r: &GenerationRequest<'_>) -> Result<Generation, EngineError> {
            self.calls += 1;
            self.generated_images.push(r.images.to_vec());
            if Some(self.calls) == self.cancel_on_call {
                r.cancel.store(true, Ordering::SeqCst);
                return Err(EngineError::Cancelled);
            }
            if r.prompt == self.fail_prompt {
                return Err(EngineError::Sample("prompt too long".into()));
            }
            let n = r.max_new_tokens;
            Ok(Generation {
                preprocess: Duration::from_millis(1),
                vision_encode: None,
                token_arrivals: (0..n)
                    .map(|i| Duration::from_millis(10 + i as u64))
                    .collect(),
                end: Duration::from_millis(10 + n as u64),
                input_tokens: 3,
                image_tokens: 0,
                images: r.images.len(),
                output_token_ids: vec![7; n],
                text: "x".repeat(n),
                stop_reason: StopReason::MaxTokens,
                pool_peaks: None,
            })
        }
    }

    fn engine(cancel_on_call: Option<usize>) -> Scripted {
        Scripted {
            info: EngineInfo {
                backend: "test".into(),
                model: "scripted".into(),
                architecture: "none".into(),
                dtype: "f32".into(),
                device: "cpu".into(),
                parameters: None,
                context_length: 100,
                vision: false,
            },
            calls: 0,
            cancel_on_call,
            fail_prompt: "bad",
            reserved: Vec::new(),
            calls_before_reserve: None,
            reserved_images: Vec::new(),
            generated_images: Vec::new(),
        }
    }

    fn dataset(prompts: &[&str]) -> LoadedDataset {
        LoadedDataset {
            file: DatasetFile {
                schema_version: 1,
                set: "prompts".into(),
                name: "t".into(),
                vlmbench_version: "0".into(),
                seed: None,
                num_samples: prompts.len(),
                sources: vec![],
                params: BTreeMap::new(),
                samples: prompts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Sample {
                        index: i as i64,
                        prompt: p.to_string(),
                        images: if *p == "img" {
                            vec!["missing.png".into()]
                        } else {
                            Vec::new()
                        },
                        fields: BTreeMap::new(),
                    })
                    .collect(),
            },
            base_dir: std::env::temp_dir().join("vlmbench-no-such-dir"),
            sha256: String::new(),
        }
    }

    fn opts() -> RunOptions {
        RunOptions {
            max_new_tokens: 4,
            ignore_eos: false,
            warmup: 2,
            limit: None,
            repeat: 2,
            profile: false,
        }
    }

    #[test]
    fn failures_are_recorded_and_the_run_goes_on() {
        let cancel = AtomicBool::new(false);
        let mut e = engine(None);
        let out = run(
            &mut e,
            &dataset(&["a", "bad", "img", "b"]),
            &opts(),
            &cancel,
            &ProgressBar::hidden(),
            &mut |_, _| {},
        );
        assert_eq!(out.status, RunStatus::Complete);
        assert_eq!(out.samples.len(), 8);
        assert_eq!(
            e.calls,
            2 + 6,
            "warm-up + every sample with an existing image"
        );
        let failed: Vec<_> = out.samples.iter().filter(|s| !s.ok).collect();
        assert_eq!(failed.len(), 4);
        assert!(failed
            .iter()
            .any(|s| s.error.as_deref() == Some("prompt too long")));
        assert!(failed
            .iter()
            .any(|s| s.error.as_deref().unwrap().starts_with("image not found")));
        let ok = out.samples.iter().find(|s| s.ok).unwrap();
        assert_eq!(ok.metrics.as_ref().unwrap().tbt_ms.len(), 3);
        assert_eq!(out.samples.iter().filter(|s| s.repeat == 1).count(), 4);
    }

    #[test]
    fn ctrl_c_keeps_finished_samples() {
        let cancel = AtomicBool::new(false);
        let mut e = engine(Some(4)); // 2 warm-up calls, then the 2nd measured sample
        let mut o = opts();
        o.limit = Some(3);
        let out = run(
            &mut e,
            &dataset(&["a", "b", "c", "d"]),
            &o,
            &cancel,
            &ProgressBar::hidden(),
            &mut |_, _| {},
        );
        assert_eq!(out.status, RunStatus::Interrupted);
        assert_eq!(out.samples.len(), 1);
        assert!(out.samples[0].ok);
    }

    #[test]
    fn buffers_are_sized_for_every_measured_sample_before_anything_runs() {
        let cancel = AtomicBool::new(false);
        let mut e = engine(None);
        let mut d = dataset(&["a", "bb", "c"]);
        d.file.samples[1]
            .fields
            .insert("output_tokens".into(), serde_json::json!(2));
        let mut seen = Vec::new();
        let out = run(
            &mut e,
            &d,
            &opts(),
            &cancel,
            &ProgressBar::hidden(),
            &mut |s, _| seen.push((s.index, s.repeat)),
        );
        assert_eq!(e.calls_before_reserve, Some(0), "reserve before warm-up");
        assert_eq!(
            e.reserved,
            vec![("a".into(), 4), ("bb".into(), 2), ("c".into(), 4)]
        );
        // Every measured sample went to `on_sample`, in run order.
        let order: Vec<_> = out.samples.iter().map(|s| (s.index, s.repeat)).collect();
        assert_eq!(seen, order);
        assert_eq!(seen.len(), 6);
    }

    /// A sample's images reach the engine in order; one missing image fails the sample,
    /// named, and is left out when the buffers are sized.
    #[test]
    fn every_image_of_a_sample_is_handed_over_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.png", "a.png"] {
            std::fs::write(dir.path().join(name), b"an image").unwrap();
        }
        let mut d = dataset(&["two", "half"]);
        d.base_dir = dir.path().to_path_buf();
        d.file.samples[0].images = vec!["b.png".into(), "a.png".into()];
        d.file.samples[1].images = vec!["a.png".into(), "gone.png".into()];
        let mut o = opts();
        (o.warmup, o.repeat) = (0, 1);
        let cancel = AtomicBool::new(false);
        let mut e = engine(None);
        let out = run(
            &mut e,
            &d,
            &o,
            &cancel,
            &ProgressBar::hidden(),
            &mut |_, _| {},
        );
        let (b, a) = (dir.path().join("b.png"), dir.path().join("a.png"));
        assert_eq!(
            e.reserved_images,
            [vec![b.clone(), a.clone()], vec![a.clone()]]
        );
        assert_eq!(
            e.generated_images,
            [vec![b, a]],
            "the half-missing sample never ran"
        );
        assert_eq!(out.samples[0].metrics.as_ref().unwrap().images, 2);
        assert_eq!(
            out.samples[1].error.as_deref(),
            Some(format!("image not found: {}", dir.path().join("gone.png").display()).as_str())
        );
    }
}
