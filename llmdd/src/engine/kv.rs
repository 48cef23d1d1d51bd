//! KV-cache transfers (NIXL, llm-d's prefill/decode path): each transfer from its post to its
//! final status, grouped per (pulling process, remote agent).
//!
//! A request is made naming its remote agent (`createXferReq(..., agent, &req)`), or from
//! descriptor lists prepared for an agent (`prepXferDlist(agent, ..., &dlist)` then
//! `makeXferReq(..., remote dlist, ..., &req)`); the agent is its name's hash and first 8
//! bytes, as the probe captured them. `postXferReq(req)` starts it: its return is the first
//! status (done, in progress, or an error). `getXferStatus(req)` is polled until it is not
//! in progress. The transfer's time is post entry to the return of the call that gave the
//! final status: a completion bound (the transfer was done no later), as the host sees it.
//!
//! Findings, per pulling process (the rules and why they hold are in docs/findings.md):
//! * failed transfers from an agent (the error named);
//! * a transfer in progress much longer than that process's transfers take (stuck: the
//!   remote agent died or stopped serving, the link is gone);
//! * one agent's transfers slower than every other agent's (a slow prefill server).
//!
//! Bounded: [`MAX_PENDING`] requests and prepared lists, [`MAX_AGENTS`] (process, agent)
//! pairs (more are counted, not kept).

use std::collections::{BTreeMap, VecDeque};

use llmdd_common::funcs::CallKind;
use serde::Serialize;

use super::{
    procs::ProcId,
    stats::{Pctl, RollingHist},
    util::FastMap,
};
use crate::events::{CallEvent, StrArg};

/// Requests in flight and prepared descriptor lists remembered.
pub const MAX_PENDING: usize = 65_536;
/// (pulling process, remote agent) pairs with statistics.
pub const MAX_AGENTS: usize = 1024;
/// Finished transfers kept for the views (the timeline draws each once).
pub const MAX_RECENT: usize = 512;

/// One finished transfer, for the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TransferRecord {
    /// Increasing per engine: what the views deduplicate by.
    pub seq: u64,
    pub pid: u32,
    /// The thread that posted it.
    pub tid: u32,
    pub agent: Option<String>,
    pub posted_ns: u64,
    /// Return of the call that gave the final status.
    pub end_ns: u64,
    pub status: &'static str,
    /// "READ" or "WRITE" where the call passes it by value.
    pub op: Option<&'static str>,
    pub descriptors: Option<u64>,
}

/// NIXL's `nixl_status_t`: in progress.
const IN_PROG: i64 = 1;

/// The name of a NIXL status code.
pub fn status_name(code: i64) -> &'static str {
    match code {
        1 => "NIXL_IN_PROG",
        0 => "NIXL_SUCCESS",
        -1 => "NIXL_ERR_NOT_POSTED",
        -2 => "NIXL_ERR_INVALID_PARAM",
        -3 => "NIXL_ERR_BACKEND",
        -4 => "NIXL_ERR_NOT_FOUND",
        -5 => "NIXL_ERR_MISMATCH",
        -6 => "NIXL_ERR_NOT_ALLOWED",
        -7 => "NIXL_ERR_REPOST_ACTIVE",
        -8 => "NIXL_ERR_UNKNOWN",
        -9 => "NIXL_ERR_NOT_SUPPORTED",
        -10 => "NIXL_ERR_REMOTE_DISCONNECT",
        -11 => "NIXL_ERR_CANCELED",
        -12 => "NIXL_ERR_NO_TELEMETRY",
        -13 => "NIXL_ERR_NOT_READY",
        _ => "unknown status",
    }
}

#[derive(Clone, Debug)]
struct Pending {
    agent: Option<StrArg>,
    /// NIXL_READ (0) or NIXL_WRITE (1), where the call passes it by value.
    op: Option<u64>,
    descs: Option<u64>,
    posted_ns: Option<u64>,
    posted_tid: u32,
}

/// One (pulling process, remote agent) pair's transfers.
#[derive(Clone, Debug)]
pub struct AgentStats {
    pub proc: ProcId,
    /// The pulling process (shown in the views).
    pub pid: u32,
    pub agent: Option<StrArg>,
    pub done: u64,
    pub failed: u64,
    pub errors: BTreeMap<i64, u64>,
    /// Post to final status, ns (completion bound), over the rolling window.
    pub durations: RollingHist,
    pub reads: u64,
    pub writes: u64,
    pub descs: u64,
    /// Released while still in progress (abandoned).
    pub abandoned: u64,
    /// The longest handshake (`makeConnection`) with the agent, ns.
    pub handshake_max_ns: u64,
    pub last_ns: u64,
}

