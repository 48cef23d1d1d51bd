//! The overhead budget (`--overhead-budget PCT`): llmdd bounds the time each traced thread
//! spends in its probes.
//!
//! Each traced call costs about one uprobe trap plus the program (`calibrate` measures it on
//! this machine at start). Per thread, the cost of the calls it makes is its call rate times
//! that cost. The calls that matter for findings (collectives, p2p, communicator setup,
//! graph launches, syncs, allocations) are always traced; when a thread's hot calls (kernel
//! launches, copies, event records and queries, stream waits: [`cyclable`]) would take it
//! over the budget, their probes are duty-cycled: attached for a fraction of each
//! [`PERIOD_NS`] and removed for the rest (removing the probe removes the trap; a disabled
//! probe would still trap). Counts of cycled functions are then extrapolated by the
//! fraction of time they were attached, and every output says so.
//!
//! The controller here is plain logic over call counts and a clock, testable without BPF;
//! `attach` applies its switches with `Tracer::pause_hot` / `Tracer::resume_hot_job`.

use std::collections::{BTreeMap, HashMap};

use llmdd_common::funcs::{self, Family, FuncId};

/// Length of one duty cycle.
pub const PERIOD_NS: u64 = 2_000_000_000;
/// The smallest fraction of each period a cycled family stays attached (20 ms of 2 s): the
/// rate estimate needs some attached time, and the run loop switches at about 10 ms.
pub const MIN_DUTY: f64 = 0.01;

pub use crate::probe::cyclable;

/// Whether `family` has any cyclable function (only those families get a duty cycle).
pub fn family_cycles(family: Family) -> bool {
    funcs::FUNCS
        .iter()
        .any(|f| f.family == family && cyclable(f.id))
}

/// Apply this: attach (`on`) or remove the cycled probes of `family` in `pid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    pub pid: u32,
    pub family: Family,
    pub on: bool,
}

/// One (process, family) under the duty cycle.
#[derive(Clone, Debug)]
struct Unit {
    duty: f64,
    on: bool,
    /// When the current attached span began (valid while `on`).
    on_since: u64,
    /// Attached time in the current window (closed spans), and since tracking began.
    on_window_ns: u64,
    on_total_ns: u64,
    first_ns: u64,
    /// Cyclable calls seen, and the same extrapolated window by window (calls seen in a
    /// window divided by the fraction of it the probes were attached).
    observed: u64,
    estimated: f64,
    /// The duty period the fields below are about, and the attached time in it (closed
    /// spans).
    period: u64,
    on_period_ns: u64,
}

impl Unit {
    /// Attached time in the current window, counting the span still open.
    fn on_in_window(&self, now: u64) -> u64 {
        self.on_window_ns
            + if self.on {
                now.saturating_sub(self.on_since)
            } else {
                0
            }
    }
}

/// Calls one thread made in the current window.
#[derive(Clone, Debug, Default)]
struct ThreadCalls {
    /// Calls that are never cycled.
    fixed: u64,
    /// Cyclable calls per family.
    hot: BTreeMap<Family, u64>,
}

/// How a (process, family) fares under the duty cycle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Duty {
    pub pid: u32,
    pub family: Family,
    /// The duty the controller wants now.
    pub target: f64,
    /// Attached time over tracked time so far.
    pub attached: f64,
    /// Estimated over observed calls of the cycled functions: what their counts are
    /// multiplied by.
    pub scale: f64,
}

/// The duty-cycle controller. Windows are whole periods, so each holds exactly one attached
/// slice; duties are re-estimated at each period's end, and lowered at once (the brake)
/// whenever the current window already shows a thread over its budget.
#[derive(Clone, Debug)]
pub struct Budget {
    /// Budget as a fraction of each thread's time (0.01 for 1%).
    pub fraction: f64,
    /// Measured cost of one traced call, in ns.
    pub cost_ns: f64,
    start_ns: u64,
    window_start_ns: u64,
    threads: HashMap<(u32, u32), ThreadCalls>,
    units: BTreeMap<(u32, Family), Unit>,
    /// Duty-cycle the hot probes (`--enforce-budget`); otherwise only measure and report.
    enforce: bool,
    /// Threads whose probes cost more than the budget in the last window: (pid, tid, share
    /// of the thread's time).
    over: Vec<(u32, u32, f64)>,
    /// The duties of processes that ended, as they stood then (their counts stay
    /// extrapolated in the final outputs).
    ended: Vec<Duty>,
}

