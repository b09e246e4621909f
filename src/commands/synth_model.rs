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
    crate::engine::synth::write_model(&args.preset, &args.out, dtype, args.seed)?;
    println!(
        "wrote {} ({}) to {}",
        args.preset,
        dtype.as_str(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