/// A transfer still in progress.
#[derive(Clone, Debug, PartialEq)]
pub struct InFlight {
    pub proc: ProcId,
    pub pid: u32,
    pub agent: Option<StrArg>,
    pub posted_ns: u64,
}

pub struct Kv {
    dlists: FastMap<(ProcId, u64), StrArg>,
    pending: FastMap<(ProcId, u64), Pending>,
    pub agents: Vec<AgentStats>,
    by_agent: FastMap<(ProcId, u64), usize>,
    /// Requests, lists or agents not remembered (over the bounds).
    pub refused: u64,
    /// Handshakes without an agent name (`loadRemoteMD`): the longest, per process.
    pub metadata_max_ns: FastMap<ProcId, u64>,
    /// The last finished transfers (at most [`MAX_RECENT`]).
    pub recent: VecDeque<TransferRecord>,
    seq: u64,
    slice_ns: u64,
    keep: usize,
}

impl Kv {
    pub fn new(slice_ns: u64, keep: usize) -> Kv {
        Kv {
            dlists: FastMap::default(),
            pending: FastMap::default(),
            agents: Vec::new(),
            by_agent: FastMap::default(),
            refused: 0,
            metadata_max_ns: FastMap::default(),
            recent: VecDeque::new(),
            seq: 0,
            slice_ns,
            keep,
        }
    }

    /// One NIXL call of process `proc`.
    pub fn on_call(&mut self, proc: ProcId, c: &CallEvent) {
        let ok = c.ret.is_some_and(|r| r == 0);
        let spec = c.spec();
        match spec.kind {
            CallKind::KvPrepare if ok => {
                if let (Some(list), Some(agent)) = (c.out, c.text.clone()) {
                    self.remember_list(proc, list, agent);
                }
            }
            CallKind::KvCreate if ok => {
                let Some(req) = c.out else { return };
                // The list's agent as its preparation named it, else as read through the list
                // (createXferReq: the agent argument itself).
                let agent = c
                    .args
                    .get(spec.roles.peer as usize)
                    .and_then(|remote| self.dlists.get(&(proc, *remote)).cloned())
                    .or_else(|| c.text.clone());
                if self.pending.len() >= MAX_PENDING {
                    self.refused += 1;
                    return;
                }
                let p = Pending {
                    agent,
                    op: c.op,
                    descs: c.count,
                    posted_ns: None,
                    posted_tid: c.tid,
                };
                self.pending.insert((proc, req), p);
            }
            CallKind::KvPost => self.status(proc, c, true),
            CallKind::KvStatus => self.status(proc, c, false),
            CallKind::KvRelease => {
                if let Some(p) = self.pending.remove(&(proc, c.args[1])) {
                    if p.posted_ns.is_some() {
                        if let Some(s) = self.stats(proc, c.pid, &p.agent) {
                            s.abandoned += 1;
                        }
                    }
                }
            }
            CallKind::KvHandshake => {
                let took = c.duration_ns().unwrap_or(0);
                match c.text.clone() {
                    Some(agent) => {
                        let agent = Some(agent);
                        if let Some(s) = self.stats(proc, c.pid, &agent) {
                            s.handshake_max_ns = s.handshake_max_ns.max(took);
                        }
                    }
                    None => {
                        let m = self.metadata_max_ns.entry(proc).or_insert(0);
                        *m = (*m).max(took);
                    }
                }
            }
            _ => {}
        }
    }

    fn remember_list(&mut self, proc: ProcId, list: u64, agent: StrArg) {
        if self.dlists.len() >= MAX_PENDING && !self.dlists.contains_key(&(proc, list)) {
            self.refused += 1;
            return;
        }
        self.dlists.insert((proc, list), agent);
    }