/// The brake acts once a unit has been attached this long in the window (a shorter span
/// gives too noisy a rate).
const BRAKE_AFTER_NS: u64 = 20_000_000;

impl Budget {
    pub fn new(fraction: f64, cost_ns: f64, now: u64, enforce: bool) -> Budget {
        Budget {
            enforce,
            over: Vec::new(),
            fraction,
            cost_ns,
            start_ns: now,
            window_start_ns: now,
            threads: HashMap::new(),
            units: BTreeMap::new(),
            ended: Vec::new(),
        }
    }

    /// Starts the duty cycle of `family` in `pid` (attached in full now).
    pub fn track(&mut self, pid: u32, family: Family, now: u64) {
        if family_cycles(family) {
            self.units.entry((pid, family)).or_insert(Unit {
                duty: 1.0,
                on: true,
                on_since: now,
                on_window_ns: 0,
                on_total_ns: 0,
                first_ns: now,
                observed: 0,
                estimated: 0.0,
                period: now.saturating_sub(self.start_ns) / PERIOD_NS,
                on_period_ns: 0,
            });
        }
    }

    /// The process is gone: its duties are kept as they stand at `now`.
    pub fn forget(&mut self, pid: u32, now: u64) {
        let mine: Vec<Duty> = self
            .duties(now)
            .into_iter()
            .filter(|d| d.pid == pid)
            .collect();
        self.ended.extend(mine);
        self.units.retain(|(p, _), _| *p != pid);
        self.threads.retain(|(p, _), _| *p != pid);
    }

    /// One traced call seen (from its record).
    pub fn note_call(&mut self, pid: u32, tid: u32, func: FuncId) {
        let Some(spec) = funcs::spec(func) else {
            return;
        };
        let t = self.threads.entry((pid, tid)).or_default();
        if cyclable(func) && self.units.contains_key(&(pid, spec.family)) {
            *t.hot.entry(spec.family).or_default() += 1;
        } else {
            t.fixed += 1;
        }
    }

    /// Whether `family` in `pid` is attached in full right now.
    pub fn is_on(&self, pid: u32, family: Family) -> bool {
        self.units.get(&(pid, family)).is_none_or(|u| u.on)
    }

    /// The duty each unit can afford given the current window's calls, for the units
    /// attached at least `min_on_ns` of it (the tightest over the process's threads).
    fn allowed(&self, now: u64, min_on_ns: u64) -> BTreeMap<(u32, Family), f64> {
        let window = now.saturating_sub(self.window_start_ns).max(1) as f64;
        let mut allowed: BTreeMap<(u32, Family), f64> = BTreeMap::new();
        for (&(pid, _tid), calls) in &self.threads {
            let fixed = calls.fixed as f64 / window * self.cost_ns;
            let mut hot = 0.0;
            for (family, &n) in &calls.hot {
                let on = self
                    .units
                    .get(&(pid, *family))
                    .map(|u| u.on_in_window(now))
                    .unwrap_or(0);
                if on >= min_on_ns.max(1) {
                    // The rate while attached: what full tracing would cost.
                    hot += n as f64 / on as f64 * self.cost_ns;
                }
            }
            if hot <= 0.0 {
                continue;
            }
            let d = ((self.fraction - fixed) / hot).clamp(MIN_DUTY, 1.0);
            for family in calls.hot.keys() {
                let e = allowed.entry((pid, *family)).or_insert(1.0);
                *e = e.min(d);
            }
        }
        allowed
    }

    /// Whether hot probes are duty-cycled to hold the budget (`--enforce-budget`).
    pub fn enforcing(&self) -> bool {
        self.enforce
    }

    /// Threads whose probes cost more than the budget in the last whole window, with the
    /// share of their time the probes took.
    pub fn over_budget(&self) -> &[(u32, u32, f64)] {
        &self.over
    }

