//! What the probes cost each traced thread, estimated where the cost is paid.
//!
//! llmdd's calibration (`budget::calibrate`) times a probe on a function of its own, in a
//! tight loop: warm caches, one thread, the kernel's cheapest path. A traced thread of a
//! real job may pay more for the same trap (a measured case: 4-10 times more in a PyTorch
//! loop on a virtual machine, cause not established). So each thread's cost is also measured
//! on the thread itself: a uprobe's trap, its BPF programs and the return trampoline run in
//! kernel mode, and the kernel accounts that time to the thread (`/proc/PID/task/TID/stat`,
//! `stime`, split from user time by sampling which mode the thread is in at each timer
//! tick). Over a span of at least [`MIN_MEASURED_NS`], the thread's kernel time per unit of
//! wall time is a second figure for the share of its time spent in probes, measured where
//! the cost is paid. It is not a clean one: it also holds the thread's own system calls,
//! and without a time when the same thread runs unprobed they cannot be subtracted (on the
//! simulated job's ranks, whose waits make system calls, it read 7-9% where the probes cost
//! 1-3%); and in one benchmark run it read below the calibrated share (3.9% against 6.2%,
//! the step measured 8.0% slower), so tick sampling does not catch all of a trap's time.
//!
//! Each thread's estimated slowdown is `p / (1 - p)` for the share `p` of its time in
//! probes: the time its work would take without them is the rest. The estimate takes `p`
//! from the calibrated cost; its range spans the calibrated and the measured figure (with
//! the measurement's error), so that a thread paying more than the calibration says shows
//! it.
//!
//! Plain logic over call counts, clock readings and kernel-time readings; the one function
//! that reads `/proc` is [`thread_kernel_ns`].

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// A thread's kernel time is used once it has been read across this much wall time.
pub const MIN_MEASURED_NS: u64 = 1_000_000_000;
/// The kernel samples which mode a thread is in at each timer tick: 4 ms at 250 Hz, the
/// coarsest common setting (1000 Hz kernels are four times finer).
const TICK_NS: f64 = 4_000_000.0;
/// `/proc` reports times in clock ticks of 10 ms (USER_HZ 100 on every common build); the
/// two readings of a span can each be off by one.
const CLOCK_T_NS: f64 = 10_000_000.0;
/// A share this close to 1 says the thread did nothing but run probes; the slowdown formula
/// would explode, so the share is capped here.
const MAX_SHARE: f64 = 0.95;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Reading {
    at_ns: u64,
    kernel_ns: u64,
}

#[derive(Clone, Debug, Default)]
struct Seen {
    first_ns: u64,
    last_call_ns: u64,
    calls: u64,
    first: Option<Reading>,
    last: Option<Reading>,
}

/// What the probes cost one thread so far.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThreadCost {
    pub pid: u32,
    pub tid: u32,
    /// Wall time from the thread's first traced call seen to its last.
    pub seconds: f64,
    pub calls: u64,
    pub calls_per_s: f64,
    /// Calls x the calibrated cost of one traced call, over `seconds`: the share of its
    /// time the thread spent in probes if each call cost what the calibration measured.
    pub calibrated_share: f64,
    /// The thread's kernel-mode time over wall time, across `measured_seconds` (null until
    /// that reaches 1 s): probes' traps and programs plus the thread's own system calls.
    pub kernel_share: Option<f64>,
    /// Its uncertainty (tick sampling and clock-tick rounding), as a share.
    pub kernel_share_error: Option<f64>,
    pub measured_seconds: f64,
    /// Estimated slowdown of the thread's work, `p / (1 - p)` (0.05 = 5% slower) for the
    /// calibrated share `p`.
    pub estimated_slowdown: f64,
    /// Its range: from the smaller to the larger of the calibrated and the measured figure
    /// (the measured one widened by its error); both the estimate where nothing was
    /// measured yet.
    pub slowdown_low: f64,
    pub slowdown_high: f64,
    /// "calibration and kernel time" or "calibration": what the range rests on.
    pub basis: &'static str,
}

