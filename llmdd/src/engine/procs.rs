//! Traced processes: pid incarnations (a pid that exits and is reused is a new process), the
//! hints the caller registers (rank and world size from the environment, host name, job key),
//! and exits.

use serde::Serialize;

use super::util::FastMap;

/// What the caller knows about a process from outside the event stream (its environment, the
/// host it runs on). Everything is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessHints {
    /// `RANK` (global rank in the job).
    pub rank: Option<u32>,
    /// `LOCAL_RANK`.
    pub local_rank: Option<u32>,
    /// `WORLD_SIZE`.
    pub world_size: Option<u32>,
    /// Host name.
    pub host: Option<String>,
    /// Anything that names the job the process belongs to, e.g. `MASTER_ADDR:MASTER_PORT`.
    /// Processes with different job keys are never put in one inferred communicator or
    /// graph-launch group.
    pub job: Option<String>,
    /// The parent process (the launcher of most jobs' ranks): ranks with a common parent are
    /// preferred when a communicator is grouped without a job key.
    pub parent: Option<u32>,
    /// The handle of the MPI world communicator, when known: the environment's rank and
    /// world size describe that communicator only, never another handle of the process.
    pub world_comm: Option<u64>,
    /// The libraries whose struct layouts the process's ranks are read through (NCCL's
    /// communicator, Gloo's context, vLLM's custom all-reduce object). Not serialised: the
    /// report lists each process's libraries.
    #[serde(skip)]
    pub layouts: Vec<LayoutLib>,
}

/// A library whose layout rank reads go through: which layout failed is said by it, and a
/// failed one is not trusted again in any process that maps the same build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutLib {
    pub family: llmdd_common::funcs::Family,
    /// Its build id, else its path.
    pub id: String,
    /// Its version (NCCL's, PyTorch's for Gloo), when known.
    pub version: Option<String>,
}

impl LayoutLib {
    /// The library of `family` at `path`, known by its build id where it has one.
    pub fn new(
        family: llmdd_common::funcs::Family,
        build_id: Option<&str>,
        path: &str,
        version: Option<&str>,
    ) -> LayoutLib {
        LayoutLib {
            family,
            id: build_id.unwrap_or(path).to_string(),
            version: version.map(str::to_string),
        }
    }
}

impl ProcessHints {
    /// The library of `family` the process's layout reads go through.
    pub fn layout(&self, family: llmdd_common::funcs::Family) -> Option<&LayoutLib> {
        self.layouts.iter().find(|l| l.family == family)
    }

    /// Hints from environment variables (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
    /// `MASTER_PORT`) given as name/value pairs, plus an optional host name.
    pub fn from_env<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
        host: Option<&str>,
    ) -> ProcessHints {
        let mut h = ProcessHints {
            host: host.map(str::to_owned),
            ..Default::default()
        };
        let vars: Vec<(&str, &str)> = vars.into_iter().collect();
        let get = |key: &str| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        };
        let num = |key: &str| get(key).and_then(|v| v.trim().parse().ok());
        h.rank = num("RANK");
        h.local_rank = num("LOCAL_RANK");
        h.world_size = num("WORLD_SIZE");
        h.job = job_key(&get);
        h
    }
}

pub use crate::launcher::job_key;

/// Index of a process incarnation.
pub type ProcId = u32;

#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub hints: ProcessHints,
    pub last_ns: u64,
    pub exited_ns: Option<u64>,
    /// Traced calls seen that are not waits (for "was the process busy during this gap").
    pub busy_calls: u64,
    /// Time spent in synchronising calls (waiting for the GPU), summed.
    pub sync_ns: u64,
    /// Time spent in any call that waits for other ranks or the device (sends, receives,
    /// group ends, collectives, syncs), summed: what a rank arriving late spent waiting
    /// for someone else rather than working.
    pub waited_ns: u64,
}

#[derive(Default)]
pub struct Procs {
    pub list: Vec<Proc>,
    live: FastMap<u32, ProcId>,
    /// Every pid an incarnation was made for (a pid-reuse check in constant time; the list
    /// grows by one entry per process ever seen, as `list` does).
    ever: FastMap<u32, ()>,
    /// Processes seen with the pid of one that had exited.
    pub reused_pids: u64,
}

impl Procs {
    /// The live incarnation of `pid`, created on first sight.
    #[inline]
    pub fn get(&mut self, pid: u32, ts: u64) -> ProcId {
        if let Some(&id) = self.live.get(&pid) {
            let p = &mut self.list[id as usize];
            if ts > p.last_ns {
                p.last_ns = ts;
            }
            return id;
        }
        self.create(pid, ProcessHints::default(), ts)
    }

    fn create(&mut self, pid: u32, hints: ProcessHints, ts: u64) -> ProcId {
        if self.ever.insert(pid, ()).is_some() {
            self.reused_pids += 1;
        }
        let id = self.list.len() as ProcId;
        self.list.push(Proc {
            pid,
            hints,
            last_ns: ts,
            exited_ns: None,
            busy_calls: 0,
            sync_ns: 0,
            waited_ns: 0,
        });
        self.live.insert(pid, id);
        id
    }

    /// Registers (or updates the hints of) the live process `pid`.
    pub fn register(&mut self, pid: u32, hints: ProcessHints, ts: u64) -> ProcId {
        match self.live.get(&pid) {
            Some(&id) => {
                self.list[id as usize].hints = hints;
                id
            }
            None => self.create(pid, hints, ts),
        }
    }

    /// Marks the live process `pid` exited; later events with this pid are a new process.
    pub fn exit(&mut self, pid: u32, ts: u64) -> Option<ProcId> {
        let id = self.live.remove(&pid)?;
        let p = &mut self.list[id as usize];
        p.exited_ns = Some(ts);
        p.last_ns = p.last_ns.max(ts);
        Some(id)
    }

    pub fn proc(&self, id: ProcId) -> &Proc {
        &self.list[id as usize]
    }

    pub fn proc_mut(&mut self, id: ProcId) -> &mut Proc {
        &mut self.list[id as usize]
    }

    /// The live incarnation of `pid`, if llmdd has seen it.
    pub fn find_live(&self, pid: u32) -> Option<ProcId> {
        self.live.get(&pid).copied()
    }

    pub fn host(&self, id: ProcId) -> Option<&str> {
        self.list[id as usize].hints.host.as_deref()
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_reuse_is_a_new_incarnation() {
        let mut p = Procs::default();
        let a = p.get(100, 1);
        assert_eq!(p.get(100, 2), a);
        assert_eq!(p.exit(100, 3), Some(a));
        let b = p.get(100, 4);
        assert_ne!(a, b);
        assert_eq!(p.reused_pids, 1);
        assert_eq!(p.proc(a).exited_ns, Some(3));
        assert_eq!(p.proc(b).exited_ns, None);
    }

    #[test]
    fn hints_from_environment() {
        let h = ProcessHints::from_env(
            [
                ("RANK", "3"),
                ("WORLD_SIZE", "8"),
                ("LOCAL_RANK", "3"),
                ("MASTER_ADDR", "10.0.0.1"),
                ("MASTER_PORT", "29500"),
                ("PATH", "/bin"),
            ],
            Some("node-a"),
        );
        assert_eq!(
            (h.rank, h.world_size, h.local_rank),
            (Some(3), Some(8), Some(3))
        );
        assert_eq!(h.job.as_deref(), Some("master:10.0.0.1:29500"));
        assert_eq!(h.host.as_deref(), Some("node-a"));
    }
}
