//! What a run knows besides the engine: the host and kernel, each attached process with its
//! libraries (path, version, library slot), and the rank / rank count each process showed in
//! its NCCL calls. Filled at attach time and from events; read by every view.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::events::Event;

/// Communicator handles remembered per process (ranks per handle); more are ignored.
const MAX_HANDLES_PER_PROCESS: usize = 256;

/// The kernel, from uname(2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelInfo {
    pub release: String,
    pub version: String,
    pub machine: String,
}

impl KernelInfo {
    /// This machine's kernel (fields are empty when uname fails, which it does not on Linux).
    pub fn current() -> KernelInfo {
        // SAFETY: utsname is plain bytes; uname fills it or fails without touching it.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: a valid out-pointer.
        if unsafe { libc::uname(&mut u) } != 0 {
            return KernelInfo::default();
        }
        let field = |f: &[libc::c_char]| {
            let bytes: Vec<u8> = f
                .iter()
                .take_while(|c| **c != 0)
                .map(|c| *c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        KernelInfo {
            release: field(&u.release),
            version: field(&u.version),
            machine: field(&u.machine),
        }
    }
}

/// One traced library of one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LibInfo {
    /// `nccl`, `cudart` or `cuda`.
    pub family: &'static str,
    /// `nccl`, `rccl`, `cudart` or `cuda`.
    pub label: &'static str,
    /// Path as the process sees it.
    pub path: String,
    pub version: Option<String>,
    pub build_id: Option<String>,
    pub functions_probed: usize,
    /// Library slot of its events (`CallEvent::lib_slot`).
    #[serde(skip)]
    pub slot: Option<u16>,
}

impl LibInfo {
    /// The file name of the library (`libnccl.so.2`).
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// One attached process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// `RANK` / `WORLD_SIZE` from its environment.
    pub env_rank: Option<u32>,
    pub env_world_size: Option<u32>,
    pub libraries: Vec<LibInfo>,
    /// Rank and rank count read through each communicator handle it used.
    pub handles: BTreeMap<u64, (Option<i32>, Option<i32>)>,
    pub exited: bool,
    /// What it is on a vLLM / llm-d node ("vllm worker TP1"), when its title or command
    /// says (see `tracee::role`).
    pub role: Option<String>,
}

impl ProcInfo {
    /// The process's rank, rank count and where they came from: the communicator with the
    /// most ranks it used (its world), else its environment.
    pub fn rank(&self) -> (Option<u32>, Option<u32>, &'static str) {
        let best = self
            .handles
            .values()
            .filter_map(|(r, n)| Some((r.and_then(|r| u32::try_from(r).ok())?, *n)))
            .max_by_key(|(_, n)| n.unwrap_or(0));
        if let Some((r, n)) = best {
            return (
                Some(r),
                n.and_then(|n| u32::try_from(n).ok()),
                "communicator",
            );
        }
        if self.env_rank.is_some() || self.env_world_size.is_some() {
            return (self.env_rank, self.env_world_size, "environment");
        }
        (None, None, "unknown")
    }

    /// `pid 42 (rank 3)` or `pid 42`.
    pub fn label(&self) -> String {
        let role = self.role.as_deref();
        match (self.rank(), role) {
            ((Some(r), _, _), Some(role)) => format!("pid {} (rank {r}, {role})", self.pid),
            ((Some(r), _, _), None) => format!("pid {} (rank {r})", self.pid),
            (_, Some(role)) => format!("pid {} ({role})", self.pid),
            _ => format!("pid {}", self.pid),
        }
    }
}

/// Everything about a run outside the engine.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    pub host: Option<String>,
    pub kernel: KernelInfo,
    /// Wall-clock start, seconds since the Unix epoch.
    pub started_unix_s: f64,
    pub procs: BTreeMap<u32, ProcInfo>,
    slots: HashMap<u16, (u32, usize)>,
}

impl RunInfo {
    /// A run on this host, starting now.
    pub fn start(host: Option<String>) -> RunInfo {
        RunInfo {
            host,
            kernel: KernelInfo::current(),
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            ..RunInfo::default()
        }
    }

