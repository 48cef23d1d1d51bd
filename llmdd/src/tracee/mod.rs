//! Finding target processes, their libraries, and the probe points inside them.
//!
//! [`inspect`] looks at one process; [`discover_all`] at every process that maps at least
//! one object exporting traced functions. For each process the result is a [`Target`]:
//! who it is (pid, namespace pid, name, command line, rank hints from its environment) and
//! a [`TracedObject`] per (mapped file, library family) with the probe points to attach.
//!
//! Any mapped ELF object is considered, not only files named `libnccl*`: PyTorch builds can
//! link NCCL statically into `libtorch_cuda.so`, and one process can hold two copies. Files
//! are opened through `/proc/PID/root` so containerised targets resolve, and through
//! `/proc/PID/map_files` when they were deleted or replaced on disk. Probe points are
//! absolute file offsets, one per distinct offset (NCCL's `ncclX`/`pncclX` aliases share
//! one). Parsed files are cached by device, inode, size and modification time.
//!
//! Files: [`procfs`] (status, cmdline, environ), [`maps`] (mappings), [`elf`] (symbols and
//! file offsets), [`nccl_offsets`] (machine-code decoding of communicator offsets),
//! [`library`] (per-file analysis and cache), `discover` (per-process assembly).

mod discover;
pub mod elf;
mod error;
pub mod gloo_offsets;
pub mod library;
pub mod maps;
pub mod nccl_offsets;
pub mod procfs;
pub mod role;
pub mod symbols;

use std::path::PathBuf;

use llmdd_common::funcs::Family;

pub use discover::{open_path, NO_GLOO};
pub use error::TargetError;
pub use library::{LibraryCache, ProbePoint};
pub use nccl_offsets::CommOffsets;
pub use procfs::RankHints;

/// A process to trace.
#[derive(Clone, Debug)]
pub struct Target {
    /// Process id in llmdd's (the host's) pid namespace.
    pub pid: u32,
    /// Process id inside the process's own pid namespace (differs in containers).
    pub ns_pid: Option<u32>,
    /// Command name (`/proc/PID/status` `Name`).
    pub comm: String,
    /// Executable, as a path inside the process's mount namespace.
    pub exe: Option<PathBuf>,
    /// Command line arguments (empty when unreadable).
    pub cmdline: Vec<String>,
    /// Rank, local rank, world size, job and visible devices from the start-up environment.
    pub rank_hints: RankHints,
    /// The parent process (its launcher, for the ranks of most jobs).
    pub ppid: Option<u32>,
    /// What it is on a vLLM / llm-d node (API server, engine core, worker, sidecar), from
    /// its title, command line and environment.
    pub role: Option<role::Role>,
    /// The handle of the MPI world communicator (`MPI_COMM_WORLD`) in this process, when its
    /// MPI library says where it is: the one MPI communicator the environment's ranks
    /// describe.
    pub mpi_world_handle: Option<u64>,
    /// Objects to probe: one per (mapped file, library family).
    pub objects: Vec<TracedObject>,
    /// Mapped executable objects that could not be examined, with the reason.
    pub issues: Vec<ObjectIssue>,
}

impl Target {
    /// The traced objects of one family.
    pub fn objects_of(&self, family: Family) -> impl Iterator<Item = &TracedObject> {
        self.objects.iter().filter(move |o| o.family == family)
    }
}

/// One mapped object that exports functions of one library family.
#[derive(Clone, Debug)]
pub struct TracedObject {
    /// NCCL (also RCCL), CUDA runtime or CUDA driver.
    pub family: Family,
    /// `nccl`, `rccl`, `cudart` or `cuda`.
    pub label: &'static str,
    /// Path as the target sees it (from its maps).
    pub path: PathBuf,
    /// Path that opens the same file from llmdd (through `/proc/PID/root` or
    /// `/proc/PID/map_files`): the path to attach uprobes to.
    pub host_path: PathBuf,
    /// The file was deleted after the process mapped it.
    pub deleted: bool,
    /// GNU build id (hex), when the object has one.
    pub build_id: Option<String>,
    /// Library version: decoded from `ncclGetVersion` for NCCL, else from the file name.
    pub version: Option<String>,
    /// Where to attach: one point per distinct file offset.
    pub points: Vec<ProbePoint>,
    /// For NCCL objects: the communicator's rank and rank-count offsets, or why they could
    /// not be decoded. `None` for other families.
    pub comm_offsets: Option<Result<CommOffsets, String>>,
}

/// A mapped executable object that could not be examined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectIssue {
    /// Path as the target sees it.
    pub path: PathBuf,
    pub reason: String,
}

/// Inspects one process. Errors say what is wrong and what to do: the process does not
/// exist, is a thread, cannot be read without privileges, or maps nothing traceable.
pub fn inspect(pid: u32) -> Result<Target, TargetError> {
    discover::inspect_with(pid, LibraryCache::global())
}

/// A process to trace for its sockets only (a serving front that maps no GPU library).
pub fn sockets_only(pid: u32) -> Result<Target, TargetError> {
    discover::sockets_only(pid)
}

/// The result of scanning every process.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    /// Processes mapping at least one traceable object, by pid.
    pub targets: Vec<Target>,
    /// Processes looked at (llmdd itself excluded).
    pub scanned: usize,
    /// Processes that vanished or could not be read while scanning.
    pub skipped: usize,
}

/// Scans every process (except llmdd itself).
pub fn discover() -> Discovery {
    let me = std::process::id();
    let mut d = Discovery::default();
    for pid in procfs::all_pids() {
        if pid == me {
            continue;
        }
        d.scanned += 1;
        match discover::inspect_with(pid, LibraryCache::global()) {
            Ok(t) => d.targets.push(t),
            Err(TargetError::NoSupportedLibrary { .. }) => {}
            Err(_) => d.skipped += 1,
        }
    }
    d
}

/// A process that maps nothing traceable but has a role on the node (an API server, the
/// routing sidecar): listed by `doctor` beside the traced ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleProcess {
    pub pid: u32,
    pub ppid: Option<u32>,
    pub comm: String,
    pub role: role::Role,
}

/// Every process (but `skip` and llmdd itself) whose title or command line gives it a role.
pub fn role_processes(skip: &[u32]) -> Vec<RoleProcess> {
    let me = std::process::id();
    procfs::all_pids()
        .into_iter()
        .filter(|p| *p != me && !skip.contains(p))
        .filter_map(|pid| {
            let cmdline = procfs::split_nul(&procfs::read(pid, "cmdline").ok()?);
            let environ = procfs::read(pid, "environ")
                .map(|raw| procfs::split_nul(&raw))
                .unwrap_or_default();
            let role = role::role_of(&cmdline, &environ)?;
            let status = procfs::read(pid, "status").ok()?;
            let status = procfs::parse_status(&String::from_utf8_lossy(&status));
            Some(RoleProcess {
                pid,
                ppid: status.ppid,
                comm: status.name,
                role,
            })
        })
        .collect()
}

/// Every process mapping at least one traceable object (see [`discover`] for the counts of
/// processes skipped).
pub fn discover_all() -> Vec<Target> {
    discover().targets
}

#[cfg(test)]
mod tests;
