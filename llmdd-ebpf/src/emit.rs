//! Reserve, fill, submit, or count a drop. The only place that writes to the ring buffer.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use llmdd_common::{counters, RING_WAKEUP_BYTES};

use crate::maps::{count, EVENTS};

/// Submit flags for a record of `size` bytes: wake the reader each time the data waiting
/// crosses a multiple of the threshold, and only then. Below the first, the reader drains on
/// its own timer, so no wakeup sits on the per-call path. Past it, a wakeup on every further
/// record (as a plain "at least the threshold" test did) costs each traced call an
/// interrupt, several microseconds in a virtual machine, for as long as the reader is behind
/// (measured: 9.3 us per call instead of 1.1 with the reader stopped); one wakeup per
/// threshold's worth of new data costs nothing per call, and a wakeup missed (another CPU
/// reserved in between, or the reader cleared it while draining) is made good by the next
/// multiple rather than left to the reader's timer while the ring fills.
#[inline(always)]
pub fn wakeup_flags(size: u64) -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    // The waiting data before this record and its 8-byte ring header.
    let before = avail.saturating_sub(size + 8);
    if avail >= RING_WAKEUP_BYTES && avail / RING_WAKEUP_BYTES != before / RING_WAKEUP_BYTES {
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
            entry.submit(wakeup_flags(core::mem::size_of::<T>() as u64));
        }
        None => count(counters::RING_FULL),
    }
}
