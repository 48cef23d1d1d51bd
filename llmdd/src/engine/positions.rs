//! Where each rank is now: a stall found from the threads' positions, for jobs already
//! stuck when llmdd attached (their collective calls began before the probes existed, so
//! no record of them will come, and the matching sees nothing open).
//!
//! The host samples every traced process's threads (`crate::threads`) in rounds: at attach,
//! and every interval while something may be stuck. A process is *waiting* when a thread of
//! it is inside a collective or waiting for its device, *elsewhere* otherwise. Ranks of one
//! job (its largest communicator, else its launcher's job key and world size) are stuck
//! when two rounds at least `stall_at_attach_confirm` apart place them the same and none of
//! them made a collective, send/receive or graph launch in between.
//!
//! - Some ranks waiting, some elsewhere: the ranks elsewhere are the ones the others wait
//!   for (a rank stopped before its collective: in a sleep, in Python, in a data loader).
//! - Every rank waiting: no rank is missing; the hang is on the device or the network, and
//!   is said so with no rank named.
//!
//! Resolved as soon as one of them makes such a call again.

use serde::Serialize;

use super::{
    findings::{wording, Culprit, FindingKey, FindingKind},
    procs::ProcId,
    util::{mix, FastMap},
    Engine,
};

/// What a thread is in, for the analysis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "place", rename_all = "snake_case")]
pub enum Place {
    /// Inside a collective or point-to-point call (`func`, the traced function), or inside
    /// a collective library without a named entry point (`func` empty).
    Collective { family: &'static str, func: String },
    /// Waiting for the device: inside a sync or event call, or inside the CUDA or HIP
    /// runtime or driver without a named entry point.
    DeviceWait { family: &'static str, func: String },
    /// Neither: `frame` is its innermost frame outside the C library.
    Elsewhere { frame: String },
    /// Its stack could not be read (the reason).
    Unknown { why: String },
}

impl Place {
    /// Whether the thread waits on other ranks or on the device.
    pub fn waiting(&self) -> bool {
        matches!(self, Place::Collective { .. } | Place::DeviceWait { .. })
    }

    /// "inside ncclAllReduce", "waiting in cudaStreamSynchronize", "in <frame>".
    pub fn describe(&self) -> String {
        match self {
            Place::Collective { family, func } if func.is_empty() => format!("inside {family}"),
            Place::Collective { func, .. } => format!("inside {func}"),
            Place::DeviceWait { family, func } if func.is_empty() => {
                format!("waiting inside {family}")
            }
            Place::DeviceWait { func, .. } => format!("waiting in {func}"),
            Place::Elsewhere { frame } => format!("in {frame}"),
            Place::Unknown { why } => format!("unknown ({why})"),
        }
    }
}

/// One thread of a traced process, as sampled.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThreadPlace {
    pub tid: u32,
    /// Thread name.
    pub name: String,
    /// Scheduler state letter (R running, S sleeping, D disk sleep, ...).
    pub state: char,
    /// The system call it is blocked in, when it is in one.
    pub syscall: Option<i64>,
    /// How its registers were read: "syscall" (blocked), "ptrace" (running) or "none".
    pub regs_from: &'static str,
    #[serde(flatten)]
    pub place: Place,
    /// Its innermost frames, named, innermost first.
    pub frames: Vec<String>,
    /// Its three innermost frames outside the C library and the loader, "a <- b <- c".
    pub site: String,
}

/// A process's latest sample.
#[derive(Clone, Debug)]
pub struct ProcSample {
    pub at_ns: u64,
    pub threads: Vec<ThreadPlace>,
}

/// The thread that says most about a process: the one the job's calls come from, as far
/// as the stacks tell. In order: a thread inside a named collective entry point, one
/// blocked in a named sync call, the main thread, one polling an event query, one inside
/// a traced library without a named entry point, any. Libraries run threads of their own
/// that sit inside them all the time (NCCL's proxy threads, UCX progress threads, a
/// runtime's workers; PyTorch's watchdog polls event queries): a process is placed by such
/// a thread only when no thread of the job's own says more, else a rank stopped in its own
/// code would look like one waiting with its peers.
pub fn telling(threads: &[ThreadPlace], pid: u32) -> Option<&ThreadPlace> {
    let named = |t: &&ThreadPlace, coll: bool| match &t.place {
        Place::Collective { func, .. } => coll && !func.is_empty(),
        Place::DeviceWait { func, .. } => {
            !coll && !func.is_empty() && !func.ends_with("EventQuery")
        }
        _ => false,
    };
    let polling = |t: &&ThreadPlace| matches!(&t.place, Place::DeviceWait { func, .. } if func.ends_with("EventQuery"));
    threads
        .iter()
        .find(|t| named(t, true))
        .or_else(|| threads.iter().find(|t| named(t, false)))
        .or_else(|| threads.iter().find(|t| t.tid == pid))
        .or_else(|| threads.iter().find(polling))
        .or_else(|| threads.iter().find(|t| t.place.waiting()))
        .or(threads.first())
}

impl ProcSample {
    fn telling(&self, pid: u32) -> Option<&ThreadPlace> {
        telling(&self.threads, pid)
    }