    /// The collective backend of a call of `func` in process `pid`: its family's name, with
    /// `rccl` for NCCL calls of a process whose NCCL library is RCCL.
    pub fn backend(&self, pid: u32, func: u16) -> &'static str {
        let Some(f) = llmdd_common::funcs::spec(func) else {
            return "unknown";
        };
        self.family_backend(pid, f.family)
    }

    /// The backend of `family`'s calls in process `pid` (a communicator's, from its first
    /// member): the family's name, `rccl` for the NCCL family of a process using RCCL.
    pub fn family_backend(&self, pid: u32, family: llmdd_common::funcs::Family) -> &'static str {
        let rccl = family == llmdd_common::funcs::Family::Nccl
            && self
                .procs
                .get(&pid)
                .is_some_and(|p| p.libraries.iter().any(|l| l.label == "rccl"));
        if rccl {
            "rccl"
        } else {
            family.name()
        }
    }

    /// The backend of a communicator: that of its first op (by its name in the views, e.g.
    /// `all-reduce` for ncclAllReduce), for its first member.
    pub fn comm_backend(&self, ops: &[&str], pids: &[u32]) -> &'static str {
        let family = ops.iter().find_map(|op| {
            llmdd_common::funcs::FUNCS
                .iter()
                .chain(llmdd_common::funcs::user_specs())
                .find(|f| f.name == *op || super::op_name(f.id) == *op)
                .map(|f| f.family)
        });
        match family {
            Some(f) => self.family_backend(pids.first().copied().unwrap_or(0), f),
            None => "unknown",
        }
    }

    /// Records an attached process and its libraries.
    pub fn add_process(&mut self, p: ProcInfo) {
        for (i, l) in p.libraries.iter().enumerate() {
            if let Some(s) = l.slot {
                self.slots.insert(s, (p.pid, i));
            }
        }
        self.procs.insert(p.pid, p);
    }

    /// The library behind an event's library slot.
    pub fn library(&self, slot: u16) -> Option<&LibInfo> {
        let (pid, i) = self.slots.get(&slot)?;
        self.procs.get(pid)?.libraries.get(*i)
    }

    /// Notes what an event says about its process.
    pub fn observe(&mut self, ev: &Event) {
        match ev {
            Event::Call(c) => {
                let (Some(h), true) = (c.comm, c.rank.is_some() || c.nranks.is_some()) else {
                    return;
                };
                if let Some(p) = self.procs.get_mut(&c.pid) {
                    if p.handles.len() < MAX_HANDLES_PER_PROCESS || p.handles.contains_key(&h) {
                        let e = p.handles.entry(h).or_insert((None, None));
                        if c.rank.is_some() {
                            e.0 = c.rank;
                        }
                        if c.nranks.is_some() {
                            e.1 = c.nranks;
                        }
                    }
                }
            }
            Event::ProcExit(x) => {
                if let Some(p) = self.procs.get_mut(&x.pid) {
                    p.exited = true;
                }
            }
            Event::Sock(_) => {}
        }
    }

    /// `pid 42 (rank 3)` for any pid.
    pub fn proc_label(&self, pid: u32) -> String {
        self.procs
            .get(&pid)
            .map(ProcInfo::label)
            .unwrap_or_else(|| format!("pid {pid}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::synth;

    #[test]
    fn backends_by_family_with_rccl_by_library_label() {
        let (mut run, _s, _e) = crate::views::fixture::sample();
        assert_eq!(run.backend(100, 0), "nccl");
        assert_eq!(run.comm_backend(&["all-reduce"], &[100]), "nccl");
        if let Some(p) = run.procs.get_mut(&100) {
            for l in &mut p.libraries {
                if l.family == "nccl" {
                    l.label = "rccl";
                }
            }
        }
        assert_eq!(run.backend(100, 0), "rccl");
        assert_eq!(run.comm_backend(&["all-reduce"], &[100]), "rccl");
        assert_eq!(run.comm_backend(&["MPI_Allreduce"], &[100]), "mpi");
        assert_eq!(run.comm_backend(&["gloo::allreduce"], &[100]), "gloo");
        assert_eq!(run.comm_backend(&[], &[100]), "unknown");
    }

    #[test]
    fn rank_comes_from_the_widest_communicator_then_the_environment() {
        let mut run = RunInfo::start(Some("h".into()));
        run.add_process(ProcInfo {
            pid: 7,
            env_rank: Some(9),
            env_world_size: Some(16),
            libraries: vec![LibInfo {
                family: "nccl",
                label: "nccl",
                path: "/opt/lib/libnccl.so.2".into(),
                version: Some("2.21.5".into()),
                build_id: None,
                functions_probed: 20,
                slot: Some(3),
            }],
            ..ProcInfo::default()
        });
        assert_eq!(run.procs[&7].rank(), (Some(9), Some(16), "environment"));
        run.observe(&synth::coll(
            synth::ALL_REDUCE,
            7,
            0xa,
            Some(1),
            2,
            8,
            1,
            10,
            20,
        ));
        run.observe(&synth::coll(
            synth::ALL_REDUCE,
            7,
            0xb,
            Some(3),
            4,
            8,
            1,
            10,
            20,
        ));
        assert_eq!(run.procs[&7].rank(), (Some(3), Some(4), "communicator"));
        assert_eq!(run.proc_label(7), "pid 7 (rank 3)");
        assert_eq!(run.library(3).map(LibInfo::file_name), Some("libnccl.so.2"));
        run.observe(&synth::exit(7, 30));
        assert!(run.procs[&7].exited);
        assert!(!run.kernel.release.is_empty());
    }
}
