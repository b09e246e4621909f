//! One module per subcommand: validate arguments into options, call the library, print.

pub mod common;
pub mod compare;
pub mod html;
pub mod plot;
pub mod prepare;
pub mod run;
pub mod serve;
pub mod synth_model;