    /// Whether the process waits, as its most telling thread does (see [`telling`]).
    fn waiting(&self, pid: u32) -> bool {
        self.telling(pid).is_some_and(|t| t.place.waiting())
    }
}

/// A traced process's threads as last sampled, for the views.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcThreads {
    pub pid: u32,
    /// When they were read (CLOCK_MONOTONIC ns).
    pub at_ns: u64,
    pub threads: Vec<ThreadPlace>,
}

/// The state of one job's places across rounds.
#[derive(Clone, Debug, Default)]
struct GroupState {
    /// Since when its ranks have been placed alike with no call, and how.
    since_ns: u64,
    shape: Vec<(ProcId, bool)>,
    raised: Option<FindingKey>,
}

#[derive(Default)]
pub struct Positions {
    pub samples: FastMap<ProcId, ProcSample>,
    groups: FastMap<u64, GroupState>,
    /// Collective, send/receive or graph-launch arrivals per process, last seen (event time).
    pub last_arrival: FastMap<ProcId, u64>,
}

impl Engine {
    /// The threads of traced process `pid` as sampled at `at_ns` (CLOCK_MONOTONIC); call
    /// [`Engine::threads_round_done`] once every process of a round is in.
    pub fn threads_now(&mut self, pid: u32, at_ns: u64, threads: Vec<ThreadPlace>) {
        let proc = self.procs.get(pid, at_ns);
        self.positions
            .samples
            .insert(proc, ProcSample { at_ns, threads });
    }

    /// A round of samples is complete: looks for jobs stuck since an earlier round.
    pub fn threads_round_done(&mut self, at_ns: u64) {
        let mut groups: FastMap<u64, Vec<ProcId>> = FastMap::default();
        for (&proc, s) in &self.positions.samples {
            if s.at_ns + 1_000_000_000 < at_ns || self.procs.proc(proc).exited_ns.is_some() {
                continue;
            }
            if let Some(g) = self.group_of(proc) {
                groups.entry(g).or_default().push(proc);
            }
        }
        // Groups no process is in any more (exited, or now known by their communicator).
        let gone: Vec<u64> = self
            .positions
            .groups
            .keys()
            .filter(|g| !groups.contains_key(g))
            .copied()
            .collect();
        for g in gone {
            if let Some(key) = self.positions.groups.remove(&g).and_then(|s| s.raised) {
                self.findings.deactivate(&key, at_ns);
            }
        }
        for (g, mut procs) in groups {
            procs.sort_unstable();
            self.judge_group(g, &procs, at_ns);
        }
    }

    /// Every live process's threads as last sampled.
    pub fn threads_view(&self) -> Vec<ProcThreads> {
        let mut out: Vec<ProcThreads> = self
            .positions
            .samples
            .iter()
            .filter(|(p, _)| self.procs.proc(**p).exited_ns.is_none())
            .map(|(p, s)| ProcThreads {
                pid: self.procs.proc(*p).pid,
                at_ns: s.at_ns,
                threads: s.threads.clone(),
            })
            .collect();
        out.sort_by_key(|p| p.pid);
        out
    }

