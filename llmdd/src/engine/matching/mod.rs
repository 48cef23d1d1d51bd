//! Matching calls across ranks into instances. THIS is where a collective is matched across
//! ranks (and, with the same machinery, where graph launches become steps).
//!
//! A *lane* is one communicator (or one graph group). Every member calls into it in the same
//! order, so a member's k-th call is instance `k + offset(member)`:
//!
//! * Members that were seen creating the communicator (`ncclCommInitRank*`) start at offset 0:
//!   their first call is instance 0 on every rank.
//! * Members that were already running when tracing began (the main use case: attach after
//!   the communicators exist) start *pending*: their first calls are buffered and then aligned
//!   against the instances the already-aligned members have built, choosing the shift that
//!   (1) breaks no causality (a rank cannot arrive at an instance after another rank saw it
//!   complete through a stream sync, and vice versa), (2) keeps call signatures equal (function,
//!   bytes, op, dtype), and (3) among those, puts its arrivals closest in time to the others'.
//!   The very first member of a lane defines instance numbering.
//!
//! An instance is finished once every member expected at it has arrived: aligned members whose
//! first call is at or before it and who had not left before it. Finished instances feed the
//! straggler evidence and the distributions. An instance that some expected members entered and
//! others have not is a stall candidate once it is older than the threshold (see `tick`).
//!
//! After lost events a lane is *unverified*: a missing arrival may be a lost record, and a lost
//! record shifts that member's numbering by one. Stalls are not raised then; when the lane would
//! stall, the behind members are assumed to have lost calls and are shifted forward (the
//! instances they skipped are excused), which makes the lane verified again.

mod alignment;

use std::collections::VecDeque;

use serde::Serialize;

use super::{
    config::Config,
    procs::ProcId,
    stats::{Pctl, RollingHist},
    stragglers::{EvidenceEntry, EvidenceRing},
    util::{median_i64, size_bucket},
};

/// Slot value: the member has not arrived.
const ABSENT: u64 = u64::MAX;
/// Slot value: the member's arrival was given up as lost (after lost events).
const EXCUSED: u64 = u64::MAX - 1;
/// `op` of an instance formed by a group (ncclGroupStart/End) of calls.
pub const GROUP_OP: u16 = u16::MAX;
/// `op` of a graph-launch step.
pub const GRAPH_OP: u16 = u16::MAX - 1;
/// Recent calls remembered per member (for alignment and late completions).
const MEMBER_RING: usize = 256;
/// Op × size series kept per lane (fewer when `Config::max_series` is lower). Per-rank
/// series (arrival lag, call time) are kept for the first `Config::max_series` members.
const MAX_OP_SERIES: usize = 32;
/// Gaps between consecutive instances kept for the lane's typical period, and how many are
/// needed before the period is trusted.
const PERIOD_SAMPLES: usize = 31;
const PERIOD_MIN_SAMPLES: usize = 2;
/// Completion bounds of a series needed before its median is its typical completion time.
const MIN_TYPICAL: u64 = 8;
/// The lag the devices hid, from the typical completion time after the last arrival in
/// instances nobody was late in and this instance's: all of it when the collective still
/// completed about when it typically does (at least 80% of the lag absorbed), else none.
/// Partly absorbed lateness is not split: a collective's own run after the last arrival
/// also shortens when the others were already in it, which the host cannot tell from
/// device work it waited behind, so the lag then stays the enqueue-time lag it was.
pub fn absorbed(typical: u64, after: u64, lag: u64) -> u64 {
    if typical.saturating_sub(after) * 5 >= lag * 4 {
        lag
    } else {
        0
    }
}

/// Late instances waiting for a typical completion time before they count as they are.
const MAX_PARKED: usize = 16;

/// Which evidence a lane's instances are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    Collectives,
    GraphSteps,
}

impl Evidence {
    pub fn label(self) -> &'static str {
        match self {
            Evidence::Collectives => "collective instances",
            Evidence::GraphSteps => "graph-launch steps",
        }
    }
}

/// One call of a member as the lane sees it.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub entry_ns: u64,
    pub exit_ns: Option<u64>,
    /// Equal on every rank for the same instance (0 = unknown, never compared).
    pub sig: u64,
    pub bytes: u64,
    /// Function id, `GROUP_OP` or `GRAPH_OP`.
    pub op: u16,
    /// Time the process had spent waiting for other ranks or the device (sends, receives,
    /// collectives, syncs) in total, as of this call.
    pub sync_ns: u64,
    /// The call's return bounds the instance's completion on every member: a collective that
    /// blocks the calling thread (MPI, Gloo) and whose every member needs every member's
    /// input (all-reduce, all-gather, reduce-scatter, all-to-all, barrier), so no member can
    /// return before the last one has arrived.
    pub exit_bounds: bool,
}

/// Sync time before a call not known.
const NO_SYNC: u64 = u64::MAX;

#[derive(Clone, Copy, Debug)]
struct MemberCall {
    entry_ns: u64,
    /// When it returned (0 = not known: reported in flight).
    exit_ns: u64,
    /// Time the member waited in syncs between its previous call on the lane returning and
    /// this call (`NO_SYNC`: not known).
    synced_ns: u64,
    sig: u64,
    bytes: u64,
    op: u16,
    /// Completion upper bound from a later sync (0 = none).
    ub: u64,
}

#[derive(Clone, Debug)]
pub struct LaneMember {
    pub proc: ProcId,
    pub pid: u32,
    /// Rank in the communicator (`u32::MAX` until known).
    pub rank: u32,
    calls: VecDeque<MemberCall>,
    /// Call index of `calls[0]`.
    calls_base: u64,
    /// Calls seen (index of the next call).
    pub n_calls: u64,
    /// Instance of call index `i` is `i + offset`; `None` while pending alignment.
    pub offset: Option<i64>,
    /// First instance this member takes part in.
    first_seq: u64,
    pending_since: u64,
    pub left_ns: Option<u64>,
    /// Last instance this member took part in before leaving.
    last_seq: Option<u64>,
    pub last_arrival_ns: u64,
    /// Exit of its latest call (0 = not known) and its process's sync total then.
    last_exit_ns: u64,
    last_sync_ns: u64,
    /// Instances excused for this member after lost events.
    pub excused: u64,
    /// A survivor's call after it left was reported.
    left_reported: bool,
    rank_lag: Option<RollingHist>,
    rank_latency: Option<RollingHist>,
}

impl LaneMember {
    fn next_seq(&self) -> Option<u64> {
        self.offset.map(|o| (self.n_calls as i64 + o).max(0) as u64)
    }

