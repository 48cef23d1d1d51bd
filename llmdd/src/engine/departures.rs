//! Members leaving: a process exiting ends every membership it held; a communicator
//! destroyed or aborted ends one. The lanes stop expecting the member after its last call,
//! the findings of its communicators say it left, and a member-left finding is raised as the
//! teardown's kind says (see `Raise`).

use super::{
    comm,
    findings::{wording, Culprit, FindingKey, FindingKind},
    Engine, Raise,
};

impl Engine {
    pub(super) fn on_exit(&mut self, pid: u32, t: u64) {
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
    pub(super) fn member_left(&mut self, lane: u32, m: u32, t: u64, how: &str, raise: Raise) {
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
        let who = wording::describe_member(rank, pid, host.as_deref());
        let scope = wording::lane_label(label);
        // Every finding of this lane says a member left.
        let note = format!("; {who} {how} at {}", wording::fmt_time(t));
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
        let culprit = Culprit {
            pid: Some(pid),
            rank: (rank != u32::MAX).then_some(rank),
            comm: Some(id),
            host,
            connection: None,
        };
        let d = wording::member_left(&who, scope, id, how, t, left_open, culprit, label.label());
        let key = FindingKey {
            kind: FindingKind::MemberLeft,
            scope: id,
            culprit: m as u64,
        };
        self.raise(key, d);
    }
}