    /// Advances the controller to `now`: ends the window at a period's end, brakes when the
    /// window already shows too much, and returns the switches to apply now (none unless
    /// enforcing).
    pub fn tick(&mut self, now: u64) -> Vec<Switch> {
        let elapsed = now.saturating_sub(self.start_ns);
        let window_end =
            self.start_ns + (now.saturating_sub(self.start_ns) / PERIOD_NS) * PERIOD_NS;
        if window_end > self.window_start_ns {
            self.end_window(window_end.max(self.window_start_ns));
        } else if self.enforce {
            for (key, d) in self.allowed(now, BRAKE_AFTER_NS) {
                if let Some(u) = self.units.get_mut(&key) {
                    if d < u.duty {
                        u.duty = d;
                    }
                }
            }
        }
        if !self.enforce {
            return Vec::new();
        }
        let period = elapsed / PERIOD_NS;
        let period_start = self.start_ns + period * PERIOD_NS;
        let mut out = Vec::new();
        for (&(pid, family), u) in &mut self.units {
            if u.period != period {
                u.period = period;
                u.on_period_ns = 0;
            }
            // Attached from the first tick of each period until this period's attached time
            // reaches its share; a late tick shortens the off part, never the share.
            let open = if u.on {
                now.saturating_sub(u.on_since.max(period_start))
            } else {
                0
            };
            let share = (u.duty * PERIOD_NS as f64) as u64;
            let want = u.duty >= 1.0 || u.on_period_ns + open < share;
            if want == u.on {
                continue;
            }
            if u.on {
                let span = now.saturating_sub(u.on_since);
                u.on_window_ns += span;
                u.on_total_ns += span;
                u.on_period_ns += open;
            } else {
                u.on_since = now;
            }
            u.on = want;
            out.push(Switch {
                pid,
                family,
                on: want,
            });
        }
        out
    }

    /// An "on" switch took effect only now (it attached on another thread): its attached
    /// time starts now.
    pub fn attached_now(&mut self, pid: u32, family: Family, now: u64) {
        if let Some(u) = self.units.get_mut(&(pid, family)) {
            if u.on {
                u.on_since = now;
            }
        }
    }

    /// A switch could not be applied: the unit keeps its previous state.
    pub fn revert(&mut self, s: Switch, now: u64) {
        if let Some(u) = self.units.get_mut(&(s.pid, s.family)) {
            if s.on {
                u.on = false;
            } else {
                u.on = true;
                u.on_since = now;
            }
        }
    }

    /// Closes the window at `end`: extrapolates its counts and sets the next duties.
    fn end_window(&mut self, end: u64) {
        let window = end.saturating_sub(self.window_start_ns).max(1);
        let allowed = self.allowed(end, 1);
        // What each thread's probes cost it in this window (calls seen x cost).
        self.over = self
            .threads
            .iter()
            .map(|(&(pid, tid), c)| {
                let n = c.fixed + c.hot.values().sum::<u64>();
                (pid, tid, n as f64 * self.cost_ns / window as f64)
            })
            .filter(|&(_, _, share)| share > self.fraction)
            .collect();
        self.over.sort_by_key(|&(pid, tid, _)| (pid, tid));
        let mut seen: BTreeMap<(u32, Family), u64> = BTreeMap::new();
        for (&(pid, _), calls) in &self.threads {
            for (f, &n) in &calls.hot {
                *seen.entry((pid, *f)).or_default() += n;
            }
        }
        for (key, u) in &mut self.units {
            let on = u.on_in_window(end).min(window);
            if u.on {
                let span = end.saturating_sub(u.on_since);
                u.on_total_ns += span;
                u.on_since = end;
            }
            let n = seen.get(key).copied().unwrap_or(0);
            u.observed += n;
            if on > 0 && self.enforce {
                // While probed, the calls ran slower by their probes' cost: the rate the
                // process would have without them is the calls over the attached time less
                // that cost (floored, so a mismeasured cost cannot blow the estimate up).
                let busy = n as f64 * self.cost_ns;
                let free = (on as f64 - busy).max(on as f64 * 0.02);
                let rate = n as f64 / free;
                // Calls in the unprobed part of the window at that rate, plus those seen.
                u.estimated += n as f64 + rate * window.saturating_sub(on) as f64;
                let d = allowed.get(key).copied().unwrap_or(1.0);
                // Rise at most 4x per window, so one quiet window does not bring back a
                // full-rate burst at once; without attached time there is nothing to go by.
                u.duty = d.min(u.duty * 4.0).max(MIN_DUTY);
            } else {
                u.estimated += n as f64;
            }
            u.on_window_ns = 0;
        }
        self.threads.clear();
        self.window_start_ns = end;
    }

