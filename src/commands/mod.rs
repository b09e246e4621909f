//! One module per subcommand: validate arguments into options, call the library, print.
//! What `run`'s two sides (in-process and serving) share lives in [`common`].
//!
//! The top of the crate: it may use any module, and no module but `main.rs` uses it. Logic
//! that measures, aggregates or renders belongs below (bench, report, plot), not here.

pub mod common;
pub mod compare;
pub mod destination;
pub mod html;
pub mod merge;
pub mod plot;
pub mod prepare;
pub mod recover;
pub mod run;
pub mod serve;
pub mod serve_inputs;
pub mod serve_load;
pub mod serve_output;
pub mod synth_model;