    fn expected_at(&self, seq: u64) -> bool {
        self.offset.is_some()
            && seq >= self.first_seq
            && self.last_seq.is_none_or(|l| seq <= l)
            && !(self.left_ns.is_some() && self.last_seq.is_none())
    }

    pub fn pending(&self) -> bool {
        self.offset.is_none() && self.left_ns.is_none()
    }
}

#[derive(Clone, Debug)]
struct Instance {
    seq: u64,
    /// Entry time per member (`ABSENT`, `EXCUSED`).
    slots: Vec<u64>,
    /// Exit time per member (0 = not known).
    exits: Vec<u64>,
    /// Time waited in syncs before the call per member (`NO_SYNC`: not known).
    synced: Vec<u64>,
    /// Completion upper bound per member's call (0 = none): its return, for calls that
    /// block until every member arrived, or a later sync that covered it.
    ubs: Vec<u64>,
    arrived: u32,
    /// Real (not excused) arrivals.
    real: u32,
    first_ns: u64,
    last_ns: u64,
    sig: u64,
    op: u16,
    bytes: u64,
    /// Tightest completion upper bound seen (0 = none).
    ub: u64,
    /// Members whose call set `sig` and `ub` (so a member is never checked against itself).
    sig_by: u32,
    ub_by: u32,
    finished: bool,
    ub_recorded: bool,
    /// Its last arrival was late (lag at least the lane's lateness threshold).
    late: bool,
    /// Its last arrival's lag.
    lag: u64,
    /// Part of the last arrival's lag the devices hid (see `record_completion`).
    hidden: u64,
    /// Its completion after the last arrival, waiting for a typical time to compare with
    /// (0: none).
    parked: u64,
    stall_raised: bool,
    /// Finished while the lane was unverified (kept out of straggler evidence).
    unverified: bool,
}

impl Instance {
    fn reset(&mut self, seq: u64, n: usize) {
        self.seq = seq;
        self.slots.clear();
        self.slots.resize(n, ABSENT);
        self.exits.clear();
        self.exits.resize(n, 0);
        self.synced.clear();
        self.synced.resize(n, NO_SYNC);
        self.ubs.clear();
        self.ubs.resize(n, 0);
        self.arrived = 0;
        self.real = 0;
        self.first_ns = u64::MAX;
        self.last_ns = 0;
        self.sig = 0;
        self.op = 0;
        self.bytes = 0;
        self.ub = 0;
        self.sig_by = u32::MAX;
        self.ub_by = u32::MAX;
        self.finished = false;
        self.ub_recorded = false;
        self.late = false;
        self.lag = 0;
        self.hidden = 0;
        self.parked = 0;
        self.stall_raised = false;
        self.unverified = false;
    }
}

/// Distributions of one (op, message-size bucket) on a lane.
pub struct OpSeries {
    pub op: u16,
    pub bucket: u8,
    pub calls: u64,
    /// Call duration (exit - entry) per call.
    pub latency: RollingHist,
    /// Arrival skew (last minus first arrival) per instance.
    pub skew: RollingHist,
    /// Completion upper bound minus last arrival, per instance with sync evidence.
    pub completion: RollingHist,
    /// The same, of instances nobody was late in: how long the devices typically still
    /// work after the last arrival.
    pub on_time: RollingHist,
    /// Bus bandwidth lower bound in MB/s (bytes, nccl-tests factor, completion bound).
    pub busbw_mbps: RollingHist,
}

/// A stall: an instance some expected members entered while others have not.
#[derive(Clone, Debug, PartialEq)]
pub struct StallInfo {
    pub seq: u64,
    pub first_ns: u64,
    pub op: u16,
    /// Members (indices) that arrived and that are missing.
    pub arrived: Vec<u32>,
    pub missing: Vec<u32>,
    /// The threshold it was measured against.
    pub threshold_ns: u64,
    /// When it ended, for a stall seen only once it was over (every arrival of the instance
    /// came in together, e.g. the waiting ranks' records only arrive when their calls
    /// return): the last arrival.
    pub ended_ns: Option<u64>,
}

/// Things a lane reports back to the engine.
#[derive(Default)]
pub struct LaneOut {
    /// Instances whose stall finding should be closed (the missing members arrived or left):
    /// (lane id, instance, when it ended).
    pub resolved_stalls: Vec<(u64, u64, u64)>,
    /// Stalls seen only once they were over (see [`StallInfo::ended_ns`]).
    pub past_stalls: Vec<(u64, StallInfo)>,
    /// (member, instances skipped) realignments after lost events.
    pub realigned: Vec<(u32, u64)>,
    /// Calls that fell before the kept history when a member was aligned.
    pub dropped_calls: u64,
    /// Open instances evicted because too many were open.
    pub evicted_open: u64,
    /// Survivors that called on a lane after a member had left it.
    pub called_after_leaving: Vec<CalledAfterLeaving>,
}

/// A survivor's call on a lane after member `departed` had left it: an instance the real
/// collective cannot complete without the departed member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalledAfterLeaving {
    pub lane_id: u64,
    pub departed: u32,
    pub survivor: u32,
    pub seq: u64,
    pub at_ns: u64,
}

/// One communicator's (or graph group's) matcher.
pub struct Lane {
    pub id: u64,
    pub evidence: Evidence,
    pub members: Vec<LaneMember>,
    instances: VecDeque<Instance>,
    base_seq: u64,
    pool: Vec<Instance>,
    pending: usize,
    open: usize,
    /// Expected count for seq >= `exp_from` (fast path).
    exp_from: u64,
    exp_n: u32,
    /// Lost events may have affected this lane since this time: its instances are kept out
    /// of straggler evidence until the members' numbering has been re-checked.
    pub unverified_since: Option<u64>,
    /// Lost events may hide arrivals: a missing member is taken as a lost record (the member
    /// is shifted forward), not a stall, until the lane is seen complete and quiet, or a check
    /// with causality or signature evidence confirms the numbering.
    pub suspect_since: Option<u64>,
    /// Latest report of lost events that touched this lane: a missing arrival at an instance
    /// that began before it may be a lost record.
    pub last_loss_ns: u64,
    pub finished_total: u64,
    pub last_ns: u64,
    pub series: Vec<OpSeries>,
    pub series_dropped: u64,
    /// `Config::max_series`: op series at most (with `MAX_OP_SERIES`), and the members with
    /// per-rank series.
    series_cap: usize,
    pub evidence_ring: EvidenceRing,
    /// nranks for bus-bandwidth factors (the communicator size when known).
    pub nranks: u32,
    pub last_eval_ns: u64,
    pub stalls_suppressed: u64,
    pub realignments: u64,
    slice_ns: u64,
    slices: usize,
    /// Recent gaps between the first arrivals of consecutive finished instances, and their
    /// median (0 until `PERIOD_MIN_SAMPLES` are known): the lane's typical period.
    gaps: VecDeque<u64>,
    prev_finished: Option<(u64, u64)>,
    pub period_ns: u64,
    /// Event time of a member leaving, while the instances it no longer holds up finish.
    leaving_ns: u64,
    /// An instance's arrivals contradicted each other: re-check the numbering (`repair`).
    repair_due: bool,
    /// Instances found inconsistent (kept out of the evidence; the numbering re-checked).
    pub inconsistent: u64,
    /// Its members were grouped by a guess (see `comm::Identity::Inferred`): no finding
    /// names a rank on it.
    pub ambiguous: bool,
    /// The latest evaluation's rank late often enough but not named, and why (for the
    /// engine's notes).
    pub near_miss: Option<(
        super::stragglers::StragglerVerdict,
        super::stragglers::NotNamed,
    )>,
}