    /// Whether another round is worth its cost: a job's ranks were placed alike with some
    /// waiting and none has made a call since, or a stall found this way is still active.
    pub fn threads_wanted(&self) -> bool {
        self.positions.groups.values().any(|g| {
            let quiet = g.shape.iter().all(|(p, _)| {
                self.positions
                    .last_arrival
                    .get(p)
                    .is_none_or(|&t| t < g.since_ns)
            });
            g.raised.is_some() || (quiet && g.shape.iter().any(|(_, w)| *w))
        })
    }

    /// The job a process is a rank of: its largest live communicator, else its launcher's
    /// job key and world size (2 or more).
    fn group_of(&self, proc: ProcId) -> Option<u64> {
        let best = self
            .comms
            .memberships(proc)
            .iter()
            .map(|&(c, _)| &self.comms.list[c as usize])
            .filter(|c| c.nranks.unwrap_or(0) >= 2)
            .max_by_key(|c| (c.nranks, u64::MAX - c.id));
        if let Some(c) = best {
            return Some(c.id);
        }
        let h = &self.procs.proc(proc).hints;
        let w = h.world_size.filter(|&w| w >= 2)?;
        let key = h.job.as_deref().unwrap_or("");
        Some(mix(&[
            0x90b,
            w as u64,
            mix(&key.bytes().map(u64::from).collect::<Vec<_>>()),
        ]))
    }

    fn judge_group(&mut self, g: u64, procs: &[ProcId], at_ns: u64) {
        let shape: Vec<(ProcId, bool)> = procs
            .iter()
            .map(|p| {
                let pid = self.procs.proc(*p).pid;
                (*p, self.positions.samples[p].waiting(pid))
            })
            .collect();
        let confirm = self.cfg.stall_at_attach_confirm_ns;
        let st = self.positions.groups.entry(g).or_default();
        let moved = procs.iter().any(|p| {
            self.positions
                .last_arrival
                .get(p)
                .is_some_and(|&t| t >= st.since_ns)
        });
        if moved || st.shape != shape || procs.len() < 2 {
            if let Some(key) = st.raised.take() {
                self.findings.deactivate(&key, at_ns);
            }
            *st = GroupState {
                since_ns: at_ns,
                shape,
                raised: None,
            };
            return;
        }
        if at_ns.saturating_sub(st.since_ns) < confirm || !shape.iter().any(|(_, w)| *w) {
            return;
        }
        // A stall llmdd saw begin is already named, by calls, with better evidence.
        if st.raised.is_none() && self.stall_open_among(procs) {
            return;
        }
        let st = self.positions.groups.entry(g).or_default();
        let since = st.since_ns;
        let key = FindingKey {
            kind: FindingKind::Stall,
            scope: g,
            culprit: 0x5_0000_0000,
        };
        st.raised = Some(key);
        let d = self.stuck_draft(g, procs, since, at_ns);
        self.raise(key, d);
    }

    /// Whether a stall found from calls is open on a lane one of `procs` is a member of.
    fn stall_open_among(&self, procs: &[ProcId]) -> bool {
        self.open_stalls.keys().any(|&(lane_id, _)| {
            self.lanes
                .iter()
                .filter(|l| l.id == lane_id)
                .any(|l| l.members.iter().any(|m| procs.contains(&m.proc)))
        })
    }

    /// Whether group `g` is a communicator (else a launcher's job).
    fn comm_group(&self, g: u64) -> bool {
        self.comms.list.iter().any(|c| c.id == g)
    }

    /// "communicator 0123abcd" or "the job of 4 ranks (MASTER_ADDR 10.0.0.1:29500)".
    fn describe_group(&self, g: u64, procs: &[ProcId]) -> String {
        if self.comm_group(g) {
            return format!("communicator {g:016x}");
        }
        let h = &self.procs.proc(procs[0]).hints;
        let world = h.world_size.unwrap_or(procs.len() as u32);
        match h.job.as_deref() {
            Some(job) => format!("the job {job} ({world} ranks by their environment)"),
            None => format!("the job of {world} ranks (by their environment)"),
        }
    }

