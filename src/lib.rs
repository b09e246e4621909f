//! vlmbench: measure how fast vision-language and text models run.
//!
//! Data flows one way: [`dataset`] (frozen inputs) → [`engine`] (a model that times itself)
//! → [`metrics`] (per-sample timings) → [`stats`] (aggregates) → [`report`] (JSON, CSV, table)
//! → [`plot`] (charts of reports, read back).

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
