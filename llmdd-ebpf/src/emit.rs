//! Reserve, fill, submit, or count a drop. The only place that writes to the ring buffer.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use llmdd_common::{counters, RING_WAKEUP_BYTES};

use crate::maps::{count, EVENTS};

/// Submit flags: wake the reader once, when the data waiting crosses the threshold. Below it
/// the reader drains on its own timer, so no wakeup sits on the per-call path. Past it, the
/// reader has been woken already: a wakeup on every further record (as a plain "at least
/// the threshold" test would do) costs each traced call an interrupt, several microseconds
/// in a virtual machine, for as long as the reader is behind. A crossing missed because
/// other CPUs reserved in between costs at most one timer period.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if avail >= RING_WAKEUP_BYTES && avail < RING_WAKEUP_BYTES + WAKEUP_WINDOW {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// More than the largest record with its ring header: the submit that finds the waiting
/// data within this much past the threshold is the one whose record crossed it.
const WAKEUP_WINDOW: u64 = 512;

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
