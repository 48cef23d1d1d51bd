//! Collective and point-to-point calls, `ncclGroupStart`/`End` groups, and communicator
//! creation (init, split) and teardown: each collective becomes an arrival of its member at
//! an instance of its communicator's lane (see `matching`); sends and receives feed the
//! pipeline-stage evidence (see `bubbles`).

use llmdd_common::funcs::{self, CallKind, FuncSpec};

use super::{
    comm::CallFacts,
    completion::PendingWork,
    matching::{Arrival, GROUP_OP},
    procs::ProcId,
    util::{fmt_ns, mix},
    Busy, Engine, Raise,
};
use crate::events::CallEvent;

/// An NCCL call waiting in an open group (ncclGroupStart .. ncclGroupEnd on one thread).
#[derive(Clone, Debug)]
pub(super) struct NcclOp {
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

impl NcclOp {
    fn spec(&self) -> &'static FuncSpec {
        funcs::spec(self.func).unwrap_or(&funcs::FUNCS[0])
    }
}

#[derive(Default)]
pub(super) struct GroupState {
    depth: u32,
    /// When the outermost ncclGroupStart was entered.
    start_ns: u64,
    ops: Vec<NcclOp>,
}

/// A group open this long, or holding this many calls, lost its ncclGroupEnd record: its
/// calls are released as one instance rather than swallowing the thread's later calls.
const GROUP_MAX_NS: u64 = 1_000_000_000;
const GROUP_MAX_OPS: usize = 1024;

/// Whether an NCCL-style return code means the call was accepted: success (0), or
/// ncclInProgress (7), a successful enqueue on a non-blocking communicator.
fn accepted(ret: Option<i64>) -> bool {
    ret.is_none_or(|r| r == 0 || r == 7)
}

impl Engine {
    /// A collective or point-to-point call: held in its thread's open group, or submitted.
    /// Places the handle of a collective recorded into a graph being captured in its
    /// communicator (so that the graph names it, and graph launches group by it) without an
    /// arrival: nothing runs at capture.
    pub(super) fn place_captured(&mut self, proc: ProcId, c: &CallEvent) -> Option<u64> {
        let handle = c.comm.filter(|_| accepted(c.ret))?;
        let facts = CallFacts {
            family: c.family(),
            proc,
            pid: c.pid,
            handle,
            rank: c.rank,
            nranks: c.nranks,
            sig: 0,
            t: c.entry_ns,
        };
        let r = self
            .comms
            .resolve(&facts, &self.procs, &mut self.lanes, &self.cfg);
        self.comms_recycled();
        r.map(|r| self.comms.list[r.comm as usize].id)
    }

