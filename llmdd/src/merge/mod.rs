//! Several hosts' recordings as one job: `llmdd report node1.rec node2.rec ...`.
//!
//! * **Clocks.** Recordings of one host and boot share a clock; every other host's offset to
//!   the first recording's host is estimated from the data (TCP traffic seen from both ends,
//!   collective instances; see [`clock`]) with an error bound, or taken from the wall-clock
//!   offsets the recorders sampled when the data does not bound it.
//! * **Processes.** Two hosts can run processes with the same pid. A pid seen on one host
//!   only keeps its number; a pid seen on several hosts gets a job-wide id
//!   `host_index * 10_000_000 + pid` (above any kernel's `pid_max`), its threads shifted
//!   alike; [`Merged::processes`] maps every id back to host and pid for display. Kernel
//!   socket addresses (`sk`) are made distinct per host the same way.
//! * **Communicators.** Ranks whose `ncclCommInitRank` carried the same unique-id hash are one
//!   communicator whatever host they run on ([`Merged::communicators`]); the engine keys them
//!   by that hash too, so one communicator spanning hosts is analysed as one.
//!
//! * **Window.** With several hosts only the time all of them were recording is kept: a
//!   rank whose host was not recording yet would otherwise look late or gone.
//!
//! Everything here is a plain function of the recordings: no I/O.

pub mod clock;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::{engine::ProcessHints, events::Event, views::event_time};
use llmdd_common::funcs::CallKind;

pub use clock::{Bound, BoundSource, ClockMethod, Offset};

/// Job-wide ids of processes whose pid is seen on several hosts: `host * STRIDE + pid`.
pub const PID_STRIDE: u32 = 10_000_000;
/// Most hosts a merge takes (job-wide ids must fit in 32 bits).
pub const MAX_HOSTS: usize = (u32::MAX / PID_STRIDE) as usize;

/// One recording, as the merge needs it.
#[derive(Clone, Debug, Default)]
pub struct HostRecording {
    /// The host's name (the recording's file name when the recording has none).
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`: recordings with the same host and boot id share
    /// one clock.
    pub boot_id: Option<String>,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` in ns, sampled when recording started and ended.
    pub realtime_offset_ns: Option<(i64, i64)>,
    /// Processes the recorder attached, with what it knew of them (rank from the
    /// environment...). `hints.host` is filled in by the merge.
    pub processes: Vec<(u32, ProcessHints)>,
    /// Decoded events, local times.
    pub events: Vec<Event>,
    /// When the recorder started and stopped (local CLOCK_MONOTONIC), if it says; else the
    /// first and last event are taken.
    pub span_ns: Option<(u64, u64)>,
}

/// Errors of a merge.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MergeError {
    #[error("no recording to merge")]
    Empty,
    #[error("{0} recordings: at most {MAX_HOSTS} can be merged into one job")]
    TooMany(usize),
}

/// One host (clock domain) of the job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostClock {
    pub host: String,
    pub boot_id: Option<String>,
    /// Indices of the recordings (in the order given) taken on this host and boot.
    pub recordings: Vec<usize>,
    #[serde(flatten)]
    pub offset: Offset,
    /// The offset the recorders' wall clocks give, for comparison.
    pub realtime_offset_ns: Option<i64>,
}

/// A process of the job: its job-wide id, where it runs, and its own pid there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobProcess {
    pub id: u32,
    pub host: String,
    pub pid: u32,
    pub rank: Option<u32>,
}

/// A member of a communicator matched across hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobMember {
    pub rank: i32,
    pub host: String,
    pub pid: u32,
    /// Job-wide id (the pid the merged events and findings carry).
    pub id: u32,
}

/// A communicator matched across hosts by the hash of its `ncclUniqueId`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobCommunicator {
    /// The unique-id hash as 16 hex digits.
    pub uid_hash: String,
    pub nranks: Option<i32>,
    pub hosts: Vec<String>,
    /// Members by rank.
    pub members: Vec<JobMember>,
}

