//! vlmbench: measure how fast vision-language and text models run.
//!
//! Data flows one way: [`dataset`] (frozen inputs) → [`bench`] (the measurement loops, driving
//! an [`engine`] in-process or a server through [`client`]) → [`metrics`] (per-request timings)
//! → [`stats`] (aggregates) → [`report`] (JSON, CSV, table) → [`plot`] (charts and HTML of
//! reports, read back). Model code and kernels are in [`models`], random-weight presets in
//! [`synth`]; [`commands`] wires the pieces together for each subcommand.
//!
//! Imports point down this list, never up: `commands` → `cli` → `bench` → `plot` → `report` →
//! `metrics` → `engine`, `client`, `dataset` → `synth` → `models` → the leaves (`stats`,
//! `memory`, `profile`, `rng`, `fsutil`). README "How the code is laid out" has the same rule.

pub mod bench;
pub mod cli;
pub mod client;
pub mod commands;
pub mod dataset;
pub mod engine;
pub mod fsutil;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod plot;
pub mod profile;
pub mod report;
pub mod rng;
pub mod stats;
pub mod synth;
