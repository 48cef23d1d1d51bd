//! Members leaving: a process exiting ends every membership it held; a communicator
//! destroyed or aborted ends one. The lanes stop expecting the member after its last call,
//! and the findings of its communicators say it left.
//!
//! Leaving is how jobs end: many never destroy their communicators, and ranks exit a little
//! apart. So a member leaving is a finding only when the survivors are left waiting on it:
//! when it left instances open that the others had entered (they cannot complete), or when
//! a survivor calls on that communicator after it left (a collective that cannot complete
//! without it; reported by the lane, see `LaneOut::called_after_leaving`). An abort is
//! always one: the process said something went wrong. Neither is raised on a lane touched
//! by lost events and not yet re-checked: the member's own arrival may be the lost record
//! (counted and said in the notes instead).

use super::{
    findings::{wording, Culprit, FindingKey, FindingKind},
    Engine, Raise,
};

impl Engine {
    pub(super) fn on_exit(&mut self, pid: u32, t: u64) {
        let Some(proc) = self.procs.exit(pid, t) else {
            return;
        };
        for (c, m) in self.comms.proc_exit(proc, t) {
            let (lane, lm) = {
                let comm = &self.comms.list[c as usize];
                (comm.lane, comm.members[m as usize].lane_member)
            };
            self.member_left(lane, lm, t, "exited", Raise::IfWaitedOn);
        }
        if let Some((lane, m)) = self.graphs.proc_exit(proc) {
            self.member_left(lane, m, t, "exited", Raise::IfWaitedOn);
        }
        self.sync.forget_proc(proc);
        self.bubbles.forget_proc(proc);
        self.memory.proc_exit(proc);
        self.captures.proc_exit(proc);
        self.kv.proc_exit(proc);
        self.groups.retain(|(p, _), _| *p != proc);
        self.in_flight.retain(|(p, _, _), _| *p != pid);
    }

    /// A member left a lane: no stall for it, and the lane's findings say so; a member-left
    /// finding is raised as `raise` says.
    pub(super) fn member_left(&mut self, lane: u32, m: u32, t: u64, how: &str, raise: Raise) {
        let (open_before, open_after, id, rank, pid, proc, label, since) = {
            let l = &mut self.lanes[lane as usize];
            let before = l.open_instances();
            let since = l.oldest_open_ns().unwrap_or(t);
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
                since,
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
        if raise == Raise::IfWaitedOn && left_open == 0 {
            return;
        }
        // After lost events the open instances may be the member's own arrivals lost, not
        // instances it never reached: a job ending normally would be named.
        if raise == Raise::IfWaitedOn && self.loss_may_explain(lane, since, t) {
            self.counts.departures_withheld_lost += 1;
            return;
        }
        let culprit = Culprit {
            pid: Some(pid),
            rank: (rank != u32::MAX).then_some(rank),
            comm: Some(id),
            host,
            connection: None,
            agent: None,
        };
        let waiting = wording::LeftWaiting::Open(left_open);
        let d = wording::member_left(&who, scope, id, how, t, waiting, culprit, label.label());
        let key = FindingKey {
            kind: FindingKind::MemberLeft,
            scope: id,
            culprit: m as u64,
        };
        self.raise(key, d);
    }

    /// A survivor called on a lane after member `departed` had left it: an instance that
    /// cannot complete without it.
    pub(super) fn called_after_leaving(&mut self, c: super::matching::CalledAfterLeaving) {
        let Some(lane) = self.lanes.iter().position(|l| l.id == c.lane_id) else {
            return;
        };
        let l = &self.lanes[lane];
        // After lost events the survivor's call may fall in an instance the departed member
        // did reach (its record lost, the numbering shifted).
        if self.loss_may_explain(lane as u32, d_left(l, c.departed, c.at_ns), c.at_ns) {
            self.counts.departures_withheld_lost += 1;
            return;
        }
        let (d, s) = (
            &l.members[c.departed as usize],
            &l.members[c.survivor as usize],
        );
        let host = self.procs.host(d.proc).map(str::to_owned);
        let who = wording::describe_member(d.rank, d.pid, host.as_deref());
        let survivor = wording::describe_member(s.rank, s.pid, self.procs.host(s.proc));
        let left = d.left_ns.unwrap_or(c.at_ns);
        let culprit = Culprit {
            pid: Some(d.pid),
            rank: (d.rank != u32::MAX).then_some(d.rank),
            comm: Some(l.id),
            host,
            connection: None,
            agent: None,
        };
        let waiting = wording::LeftWaiting::CalledAfter {
            survivor,
            seq: c.seq,
            at_ns: c.at_ns,
        };
        let d = wording::member_left(
            &who,
            wording::lane_label(l.evidence),
            l.id,
            "left",
            left,
            waiting,
            culprit,
            l.evidence.label(),
        );
        let key = FindingKey {
            kind: FindingKind::MemberLeft,
            scope: l.id,
            culprit: c.departed as u64,
        };
        self.raise(key, d);
    }
}

impl Engine {
    /// Whether lost events may hide arrivals between `from` and `to` on `lane`: the lane is
    /// not yet re-checked after a loss, or a loss report overlaps that span widened by the
    /// re-check horizon (`align_timeout`: a record lost then may belong to an instance that
    /// began up to that long before).
    fn loss_may_explain(&self, lane: u32, from: u64, to: u64) -> bool {
        let l = &self.lanes[lane as usize];
        l.unverified_since.is_some()
            || self.lost_in((from.saturating_sub(self.cfg.align_timeout_ns), to)) > 0
    }
}

/// When member `m` left `l` (else `at`).
fn d_left(l: &super::matching::Lane, m: u32, at: u64) -> u64 {
    l.members
        .get(m as usize)
        .and_then(|mm| mm.left_ns)
        .unwrap_or(at)
}