    /// Every unit whose probes were not attached all the time, with the fraction they were
    /// and the factor its counts are extrapolated by; those of ended processes as they
    /// ended.
    pub fn duties(&self, now: u64) -> Vec<Duty> {
        self.units
            .iter()
            .map(|(&(pid, family), u)| {
                let open = if u.on {
                    now.saturating_sub(u.on_since)
                } else {
                    0
                };
                let tracked = now.saturating_sub(u.first_ns).max(1);
                Duty {
                    pid,
                    family,
                    target: u.duty,
                    attached: ((u.on_total_ns + open) as f64 / tracked as f64).min(1.0),
                    scale: if u.observed > 0 {
                        (u.estimated / u.observed as f64).max(1.0)
                    } else {
                        1.0
                    },
                }
            })
            .filter(|d| self.enforce && (d.attached < 0.999 || d.target < 1.0))
            .chain(self.ended.iter().copied())
            .collect()
    }
}

/// The live view's word on what is sampled: every duty-cycled family, how much of the time
/// its hot probes were attached and what its counts are multiplied by.
pub fn sampled_line(duties: &[Duty]) -> Option<String> {
    if duties.is_empty() {
        return None;
    }
    let parts: Vec<String> = duties
        .iter()
        .map(|d| {
            format!(
                "{} {} {:.0}% (x{:.1})",
                d.pid,
                d.family.name(),
                d.attached * 100.0,
                d.scale
            )
        })
        .collect();
    Some(format!(
        "SAMPLED launches/copies/events: {}",
        parts.join(", ")
    ))
}

/// A function the calibration attaches a probe to: called in a loop with and without the
/// probe, it gives the cost of one traced call on this machine. Written in assembly so that
/// it starts as library functions do (`push rbp`), an instruction the kernel's uprobe code
/// emulates; a compiler-chosen first instruction might need a slower out-of-line single
/// step and overstate the cost.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[no_mangle]
pub extern "C" fn llmdd_calibration_point(x: u64) -> u64 {
    core::arch::naked_asm!(
        "push rbp",
        "mov rbp, rsp",
        "mov rax, rdi",
        "xor rax, 0x5a",
        "pop rbp",
        "ret"
    )
}

/// See the x86-64 version; elsewhere the compiler's prologue is what gets probed.
#[cfg(not(target_arch = "x86_64"))]
#[inline(never)]
#[no_mangle]
pub extern "C" fn llmdd_calibration_point(x: u64) -> u64 {
    std::hint::black_box(x ^ 0x5a)
}

/// Where `llmdd_calibration_point` lives in this process's executable: (file, offset).
pub fn calibration_point() -> Option<(std::path::PathBuf, u64)> {
    let f: extern "C" fn(u64) -> u64 = llmdd_calibration_point;
    let addr = f as usize as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let (range, _perms, offset) = (it.next()?, it.next()?, it.next()?);
        let path = it.nth(2).unwrap_or("");
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).ok()?,
            u64::from_str_radix(hi, 16).ok()?,
        );
        if (lo..hi).contains(&addr) && path.starts_with('/') {
            let off = u64::from_str_radix(offset, 16).ok()?;
            return Some(("/proc/self/exe".into(), addr - lo + off));
        }
    }
    None
}

/// Calls the calibration point `n` times; ns per call.
pub fn time_calibration_calls(n: u64) -> f64 {
    let f: extern "C" fn(u64) -> u64 = std::hint::black_box(llmdd_calibration_point);
    let start = std::time::Instant::now();
    let mut acc = 0u64;
    for i in 0..n {
        acc = acc.wrapping_add(f(i));
    }
    std::hint::black_box(acc);
    start.elapsed().as_nanos() as f64 / n.max(1) as f64
}

