//! Host context of the traced processes, so a finding can say *why* a rank is late: CPU
//! time, time its threads waited on a run queue for a CPU, and resident memory, from
//! `/proc/PID/task/*/schedstat` and `/proc/PID/statm` (no probe needed); and the node's NIC
//! counters from `/sys/class/net/*/statistics`. GPU context is `gpu`'s.

use std::{collections::BTreeMap, time::Instant};

use serde::Serialize;

/// One process over the last sampling interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HostSample {
    /// CPU time used, in percent of one CPU.
    pub cpu_percent: f64,
    /// Time its threads waited on a run queue for a CPU, in ms per second.
    pub runqueue_ms_per_s: f64,
    pub rss_kib: u64,
    pub threads: u32,
}

/// `run_ns wait_ns timeslices` of a schedstat line: (CPU ns, run-queue wait ns).
pub fn parse_schedstat(line: &str) -> Option<(u64, u64)> {
    let mut w = line.split_whitespace();
    Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
}

/// (user, system) CPU time of a `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) line, in
/// ns (fields 14 and 15, in clock ticks, counted after the command name's closing
/// parenthesis: the name may hold spaces).
pub fn parse_stat_times_ns(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut w = rest.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th word here.
    let utime: u64 = w.nth(11)?.parse().ok()?;
    let stime: u64 = w.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let tick = 1_000_000_000 / hz;
    Some((utime.saturating_mul(tick), stime.saturating_mul(tick)))
}

/// User plus system CPU time of a `/proc/PID/stat` line, in ns.
pub fn parse_stat_cpu_ns(stat: &str) -> Option<u64> {
    parse_stat_times_ns(stat).map(|(u, s)| u + s)
}

/// Totals of a process: (CPU ns, run-queue wait ns, threads, RSS KiB).
fn read(pid: u32) -> Option<(u64, u64, u32, u64)> {
    let mut cpu = 0;
    let mut wait = 0;
    let mut threads = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        if let Some((c, w)) = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .as_deref()
            .and_then(parse_schedstat)
        {
            cpu += c;
            wait += w;
            threads += 1;
        }
    }
    // The process's CPU time from /proc/PID/stat as well: the kernel brings a running
    // thread's time up to date for it, while schedstat's can lag until the next tick.
    if let Some(ns) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(parse_stat_cpu_ns)
    {
        cpu = cpu.max(ns);
    }
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some((cpu, wait, threads, pages * page / 1024))
}

/// Samples processes and keeps the latest interval's figures.
#[derive(Debug, Default)]
pub struct HostMonitor {
    last: BTreeMap<u32, (Instant, u64, u64)>,
    pub latest: BTreeMap<u32, HostSample>,
}

impl HostMonitor {
    /// Samples `pids` (a process that is gone is dropped).
    pub fn sample(&mut self, pids: impl IntoIterator<Item = u32>) {
        let now = Instant::now();
        let mut seen = BTreeMap::new();
        for pid in pids {
            let Some((cpu, wait, threads, rss)) = read(pid) else {
                continue;
            };
            if let Some((t, c0, w0)) = self.last.get(&pid) {
                let dt = now.duration_since(*t).as_secs_f64().max(1e-3);
                self.latest.insert(
                    pid,
                    HostSample {
                        cpu_percent: cpu.saturating_sub(*c0) as f64 / 1e9 / dt * 100.0,
                        runqueue_ms_per_s: wait.saturating_sub(*w0) as f64 / 1e6 / dt,
                        rss_kib: rss,
                        threads,
                    },
                );
            }
            seen.insert(pid, (now, cpu, wait));
        }
        self.last = seen;
    }
}

/// A context line for a culprit, and a changed suggestion when its threads wait for a CPU
/// far more than its peers' (median of `peers`).
pub fn culprit_context(
    pid: u32,
    culprit: &HostSample,
    peers: &[HostSample],
) -> (String, Option<&'static str>) {
    let mut waits: Vec<f64> = peers.iter().map(|p| p.runqueue_ms_per_s).collect();
    waits.sort_by(f64::total_cmp);
    let median = waits.get(waits.len() / 2).copied().unwrap_or(0.0);
    let line = format!(
        "host: pid {pid} used {:.0}% of a CPU and its threads waited {:.1} ms/s for a CPU \
         (other ranks: median {:.1} ms/s); RSS {:.0} MiB",
        culprit.cpu_percent,
        culprit.runqueue_ms_per_s,
        median,
        culprit.rss_kib as f64 / 1024.0
    );
    let starved = culprit.runqueue_ms_per_s > 50.0 && culprit.runqueue_ms_per_s > 3.0 * median;
    (
        line,
        starved.then_some(
            "its threads wait for a CPU far more than the other ranks': look for CPU \
             contention or pinning on its node before the network or the GPU",
        ),
    )
}