/// The job view of several recordings.
#[derive(Clone, Debug, Serialize)]
pub struct Merged {
    pub hosts: Vec<HostClock>,
    pub bounds: Vec<Bound>,
    pub processes: Vec<JobProcess>,
    pub communicators: Vec<JobCommunicator>,
    /// Every event, pids remapped, times on the reference host's clock, in time order.
    #[serde(skip)]
    pub events: Vec<Event>,
    /// Processes to register with the engine before feeding the events: job-wide id and
    /// hints (host filled in).
    #[serde(skip)]
    pub registrations: Vec<(u32, ProcessHints)>,
    /// The time every host was recording (reference clock), when there are several hosts:
    /// only events in it are kept, since a rank's host not yet (or no longer) recording
    /// would look like a rank that is late or missing.
    pub window_ns: Option<(u64, u64)>,
    /// Events left out because they fall outside `window_ns`.
    pub events_outside_window: u64,
}

impl Merged {
    /// Host and pid of a job-wide id, for display.
    pub fn process(&self, id: u32) -> Option<&JobProcess> {
        self.processes.iter().find(|p| p.id == id)
    }

    /// Each host's clock alignment, as the engine weighs cross-host findings with it.
    pub fn host_clocks(&self) -> Vec<(String, crate::engine::HostClock)> {
        self.hosts
            .iter()
            .map(|h| {
                let o = &h.offset;
                let clock = crate::engine::HostClock {
                    error_ns: o.error_ns,
                    wall_clock: matches!(
                        o.method,
                        ClockMethod::DataRealtime | ClockMethod::Realtime
                    ),
                };
                (h.host.clone(), clock)
            })
            .collect()
    }

    /// One line per host: offset, error and how it was found.
    pub fn clock_lines(&self) -> Vec<String> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(d, h)| {
                let o = &h.offset;
                let mut sources: Vec<&str> = self
                    .bounds
                    .iter()
                    .filter(|b| b.from == d || b.to == d)
                    .map(|b| match b.source {
                        BoundSource::Tcp => "TCP",
                        BoundSource::Collective => "collectives",
                    })
                    .collect();
                sources.sort_unstable();
                sources.dedup();
                let bounds = format!(
                    "{} bound(s) in the data ({}){}",
                    o.bounds,
                    sources.join(", "),
                    if o.inconsistent {
                        " (bounds contradict each other: drift or misaligned streams)"
                    } else {
                        ""
                    }
                );
                let how = match o.method {
                    ClockMethod::Reference => "reference clock".to_string(),
                    ClockMethod::Data => format!("from {bounds}"),
                    ClockMethod::DataRealtime => {
                        format!("from the recorders' wall clocks, within {bounds}")
                    }
                    ClockMethod::Realtime => {
                        "from the recorders' wall clocks (no two-sided bound in the data)"
                            .to_string()
                    }
                    ClockMethod::Unknown => {
                        "unknown: no bound in the data and no wall-clock sample".to_string()
                    }
                };
                let err = o
                    .error_ns
                    .map(|e| format!(" ± {}", fmt_ns(e as i64).trim_start_matches('+')))
                    .unwrap_or_default();
                format!(
                    "{}: clock offset {}{err}, {how}",
                    h.host,
                    fmt_ns(o.offset_ns)
                )
            })
            .collect()
    }
}

/// A signed duration in a readable unit, to the nanosecond (so the printed offsets can be
/// compared exactly).
fn fmt_ns(ns: i64) -> String {
    let a = ns.unsigned_abs();
    let sign = if ns < 0 { "-" } else { "+" };
    if a >= 1_000_000_000 {
        format!("{sign}{}.{:09} s", a / 1_000_000_000, a % 1_000_000_000)
    } else if a >= 1_000_000 {
        format!("{sign}{}.{:06} ms", a / 1_000_000, a % 1_000_000)
    } else {
        format!("{sign}{}.{:03} µs", a / 1_000, a % 1_000)
    }
}

fn shift(t: u64, by: i64) -> u64 {
    (i128::from(t) + i128::from(by)).clamp(0, i128::from(u64::MAX)) as u64
}