impl Lane {
    pub fn new(id: u64, evidence: Evidence, now: u64, cfg: &Config) -> Lane {
        Lane {
            id,
            evidence,
            members: Vec::new(),
            instances: VecDeque::new(),
            base_seq: 0,
            pool: Vec::new(),
            pending: 0,
            open: 0,
            exp_from: 0,
            exp_n: 0,
            unverified_since: None,
            suspect_since: None,
            last_loss_ns: 0,
            finished_total: 0,
            last_ns: now,
            series: Vec::new(),
            series_dropped: 0,
            evidence_ring: EvidenceRing::new(cfg.evidence_instances),
            nranks: 0,
            last_eval_ns: 0,
            stalls_suppressed: 0,
            realignments: 0,
            slice_ns: cfg.slice_ns(),
            slices: cfg.window_slices,
            series_cap: cfg.max_series,
            gaps: VecDeque::new(),
            prev_finished: None,
            period_ns: 0,
            leaving_ns: 0,
            repair_due: false,
            inconsistent: 0,
            ambiguous: false,
            near_miss: None,
        }
    }

    /// The stall threshold of this lane (see `Config::stall_threshold`).
    pub fn stall_threshold(&self, cfg: &Config) -> u64 {
        cfg.stall_threshold(self.period_ns)
    }

    fn note_period(&mut self, seq: u64, first_ns: u64) {
        if let Some((ps, pf)) = self.prev_finished {
            if seq == ps + 1 && first_ns > pf {
                if self.gaps.len() >= PERIOD_SAMPLES {
                    self.gaps.pop_front();
                }
                self.gaps.push_back(first_ns - pf);
                if self.gaps.len() >= PERIOD_MIN_SAMPLES {
                    let mut v: Vec<u64> = self.gaps.iter().copied().collect();
                    self.period_ns = super::util::median(&mut v);
                }
            }
        }
        if self.prev_finished.is_none_or(|(ps, _)| seq > ps) {
            self.prev_finished = Some((seq, first_ns));
        }
    }

    fn end_seq(&self) -> u64 {
        self.base_seq + self.instances.len() as u64
    }

    /// Adds a member. `at_start`: it was seen creating the communicator, so its first call is
    /// instance 0; otherwise it is aligned from its first calls (the lane's first member
    /// defines the numbering and is aligned at once).
    pub fn add_member(
        &mut self,
        proc: ProcId,
        pid: u32,
        rank: Option<u32>,
        at_start: bool,
        now: u64,
    ) -> u32 {
        let first_aligned = !self
            .members
            .iter()
            .any(|m| m.offset.is_some() || m.pending());
        let offset = if at_start {
            Some(0)
        } else if first_aligned {
            Some(self.end_seq() as i64)
        } else {
            None
        };
        let m = LaneMember {
            proc,
            pid,
            rank: rank.unwrap_or(u32::MAX),
            calls: VecDeque::new(),
            calls_base: 0,
            n_calls: 0,
            offset,
            first_seq: offset.map(|o| o.max(0) as u64).unwrap_or(0),
            pending_since: now,
            left_ns: None,
            last_seq: None,
            last_arrival_ns: 0,
            last_exit_ns: 0,
            last_sync_ns: 0,
            excused: 0,
            left_reported: false,
            rank_lag: None,
            rank_latency: None,
        };
        if m.offset.is_none() {
            self.pending += 1;
        }
        self.members.push(m);
        self.recompute_expected();
        (self.members.len() - 1) as u32
    }

    pub fn set_rank(&mut self, m: u32, rank: u32) {
        if let Some(mm) = self.members.get_mut(m as usize) {
            mm.rank = rank;
        }
    }

    fn recompute_expected(&mut self) {
        let mut from = 0u64;
        let mut n = 0u32;
        for m in &self.members {
            if m.offset.is_none() {
                continue;
            }
            if m.left_ns.is_some() {
                if let Some(l) = m.last_seq {
                    from = from.max(l + 1);
                }
                continue;
            }
            from = from.max(m.first_seq);
            n += 1;
        }
        self.exp_from = from;
        self.exp_n = n;
    }

    fn expected(&self, seq: u64) -> u32 {
        if seq >= self.exp_from {
            return self.exp_n;
        }
        self.members.iter().filter(|m| m.expected_at(seq)).count() as u32
    }

