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
//! Files, by what they own:
//! - the engine's steps: this file (the state, the API, time order, the periodic tick),
//!   `collectives` (collective and point-to-point calls, groups, communicator creation and
//!   teardown), `device` (launches, copies, syncs, events, allocations), `departures`
//!   (processes exiting, members leaving), `lost` (lost-event windows), `verdicts` (turning
//!   evidence into findings);
//! - the state they keep: `reorder` (time order), `procs` (processes, pid reuse, hints),
//!   `comm` (communicator identity), `matching` (collective instances and graph steps across
//!   ranks), `completion` (sync-based completion bounds), `stragglers` (late-rank evidence),
//!   `graphs` (graph-launch groups), `bubbles`, `memory`, `links`, `requests`, `stats`
//!   (HdrHistogram windows);
//! - what comes out: `findings` (the book and, in `findings::wording`, every finding's
//!   prose), `snapshot` (views), `config` (thresholds).

mod bubbles;
mod capture;
mod collectives;
mod comm;
mod completion;
mod config;
mod departures;
mod device;
mod findings;
mod graphs;
mod host_clocks;
pub(crate) mod kv;
mod links;
mod lost;
mod matching;
mod memory;
mod nccl_ras;
mod positions;
mod procs;
mod reorder;
mod requests;
mod snapshot;
mod stats;
mod stragglers;
pub mod synth;
pub(crate) mod util;
mod verdicts;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use llmdd_common::funcs::CallKind;

pub use comm::Identity;
pub use config::Config;
pub use findings::{Culprit, Finding, FindingKind, Magnitude, Severity};
pub use graphs::GroupBasis;
pub use host_clocks::HostClock;
pub use kv::{KvAgentView, TransferRecord};
pub use links::LinkView;
pub use matching::Evidence;
pub use memory::MemoryView;
pub use nccl_ras::{RasSight, RasWhat};
pub use positions::{telling, Place, ProcThreads, ThreadPlace};
pub use procs::{job_key, LayoutLib, ProcessHints};
pub use requests::{RequestRecord, RequestsView};
pub use snapshot::{
    CapturedCollView, CapturedGraphView, CommView, Counts, GroupView, LaneView, MemberView, OpView,
    Snapshot, StageView,
};
pub use stats::Pctl;

pub(crate) use findings::wording::op_label;

use crate::events::{CallEvent, Event, SockEvent};
use bubbles::Bubbles;
use collectives::GroupState;
use comm::Comms;
use completion::{PendingWork, SyncTracker};
use findings::{Draft, FindingBook, FindingKey};
use graphs::Graphs;
use links::Links;
use lost::LostWindow;
use matching::{Lane, LaneOut, StallInfo};
use memory::Memory;
use procs::{ProcId, Procs};
use reorder::{key_of, Reorder};
use requests::Requests;
use util::FastMap;

