//! The analysis engine: plain, deterministic Rust over the event stream (no BPF, no I/O).
