//! Records and map types shared by `llmdd-ebpf` (the BPF side) and `llmdd` (userspace).
//!
//! Everything here is `no_std`, `#[repr(C)]`, and free of padding holes that the verifier
//! or the decoder could trip over. One file per event family:
//! - [`call`]: uprobe/uretprobe call records (NCCL, CUDA runtime, CUDA driver), the attach
//!   cookie layout, and the per-library configuration that the probes read.
//! - [`funcs`]: the table of every traced function: id, family, symbol names, argument roles.
//! - [`sock`]: kernel socket tracepoint records.
//! - [`proc`]: process lifecycle records.
//! - [`counters`]: indices of the per-CPU drop/diagnostic counters.
#![no_std]

pub mod agg;
pub mod call;
pub mod counters;
pub mod funcs;
pub mod proc;
pub mod sock;

/// Version of the record layout. Bumped whenever a record changes shape. The live path cannot
/// mismatch (the object is built from this crate and embedded in the same binary); the
/// version is for anything that stores records and reads them back later.
pub const FORMAT_VERSION: u32 = 2;

/// First field of every ring-buffer record: which record follows.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Call = 1,
    Sock = 2,
    ProcExit = 3,
    ExecMap = 4,
}

impl RecordKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Call),
            2 => Some(Self::Sock),
            3 => Some(Self::ProcExit),
            4 => Some(Self::ExecMap),
            _ => None,
        }
    }
}

/// Size of the BPF ring buffer in bytes (a power of two, multiple of the page size).
pub const RING_BYTES: u32 = 8 << 20;
/// The BPF side forces a reader wakeup only when this much data waits; below it, submits
/// say "no wakeup" and the reader drains on its own timer. This keeps a wakeup off the
/// per-call path.
pub const RING_WAKEUP_BYTES: u64 = 256 << 10;
/// Maximum number of in-flight calls (entered, not yet returned) across all threads.
pub const MAX_INFLIGHT: u32 = 65_536;
/// Maximum number of traced processes (tgids) for the kernel-side filters.
pub const MAX_TRACED: u32 = 4_096;
/// Maximum number of probed library slots (per-library configuration entries).
pub const MAX_LIBS: u32 = 1_024;
/// Maximum number of threads with an executable file mapping in progress.
pub const MAX_PENDING_MMAPS: u32 = 1_024;
/// Distinct user stacks the `STACKS` map holds; a stack that does not fit is counted as
/// lost (`counters::STACK_LOST`) and its call folded without a stack.
pub const MAX_STACKS: u32 = 16_384;
/// Maximum number of kernel sockets remembered as belonging to traced processes.
pub const MAX_SOCKS: u32 = 65_536;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, contain only integers and arrays of
    // integers, and have no padding (checked by the size assertions next to each type).
    unsafe impl aya::Pod for crate::call::LibCfg {}
    unsafe impl aya::Pod for crate::sock::SockCfg {}
    unsafe impl aya::Pod for crate::agg::AggKey {}
    unsafe impl aya::Pod for crate::agg::AggVal {}
}
