//! The engine's memory with many communicators: 128 communicators of 8 ranks (1024
//! processes), each with 1500 matched all-reduces, measured by a counting allocator (live
//! heap bytes) once every per-communicator cap is reached (instance history, straggler
//! evidence, per-member call rings, completion queues, the distributions' time slices).
//! Communicators are independent, so memory is linear in their count: the README states the
//! figure for 1024 of them from this test. A regression that makes state grow with the run,
//! or per communicator beyond the stated figure, fails. Memory, not time: no wall-clock limit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use llmdd::engine::{synth, Config, Engine};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same layout, same contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same pointer and layout as allocated.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as GlobalAlloc::realloc.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const COMMS: u64 = 128;
const RANKS: u32 = 8;
const MS: u64 = 1_000_000;

/// One step: every communicator's 8 ranks call an all-reduce (one process per rank of each
/// communicator; 8192 processes), then advance.
fn step(e: &mut Engine, k: u64) {
    let t = 1_000 * MS + k * 20 * MS;
    for c in 0..COMMS {
        for r in 0..RANKS {
            let pid = 10_000 + (c as u32) * RANKS + r;
            let entry = t + u64::from(r) * 10_000 + c * 1_000;
            let ev = synth::coll(
                synth::ALL_REDUCE,
                pid,
                0x7000_0000 + c * 0x1000 + u64::from(r),
                Some(r as i32),
                RANKS as i32,
                1 << 20,
                1,
                entry,
                entry + 200_000,
            );
            e.ingest(ev);
        }
    }
    e.advance(t + 10 * MS);
}

/// The README's figure: at most 1.25 MiB per communicator of 8 ranks with the defaults (1024
/// of them: 1.25 GiB).
const BOUND_KIB_PER_COMM: usize = 1280;

#[test]
fn many_communicators_of_eight_ranks_fit_the_stated_memory() {
    let before = LIVE.load(Ordering::Relaxed);
    // The distributions keep `window_slices` slices whatever the window's length: a 6 s
    // window (1 s slices) holds exactly what the default 60 s one does once full, and fills
    // within the test's 30 s of simulated steps (1500 steps of 20 ms: past every cap).
    let cfg = Config {
        window_ns: 6_000_000_000,
        ..Config::default()
    };
    assert_eq!(cfg.window_slices, Config::default().window_slices);
    let mut e = Engine::new(cfg);
    for c in 0..COMMS {
        for r in 0..RANKS {
            let pid = 10_000 + (c as u32) * RANKS + r;
            e.ingest(synth::init(
                pid,
                0xabc0_0000 + c,
                r as i32,
                RANKS as i32,
                0x7000_0000 + c * 0x1000 + u64::from(r),
                MS,
                2 * MS,
            ));
        }
    }
    let mut at = Vec::new();
    for k in 0..1500 {
        step(&mut e, k);
        if k == 1199 || k == 1499 {
            at.push((LIVE.load(Ordering::Relaxed) - before) >> 10);
        }
    }
    let s = e.snapshot();
    assert_eq!(
        s.communicators.len(),
        COMMS as usize,
        "every communicator kept"
    );
    assert!(s
        .communicators
        .iter()
        .all(|c| c.lane.members.len() == RANKS as usize && c.lane.members[7].lag.count > 0));
    let per_comm = at[1] / COMMS as usize;
    eprintln!(
        "engine heap for {COMMS} communicators x {RANKS} ranks: {} MiB after 1200 steps, {} MiB after 1500 ({per_comm} KiB per communicator)",
        at[0] >> 10,
        at[1] >> 10,
    );
    assert!(
        per_comm <= BOUND_KIB_PER_COMM,
        "{per_comm} KiB per communicator, over the stated {BOUND_KIB_PER_COMM} KiB"
    );
    // Bounded once every cap is reached: the last 300 steps add nothing to speak of.
    assert!(
        at[1] <= at[0] + at[0] / 50,
        "grew from {} to {} KiB after every cap was reached",
        at[0],
        at[1]
    );
}
