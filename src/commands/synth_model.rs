//! `vlmbench synth-model`: write a random-weight model in the Hugging Face layout.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{DtypeArg, SynthModelArgs};

pub fn execute(args: SynthModelArgs) -> Result<ExitCode> {
    let dtype = match args.dtype {
        DtypeArg::Auto | DtypeArg::F32 => candle_core::DType::F32,
        DtypeArg::F16 => candle_core::DType::F16,
        DtypeArg::Bf16 => candle_core::DType::BF16,
    };
    let seed = (!args.no_weights).then_some(args.seed);
    crate::engine::synth::write_preset(&args.preset, &args.out, dtype, seed)?;
    println!(
        "wrote {} ({}{}) to {}",
        args.preset,
        dtype.as_str(),
        if args.no_weights { ", no weights" } else { "" },
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