    /// A member's call. Returns its call index (for completion bounds from later syncs).
    pub fn arrive(&mut self, m: u32, a: Arrival, cfg: &Config, out: &mut LaneOut) -> u64 {
        self.last_ns = self.last_ns.max(a.entry_ns);
        let mi = m as usize;
        let synced_ns = {
            let mm = &mut self.members[mi];
            let synced = if mm.last_exit_ns != 0 && a.entry_ns >= mm.last_exit_ns {
                a.sync_ns.saturating_sub(mm.last_sync_ns)
            } else {
                NO_SYNC
            };
            mm.last_exit_ns = a.exit_ns.unwrap_or(0);
            // As of its return: a collective's own time counts as waiting too (the engine
            // adds it once the call is processed), and is no waiting since it returned.
            let own = match (a.op, a.exit_ns) {
                (GRAPH_OP, _) | (_, None) => 0,
                (_, Some(x)) => x.saturating_sub(a.entry_ns),
            };
            mm.last_sync_ns = a.sync_ns + own;
            synced
        };
        let call = MemberCall {
            entry_ns: a.entry_ns,
            exit_ns: a.exit_ns.unwrap_or(0),
            synced_ns,
            sig: a.sig,
            bytes: a.bytes,
            op: a.op,
            ub: if a.exit_bounds {
                a.exit_ns.unwrap_or(0)
            } else {
                0
            },
        };
        let idx = {
            let mm = &mut self.members[mi];
            let idx = mm.n_calls;
            mm.n_calls += 1;
            mm.last_arrival_ns = a.entry_ns;
            if mm.calls.len() >= MEMBER_RING {
                mm.calls.pop_front();
                mm.calls_base += 1;
            }
            mm.calls.push_back(call);
            idx
        };
        if let Some(d) = a.exit_ns.map(|x| x.saturating_sub(a.entry_ns)) {
            self.record_latency(m, a.op, a.bytes, a.entry_ns, d);
        }
        match self.members[mi].offset {
            Some(o) => {
                let seq = idx as i64 + o;
                if seq >= 0 {
                    self.place(m, seq as u64, call, cfg, out);
                }
            }
            None => {
                if self.members[mi].calls.len() >= cfg.align_min_calls.max(1) {
                    self.align(m, cfg, out);
                }
            }
        }
        self.repair_if_due(cfg, out);
        idx
    }

    fn record_latency(&mut self, m: u32, op: u16, bytes: u64, t: u64, d: u64) {
        if let Some(s) = self.series_for(op, bytes) {
            self.series[s].calls += 1;
            self.series[s].latency.record(t, d);
        }
        let (slice_ns, slices) = (self.slice_ns, self.slices);
        if (m as usize) < self.series_cap {
            self.members[m as usize]
                .rank_latency
                .get_or_insert_with(|| RollingHist::coarse(slice_ns, slices))
                .record(t, d);
        }
    }

    fn series_for(&mut self, op: u16, bytes: u64) -> Option<usize> {
        let bucket = size_bucket(bytes);
        if let Some(i) = self
            .series
            .iter()
            .position(|s| s.op == op && s.bucket == bucket)
        {
            return Some(i);
        }
        if self.series.len() >= MAX_OP_SERIES.min(self.series_cap) {
            self.series_dropped += 1;
            return None;
        }
        let (sn, k) = (self.slice_ns, self.slices);
        self.series.push(OpSeries {
            op,
            bucket,
            calls: 0,
            latency: RollingHist::new(sn, k),
            skew: RollingHist::new(sn, k),
            completion: RollingHist::new(sn, k),
            on_time: RollingHist::new(sn, k),
            busbw_mbps: RollingHist::new(sn, k),
        });
        Some(self.series.len() - 1)
    }

    fn take_instance(&mut self, seq: u64) -> Instance {
        let n = self.members.len();
        let mut inst = self.pool.pop().unwrap_or(Instance {
            seq,
            slots: Vec::new(),
            exits: Vec::new(),
            synced: Vec::new(),
            ubs: Vec::new(),
            arrived: 0,
            real: 0,
            first_ns: 0,
            last_ns: 0,
            sig: 0,
            op: 0,
            bytes: 0,
            ub: 0,
            sig_by: u32::MAX,
            ub_by: u32::MAX,
            finished: false,
            ub_recorded: false,
            late: false,
            lag: 0,
            hidden: 0,
            parked: 0,
            stall_raised: false,
            unverified: false,
        });
        inst.reset(seq, n);
        inst
    }

    /// Makes sure instance `seq` exists; false when it is older than the kept history.
    fn ensure(&mut self, seq: u64, cfg: &Config, out: &mut LaneOut) -> bool {
        if seq < self.base_seq {
            return false;
        }
        if self.instances.is_empty() {
            self.base_seq = seq;
        }
        let end = self.end_seq();
        if seq >= end + cfg.max_open_instances as u64 {
            // A jump far ahead (a member far out of step): start over from here.
            out.evicted_open += self.open as u64;
            while let Some(i) = self.instances.pop_front() {
                self.pool.push(i);
            }
            self.open = 0;
            self.base_seq = seq;
        }
        while self.end_seq() <= seq {
            let s = self.end_seq();
            let inst = self.take_instance(s);
            self.instances.push_back(inst);
            self.open += 1;
        }
        true
    }

    fn place(&mut self, m: u32, seq: u64, c: MemberCall, cfg: &Config, out: &mut LaneOut) {
        if !self.ensure(seq, cfg, out) {
            out.dropped_calls += 1;
            return;
        }
        let i = (seq - self.base_seq) as usize;
        let n = self.members.len();
        let inst = &mut self.instances[i];
        if inst.slots.len() < n {
            inst.slots.resize(n, ABSENT);
        }
        if inst.exits.len() < n {
            inst.exits.resize(n, 0);
            inst.synced.resize(n, NO_SYNC);
        }
        if inst.ubs.len() < n {
            inst.ubs.resize(n, 0);
        }
        inst.exits[m as usize] = c.exit_ns;
        inst.synced[m as usize] = c.synced_ns;
        inst.ubs[m as usize] = c.ub;
        let slot = &mut inst.slots[m as usize];
        if *slot != ABSENT {
            return; // duplicate (cannot happen with a consistent stream)
        }
        *slot = c.entry_ns;
        inst.arrived += 1;
        inst.real += 1;
        inst.first_ns = inst.first_ns.min(c.entry_ns);
        inst.last_ns = inst.last_ns.max(c.entry_ns);
        if inst.sig_by == u32::MAX {
            inst.sig = c.sig;
            inst.sig_by = m;
            inst.op = c.op;
            inst.bytes = c.bytes;
        }
        if c.ub != 0 && (inst.ub == 0 || c.ub < inst.ub) {
            inst.ub = c.ub;
            inst.ub_by = m;
        }
        self.note_called_after_leaving(m, seq, c.entry_ns, out);
        self.check_finished(i, cfg, out);
        self.trim(cfg, out);
    }

    /// A live member's call at `seq`, past the last instance of a member that left.
    fn note_called_after_leaving(&mut self, m: u32, seq: u64, at: u64, out: &mut LaneOut) {
        if self.members[m as usize].left_ns.is_some() {
            return;
        }
        for (d, mm) in self.members.iter_mut().enumerate() {
            if mm.left_ns.is_none() || mm.left_reported {
                continue;
            }
            if mm.last_seq.is_some_and(|l| seq > l) {
                mm.left_reported = true;
                out.called_after_leaving.push(CalledAfterLeaving {
                    lane_id: self.id,
                    departed: d as u32,
                    survivor: m,
                    seq,
                    at_ns: at,
                });
            }
        }
    }

