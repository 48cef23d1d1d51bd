//! Every map of the object. Userspace finds them by these names.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use llmdd_common::{
    call::{CallRecord, InflightKey, LibCfg},
    counters,
    sock::SockCfg,
    MAX_INFLIGHT, MAX_LIBS, MAX_PENDING_MMAPS, MAX_SOCKS, MAX_STACKS, MAX_TRACED, RING_BYTES,
};

/// Every record goes to userspace through this ring buffer.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Drop and diagnostic counters, see `llmdd_common::counters`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

/// Calls that entered and have not returned yet, keyed by (thread, function).
#[map]
pub static INFLIGHT: HashMap<InflightKey, CallRecord> = HashMap::with_max_entries(MAX_INFLIGHT, 0);

/// User stacks of traced calls (`--stacks`), deduplicated by the kernel; records carry the id.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(MAX_STACKS, 0);

/// Per probed library: communicator field offsets (indexed by the cookie's library slot).
#[map]
pub static LIB_CFG: Array<LibCfg> = Array::with_max_entries(MAX_LIBS, 0);

/// Processes (tgids) being traced: the kernel-side tracepoints only report these.
#[map]
pub static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TRACED, 0);

/// Sockets seen in use by traced processes (socket address -> tgid), so that events that fire
/// outside process context (retransmits, state changes in softirq) can be attributed.
#[map]
pub static KNOWN_SOCKS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_SOCKS, 0);

/// Threads (tid) of traced processes between entering an executable file mmap and its
/// return.
#[map]
pub static PENDING_MMAPS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(MAX_PENDING_MMAPS, 0);

/// Offsets inside `struct sock`, from the kernel's BTF (index 0).
#[map]
pub static SOCK_CFG: Array<SockCfg> = Array::with_max_entries(1, 0);

/// Bumps one of the per-CPU counters.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *c += 1 };
    }
}

/// Whether `tgid` is traced.
#[inline(always)]
/// Whether `tgid` is a traced serving front.
#[inline(always)]
pub fn is_front(tgid: u32) -> bool {
    // SAFETY: read-only lookup of a plain value.
    unsafe { TRACED.get(&tgid) }.is_some_and(|v| v & llmdd_common::sock::TRACED_FRONT != 0)
}

/// A front thread's current write/send buffer (tid -> buffer), see `SendBuf`.
#[map]
pub static SEND_BUFS: LruHashMap<u32, llmdd_common::sock::SendBuf> =
    LruHashMap::with_max_entries(MAX_TRACED, 0);

/// Front connections that received since they last sent: their next send starts a
/// response (socket address -> 1).
#[map]
pub static RESPONSE_DUE: LruHashMap<u64, u8> = LruHashMap::with_max_entries(MAX_SOCKS, 0);

pub fn is_traced(tgid: u32) -> bool {
    // SAFETY: read-only lookup of a plain value.
    unsafe { TRACED.get(&tgid).is_some() }
}
