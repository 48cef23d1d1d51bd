//! Helpers shared by the integration tests (which run as root against real BPF programs
//! and real processes) and by the demo.

pub mod accuracy;
pub mod harness;
pub mod hooks;
pub mod job;
pub mod kernel_objects;
pub mod mpi;
pub mod nixl;
pub mod reallibs;
pub mod records;
pub mod serving;
pub mod soak;