    /// A post (`first`) or a status poll of a request: its final status ends it.
    fn status(&mut self, proc: ProcId, c: &CallEvent, first: bool) {
        let (Some(ret), Some(exit)) = (c.ret, c.exit_ns) else {
            return;
        };
        let key = (proc, c.args[1]);
        let Some(p) = self.pending.get_mut(&key) else {
            return;
        };
        if first {
            p.posted_ns = Some(c.entry_ns);
            p.posted_tid = c.tid;
        }
        let Some(posted) = p.posted_ns else {
            return;
        };
        if ret == IN_PROG {
            return;
        }
        // Final: done or failed. The request stays made (it may be posted again).
        p.posted_ns = None;
        let (agent, op, descs) = (p.agent.clone(), p.op, p.descs);
        self.seq += 1;
        if self.recent.len() >= MAX_RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(TransferRecord {
            seq: self.seq,
            pid: c.pid,
            tid: p.posted_tid,
            agent: agent.as_ref().map(|a| a.prefix.clone()),
            posted_ns: posted,
            end_ns: exit,
            status: status_name(ret),
            op: match op {
                Some(0) => Some("READ"),
                Some(1) => Some("WRITE"),
                _ => None,
            },
            descriptors: descs,
        });
        let Some(s) = self.stats(proc, c.pid, &agent) else {
            return;
        };
        s.last_ns = exit;
        match op {
            Some(0) => s.reads += 1,
            Some(1) => s.writes += 1,
            _ => {}
        }
        s.descs += descs.unwrap_or(0);
        if ret == 0 {
            s.done += 1;
            s.durations.record(exit, exit.saturating_sub(posted));
        } else {
            s.failed += 1;
            *s.errors.entry(ret).or_insert(0) += 1;
        }
    }

    /// The statistics of (proc, agent), made on first sight (within the bound).
    fn stats(&mut self, proc: ProcId, pid: u32, agent: &Option<StrArg>) -> Option<&mut AgentStats> {
        let k = (proc, agent.as_ref().map_or(0, |a| a.hash));
        let i = match self.by_agent.get(&k) {
            Some(&i) => i,
            None => {
                if self.agents.len() >= MAX_AGENTS {
                    self.refused += 1;
                    return None;
                }
                self.agents.push(AgentStats {
                    proc,
                    pid,
                    agent: agent.clone(),
                    done: 0,
                    failed: 0,
                    errors: BTreeMap::new(),
                    durations: RollingHist::new(self.slice_ns, self.keep),
                    reads: 0,
                    writes: 0,
                    descs: 0,
                    abandoned: 0,
                    handshake_max_ns: 0,
                    last_ns: 0,
                });
                self.by_agent.insert(k, self.agents.len() - 1);
                self.agents.len() - 1
            }
        };
        self.agents.get_mut(i)
    }

    /// Transfers still in progress, oldest first.
    pub fn in_flight(&self, procs: &super::procs::Procs) -> Vec<InFlight> {
        let mut v: Vec<InFlight> = self
            .pending
            .iter()
            .filter_map(|((proc, _), p)| {
                Some(InFlight {
                    proc: *proc,
                    pid: procs.proc(*proc).pid,
                    agent: p.agent.clone(),
                    posted_ns: p.posted_ns?,
                })
            })
            .collect();
        v.sort_by_key(|f| f.posted_ns);
        v
    }

    /// Forgets the requests and lists of a process that exited (its statistics stay).
    pub fn proc_exit(&mut self, proc: ProcId) {
        self.pending.retain(|(p, _), _| *p != proc);
        self.dlists.retain(|(p, _), _| *p != proc);
    }
}

/// What the views show per (process, agent).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KvAgentView {
    pub pid: u32,
    /// The remote agent's name as far as it was captured (its first 8 bytes), and the
    /// hash that tells agents apart; None when the request named none llmdd saw.
    pub agent: Option<String>,
    pub agent_hash: Option<String>,
    pub transfers: u64,
    pub failed: u64,
    /// Error name -> count.
    pub errors: BTreeMap<String, u64>,
    /// Post to final status (a completion bound), over the window.
    pub duration: Pctl,
    pub reads: u64,
    pub writes: u64,
    pub descriptors: u64,
    pub abandoned: u64,
    pub handshake_max_ns: u64,
    pub in_flight: u64,
    /// The oldest transfer still in progress, ns since its post.
    pub oldest_in_flight_ns: u64,
}

/// The label of an agent in findings and views: "3f2a9c1e…" (its first 8 bytes).
pub fn agent_label(a: &Option<StrArg>) -> String {
    match a {
        Some(a) if !a.prefix.is_empty() => format!("agent {}…", a.prefix),
        Some(a) => format!("agent #{:016x}", a.hash),
        None => "an unnamed agent".to_string(),
    }
}

