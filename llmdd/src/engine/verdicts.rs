//! From evidence to findings: each detector's verdict (a stalled instance, a lane's
//! straggler evaluation, a bubble, an allocation failure, a link alert) is given its culprit
//! and scope here and worded by `findings::wording`.

use super::{
    bubbles::{self, BubbleAlert},
    findings::{wording, Culprit, FindingBook, FindingKey, FindingKind},
    kv,
    links::LinkAlert,
    matching::{Evidence, StallInfo},
    memory,
    procs::ProcId,
    stragglers,
    util::{fmt_id, mix, FastMap},
    Engine,
};
use crate::events::CallEvent;

impl Engine {
    /// Raises (or updates) the stall finding of an open instance, or records a stall that is
    /// already over (`s.ended_ns`).
    pub(super) fn stall(&mut self, lane: u32, s: StallInfo, now: u64) {
        let mut s = s;
        let l = &self.lanes[lane as usize];
        if l.ambiguous {
            self.counts.findings_withheld_ambiguous += 1;
            return;
        }
        // Said in rank order.
        for v in [&mut s.arrived, &mut s.missing] {
            v.sort_by_key(|&m| (l.members[m as usize].rank, m));
        }
        let Some(&m0) = s.missing.first() else {
            return;
        };
        let names = |ms: &[u32]| -> Vec<String> {
            ms.iter()
                .map(|&m| wording::rank_name(l.members[m as usize].rank, m))
                .collect()
        };
        let missing = names(&s.missing);
        let arrived = names(&s.arrived);
        let missing_desc: Vec<String> = s
            .missing
            .iter()
            .map(|&m| {
                let x = &l.members[m as usize];
                wording::describe_member(x.rank, x.pid, self.procs.host(x.proc))
            })
            .collect();
        let what = match l.evidence {
            Evidence::Collectives => format!(
                "{} #{} on communicator {}",
                wording::op_label(s.op),
                s.seq,
                fmt_id(l.id)
            ),
            Evidence::GraphSteps => {
                format!("graph-launch step #{} of group {}", s.seq, fmt_id(l.id))
            }
        };
        let mm = &l.members[m0 as usize];
        let d = wording::stall(wording::StallFacts {
            what,
            arrived: &arrived,
            missing: &missing,
            missing_desc: &missing_desc,
            first_ns: s.first_ns,
            now,
            ended_ns: s.ended_ns,
            threshold_ns: s.threshold_ns,
            first_missing_pid: mm.pid,
            culprit: self.member_culprit(mm.rank, mm.pid, mm.proc, l.id),
            source: l.evidence.label(),
        });
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

    /// The culprit fields of a lane member.
    fn member_culprit(&self, rank: u32, pid: u32, proc: ProcId, comm: u64) -> Culprit {
        Culprit {
            pid: Some(pid),
            rank: (rank != u32::MAX).then_some(rank),
            comm: Some(comm),
            host: self.procs.host(proc).map(str::to_owned),
            connection: None,
            agent: None,
        }
    }

    /// Re-evaluates a lane's straggler evidence: raises, updates or withdraws its straggler
    /// and data-parallel idle findings.
    pub(super) fn evaluate(&mut self, lane: u32, now: u64) {
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
        self.lanes[li].near_miss = ev.near_miss.clone();
        let id = self.lanes[li].id;
        let culprit = ev.straggler.as_ref().map(|v| v.member);
        shift_blame(
            &mut self.stragglers,
            &mut self.findings,
            lane,
            culprit,
            FindingKind::Straggler,
            id,
            now,
        );
        if let Some(v) = ev.straggler {
            if self.lanes[li].ambiguous {
                self.counts.findings_withheld_ambiguous += 1;
            } else {
                self.raise_straggler(lane, v);
            }
        }
    }

    fn raise_straggler(&mut self, lane: u32, v: stragglers::StragglerVerdict) {
        let l = &self.lanes[lane as usize];
        let mm = &l.members[v.member as usize];
        let host = self.procs.host(mm.proc);
        let who = wording::describe_member(mm.rank, mm.pid, host);
        let proc = mm.proc;
        let mut d = wording::straggler(wording::StragglerFacts {
            who: who.clone(),
            rank_name: wording::rank_name(mm.rank, v.member),
            evidence: l.evidence,
            lane_id: l.id,
            critical_lag_ns: self.cfg.straggler_critical_lag_ns,
            culprit: self.member_culprit(mm.rank, mm.pid, mm.proc, l.id),
            verdict: v.clone(),
        });
        let scope = l.id;
        if !self.clock_check(lane, &v, proc, &who, &mut d.0) {
            return;
        }
        let key = FindingKey {
            kind: FindingKind::Straggler,
            scope,
            culprit: d.1 as u64,
        };
        self.raise(key, d.0);
    }

    pub(super) fn bubble_alert(&mut self, a: BubbleAlert) {
        match a {
            BubbleAlert::Submission {
                proc,
                stream,
                gap_ns,
            } => self.submission_gap(proc, stream, gap_ns),
        }
    }

    /// Evaluates the pipelines that moved since they were last evaluated: names the stage
    /// the others wait for, or withdraws the finding of one no longer waited for.
    pub(super) fn evaluate_pipelines(&mut self, now: u64) {
        let due: Vec<u32> = self
            .bubbles
            .pipelines
            .values()
            .filter(|p| !p.evaluated)
            .map(|p| p.comm)
            .collect();
        for comm in due {
            let mut verdict = self.bubbles.evaluate(comm, now, &self.cfg);
            let id = self.comms.list[comm as usize].id;
            let lane = self.comms.list[comm as usize].lane;
            if verdict.is_some() && self.lanes[lane as usize].ambiguous {
                self.counts.findings_withheld_ambiguous += 1;
                verdict = None;
            }
            let named = verdict.as_ref().map(|v| v.slow.rank);
            shift_blame(
                &mut self.pipeline_blame,
                &mut self.findings,
                lane,
                named,
                FindingKind::Bubble,
                id,
                now,
            );
            if let Some(v) = verdict {
                self.pipeline_bubble(comm, v, now);
            }
        }
    }

    fn pipeline_bubble(&mut self, comm: u32, v: bubbles::PipelineVerdict, now: u64) {
        let c = &self.comms.list[comm as usize];
        let pid = |proc: ProcId| self.procs.proc(proc).pid;
        let d = wording::pipeline(wording::PipelineFacts {
            comm_id: c.id,
            slow_pid: pid(v.slow.proc),
            others_pids: v.others.iter().map(|w| pid(w.proc)).collect(),
            window: (now.saturating_sub(v.slow.span_ns), now),
            culprit: Culprit {
                pid: Some(pid(v.slow.proc)),
                rank: Some(v.slow.rank),
                comm: Some(c.id),
                host: self.procs.host(v.slow.proc).map(str::to_owned),
                connection: None,
                agent: None,
            },
            verdict: v,
        });
        let key = FindingKey {
            kind: FindingKind::Bubble,
            scope: c.id,
            culprit: d.1 as u64,
        };
        self.raise(key, d.0);
    }

    fn submission_gap(&mut self, proc: ProcId, stream: u64, gap_ns: u64) {
        let now = self.t;
        let Some(g) = self.bubbles.streams.get(&(proc, stream)) else {
            return;
        };
        let p = self.procs.proc(proc);
        let d = wording::submission_gap(wording::SubmissionGapFacts {
            stream,
            pid: p.pid,
            threshold_ns: self.cfg.submission_gap_ns,
            gaps: g.busy_gaps.sum(now),
            latest_ns: gap_ns,
            longest_ns: g.longest_ns,
            now,
            culprit: self.proc_culprit(proc),
        });
        let key = FindingKey {
            kind: FindingKind::Bubble,
            scope: mix(&[proc as u64, stream]),
            culprit: 0x2_0000_0000,
        };
        self.raise(key, d);
    }

    /// The culprit fields of a process (rank and host from its hints).
    fn proc_culprit(&self, proc: ProcId) -> Culprit {
        let p = self.procs.proc(proc);
        Culprit {
            pid: Some(p.pid),
            rank: p.hints.rank,
            comm: None,
            host: p.hints.host.clone(),
            connection: None,
            agent: None,
        }
    }

    /// KV-transfer findings (see `kv`): raised or updated while their evidence holds, made
    /// inactive when it no longer does (a stuck transfer that finished, a slow agent caught up).
    pub(super) fn kv_verdicts(&mut self, now: u64) {
        if self.kv.agents.is_empty() {
            return;
        }
        let alerts = self.kv.alerts(now, &self.procs);
        let mut live: Vec<FindingKey> = Vec::new();
        for a in alerts {
            // A transfer that looks unfinished after events were lost may have finished in
            // the records that were lost: not called stuck.
            if let kv::KvAlert::Stuck { age_ns, .. } = &a {
                if self.lost_in((now.saturating_sub(*age_ns), now)) > 0 {
                    self.counts.kv_stuck_withheld_lost += 1;
                    continue;
                }
            }
            let (proc, agent, tag) = match &a {
                kv::KvAlert::Failed { idx } | kv::KvAlert::Slow { idx, .. } => {
                    let s = &self.kv.agents[*idx];
                    let tag = if matches!(a, kv::KvAlert::Failed { .. }) {
                        1
                    } else {
                        3
                    };
                    (s.proc, s.agent.clone(), tag)
                }
                kv::KvAlert::Stuck { proc, agent, .. } => (*proc, agent.clone(), 2),
            };
            let label = kv::agent_label(&agent);
            let mut culprit = self.proc_culprit(proc);
            culprit.agent = Some(label.clone());
            let facts = wording::KvFacts {
                culprit,
                agent: &label,
                now_ns: now,
            };
            let d = match a {
                kv::KvAlert::Failed { idx } => wording::kv_failed(facts, &self.kv.agents[idx]),
                kv::KvAlert::Stuck {
                    age_ns,
                    threshold_ns,
                    typical_ns,
                    ..
                } => wording::kv_stuck(facts, age_ns, threshold_ns, typical_ns),
                kv::KvAlert::Slow {
                    idx,
                    p50_ns,
                    others_p50_ns,
                    others,
                } => {
                    let n = self.kv.agents[idx].durations.pctl(now).count;
                    wording::kv_slow(facts, p50_ns, others_p50_ns, others, n)
                }
            };
            let key = FindingKey {
                kind: FindingKind::KvTransfer,
                scope: proc as u64,
                culprit: agent.as_ref().map_or(0, |x| x.hash) ^ tag,
            };
            self.raise(key, d);
            live.push(key);
        }
        let stale: Vec<FindingKey> = self
            .findings
            .keys_of(FindingKind::KvTransfer)
            .into_iter()
            .filter(|k| !live.contains(k))
            .collect();
        for k in stale {
            self.findings.deactivate(&k, now);
        }
    }

    pub(super) fn alloc_failure(&mut self, proc: ProcId, c: &CallEvent, f: memory::AllocFailure) {
        let Some(m) = self.memory.get(proc) else {
            return;
        };
        let d = wording::alloc_failure(wording::AllocFacts {
            func: f.func,
            bytes: f.bytes,
            pid: self.procs.proc(proc).pid,
            failures: m.failures,
            first_failure_ns: m.first_failure_ns,
            outstanding: m.outstanding,
            peak: m.peak,
            at_ns: c.entry_ns,
            culprit: self.proc_culprit(proc),
        });
        let key = FindingKey {
            kind: FindingKind::MemoryPressure,
            scope: proc as u64,
            culprit: 0,
        };
        self.raise(key, d);
    }

    pub(super) fn link_alert(&mut self, proc: ProcId, a: LinkAlert) {
        let now = self.t;
        let sk = match a {
            LinkAlert::Retransmits { sk, .. } | LinkAlert::Reset { sk } => sk,
        };
        let Some(l) = self.links.conns.get(&sk) else {
            return;
        };
        // Clients of a serving port close as they please (a cancelled request, a client
        // that stops reading): a reset there is how such connections end, not a bad link.
        let serving = [l.local, l.remote]
            .iter()
            .flatten()
            .any(|(_, port)| self.requests.serving(*port, &self.cfg));
        if serving && matches!(a, LinkAlert::Reset { .. }) {
            self.counts.client_resets += 1;
            return;
        }
        let facts = match a {
            LinkAlert::Retransmits {
                in_window, rate, ..
            } => wording::LinkFacts::Retransmits {
                in_window,
                rate,
                assumed_mss: self.cfg.link_assumed_mss,
                sent: l.sent,
                recvd: l.recvd,
            },
            LinkAlert::Reset { .. } => wording::LinkFacts::Reset { resets: l.resets },
        };
        let pid = self.procs.proc(proc).pid;
        let d = wording::link(
            facts,
            l.label(),
            pid,
            (l.first_ns, now),
            self.proc_culprit(proc),
        );
        let key = FindingKey {
            kind: FindingKind::Link,
            scope: sk,
            culprit: matches!(a, LinkAlert::Reset { .. }) as u64,
        };
        if let LinkAlert::Reset { .. } = a {
            let ports = [l.local, l.remote].map(|e| e.map(|(_, p)| p).unwrap_or(0));
            if self.resets_raised.len() >= self.cfg.max_findings {
                self.resets_raised.remove(0);
            }
            self.resets_raised.push((ports, key));
        }
        self.raise(key, d);
    }

    /// The serving port became known: resets raised on its connections before were clients
    /// closing, not bad links, and are withdrawn.
    pub(super) fn serving_port_known(&mut self) {
        let raised = std::mem::take(&mut self.resets_raised);
        for (ports, key) in raised {
            if ports.iter().any(|p| self.requests.serving(*p, &self.cfg)) {
                if self.findings.remove(&key) {
                    self.counts.client_resets += 1;
                }
            } else {
                self.resets_raised.push((ports, key));
            }
        }
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