    /// A rank of group `g` for the evidence: its rank in the group's communicator, else its
    /// environment's.
    fn rank_in(&self, g: u64, proc: ProcId) -> Option<u32> {
        self.comms
            .memberships(proc)
            .iter()
            .map(|&(c, m)| (&self.comms.list[c as usize], m))
            .find(|(c, _)| c.id == g)
            .and_then(|(c, m)| c.members[m as usize].rank)
            .or(self.procs.proc(proc).hints.rank)
    }

    fn stuck_draft(
        &self,
        g: u64,
        procs: &[ProcId],
        since: u64,
        now: u64,
    ) -> super::findings::Draft {
        let mut waiting = Vec::new();
        let mut elsewhere = Vec::new();
        for &p in procs {
            let pid = self.procs.proc(p).pid;
            let s = &self.positions.samples[&p];
            let at = s
                .telling(pid)
                .map(|t| {
                    let site = if t.site.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", t.site)
                    };
                    format!(
                        "{} (thread {} '{}'{site})",
                        t.place.describe(),
                        t.tid,
                        t.name
                    )
                })
                .unwrap_or_else(|| "no thread read".into());
            let who = wording::describe_member(
                self.rank_in(g, p).unwrap_or(u32::MAX),
                pid,
                self.procs.host(p),
            );
            let line = format!("{who} {at}");
            if s.waiting(pid) {
                waiting.push(line);
            } else {
                elsewhere.push((p, line));
            }
        }
        let culprit = elsewhere.first().map(|&(p, _)| Culprit {
            pid: Some(self.procs.proc(p).pid),
            rank: self.rank_in(g, p),
            comm: self.comm_group(g).then_some(g),
            host: self.procs.host(p).map(str::to_owned),
            connection: None,
            agent: None,
        });
        wording::stuck_at_attach(wording::StuckFacts {
            waiting,
            elsewhere: elsewhere.into_iter().map(|(_, l)| l).collect(),
            since_ns: since,
            now_ns: now,
            culprit,
            group: self.describe_group(g, procs),
            comm: self.comm_group(g).then_some(g),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{synth::*, Config, FindingKind, ProcessHints};

    const S: u64 = 1_000_000_000;

    fn job() -> Engine {
        let mut e = Engine::new(Config::default());
        for r in 0..4u32 {
            let hints = ProcessHints {
                rank: Some(r),
                world_size: Some(4),
                job: Some("master:10.0.0.1:29500".into()),
                ..Default::default()
            };
            e.register_process(100 + r, hints);
        }
        e
    }

    fn thread(pid: u32, place: Place) -> ThreadPlace {
        ThreadPlace {
            tid: pid,
            name: "python".into(),
            state: 'S',
            syscall: Some(7),
            regs_from: "syscall",
            place,
            frames: Vec::new(),
            site: "train.py:step".into(),
        }
    }

    fn inside() -> Place {
        Place::Collective {
            family: "nccl",
            func: "ncclAllReduce".into(),
        }
    }

    fn sleeping() -> Place {
        Place::Elsewhere {
            frame: "time.sleep".into(),
        }
    }

    /// One round at `at` with rank `r` placed by `place(r)`.
    fn round(e: &mut Engine, at: u64, place: impl Fn(u32) -> Place) {
        for r in 0..4u32 {
            e.threads_now(100 + r, at, vec![thread(100 + r, place(r))]);
        }
        e.threads_round_done(at);
    }

    fn stalls(e: &Engine) -> Vec<&crate::engine::Finding> {
        e.findings()
            .iter()
            .filter(|f| f.kind == FindingKind::Stall && f.active)
            .collect()
    }

    #[test]
    fn the_rank_not_waiting_is_named_once_confirmed() {
        let mut e = job();
        let place = |r| if r == 2 { sleeping() } else { inside() };
        round(&mut e, 10 * S, place);
        assert!(stalls(&e).is_empty(), "one look proves nothing");
        assert!(e.threads_wanted());
        round(&mut e, 11 * S, place);
        let f = stalls(&e);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].culprit.pid, Some(102));
        assert_eq!(f[0].culprit.rank, Some(2));
        assert_eq!(
            f[0].culprit.comm, None,
            "a job by environment, no communicator"
        );
        assert_eq!(f[0].magnitude.name, "stalled_at_least_ns");
        assert!(f[0].evidence.contains("time.sleep"), "{}", f[0].evidence);
    }

