use std::process::ExitCode;

use clap::Parser;
use vlmbench::cli::{Cli, Command};
use vlmbench::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Prepare(cmd)) => commands::prepare::execute(cmd),
        Some(Command::Run(args)) => commands::run::execute(*args),
        Some(Command::SynthModel(args)) => commands::synth_model::execute(args),
        Some(Command::Compare(args)) => commands::compare::execute(args),
        Some(Command::Plot(args)) => commands::plot::execute(args),
        Some(Command::Html(args)) => commands::html::execute(args),
        Some(Command::Recover(args)) => commands::recover::execute(args),
        Some(Command::Merge(args)) => commands::merge::execute(args),
        // `vlmbench` alone runs the main job with its defaults.
        None => commands::run::execute(commands::run::default_args()),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::from(commands::common::exit_code_of(&err))
        }
    }
}
