//! Calls on the device side: kernel and graph launches and copies (GPU submissions, for the
//! submission-gap bubbles, and graph launches as steps of their group's lane), syncs and
//! event queries (completion bounds of the collectives they cover, see `completion`), and
//! allocations (see `memory`).

use llmdd_common::funcs::{CallKind, SyncScope};

use super::{
    matching::{Arrival, GRAPH_OP},
    procs::ProcId,
    Busy, Engine,
};
use crate::events::CallEvent;

/// cudaErrorNotReady / CUDA_ERROR_NOT_READY is 600; success (0) means complete.
const COMPLETE: i64 = 0;

impl Engine {
    /// A GPU submission (launch, copy, collective, group, graph) returned: the gap since the
    /// process's previous one counts towards its stream's submission gaps.
    pub(super) fn submitted(&mut self, proc: ProcId, stream: u64, c: &CallEvent, busy: Busy) {
        if let Some(a) = self.bubbles.submission(
            proc,
            stream,
            c.entry_ns,
            c.exit_ns.unwrap_or(c.entry_ns),
            busy.calls,
            busy.sync_ns,
            &self.cfg,
        ) {
            self.bubble_alert(a);
        }
    }

    pub(super) fn on_submission(&mut self, proc: ProcId, c: &CallEvent, busy: Busy) {
        if let Some(stream) = c.stream {
            self.submitted(proc, stream, c, busy);
        }
    }

    /// A graph launch: a step of the process's graph-launch group.
    pub(super) fn on_graph_launch(&mut self, proc: ProcId, c: &CallEvent, busy: Busy) {
        if c.ret.is_some_and(|r| r != 0) {
            self.counts.call_errors += 1;
            return;
        }
        let stream = c.stream.unwrap_or(0);
        self.captures.replay(proc, c.args[0]);
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
                exit_bounds: false,
            };
            self.arrive(lane, m, a, proc, stream);
        }
        self.submitted(proc, stream, c, busy);
    }

    /// A sync that returned successfully bounds the completion of the work it covered.
    pub(super) fn on_sync(&mut self, proc: ProcId, c: &CallEvent) {
        let Some(exit) = c.exit_ns.filter(|_| c.ret == Some(COMPLETE)) else {
            return;
        };
        self.bounds.clear();
        match c.spec().sync_scope() {
            SyncScope::Stream => self.sync.stream_sync(
                proc,
                c.stream.unwrap_or(0),
                c.entry_ns,
                exit,
                &mut self.bounds,
            ),
            SyncScope::Event => {
                if let Some(e) = c.event_handle {
                    self.sync.event_done(proc, e, exit, &mut self.bounds)
                }
            }
            SyncScope::Device => self
                .sync
                .device_sync(proc, c.entry_ns, exit, &mut self.bounds),
        }
        self.apply_bounds();
    }

    pub(super) fn on_event_record(&mut self, proc: ProcId, c: &CallEvent) {
        if let (Some(e), true) = (c.event_handle, c.ret.is_none_or(|r| r == 0)) {
            self.sync
                .event_record(proc, e, c.stream.unwrap_or(0), c.entry_ns);
        }
    }

    /// An event query that found its event complete bounds the work recorded before it.
    pub(super) fn on_event_query(&mut self, proc: ProcId, c: &CallEvent) {
        if let (Some(e), Some(COMPLETE), Some(exit)) = (c.event_handle, c.ret, c.exit_ns) {
            self.bounds.clear();
            self.sync.event_done(proc, e, exit, &mut self.bounds);
            self.apply_bounds();
        }
    }

    pub(super) fn on_stream_wait(&mut self, proc: ProcId, c: &CallEvent) {
        if let (Some(stream), Some(e)) = (c.stream, c.event_handle) {
            self.sync.stream_wait(proc, stream, e, c.entry_ns);
        }
    }

    pub(super) fn on_alloc(&mut self, proc: ProcId, c: &CallEvent) {
        let is_alloc = c.spec().kind == CallKind::Alloc;
        if let Some(f) =
            self.memory
                .on_call(proc, c, is_alloc, self.cfg.max_allocations_per_process)
        {
            self.alloc_failure(proc, c, f);
        }
    }

    /// Hands the completion bounds a sync produced to the lanes of the calls it covered.
    fn apply_bounds(&mut self) {
        for &(w, ub) in &self.bounds {
            if let Some(l) = self
                .lanes
                .get_mut(w.lane as usize)
                .filter(|l| l.id == w.lane_id)
            {
                l.set_ub(w.member, w.call, ub);
                // A bound that contradicts the numbering re-checks it now.
                l.repair_if_due(&self.cfg, &mut self.out);
            }
        }
        self.counts.completions_bounded += self.bounds.len() as u64;
        self.drain_out();
    }
}