    #[test]
    fn every_rank_waiting_names_no_rank() {
        let mut e = job();
        round(&mut e, 10 * S, |_| inside());
        round(&mut e, 12 * S, |_| inside());
        let f = stalls(&e);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].culprit.pid, None);
        assert!(
            f[0].evidence.contains("device or the network"),
            "{}",
            f[0].evidence
        );
    }

    #[test]
    fn calls_between_looks_are_a_healthy_job() {
        let mut e = job();
        let place = |r| if r == 0 { sleeping() } else { inside() };
        round(&mut e, 10 * S, place);
        for r in 0..4u32 {
            e.ingest(coll(
                ALL_REDUCE,
                100 + r,
                0xc0ffee,
                Some(r as i32),
                4,
                4096,
                5,
                10 * S + 500_000_000,
                10 * S + 501_000_000,
            ));
        }
        e.advance(11 * S);
        round(&mut e, 11 * S, place);
        assert!(stalls(&e).is_empty());
        for r in 0..4u32 {
            e.ingest(coll(
                ALL_REDUCE,
                100 + r,
                0xc0ffee,
                Some(r as i32),
                4,
                4096,
                5,
                11 * S + 500_000_000,
                11 * S + 501_000_000,
            ));
        }
        e.advance(12 * S);
        assert!(
            !e.threads_wanted(),
            "a job making calls is not looked at again"
        );
    }

    #[test]
    fn a_stuck_job_that_moves_again_resolves() {
        let mut e = job();
        let place = |r| if r == 1 { sleeping() } else { inside() };
        round(&mut e, 10 * S, place);
        round(&mut e, 12 * S, place);
        assert_eq!(stalls(&e).len(), 1);
        round(&mut e, 13 * S, |_| sleeping());
        assert!(stalls(&e).is_empty(), "resolved once the places change");
        assert!(e
            .findings()
            .iter()
            .any(|f| f.kind == FindingKind::Stall && !f.active));
    }

    #[test]
    fn ranks_elsewhere_everywhere_raise_nothing() {
        let mut e = job();
        round(&mut e, 10 * S, |_| sleeping());
        round(&mut e, 15 * S, |_| sleeping());
        assert!(
            stalls(&e).is_empty(),
            "a job between steps (data loading) is not stuck"
        );
        assert!(!e.threads_wanted());
    }

    #[test]
    fn library_threads_do_not_place_a_rank_stopped_in_its_own_code() {
        // Every process has a thread of its collective library or runtime waiting inside it
        // all the time (NCCL's proxy, a stream worker); rank 2's main thread is asleep in
        // its own code, the others' main threads wait in a sync.
        let mut e = job();
        let helper = |pid: u32| ThreadPlace {
            tid: pid + 1000,
            place: Place::Collective {
                family: "nccl",
                func: String::new(),
            },
            ..thread(pid, sleeping())
        };
        let synced = || Place::DeviceWait {
            family: "cudart",
            func: "cudaStreamSynchronize".into(),
        };
        for at in [10 * S, 11 * S] {
            for r in 0..4u32 {
                let main = thread(100 + r, if r == 2 { sleeping() } else { synced() });
                e.threads_now(100 + r, at, vec![helper(100 + r), main]);
            }
            e.threads_round_done(at);
        }
        let f = stalls(&e);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].culprit.pid, Some(102), "{}", f[0].evidence);
    }
}
