//! Engine throughput: feeds N synthetic events (8 ranks of a decode-like loop: kernel
//! launches, all-reduces, async copies, event record/query, stream syncs, and a serving
//! connection streaming tokens) through the analysis engine on one core, and prints events/s
//! and the engine's peak heap.
//!
//! `cargo bench -p llmdd --bench engine` (N from LLMDD_BENCH_EVENTS, default 10 million).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    time::{Duration, Instant},
};

use llmdd::{
    engine::{synth::*, Config, Engine},
    events::{Event, SockKind},
};

/// Counts heap bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarding to the system allocator with the caller's layout.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarding to the system allocator with the caller's layout.
        unsafe { System.dealloc(p, l) };
        IN_USE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarding to the system allocator with the caller's layout.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = IN_USE.fetch_add(new - l.size(), Relaxed) + new - l.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                IN_USE.fetch_sub(l.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RANKS: u32 = 8;
const MS: u64 = 1_000_000;
const STREAM: u64 = 0x7;

/// Events of decode steps `from..to`, in emission (exit-time) order.
fn steps(from: u64, to: u64, out: &mut Vec<Event>) {
    let mut seed = from.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for k in from..to {
        let base = 1_000 * MS + k * 2 * MS;
        let mut done = base;
        for r in 0..RANKS {
            let pid = 1000 + r;
            let mut t = base + rnd() % 20_000 + if r == 5 { 300_000 } else { 0 };
            for i in 0..12u64 {
                out.push(on_stream(LAUNCH_KERNEL, pid, STREAM, t, t + 3_000));
                t += 8_000;
                if i % 6 == 5 {
                    out.push(coll(
                        ALL_REDUCE,
                        pid,
                        0xc0,
                        Some(r as i32),
                        RANKS as i32,
                        2 << 20,
                        STREAM,
                        t,
                        t + 6_000,
                    ));
                    done = done.max(t);
                    t += 10_000;
                }
            }
            out.push(on_stream(MEMCPY_ASYNC, pid, STREAM, t, t + 4_000));
            let mut rec = call(EVENT_RECORD, pid, pid, t + 5_000, Some(t + 6_000));
            rec.event_handle = Some(0xe0 + r as u64);
            rec.stream = Some(STREAM);
            out.push(Event::Call(rec));
            let mut q = call(EVENT_QUERY, pid, pid, t + 7_000, Some(t + 8_000));
            q.event_handle = Some(0xe0 + r as u64);
            q.ret = Some(600);
            out.push(Event::Call(q));
        }
        for r in 0..RANKS {
            let pid = 1000 + r;
            let s = done + 20_000 + r as u64 * 100;
            out.push(on_stream(STREAM_SYNC, pid, STREAM, s, done + 400_000));
        }
        // The API server streams one token per step on a serving connection.
        out.push(sock(
            SockKind::Send,
            900,
            0x5c + k / 200,
            base + MS,
            64,
            8000,
            40_000,
        ));
        if k % 200 == 0 {
            out.push(sock(
                SockKind::Recv,
                900,
                0x5c + k / 200,
                base,
                700,
                8000,
                40_000,
            ));
        }
    }
    out.sort_by_key(|e| match e {
        Event::Call(c) => c.exit_ns.unwrap_or(c.entry_ns),
        Event::Sock(s) => s.ts_ns,
        Event::ProcExit(p) => p.ts_ns,
    });
}

fn main() {
    let n: u64 = std::env::var("LLMDD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let mut engine = Engine::new(Config::default());
    let base_heap = IN_USE.load(Relaxed);
    let mut fed = 0u64;
    let mut busy = Duration::ZERO;
    let mut buf = Vec::new();
    let mut step = 0u64;
    let mut batch_peak = 0usize;
    while fed < n {
        buf.clear();
        steps(step, step + 100, &mut buf);
        step += 100;
        let buf_heap = buf.capacity() * std::mem::size_of::<Event>();
        batch_peak = batch_peak.max(buf_heap);
        let last = buf.last().map(|e| match e {
            Event::Call(c) => c.exit_ns.unwrap_or(c.entry_ns),
            Event::Sock(s) => s.ts_ns,
            Event::ProcExit(p) => p.ts_ns,
        });
        fed += buf.len() as u64;
        let t = Instant::now();
        for ev in buf.drain(..) {
            engine.ingest(ev);
        }
        if let Some(last) = last {
            engine.advance(last);
        }
        busy += t.elapsed();
    }
    let t = Instant::now();
    engine.flush();
    busy += t.elapsed();
    let s = engine.snapshot();
    let peak = PEAK
        .load(Relaxed)
        .saturating_sub(base_heap)
        .saturating_sub(batch_peak);
    let rate = fed as f64 / busy.as_secs_f64();
    println!("events fed:        {fed}");
    println!("time in engine:    {:.3} s", busy.as_secs_f64());
    println!(
        "throughput:        {:.2} million events/s (one core)",
        rate / 1e6
    );
    println!(
        "engine peak heap:  {:.1} MiB (excluding the input batch buffer)",
        peak as f64 / (1 << 20) as f64
    );
    println!(
        "matched:           {} all-reduce instances on {} communicator(s), {} findings, {} requests",
        s.communicators.iter().map(|c| c.lane.finished).sum::<u64>(),
        s.communicators.len(),
        s.findings.len(),
        s.requests.finished
    );
    for f in &s.findings {
        println!(
            "  finding: {} {:?}: {}",
            f.kind.name(),
            f.severity,
            f.evidence
        );
    }
    if let Ok(st) = std::fs::read_to_string("/proc/self/status") {
        if let Some(l) = st.lines().find(|l| l.starts_with("VmHWM")) {
            println!(
                "process peak RSS:  {}",
                l.trim_start_matches("VmHWM:").trim()
            );
        }
    }
}