impl Kv {
    pub fn views(&self, now: u64, procs: &super::procs::Procs) -> Vec<KvAgentView> {
        let flying = self.in_flight(procs);
        self.agents
            .iter()
            .map(|s| {
                let mine: Vec<&InFlight> = flying
                    .iter()
                    .filter(|f| f.proc == s.proc && f.agent == s.agent)
                    .collect();
                KvAgentView {
                    pid: s.pid,
                    agent: s.agent.as_ref().map(|a| a.prefix.clone()),
                    agent_hash: s.agent.as_ref().map(|a| format!("{:016x}", a.hash)),
                    transfers: s.done + s.failed,
                    failed: s.failed,
                    errors: s
                        .errors
                        .iter()
                        .map(|(k, v)| (status_name(*k).to_string(), *v))
                        .collect(),
                    duration: s.durations.pctl(now),
                    reads: s.reads,
                    writes: s.writes,
                    descriptors: s.descs,
                    abandoned: s.abandoned,
                    handshake_max_ns: s.handshake_max_ns,
                    in_flight: mine.len() as u64,
                    oldest_in_flight_ns: mine
                        .first()
                        .map_or(0, |f| now.saturating_sub(f.posted_ns)),
                }
            })
            .collect()
    }
}

/// What the transfers of one process say about one agent.
#[derive(Clone, Debug, PartialEq)]
pub enum KvAlert {
    /// Transfers from the agent ended in errors.
    Failed { idx: usize },
    /// A transfer has been in progress far longer than this process's transfers take.
    Stuck {
        proc: ProcId,
        pid: u32,
        agent: Option<StrArg>,
        age_ns: u64,
        threshold_ns: u64,
        typical_ns: Option<u64>,
    },
    /// The agent's transfers are slower than every other agent's for this process.
    Slow {
        idx: usize,
        p50_ns: u64,
        others_p50_ns: u64,
        others: usize,
    },
}

/// Completed transfers an agent needs before its speed is compared.
pub const SLOW_MIN_TRANSFERS: u64 = 8;
/// How much slower (median) than every other agent, and by at least how much.
pub const SLOW_RATIO: f64 = 3.0;
pub const SLOW_MIN_NS: u64 = 1_000_000;
/// A transfer is stuck after this many times the process's p99, and at least this long.
pub const STUCK_FACTOR: u64 = 20;
pub const STUCK_MIN_NS: u64 = 1_000_000_000;

impl Kv {
    /// The alerts of the transfers seen up to `now`.
    pub fn alerts(&self, now: u64, procs: &super::procs::Procs) -> Vec<KvAlert> {
        let mut out: Vec<KvAlert> = (0..self.agents.len())
            .filter(|&i| self.agents[i].failed > 0)
            .map(|idx| KvAlert::Failed { idx })
            .collect();
        let pctl: Vec<Pctl> = self.agents.iter().map(|s| s.durations.pctl(now)).collect();
        // Stuck: the oldest in-flight transfer of each (process, agent).
        let mut seen: Vec<(ProcId, Option<u64>)> = Vec::new();
        for f in self.in_flight(procs) {
            let key = (f.proc, f.agent.as_ref().map(|a| a.hash));
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let typical = (0..self.agents.len())
                .filter(|&i| self.agents[i].proc == f.proc && pctl[i].count > 0)
                .map(|i| pctl[i].p99)
                .max();
            let threshold = typical
                .map_or(STUCK_MIN_NS, |t| t.saturating_mul(STUCK_FACTOR))
                .max(STUCK_MIN_NS);
            let age = now.saturating_sub(f.posted_ns);
            if age >= threshold {
                out.push(KvAlert::Stuck {
                    proc: f.proc,
                    pid: f.pid,
                    agent: f.agent,
                    age_ns: age,
                    threshold_ns: threshold,
                    typical_ns: typical,
                });
            }
        }
        // Slow: one agent's median against every other agent of the same process that is not
        // failing. A failing agent is named as such; its completed transfers came before it
        // broke, while the decode side was not yet busy with its errors and retries, so they
        // are no measure of what the others should take now (against one, a healthy agent
        // served after the failure looked several times slower).
        for (i, s) in self.agents.iter().enumerate() {
            if pctl[i].count < SLOW_MIN_TRANSFERS {
                continue;
            }
            let others: Vec<u64> = (0..self.agents.len())
                .filter(|&j| {
                    j != i
                        && self.agents[j].proc == s.proc
                        && self.agents[j].failed == 0
                        && pctl[j].count >= SLOW_MIN_TRANSFERS
                })
                .map(|j| pctl[j].p50)
                .collect();
            let Some(&worst_other) = others.iter().max() else {
                continue;
            };
            let p50 = pctl[i].p50;
            if p50 as f64 >= SLOW_RATIO * worst_other as f64
                && p50.saturating_sub(worst_other) >= SLOW_MIN_NS
            {
                out.push(KvAlert::Slow {
                    idx: i,
                    p50_ns: p50,
                    others_p50_ns: worst_other,
                    others: others.len(),
                });
            }
        }
        out
    }
}