    fn check_finished(&mut self, i: usize, cfg: &Config, out: &mut LaneOut) {
        if self.pending > 0 {
            return;
        }
        let seq = self.instances[i].seq;
        let exp = self.expected(seq);
        let inst = &self.instances[i];
        if inst.finished || exp == 0 || inst.arrived < exp {
            return;
        }
        self.finish(i, cfg, out);
    }

    fn finish(&mut self, i: usize, cfg: &Config, out: &mut LaneOut) {
        // Arrivals that contradict each other are a numbering error, not evidence.
        let inconsistent = !consistent(&self.instances[i]);
        if inconsistent {
            self.inconsistent += 1;
            self.repair_due = true;
        }
        let unverified = self.unverified_since.is_some() || inconsistent;
        let threshold = self.stall_threshold(cfg);
        let inst = &mut self.instances[i];
        inst.finished = true;
        inst.unverified = unverified;
        self.open -= 1;
        self.finished_total += 1;
        let (seq, first, real) = (inst.seq, inst.first_ns, inst.real);
        // A member that left ends the wait when it leaves, not at the last arrival.
        let ended = inst.last_ns.max(self.leaving_ns);
        let mut stalled = inst.stall_raised;
        if stalled {
            out.resolved_stalls.push((self.id, seq, ended));
        } else if real >= 2
            && !unverified
            && self.suspect_since.is_none()
            && self.last_loss_ns < first
            && inst.last_ns.saturating_sub(first) >= threshold
        {
            // Every arrival came in at once (records of calls blocked waiting for the late
            // member arrive only when they return): a stall seen once it is over.
            stalled = true;
            let late_from = first + threshold;
            let (mut arrived, mut missing) = (Vec::new(), Vec::new());
            for (m, &e) in inst.slots.iter().enumerate() {
                if e >= EXCUSED {
                    continue;
                }
                if e >= late_from {
                    missing.push(m as u32);
                } else {
                    arrived.push(m as u32);
                }
            }
            out.past_stalls.push((
                self.id,
                StallInfo {
                    seq,
                    first_ns: first,
                    op: inst.op,
                    arrived,
                    missing,
                    threshold_ns: threshold,
                    ended_ns: Some(inst.last_ns),
                },
            ));
        }
        if !stalled && real > 0 {
            self.note_period(seq, first);
        }
        if real < 2 {
            return;
        }
        let inst = &self.instances[i];
        // Late member, its lag behind the others' median, the wait the others absorbed.
        let (first, last) = (inst.first_ns, inst.last_ns);
        let late = inst.slots.iter().position(|&e| e == last).unwrap_or(0) as u32;
        let mut others: [i64; 64] = [0; 64];
        let mut k = 0usize;
        let mut waited = 0u64;
        for (mi, &e) in inst.slots.iter().enumerate() {
            if e >= EXCUSED || mi as u32 == late {
                continue;
            }
            waited += last - e;
            if k < others.len() {
                others[k] = e as i64;
                k += 1;
            }
        }
        let med_others = median_i64(&mut others[..k]) as u64;
        // Less what is not its own doing: being held longer than the others in the previous
        // call once that was complete (the root of a star returns after serving everyone),
        // and waiting longer than them since, for other ranks or the device (a pipeline's
        // last stage reaches the step's collective after waiting for its upstream's last
        // micro-batch; a rank waits for its GPU, having had no slack left to hide its work
        // behind the wait for the others): the rank it waited for made everyone late.
        let held = match i.checked_sub(1).map(|p| &self.instances[p]) {
            Some(prev) if prev.finished && prev.seq + 1 == seq => {
                excess(&prev.slots, late as usize, |mi| {
                    let x = prev.exits.get(mi).copied().unwrap_or(0);
                    (x != 0).then(|| x.saturating_sub(prev.last_ns))
                })
            }
            _ => 0,
        };
        let synced = excess(&inst.slots, late as usize, |mi| {
            let y = inst.synced.get(mi).copied().unwrap_or(NO_SYNC);
            (y != NO_SYNC).then_some(y)
        });
        let lag = last
            .saturating_sub(med_others)
            .saturating_sub(held)
            .saturating_sub(synced);
        let (op, bytes, ub, seq) = (inst.op, inst.bytes, inst.ub, inst.seq);
        let (slice_ns, slices) = (self.slice_ns, self.slices);
        // Per-rank arrival lag behind the first arrival.
        for mi in 0..self.instances[i].slots.len().min(self.series_cap) {
            let e = self.instances[i].slots[mi];
            if e >= EXCUSED {
                continue;
            }
            self.members[mi]
                .rank_lag
                .get_or_insert_with(|| RollingHist::coarse(slice_ns, slices))
                .record(first, e - first);
        }
        if let Some(s) = self.series_for(op, bytes) {
            self.series[s].skew.record(first, last - first);
        }
        self.instances[i].late = lag >= cfg.straggler_lag_threshold(self.period_ns);
        self.instances[i].lag = lag;
        if ub != 0 {
            self.record_completion(i);
        }
        let hidden = self.instances[i].hidden.min(lag);
        let lag = lag - hidden;
        let waited = waited.saturating_sub(hidden * k as u64);
        // A stall is reported as the stall it was, not as a straggler's evidence.
        if !unverified && !stalled {
            let parked = self.instances[i].parked;
            self.evidence_ring.push(EvidenceEntry {
                seq,
                start_ns: first,
                end_ns: last,
                late,
                lag_ns: lag,
                waited_ns: waited,
                others: (k as u32).max(1),
                op,
                after_ns: parked,
            });
        }
    }

