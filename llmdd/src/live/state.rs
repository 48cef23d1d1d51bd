//! The probe side of a live run: the tracer, the pids still traced, the overhead budget's
//! duty cycle, the node's context, and attaching a target (found at start, by `--follow` or
//! `--children`, or loading a library later) the same way whichever found it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use super::{
    console::Console,
    targets::{self, UserTables},
};
use crate::{
    events::Event,
    gpu::DeviceHints,
    probe::{AttachedObject, ObjectPlan, SwapDone, Tracer},
    session::{monotonic_ns, Session},
    tracee,
};

/// How a target came to be traced (for what is said about it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Named on the command line (or `--all`): failing to probe it ends the run.
    AtStart,
    /// Found while tracing (`--follow`, `--children`): failing is a warning.
    Later,
}

/// The probe side of a live session: the tracer, the pids still traced, the threads
/// releasing the probes of targets that exited (slow; never on the reading path), and the
/// console for messages.
pub struct Live {
    pub tracer: Tracer,
    pub pids: BTreeSet<u32>,
    pub reaper: Vec<std::thread::JoinHandle<()>>,
    pub console: Console,
    /// The overhead budget's duty-cycle controller, unless `--overhead-budget off`.
    pub budget: Option<crate::budget::Budget>,
    /// Duty-cycle switches attaching on their own threads, and where they report.
    /// "On" switches still attaching.
    swaps_pending: BTreeSet<(u32, llmdd_common::funcs::Family)>,
    /// Threads already named as over the overhead budget.
    warned_over: BTreeSet<(u32, u32)>,
    /// CPU, run-queue and memory figures of the targets, for the findings' context.
    host: crate::node::HostMonitor,
    /// This machine's name, for the engine's hints.
    pub hostname: Option<String>,
    /// Names the user stacks of traced calls (`--stacks`).
    pub stacks: Option<crate::stacks::StackWalker>,
    /// Recording to a file: stacks named since the last chunk go to it too.
    recording: bool,
    pub named_stacks: Vec<crate::record::RecStack>,
    /// The node's GPUs (NVML) and NICs, and what each target says about its device. The
    /// GPU library is opened at the first sampling, once tracing has started, so that
    /// its start-up does not delay the attach.
    gpu: Option<crate::gpu::GpuMonitor>,
    nic: crate::node::NicMonitor,
    device_hints: BTreeMap<u32, DeviceHints>,
    /// Symbol tables read for user probes, by file (kept for processes found later).
    pub user_tables: UserTables,
    swaps: (
        std::sync::mpsc::Sender<SwapDone>,
        std::sync::mpsc::Receiver<SwapDone>,
    ),
    /// Each traced process's traced objects, as its threads' stacks name them.
    pub traced: BTreeMap<u32, Vec<crate::threads::TracedPath>>,
    /// Records lost as of the last report to the engine.
    pub lost_seen: u64,
    /// What the probes cost each traced thread (with the budget, which measures a call's
    /// cost), and when its threads' kernel times were last read.
    costs: Option<crate::cost::Costs>,
    costs_read_ns: u64,
}

/// Traced threads' kernel times are read this often.
const COST_READ_NS: u64 = 500_000_000;

impl Live {
    pub fn new(
        tracer: Tracer,
        budget: Option<crate::budget::Budget>,
        user_tables: UserTables,
        recording: bool,
        hostname: Option<String>,
    ) -> Live {
        let budget_cost = budget.as_ref().map(|b| b.cost_ns);
        Live {
            tracer,
            pids: BTreeSet::new(),
            reaper: Vec::new(),
            console: Console::default(),
            budget,
            swaps_pending: BTreeSet::new(),
            warned_over: BTreeSet::new(),
            host: crate::node::HostMonitor::default(),
            hostname,
            stacks: None,
            recording,
            named_stacks: Vec::new(),
            gpu: None,
            nic: crate::node::NicMonitor::default(),
            device_hints: BTreeMap::new(),
            user_tables,
            swaps: std::sync::mpsc::channel(),
            traced: BTreeMap::new(),
            lost_seen: 0,
            costs: budget_cost.map(crate::cost::Costs::new),
            costs_read_ns: 0,
        }
    }

    /// Puts newly attached objects under the overhead budget.
    pub fn track(&mut self, pid: u32, attached: &[AttachedObject]) {
        if let Some(b) = self.budget.as_mut() {
            for a in attached {
                b.track(pid, a.family, monotonic_ns());
            }
        }
    }