/// Everything known about the node around the traced processes at the last sampling: per
/// process CPU and memory, the GPUs and which process uses which, the NICs.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    pub procs: BTreeMap<u32, HostSample>,
    pub gpus: Vec<crate::gpu::GpuSample>,
    /// Process -> (device index, how it was mapped).
    pub devices: BTreeMap<u32, (u32, crate::gpu::MappedBy)>,
    /// NVLink errors new in the last interval, per device index.
    pub nvlink_new: BTreeMap<u32, u64>,
    pub nics: Vec<NicSample>,
}

impl NodeContext {
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty() && self.gpus.is_empty() && self.nics.is_empty()
    }

    /// The device `pid` uses, with how that is known.
    pub fn gpu_of(&self, pid: u32) -> Option<(&crate::gpu::GpuSample, crate::gpu::MappedBy)> {
        let (dev, by) = self.devices.get(&pid)?;
        Some((self.gpus.iter().find(|g| g.index == *dev)?, *by))
    }

    /// Context lines for a finding's culprit, each with a suggestion when it explains the
    /// finding: its threads' CPU waits against the other processes', its GPU against the
    /// other ranks' GPUs, the node's NICs when they show trouble.
    pub fn culprit_lines(&self, pid: Option<u32>) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        if let Some(pid) = pid {
            if let Some(me) = self.procs.get(&pid) {
                let peers: Vec<HostSample> = self
                    .procs
                    .iter()
                    .filter(|(p, _)| **p != pid)
                    .map(|(_, s)| *s)
                    .collect();
                let (line, hint) = culprit_context(pid, me, &peers);
                out.push((line, hint.map(str::to_string)));
            }
            if let Some((dev, _)) = self.gpu_of(pid) {
                let mut peer_devs: Vec<u32> = self
                    .devices
                    .iter()
                    .filter(|(p, (d, _))| **p != pid && *d != dev.index)
                    .map(|(_, (d, _))| *d)
                    .collect();
                peer_devs.sort_unstable();
                peer_devs.dedup();
                let peers: Vec<&crate::gpu::GpuSample> = self
                    .gpus
                    .iter()
                    .filter(|g| peer_devs.contains(&g.index))
                    .collect();
                let new = self.nvlink_new.get(&dev.index).copied().unwrap_or(0);
                out.push(crate::gpu::culprit_context(dev, &peers, new));
            }
        }
        if let Some((line, hint)) = nic_trouble(&self.nics) {
            out.push((line, Some(hint.to_string())));
        }
        out
    }
}

/// One network interface over the last sampling interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NicSample {
    pub name: String,
    pub rx_bytes_per_s: f64,
    pub tx_bytes_per_s: f64,
    /// Receive and transmit errors in the interval.
    pub errors: u64,
    /// Receive and transmit drops in the interval.
    pub drops: u64,
    /// Link up/down transitions in the interval.
    pub carrier_changes: u64,
}

/// Counter files read per interface: bytes in and out, then the ones that mean trouble.
const NIC_COUNTERS: [&str; 6] = [
    "statistics/rx_bytes",
    "statistics/tx_bytes",
    "statistics/rx_errors",
    "statistics/tx_errors",
    "statistics/rx_dropped",
    "statistics/tx_dropped",
];

/// Samples the node's NICs (loopback excluded) and keeps the latest interval's figures.
#[derive(Debug, Default)]
pub struct NicMonitor {
    /// `class/net` directory read instead of the node's (tests).
    root: Option<std::path::PathBuf>,
    last: BTreeMap<String, (Instant, [u64; 7])>,
    pub latest: Vec<NicSample>,
}

fn nic_counters(dir: &std::path::Path) -> Option<[u64; 7]> {
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    let mut out = [0u64; 7];
    for (i, f) in NIC_COUNTERS.iter().enumerate() {
        out[i] = read(f)?;
    }
    // Absent on some virtual interfaces: then no transitions are counted.
    out[6] = read("carrier_changes").unwrap_or(0);
    Some(out)
}

impl NicMonitor {
    /// A monitor of the interfaces under `dir` (a `class/net` directory) instead.
    pub fn at(dir: std::path::PathBuf) -> NicMonitor {
        NicMonitor {
            root: Some(dir),
            ..Default::default()
        }
    }