/// Measures what one traced call costs on this machine: the calibration point called in a
/// loop untraced, then with llmdd's full probe pair on it (as for a CUDA runtime call), in
/// this process. Returns ns added per call. The probe is removed again (released on a
/// background thread); the records it produced are in the ring buffer, for the caller to
/// discard.
pub fn calibrate(tracer: &mut crate::probe::Tracer) -> Result<f64, String> {
    // Batches: the untraced baseline keeps the fastest (a batch that lost the CPU to
    // another process says nothing), the traced figure the median. The probe is the one a
    // kernel launch gets (arguments from registers and the stack), as the hottest calls
    // of a real thread are launches.
    const BATCH: u64 = 400;
    const BATCHES: usize = 12;
    let fastest = || {
        (0..BATCHES)
            .map(|_| time_calibration_calls(BATCH))
            .fold(f64::INFINITY, f64::min)
    };
    let (path, offset) = calibration_point()
        .ok_or("the calibration function is not in a file mapping of this process")?;
    let func = funcs::FUNCS
        .iter()
        .find(|f| f.name == "cudaLaunchKernel")
        .map(|f| f.id)
        .ok_or("no cudaLaunchKernel in the function table")?;
    let me = std::process::id();
    // Warm caches and page in the code, then the untraced baseline.
    time_calibration_calls(BATCH);
    let base = fastest();
    let plan = crate::probe::ObjectPlan {
        family: Family::CudaRuntime,
        path,
        comm_offsets: None,
        points: vec![(func, offset)],
    };
    tracer
        .attach(me, &[plan])
        .map_err(|e| format!("probing the calibration point: {e}"))?;
    // The first hits of a new probe set up the process's return trampoline and
    // out-of-line instruction slots: warm those up before timing.
    time_calibration_calls(BATCH);
    // The typical traced batch, not the fastest: the estimate is about a thread's usual
    // call (the untraced baseline is a few ns whichever batch is taken).
    let mut traced: Vec<f64> = (0..BATCHES)
        .map(|_| time_calibration_calls(BATCH))
        .collect();
    traced.sort_by(f64::total_cmp);
    let traced = traced[BATCHES / 2];
    let links = tracer.detach(me);
    std::thread::spawn(move || links.release());
    Ok((traced - base).max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> FuncId {
        funcs::FUNCS
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.id)
            .expect("known")
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn what_cycles() {
        assert!(cyclable(id("cudaLaunchKernel")));
        assert!(cyclable(id("cudaEventQuery")));
        assert!(cyclable(id("cudaMemcpyAsync")));
        assert!(!cyclable(id("ncclAllReduce")));
        assert!(!cyclable(id("cudaGraphLaunch")));
        assert!(!cyclable(id("cudaMalloc")));
        assert!(!cyclable(id("cudaStreamSynchronize")));
        assert!(family_cycles(Family::CudaRuntime));
        assert!(!family_cycles(Family::Nccl));
    }

    /// A thread that calls cudaEventQuery `rate` times a second when unprobed, for `secs`;
    /// while probed each call also pays the 3 us probe cost, so it calls less often.
    /// Returns (calls seen by the probes, calls made).
    fn run(b: &mut Budget, rate: u64, secs: u64) -> (u64, u64) {
        let q = id("cudaEventQuery");
        let (mut seen, mut made) = (0u64, 0f64);
        let step = 10 * MS;
        let mut t = 0;
        while t < secs * 1000 * MS {
            for s in b.tick(t) {
                assert_eq!((s.pid, s.family), (1, Family::CudaRuntime));
            }
            let gap_ns = 1e9 / rate as f64;
            if b.is_on(1, Family::CudaRuntime) {
                let n = (step as f64 / (gap_ns + 3000.0)) as u64;
                for _ in 0..n {
                    b.note_call(1, 1, q);
                }
                seen += n;
                made += n as f64;
            } else {
                made += step as f64 / gap_ns;
            }
            t += step;
        }
        (seen, made as u64)
    }

    #[test]
    fn a_quiet_thread_stays_fully_traced() {
        // 1000 calls/s at 3 us: 0.3% of the thread, under a 1% budget.
        let mut b = Budget::new(0.01, 3000.0, 0, true);
        b.track(1, Family::CudaRuntime, 0);
        let (seen, made) = run(&mut b, 1000, 10);
        assert!(
            b.duties(10_000 * MS).is_empty(),
            "{:?}",
            b.duties(10_000 * MS)
        );
        assert_eq!(seen, made);
    }

    #[test]
    fn a_hot_thread_is_cycled_to_the_budget_and_counts_extrapolate() {
        // 100k calls/s unprobed; probed, 1/(10 us + 3 us) = 77k calls/s, 23% of the
        // thread in probes: a duty of 1/23 holds 1%.
        let mut b = Budget::new(0.01, 3000.0, 0, true);
        b.track(1, Family::CudaRuntime, 0);
        let (seen, made) = run(&mut b, 100_000, 20);
        let d = b.duties(20_000 * MS);
        assert_eq!(d.len(), 1);
        assert!(
            (d[0].target - 1.0 / 23.1).abs() < 0.005,
            "target duty {}",
            d[0].target
        );
        // The cost actually spent: calls seen x cost over the run.
        let spent = seen as f64 * 3000.0 / 20e9;
        assert!(spent < 0.02, "spent {spent} of the thread's time");
        // Extrapolated count within 15% of the calls made.
        let estimate = seen as f64 * d[0].scale;
        assert!(
            (estimate / made as f64 - 1.0).abs() < 0.15,
            "estimate {estimate}, attached {}",
            d[0].attached
        );
    }

    #[test]
    fn collectives_use_budget_but_are_never_cycled() {
        let mut b = Budget::new(0.01, 3000.0, 0, true);
        b.track(1, Family::Nccl, 0);
        b.track(1, Family::CudaRuntime, 0);
        let ar = id("ncclAllReduce");
        for _ in 0..1000 {
            b.note_call(1, 1, ar);
        }
        // Only the runtime family has a duty cycle.
        assert!(b.tick(PERIOD_NS).is_empty());
        assert!(b.is_on(1, Family::Nccl));
    }

    #[test]
    fn when_fixed_calls_use_the_whole_budget_hot_ones_get_the_minimum() {
        let mut b = Budget::new(0.01, 3000.0, 0, true);
        b.track(1, Family::CudaRuntime, 0);
        let ar = id("ncclAllReduce");
        let q = id("cudaEventQuery");
        // One period: 16000 collectives (48 ms of traps: over 1% already) and 100 queries.
        for _ in 0..16_000 {
            b.note_call(1, 1, ar);
        }
        for _ in 0..100 {
            b.note_call(1, 1, q);
        }
        b.tick(PERIOD_NS);
        let d = b.duties(PERIOD_NS);
        assert_eq!(d.len(), 1);
        assert!((d[0].target - MIN_DUTY).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn without_enforcing_nothing_switches_and_costly_threads_are_named() {
        let mut b = Budget::new(0.01, 3000.0, 0, false);
        b.track(1, Family::CudaRuntime, 0);
        let (seen, made) = run(&mut b, 100_000, 6);
        assert_eq!(seen, made, "always attached");
        assert!(b.duties(6_000 * MS).is_empty());
        let over = b.over_budget();
        assert_eq!(over.len(), 1, "{over:?}");
        // 77k calls/s x 3 us: 23% of the thread.
        assert!((over[0].2 - 0.23).abs() < 0.02, "{over:?}");
    }

    #[test]
    fn a_forgotten_process_has_no_duty() {
        let mut b = Budget::new(0.01, 3000.0, 0, true);
        b.track(7, Family::CudaRuntime, 0);
        b.forget(7, MS);
        assert!(b.duties(MS).is_empty());
        assert!(b.tick(PERIOD_NS).is_empty());
    }

    #[test]
    fn a_cycled_process_that_ends_stays_sampled_in_the_outputs() {
        // `run` drives pid 1.
        let mut b = Budget::new(0.01, 3000.0, 0, true);
        b.track(1, Family::CudaRuntime, 0);
        run(&mut b, 100_000, 6);
        let before = b.duties(6 * 1000 * MS);
        assert_eq!(before.len(), 1, "{before:?}");
        b.forget(1, 6 * 1000 * MS);
        assert!(b.tick(7 * 1000 * MS).is_empty());
        assert_eq!(b.duties(8 * 1000 * MS), before);
    }

    #[test]
    fn the_calibration_point_is_found_in_the_executable() {
        let (path, off) = calibration_point().expect("mapped");
        assert!(path.exists());
        assert!(off > 0);
        assert!(time_calibration_calls(1000) > 0.0);
    }
}
