//! The eBPF object, built by `llmdd/build.rs` and embedded so that users need no BPF
//! toolchain.

/// The object's bytes, aligned for the ELF parser.
pub static BYTES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/llmdd.bpf.o"));
