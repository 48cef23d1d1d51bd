//! llmdd: attach eBPF probes to running NCCL/CUDA processes and name what is wrong.
//!
//! Data flows one way through these modules:
//! `target` (find processes, libraries, symbol offsets) → `probe` (load the embedded BPF
//! object, attach per target) → `transport` (ring buffer → typed `events`) → consumers
//! (`engine`, `summary`). `attach` and `doctor` are the subcommands; `cli` holds their flags.

pub mod budget;
pub mod cli;
pub mod config_file;
pub mod diff;
pub mod doctor;
pub mod engine;
pub mod events;
pub mod follow;
pub mod gpu;
pub mod kernel;
pub mod live;
pub mod loadgen;
pub mod merge;
pub mod node;
pub mod offline;
pub mod outfile;
pub mod privileges;
pub mod probe;
pub mod ras;
pub mod record;
pub mod session;
pub mod stacks;
pub mod summary;
pub mod target;
pub mod threads;
pub mod transport;
pub mod userprobe;
pub mod values;
pub mod views;
