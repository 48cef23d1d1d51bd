//! The analysis engine: plain, deterministic Rust over the event stream (no BPF, no I/O, no
//! wall clock). Time comes only from events and from the caller's [`Engine::advance`], which
//! lets the engine see stalls while nothing arrives. State is bounded (see [`Config`]).
//!
//! ```text
//! let mut e = Engine::new(Config::default());
//! e.register_process(pid, ProcessHints::from_env(env, Some(host)));   // optional
//! for ev in batch { e.ingest(ev); }        // decoded events, any order within the window
//! e.report_lost(now_ns, lost_since_last);  // BPF drop counters, as they are read
//! e.advance(now_ns);                       // CLOCK_MONOTONIC now: stalls, idle requests
//! let s = e.snapshot();                    // communicators, findings, requests, counts
//! ```
//!
//! Files, by what they own: `reorder` (time order), `procs` (processes, pid reuse, hints),
//! `comm` (communicator identity), `matching` (collective instances and graph steps across
//! ranks), `completion` (sync-based completion bounds), `stragglers` (late-rank evidence),
//! `graphs` (graph-launch groups), `bubbles`, `memory`, `links`, `requests`, `stats`
//! (HdrHistogram windows), `findings`, `snapshot` (views), `config` (thresholds).

mod bubbles;
mod comm;
mod completion;
mod config;
mod findings;
mod graphs;
mod links;
mod matching;
mod memory;
mod procs;
mod reorder;
mod requests;
mod snapshot;
mod stats;
mod stragglers;
pub mod synth;
pub(crate) mod util;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use llmdd_common::funcs::CallKind;

pub use comm::Identity;
pub use config::Config;
pub use findings::{Culprit, Finding, FindingKind, Magnitude, Severity};
pub use graphs::GroupBasis;
pub use links::LinkView;
pub use matching::Evidence;
pub use memory::MemoryView;
pub use procs::ProcessHints;
pub use requests::{RequestRecord, RequestsView};
pub use snapshot::{
    CommView, Counts, GroupView, LaneView, MemberView, OpView, Snapshot, StageView,
};
pub use stats::Pctl;

use crate::events::{CallEvent, Event, SockEvent};
use bubbles::{BubbleAlert, Bubbles};
use comm::{CallFacts, Comms};
use completion::{PendingWork, SyncTracker};
use findings::{Draft, FindingBook, FindingKey};
use graphs::Graphs;
use links::{LinkAlert, Links};
use matching::{Arrival, Lane, LaneOut, StallInfo, GRAPH_OP, GROUP_OP};
use memory::Memory;
use procs::{ProcId, Procs};
use reorder::{key_of, Reorder};
use requests::Requests;
use util::{fmt_bytes, fmt_id, fmt_ns, mix, FastMap};

/// Lost-event windows remembered for annotating findings.
const MAX_LOST_WINDOWS: usize = 256;
/// In-flight calls remembered until their return record (beyond: forgotten; their return
/// records then count as second arrivals, as before in-flight reports existed).
const MAX_IN_FLIGHT: usize = 1 << 16;

/// Events reported lost between two reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LostWindow {
    start: u64,
    end: u64,
    count: u64,
}

/// An NCCL call waiting in an open group (ncclGroupStart .. ncclGroupEnd on one thread).
#[derive(Clone, Debug)]
struct NcclOp {
    func: u16,
    kind: CallKind,
    handle: u64,
    rank: Option<i32>,
    nranks: Option<i32>,
    bytes: u64,
    sig: u64,
    peer: Option<i64>,
    stream: u64,
    entry: u64,
}

#[derive(Default)]
struct GroupState {
    depth: u32,
    /// When the outermost ncclGroupStart was entered.
    start_ns: u64,
    ops: Vec<NcclOp>,
}

/// A group open this long, or holding this many calls, lost its ncclGroupEnd record: its
/// calls are released as one instance rather than swallowing the thread's later calls.
const GROUP_MAX_NS: u64 = 1_000_000_000;
const GROUP_MAX_OPS: usize = 1024;

/// The engine. See the module documentation.
pub struct Engine {
    cfg: Config,
    reorder: Reorder,
    /// Event time everything before which has been processed.
    now: u64,
    /// Newest event time processed.
    t: u64,
    first_ns: Option<u64>,
    procs: Procs,
    comms: Comms,
    graphs: Graphs,
    lanes: Vec<Lane>,
    sync: SyncTracker,
    groups: FastMap<(ProcId, u32), GroupState>,
    requests: Requests,
    links: Links,
    memory: Memory,
    bubbles: Bubbles,
    findings: FindingBook,
    lost: VecDeque<LostWindow>,
    lost_total: u64,
    last_lost_report: Option<u64>,
    counts: Counts,
    /// Lane -> member currently named straggler / blamed for idle.
    stragglers: FastMap<u32, u32>,
    idle_blame: FastMap<u32, u32>,
    /// Lanes with new evidence since their last evaluation.
    dirty: Vec<bool>,
    out: LaneOut,
    bounds: Vec<(PendingWork, u64)>,
    scratch: Vec<u64>,
    open_stalls: FastMap<(u64, u64), FindingKey>,
    /// Calls reported in flight, by (pid, tid, func): their entry time.
    in_flight: FastMap<(u32, u32, u16), u64>,
}