    /// Records the instance's completion bound (its time after the last arrival) and how
    /// much of the last arrival's lag the device hid. With asynchronous collectives a rank
    /// that enqueues late costs the others nothing while the devices are still busy with
    /// work queued before: the collective then completes as late as usual, so its time after
    /// the last arrival is shorter than usual by the part of the lag that was hidden. When
    /// that covers the lag (see [`absorbed`]) the instance is not late: the waiting charged
    /// to the late rank goes with it. With blocking calls the completion follows the last arrival
    /// by the collective's own time whoever is late, so nothing is taken off. (When a rank
    /// is late in nearly every instance there is no typical time without it and this cannot
    /// tell: see docs/findings.md.)
    fn record_completion(&mut self, i: usize) {
        let inst = &mut self.instances[i];
        if inst.ub_recorded || inst.ub == 0 || inst.real == 0 {
            return;
        }
        inst.ub_recorded = true;
        let (op, bytes, first, last, ub, seq, late) = (
            inst.op,
            inst.bytes,
            inst.first_ns,
            inst.last_ns,
            inst.ub,
            inst.seq,
            inst.late,
        );
        let dur = ub.saturating_sub(last).max(1);
        let n = self.nranks.max(inst.real);
        let bw = busbw_mbps(op, bytes, n, dur);
        if let Some(s) = self.series_for(op, bytes) {
            let typical = self.series[s].on_time.pctl(last);
            if late && typical.count >= MIN_TYPICAL {
                let hidden = absorbed(typical.p50, dur, self.instances[i].lag);
                self.instances[i].hidden = hidden;
                self.evidence_ring.hide(seq, hidden);
            } else if late {
                // No typical time yet: its evidence waits for one (or, when nearly every
                // instance is late and none comes, is taken as it is).
                self.instances[i].parked = dur;
                self.evidence_ring.park(seq, dur);
                if self.evidence_ring.parked() >= MAX_PARKED {
                    self.evidence_ring.settle(None);
                }
            } else {
                self.series[s].on_time.record(first, dur);
                let typical = self.series[s].on_time.pctl(last);
                if typical.count >= MIN_TYPICAL {
                    self.evidence_ring.settle(Some(typical.p50));
                }
            }
            self.series[s].completion.record(first, dur);
            if let Some(bw) = bw {
                self.series[s].busbw_mbps.record(first, bw);
            }
        }
    }

    /// A sync that returned at `ub` covered call `call` of member `m`.
    pub fn set_ub(&mut self, m: u32, call: u64, ub: u64) {
        let Some(mm) = self.members.get_mut(m as usize) else {
            return;
        };
        if call < mm.calls_base {
            return;
        }
        if let Some(c) = mm.calls.get_mut((call - mm.calls_base) as usize) {
            if c.ub == 0 || ub < c.ub {
                c.ub = ub;
            }
        }
        let Some(o) = mm.offset else { return };
        let seq = call as i64 + o;
        if seq < self.base_seq as i64 {
            return;
        }
        let i = (seq as u64 - self.base_seq) as usize;
        if let Some(inst) = self.instances.get_mut(i) {
            if inst.ub == 0 || ub < inst.ub {
                inst.ub = ub;
                inst.ub_by = m;
            }
            if let Some(u) = inst.ubs.get_mut(m as usize) {
                if *u == 0 || ub < *u {
                    *u = ub;
                }
            }
            if inst.finished {
                if !consistent(inst) {
                    self.repair_due = true;
                }
                self.record_completion(i);
            }
        }
    }

    fn trim(&mut self, cfg: &Config, out: &mut LaneOut) {
        while self.instances.len() > cfg.instance_history {
            let front_finished = self.instances.front().is_some_and(|f| f.finished);
            if !front_finished && self.open <= cfg.max_open_instances {
                break;
            }
            if let Some(f) = self.instances.pop_front() {
                if !f.finished {
                    self.open -= 1;
                    out.evicted_open += 1;
                    if f.stall_raised {
                        out.resolved_stalls
                            .push((self.id, f.seq, f.last_ns.max(self.leaving_ns)));
                    }
                }
                self.base_seq += 1;
                self.pool.push(f);
            }
        }
    }

    fn recheck_all(&mut self, cfg: &Config, out: &mut LaneOut) {
        for i in 0..self.instances.len() {
            if !self.instances[i].finished {
                self.check_finished(i, cfg, out);
            }
        }
        self.trim(cfg, out);
    }

    /// A member left (process exit, communicator destroyed): it is not expected at instances
    /// after its last call.
    pub fn member_left(&mut self, m: u32, t: u64, cfg: &Config, out: &mut LaneOut) {
        let Some(mm) = self.members.get_mut(m as usize) else {
            return;
        };
        if mm.left_ns.is_some() {
            return;
        }
        let was_pending = mm.pending();
        mm.left_ns = Some(t);
        mm.last_seq = mm
            .next_seq()
            .and_then(|n| n.checked_sub(1))
            .filter(|&l| l >= mm.first_seq);
        if mm.last_seq.is_none() && mm.offset.is_some() {
            // Never took part: not expected anywhere.
            mm.first_seq = u64::MAX;
        }
        if was_pending {
            self.pending -= 1;
        }
        self.recompute_expected();
        self.leaving_ns = t;
        self.recheck_all(cfg, out);
        self.leaving_ns = 0;
    }

    /// Lost events may have hidden arrivals of this lane.
    pub fn mark_unverified(&mut self, t: u64) {
        self.unverified_since = Some(self.unverified_since.map_or(t, |u| u.max(t)));
        self.suspect_since = Some(self.suspect_since.map_or(t, |u| u.max(t)));
        self.last_loss_ns = self.last_loss_ns.max(t);
    }

    /// Periodic work at safe event time `now`: align members that waited long enough, resolve
    /// unverified lanes, and return the oldest open instance when it has stalled.
    pub fn tick(&mut self, now: u64, cfg: &Config, out: &mut LaneOut) -> Option<StallInfo> {
        self.repair_if_due(cfg, out);
        if self.pending > 0 {
            for m in 0..self.members.len() {
                let mm = &self.members[m];
                if mm.pending()
                    && !mm.calls.is_empty()
                    && now.saturating_sub(mm.pending_since) >= cfg.align_timeout_ns
                {
                    self.align(m as u32, cfg, out);
                }
            }
        }
        if let Some(since) = self.unverified_since {
            if self.pending == 0 && now >= since.saturating_add(cfg.align_timeout_ns) {
                self.verify(cfg, out);
            }
        }
        if self.open == 0 {
            if let Some(since) = self.suspect_since {
                if now >= since && now.saturating_sub(self.last_ns) >= cfg.reorder_window_ns {
                    // Quiet and nothing open: every member is at the same instance again.
                    self.suspect_since = None;
                }
            }
            return None;
        }
        if self.pending > 0 {
            return None;
        }
        let i = self.instances.iter().position(|x| !x.finished)?;
        let threshold = self.stall_threshold(cfg);
        let inst = &self.instances[i];
        if inst.real == 0 || now.saturating_sub(inst.first_ns) < threshold {
            return None;
        }
        let seq = inst.seq;
        let mut arrived = Vec::new();
        let mut missing = Vec::new();
        for (m, mm) in self.members.iter().enumerate() {
            if !mm.expected_at(seq) {
                continue;
            }
            if inst.slots.get(m).copied().unwrap_or(ABSENT) == ABSENT {
                missing.push(m as u32);
            } else {
                arrived.push(m as u32);
            }
        }
        if missing.is_empty() {
            return None;
        }
        if self.suspect_since.is_some() || self.last_loss_ns >= inst.first_ns {
            // Possibly lost arrivals: shift the behind members instead of raising a stall.
            self.stalls_suppressed += 1;
            self.realign_behind(&missing, cfg, out);
            return None;
        }
        let (first_ns, op) = (inst.first_ns, inst.op);
        self.instances[i].stall_raised = true;
        Some(StallInfo {
            seq,
            first_ns,
            op,
            arrived,
            missing,
            threshold_ns: threshold,
            ended_ns: None,
        })
    }

