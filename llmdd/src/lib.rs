//! llmdd: attach eBPF probes to running NCCL/CUDA processes and name what is wrong.
//!
//! Data flows one way through these modules:
//! `target` (find processes, libraries, symbol offsets) → `probe` (load the embedded BPF
//! object, attach per target) → `transport` (ring buffer → typed `events`) → `engine`
//! (matching, findings) → views.

pub mod engine;
pub mod events;
pub mod kernel;
pub mod target;
