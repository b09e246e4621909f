//! Serving workloads (`--workload`): fixed prompt and output lengths, concurrency levels and
//! whether requests carry images; each becomes a frozen synthetic set.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::ValueEnum;

use crate::dataset::synthetic;

/// The workloads `--workload` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    High,
    Mid,
    Low,
    VisionA,
    VisionB,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::High => "high",
            Workload::Mid => "mid",
            Workload::Low => "low",
            Workload::VisionA => "vision-a",
            Workload::VisionB => "vision-b",
        }
    }
}

/// A seeds-style workload: prompt and output lengths, concurrency levels, images or not.
pub struct WorkloadSpec {
    /// Prompt tokens; `None` = the context length minus 2,048 (and a small margin for the
    /// chat template).
    pub input_tokens: Option<usize>,
    pub output_tokens: usize,
    pub concurrency: &'static [usize],
    pub images: bool,
}

pub fn workload_spec(w: Workload) -> WorkloadSpec {
    match w {
        Workload::High => WorkloadSpec {
            input_tokens: None,
            output_tokens: 2048,
            concurrency: &[1, 5, 10],
            images: false,
        },
        Workload::Mid => WorkloadSpec {
            input_tokens: Some(200),
            output_tokens: 250,
            concurrency: &[32, 64, 128],
            images: false,
        },
        Workload::Low => WorkloadSpec {
            input_tokens: Some(100),
            output_tokens: 150,
            concurrency: &[1, 4, 8, 16, 32],
            images: false,
        },
        Workload::VisionA => WorkloadSpec {
            input_tokens: Some(50),
            output_tokens: 300,
            concurrency: &[8, 16, 32, 64, 128],
            images: true,
        },
        Workload::VisionB => WorkloadSpec {
            input_tokens: Some(100),
            output_tokens: 100,
            concurrency: &[1, 8, 16, 32],
            images: true,
        },
    }
}

/// What a workload sets up: its data file and the run settings that go with it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadPlan {
    pub data_file: PathBuf,
    pub concurrency: Vec<usize>,
    pub num_prompts: usize,
    pub output_tokens: usize,
}

/// Writes workload `w`'s synthetic set under `perf_data/` and says how to run it. Concurrency
/// levels and the prompt count the user gave win over the workload's own; `context_length` is
/// needed by `high` only (its prompts fill the context but for the output).
pub fn prepare(
    w: Workload,
    given_concurrency: &[usize],
    given_num_prompts: Option<usize>,
    context_length: Option<usize>,
    tokenizer: Option<PathBuf>,
) -> Result<WorkloadPlan> {
    let spec = workload_spec(w);
    let input = match spec.input_tokens {
        Some(n) => n,
        None => {
            let ctx = context_length.ok_or_else(|| {
                anyhow!("--workload high needs the context length: the server does not report it; pass --context-length N")
            })?;
            ctx.checked_sub(2048 + 64)
                .filter(|n| *n > 0)
                .ok_or_else(|| anyhow!("context length {ctx} is too small for --workload high (needs more than 2,112 tokens)"))?
        }
    };
    let concurrency = if given_concurrency.is_empty() {
        spec.concurrency.to_vec()
    } else {
        given_concurrency.to_vec()
    };
    let max_concurrency = *concurrency.iter().max().unwrap_or(&1);
    let num_prompts = given_num_prompts.unwrap_or((4 * max_concurrency).max(50));
    let name = format!("workload_{}", w.name());
    let out = PathBuf::from("perf_data").join(synthetic::default_file_name(&name));
    eprintln!(
        "writing the {} workload ({num_prompts} prompts of {input} tokens{}) to {} ...",
        w.name(),
        if spec.images {
            " with unique images"
        } else {
            ""
        },
        out.display()
    );
    synthetic::prepare(
        &synthetic::SyntheticOptions {
            name,
            num_samples: num_prompts,
            seed: 42,
            images: spec.images.then_some(synthetic::ImageSpec {
                width_mean: 512.0,
                width_stddev: 0.0,
                height_mean: 512.0,
                height_stddev: 0.0,
                format: synthetic::SynthImageFormat::Png,
            }),
            input_tokens_mean: input as f64,
            input_tokens_stddev: 0.0,
            output_tokens: Some((spec.output_tokens as f64, 0.0)),
            tokenizer,
        },
        &out,
    )?;
    Ok(WorkloadPlan {
        data_file: out,
        concurrency,
        num_prompts,
        output_tokens: spec.output_tokens,
    })
}