/// In-flight calls remembered until their return record (beyond: forgotten; their return
/// records then count as second arrivals, as before in-flight reports existed).
const MAX_IN_FLIGHT: usize = 1 << 16;

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
    captures: capture::Captures,
    kv: kv::Kv,
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
    /// Lane -> member currently named straggler.
    stragglers: FastMap<u32, u32>,
    /// Lane (of a pipeline's communicator) -> stage rank currently named the slow stage.
    pipeline_blame: FastMap<u32, u32>,
    /// Where each traced process's threads were last found (see `positions`).
    positions: positions::Positions,
    ras: nccl_ras::RasState,
    host_clocks: host_clocks::HostClocks,
    /// Reset findings raised, with their connections' ports, until the serving port is
    /// known (see `serving_port_known`).
    resets_raised: Vec<([u16; 2], FindingKey)>,
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
        let kv = kv::Kv::new((cfg.window_ns / 8).max(1), 8);
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
            captures: capture::Captures::default(),
            kv,
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
            pipeline_blame: FastMap::default(),
            resets_raised: Vec::new(),
            positions: Default::default(),
            ras: Default::default(),
            host_clocks: Default::default(),
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

    /// One decoded event, in time order.
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

    /// Dispatches a call by what it means to the analysis.
    fn on_call(&mut self, c: &CallEvent) {
        let proc = self.procs.get(c.pid, c.exit_ns.unwrap_or(c.entry_ns));
        let spec = c.spec();
        if !self.in_flight_first(proc, c, spec.kind) {
            return;
        }
        let busy = self.note_host_time(proc, c);
        if self.capture_call(proc, c) {
            // Recorded into a graph being captured: not run now.
            return;
        }
        match spec.kind {
            CallKind::Collective | CallKind::P2p => self.on_comm_call(proc, c, busy),
            CallKind::GroupStart => self.on_group_start(proc, c),
            CallKind::GroupEnd => self.on_group_end(proc, c, busy),
            CallKind::CommInit => self.on_comm_init(proc, c),
            CallKind::CommInitAll => {}
            CallKind::CommSplit => self.on_comm_split(proc, c),
            CallKind::CommEnd => self.on_comm_end(proc, c),
            CallKind::Launch | CallKind::Memcpy => self.on_submission(proc, c, busy),
            CallKind::GraphLaunch => self.on_graph_launch(proc, c, busy),
            CallKind::Sync => self.on_sync(proc, c),
            CallKind::EventRecord => self.on_event_record(proc, c),
            CallKind::EventQuery => self.on_event_query(proc, c),
            CallKind::StreamWait => self.on_stream_wait(proc, c),
            CallKind::Alloc | CallKind::Free => self.on_alloc(proc, c),
            // User probes without a role: counted and timed by the summary and views only.
            // Graph capture calls were handled by `capture_call`.
            CallKind::KvPrepare
            | CallKind::KvCreate
            | CallKind::KvPost
            | CallKind::KvStatus
            | CallKind::KvRelease
            | CallKind::KvHandshake => self.kv.on_call(proc, c),
            CallKind::Other
            | CallKind::CaptureBegin
            | CallKind::CaptureEnd
            | CallKind::GraphInstantiate => {}
        }
        self.note_wait(proc, c);
    }

    /// CUDA-graph capture (see `capture`): follows captures, graphs and executables; true
    /// when `c` was recorded into a graph being captured rather than run.
    fn capture_call(&mut self, proc: ProcId, c: &CallEvent) -> bool {
        let ok = c.ret.is_none_or(|r| r == 0);
        let cap = &mut self.captures;
        match (c.spec().kind, c.stream) {
            (CallKind::CaptureBegin, Some(s)) if ok => cap.begin(proc, s),
            (CallKind::CaptureEnd, Some(s)) => cap.end(proc, s, c.out.filter(|_| ok)),
            (CallKind::GraphInstantiate, _) if ok => {
                if let Some(exec) = c.out {
                    cap.instantiate(proc, c.pid, c.args[1], exec);
                }
            }
            (CallKind::EventRecord, Some(s)) => {
                if let Some(ev) = c.event_handle {
                    cap.event_record(proc, ev, s);
                }
            }
            (CallKind::StreamWait, Some(s)) => {
                if let Some(ev) = c.event_handle {
                    cap.stream_wait(proc, s, ev);
                }
            }
            (_, Some(s)) if cap.capturing(proc, s) => {
                let comm = match c.spec().kind {
                    CallKind::Collective | CallKind::P2p => self.place_captured(proc, c),
                    _ => None,
                };
                let recorded = self.captures.record(proc, c, comm);
                if recorded {
                    self.counts.captured_calls += 1;
                }
                return recorded;
            }
            _ => {}
        }
        false
    }

    /// Time spent in a call that waits for other ranks or for the device: sends and
    /// receives (or the group end that runs them), collectives, syncs and synchronous
    /// copies. A pipeline stage's share of it is what names the stage the others wait for.
    fn note_wait(&mut self, proc: ProcId, c: &CallEvent) {
        let spec = c.spec();
        let waits = matches!(
            spec.kind,
            CallKind::Collective | CallKind::P2p | CallKind::GroupEnd
        ) || spec.waits_for_device();
        if let (true, Some(exit)) = (waits, c.exit_ns) {
            self.procs.proc_mut(proc).waited_ns += exit.saturating_sub(c.entry_ns);
            self.bubbles.waited(proc, c.entry_ns, exit, &self.cfg);
        }
    }

    /// Counts the call as host work or as waiting: for the device (syncs, event queries,
    /// synchronous copies), or for other ranks in a collective or transfer that blocks the
    /// host (MPI's and Gloo's name no stream: the thread waits inside them, as in a sync);
    /// returns the process's busy-call count and total waiting time.
    fn note_host_time(&mut self, proc: ProcId, c: &CallEvent) -> Busy {
        let spec = c.spec();
        let blocks_host =
            matches!(spec.kind, CallKind::Collective | CallKind::P2p) && c.stream.is_none();
        let waits = spec.waits_for_device() || blocks_host;
        let p = self.procs.proc_mut(proc);
        if waits {
            p.sync_ns += c.duration_ns().unwrap_or(0);
        } else {
            p.busy_calls += 1;
        }
        Busy {
            calls: p.busy_calls,
            sync_ns: p.sync_ns,
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

    fn on_sock(&mut self, s: &SockEvent) {
        let proc = self.procs.get(s.pid, s.ts_ns);
        let port = self.requests.detected;
        self.requests.on_sock(s, &self.cfg);
        if self.requests.detected != port && !self.resets_raised.is_empty() {
            self.serving_port_known();
        }
        if let Some(a) = self.links.on_sock(s, &self.cfg) {
            self.link_alert(proc, a);
        }
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
        self.evaluate_pipelines(now.max(self.t));
        self.requests.tick(now, &self.cfg);
        self.kv_verdicts(now.max(self.t));
    }

    /// Raises or updates a finding, noting lost events in its window.
    fn raise(&mut self, key: FindingKey, d: Draft) {
        let lost = self.lost_in(d.window);
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

    /// What the engine could not conclude and why, one line each, for every view.
    pub fn notes(&self) -> Vec<String> {
        let mut out = self.clock_notes();
        let n = self.counts.departures_withheld_lost;
        if n > 0 {
            out.push(format!(
                "{n} member(s) left a communicator with instances open right after lost events: \
                 not named, since their own arrivals may be among the records lost"
            ));
        }
        let n = self.counts.findings_withheld_ambiguous;
        if n > 0 {
            let comms = self.lanes.iter().filter(|l| l.ambiguous).count();
            out.push(format!(
                "{n} verdict(s) withheld on {comms} communicator(s) whose members could not be \
                 told apart: communicators of the same rank count in one job, made before \
                 llmdd attached (attach before they are created to identify them exactly)"
            ));
        }
        for l in self.lanes.iter().filter(|l| !l.ambiguous) {
            let Some((v, why)) = &l.near_miss else {
                continue;
            };
            let mm = &l.members[v.member as usize];
            let why = match why {
                stragglers::NotNamed::WithinNoise(floor) => format!(
                    "within the job's own arrival noise ({} and more stands out here)",
                    util::fmt_ns(*floor)
                ),
                stragglers::NotNamed::Immaterial => format!(
                    "costing the others {:.1}% of their time, under the {:.0}% a straggler must cost",
                    v.cost * 100.0,
                    self.cfg.straggler_min_cost * 100.0
                ),
            };
            out.push(format!(
                "{} of {} {} was late in {} instances by {} (median), {why}: not named",
                findings::wording::describe_member(mm.rank, mm.pid, self.procs.host(mm.proc)),
                findings::wording::lane_label(l.evidence),
                util::fmt_id(l.id),
                v.late_count,
                util::fmt_ns(v.median_lag_ns),
            ));
        }
        out.extend(self.comms.unstable.iter().map(|&(pid, (r, n), (r2, n2))| {
            format!(
                "pid {pid}: its communicator handle read rank {r} of {n} when it was placed and \
                 rank {r2} of {n2} on a later call: the library's layout does not read stable \
                 fields, so findings on that communicator rest on the first values read"
            )
        }));
        out.extend(self.comms.untrusted.iter().map(|&(pid, r, n, family)| {
            let h = self
                .procs
                .find_live(pid)
                .map(|p| self.procs.proc(p).hints.clone())
                .unwrap_or_default();
            let env = match (h.rank, h.world_size) {
                (Some(r), Some(w)) => format!("rank {r} of {w}"),
                (None, Some(w)) => format!("a world of {w}"),
                _ => "no launcher ranks".into(),
            };
            let lib = match h.layout(family).and_then(|l| l.version.as_deref()) {
                Some(v) => format!("{} {v}", family.name()),
                None => family.name().to_string(),
            };
            format!(
                "pid {pid}: the rank and size read from its communicator through {lib}'s \
                 layout (rank {r} of {n}) are not plausible against its launcher's environment \
                 ({env}): that layout is not trusted again in any process mapping that build; \
                 communicators are grouped by the environment's ranks where they describe \
                 them, else shown unidentified"
            )
        }));
        out.extend(self.device_side_notes());
        out
    }

    /// Collectives whose time goes on the device side: they complete long after the last
    /// rank enqueued them (completion bound) while the ranks enqueue them together. A GPU
    /// that is slower on one rank, more GPU work on one rank and a slow network all look
    /// alike from the host (every rank's sync returns when the collective ends), so this is
    /// said as where the time goes, never blamed on a rank: a slowdown there is not
    /// attributable from the host. Said when the completion bound is at least
    /// four times the arrival skew and a quarter of the lane's period (over at least 20
    /// instances): then host-side lateness explains little of the step time.
    fn device_side_notes(&self) -> Vec<String> {
        let now = self.now();
        let mut out = Vec::new();
        for l in self
            .lanes
            .iter()
            .filter(|l| !l.ambiguous && l.period_ns > 0)
        {
            for s in &l.series {
                let (done, skew) = (s.completion.pctl(now), s.skew.pctl(now));
                if done.count < 20
                    || done.p50 < 4 * skew.p50.max(100_000)
                    || done.p50 * 4 < l.period_ns
                {
                    continue;
                }
                out.push(format!(
                    "{} {}: {} completes a median {} after the last rank enqueued it (completion \
                     bound, from the syncs that follow), while the ranks enqueue it within {} of \
                     each other (median arrival skew), in a period of {}: that part of the step \
                     is spent on the device side (GPU work queued before it, the collective, a \
                     slower or throttled GPU or link on any rank), which the host cannot split \
                     by rank; where it is longer than expected, compare the GPUs' clocks, \
                     throttle reasons and utilisation, not the ranks' host timing",
                    findings::wording::lane_label(l.evidence),
                    util::fmt_id(l.id),
                    findings::wording::op_label(s.op),
                    util::fmt_ns(done.p50),
                    util::fmt_ns(skew.p50),
                    util::fmt_ns(l.period_ns),
                ));
            }
        }
        out
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
/// A process's host activity as of a call: its busy (non-waiting) calls and its total time
/// waiting for the device.
#[derive(Clone, Copy, Debug)]
struct Busy {
    calls: u64,
    sync_ns: u64,
}

/// Kinds of call processed while still in flight (see `Engine::ingest`): those that are
/// arrivals at a collective instance, a pipeline transfer or a graph-launch step.
fn arrives_in_flight(kind: CallKind) -> bool {
    matches!(
        kind,
        CallKind::Collective | CallKind::P2p | CallKind::GroupEnd | CallKind::GraphLaunch
    )
}

/// When a member leaving a lane is a finding of its own (see `departures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Raise {
    /// Always (an abort).
    Always,
    /// Only when it left instances open that the others entered (the lane reports later
    /// calls of survivors on its own).
    IfWaitedOn,
}
