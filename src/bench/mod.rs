//! The two measurement loops: [`runner`] runs a set through an in-process engine one sample at
//! a time; [`serving`] sends requests to a server at a load level, on an arrival schedule, and
//! [`serving_session`] measures a whole served level (the server watched, every request
//! journaled, the level's report made); [`goodput_search`] runs levels until it finds the
//! highest load that meets a goodput target.
//! [`request_record`] turns a served request into its report record, [`workload`] makes the
//! serving workloads' sets.
//!
//! Uses engine, client, dataset, metrics, the report's record types, rng and profile. Must not
//! depend on commands or cli (settings arrive as options), nor on plot.

pub mod arrival;
pub mod cancel;
pub mod conversations;
pub mod goodput_search;
pub mod request_detail;
pub mod request_record;
pub mod runner;
pub mod server_watch;
pub mod serving;
pub mod serving_session;
pub mod unique_inputs;
pub mod workload;