impl Engine {
    pub fn new(cfg: Config) -> Engine {
        Engine {
            reorder: Reorder::new(cfg.reorder_window_ns),
            requests: Requests::new(&cfg),
            cfg,
            now: 0,
            t: 0,
            first_ns: None,
            procs: Procs::default(),
            comms: Comms::default(),
            graphs: Graphs::default(),
            lanes: Vec::new(),
            sync: SyncTracker::default(),
            groups: FastMap::default(),
            links: Links::default(),
            memory: Memory::default(),
            bubbles: Bubbles::default(),
            findings: FindingBook::default(),
            lost: VecDeque::new(),
            lost_total: 0,
            last_lost_report: None,
            counts: Counts::default(),
            stragglers: FastMap::default(),
            idle_blame: FastMap::default(),
            dirty: Vec::new(),
            out: LaneOut::default(),
            bounds: Vec::new(),
            scratch: Vec::new(),
            open_stalls: FastMap::default(),
            in_flight: FastMap::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Registers a process (or updates its hints): rank and world size from its environment,
    /// its host, its job. A pid that exited before is registered as a new process.
    pub fn register_process(&mut self, pid: u32, hints: ProcessHints) {
        let t = self.t;
        self.procs.register(pid, hints, t);
    }

    /// Feeds one decoded event. Events may come out of order by up to `reorder_window_ns`.
    ///
    /// A call record without an exit (`exit_ns: None`) is a call still in flight: feed the
    /// calls a scan finds entered and not returned (however often the scan repeats), so that
    /// ranks blocked in a collective count as arrived while they wait and a stall names the
    /// missing ranks while it goes on; the call's return record is then recognised (same
    /// pid, tid, function and entry time) and not counted twice.
    pub fn ingest(&mut self, ev: Event) {
        self.counts.events += 1;
        if let Some(late) = self.reorder.push(ev) {
            self.process(late);
        }
        let wm = self.reorder.watermark(0);
        while let Some(e) = self.reorder.pop_upto(wm) {
            self.process(e);
        }
    }

    /// Feeds a batch of events.
    pub fn ingest_batch(&mut self, evs: impl IntoIterator<Item = Event>) {
        for e in evs {
            self.ingest(e);
        }
    }

    /// Tells the engine the current CLOCK_MONOTONIC time. Events older than
    /// `now - reorder_window_ns` are processed, then stalls are looked for and idle requests
    /// closed as of that time.
    pub fn advance(&mut self, now_ns: u64) {
        let wm = self.reorder.watermark(now_ns);
        while let Some(e) = self.reorder.pop_upto(wm) {
            self.process(e);
        }
        self.now = self.now.max(wm);
        self.tick();
    }

    /// Processes everything still held (end of a recording) and ticks at the newest time.
    pub fn flush(&mut self) {
        while let Some(e) = self.reorder.pop_upto(u64::MAX) {
            self.process(e);
        }
        self.now = self.now.max(self.t);
        self.tick();
    }

    /// Reports `count` events lost (BPF drop counters) up to `at_ns`; the window is since the
    /// previous report (or the first event). Findings whose window overlaps say so, and no
    /// stall is raised from an arrival that may have been lost.
    pub fn report_lost(&mut self, at_ns: u64, count: u64) {
        let start = self
            .last_lost_report
            .or(self.first_ns)
            .unwrap_or(0)
            .min(at_ns);
        self.last_lost_report = Some(at_ns);
        if count == 0 {
            return;
        }
        self.lost_total += count;
        if self.lost.len() >= MAX_LOST_WINDOWS {
            self.lost.pop_front();
        }
        self.lost.push_back(LostWindow {
            start,
            end: at_ns,
            count,
        });
        for l in &mut self.lanes {
            if l.last_ns >= start || l.open_instances() > 0 {
                l.mark_unverified(at_ns);
            }
        }
        for f in &mut self.findings.list {
            if f.kind != FindingKind::LostEvents
                && f.window_start_ns <= at_ns
                && f.window_end_ns >= start
            {
                f.lost_events_in_window += count;
            }
        }
        let windows = self.lost.len();
        let d = Draft {
            severity: Severity::Warning,
            culprit: Culprit::default(),
            evidence: format!(
                "{} events lost in total ({} in the latest report, between {} and {}; {} windows); \
                 stalls are not raised from arrivals that may be missing and straggler evidence \
                 pauses until each communicator's numbering is re-checked",
                self.lost_total,
                count,
                fmt_time(start),
                fmt_time(at_ns),
                windows
            ),
            source: "drop counters",
            suggestion: "Enlarge the ring buffer or drain it more often; trace fewer functions if drops persist.".into(),
            window: (start, at_ns),
            magnitude: Magnitude { name: "lost_events", value: self.lost_total as f64 },
        };
        let key = FindingKey {
            kind: FindingKind::LostEvents,
            scope: 0,
            culprit: 0,
        };
        let t = self.t.max(at_ns);
        self.findings.upsert(key, d, t, self.cfg.max_findings);
    }

    // ---- processing ----

    fn process(&mut self, ev: Event) {
        let key = key_of(&ev);
        self.t = self.t.max(key);
        if self.first_ns.is_none() {
            self.first_ns = Some(key);
        }
        match ev {
            Event::Call(c) => {
                if c.exit_ns.is_none()
                    && (!arrives_in_flight(c.spec().kind)
                        || self.in_flight.get(&(c.pid, c.tid, c.func)) == Some(&c.entry_ns))
                {
                    // Left to its return record, or reported again by a later scan.
                    return;
                }
                self.counts.calls += 1;
                self.on_call(&c);
            }
            Event::Sock(s) => {
                self.counts.sock_events += 1;
                self.on_sock(&s);
            }
            Event::ProcExit(p) => {
                self.counts.proc_exits += 1;
                self.on_exit(p.pid, p.ts_ns);
            }
        }
    }

    fn on_call(&mut self, c: &CallEvent) {
        let proc = self.procs.get(c.pid, c.exit_ns.unwrap_or(c.entry_ns));
        let spec = c.spec();
        if !self.in_flight_first(proc, c, spec.kind) {
            return;
        }
        // Waits (syncs, event queries, synchronous copies) are not host work.
        let waits = matches!(spec.kind, CallKind::Sync | CallKind::EventQuery) || c.func == 23;
        let (busy, sync_ns) = {
            let p = self.procs.proc_mut(proc);
            if waits {
                p.sync_ns += c.duration_ns().unwrap_or(0);
            } else {
                p.busy_calls += 1;
            }
            (p.busy_calls, p.sync_ns)
        };
        let ok = c.ret.is_none_or(|r| r == 0);
        match spec.kind {
            CallKind::Collective | CallKind::P2p => {
                // ncclInProgress (7) is a successful enqueue on a non-blocking communicator.
                if c.ret.is_some_and(|r| r != 0 && r != 7) {
                    self.counts.call_errors += 1;
                    return;
                }
                let Some(handle) = c.comm else {
                    self.counts.calls_without_comm += 1;
                    return;
                };
                let op = NcclOp {
                    func: c.func,
                    kind: spec.kind,
                    handle,
                    rank: c.rank,
                    nranks: c.nranks,
                    bytes: c.bytes.unwrap_or(0),
                    sig: mix(&[
                        c.func as u64,
                        c.bytes.unwrap_or(0),
                        c.op.unwrap_or(u64::MAX),
                        c.dtype.unwrap_or(u64::MAX),
                        if spec.kind == CallKind::Collective {
                            c.peer.unwrap_or(-1) as u64
                        } else {
                            0
                        },
                    ]),
                    peer: c.peer,
                    stream: c.stream.unwrap_or(0),
                    entry: c.entry_ns,
                };
                if let Some(g) = self.groups.get_mut(&(proc, c.tid)) {
                    if g.depth > 0 {
                        let stale = c.entry_ns.saturating_sub(g.start_ns) > GROUP_MAX_NS
                            || g.ops.len() >= GROUP_MAX_OPS;
                        if !stale {
                            g.ops.push(op);
                            return;
                        }
                        g.depth = 0;
                        let ops = std::mem::take(&mut g.ops);
                        let at = ops.last().map(|o| o.entry).unwrap_or(c.entry_ns);
                        self.counts.groups_unterminated += 1;
                        self.nccl_ops(proc, c.pid, &ops, at, None);
                    }
                }
                let stream = op.stream;
                self.nccl_ops(
                    proc,
                    c.pid,
                    std::slice::from_ref(&op),
                    c.entry_ns,
                    c.exit_ns,
                );
                if let Some(a) = self.bubbles.submission(
                    proc,
                    stream,
                    c.entry_ns,
                    c.exit_ns.unwrap_or(c.entry_ns),
                    busy,
                    sync_ns,
                    &self.cfg,
                ) {
                    self.bubble_alert(a);
                }
            }
            CallKind::GroupStart => {
                if ok {
                    let g = self.groups.entry((proc, c.tid)).or_default();
                    if g.depth == 0 {
                        g.start_ns = c.entry_ns;
                    }
                    g.depth += 1;
                }
            }
            CallKind::GroupEnd => {
                let Some(g) = self.groups.get_mut(&(proc, c.tid)) else {
                    return;
                };
                g.depth = g.depth.saturating_sub(1);
                if g.depth == 0 {
                    let ops = std::mem::take(&mut g.ops);
                    if !ops.is_empty() && c.ret.is_none_or(|r| r == 0 || r == 7) {
                        self.nccl_ops(proc, c.pid, &ops, c.entry_ns, c.exit_ns);
                        // The group's operations are submitted (enqueued on the stream) here.
                        if let Some(a) = self.bubbles.submission(
                            proc,
                            ops[0].stream,
                            c.entry_ns,
                            c.exit_ns.unwrap_or(c.entry_ns),
                            busy,
                            sync_ns,
                            &self.cfg,
                        ) {
                            self.bubble_alert(a);
                        }
                    }
                    if let Some(g) = self.groups.get_mut(&(proc, c.tid)) {
                        g.ops = ops;
                        g.ops.clear();
                    }
                }
            }
            CallKind::CommInit => {
                if c.ret.is_none_or(|r| r == 0 || r == 7) {
                    if let (Some(uid), Some(handle)) = (c.uid_hash, c.comm) {
                        let t = c.exit_ns.unwrap_or(c.entry_ns);
                        let r = self.comms.init(
                            proc,
                            c.pid,
                            uid,
                            c.rank,
                            c.nranks,
                            handle,
                            t,
                            &self.procs,
                            &mut self.lanes,
                            &self.cfg,
                        );
                        if r.is_none() {
                            self.counts.inits_ignored += 1;
                        }
                        self.comms_recycled();
                    }
                }
            }
            CallKind::CommInitAll => {}
            CallKind::CommSplit => {
                if ok {
                    if let Some(parent) = c.comm {
                        let new = c.out.unwrap_or(0);
                        // A dup (MPI_Comm_dup: the new handle is argument 1) is a split with
                        // one color for every rank.
                        let color = if spec.roles.out == 1 {
                            0
                        } else {
                            c.args[1] as u32 as i32 as i64
                        };
                        let t = c.exit_ns.unwrap_or(c.entry_ns);
                        // A parent not seen in a collective yet (MPI's world communicator,
                        // split before its first use) is grouped now, as a collective on it
                        // would be, so that its children can be matched by split sequence.
                        if !self.comms.knows(proc, parent) {
                            let facts = CallFacts {
                                proc,
                                pid: c.pid,
                                handle: parent,
                                rank: None,
                                nranks: None,
                                sig: 0,
                                t,
                            };
                            self.comms
                                .resolve(&facts, &self.procs, &mut self.lanes, &self.cfg);
                            self.comms_recycled();
                        }
                        self.comms.split(
                            proc,
                            c.pid,
                            parent,
                            color,
                            new,
                            t,
                            &mut self.lanes,
                            &self.cfg,
                        );
                        self.comms_recycled();
                    }
                }
            }
            CallKind::CommEnd => {
                if let Some(handle) = c.comm {
                    let t = c.entry_ns;
                    if let Some((ci, m)) = self.comms.end(proc, handle, t) {
                        let (lane, lm) = {
                            let comm = &self.comms.list[ci as usize];
                            (comm.lane, comm.members[m as usize].lane_member)
                        };
                        let aborted = c.func == 18;
                        self.member_left(
                            lane,
                            lm,
                            t,
                            if aborted {
                                "aborted the communicator"
                            } else {
                                "destroyed the communicator"
                            },
                            if aborted { Raise::Always } else { Raise::Never },
                        );
                    }
                }
            }
            CallKind::Launch | CallKind::Memcpy => {
                if let Some(stream) = c.stream {
                    if let Some(a) = self.bubbles.submission(
                        proc,
                        stream,
                        c.entry_ns,
                        c.exit_ns.unwrap_or(c.entry_ns),
                        busy,
                        sync_ns,
                        &self.cfg,
                    ) {
                        self.bubble_alert(a);
                    }
                }
            }
            CallKind::GraphLaunch => {
                if !ok {
                    self.counts.call_errors += 1;
                    return;
                }
                let stream = c.stream.unwrap_or(0);
                if let Some((lane, m)) = self.graphs.member(
                    proc,
                    c.entry_ns,
                    &self.procs,
                    &self.comms,
                    &mut self.lanes,
                    &self.cfg,
                ) {
                    let a = Arrival {
                        entry_ns: c.entry_ns,
                        exit_ns: c.exit_ns,
                        sig: 0,
                        bytes: 0,
                        op: GRAPH_OP,
                        sync_ns: 0,
                    };
                    self.arrive(lane, m, a, proc, stream);
                }
                if let Some(a) = self.bubbles.submission(
                    proc,
                    stream,
                    c.entry_ns,
                    c.exit_ns.unwrap_or(c.entry_ns),
                    busy,
                    sync_ns,
                    &self.cfg,
                ) {
                    self.bubble_alert(a);
                }
            }
            CallKind::Sync => {
                let Some(exit) = c.exit_ns.filter(|_| c.ret == Some(0)) else {
                    return;
                };
                self.bounds.clear();
                match c.func {
                    // cudaStreamSynchronize, cuStreamSynchronize
                    24 | 38 => self.sync.stream_sync(
                        proc,
                        c.stream.unwrap_or(0),
                        c.entry_ns,
                        exit,
                        &mut self.bounds,
                    ),
                    // cudaEventSynchronize, cuEventSynchronize
                    26 | 39 => {
                        if let Some(e) = c.event_handle {
                            self.sync.event_done(proc, e, exit, &mut self.bounds)
                        }
                    }
                    // cudaDeviceSynchronize, cuCtxSynchronize
                    _ => self
                        .sync
                        .device_sync(proc, c.entry_ns, exit, &mut self.bounds),
                }
                self.apply_bounds();
            }
            CallKind::EventRecord => {
                if let (Some(e), true) = (c.event_handle, ok) {
                    self.sync
                        .event_record(proc, e, c.stream.unwrap_or(0), c.entry_ns);
                }
            }
            CallKind::EventQuery => {
                // Success (0) means complete; cudaErrorNotReady / CUDA_ERROR_NOT_READY is 600.
                if let (Some(e), Some(0), Some(exit)) = (c.event_handle, c.ret, c.exit_ns) {
                    self.bounds.clear();
                    self.sync.event_done(proc, e, exit, &mut self.bounds);
                    self.apply_bounds();
                }
            }
            CallKind::StreamWait => {
                if let (Some(stream), Some(e)) = (c.stream, c.event_handle) {
                    self.sync.stream_wait(proc, stream, e, c.entry_ns);
                }
            }
            CallKind::Alloc | CallKind::Free => {
                let is_alloc = spec.kind == CallKind::Alloc;
                if let Some(f) =
                    self.memory
                        .on_call(proc, c, is_alloc, self.cfg.max_allocations_per_process)
                {
                    self.alloc_failure(proc, c, f);
                }
            }
            // User probes without a role: counted and timed by the summary and views only.
            CallKind::Other => {}
        }
    }

    /// Calls reported while still in flight (entry-only records: a scan of the calls that have
    /// not returned, so that ranks blocked in a collective count as arrived while they wait)
    /// and their later return records. Returns whether `on_call` should go on with `c`.
    ///
    /// An in-flight NCCL call, group end or graph launch is processed as an arrival (once,
    /// however many scans report it); its return record then only ends the submission. Other
    /// in-flight calls are left to their return record.
    fn in_flight_first(&mut self, proc: ProcId, c: &CallEvent, kind: CallKind) -> bool {
        let key = (c.pid, c.tid, c.func);
        match c.exit_ns {
            None => {
                if !arrives_in_flight(kind) {
                    return false;
                }
                if self.in_flight.get(&key) == Some(&c.entry_ns) {
                    return false; // reported by an earlier scan
                }
                if self.in_flight.len() >= MAX_IN_FLIGHT {
                    self.in_flight.clear();
                }
                self.in_flight.insert(key, c.entry_ns);
                self.counts.in_flight_calls += 1;
                true
            }
            Some(exit) => {
                if self.in_flight.is_empty() || self.in_flight.get(&key) != Some(&c.entry_ns) {
                    return true;
                }
                self.in_flight.remove(&key);
                self.bubbles.returned(proc, exit);
                false
            }
        }
    }

    fn apply_bounds(&mut self) {
        for &(w, ub) in &self.bounds {
            if let Some(l) = self
                .lanes
                .get_mut(w.lane as usize)
                .filter(|l| l.id == w.lane_id)
            {
                l.set_ub(w.member, w.call, ub);
            }
        }
        self.counts.completions_bounded += self.bounds.len() as u64;
    }

    /// Drops what was keyed by communicator slots that were reused for new communicators.
    fn comms_recycled(&mut self) {
        if self.comms.recycled.is_empty() {
            return;
        }
        for c in std::mem::take(&mut self.comms.recycled) {
            let lane = self.comms.list[c as usize].lane;
            self.stragglers.remove(&lane);
            self.idle_blame.remove(&lane);
            if let Some(d) = self.dirty.get_mut(lane as usize) {
                *d = false;
            }
            self.bubbles.forget_comm(c);
        }
    }

    /// One NCCL call, or the calls of one group, arriving at `entry`.
    fn nccl_ops(&mut self, proc: ProcId, pid: u32, ops: &[NcclOp], entry: u64, exit: Option<u64>) {
        let grouped = ops.len() > 1;
        // Collectives: one arrival per communicator (a group forms one instance).
        let mut done: Vec<u64> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if op.kind != CallKind::Collective || done.contains(&op.handle) {
                continue;
            }
            done.push(op.handle);
            let same: Vec<&NcclOp> = ops[i..]
                .iter()
                .filter(|o| o.kind == CallKind::Collective && o.handle == op.handle)
                .collect();
            let sig = if grouped {
                mix(&same.iter().map(|o| o.sig).collect::<Vec<_>>())
            } else {
                op.sig
            };
            let bytes: u64 = same.iter().map(|o| o.bytes).sum();
            let fop = if same.iter().all(|o| o.func == op.func) && same.len() == 1 {
                op.func
            } else {
                GROUP_OP
            };
            let facts = CallFacts {
                proc,
                pid,
                handle: op.handle,
                rank: op.rank,
                nranks: op.nranks,
                sig,
                t: entry,
            };
            let Some(r) = self
                .comms
                .resolve(&facts, &self.procs, &mut self.lanes, &self.cfg)
            else {
                self.counts.calls_without_comm += 1;
                continue;
            };
            self.comms_recycled();
            let a = Arrival {
                entry_ns: entry,
                exit_ns: exit,
                sig,
                bytes,
                op: fop,
                sync_ns: 0,
            };
            self.arrive(r.lane, r.lane_member, a, proc, op.stream);
        }
        // Point-to-point: matched per direction for pipeline bubbles.
        for op in ops.iter().filter(|o| o.kind == CallKind::P2p) {
            let facts = CallFacts {
                proc,
                pid,
                handle: op.handle,
                rank: op.rank,
                nranks: op.nranks,
                sig: op.sig,
                t: entry,
            };
            let Some(r) = self
                .comms
                .resolve(&facts, &self.procs, &mut self.lanes, &self.cfg)
            else {
                self.counts.calls_without_comm += 1;
                continue;
            };
            self.comms_recycled();
            let rank = self.comms.list[r.comm as usize].members[r.member as usize].rank;
            let (Some(me), Some(peer)) = (rank, op.peer.filter(|&p| p >= 0)) else {
                continue;
            };
            let peer = peer as u32;
            let send = op.func == 9;
            let (src, dst) = if send { (me, peer) } else { (peer, me) };
            if let Some(a) = self.bubbles.p2p(r.comm, src, dst, send, entry, &self.cfg) {
                self.bubble_alert(a);
            }
        }
    }

    fn arrive(&mut self, lane: u32, m: u32, mut a: Arrival, proc: ProcId, stream: u64) {
        let entry = a.entry_ns;
        a.sync_ns = self.procs.proc(proc).sync_ns;
        let l = &mut self.lanes[lane as usize];
        let lane_id = l.id;
        let call = l.arrive(m, a, &self.cfg, &mut self.out);
        self.sync.enqueue(
            proc,
            stream,
            PendingWork {
                lane,
                lane_id,
                member: m,
                call,
                entry_ns: entry,
            },
        );
        if self.dirty.len() <= lane as usize {
            self.dirty.resize(lane as usize + 1, false);
        }
        self.dirty[lane as usize] = true;
        self.drain_out();
        let t = self.t;
        if t.saturating_sub(self.lanes[lane as usize].last_eval_ns) >= self.cfg.eval_interval_ns {
            self.evaluate(lane, t);
        }
    }

    fn drain_out(&mut self) {
        if self.out.resolved_stalls.is_empty()
            && self.out.past_stalls.is_empty()
            && self.out.realigned.is_empty()
            && self.out.dropped_calls == 0
            && self.out.evicted_open == 0
        {
            return;
        }
        self.counts.calls_dropped_aligning += self.out.dropped_calls;
        self.counts.evicted_open_instances += self.out.evicted_open;
        self.counts.realignments += self.out.realigned.len() as u64;
        self.out.dropped_calls = 0;
        self.out.evicted_open = 0;
        self.out.realigned.clear();
        let resolved = std::mem::take(&mut self.out.resolved_stalls);
        for &(lane_id, seq, ended) in &resolved {
            if let Some(key) = self.open_stalls.remove(&(lane_id, seq)) {
                let t = self.t.max(self.now);
                if let Some(f) = self.findings.get_mut(&key) {
                    if f.active {
                        // The stall lasted from the first arrival to the one that ended it.
                        let end = if ended > f.window_start_ns { ended } else { t };
                        let lasted = end - f.window_start_ns.min(end);
                        f.evidence
                            .push_str(&format!("; resolved after {}", fmt_ns(lasted)));
                        f.window_end_ns = end;
                        f.magnitude.value = lasted as f64;
                    }
                }
                self.findings.deactivate(&key, t);
            }
        }
        self.out.resolved_stalls = resolved;
        self.out.resolved_stalls.clear();
        if !self.out.past_stalls.is_empty() {
            let past = std::mem::take(&mut self.out.past_stalls);
            for (lane_id, s) in past {
                let Some(lane) = self.lanes.iter().position(|l| l.id == lane_id) else {
                    continue;
                };
                let t = self.t.max(self.now);
                self.stall(lane as u32, s, t);
            }
        }
    }

    fn on_sock(&mut self, s: &SockEvent) {
        let proc = self.procs.get(s.pid, s.ts_ns);
        self.requests.on_sock(s, &self.cfg);
        if let Some(a) = self.links.on_sock(s, &self.cfg) {
            self.link_alert(proc, a);
        }
    }

    fn on_exit(&mut self, pid: u32, t: u64) {
        let Some(proc) = self.procs.exit(pid, t) else {
            return;
        };
        for (c, m) in self.comms.proc_exit(proc, t) {
            let (lane, lm, lifecycle) = {
                let comm = &self.comms.list[c as usize];
                // Only NCCL's communicators have a traced teardown (ncclCommDestroy/Abort).
                // For the others (MPI, Gloo, collective user probes) a member exiting with
                // nothing open is how a job ends, not a finding.
                let series = &self.lanes[comm.lane as usize].series;
                let lifecycle = match comm.identity {
                    comm::Identity::UniqueId { .. } => true,
                    _ if series.is_empty() => !matches!(
                        comm.identity,
                        comm::Identity::Inferred {
                            rank_source: "environment",
                            ..
                        }
                    ),
                    _ => series.iter().any(|s| {
                        llmdd_common::funcs::spec(s.op)
                            .is_some_and(|f| f.family == llmdd_common::funcs::Family::Nccl)
                    }),
                };
                (comm.lane, comm.members[m as usize].lane_member, lifecycle)
            };
            let raise = if lifecycle {
                Raise::Always
            } else {
                Raise::IfOpen
            };
            self.member_left(lane, lm, t, "exited", raise);
        }
        if let Some((lane, m)) = self.graphs.proc_exit(proc) {
            self.member_left(lane, m, t, "exited", Raise::Never);
        }
        self.sync.forget_proc(proc);
        self.bubbles.forget_proc(proc);
        self.memory.proc_exit(proc);
        self.groups.retain(|(p, _), _| *p != proc);
        self.in_flight.retain(|(p, _, _), _| *p != pid);
    }

    /// A member left a lane: no stall for it, and the lane's findings say so; a member-left
    /// finding is raised as `raise` says.
    fn member_left(&mut self, lane: u32, m: u32, t: u64, how: &str, raise: Raise) {
        let (open_before, open_after, id, rank, pid, proc, label) = {
            let l = &mut self.lanes[lane as usize];
            let before = l.open_instances();
            l.member_left(m, t, &self.cfg, &mut self.out);
            let mm = &l.members[m as usize];
            (
                before,
                l.open_instances(),
                l.id,
                mm.rank,
                mm.pid,
                mm.proc,
                l.evidence,
            )
        };
        self.drain_out();
        let left_open = open_before.saturating_sub(open_after);
        let host = self.procs.host(proc).map(str::to_owned);
        let who = describe_member(rank, pid, host.as_deref());
        let scope = lane_label(label);
        // Every finding of this lane says a member left.
        let note = format!("; {who} {how} at {}", fmt_time(t));
        for f in &mut self.findings.list {
            if f.culprit.comm == Some(id)
                && f.kind != FindingKind::MemberLeft
                && !f.evidence.contains(&note)
            {
                f.evidence.push_str(&note);
            }
        }
        match raise {
            Raise::Never => return,
            Raise::IfOpen if left_open == 0 => return,
            _ => {}
        }
        let waiting = if left_open > 0 {
            format!("; the other ranks had entered {left_open} instance(s) it never reached, which cannot complete")
        } else {
            String::new()
        };
        let d = Draft {
            severity: if left_open > 0 { Severity::Critical } else { Severity::Warning },
            culprit: Culprit { pid: Some(pid), rank: (rank != u32::MAX).then_some(rank), comm: Some(id), host, connection: None },
            evidence: format!("{who} of {scope} {} {how} at {}{waiting}", fmt_id(id), fmt_time(t)),
            source: label.label(),
            suggestion: "A member left: look at why the process ended (exit code, OOM killer, crash log); the survivors will hang or abort in their next collective on this communicator.".into(),
            window: (t, t),
            magnitude: Magnitude { name: "open_instances_left", value: left_open as f64 },
        };
        let key = FindingKey {
            kind: FindingKind::MemberLeft,
            scope: id,
            culprit: m as u64,
        };
        self.raise(key, d);
    }

    // ---- periodic work ----

    fn tick(&mut self) {
        let now = self.now;
        let mut stalls: Vec<(u32, StallInfo)> = Vec::new();
        for (i, l) in self.lanes.iter_mut().enumerate() {
            if let Some(s) = l.tick(now, &self.cfg, &mut self.out) {
                stalls.push((i as u32, s));
            }
        }
        self.counts.stalls_suppressed = self.lanes.iter().map(|l| l.stalls_suppressed).sum();
        self.drain_out();
        for (lane, s) in stalls {
            self.stall(lane, s, now);
        }
        for lane in 0..self.lanes.len() {
            let dirty = self.dirty.get(lane).copied().unwrap_or(false);
            if dirty
                && now.saturating_sub(self.lanes[lane].last_eval_ns) >= self.cfg.eval_interval_ns
            {
                self.evaluate(lane as u32, now.max(self.t));
            }
        }
        self.requests.tick(now, &self.cfg);
    }

    /// Raises (or updates) the stall finding of an open instance, or records a stall that is
    /// already over (`s.ended_ns`).
    fn stall(&mut self, lane: u32, s: StallInfo, now: u64) {
        let mut s = s;
        let l = &self.lanes[lane as usize];
        // Said in rank order.
        for v in [&mut s.arrived, &mut s.missing] {
            v.sort_by_key(|&m| (l.members[m as usize].rank, m));
        }
        let names = |ms: &[u32]| -> Vec<String> {
            ms.iter()
                .map(|&m| rank_name(l.members[m as usize].rank, m))
                .collect()
        };
        let Some(&m0) = s.missing.first() else {
            return;
        };
        let missing_names = names(&s.missing);
        let arrived_names = names(&s.arrived);
        let mm = &l.members[m0 as usize];
        let host = self.procs.host(mm.proc).map(str::to_owned);
        let missing_desc: Vec<String> = s
            .missing
            .iter()
            .map(|&m| {
                let x = &l.members[m as usize];
                describe_member(x.rank, x.pid, self.procs.host(x.proc))
            })
            .collect();
        let what = match l.evidence {
            matching::Evidence::Collectives => format!(
                "{} #{} on communicator {}",
                op_label(s.op),
                s.seq,
                fmt_id(l.id)
            ),
            matching::Evidence::GraphSteps => {
                format!("graph-launch step #{} of group {}", s.seq, fmt_id(l.id))
            }
        };
        let verb = if s.missing.len() == 1 { "has" } else { "have" };
        let (evidence, window, age) = match s.ended_ns {
            None => {
                let age = now.saturating_sub(s.first_ns);
                (
                    format!(
                        "{} entered {what} {} ago; {} {verb} not arrived ({}; stall threshold {})",
                        join_ranks(&arrived_names),
                        fmt_ns(age),
                        join_ranks(&missing_names),
                        missing_desc.join(", "),
                        fmt_ns(s.threshold_ns)
                    ),
                    (s.first_ns, now),
                    age,
                )
            }
            Some(end) => {
                let lasted = end.saturating_sub(s.first_ns);
                (
                    format!(
                        "{} entered {what} at {} and waited {} for {} ({}; stall threshold {}); \
                         resolved after {} (seen once over: the waiting ranks' calls were \
                         reported when they returned)",
                        join_ranks(&arrived_names),
                        fmt_time(s.first_ns),
                        fmt_ns(lasted),
                        join_ranks(&missing_names),
                        missing_desc.join(", "),
                        fmt_ns(s.threshold_ns),
                        fmt_ns(lasted)
                    ),
                    (s.first_ns, end),
                    lasted,
                )
            }
        };
        let d = Draft {
            severity: Severity::Critical,
            culprit: Culprit { pid: Some(mm.pid), rank: (mm.rank != u32::MAX).then_some(mm.rank), comm: Some(l.id), host, connection: None },
            evidence,
            source: l.evidence.label(),
            suggestion: format!(
                "Find what {} is doing instead of calling in (e.g. `py-spy dump --pid {}`): a hang, a crash in progress, or a diverged code path that skips this call.",
                missing_names[0], mm.pid
            ),
            window,
            magnitude: Magnitude { name: "stalled_ns", value: age as f64 },
        };
        // One finding per stalled instance, updated in place while it lasts.
        let key = FindingKey {
            kind: FindingKind::Stall,
            scope: l.id,
            culprit: mix(&[m0 as u64, s.seq]),
        };
        match s.ended_ns {
            None => {
                self.open_stalls.insert((l.id, s.seq), key);
                self.raise(key, d);
            }
            Some(end) => {
                self.raise(key, d);
                self.findings.deactivate(&key, now.max(end));
            }
        }
    }

    fn evaluate(&mut self, lane: u32, now: u64) {
        let li = lane as usize;
        if let Some(d) = self.dirty.get_mut(li) {
            *d = false;
        }
        let ev = {
            let l = &mut self.lanes[li];
            l.last_eval_ns = now;
            let n = l.members.len();
            stragglers::evaluate(
                &mut l.evidence_ring,
                now,
                n,
                l.period_ns,
                &self.cfg,
                &mut self.scratch,
            )
        };
        // Idle blamed on the straggler is the straggler's cost, said in its finding rather
        // than as a second finding.
        let folded_idle = match (&ev.straggler, &ev.idle) {
            (Some(v), Some(i)) if v.member == i.member => Some(i.clone()),
            _ => None,
        };
        let ev = stragglers::Evaluation {
            idle: if folded_idle.is_some() { None } else { ev.idle },
            straggler: ev.straggler,
        };
        let l = &self.lanes[li];
        let (id, label) = (l.id, l.evidence);
        // Straggler.
        match ev.straggler {
            Some(v) => {
                shift_blame(
                    &mut self.stragglers,
                    &mut self.findings,
                    lane,
                    Some(v.member),
                    FindingKind::Straggler,
                    id,
                    now,
                );
                let mm = &l.members[v.member as usize];
                let host = self.procs.host(mm.proc).map(str::to_owned);
                let who = describe_member(mm.rank, mm.pid, host.as_deref());
                let what = match label {
                    matching::Evidence::Collectives => {
                        format!(
                            "arrived last in {} of {} {} instances on communicator {}",
                            v.late_count,
                            v.total,
                            op_label(v.op),
                            fmt_id(id)
                        )
                    }
                    matching::Evidence::GraphSteps => {
                        format!(
                            "launched its graph last in {} of {} graph-launch steps of group {}",
                            v.late_count,
                            v.total,
                            fmt_id(id)
                        )
                    }
                };
                let idle = folded_idle
                    .map(|i| {
                        format!(
                            "; waiting for it, the other ranks idled {:.0}% of the last {}",
                            i.ratio * 100.0,
                            fmt_ns(i.span_ns)
                        )
                    })
                    .unwrap_or_default();
                let severity = if v.median_lag_ns >= self.cfg.straggler_critical_lag_ns {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                let d = Draft {
                    severity,
                    culprit: Culprit { pid: Some(mm.pid), rank: (mm.rank != u32::MAX).then_some(mm.rank), comm: Some(id), host, connection: None },
                    evidence: format!(
                        "{who} {what} by {} or more (median lag then {}); the other ranks waited {} for it in those instances, {:.0}% of the waiting on late ranks{idle}",
                        fmt_ns(v.threshold_ns),
                        fmt_ns(v.median_lag_ns),
                        fmt_secs(v.waited_ns),
                        v.blame * 100.0
                    ),
                    source: label.label(),
                    suggestion: format!(
                        "Look at what {} does before it calls in: host-side work (CPU contention, data loading, Python GC), a slower or throttled GPU, or more work than the other ranks.",
                        rank_name(mm.rank, v.member)
                    ),
                    window: v.window,
                    magnitude: Magnitude { name: "median_lag_ns", value: v.median_lag_ns as f64 },
                };
                let key = FindingKey {
                    kind: FindingKind::Straggler,
                    scope: id,
                    culprit: v.member as u64,
                };
                self.raise(key, d);
            }
            None => shift_blame(
                &mut self.stragglers,
                &mut self.findings,
                lane,
                None,
                FindingKind::Straggler,
                id,
                now,
            ),
        }
        // Data-parallel idle blamed on the busy rank.
        let l = &self.lanes[li];
        match ev.idle {
            Some(v) => {
                shift_blame(
                    &mut self.idle_blame,
                    &mut self.findings,
                    lane,
                    Some(v.member),
                    FindingKind::Bubble,
                    id,
                    now,
                );
                let mm = &l.members[v.member as usize];
                let host = self.procs.host(mm.proc).map(str::to_owned);
                let who = describe_member(mm.rank, mm.pid, host.as_deref());
                let d = Draft {
                    severity: Severity::Warning,
                    culprit: Culprit { pid: Some(mm.pid), rank: (mm.rank != u32::MAX).then_some(mm.rank), comm: Some(id), host, connection: None },
                    evidence: format!(
                        "the other ranks of {} {} idled {:.0}% of the last {} ({} in total over {} instances) waiting for {who}",
                        lane_label(label),
                        fmt_id(id),
                        v.ratio * 100.0,
                        fmt_ns(v.span_ns),
                        fmt_secs(v.waited_ns),
                        v.instances
                    ),
                    source: label.label(),
                    suggestion: "Balance the work across ranks (batch composition, sequence lengths) or remove what slows the busy rank.".into(),
                    window: (now.saturating_sub(v.span_ns), now),
                    magnitude: Magnitude { name: "bubble_ratio", value: v.ratio },
                };
                let key = FindingKey {
                    kind: FindingKind::Bubble,
                    scope: id,
                    culprit: v.member as u64,
                };
                self.raise(key, d);
            }
            None => shift_blame(
                &mut self.idle_blame,
                &mut self.findings,
                lane,
                None,
                FindingKind::Bubble,
                id,
                now,
            ),
        }
    }

    fn bubble_alert(&mut self, a: BubbleAlert) {
        let now = self.t;
        match a {
            BubbleAlert::Pipeline { comm, rank } => {
                let Some(stage) = self.bubbles.stages.get(&(comm, rank)) else {
                    return;
                };
                let (ratio, n) = bubbles::stage_ratio(stage, now, &self.cfg);
                let mut waits: Vec<u64> = stage.waits.iter().map(|(_, w)| *w).collect();
                let med = util::median(&mut waits);
                let upstream = stage.upstream;
                let c = &self.comms.list[comm as usize];
                // The member holding the rank now, else the latest that held it (it may
                // have left since: the stage's last transfers come after its upstream's).
                let holder = |r: u32| {
                    c.members
                        .iter()
                        .filter(|m| m.rank == Some(r))
                        .max_by_key(|m| (m.left_ns.is_none(), m.left_ns))
                };
                let member = holder(rank);
                let up = holder(upstream);
                let host = member
                    .and_then(|m| self.procs.host(m.proc))
                    .map(str::to_owned);
                let d = Draft {
                    severity: Severity::Warning,
                    culprit: Culprit { pid: up.map(|m| m.pid), rank: Some(upstream), comm: Some(c.id), host, connection: None },
                    evidence: format!(
                        "pipeline stage rank {rank}{} waited for upstream rank {upstream}{} {:.0}% of the window over {n} transfers on communicator {} (median wait {})",
                        member.map(|m| format!(" (pid {})", m.pid)).unwrap_or_default(),
                        up.map(|m| format!(" (pid {})", m.pid)).unwrap_or_default(),
                        ratio * 100.0,
                        fmt_id(c.id),
                        fmt_ns(med)
                    ),
                    source: "send/recv transfers",
                    suggestion: "Rebalance the layers between pipeline stages or use more micro-batches to fill the pipeline.".into(),
                    window: (now.saturating_sub(self.cfg.window_ns).max(stage.first_ns), now),
                    // The wait per transfer: how much longer the upstream stage takes per
                    // micro-batch than this one.
                    magnitude: Magnitude { name: "median_wait_ns", value: med as f64 },
                };
                let key = FindingKey {
                    kind: FindingKind::Bubble,
                    scope: c.id,
                    culprit: 0x1_0000_0000 | rank as u64,
                };
                self.raise(key, d);
            }
            BubbleAlert::Submission {
                proc,
                stream,
                gap_ns,
            } => {
                let Some(g) = self.bubbles.streams.get(&(proc, stream)) else {
                    return;
                };
                let n = g.busy_gaps.sum(now);
                let longest = g.longest_ns;
                let p = self.procs.proc(proc);
                let d = Draft {
                    severity: Severity::Info,
                    culprit: Culprit { pid: Some(p.pid), rank: p.hints.rank, comm: None, host: p.hints.host.clone(), connection: None },
                    evidence: format!(
                        "stream {stream:#x} of pid {} went without GPU submissions for more than {} {n} times in the window while the process kept making other calls (latest {}, longest {})",
                        p.pid,
                        fmt_ns(self.cfg.submission_gap_ns),
                        fmt_ns(gap_ns),
                        fmt_ns(longest)
                    ),
                    source: "GPU submissions",
                    suggestion: "The host is busy with something else between launches (scheduling, sampling, tokenisation, Python overhead): profile the host side of this process.".into(),
                    window: (now.saturating_sub(gap_ns), now),
                    magnitude: Magnitude { name: "longest_gap_ns", value: longest as f64 },
                };
                let key = FindingKey {
                    kind: FindingKind::Bubble,
                    scope: mix(&[proc as u64, stream]),
                    culprit: 0x2_0000_0000,
                };
                self.raise(key, d);
            }
        }
    }

    fn alloc_failure(&mut self, proc: ProcId, c: &CallEvent, f: memory::AllocFailure) {
        let p = self.procs.proc(proc);
        let Some(m) = self.memory.get(proc) else {
            return;
        };
        let d = Draft {
            severity: if m.failures > 1 { Severity::Critical } else { Severity::Warning },
            culprit: Culprit { pid: Some(p.pid), rank: p.hints.rank, comm: None, host: p.hints.host.clone(), connection: None },
            evidence: format!(
                "{} of {} failed with out-of-memory in pid {} ({} failure(s) since {}); {} of device memory outstanding from allocations traced since attach (peak {})",
                f.func,
                fmt_bytes(f.bytes),
                p.pid,
                m.failures,
                fmt_time(m.first_failure_ns),
                fmt_bytes(m.outstanding),
                fmt_bytes(m.peak)
            ),
            source: "allocation calls",
            suggestion: "Lower the memory footprint (gpu-memory-utilization, max batch/sequence length, KV-cache size) or look for a leak in outstanding allocations.".into(),
            window: (m.first_failure_ns, c.entry_ns),
            magnitude: Magnitude { name: "failed_bytes", value: f.bytes as f64 },
        };
        let key = FindingKey {
            kind: FindingKind::MemoryPressure,
            scope: proc as u64,
            culprit: 0,
        };
        self.raise(key, d);
    }

    fn link_alert(&mut self, proc: ProcId, a: LinkAlert) {
        let now = self.t;
        let sk = match a {
            LinkAlert::Retransmits { sk, .. } | LinkAlert::Reset { sk } => sk,
        };
        let Some(l) = self.links.conns.get(&sk) else {
            return;
        };
        let p = self.procs.proc(proc);
        let (evidence, severity, name, value) = match a {
            LinkAlert::Retransmits { in_window, rate, .. } => (
                format!(
                    "{in_window} retransmits in the window on {} (pid {}), {:.2}% of the segments it sent (estimated at {} B each; {} sent, {} received)",
                    l.label(),
                    p.pid,
                    rate * 100.0,
                    self.cfg.link_assumed_mss,
                    fmt_bytes(l.sent),
                    fmt_bytes(l.recvd)
                ),
                Severity::Warning,
                "retransmit_rate",
                rate,
            ),
            LinkAlert::Reset { .. } => (
                format!(
                    "connection {} of pid {} was reset ({} resets)",
                    l.label(),
                    p.pid,
                    l.resets
                ),
                Severity::Info,
                "resets",
                l.resets as f64,
            ),
        };
        let d = Draft {
            severity,
            culprit: Culprit { pid: Some(p.pid), rank: p.hints.rank, comm: None, host: p.hints.host.clone(), connection: Some(l.label()) },
            evidence,
            source: "socket events",
            suggestion: "Check the network path between these endpoints (NIC errors, congestion, MTU) and the peer's health.".into(),
            window: (l.first_ns, now),
            magnitude: Magnitude { name, value },
        };
        let key = FindingKey {
            kind: FindingKind::Link,
            scope: sk,
            culprit: matches!(a, LinkAlert::Reset { .. }) as u64,
        };
        self.raise(key, d);
    }

    /// Raises or updates a finding, noting lost events in its window.
    fn raise(&mut self, key: FindingKey, d: Draft) {
        let lost: u64 = self
            .lost
            .iter()
            .filter(|w| w.start <= d.window.1 && w.end >= d.window.0)
            .map(|w| w.count)
            .sum();
        let t = self.t.max(self.now);
        let f = self.findings.upsert(key, d, t, self.cfg.max_findings);
        f.lost_events_in_window = lost;
        if lost > 0 {
            f.evidence.push_str(&format!(
                "; {lost} events were lost in this window, so counts may be incomplete"
            ));
        }
    }

    // ---- views ----

    /// Current findings, in the order first raised.
    pub fn findings(&self) -> &[Finding] {
        &self.findings.list
    }

    /// Event time up to which everything has been processed.
    pub fn now(&self) -> u64 {
        self.now.max(self.t)
    }

    /// Everything views need, as plain data.
    pub fn snapshot(&self) -> Snapshot {
        snapshot::build(self)
    }

    /// Matched instances of the communicator `comm_id` (or graph group), oldest first:
    /// (instance number, entry time per member in member order, finished). For tests and
    /// detailed views.
    pub fn instances(&self, lane_id: u64) -> Vec<(u64, Vec<Option<u64>>, bool)> {
        self.lanes
            .iter()
            .find(|l| l.id == lane_id)
            .map(|l| l.instances().map(|(s, v, f, _)| (s, v, f)).collect())
            .unwrap_or_default()
    }
}

/// Kinds of call processed while still in flight (see `Engine::ingest`): those that are
/// arrivals at a collective instance, a pipeline transfer or a graph-launch step.
fn arrives_in_flight(kind: CallKind) -> bool {
    matches!(
        kind,
        CallKind::Collective | CallKind::P2p | CallKind::GroupEnd | CallKind::GraphLaunch
    )
}

fn rank_name(rank: u32, member: u32) -> String {
    if rank == u32::MAX {
        format!("member {member}")
    } else {
        format!("rank {rank}")
    }
}

/// Records `culprit` (or nobody) as the member of `lane` blamed for `kind`, and withdraws
/// the finding of a previously blamed, different member.
fn shift_blame(
    blamed: &mut FastMap<u32, u32>,
    findings: &mut FindingBook,
    lane: u32,
    culprit: Option<u32>,
    kind: FindingKind,
    scope: u64,
    now: u64,
) {
    let prev = match culprit {
        Some(member) => blamed.insert(lane, member).filter(|p| *p != member),
        None => blamed.remove(&lane),
    };
    if let Some(prev) = prev {
        findings.deactivate(
            &FindingKey {
                kind,
                scope,
                culprit: prev as u64,
            },
            now,
        );
    }
}

fn describe_member(rank: u32, pid: u32, host: Option<&str>) -> String {
    let r = if rank == u32::MAX {
        "a rank".to_string()
    } else {
        format!("rank {rank}")
    };
    match host {
        Some(h) => format!("{r} (pid {pid} on {h})"),
        None => format!("{r} (pid {pid})"),
    }
}

fn join_ranks(names: &[String]) -> String {
    match names.len() {
        0 => "no rank".into(),
        1 => names[0].clone(),
        _ => {
            let nums: Vec<&str> = names
                .iter()
                .map(|n| n.trim_start_matches("rank "))
                .collect();
            if names.iter().all(|n| n.starts_with("rank ")) {
                format!("ranks {}", nums.join(", "))
            } else {
                names.join(", ")
            }
        }
    }
}

fn lane_label(e: matching::Evidence) -> &'static str {
    match e {
        matching::Evidence::Collectives => "communicator",
        matching::Evidence::GraphSteps => "graph group",
    }
}

/// Human name of an instance's op.
pub(crate) fn op_label(op: u16) -> &'static str {
    match op {
        0 => "all-reduce",
        1 => "all-gather",
        2 => "reduce-scatter",
        3 | 4 => "broadcast",
        5 => "reduce",
        6 => "all-to-all",
        7 => "gather",
        8 => "scatter",
        GROUP_OP => "grouped",
        GRAPH_OP => "graph-launch",
        x => llmdd_common::funcs::spec(x)
            .map(|s| s.name)
            .unwrap_or("unknown"),
    }
}

fn fmt_time(ns: u64) -> String {
    format!("t={:.3}s", ns as f64 / 1e9)
}

fn fmt_secs(ns: u64) -> String {
    format!("{:.2} s", ns as f64 / 1e9)
}

/// When a member leaving a lane is a finding of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Raise {
    Always,
    /// Only when it left instances open that the others entered.
    IfOpen,
    Never,
}