    /// Keeps what a new target's environment says about its GPU.
    pub fn note_devices(&mut self, t: &tracee::Target) {
        self.device_hints.insert(
            t.pid,
            DeviceHints {
                visible: t.rank_hints.cuda_visible_devices.as_ref().map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                }),
                local_rank: t.rank_hints.local_rank,
            },
        );
    }

    /// Samples the node context (targets' CPU and memory, NICs, GPUs) into the session.
    pub fn sample_node(&mut self, session: &mut Session) {
        self.host.sample(self.pids.iter().copied());
        session
            .node
            .procs
            .extend(self.host.latest.iter().map(|(p, s)| (*p, *s)));
        self.nic.sample();
        session.node.nics = self.nic.latest.clone();
        let gpu = match self.gpu.as_mut() {
            Some(g) => g,
            None => {
                let g = crate::gpu::GpuMonitor::open();
                if let Some(why) = &g.missing {
                    self.console.say(format!(
                        "llmdd: note: no GPU context for findings: {why}; everything else works"
                    ));
                }
                self.gpu.insert(g)
            }
        };
        let had_gpu = gpu.available();
        gpu.sample();
        if had_gpu && !gpu.available() {
            if let Some(why) = &gpu.missing {
                self.console
                    .say(format!("llmdd: warning: no more GPU context: {why}"));
            }
        }
        if !gpu.latest.is_empty() {
            session.node.gpus = gpu.latest.clone();
            session.node.nvlink_new = gpu.nvlink_new.clone();
            session.node.devices = crate::gpu::map_devices(&gpu.latest, &self.device_hints);
        }
    }

    /// Applies the overhead budget's switches due now. "Off" takes the hot links out (their
    /// release, slow in the kernel, runs on a thread of its own); "on" attaches them on a
    /// thread of its own (it can wait seconds behind such a release) and they are
    /// installed here when done.
    pub fn duty_cycle(&mut self, now: u64) {
        if now.saturating_sub(self.costs_read_ns) >= COST_READ_NS {
            self.costs_read_ns = now;
            self.read_costs();
        }
        let Some(b) = self.budget.as_mut() else {
            return;
        };
        while let Ok(done) = self.swaps.1.try_recv() {
            let (pid, family) = (done.pid, done.family);
            self.swaps_pending.remove(&(pid, family));
            if !self.pids.contains(&pid) {
                continue;
            }
            match self.tracer.finish_resume(done) {
                Ok(()) => b.attached_now(pid, family, monotonic_ns()),
                Err(e) => {
                    let sw = crate::budget::Switch {
                        pid,
                        family,
                        on: true,
                    };
                    b.revert(sw, monotonic_ns());
                    self.console.say(format!(
                        "llmdd: warning: pid {pid}: duty cycle of {} probes: {e}",
                        family.name()
                    ));
                }
            }
        }
        let switches = b.tick(now);
        for &(pid, tid, share) in b.over_budget() {
            if self.warned_over.insert((pid, tid)) {
                self.console.say(format!(
                    "llmdd: warning: pid {pid} thread {tid}: probes cost about {:.1}% of its \
                     time, over the {}% budget{}",
                    share * 100.0,
                    b.fraction * 100.0,
                    if b.enforcing() {
                        ": its launches, copies and event calls are now duty-cycled (their \
                         counts extrapolated; --overhead-budget off traces every call)"
                    } else {
                        " (--mode FAMILY=aggregate for its hot calls, or --enforce-budget)"
                    }
                ));
            }
        }
        for sw in switches {
            tracing::debug!(
                "duty cycle: pid {} {} {}",
                sw.pid,
                sw.family.name(),
                if sw.on { "on" } else { "off" }
            );
            if !self.pids.contains(&sw.pid) {
                continue;
            }
            if self.swaps_pending.contains(&(sw.pid, sw.family)) {
                // The previous "on" is still attaching: decide again at a later tick.
                b.revert(sw, now);
                continue;
            }
            if !sw.on {
                let links = self.tracer.pause_hot(sw.pid, sw.family);
                self.reaper
                    .push(std::thread::spawn(move || links.release()));
                continue;
            }
            if let Some(job) = self.tracer.resume_hot_job(sw.pid, sw.family) {
                self.swaps_pending.insert((sw.pid, sw.family));
                let tx = self.swaps.0.clone();
                std::thread::spawn(move || {
                    let _ = tx.send(job.run());
                });
            } else if let Err(e) = self.tracer.resume_hot(sw.pid, sw.family) {
                b.revert(sw, now);
                self.console.say(format!(
                    "llmdd: warning: pid {}: duty cycle of {} probes: {e}",
                    sw.pid,
                    sw.family.name()
                ));
            }
        }
        // Released links are joined here, so the list does not grow for the whole run.
        let (done, running): (Vec<_>, Vec<_>) =
            self.reaper.drain(..).partition(|h| h.is_finished());
        for h in done {
            let _ = h.join();
        }
        self.reaper = running;
    }

    /// Hands a batch to the session and detaches from the targets that exited in it.
    pub fn consume(&mut self, batch: &mut Vec<Event>, session: &mut Session) -> Result<()> {
        // The budget and the costs (made only with the budget) count each call in one pass.
        if let Some(b) = self.budget.as_mut() {
            for ev in batch.iter() {
                let Event::Call(c) = ev else { continue };
                b.note_call(c.pid, c.tid, c.func);
                let Some(costs) = self.costs.as_mut() else {
                    continue;
                };
                if costs.note_call(c.pid, c.tid, c.entry_ns) {
                    if let Some(k) = crate::cost::thread_kernel_ns(c.pid, c.tid) {
                        costs.read(c.pid, c.tid, monotonic_ns(), k);
                    }
                }
            }
        }
        if let Some(w) = self.stacks.as_mut() {
            let mut flame = session.outputs.flame.as_mut();
            let (recording, named) = (self.recording, &mut self.named_stacks);
            w.annotate(batch, |key, frames| {
                if recording {
                    named.push(crate::record::RecStack {
                        pid: key.0,
                        id: key.1,
                        caller: key.2,
                        frames: frames.to_vec(),
                    });
                }
                if let Some(f) = flame.as_deref_mut() {
                    f.learn_stack(key, frames);
                }
            });
        }
        let mut exited = Vec::new();
        session.ingest(batch, &mut exited)?;
        for pid in exited {
            self.target_exited(pid);
        }
        Ok(())
    }

    pub fn target_exited(&mut self, pid: u32) {
        if let Some(b) = self.budget.as_mut() {
            b.forget(pid, monotonic_ns());
        }
        if let Some(c) = self.costs.as_mut() {
            c.forget(pid);
        }
        self.traced.remove(&pid);
        if self.pids.remove(&pid) {
            let links = self.tracer.detach(pid);
            self.reaper
                .push(std::thread::spawn(move || links.release()));
            self.console.say(format!(
                "llmdd: pid {pid} exited; {} still traced",
                self.pids.len()
            ));
        }
    }

    /// Attaches to `t` with its built-in plan and `extra` (its `--probe` points), says so,
    /// and registers it with the session. `Ok(false)`: not traced (it exited first, or,
    /// found later, it could not be probed: said); an error only for a target named at
    /// start that could not be probed.
    pub fn attach_target(
        &mut self,
        t: &tracee::Target,
        extra: Vec<ObjectPlan>,
        front: bool,
        found: Found,
        session: &mut Session,
    ) -> Result<bool> {
        let mut plans = targets::plan(t);
        plans.extend(extra);
        let attached = match self.tracer.attach(t.pid, &plans) {
            Ok(a) => a,
            // Ended between being found and being probed (a job finishing as llmdd
            // starts): said, and the others are traced.
            Err(_) if !tracee::procfs::proc_path(t.pid, "").exists() => {
                self.console.say(format!(
                    "llmdd: note: pid {} exited before it could be probed",
                    t.pid
                ));
                return Ok(false);
            }
            Err(e) if found == Found::AtStart => return Err(e.into()),
            Err(e) => {
                self.console.say(format!(
                    "llmdd: warning: following {}: pid {} could not be probed: {e}",
                    t.comm, t.pid
                ));
                return Ok(false);
            }
        };
        if front {
            self.tracer.mark_front(t.pid)?;
        }
        let libs: Vec<String> = attached
            .iter()
            .map(|a| {
                format!(
                    "{} {} ({} functions)",
                    a.family.name(),
                    a.path.display(),
                    a.probes
                )
            })
            .collect();
        let how = match found {
            Found::AtStart => String::new(),
            Found::Later => format!("following {}: ", t.comm),
        };
        self.console.say(format!(
            "llmdd: {how}attached to pid {}{}: {}",
            t.pid,
            targets::describe_rank(t),
            libs.join(", ")
        ));
        for note in targets::target_notes(t) {
            self.console
                .say(format!("llmdd: note: pid {}: {note}", t.pid));
        }
        session.register_process(
            targets::hints_of(t, self.hostname.clone()),
            targets::proc_info(t, &attached),
        );
        if let Some(w) = self.stacks.as_mut() {
            w.symbolizer.refresh(t.pid);
        }
        self.track(t.pid, &attached);
        self.note_devices(t);
        self.traced.insert(t.pid, traced_paths(t));
        self.pids.insert(t.pid);
        Ok(true)
    }

    /// A traced process mapped a file executable: probes any library it did not have
    /// before (NCCL opened lazily with dlopen, as PyTorch does).
    pub fn probe_new_libraries(&mut self, pid: u32) {
        let Ok(t) = tracee::inspect(pid) else {
            return;
        };
        match self.tracer.attach_new(pid, &targets::plan(&t)) {
            Ok(new) => {
                for a in &new {
                    self.console.say(format!(
                        "llmdd: pid {pid} loaded {} {} ({} functions); probes attached",
                        a.family.name(),
                        a.path.display(),
                        a.probes
                    ));
                }
                self.track(pid, &new);
                self.traced.insert(pid, traced_paths(&t));
            }
            Err(e) => self.console.say(format!(
                "llmdd: warning: pid {pid} loaded a library that could not be probed: {e}"
            )),
        }
    }

    /// Feeds the engine the collective calls entered at least `IN_FLIGHT_AGE_NS` ago and
    /// still in flight (read from the probes' in-flight map); the engine counts each call
    /// once, however often it is scanned and when its return arrives.
    pub fn feed_in_flight(&self, session: &mut Session, now: u64) -> Result<()> {
        for rec in self.tracer.in_flight()? {
            if let Ok(Event::Call(c)) = Event::decode(&rec) {
                let collective_family =
                    llmdd_common::funcs::spec(c.func).is_some_and(|f| f.family.has_collectives());
                if collective_family && c.entry_ns.saturating_add(IN_FLIGHT_AGE_NS) < now {
                    session.engine.ingest(Event::Call(c));
                }
            }
        }
        Ok(())
    }

    /// Tells the engine about records lost since the last call, so that no finding rests
    /// on a missing event; returns the counters when there were new losses (for the
    /// recording, which replays them offline at the same point).
    pub fn report_losses(
        &mut self,
        session: &mut Session,
    ) -> Result<Option<crate::record::LossMark>> {
        let counters = self.tracer.counters()?.to_vec();
        let total = crate::record::LossMark::lost(&counters);
        if total <= self.lost_seen {
            return Ok(None);
        }
        let at_ns = monotonic_ns();
        session.engine.report_lost(at_ns, total - self.lost_seen);
        self.lost_seen = total;
        Ok(Some(crate::record::LossMark { at_ns, counters }))
    }

    /// The summary's budget lines and aggregated calls, as of now.
    pub fn summary_figures(&self, session: &mut Session, aggregating: bool) -> Result<()> {
        if aggregating {
            session.summary.set_aggregates(&self.tracer.aggregates()?);
        }
        if let Some(b) = &self.budget {
            session.summary.duties = b.duties(monotonic_ns());
            session.summary.over_budget = (b.fraction, b.over_budget().to_vec());
            session.summary.budget_enforced = b.enforcing();
        }
        if let Some(c) = &self.costs {
            session.summary.call_cost_ns = Some(c.cost_ns);
            session.summary.thread_costs = c.report();
        }
        Ok(())
    }

    /// Reads every known traced thread's kernel time now.
    pub fn read_costs(&mut self) {
        let Some(c) = self.costs.as_mut() else {
            return;
        };
        let now = monotonic_ns();
        for (pid, tid) in c.threads() {
            if let Some(k) = crate::cost::thread_kernel_ns(pid, tid) {
                c.read(pid, tid, now, k);
            }
        }
    }
}

/// A collective entered this long ago and not returned is shown to the engine as an arrival,
/// so that a hang is named while it lasts (a record otherwise reaches userspace only when
/// the call returns).
const IN_FLIGHT_AGE_NS: u64 = 200_000_000;

/// A target's traced objects as its threads' stacks name them.
fn traced_paths(t: &tracee::Target) -> Vec<crate::threads::TracedPath> {
    t.objects
        .iter()
        .map(|o| (o.path.clone(), o.family))
        .collect()
}