    pub(super) fn on_comm_call(&mut self, proc: ProcId, c: &CallEvent, busy: Busy) {
        if !accepted(c.ret) {
            self.counts.call_errors += 1;
            return;
        }
        let Some(handle) = c.comm else {
            self.counts.calls_without_comm += 1;
            return;
        };
        let kind = c.spec().kind;
        let op = NcclOp {
            func: c.func,
            kind,
            handle,
            rank: c.rank,
            nranks: c.nranks,
            bytes: c.bytes.unwrap_or(0),
            sig: mix(&[
                c.func as u64,
                c.bytes.unwrap_or(0),
                c.op.unwrap_or(u64::MAX),
                c.dtype.unwrap_or(u64::MAX),
                if kind == CallKind::Collective {
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
        // A GPU submission only where the call names a stream: MPI's and Gloo's collectives
        // run on the host, and a CPU job has no submission gaps.
        if c.stream.is_some() {
            self.submitted(proc, stream, c, busy);
        }
    }

    pub(super) fn on_group_start(&mut self, proc: ProcId, c: &CallEvent) {
        if c.ret.is_none_or(|r| r == 0) {
            let g = self.groups.entry((proc, c.tid)).or_default();
            if g.depth == 0 {
                g.start_ns = c.entry_ns;
            }
            g.depth += 1;
        }
    }

    /// The outermost `ncclGroupEnd` submits the group's operations (enqueued on the stream
    /// here).
    pub(super) fn on_group_end(&mut self, proc: ProcId, c: &CallEvent, busy: Busy) {
        let Some(g) = self.groups.get_mut(&(proc, c.tid)) else {
            return;
        };
        g.depth = g.depth.saturating_sub(1);
        if g.depth != 0 {
            return;
        }
        let ops = std::mem::take(&mut g.ops);
        if !ops.is_empty() && accepted(c.ret) {
            self.nccl_ops(proc, c.pid, &ops, c.entry_ns, c.exit_ns);
            self.submitted(proc, ops[0].stream, c, busy);
        }
        if let Some(g) = self.groups.get_mut(&(proc, c.tid)) {
            g.ops = ops;
            g.ops.clear();
        }
    }

    pub(super) fn on_comm_init(&mut self, proc: ProcId, c: &CallEvent) {
        if !accepted(c.ret) {
            return;
        }
        let (Some(uid), Some(handle)) = (c.uid_hash, c.comm) else {
            return;
        };
        let t = c.exit_ns.unwrap_or(c.entry_ns);
        let r = self.comms.init(
            c.family(),
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

    /// `ncclCommSplit`, `MPI_Comm_split`, `MPI_Comm_dup`: a child communicator.
    pub(super) fn on_comm_split(&mut self, proc: ProcId, c: &CallEvent) {
        if c.ret.is_some_and(|r| r != 0) {
            return;
        }
        let Some(parent) = c.comm else {
            return;
        };
        let new = c.out.unwrap_or(0);
        // A dup (MPI_Comm_dup: the new handle is argument 1) is a split with one color for
        // every rank.
        let color = if c.spec().roles.out == 1 {
            0
        } else {
            c.args[1] as u32 as i32 as i64
        };
        let t = c.exit_ns.unwrap_or(c.entry_ns);
        // A parent not seen in a collective yet (MPI's world communicator, split before its
        // first use) is grouped now, as a collective on it would be, so that its children
        // can be matched by split sequence.
        if !self.comms.knows(proc, parent) {
            let facts = CallFacts {
                family: c.family(),
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

    /// `ncclCommDestroy`/`ncclCommAbort`: the member leaves its communicator.
    pub(super) fn on_comm_end(&mut self, proc: ProcId, c: &CallEvent) {
        let Some(handle) = c.comm else {
            return;
        };
        let t = c.entry_ns;
        let Some((ci, m)) = self.comms.end(proc, handle, t) else {
            return;
        };
        let (lane, lm) = {
            let comm = &self.comms.list[ci as usize];
            (comm.lane, comm.members[m as usize].lane_member)
        };
        if c.func == funcs::id::NCCL_COMM_ABORT {
            self.member_left(lane, lm, t, "aborted the communicator", Raise::Always);
        } else {
            self.member_left(lane, lm, t, "destroyed the communicator", Raise::IfWaitedOn);
        }
    }

    /// Drops what was keyed by communicator slots that were reused for new communicators.
    pub(super) fn comms_recycled(&mut self) {
        if self.comms.recycled.is_empty() {
            return;
        }
        for c in std::mem::take(&mut self.comms.recycled) {
            let lane = self.comms.list[c as usize].lane;
            self.stragglers.remove(&lane);
            self.pipeline_blame.remove(&lane);
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
            let fop = if same.len() == 1 { op.func } else { GROUP_OP };
            let facts = CallFacts {
                family: op.spec().family,
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
            let exit_bounds = same.iter().all(|o| {
                let spec = o.spec();
                spec.family.collectives_block_host()
                    && spec.roles.comm_op.is_some_and(|c| c.needs_every_rank())
            });
            let a = Arrival {
                entry_ns: entry,
                exit_ns: exit,
                sig,
                bytes,
                op: fop,
                sync_ns: 0,
                exit_bounds,
            };
            self.arrive(r.lane, r.lane_member, a, proc, op.stream);
        }
        // Point-to-point: matched per direction for pipeline bubbles.
        for op in ops.iter().filter(|o| o.kind == CallKind::P2p) {
            let facts = CallFacts {
                family: op.spec().family,
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
            if let (Some(me), true) = (rank, op.peer.is_some_and(|p| p >= 0)) {
                self.bubbles.transfer(r.comm, me, proc, entry, &self.cfg);
            }
            self.positions.last_arrival.insert(proc, entry);
        }
    }

    pub(super) fn arrive(&mut self, lane: u32, m: u32, mut a: Arrival, proc: ProcId, stream: u64) {
        let entry = a.entry_ns;
        self.positions.last_arrival.insert(proc, entry);
        a.sync_ns = self.procs.proc(proc).waited_ns;
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

    pub(super) fn drain_out(&mut self) {
        if self.out.resolved_stalls.is_empty()
            && self.out.past_stalls.is_empty()
            && self.out.realigned.is_empty()
            && self.out.called_after_leaving.is_empty()
            && self.out.dropped_calls == 0
            && self.out.evicted_open == 0
        {
            return;
        }
        for c in std::mem::take(&mut self.out.called_after_leaving) {
            self.called_after_leaving(c);
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
}