fn slowdown(share: f64) -> f64 {
    let p = share.clamp(0.0, MAX_SHARE);
    p / (1.0 - p)
}

/// Per-thread probe costs: calls counted from the records, kernel time read from `/proc`.
#[derive(Debug)]
pub struct Costs {
    /// The calibrated cost of one traced call, ns.
    pub cost_ns: f64,
    threads: HashMap<(u32, u32), Seen>,
    /// Threads of processes that ended, as last computed.
    ended: BTreeMap<(u32, u32), ThreadCost>,
}

impl Costs {
    pub fn new(cost_ns: f64) -> Costs {
        Costs {
            cost_ns,
            threads: HashMap::new(),
            ended: BTreeMap::new(),
        }
    }

    /// One traced call of `tid` entered at `at_ns`. Returns whether the thread is new (its
    /// kernel time should be read now, as the start of its span).
    pub fn note_call(&mut self, pid: u32, tid: u32, at_ns: u64) -> bool {
        let s = self.threads.entry((pid, tid)).or_default();
        let new = s.calls == 0;
        if new {
            s.first_ns = at_ns;
        }
        s.calls += 1;
        s.last_call_ns = s.last_call_ns.max(at_ns);
        new
    }

    /// The thread's kernel time, read at `at_ns`.
    pub fn read(&mut self, pid: u32, tid: u32, at_ns: u64, kernel_ns: u64) {
        let Some(s) = self.threads.get_mut(&(pid, tid)) else {
            return;
        };
        let r = Reading { at_ns, kernel_ns };
        if s.first.is_none() {
            s.first = Some(r);
        } else {
            s.last = Some(r);
        }
    }

    /// The threads known now, for a refresh of their readings.
    pub fn threads(&self) -> Vec<(u32, u32)> {
        self.threads.keys().copied().collect()
    }

    /// The process ended: its threads' figures are kept as they are now.
    pub fn forget(&mut self, pid: u32) {
        let gone: Vec<(u32, u32)> = self
            .threads
            .keys()
            .filter(|(p, _)| *p == pid)
            .copied()
            .collect();
        for key in gone {
            if let Some(s) = self.threads.remove(&key) {
                self.ended.insert(key, self.cost_of(key, &s));
            }
        }
    }

    fn cost_of(&self, (pid, tid): (u32, u32), s: &Seen) -> ThreadCost {
        let span = s.last_call_ns.saturating_sub(s.first_ns);
        let seconds = span as f64 / 1e9;
        let calibrated_share = if span > 0 {
            (s.calls as f64 * self.cost_ns / span as f64).min(1.0)
        } else {
            0.0
        };
        let measured = match (s.first, s.last) {
            (Some(a), Some(b)) if b.at_ns.saturating_sub(a.at_ns) >= MIN_MEASURED_NS => {
                let dt = (b.at_ns - a.at_ns) as f64;
                let dk = b.kernel_ns.saturating_sub(a.kernel_ns) as f64;
                let err = ((dk * TICK_NS).sqrt() + 2.0 * CLOCK_T_NS) / dt;
                Some((dk / dt, err, dt / 1e9))
            }
            _ => None,
        };
        let estimated_slowdown = slowdown(calibrated_share);
        let (slowdown_low, slowdown_high, basis) = match measured {
            Some((share, err, _)) => (
                slowdown((share - err).min(calibrated_share)),
                slowdown((share + err).max(calibrated_share)),
                "calibration and kernel time",
            ),
            None => (estimated_slowdown, estimated_slowdown, "calibration"),
        };
        ThreadCost {
            pid,
            tid,
            seconds,
            calls: s.calls,
            calls_per_s: if seconds > 0.0 {
                s.calls as f64 / seconds
            } else {
                0.0
            },
            calibrated_share,
            kernel_share: measured.map(|m| m.0),
            kernel_share_error: measured.map(|m| m.1),
            measured_seconds: measured.map(|m| m.2).unwrap_or(0.0),
            estimated_slowdown,
            slowdown_low,
            slowdown_high,
            basis,
        }
    }