    /// Reads every interface under `/sys/class/net` (or `$LLMDD_SYSFS_ROOT/class/net`).
    pub fn sample(&mut self) {
        let root = self
            .root
            .clone()
            .unwrap_or_else(|| crate::kernel::sys_path("/sys/class/net"));
        let Ok(dir) = std::fs::read_dir(&root) else {
            return;
        };
        let now = Instant::now();
        let mut latest = Vec::new();
        let mut names: Vec<String> = dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lo")
            .collect();
        names.sort();
        for name in names {
            let Some(c) = nic_counters(&root.join(&name)) else {
                continue;
            };
            if let Some((t, p)) = self.last.get(&name) {
                let dt = now.duration_since(*t).as_secs_f64().max(1e-3);
                let d = |i: usize| c[i].saturating_sub(p[i]);
                latest.push(NicSample {
                    name: name.clone(),
                    rx_bytes_per_s: d(0) as f64 / dt,
                    tx_bytes_per_s: d(1) as f64 / dt,
                    errors: d(2) + d(3),
                    drops: d(4) + d(5),
                    carrier_changes: d(6),
                });
            }
            self.last.insert(name, (now, c));
        }
        self.latest = latest;
    }

    /// See [`nic_trouble`].
    pub fn trouble(&self) -> Option<(String, &'static str)> {
        nic_trouble(&self.latest)
    }
}

/// A context line naming the interfaces with errors, drops or link flaps in the last
/// interval, and a suggestion; `None` when every NIC is clean.
pub fn nic_trouble(nics: &[NicSample]) -> Option<(String, &'static str)> {
    {
        let bad: Vec<String> = nics
            .iter()
            .filter(|n| n.errors + n.drops + n.carrier_changes > 0)
            .map(|n| {
                format!(
                    "{} {} errors, {} drops, {} link changes",
                    n.name, n.errors, n.drops, n.carrier_changes
                )
            })
            .collect();
        (!bad.is_empty()).then(|| {
            (
                format!("nic: in the last interval {}", bad.join("; ")),
                "a NIC of this node shows errors or link changes: check its cabling, switch port \
                 and counters (ethtool -S) before the code",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_errors_in_an_interval_are_named() {
        let root = std::env::temp_dir().join(format!("llmdd-nic-{}", std::process::id()));
        let eth = root.join("class/net/eth0");
        std::fs::create_dir_all(eth.join("statistics")).expect("dirs");
        std::fs::create_dir_all(root.join("class/net/lo/statistics")).expect("dirs");
        let write = |v: [u64; 6], carrier: u64| {
            for (f, x) in NIC_COUNTERS.iter().zip(v) {
                std::fs::write(eth.join(f), format!("{x}\n")).expect("write");
            }
            std::fs::write(eth.join("carrier_changes"), format!("{carrier}\n")).expect("write");
        };
        let mut m = NicMonitor::at(root.join("class/net"));
        write([1000, 2000, 0, 0, 0, 0], 2);
        m.sample();
        assert!(m.latest.is_empty(), "the first sample has no interval");
        write([5000, 2000, 3, 1, 0, 2], 2);
        m.sample();
        write([9000, 2000, 3, 1, 0, 2], 2);
        let n = &m.latest[0];
        assert_eq!((n.name.as_str(), n.errors, n.drops), ("eth0", 4, 2));
        assert!(n.rx_bytes_per_s > 0.0);
        let (line, _) = m.trouble().expect("errors");
        assert!(
            line.contains("eth0 4 errors, 2 drops, 0 link changes"),
            "{line}"
        );
        m.sample();
        assert!(m.trouble().is_none(), "a clean interval");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn schedstat_lines() {
        // utime 250 and stime 50 ticks, in a name with spaces and a parenthesis.
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1";
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(parse_stat_cpu_ns(stat), Some(300 * (1_000_000_000 / hz)));
        assert_eq!(parse_stat_cpu_ns("garbage"), None);
        assert_eq!(parse_schedstat("123 456 7\n"), Some((123, 456)));
        assert_eq!(parse_schedstat("x"), None);
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn a_starved_culprit_changes_the_suggestion() {
        let s = |w: f64| HostSample {
            cpu_percent: 50.0,
            runqueue_ms_per_s: w,
            rss_kib: 2048,
            threads: 4,
        };
        let (line, hint) = culprit_context(7, &s(300.0), &[s(2.0), s(3.0), s(1.0)]);
        assert!(
            line.contains("waited 300.0 ms/s") && line.contains("median 2.0"),
            "{line}"
        );
        assert!(hint.is_some());
        let (_, hint) = culprit_context(7, &s(4.0), &[s(2.0), s(3.0), s(1.0)]);
        assert!(hint.is_none(), "a small wait is not the cause");
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = std::process::id();
        let mut m = HostMonitor::default();
        m.sample([me]);
        // Busy for 50 ms of wall time: the kernel accounts a running thread's CPU time at
        // scheduler ticks, so a shorter burst can read as none.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            for i in 0..10_000u64 {
                x = x.wrapping_add(std::hint::black_box(i));
            }
        }
        std::hint::black_box(x);
        m.sample([me]);
        let s = m.latest.get(&me).copied().expect("sampled twice");
        assert!(s.threads >= 1 && s.rss_kib > 0, "{s:?}");
        assert!(s.cpu_percent > 0.0, "{s:?}");
    }
}
