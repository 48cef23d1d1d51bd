//! Aggregate mode (cookie flag `C_AGG`): entry parks only the entry time and the size
//! argument; return folds the call into `AGG` (count, size sum, total and max duration,
//! errors, log2 latency histogram). No record reaches the ring buffer, so the per-call cost
//! is a few small hash-map operations beyond the trap.
//!
//! `AGG` is per-CPU: each CPU adds to its own copy with plain stores (the BPF target has no
//! 64-bit atomics in `core`, and a per-CPU value has no contention anyway) and userspace
//! sums the copies. It is not preallocated, so it holds memory only for the keys in use
//! (entries x CPUs x 288 bytes preallocated would be tens of MB on large machines).

use aya_ebpf::{
    bindings::{pt_regs, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, PerCpuHashMap},
};
use llmdd_common::{
    agg::{hist_bucket, size_bucket, AggKey, AggStart, AggVal, MAX_AGG},
    call::{Cookie, InflightKey},
    counters, MAX_INFLIGHT,
};

use crate::maps::count;

/// Counts and latency histograms per (process, function, size bucket).
#[map]
pub static AGG: PerCpuHashMap<AggKey, AggVal> =
    PerCpuHashMap::with_max_entries(MAX_AGG, BPF_F_NO_PREALLOC);

/// Aggregated calls between entry and return: entry time and size only.
#[map]
pub static AGG_START: HashMap<InflightKey, AggStart> = HashMap::with_max_entries(MAX_INFLIGHT, 0);

/// The register argument in `slot` (0 when there is none). The registers are read at fixed
/// context offsets first: the verifier refuses a context read at a computed offset, which is
/// what a `match` on the slot compiles to.
#[inline(always)]
fn size_arg(regs: *const pt_regs, slot: u8) -> u64 {
    // SAFETY: `regs` is the uprobe's pt_regs context; direct reads are allowed.
    let words = unsafe {
        [
            (*regs).rdi,
            (*regs).rsi,
            (*regs).rdx,
            (*regs).rcx,
            (*regs).r8,
            (*regs).r9,
        ]
    };
    // Sizes on the stack (slots 6-8) are not read in this mode: a user read per call.
    if (slot as usize) < words.len() {
        words[slot as usize]
    } else {
        0
    }
}

#[inline(always)]
pub fn agg_entry(regs: *const pt_regs, cookie: Cookie, key: &InflightKey) {
    let size = size_arg(regs, cookie.size_slot());
    let start = AggStart {
        // SAFETY: ktime is always readable.
        entry_ns: unsafe { bpf_ktime_get_ns() },
        size,
    };
    if AGG_START.insert(key, &start, 0).is_err() {
        count(counters::INFLIGHT_FULL);
    }
}

#[inline(always)]
pub fn agg_return(regs: *const pt_regs, now: u64, pid: u32, func: u16, key: &InflightKey) {
    let Some(start) = AGG_START.get_ptr(key) else {
        count(counters::RETURN_WITHOUT_ENTRY);
        return;
    };
    // SAFETY: a live map value of plain integers.
    let start = unsafe { *start };
    let _ = AGG_START.remove(key);
    let akey = AggKey {
        pid,
        func,
        size_bucket: size_bucket(start.size),
    };
    let val = match AGG.get_ptr_mut(&akey) {
        Some(v) => v,
        None => {
            // First call of this key on any CPU (a per-CPU map inserts a zeroed value for
            // every CPU); a concurrent insert elsewhere makes BPF_NOEXIST fail harmlessly.
            let _ = AGG.insert(&akey, &AggVal::default(), BPF_NOEXIST as u64);
            match AGG.get_ptr_mut(&akey) {
                Some(v) => v,
                None => {
                    count(counters::AGG_FULL);
                    return;
                }
            }
        }
    };
    let d = now.saturating_sub(start.entry_ns);
    // SAFETY: pt_regs context read.
    let ret = unsafe { (*regs).rax } as u32;
    // SAFETY: `val` points at this CPU's copy of a live map value; no other writer.
    let v = unsafe { &mut *val };
    v.calls += 1;
    v.size_sum += start.size;
    v.total_ns += d;
    if ret != 0 {
        v.errors += 1;
    }
    let b = hist_bucket(d);
    if b < v.hist.len() {
        v.hist[b] += 1;
    }
    if d > v.max_ns {
        v.max_ns = d;
    }
}