    /// Every thread's figures, live and ended, by pid and tid.
    pub fn report(&self) -> Vec<ThreadCost> {
        let mut all = self.ended.clone();
        for (&key, s) in &self.threads {
            all.insert(key, self.cost_of(key, s));
        }
        all.into_values().collect()
    }
}

/// Kernel-mode time of thread `tid` of `pid` so far (`stime` of `/proc/PID/task/TID/stat`),
/// in ns; `None` once the thread is gone.
pub fn thread_kernel_ns(pid: u32, tid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    crate::node::parse_stat_times_ns(&stat).map(|(_, system)| system)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn before_a_second_of_readings_the_calibration_is_the_estimate() {
        let mut c = Costs::new(1000.0);
        assert!(c.note_call(1, 2, 0));
        c.read(1, 2, 0, 0);
        for i in 1..=1000u64 {
            assert!(!c.note_call(1, 2, i * S / 2000));
        }
        c.read(1, 2, S / 2, 300_000_000);
        let t = &c.report()[0];
        assert_eq!(t.basis, "calibration");
        // 1001 calls x 1 us over 0.5 s: 0.2% of the time.
        assert!((t.calibrated_share - 0.002).abs() < 1e-4, "{t:?}");
        assert_eq!(t.kernel_share, None);
        let p = t.calibrated_share;
        assert!((t.estimated_slowdown - p / (1.0 - p)).abs() < 1e-9);
    }

    #[test]
    fn a_thread_whose_kernel_time_exceeds_the_calibration_widens_the_range_upwards() {
        let mut c = Costs::new(500.0);
        c.note_call(1, 2, 0);
        c.read(1, 2, 0, 7 * S);
        for i in 1..=100_000u64 {
            c.note_call(1, 2, i * 4 * S / 100_000);
        }
        // 4 s, 0.8 s more kernel time: 20% of the thread's time.
        c.read(1, 2, 4 * S, 7 * S + 800_000_000);
        let t = &c.report()[0];
        assert_eq!(t.basis, "calibration and kernel time");
        assert!((t.kernel_share.unwrap() - 0.2).abs() < 1e-9);
        // The calibration said 500 ns x 25 000 calls/s: 1.25%; the kernel time allows up
        // to 25% (20% of the time) and a little more for its error.
        assert!((t.calibrated_share - 0.0125).abs() < 1e-3, "{t:?}");
        let p = t.calibrated_share;
        assert!((t.estimated_slowdown - p / (1.0 - p)).abs() < 1e-9);
        assert!((t.slowdown_low - t.estimated_slowdown).abs() < 1e-9);
        assert!(t.slowdown_high > 0.25 && t.slowdown_high < 0.29, "{t:?}");
    }

    #[test]
    fn kernel_time_below_the_calibration_lowers_the_range() {
        let mut c = Costs::new(2000.0);
        c.note_call(1, 2, 0);
        c.read(1, 2, 0, 0);
        for i in 1..=10_000u64 {
            c.note_call(1, 2, i * 2 * S / 10_000);
        }
        // 10 000 calls x 2 us over 2 s: 1% calibrated; no kernel time measured at all.
        c.read(1, 2, 2 * S, 0);
        let t = &c.report()[0];
        assert_eq!(t.slowdown_low, 0.0);
        assert!(
            (t.slowdown_high - t.estimated_slowdown).abs() < 0.02,
            "{t:?}"
        );
    }

    #[test]
    fn an_ended_process_keeps_its_figures() {
        let mut c = Costs::new(1000.0);
        c.note_call(5, 5, 0);
        c.note_call(5, 5, S);
        c.note_call(6, 6, 0);
        c.forget(5);
        assert_eq!(c.threads(), vec![(6, 6)]);
        let all = c.report();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].pid, all[0].calls), (5, 2));
    }

    #[test]
    fn this_threads_kernel_time_is_read() {
        let pid = std::process::id();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(thread_kernel_ns(pid, tid).is_some());
        assert_eq!(thread_kernel_ns(pid, u32::MAX), None);
    }
}