/// Merges recordings of one job from several hosts into one view. The first recording's
/// host is the reference clock.
pub fn merge(recordings: Vec<HostRecording>) -> Result<Merged, MergeError> {
    if recordings.is_empty() {
        return Err(MergeError::Empty);
    }
    // Clock domains: same host name and boot id (a recording without a boot id is its own).
    let mut domain_of: Vec<usize> = Vec::with_capacity(recordings.len());
    let mut domains: Vec<(String, Option<String>, Vec<usize>)> = Vec::new();
    for (i, r) in recordings.iter().enumerate() {
        let same = r.boot_id.as_ref().and_then(|b| {
            domains
                .iter()
                .position(|(h, db, _)| *h == r.host && db.as_ref() == Some(b))
        });
        match same {
            Some(d) => {
                domains[d].2.push(i);
                domain_of.push(d);
            }
            None => {
                domain_of.push(domains.len());
                domains.push((r.host.clone(), r.boot_id.clone(), vec![i]));
            }
        }
    }
    if domains.len() > MAX_HOSTS {
        return Err(MergeError::TooMany(domains.len()));
    }
    // Host display names, made unique (two recordings of hosts with one name but another
    // boot get `name#2`).
    let mut names: Vec<String> = Vec::with_capacity(domains.len());
    for (h, _, _) in &domains {
        let n = names
            .iter()
            .filter(|x| x.split('#').next() == Some(h))
            .count();
        names.push(if n == 0 {
            h.clone()
        } else {
            format!("{h}#{}", n + 1)
        });
    }

    // Wall-clock offset per domain: the mean of its recordings' start/end samples.
    let prior: Vec<Option<i64>> = domains
        .iter()
        .map(|(_, _, recs)| {
            let v: Vec<i64> = recs
                .iter()
                .filter_map(|&i| recordings[i].realtime_offset_ns)
                .map(|(a, b)| ((i128::from(a) + i128::from(b)) / 2) as i64)
                .collect();
            (!v.is_empty())
                .then(|| (v.iter().map(|&x| i128::from(x)).sum::<i128>() / v.len() as i128) as i64)
        })
        .collect();
    let clock_domains: Vec<clock::Domain<'_>> = domains
        .iter()
        .zip(&prior)
        .map(|((_, _, recs), p)| clock::Domain {
            events: recs
                .iter()
                .flat_map(|&i| recordings[i].events.iter())
                .collect(),
            prior_ns: *p,
        })
        .collect();
    let bounds = clock::bounds(&clock_domains);
    let offsets = clock::solve(&prior, &bounds);
    drop(clock_domains);

    // Pids seen on more than one domain get job-wide ids.
    let mut pid_domains: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, r) in recordings.iter().enumerate() {
        let d = domain_of[i];
        let pids = r
            .processes
            .iter()
            .map(|(p, _)| *p)
            .chain(r.events.iter().map(Event::pid));
        for p in pids {
            let v = pid_domains.entry(p).or_default();
            if !v.contains(&d) {
                v.push(d);
            }
        }
    }
    let job_id = |d: usize, pid: u32| -> u32 {
        if pid_domains.get(&pid).is_some_and(|v| v.len() > 1) {
            (d as u32) * PID_STRIDE + pid % PID_STRIDE
        } else {
            pid
        }
    };

    // Each domain's recording span on the reference clock (the union of its recordings').
    let mut spans: Vec<(u64, u64)> = Vec::with_capacity(domains.len());
    for (d, (_, _, recs)) in domains.iter().enumerate() {
        let by = offsets[d].offset_ns;
        let mut span: Option<(u64, u64)> = None;
        for &i in recs {
            let r = &recordings[i];
            let own = r.span_ns.or_else(|| {
                let times = r.events.iter().map(event_time);
                Some((times.clone().min()?, times.max()?))
            });
            if let Some((a, b)) = own {
                let (a, b) = (shift(a, by), shift(b, by));
                span = Some(span.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
            }
        }
        if let Some(sp) = span {
            spans.push(sp);
        }
    }

    let mut processes: BTreeMap<u32, JobProcess> = BTreeMap::new();
    let mut registrations: Vec<(u32, ProcessHints)> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let mut members: BTreeMap<u64, (Option<i32>, BTreeMap<i32, JobMember>)> = BTreeMap::new();
    for (i, r) in recordings.into_iter().enumerate() {
        let d = domain_of[i];
        let host = names[d].clone();
        let by = offsets[d].offset_ns;
        for (pid, hints) in r.processes {
            let id = job_id(d, pid);
            let mut hints = hints;
            hints.host = Some(host.clone());
            processes.entry(id).or_insert_with(|| JobProcess {
                id,
                host: host.clone(),
                pid,
                rank: hints.rank,
            });
            registrations.push((id, hints));
        }
        for mut ev in r.events {
            let pid = ev.pid();
            let id = job_id(d, pid);
            let tid_shift = i64::from(id) - i64::from(pid);
            processes.entry(id).or_insert_with(|| JobProcess {
                id,
                host: host.clone(),
                pid,
                rank: None,
            });
            match &mut ev {
                Event::Call(c) => {
                    c.pid = id;
                    c.tid = (i64::from(c.tid) + tid_shift).clamp(0, i64::from(u32::MAX)) as u32;
                    c.entry_ns = shift(c.entry_ns, by);
                    c.exit_ns = c.exit_ns.map(|t| shift(t, by));
                    if c.spec().kind == CallKind::CommInit && c.ret == Some(0) {
                        if let (Some(uid), Some(rank)) = (c.uid_hash, c.rank) {
                            let m = members.entry(uid).or_default();
                            m.0 = m.0.or(c.nranks);
                            m.1.insert(
                                rank,
                                JobMember {
                                    rank,
                                    host: host.clone(),
                                    pid,
                                    id,
                                },
                            );
                        }
                    }
                }
                Event::Sock(s) => {
                    s.pid = id;
                    s.tid = (i64::from(s.tid) + tid_shift).clamp(0, i64::from(u32::MAX)) as u32;
                    s.ts_ns = shift(s.ts_ns, by);
                    // Kernel socket addresses of different hosts must not meet: bits 48-55
                    // (all ones in a kernel address) carry the host index.
                    s.sk ^= (d as u64 & 0xff) << 48;
                }
                Event::ProcExit(p) => {
                    p.pid = id;
                    p.ts_ns = shift(p.ts_ns, by);
                }
            }
            events.push(ev);
        }
    }
    events.sort_by_key(event_time);
    // The common window: latest start to earliest end over the clock domains.
    let window_ns = (domains.len() > 1)
        .then(|| {
            let start = spans.iter().map(|s| s.0).max()?;
            let end = spans.iter().map(|s| s.1).min()?;
            (start <= end).then_some((start, end))
        })
        .flatten();
    let before = events.len();
    if let Some((start, end)) = window_ns {
        events.retain(|e| (start..=end).contains(&event_time(e)));
    }
    let events_outside_window = (before - events.len()) as u64;

    let communicators = members
        .into_iter()
        .map(|(uid, (nranks, m))| {
            let members: Vec<JobMember> = m.into_values().collect();
            let mut hosts: Vec<String> = members.iter().map(|m| m.host.clone()).collect();
            hosts.sort();
            hosts.dedup();
            JobCommunicator {
                uid_hash: format!("{uid:016x}"),
                nranks,
                hosts,
                members,
            }
        })
        .collect();

    let hosts = domains
        .into_iter()
        .enumerate()
        .map(|(d, (_, boot_id, recs))| HostClock {
            host: names[d].clone(),
            boot_id,
            recordings: recs,
            offset: offsets[d].clone(),
            realtime_offset_ns: prior[0].zip(prior[d]).map(|(p0, pd)| pd - p0),
        })
        .collect();
    Ok(Merged {
        hosts,
        bounds,
        processes: processes.into_values().collect(),
        communicators,
        events,
        registrations,
        window_ns,
        events_outside_window,
    })
}
