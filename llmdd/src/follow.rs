//! `attach --follow NAME`, `--children` and `--all`: processes by command name, including
//! ones that start (or restart, with a new pid) after llmdd did, the children of traced
//! processes (workers a launcher forks or execs), and with `--all` every process that maps a
//! supported library, now or later (a DaemonSet's llmdd picks up the jobs that start on its
//! node). Found by a scan of /proc every
//! [`SCAN_INTERVAL`]: reading every process's `comm` costs well under a millisecond on a
//! node with a few hundred processes, and needs no extra kernel probe; a process found is
//! probed once it maps a supported library (a freshly exec'd one may not have loaded them
//! yet: it is looked at again on later scans for [`GRACE`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crate::tracee::{self, procfs};

/// Time between scans.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// How long a process with the name but no supported library yet keeps being looked at.
pub const GRACE: Duration = Duration::from_secs(60);
/// `--all`: every process without a supported library is looked at again at most this often
/// during its grace (a node runs hundreds; a Python worker maps NCCL seconds after it starts).
pub const ALL_RELOOK: Duration = Duration::from_secs(1);

/// The processes to follow and what was already seen.
#[derive(Debug, Default)]
pub struct Follow {
    names: Vec<String>,
    /// `--children`: also the children (forked or exec'd) of traced processes, and theirs.
    children: bool,
    /// `--all`: every process that maps a supported library, now or later.
    all: bool,
    /// Pids wanted that mapped nothing traceable yet: since when, and when last looked at.
    waiting: BTreeMap<u32, (Instant, Instant)>,
    /// Pids given up on or already handed out.
    done: BTreeSet<u32>,
    last_scan: Option<Instant>,
    /// Libraries of user probes (`--probe`): a followed process mapping one of them is a
    /// target even without NCCL or CUDA.
    probe_libraries: Vec<String>,
}

/// Whether `pid`'s command name is one of `names`.
fn named(pid: u32, names: &[String]) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| names.iter().any(|n| n == c.trim_end()))
        .unwrap_or(false)
}

/// The parent pid of `pid` (field 4 of /proc/PID/stat, after the parenthesised command).
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

impl Follow {
    pub fn new(names: Vec<String>, children: bool) -> Follow {
        Follow {
            names,
            children,
            ..Follow::default()
        }
    }

    /// Also follows every process (`--all`): any that maps a supported library later.
    pub fn with_all(mut self, all: bool) -> Follow {
        self.all = all;
        self
    }

    /// Also takes followed processes that map one of these libraries (user probes).
    pub fn with_probe_libraries(mut self, libs: Vec<String>) -> Follow {
        self.probe_libraries = libs;
        self
    }

    /// Whether `pid` maps a library a user probe names.
    fn maps_probe_library(&self, pid: u32) -> bool {
        if self.probe_libraries.is_empty() {
            return false;
        }
        let Ok(raw) = procfs::read(pid, "maps") else {
            return false;
        };
        let Ok(maps) = crate::tracee::maps::parse_maps(&raw) else {
            return false;
        };
        maps.iter().filter_map(|m| m.path()).any(|p| {
            self.probe_libraries
                .iter()
                .any(|l| crate::userprobe::matches_library(l, p))
        })
    }

    /// Whether anything is followed.
    pub fn active(&self) -> bool {
        !self.names.is_empty() || self.children || self.all
    }

    /// Whether tracing should go on with no target left (waiting for a name, or with
    /// `--all` any process, to appear).
    pub fn waits(&self) -> bool {
        !self.names.is_empty() || self.all
    }

    /// Marks pids that are traced already (so they are not handed out again).
    pub fn known(&mut self, pids: impl IntoIterator<Item = u32>) {
        self.done.extend(pids);
    }

    /// When a scan is due: the processes with a followed name, or (`--children`) whose
    /// parent is in `traced`, not seen before, that map a supported library now.
    pub fn scan(&mut self, traced: &BTreeSet<u32>) -> Vec<tracee::Target> {
        if self.last_scan.is_some_and(|t| t.elapsed() < SCAN_INTERVAL) {
            return Vec::new();
        }
        self.scan_now(traced)
    }

    /// [`Follow::scan`] without waiting for the interval.
    pub fn scan_now(&mut self, traced: &BTreeSet<u32>) -> Vec<tracee::Target> {
        if !self.active() {
            return Vec::new();
        }
        self.last_scan = Some(Instant::now());
        let me = std::process::id();
        let mut out = Vec::new();
        let live: BTreeSet<u32> = procfs::all_pids().into_iter().collect();
        // Pids that are gone are forgotten (a node's churn would grow these sets without
        // bound, and a reused pid is a new process to look at).
        self.done.retain(|p| live.contains(p));
        self.waiting.retain(|p, _| live.contains(p));
        for &pid in &live {
            if pid == me || self.done.contains(&pid) {
                continue;
            }
            if let Some((_, last)) = self.waiting.get(&pid) {
                if self.all && last.elapsed() < ALL_RELOOK {
                    continue;
                }
            }
            let wanted = self.all
                || self.waiting.contains_key(&pid)
                || named(pid, &self.names)
                || (self.children && parent(pid).is_some_and(|p| traced.contains(&p)));
            if !wanted {
                continue;
            }
            match tracee::inspect(pid) {
                Ok(t) => {
                    self.waiting.remove(&pid);
                    self.done.insert(pid);
                    out.push(t);
                }
                Err(tracee::TargetError::NoSupportedLibrary { .. })
                    if self.maps_probe_library(pid) =>
                {
                    if let Ok(t) = tracee::sockets_only(pid) {
                        self.waiting.remove(&pid);
                        self.done.insert(pid);
                        out.push(t);
                    }
                }
                Err(tracee::TargetError::NoSupportedLibrary { .. }) => {
                    let now = Instant::now();
                    let w = self.waiting.entry(pid).or_insert((now, now));
                    w.1 = now;
                    if w.0.elapsed() > GRACE {
                        self.waiting.remove(&pid);
                        self.done.insert(pid);
                    }
                }
                Err(_) => {
                    // Gone, or unreadable: not looked at again.
                    self.waiting.remove(&pid);
                    self.done.insert(pid);
                }
            }
        }
        out
    }
}
