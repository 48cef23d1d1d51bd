//! Communicator identity: which per-process handles are one communicator across processes.
//!
//! * **Unique id.** `ncclCommInitRank*` carries the hash of the `ncclUniqueId` every rank of
//!   one communicator was given: identity = (uid hash, nranks). Members join at their init and
//!   start counting calls from instance 0.
//! * **Split.** `ncclCommSplit` is collective over the parent: the k-th split of a parent with
//!   colour c is the same child on every rank. Identity = (parent id, k, colour); members start
//!   at instance 0 of the child. Ranks in the child come from its first call (read through the
//!   handle).
//! * **Fallback (no creation seen; the usual case when attaching to running processes).** A
//!   handle first seen in a call is grouped with handles of other processes by its rank count
//!   and the rank read through it (or, when the probes could not read them, the process's
//!   `RANK`/`WORLD_SIZE` hints): it joins an existing inferred communicator with the same
//!   rank count that has no live member of that rank, no other handle of this process (unless
//!   all its members are this process, as with `ncclCommInitAll`) and no conflicting job key;
//!   among several, it prefers the same job, the same parent process (launcher), the same
//!   host, the same last call signature, and the most recent activity, in that order. The
//!   environment's ranks describe the world communicator only: when the process's world
//!   handle is known (MPI), its other handles are not grouped by them. Otherwise it starts a new one. Its position in
//!   the call sequence is then aligned with the other members' (see `matching`).
//!   Limitation: two communicators of the same size with the same rank numbers in one job,
//!   created before tracing, whose processes give no distinguishing hint, can be mixed up.
//!   Handles whose rank cannot be known at all form a communicator of their own.
//!
//! A communicator belongs to one library family: a handle never joins another family's
//! communicator, and communicators of different families never make each other ambiguous
//! (a vLLM worker's tensor-parallel group has an NCCL communicator and a custom all-reduce
//! object of the same shape; they are two communicators, each fully told apart).

use llmdd_common::funcs::Family;
use serde::Serialize;

use super::{
    config::Config,
    matching::{Evidence, Lane},
    procs::{ProcId, Procs},
    util::{mix, FastMap},
};

/// How a communicator's identity was established.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Identity {
    UniqueId {
        uid_hash: u64,
    },
    Split {
        parent: u64,
        split: u32,
        color: i64,
    },
    /// Grouped by rank count and ranks (see the module doc); `rank_source` says where the
    /// ranks came from ("handle" or "environment", or "unknown" for a lone handle).
    /// `ambiguous`: a member could as well have joined another communicator of the same
    /// shape (nothing told them apart): the grouping is a guess, and no finding names a
    /// rank on it.
    Inferred {
        ordinal: u32,
        rank_source: &'static str,
        ambiguous: bool,
    },
}

#[derive(Clone, Debug)]
pub struct CommMember {
    pub proc: ProcId,
    pub handle: u64,
    pub rank: Option<u32>,
    pub lane_member: u32,
    /// Splits this member has made of this communicator (numbering children).
    pub splits: u32,
    pub left_ns: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Communicator {
    pub id: u64,
    pub identity: Identity,
    /// The library family whose calls it carries.
    pub family: Family,
    pub nranks: Option<u32>,
    pub job: Option<String>,
    pub lane: u32,
    pub members: Vec<CommMember>,
    pub created_ns: u64,
    pub last_sig: u64,
}

/// Where a call lands: communicator, member, and the member's index in the lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub comm: u32,
    pub member: u32,
    pub lane: u32,
    pub lane_member: u32,
}