    // ---- views ----

    /// The first arrival of the oldest instance still open, if any.
    pub fn oldest_open_ns(&self) -> Option<u64> {
        self.instances
            .iter()
            .filter(|x| !x.finished && x.arrived > 0)
            .map(|x| x.first_ns)
            .min()
    }

    pub fn open_instances(&self) -> usize {
        self.open
    }

    pub fn rank_lag(&self, m: usize, now: u64) -> Pctl {
        self.members[m]
            .rank_lag
            .as_ref()
            .map(|h| h.pctl(now))
            .unwrap_or_default()
    }

    pub fn rank_latency(&self, m: usize, now: u64) -> Pctl {
        self.members[m]
            .rank_latency
            .as_ref()
            .map(|h| h.pctl(now))
            .unwrap_or_default()
    }

    /// Matched instances kept, oldest first: (seq, entry per member (None = not arrived),
    /// finished, completion upper bound). For tests and detailed views.
    pub fn instances(
        &self,
    ) -> impl Iterator<Item = (u64, Vec<Option<u64>>, bool, Option<u64>)> + '_ {
        self.instances.iter().map(|i| {
            let mut slots: Vec<Option<u64>> = i
                .slots
                .iter()
                .map(|&e| if e >= EXCUSED { None } else { Some(e) })
                .collect();
            slots.resize(self.members.len(), None);
            (i.seq, slots, i.finished, (i.ub != 0).then_some(i.ub))
        })
    }
}

/// Whether an instance's arrivals agree with its completion bounds: no member arrived after
/// another member's call was seen complete (for the calls whose completion needs every
/// member: see `Arrival::exit_bounds` and the syncs of `completion`).
fn consistent(inst: &Instance) -> bool {
    // The tightest bound, and the tightest of any other member.
    let (mut b1, mut by1, mut b2) = (u64::MAX, usize::MAX, u64::MAX);
    for (m, &u) in inst.ubs.iter().enumerate() {
        if u == 0 {
            continue;
        }
        if u < b1 {
            b2 = b1;
            b1 = u;
            by1 = m;
        } else if u < b2 {
            b2 = u;
        }
    }
    if b1 == u64::MAX {
        return true;
    }
    inst.slots.iter().enumerate().all(|(m, &e)| {
        let bound = if m == by1 { b2 } else { b1 };
        e >= EXCUSED || e <= bound
    })
}

/// How much more than the other members (their median) member `m` has of what `of` measures
/// at an instance (`slots` tell who took part): 0 when not more or not known.
fn excess(slots: &[u64], m: usize, of: impl Fn(usize) -> Option<u64>) -> u64 {
    let known = |mi: usize| -> Option<u64> {
        let e = *slots.get(mi)?;
        if e >= EXCUSED {
            return None;
        }
        of(mi)
    };
    let Some(mine) = known(m) else {
        return 0;
    };
    let mut others: [i64; 64] = [0; 64];
    let mut k = 0usize;
    for mi in (0..slots.len()).filter(|&mi| mi != m) {
        if let Some(v) = known(mi) {
            if k < others.len() {
                others[k] = v as i64;
                k += 1;
            }
        }
    }
    if k == 0 {
        return 0;
    }
    mine.saturating_sub(median_i64(&mut others[..k]) as u64)
}

/// Bus bandwidth in MB/s with the nccl-tests factors, from the per-rank byte count of the call
/// (`bytes` = count × type size as passed to NCCL) over `dur_ns`. None for groups, graph steps
/// and unknown sizes.
pub fn busbw_mbps(op: u16, bytes: u64, n: u32, dur_ns: u64) -> Option<u64> {
    let (size, factor) = bus_factor(op, bytes, n)?;
    let algbw = size as f64 / dur_ns.max(1) as f64 * 1e3; // bytes/ns -> MB/s
    Some((algbw * factor).round().max(1.0) as u64)
}

