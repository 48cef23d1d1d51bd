//! Host context of the traced processes, so a finding can say *why* a rank is late: CPU
//! time, time its threads waited on a run queue for a CPU, and resident memory, from
//! `/proc/PID/task/*/schedstat` and `/proc/PID/statm` (no probe needed). GPU context (NVML)
//! is not read yet.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_lines() {
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
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        m.sample([me]);
        let s = m.latest.get(&me).copied().expect("sampled twice");
        assert!(s.threads >= 1 && s.rss_kib > 0, "{s:?}");
        assert!(s.cpu_percent > 0.0, "{s:?}");
    }
}