#[derive(Default)]
pub struct Comms {
    pub list: Vec<Communicator>,
    handles: FastMap<(ProcId, u64), (u32, u32)>,
    by_uid: FastMap<(u64, u32), u32>,
    by_split: FastMap<(u64, u32, i64), u32>,
    by_proc: FastMap<ProcId, Vec<(u32, u32)>>,
    /// Communicators not tracked because the cap was reached and none could be evicted.
    pub refused: u64,
    /// Communicators (all members gone) evicted to make room.
    pub evicted: u64,
    /// Slots reused since the engine last looked (it drops what it keyed by them).
    pub recycled: Vec<u32>,
    /// Ranks read through a library's layout that failed the plausibility check (see
    /// [`plausible`]): (pid, rank, size read, family), once per process.
    pub untrusted: Vec<(u32, i32, i32, Family)>,
    /// Handles whose rank and size, read on a later call, differed from what placed the
    /// member: (pid, placed (rank, size), read (rank, size)), once per process. A layout that
    /// reads the right fields reads the same values on every call of one communicator.
    pub unstable: Vec<(u32, RankRead, RankRead)>,
    /// Layouts whose read failed the plausibility check once: no later read through them is
    /// trusted, in any process mapping the same build (the layout is wrong for the build,
    /// whatever a later read happens to give).
    distrusted: FastMap<LayoutKey, ()>,
    /// The one handle per (process, family) given the launcher's ranks when none could be
    /// read and the world handle is unknown: the environment describes one communicator, so
    /// another handle is shown unidentified rather than given the same ranks.
    env_handle: FastMap<(ProcId, Family), u64>,
}

/// Which layout a read went through: a library build (by its build id or path), else the
/// process's library of that family.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum LayoutKey {
    Build(Family, String),
    Proc(ProcId, Family),
}

fn layout_key(f: &CallFacts, hints: &super::ProcessHints) -> LayoutKey {
    match hints.layout(f.family) {
        Some(l) => LayoutKey::Build(f.family, l.id.clone()),
        None => LayoutKey::Proc(f.proc, f.family),
    }
}

/// A (rank, size) pair read through a layout.
pub type RankRead = (u32, u32);

/// Processes whose untrusted reads are remembered for the notes.
const MAX_UNTRUSTED: usize = 64;
/// No communicator has more ranks (NCCL's largest jobs are tens of thousands).
const MAX_RANKS: u32 = 1 << 20;

/// Whether a rank and size read through a library's struct layout (NCCL's decoded from its
/// accessors, Gloo's assumed) can be what they claim, against what the process's launcher
/// says: the size at most the job's world (`WORLD_SIZE`: no communicator has more ranks
/// than the job), and a communicator the size of the world has the launcher's ranks (its
/// `RANK`). Without a launcher's word only the bound applies. A layout that is wrong for a
/// build reads other fields or garbage, which these catch but for coincidences.
pub fn plausible((rank, n): (u32, u32), hints: &super::ProcessHints) -> bool {
    if n > MAX_RANKS || rank >= n {
        return false;
    }
    match hints.world_size {
        Some(w) if n > w => false,
        Some(w) if n == w => hints.rank.is_none_or(|r| r == rank),
        _ => true,
    }
}

/// Facts a call carries about its communicator.
pub struct CallFacts {
    pub family: Family,
    pub proc: ProcId,
    pub pid: u32,
    pub handle: u64,
    pub rank: Option<i32>,
    pub nranks: Option<i32>,
    pub sig: u64,
    pub t: u64,
}

fn valid(rank: Option<i32>, nranks: Option<i32>) -> Option<(u32, u32)> {
    match (rank, nranks) {
        (Some(r), Some(n)) if r >= 0 && n > 0 && r < n => Some((r as u32, n as u32)),
        _ => None,
    }
}

