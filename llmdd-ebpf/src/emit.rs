//! Reserve, fill, submit, or count a drop. The only place that writes to the ring buffer.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use llmdd_common::{counters, RING_WAKEUP_BYTES};

use crate::maps::{count, EVENTS};

/// Submit flags: wake the reader only once enough data waits. Below the threshold the reader
/// drains on its own timer, so no wakeup (an IPI and a context switch) sits on the per-call
/// path.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= RING_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Sends a plain record; counts a drop when the buffer is full.
#[inline(always)]
pub fn send<T: 'static>(rec: &T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(unsafe { core::ptr::read(rec) });
            entry.submit(wakeup_flags());
        }
        None => count(counters::RING_FULL),
    }
}