/// nccl-tests' (message size, bus-bandwidth factor) for a collective of any library: all-
/// reduce 2(n-1)/n on the buffer size; all-gather, reduce-scatter, all-to-all, gather and
/// scatter (n-1)/n on the total (per-rank count × n); broadcast and reduce 1. None for
/// groups, graph steps, barriers and unknown sizes.
pub fn bus_factor(op: u16, bytes: u64, n: u32) -> Option<(u64, f64)> {
    use llmdd_common::funcs::CommOp::*;
    if bytes == 0 || n == 0 {
        return None;
    }
    let nf = n as f64;
    match llmdd_common::funcs::spec(op)?.roles.comm_op? {
        AllReduce => Some((bytes, 2.0 * (nf - 1.0) / nf)),
        AllGather | ReduceScatter | AllToAll | Gather | Scatter => {
            Some((bytes.saturating_mul(n as u64), (nf - 1.0) / nf))
        }
        Broadcast | Reduce => Some((bytes, 1.0)),
        Barrier | Send | Recv => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            align_min_calls: 4,
            ..Config::default()
        }
    }

    fn arr(t: u64) -> Arrival {
        Arrival {
            entry_ns: t,
            exit_ns: Some(t + 10),
            sig: 7,
            bytes: 1024,
            op: 0,
            sync_ns: 0,
            exit_bounds: false,
        }
    }

    #[test]
    fn members_from_init_match_by_sequence() {
        let c = cfg();
        let mut l = Lane::new(1, Evidence::Collectives, 0, &c);
        let a = l.add_member(0, 10, Some(0), true, 0);
        let b = l.add_member(1, 11, Some(1), true, 0);
        let mut out = LaneOut::default();
        for k in 0..10u64 {
            l.arrive(a, arr(1000 * k), &c, &mut out);
        }
        for k in 0..10u64 {
            l.arrive(b, arr(1000 * k + 300), &c, &mut out);
        }
        assert_eq!(l.finished_total, 10);
        assert_eq!(l.open_instances(), 0);
        let e = l.evidence_ring.iter().next().expect("evidence");
        assert_eq!((e.late, e.lag_ns, e.waited_ns), (b, 300, 300));
    }

    #[test]
    fn late_joiner_is_aligned_by_time_and_signature() {
        let c = cfg();
        let mut l = Lane::new(1, Evidence::Collectives, 0, &c);
        let mut out = LaneOut::default();
        let a = l.add_member(0, 10, Some(0), false, 0);
        // a: a call every 1000 ns from t=0; b attached later and first saw a's 5th instance.
        for k in 0..12u64 {
            l.arrive(a, arr(1000 * k), &c, &mut out);
        }
        let b = l.add_member(1, 11, Some(1), false, 0);
        for k in 5..12u64 {
            l.arrive(b, arr(1000 * k + 100), &c, &mut out);
        }
        let inst: Vec<_> = l.instances().collect();
        for (seq, slots, _, _) in &inst {
            if *seq >= 5 {
                assert_eq!(slots[1], Some(1000 * seq + 100), "seq {seq}");
            } else {
                assert_eq!(slots[1], None);
            }
        }
        assert_eq!(l.open_instances(), 0);
    }

    #[test]
    fn causality_beats_time_for_a_late_straggler() {
        // b lags 700 ns with a period of 1000: by time alone its call k looks closest to a's
        // k+1, but both ranks' syncs saw instance k complete before anyone called k+1.
        let c = cfg();
        let mut l = Lane::new(1, Evidence::Collectives, 0, &c);
        let mut out = LaneOut::default();
        let a = l.add_member(0, 10, Some(0), false, 0);
        for k in 0..12u64 {
            let idx = l.arrive(a, arr(1000 * k), &c, &mut out);
            // a's sync returns once b's call k is in: at 1000k + 750.
            l.set_ub(a, idx, 1000 * k + 750);
        }
        let b = l.add_member(1, 11, Some(1), false, 0);
        for k in 3..12u64 {
            let idx = l.arrive(b, arr(1000 * k + 700), &c, &mut out);
            l.set_ub(b, idx, 1000 * k + 750);
        }
        for (seq, slots, _, _) in l.instances() {
            if seq >= 3 {
                assert_eq!(slots[1], Some(1000 * seq + 700), "seq {seq}");
            }
        }
    }

    #[test]
    fn stall_names_missing_then_member_left_closes_it() {
        let c = cfg();
        let mut l = Lane::new(1, Evidence::Collectives, 0, &c);
        let mut out = LaneOut::default();
        let m: Vec<u32> = (0..3)
            .map(|r| l.add_member(r, 10 + r, Some(r), true, 0))
            .collect();
        l.arrive(m[0], arr(100), &c, &mut out);
        l.arrive(m[1], arr(120), &c, &mut out);
        assert!(l.tick(1_000, &c, &mut out).is_none());
        let s = l
            .tick(100 + c.stall_threshold_ns, &c, &mut out)
            .expect("stall");
        assert_eq!(
            (s.seq, s.missing.clone(), s.arrived.clone()),
            (0, vec![2], vec![0, 1])
        );
        l.member_left(m[2], 5_000_000_000, &c, &mut out);
        assert_eq!(out.resolved_stalls, vec![(1, 0, 5_000_000_000)]);
        assert_eq!(l.open_instances(), 0);
    }

    #[test]
    fn unverified_lane_realigns_instead_of_stalling() {
        let c = cfg();
        let mut l = Lane::new(1, Evidence::Collectives, 0, &c);
        let mut out = LaneOut::default();
        let a = l.add_member(0, 10, Some(0), true, 0);
        let b = l.add_member(1, 11, Some(1), true, 0);
        // b's call 2 is lost: b's calls 3..5 land one instance early, instance 5 lacks b.
        for k in 0..6u64 {
            l.arrive(a, arr(1000 * k), &c, &mut out);
            if k != 2 {
                l.arrive(b, arr(1000 * k + 50), &c, &mut out);
            }
        }
        l.mark_unverified(2000);
        assert!(l.tick(5000 + c.stall_threshold_ns, &c, &mut out).is_none());
        assert_eq!(out.realigned, vec![(b, 1)]);
        assert_eq!(l.open_instances(), 0);
        assert!(l.suspect_since.is_none());
    }

    /// Calls that block until every member arrived (MPI's all-reduce): a call's return
    /// bounds its instance. Member b's first call was never seen (no loss was reported), so
    /// its calls are numbered one instance early: each then arrives after a's call of that
    /// instance returned, which cannot be. The numbering is repaired at the first such
    /// instance, and b's lag is measured against the right instance from then on.
    #[test]
    fn contradicting_arrivals_repair_the_numbering() {
        let c = cfg();
        let mut l = Lane::new(1, Evidence::Collectives, 0, &c);
        let mut out = LaneOut::default();
        let a = l.add_member(0, 10, Some(0), true, 0);
        let b = l.add_member(1, 11, Some(1), true, 0);
        let blocking = |entry: u64, exit: u64| Arrival {
            entry_ns: entry,
            exit_ns: Some(exit),
            exit_bounds: true,
            ..arr(entry)
        };
        // Period 1000; b arrives 800 after a, and both return at b's arrival.
        for k in 0..20u64 {
            l.arrive(a, blocking(1000 * k, 1000 * k + 801), &c, &mut out);
            if k > 0 {
                l.arrive(b, blocking(1000 * k + 800, 1000 * k + 801), &c, &mut out);
            }
        }
        assert!(l.inconsistent >= 1);
        assert_eq!(l.realignments, 1);
        assert_eq!(out.realigned, vec![(b, 1)]);
        for (seq, slots, finished, _) in l.instances() {
            if seq >= 1 {
                assert_eq!(slots[1], Some(1000 * seq + 800), "seq {seq}");
            }
            assert!(finished || seq == 19, "seq {seq} open");
        }
        // Every evidence entry is the right instance: b 800 late.
        assert!(l.evidence_ring.len() >= 17);
        assert!(l
            .evidence_ring
            .iter()
            .all(|e| e.late == b && e.lag_ns == 800));
    }

    #[test]
    fn bus_bandwidth_factors() {
        // 1 GB all-reduce on 8 ranks in 10 ms: algbw 100 GB/s, busbw 175 GB/s.
        assert_eq!(busbw_mbps(0, 1_000_000_000, 8, 10_000_000), Some(175_000));
        let (size, f) = bus_factor(1, 1000, 4).expect("all-gather");
        assert_eq!((size, f), (4000, 0.75));
        assert_eq!(bus_factor(3, 1000, 4), Some((1000, 1.0)));
        assert_eq!(bus_factor(GROUP_OP, 1000, 4), None);
    }
}
