//! `vlmbench synth-model`: write a random-weight model in the Hugging Face layout.

use std::process::ExitCode;

use anyhow::Result;

use super::common::dtype_of;
use crate::cli::SynthModelArgs;

pub fn execute(args: SynthModelArgs) -> Result<ExitCode> {
    let dtype = dtype_of(args.dtype).unwrap_or(candle_core::DType::F32);
    let seed = (!args.no_weights).then_some(args.seed);
    crate::synth::presets::write_preset(&args.preset, &args.out, dtype, seed)?;
    println!(
        "wrote {} ({}{}) to {}",
        args.preset,
        dtype.as_str(),
        if args.no_weights { ", no weights" } else { "" },
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