impl Comms {
    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        id: u64,
        (identity, family): (Identity, Family),
        nranks: Option<u32>,
        job: Option<String>,
        t: u64,
        lanes: &mut Vec<Lane>,
        cfg: &Config,
    ) -> Option<u32> {
        let mut lane = Lane::new(id, Evidence::Collectives, t, cfg);
        lane.nranks = nranks.unwrap_or(0);
        let mut comm = Communicator {
            id,
            identity,
            family,
            nranks,
            job,
            lane: lanes.len() as u32,
            members: Vec::new(),
            created_ns: t,
            last_sig: 0,
        };
        if self.list.len() < cfg.max_communicators {
            lanes.push(lane);
            self.list.push(comm);
            return Some((self.list.len() - 1) as u32);
        }
        // At the cap: reuse the slot of the least recently active communicator whose members
        // have all left; with none, refuse (counted).
        let victim = self
            .list
            .iter()
            .enumerate()
            .filter(|(_, c)| c.members.iter().all(|m| m.left_ns.is_some()))
            .min_by_key(|(i, c)| (lanes[c.lane as usize].last_ns, *i))
            .map(|(i, _)| i as u32);
        let Some(v) = victim else {
            self.refused += 1;
            return None;
        };
        self.by_uid.retain(|_, c| *c != v);
        self.by_split.retain(|_, c| *c != v);
        self.handles.retain(|_, (c, _)| *c != v);
        for list in self.by_proc.values_mut() {
            list.retain(|(c, _)| *c != v);
        }
        comm.lane = self.list[v as usize].lane;
        lanes[comm.lane as usize] = lane;
        self.list[v as usize] = comm;
        self.evicted += 1;
        self.recycled.push(v);
        Some(v)
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        c: u32,
        proc: ProcId,
        pid: u32,
        handle: u64,
        rank: Option<u32>,
        at_start: bool,
        t: u64,
        lanes: &mut [Lane],
    ) -> Resolved {
        let comm = &mut self.list[c as usize];
        let lane = comm.lane;
        let lm = lanes[lane as usize].add_member(proc, pid, rank, at_start, t);
        comm.members.push(CommMember {
            proc,
            handle,
            rank,
            lane_member: lm,
            splits: 0,
            left_ns: None,
        });
        let member = (comm.members.len() - 1) as u32;
        self.handles.insert((proc, handle), (c, member));
        self.by_proc.entry(proc).or_default().push((c, member));
        Resolved {
            comm: c,
            member,
            lane,
            lane_member: lm,
        }
    }

    /// `ncclCommInitRank*` returned `handle` for rank `rank` of `nranks` under `uid`.
    #[allow(clippy::too_many_arguments)]
    pub fn init(
        &mut self,
        family: Family,
        proc: ProcId,
        pid: u32,
        uid: u64,
        rank: Option<i32>,
        nranks: Option<i32>,
        handle: u64,
        t: u64,
        procs: &Procs,
        lanes: &mut Vec<Lane>,
        cfg: &Config,
    ) -> Option<Resolved> {
        let (r, n) = valid(rank, nranks)?;
        if handle == 0 || self.handles.contains_key(&(proc, handle)) {
            return None;
        }
        let c = match self.by_uid.get(&(uid, n)) {
            Some(&c) => c,
            None => {
                let job = procs.proc(proc).hints.job.clone();
                let c = self.create(
                    mix(&[uid, n as u64]),
                    (Identity::UniqueId { uid_hash: uid }, family),
                    Some(n),
                    job,
                    t,
                    lanes,
                    cfg,
                )?;
                self.by_uid.insert((uid, n), c);
                c
            }
        };
        if self.list[c as usize]
            .members
            .iter()
            .any(|m| m.rank == Some(r) && m.left_ns.is_none())
        {
            return None;
        }
        Some(self.join(c, proc, pid, handle, Some(r), true, t, lanes))
    }

    /// `ncclCommSplit(parent, color, key, &new)` returned `new`. Every member of the parent
    /// must be told (NOCOLOR included) so that split numbering stays equal across ranks.
    #[allow(clippy::too_many_arguments)]
    pub fn split(
        &mut self,
        proc: ProcId,
        pid: u32,
        parent: u64,
        color: i64,
        new: u64,
        t: u64,
        lanes: &mut Vec<Lane>,
        cfg: &Config,
    ) -> Option<Resolved> {
        let &(pc, pm) = self.handles.get(&(proc, parent))?;
        let k = {
            let m = &mut self.list[pc as usize].members[pm as usize];
            m.splits += 1;
            m.splits
        };
        if color < 0 || new == 0 || self.handles.contains_key(&(proc, new)) {
            return None;
        }
        let pid_ = self.list[pc as usize].id;
        let c = match self.by_split.get(&(pid_, k, color)) {
            Some(&c) => c,
            None => {
                let job = self.list[pc as usize].job.clone();
                let family = self.list[pc as usize].family;
                let id = mix(&[pid_, k as u64, color as u64, 0x5b11]);
                let c = self.create(
                    id,
                    (
                        Identity::Split {
                            parent: pid_,
                            split: k,
                            color,
                        },
                        family,
                    ),
                    None,
                    job,
                    t,
                    lanes,
                    cfg,
                )?;
                self.by_split.insert((pid_, k, color), c);
                c
            }
        };
        Some(self.join(c, proc, pid, new, None, true, t, lanes))
    }

    /// Whether the launcher's ranks may place `f`'s handle: where the process's world
    /// handle is known it is that one (checked by the caller); otherwise the first handle of
    /// the family in the process (user probes excepted: their handles are llmdd's own, one
    /// per probe, each describing the job).
    fn env_for(&mut self, f: &CallFacts, hints: &super::ProcessHints) -> bool {
        if hints.world_comm.is_some() || f.family == Family::User {
            return true;
        }
        *self
            .env_handle
            .entry((f.proc, f.family))
            .or_insert(f.handle)
            == f.handle
    }

    /// Whether `handle` of `proc` is a known communicator.
    pub fn knows(&self, proc: ProcId, handle: u64) -> bool {
        self.handles.contains_key(&(proc, handle))
    }

    /// The communicator of a call's handle, grouping an unknown handle (see the module doc).
    pub fn resolve(
        &mut self,
        f: &CallFacts,
        procs: &Procs,
        lanes: &mut Vec<Lane>,
        cfg: &Config,
    ) -> Option<Resolved> {
        if let Some(&(c, m)) = self.handles.get(&(f.proc, f.handle)) {
            let comm = &mut self.list[c as usize];
            comm.last_sig = f.sig;
            let lane = comm.lane;
            let placed = comm.members[m as usize].rank.zip(comm.nranks);
            let lm = comm.members[m as usize].lane_member;
            // Read again on this call: the same values, or a layout not to be trusted. (An
            // implausible read was said when the member was placed from its environment.)
            let hints = &procs.proc(f.proc).hints;
            let now = valid(f.rank, f.nranks).filter(|&rn| plausible(rn, hints));
            if let (Some(p), Some(now)) = (placed, now) {
                if p != now
                    && self.unstable.len() < MAX_UNTRUSTED
                    && !self.unstable.iter().any(|u| u.0 == f.pid)
                {
                    self.unstable.push((f.pid, p, now));
                }
            }
            let comm = &mut self.list[c as usize];
            let member = &mut comm.members[m as usize];
            if member.rank.is_none() {
                // Split children learn ranks from their first calls.
                let hints = &procs.proc(f.proc).hints;
                if let Some((r, n)) = valid(f.rank, f.nranks).filter(|&rn| plausible(rn, hints)) {
                    member.rank = Some(r);
                    lanes[lane as usize].set_rank(lm, r);
                    if comm.nranks.is_none() {
                        comm.nranks = Some(n);
                        lanes[lane as usize].nranks = n;
                    }
                }
            }
            return Some(Resolved {
                comm: c,
                member: m,
                lane,
                lane_member: lm,
            });
        }
        let hints = &procs.proc(f.proc).hints;
        // The environment's ranks describe the world communicator: not another handle of a
        // process whose world handle is known (an MPI communicator split off before
        // tracing began).
        let world = hints.world_comm.is_none_or(|w| w == f.handle);
        let read = valid(f.rank, f.nranks);
        let layout = read.map(|_| layout_key(f, hints));
        let read = read.filter(|_| {
            layout
                .as_ref()
                .is_none_or(|k| !self.distrusted.contains_key(k))
        });
        if let Some(rn) = read.filter(|&rn| !plausible(rn, hints)) {
            if let Some(k) = layout {
                self.distrusted.insert(k, ());
            }
            if self.untrusted.len() < MAX_UNTRUSTED && !self.untrusted.iter().any(|u| u.0 == f.pid)
            {
                self.untrusted
                    .push((f.pid, rn.0 as i32, rn.1 as i32, f.family));
            }
        }
        let (rn, source) = match read.filter(|&rn| plausible(rn, hints)) {
            Some(rn) => (Some(rn), "handle"),
            None => match (hints.rank, hints.world_size) {
                (Some(r), Some(n)) if r < n && world && self.env_for(f, hints) => {
                    (Some((r, n)), "environment")
                }
                _ => (None, "unknown"),
            },
        };
        let job = hints.job.clone();
        let Some((rank, n)) = rn else {
            // Nothing to group by: a communicator of its own.
            let id = mix(&[f.pid as u64, f.handle, f.proc as u64, 0x10e1]);
            let c = self.create(
                id,
                (
                    Identity::Inferred {
                        ordinal: 0,
                        rank_source: source,
                        ambiguous: false,
                    },
                    f.family,
                ),
                None,
                job,
                f.t,
                lanes,
                cfg,
            )?;
            return Some(self.join(c, f.proc, f.pid, f.handle, None, false, f.t, lanes));
        };
        let host = hints.host.as_deref();
        let parent = hints.parent;
        // (same job, same parent, same host, same last signature, recency), communicator.
        type Score = (u8, u8, u8, u8, u64);
        let mut best: Option<(Score, u32)> = None;
        let mut runner_up: Option<Score> = None;
        for (ci, c) in self.list.iter().enumerate() {
            if c.nranks != Some(n)
                || c.family != f.family
                || matches!(c.identity, Identity::Split { .. })
            {
                continue;
            }
            if c.members
                .iter()
                .any(|m| m.rank == Some(rank) && m.left_ns.is_none())
            {
                continue;
            }
            // One process holds one member of a communicator: a second handle of its own is
            // another communicator (ncclCommInitAll's single-process communicators, attached
            // after they were made, are not told apart this way: each handle is its own).
            if c.members
                .iter()
                .any(|m| m.left_ns.is_none() && m.proc == f.proc)
            {
                continue;
            }
            if let (Some(a), Some(b)) = (&c.job, &job) {
                if a != b {
                    continue;
                }
            }
            let same_job = u8::from(c.job.is_some() && c.job == job);
            let same_parent = u8::from(
                parent.is_some()
                    && c.members
                        .iter()
                        .any(|m| procs.proc(m.proc).hints.parent == parent),
            );
            let same_host =
                u8::from(host.is_some() && c.members.iter().any(|m| procs.host(m.proc) == host));
            let same_sig = u8::from(c.last_sig != 0 && c.last_sig == f.sig);
            let recency = u64::MAX - lanes[c.lane as usize].last_ns.abs_diff(f.t);
            let score = (same_job, same_parent, same_host, same_sig, recency);
            if best.as_ref().is_none_or(|(b, _)| score > *b) {
                runner_up = best.map(|(b, _)| b);
                best = Some((score, ci as u32));
            } else if runner_up.is_none_or(|r| score > r) {
                runner_up = Some(score);
            }
        }
        // Only recency told the best from another candidate: a guess.
        let ambiguous = match (best, runner_up) {
            (Some((b, _)), Some(r)) => (b.0, b.1, b.2, b.3) == (r.0, r.1, r.2, r.3),
            _ => false,
        };
        let c = match best {
            Some((_, c)) => c,
            None => {
                let ordinal = self
                    .list
                    .iter()
                    .filter(|c| {
                        c.nranks == Some(n)
                            && matches!(c.identity, Identity::Inferred { .. })
                            && c.job == job
                    })
                    .count() as u32;
                let jh = job
                    .as_deref()
                    .map(|j| mix(&j.bytes().map(u64::from).collect::<Vec<_>>()))
                    .unwrap_or(0);
                // The ordinal counts every family's communicators of this shape: ids stay
                // unique when two families have one each.
                let id = mix(&[0x1f, n as u64, jh, ordinal as u64]);
                let identity = Identity::Inferred {
                    ordinal,
                    rank_source: source,
                    ambiguous: false,
                };
                self.create(id, (identity, f.family), Some(n), job, f.t, lanes, cfg)?
            }
        };
        if ambiguous {
            self.mark_ambiguous(c, lanes);
        }
        self.same_shape_is_ambiguous(c, procs, lanes);
        self.list[c as usize].last_sig = f.sig;
        Some(self.join(c, f.proc, f.pid, f.handle, Some(rank), false, f.t, lanes))
    }

    fn mark_ambiguous(&mut self, c: u32, lanes: &mut [Lane]) {
        if let Identity::Inferred { ambiguous, .. } = &mut self.list[c as usize].identity {
            *ambiguous = true;
            lanes[self.list[c as usize].lane as usize].ambiguous = true;
        }
    }

    /// Communicators inferred from ranks alone are told apart only by their rank count and
    /// job (or, without a job key, their members' launcher): two of the same shape in one
    /// job, made before tracing began (a tensor-parallel and a data-parallel communicator of
    /// 2 ranks each, or the two tensor-parallel groups of a 2x2 job), could have had their
    /// members paired either way. Every one of that shape is then ambiguous.
    fn same_shape_is_ambiguous(&mut self, c: u32, procs: &Procs, lanes: &mut [Lane]) {
        type Shape = (Family, u32, Option<String>, Option<u32>);
        let shape = |comm: &Communicator| -> Option<Shape> {
            if !matches!(comm.identity, Identity::Inferred { .. }) {
                return None;
            }
            let parent = comm
                .members
                .first()
                .and_then(|m| procs.proc(m.proc).hints.parent);
            Some((
                comm.family,
                comm.nranks?,
                comm.job.clone(),
                comm.job.is_none().then_some(parent).flatten(),
            ))
        };
        let Some(mine) = shape(&self.list[c as usize]) else {
            return;
        };
        let same: Vec<u32> = (0..self.list.len() as u32)
            .filter(|&o| shape(&self.list[o as usize]).as_ref() == Some(&mine))
            .collect();
        if same.len() >= 2 {
            for o in same {
                self.mark_ambiguous(o, lanes);
            }
        }
    }

    /// `ncclCommDestroy`/`ncclCommAbort`: the member leaves.
    pub fn end(&mut self, proc: ProcId, handle: u64, t: u64) -> Option<(u32, u32)> {
        let (c, m) = self.handles.remove(&(proc, handle))?;
        let mem = &mut self.list[c as usize].members[m as usize];
        mem.left_ns.get_or_insert(t);
        Some((c, m))
    }

    /// The process exited: every membership it held ends.
    pub fn proc_exit(&mut self, proc: ProcId, t: u64) -> Vec<(u32, u32)> {
        let list = self.by_proc.remove(&proc).unwrap_or_default();
        let mut out = Vec::new();
        for (c, m) in list {
            let mem = &mut self.list[c as usize].members[m as usize];
            self.handles.remove(&(proc, mem.handle));
            if mem.left_ns.is_none() {
                mem.left_ns = Some(t);
                out.push((c, m));
            }
        }
        out
    }

    /// Live memberships of a process: (communicator, member).
    pub fn memberships(&self, proc: ProcId) -> &[(u32, u32)] {
        self.by_proc.get(&proc).map(Vec::as_slice).unwrap_or(&[])
    }
}
