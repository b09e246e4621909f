//! The two measurement loops: [`runner`] runs a set through an in-process engine one sample at
//! a time; [`serving`] sends requests to a server at a load level, on an arrival schedule.

pub mod request_record;
pub mod runner;
pub mod serving;
pub mod workload;
