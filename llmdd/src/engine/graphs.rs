//! Graph-launch steps. In CUDA-graph decode the collectives run inside the graph and only
//! `cudaGraphLaunch`/`cuGraphLaunch` fire, once per step on every rank. The launches of the
//! ranks of one group are matched as step instances (same sequence number on every rank, with
//! the same alignment, skew and straggler logic as collective instances).
//!
//! A process's group is, in order of preference: the largest communicator it is a member of
//! (ranks from that communicator); else the job and world size (2 or more) from its
//! environment hints, ranks from `RANK` (a job without a key is named by its launcher, the
//! processes' parent). A process in neither is in no group: independent processes (two
//! single-GPU replicas on one node) launch graphs at their own pace, and matching their
//! launches as steps would name one as the other's straggler. The group is fixed at the
//! process's first graph launch.

use serde::Serialize;

use super::{
    comm::Comms,
    config::Config,
    matching::{Evidence, Lane},
    procs::{ProcId, Procs},
    util::{mix, FastMap},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBasis {
    /// Members of one communicator.
    Communicator { comm: u64 },
    /// Same job key and world size from the environment.
    Environment {
        job: Option<String>,
        world_size: u32,
    },
}

#[derive(Clone, Debug)]
pub struct GraphGroup {
    pub basis: GroupBasis,
    pub lane: u32,
}

#[derive(Default)]
pub struct Graphs {
    pub groups: Vec<GraphGroup>,
    by_id: FastMap<u64, u32>,
    members: FastMap<ProcId, (u32, u32)>,
    pub refused: u64,
    /// Graph launches of processes in no group (no communicator, no job in their
    /// environment): counted, not matched.
    pub ungrouped: u64,
}

impl Graphs {
    /// The (lane, lane member) of a graph-launching process, joining its group on first sight.
    pub fn member(
        &mut self,
        proc: ProcId,
        t: u64,
        procs: &Procs,
        comms: &Comms,
        lanes: &mut Vec<Lane>,
        cfg: &Config,
    ) -> Option<(u32, u32)> {
        if let Some(&(g, m)) = self.members.get(&proc) {
            return Some((self.groups[g as usize].lane, m));
        }
        let p = procs.proc(proc);
        // Largest communicator the process is in.
        let best = comms
            .memberships(proc)
            .iter()
            .map(|&(c, m)| (&comms.list[c as usize], m))
            .filter(|(c, m)| c.members[*m as usize].left_ns.is_none() && c.nranks.unwrap_or(0) >= 2)
            .max_by_key(|(c, _)| (c.nranks.unwrap_or(0), u64::MAX - c.id));
        let (basis, rank) = match best {
            Some((c, m)) => (
                GroupBasis::Communicator { comm: c.id },
                c.members[m as usize].rank,
            ),
            None => match (p.hints.rank, p.hints.world_size) {
                (Some(r), Some(w)) if w >= 2 && r < w => (
                    GroupBasis::Environment {
                        job: p
                            .hints
                            .job
                            .clone()
                            .or_else(|| p.hints.parent.map(|pp| format!("parent:{pp}"))),
                        world_size: w,
                    },
                    Some(r),
                ),
                _ => {
                    self.ungrouped += 1;
                    return None;
                }
            },
        };
        let id = match &basis {
            GroupBasis::Communicator { comm } => mix(&[0x6a, *comm]),
            GroupBasis::Environment { job, world_size } => {
                let jb: Vec<u64> = job
                    .as_deref()
                    .unwrap_or("")
                    .bytes()
                    .map(u64::from)
                    .collect();
                mix(&[0x6b, *world_size as u64, mix(&jb)])
            }
        };
        let g = match self.by_id.get(&id) {
            Some(&g) => g,
            None => {
                if lanes.len() >= cfg.max_communicators * 2
                    || self.groups.len() >= cfg.max_communicators
                {
                    self.refused += 1;
                    return None;
                }
                let mut lane = Lane::new(id, Evidence::GraphSteps, t, cfg);
                if let GroupBasis::Environment { world_size, .. } = &basis {
                    lane.nranks = *world_size;
                }
                lanes.push(lane);
                self.groups.push(GraphGroup {
                    basis,
                    lane: (lanes.len() - 1) as u32,
                });
                let g = (self.groups.len() - 1) as u32;
                self.by_id.insert(id, g);
                g
            }
        };
        let lane = self.groups[g as usize].lane;
        let l = &mut lanes[lane as usize];
        let rank = rank.unwrap_or(l.members.len() as u32);
        let m = l.add_member(proc, p.pid, Some(rank), false, t);
        self.members.insert(proc, (g, m));
        Some((lane, m))
    }

    /// The process exited: its (lane, member), if it launched graphs.
    pub fn proc_exit(&mut self, proc: ProcId) -> Option<(u32, u32)> {
        let (g, m) = self.members.remove(&proc)?;
        Some((self.groups[g as usize].lane, m))
    }
}
