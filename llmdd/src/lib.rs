//! llmdd: attach eBPF probes to running NCCL/CUDA processes and name what is wrong.
//!
//! Data flows one way: `tracee` finds processes, their libraries and symbol offsets →
//! `probe` loads the embedded BPF object and attaches it per target → `transport` reads the
//! ring buffer into typed `events` → `session` hands each event to the `engine` (the
//! analysis: plain Rust over the event stream, no I/O) and to the sinks (`record`, the
//! event dump) → `views` format the engine's snapshot (report, trace, flame graph, metrics,
//! terminal view). The module map, by layer (no module imports one that imports it back:
//! `scripts/module-cycles.py` checks):
//!
//! - commands: `cli` (flags of every subcommand), `live` (a run's life: prepare, attach,
//!   trace loop, finish), `offline` (`report`, `export` of recordings), `doctor`, `diff`,
//!   `loadgen` (the pre-launch collective load), `config_file` (`llmdd.toml`), `values`
//!   (value parsers shared by flags, file and loadgen).
//! - probing: `tracee` (traced processes, their mappings, ELF symbols, NCCL offsets),
//!   `probe` (BPF load and attach), `transport` (ring buffer), `events` (decoded records),
//!   `budget` (overhead budget and duty cycle), `cost` (what the probes cost each thread,
//!   measured on it), `follow` (processes found after the start:
//!   `--follow`, `--children`, `--all`), `userprobe` (`--probe` specs, their registry and
//!   placement), `kernel` (BTF offsets, kernel features), `privileges` (capabilities and
//!   their drop).
//! - host context: `node` (CPU, memory, NICs), `gpu` (NVML), `threads` (where each thread is
//!   now), `stacks` (user stacks of calls), `ras` (NCCL's RAS service), `launcher` (what a
//!   process's launcher put in its environment).
//! - analysis: `engine` (matching, findings, snapshot), `merge` (recordings of several
//!   hosts on one clock), `summary` (the plain per-interval block).
//! - outputs: `session` (one run's analysis and outputs), `views` (report, trace, flame
//!   graph, metrics endpoint, terminal view), `record` (the record file format), `outfile`
//!   (output files created safely).

pub mod budget;
pub mod cli;
pub mod config_file;
pub mod cost;
pub mod diff;
pub mod doctor;
pub mod engine;
pub mod events;
pub mod follow;
pub mod gpu;
pub mod kernel;
pub mod launcher;
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
pub mod threads;
pub mod tracee;
pub mod transport;
pub mod userprobe;
pub mod values;
pub mod views;
