//! `llmdd attach` (and `llmdd top`): resolve targets, load and attach the probes, read events
//! until told to stop, detach, print the summary and write the requested views (report,
//! trace, flame graph); while tracing, show the live view or the plain periodic summary and
//! serve metrics.

use std::{
    collections::BTreeSet,
    io::{IsTerminal, Write},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::AttachArgs,
    engine::{Engine, ProcessHints},
    events::Event,
    kernel, privileges,
    probe::{Detached, ObjectPlan, Tracer},
    session::{hostname, monotonic_ns, End, Session},
    target,
    transport::{Reader, DRAIN_INTERVAL},
    views::{
        metrics,
        run::{LibInfo, ProcInfo},
        tui,
    },
};

/// Why tracing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Signal(&'static str),
    Duration,
    TargetsGone,
    Quit,
}

/// How often the file and metrics views read the engine's matched instances while tracing
/// (the engine keeps 512 per communicator: this covers 2000 collectives a second).
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Messages for the user while tracing: stderr with the plain output, the status bar (and
/// stderr once the live view has closed) with the live view.
#[derive(Default)]
struct Console {
    live: bool,
    held: Vec<String>,
    latest: Option<String>,
}

impl Console {
    fn say(&mut self, msg: String) {
        if self.live {
            if self.held.len() < 1000 {
                self.held.push(msg.clone());
            }
            self.latest = Some(msg);
        } else {
            eprintln!("{msg}");
        }
    }

    /// The live view closed: print what it held.
    fn flush(&mut self) {
        self.live = false;
        for m in self.held.drain(..) {
            eprintln!("{m}");
        }
    }
}

pub async fn run(args: AttachArgs) -> Result<()> {
    privileges::check().map_err(anyhow::Error::msg)?;
    kernel::preflight().map_err(anyhow::Error::msg)?;
    let opts = &args.run;
    let host = hostname();
    // Every output is opened (and the port bound) before anything is attached.
    let mut session = Session::open(opts, host.clone())?;
    session.ras = opts.ras.clone();
    let mut recorder = match args.record.as_deref() {
        Some(p) => Some(crate::record::Writer::create(p)?),
        None => None,
    };
    let metrics_server = opts.prometheus.map(metrics::Server::bind).transpose()?;
    let want_tui = !args.no_tui && std::io::stdout().is_terminal();

    let mut targets = if args.all {
        let found = target::discover_all();
        if found.is_empty() {
            bail!(
                "no process maps libnccl, librccl, libcudart, libcuda or libamdhip64: nothing to trace \
                 (`llmdd doctor` lists what it can see)"
            );
        }
        found
    } else {
        let mut seen = BTreeSet::new();
        let mut found = Vec::new();
        for &pid in &args.pids {
            if seen.insert(pid) {
                found.push(match target::inspect(pid) {
                    Ok(t) => t,
                    // A launcher: its workers are what matters. With user probes, any
                    // process may hold what they name (checked below).
                    Err(target::TargetError::NoSupportedLibrary { .. })
                        if args.children || !opts.user_probes.is_empty() =>
                    {
                        target::sockets_only(pid)?
                    }
                    Err(e) => return Err(e.into()),
                });
            }
        }
        found
    };
    let mut follow = crate::follow::Follow::new(args.follow.clone(), args.children)
        .with_probe_libraries(opts.user_probes.iter().map(|p| p.library.clone()).collect());
    follow.known(targets.iter().map(|t| t.pid));
    loop {
        // Children of children too: scan until nothing new turns up.
        let traced: BTreeSet<u32> = targets.iter().map(|t| t.pid).collect();
        let more = follow.scan_now(&traced);
        if more.is_empty() {
            break;
        }
        targets.extend(more);
    }
    if targets.is_empty() && follow.active() {
        eprintln!(
            "llmdd: no process named {} yet; waiting for one (Ctrl-C to stop)",
            args.follow.join(" or ")
        );
    }
    for &pid in &args.fronts {
        if targets.iter().any(|t| t.pid == pid) {
            continue;
        }
        targets.push(match target::inspect(pid) {
            Ok(t) => t,
            // A front needs no GPU library: its sockets are what matters.
            Err(target::TargetError::NoSupportedLibrary { .. }) => target::sockets_only(pid)?,
            Err(e) => return Err(e.into()),
        });
    }
    // Symbol tables read to place user probes, kept for the processes --follow finds later.
    let mut user_tables = std::collections::HashMap::new();
    let user_plans = place_user_probes(opts, &targets, follow.active(), &mut user_tables)?;

    let sock_cfg = match kernel::sock_offsets() {
        Ok(cfg) => Some(cfg),
        Err(e) => {
            eprintln!("llmdd: warning: socket addresses and ports unavailable: {e}");
            None
        }
    };
    let mut tracer = Tracer::load_sized(sock_cfg, crate::probe::ProbeSet::Full, opts.ring_size)?;
    // Measured before any mode is set: the budget is about full tracing's cost.
    let budget = match opts.overhead_budget.0 {
        Some(fraction) => match crate::budget::calibrate(&mut tracer) {
            Ok(cost_ns) => {
                eprintln!(
                    "llmdd: overhead budget {}% of each traced thread's time (one traced call \
                     costs {:.1} us on this machine, measured now){}",
                    fraction * 100.0,
                    cost_ns / 1e3,
                    if opts.enforce_budget {
                        "; hot calls are duty-cycled to hold it"
                    } else {
                        ""
                    }
                );
                if opts.enforce_budget {
                    tracer.split_hot_points();
                }
                Some(crate::budget::Budget::new(
                    fraction,
                    cost_ns,
                    monotonic_ns(),
                    opts.enforce_budget,
                ))
            }
            Err(why) => {
                eprintln!(
                    "llmdd: warning: overhead budget not enforced: cannot measure the cost of \
                     a traced call ({why})"
                );
                None
            }
        },
        None => None,
    };
    for &(family, mode) in &opts.modes {
        tracer.set_mode(family, mode);
        if family.has_collectives() && mode != crate::probe::Mode::Full {
            eprintln!(
                "llmdd: warning: {} traced in {} mode: collectives cannot be matched across \
                 ranks, so no straggler or stall findings",
                family.name(),
                mode.name()
            );
        }
    }
    let aggregating = opts
        .modes
        .iter()
        .any(|&(_, m)| m == crate::probe::Mode::Aggregate);
    for kp in tracer.kernel_probes() {
        if let Err(why) = &kp.status {
            eprintln!("llmdd: warning: kernel probe {} disabled: {why}", kp.name);
        }
    }
    let mut live = Live {
        tracer,
        pids: BTreeSet::new(),
        reaper: Vec::new(),
        console: Console::default(),
        budget,
        swaps_pending: BTreeSet::new(),
        warned_over: BTreeSet::new(),
        host: crate::node::HostMonitor::default(),
        stacks: None,
        recording: recorder.is_some(),
        named_stacks: Vec::new(),
        gpu: None,
        nic: crate::node::NicMonitor::default(),
        device_hints: Default::default(),
        user_tables,
        swaps: std::sync::mpsc::channel(),
    };
    if opts.walks_stacks() {
        live.tracer.set_stacks(true);
        live.stacks = Some(crate::stacks::StackWalker::new(live.tracer.take_stacks()?));
    }
    let mut reader =
        Reader::new(live.tracer.take_events()?).context("watching the BPF ring buffer")?;
    // The calibration's own records: not a target's.
    {
        let mut calibration = Vec::new();
        reader.drain(&mut calibration);
    }

    let attach_start = Instant::now();
    for t in &targets {
        let mut plans = plan(t);
        plans.extend(user_plans.get(&t.pid).into_iter().flatten().cloned());
        let attached = match live.tracer.attach(t.pid, &plans) {
            Ok(a) => a,
            // Ended between being found and being probed (a job finishing as llmdd
            // starts): said, and the others are traced.
            Err(_) if !target::procfs::proc_path(t.pid, "").exists() => {
                eprintln!(
                    "llmdd: note: pid {} exited before it could be probed",
                    t.pid
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if args.fronts.contains(&t.pid) {
            live.tracer.mark_front(t.pid)?;
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
        eprintln!(
            "llmdd: attached to pid {}{}: {}",
            t.pid,
            describe_rank(t),
            libs.join(", ")
        );
        for note in target_notes(t) {
            eprintln!("llmdd: note: pid {}: {note}", t.pid);
        }
        session.register_process(hints_of(t, host.clone()), proc_info(t, &attached));
        if let Some(w) = live.stacks.as_mut() {
            w.symbolizer.refresh(t.pid);
        }
        live.track(t.pid, &attached);
        live.note_devices(t);
        live.pids.insert(t.pid);
    }
    if live.pids.is_empty() && !targets.is_empty() && !follow.active() {
        anyhow::bail!("every target exited before llmdd could attach to it");
    }
    if let Some(w) = recorder.as_mut() {
        reader.capture();
        w.meta(&record_meta(
            &targets,
            &session,
            host.clone(),
            &opts.user_probes,
        ))?;
        eprintln!("llmdd: recording to {}", w.path().display());
    }
    tracing::info!(
        "attached {} process(es) in {:?}",
        live.pids.len(),
        attach_start.elapsed()
    );
    // Everything is attached and every output open: keep only what reading and later
    // attaches need (docs/security.md), before any other thread starts.
    match privileges::drop_to_tracing() {
        Ok(kept) => tracing::info!("capabilities kept: {}", kept.join(", ")),
        Err(e) => eprintln!("llmdd: warning: could not drop unneeded capabilities: {e}"),
    }
    if let Some(server) = metrics_server {
        let state = Arc::new(Mutex::new(metrics::State::new(
            session.engine.config().token_coalesce_ns,
        )));
        eprintln!("llmdd: serving metrics on http://{}/metrics", server.addr);
        server.spawn(state.clone())?;
        session.outputs.metrics = Some(state);
    }
    // Handlers first: a signal right after the "tracing" line must stop llmdd cleanly.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    eprintln!(
        "llmdd: tracing {} process(es); Ctrl-C to stop",
        live.pids.len()
    );

    let mut tui = if want_tui {
        let t = tui::live::Live::start()?;
        live.console.live = true;
        Some(t)
    } else {
        None
    };
    let start = Instant::now();
    let mut last_render = start;
    let mut last_poll = start;
    let mut last_model = start;
    let mut events_at_model = 0u64;
    let mut lost_seen = 0u64;
    let mut batch = Vec::with_capacity(4096);
    let mut last_scan = Instant::now();
    let mut last_host = Instant::now();
    live.sample_node(&mut session);
    let result: Result<Stop> = async {
        loop {
            let wait = DRAIN_INTERVAL.min(opts.interval);
            let signalled = tokio::select! {
                _ = reader.wait(wait) => None,
                _ = sigint.recv() => Some(Stop::Signal("SIGINT")),
                _ = sigterm.recv() => Some(Stop::Signal("SIGTERM")),
            };
            reader.drain(&mut batch);
            if let Some(w) = recorder.as_mut() {
                let now = monotonic_ns();
                for raw in reader.take_raw() {
                    w.record(&raw, now)?;
                }
                w.tick(now)?;
            }
            live.consume(&mut batch, &mut session)?;
            if let Some(w) = recorder.as_mut() {
                w.stacks(&std::mem::take(&mut live.named_stacks))?;
            }
            for pid in reader.take_new_mappings() {
                if live.pids.contains(&pid) {
                    let new = probe_new_libraries(pid, &mut live.tracer, &mut live.console);
                    live.track(pid, &new);
                }
            }
            for t in follow.scan(&live.pids) {
                let mut plans = plan(&t);
                if !opts.user_probes.is_empty() {
                    let p =
                        crate::userprobe::place(t.pid, &opts.user_probes, &mut live.user_tables);
                    plans.extend(p.plans);
                    for e in p.outcome.into_iter().filter_map(Result::err) {
                        live.console.say(format!("llmdd: note: pid {}: {e}", t.pid));
                    }
                }
                match live.tracer.attach(t.pid, &plans) {
                    Ok(attached) => {
                        live.console.say(format!(
                            "llmdd: following {}: attached to pid {}{}",
                            t.comm,
                            t.pid,
                            describe_rank(&t)
                        ));
                        for note in target_notes(&t) {
                            live.console
                                .say(format!("llmdd: note: pid {}: {note}", t.pid));
                        }
                        session
                            .register_process(hints_of(&t, host.clone()), proc_info(&t, &attached));
                        live.track(t.pid, &attached);
                        live.note_devices(&t);
                        live.pids.insert(t.pid);
                    }
                    Err(e) => live.console.say(format!(
                        "llmdd: warning: following {}: pid {} could not be probed: {e}",
                        t.comm, t.pid
                    )),
                }
            }
            report_losses(&live.tracer, &mut session.engine, &mut lost_seen)?;
            let now = monotonic_ns();
            if last_scan.elapsed() >= IN_FLIGHT_SCAN {
                last_scan = Instant::now();
                feed_in_flight(&live.tracer, &mut session.engine, now)?;
            }
            session.engine.advance(now);
            live.duty_cycle(now);
            if last_host.elapsed() >= opts.interval {
                last_host = Instant::now();
                live.sample_node(&mut session);
            }
            if let Some(s) = signalled {
                return Ok(s);
            }
            // Backstop for a lost or disabled exit tracepoint.
            let gone: Vec<u32> = live
                .pids
                .iter()
                .copied()
                .filter(|p| !Path::new(&format!("/proc/{p}")).exists())
                .collect();
            for pid in gone {
                live.target_exited(pid);
            }
            if live.pids.is_empty() && !follow.waits() {
                return Ok(Stop::TargetsGone);
            }
            if opts.duration.is_some_and(|d| start.elapsed() >= d) {
                return Ok(Stop::Duration);
            }
            let poll_due = session.outputs.polls() && last_poll.elapsed() >= POLL_INTERVAL;
            let model_due =
                tui.is_some() && last_model.elapsed() >= opts.interval.min(Duration::from_secs(1));
            if poll_due || model_due {
                let snap = session.engine.snapshot();
                if poll_due {
                    last_poll = Instant::now();
                    session
                        .outputs
                        .poll(&session.engine, &snap, reader.records, lost_seen);
                }
                if let (true, Some(t)) = (model_due, tui.as_mut()) {
                    let dt = last_model.elapsed().as_secs_f64();
                    last_model = Instant::now();
                    let status = tui::Status {
                        elapsed_s: start.elapsed().as_secs_f64(),
                        events: reader.records,
                        event_rate: (reader.records - events_at_model) as f64 / dt.max(1e-3),
                        lost: lost_seen,
                        live_pids: live.pids.iter().copied().collect(),
                        total_pids: targets.len(),
                        note: live.console.latest.clone(),
                    };
                    events_at_model = reader.records;
                    let m =
                        tui::Model::build(&snap, &session.outputs.run, status, Some(t.model()), dt);
                    t.set_model(m);
                }
            }
            if let Some(t) = tui.as_mut() {
                if t.input()? == tui::Action::Quit {
                    return Ok(Stop::Quit);
                }
                t.draw()?;
            } else if !args.quiet && last_render.elapsed() >= opts.interval {
                if aggregating {
                    session.summary.set_aggregates(&live.tracer.aggregates()?);
                }
                if let Some(b) = &live.budget {
                    session.summary.duties = b.duties(monotonic_ns());
                    session.summary.over_budget = (b.fraction, b.over_budget().to_vec());
                }
                let interval = last_render.elapsed().as_secs_f64();
                last_render = Instant::now();
                let lost = live.tracer.counters()?;
                print!(
                    "{}",
                    session
                        .summary
                        .render(start.elapsed().as_secs_f64(), interval, &lost)
                );
                print!("{}", session.render_findings());
                std::io::stdout().flush().ok();
            }
        }
    }
    .await;
    // Leave the live view before anything else is printed, whatever happened.
    drop(tui);
    live.console.flush();
    let stop = result?;

    // Final drain: whatever was submitted before we stopped is still counted.
    reader.drain(&mut batch);
    if let Some(w) = recorder.as_mut() {
        let now = monotonic_ns();
        for raw in reader.take_raw() {
            w.record(&raw, now)?;
        }
    }
    live.consume(&mut batch, &mut session)?;
    if let Some(w) = recorder.as_mut() {
        w.stacks(&std::mem::take(&mut live.named_stacks))?;
    }
    // Counters as of the stop: events the targets make while the probes are being removed
    // are outside the traced window and are not reported as lost.
    report_losses(&live.tracer, &mut session.engine, &mut lost_seen)?;
    if aggregating {
        session.summary.set_aggregates(&live.tracer.aggregates()?);
    }
    if let Some(b) = &live.budget {
        session.summary.duties = b.duties(monotonic_ns());
        session.summary.over_budget = (b.fraction, b.over_budget().to_vec());
    }
    live.sample_node(&mut session);
    let lost = live.tracer.counters()?;
    let detach_start = Instant::now();
    let mut detached = Detached::default();
    let mut attached: BTreeSet<u32> = targets.iter().map(|t| t.pid).collect();
    attached.extend(live.tracer.attached_pids());
    for pid in attached {
        detached.extend(live.tracer.detach(pid));
    }
    detached.release();
    for h in live.reaper.drain(..) {
        let _ = h.join();
    }
    tracing::info!("detached in {:?}", detach_start.elapsed());
    let why = match stop {
        Stop::Signal(s) => format!("stopped by {s}"),
        Stop::Duration => "duration reached".to_string(),
        Stop::TargetsGone => "every target exited".to_string(),
        Stop::Quit => "stopped from the live view".to_string(),
    };
    if let Some(mut w) = recorder.take() {
        let known: BTreeSet<u32> = targets.iter().map(|t| t.pid).collect();
        let end = crate::record::End {
            realtime_offset_ns: crate::record::realtime_offset_ns(),
            end_ns: monotonic_ns(),
            records: reader.records,
            undecodable: reader.decode_errors,
            counters: lost.to_vec(),
            stopped_because: why.clone(),
            processes: record_procs(&session)
                .into_iter()
                .filter(|p| !known.contains(&p.pid))
                .collect(),
        };
        match w.finish(&end) {
            Ok(()) => eprintln!("llmdd: recording written to {}", w.path().display()),
            Err(e) => eprintln!("llmdd: error: {e}"),
        }
    }
    session.finish(
        &End {
            records: reader.records,
            undecodable: reader.decode_errors,
            counters: &lost,
            why: &why,
            duration_s: start.elapsed().as_secs_f64(),
        },
        last_render.elapsed().as_secs_f64(),
    )
}

/// The processes the session knows, as a record file keeps them.
fn record_procs(session: &Session) -> Vec<crate::record::RecProc> {
    session
        .outputs
        .run
        .procs
        .values()
        .map(|p| {
            let hints = session.hints.get(&p.pid).cloned().unwrap_or_default();
            crate::record::RecProc::from_info(p, &hints)
        })
        .collect()
}

/// The start metadata of a record file.
fn record_meta(
    targets: &[target::Target],
    session: &Session,
    host: Option<String>,
    user_probes: &[crate::userprobe::UserProbe],
) -> crate::record::Meta {
    let kernel = &session.outputs.run.kernel;
    let mut processes = record_procs(session);
    for p in &mut processes {
        if let Some(t) = targets.iter().find(|t| t.pid == p.pid) {
            p.local_rank = t.rank_hints.local_rank;
        }
    }
    crate::record::Meta {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        host,
        kernel_release: kernel.release.clone(),
        kernel_version: kernel.version.clone(),
        machine: kernel.machine.clone(),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string()),
        realtime_offset_ns: crate::record::realtime_offset_ns(),
        start_ns: monotonic_ns(),
        started_unix_s: session.outputs.run.started_unix_s,
        processes,
        user_probes: user_probes.to_vec(),
    }
}

/// What the views keep about an attached target.
fn proc_info(t: &target::Target, attached: &[crate::probe::AttachedObject]) -> ProcInfo {
    let libraries = t
        .objects
        .iter()
        .map(|o| LibInfo {
            family: o.family.name(),
            label: o.label,
            path: o.path.display().to_string(),
            version: o.version.clone(),
            build_id: o.build_id.clone(),
            functions_probed: o.points.len(),
            slot: attached
                .iter()
                .find(|a| a.path == o.host_path && a.family == o.family)
                .map(|a| a.slot),
        })
        .collect();
    ProcInfo {
        pid: t.pid,
        comm: t.comm.clone(),
        env_rank: t.rank_hints.rank,
        env_world_size: t.rank_hints.world_size,
        libraries,
        ..ProcInfo::default()
    }
}

/// The probe side of a live session: the tracer, the pids still traced, the threads
/// releasing the probes of targets that exited (slow; never on the reading path), and the
/// console for messages.
struct Live {
    tracer: Tracer,
    pids: BTreeSet<u32>,
    reaper: Vec<std::thread::JoinHandle<()>>,
    console: Console,
    /// The overhead budget's duty-cycle controller, unless `--overhead-budget off`.
    budget: Option<crate::budget::Budget>,
    /// Duty-cycle switches attaching on their own threads, and where they report.
    /// "On" switches still attaching.
    swaps_pending: BTreeSet<(u32, llmdd_common::funcs::Family)>,
    /// Threads already named as over the overhead budget.
    warned_over: BTreeSet<(u32, u32)>,
    /// CPU, run-queue and memory figures of the targets, for the findings' context.
    host: crate::node::HostMonitor,
    /// Names the user stacks of traced calls (`--stacks`).
    stacks: Option<crate::stacks::StackWalker>,
    /// Recording to a file: stacks named since the last chunk go to it too.
    recording: bool,
    named_stacks: Vec<crate::record::RecStack>,
    /// The node's GPUs (NVML) and NICs, and what each target says about its device. The
    /// GPU library is opened at the first sampling, once tracing has started, so that
    /// its start-up does not delay the attach.
    gpu: Option<crate::gpu::GpuMonitor>,
    nic: crate::node::NicMonitor,
    device_hints: std::collections::BTreeMap<u32, crate::gpu::DeviceHints>,
    /// Symbol tables read for user probes, by file (kept for processes found later).
    user_tables:
        std::collections::HashMap<std::path::PathBuf, std::sync::Arc<target::symbols::SymbolTable>>,
    swaps: (
        std::sync::mpsc::Sender<crate::probe::SwapDone>,
        std::sync::mpsc::Receiver<crate::probe::SwapDone>,
    ),
}

impl Live {
    /// Puts newly attached objects under the overhead budget.
    fn track(&mut self, pid: u32, attached: &[crate::probe::AttachedObject]) {
        if let Some(b) = self.budget.as_mut() {
            for a in attached {
                b.track(pid, a.family, monotonic_ns());
            }
        }
    }

    /// Keeps what a new target's environment says about its GPU.
    fn note_devices(&mut self, t: &target::Target) {
        self.device_hints.insert(
            t.pid,
            crate::gpu::DeviceHints {
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
    fn sample_node(&mut self, session: &mut Session) {
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
    fn duty_cycle(&mut self, now: u64) {
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
                     time, over the {}% budget (--mode FAMILY=aggregate for its hot calls, or \
                     --enforce-budget)",
                    share * 100.0,
                    b.fraction * 100.0
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
    fn consume(&mut self, batch: &mut Vec<Event>, session: &mut Session) -> Result<()> {
        if let Some(b) = self.budget.as_mut() {
            for ev in batch.iter() {
                if let Event::Call(c) = ev {
                    b.note_call(c.pid, c.tid, c.func);
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

    fn target_exited(&mut self, pid: u32) {
        if let Some(b) = self.budget.as_mut() {
            b.forget(pid);
        }
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
}

/// How often the calls still inside a collective are looked at.
const IN_FLIGHT_SCAN: std::time::Duration = std::time::Duration::from_millis(100);
/// A collective entered this long ago and not returned is shown to the engine as an arrival,
/// so that a hang is named while it lasts (a record otherwise reaches userspace only when
/// the call returns).
const IN_FLIGHT_AGE_NS: u64 = 200_000_000;

/// Feeds the engine the NCCL calls entered at least `IN_FLIGHT_AGE_NS` ago and still in
/// flight (read from the probes' in-flight map); the engine counts each call once, however
/// often it is scanned and when its return arrives.
fn feed_in_flight(tracer: &Tracer, engine: &mut Engine, now: u64) -> Result<()> {
    for rec in tracer.in_flight()? {
        if let Ok(Event::Call(c)) = Event::decode(&rec) {
            let collective_family =
                llmdd_common::funcs::spec(c.func).is_some_and(|f| f.family.has_collectives());
            if collective_family && c.entry_ns.saturating_add(IN_FLIGHT_AGE_NS) < now {
                engine.ingest(Event::Call(c));
            }
        }
    }
    Ok(())
}

/// Tells the engine about records lost since the last call, so that no finding rests on a
/// missing event.
fn report_losses(tracer: &Tracer, engine: &mut Engine, seen: &mut u64) -> Result<()> {
    let counters = tracer.counters()?;
    let total: u64 = llmdd_common::counters::LOSSES
        .iter()
        .map(|&i| counters[i as usize])
        .sum();
    if total > *seen {
        engine.report_lost(monotonic_ns(), total - *seen);
        *seen = total;
    }
    Ok(())
}

fn hints_of(t: &target::Target, host: Option<String>) -> ProcessHints {
    ProcessHints {
        rank: t.rank_hints.rank,
        local_rank: t.rank_hints.local_rank,
        world_size: t.rank_hints.world_size,
        host,
        job: t.rank_hints.job.clone(),
        parent: t.ppid,
        world_comm: t.mpi_world_handle,
    }
}

/// A traced process mapped a file executable: probe any library it did not have before
/// (NCCL opened lazily with dlopen, as PyTorch does).
fn probe_new_libraries(
    pid: u32,
    tracer: &mut Tracer,
    console: &mut Console,
) -> Vec<crate::probe::AttachedObject> {
    let Ok(t) = target::inspect(pid) else {
        return Vec::new();
    };
    match tracer.attach_new(pid, &plan(&t)) {
        Ok(new) => {
            for a in &new {
                console.say(format!(
                    "llmdd: pid {pid} loaded {} {} ({} functions); probes attached",
                    a.family.name(),
                    a.path.display(),
                    a.probes
                ));
            }
            new
        }
        Err(e) => {
            console.say(format!(
                "llmdd: warning: pid {pid} loaded a library that could not be probed: {e}"
            ));
            Vec::new()
        }
    }
}

/// The probe plan for a target: every traced object with its points and offsets.
pub fn plan(t: &target::Target) -> Vec<ObjectPlan> {
    t.objects
        .iter()
        .map(|o| ObjectPlan {
            family: o.family,
            path: o.host_path.clone(),
            comm_offsets: o
                .comm_offsets
                .as_ref()
                .and_then(|r| r.as_ref().ok())
                .map(|c| (c.rank_off, c.nranks_off)),
            points: o.points.iter().map(|p| (p.func, p.file_offset)).collect(),
        })
        .collect()
}

/// Registers the user probes (`--probe`) and places them in every target before anything is
/// attached: a probe no target can take (library not mapped, symbol not found) is an error
/// that names why; one that only some targets take is a note for the others.
fn place_user_probes(
    opts: &crate::cli::RunArgs,
    targets: &[target::Target],
    following: bool,
    tables: &mut std::collections::HashMap<
        std::path::PathBuf,
        std::sync::Arc<target::symbols::SymbolTable>,
    >,
) -> Result<std::collections::BTreeMap<u32, Vec<ObjectPlan>>> {
    let mut out = std::collections::BTreeMap::new();
    if opts.user_probes.is_empty() {
        return Ok(out);
    }
    crate::userprobe::register(&opts.user_probes)?;
    let mut placed = vec![0usize; opts.user_probes.len()];
    let mut why: Vec<Vec<(u32, String)>> = vec![Vec::new(); opts.user_probes.len()];
    for t in targets {
        let p = crate::userprobe::place(t.pid, &opts.user_probes, tables);
        for (i, o) in p.outcome.into_iter().enumerate() {
            match o {
                Ok(n) => placed[i] += n,
                Err(e) => why[i].push((t.pid, e.to_string())),
            }
        }
        if !p.plans.is_empty() {
            out.insert(t.pid, p.plans);
        }
    }
    for (i, probe) in opts.user_probes.iter().enumerate() {
        // With --follow, a process started later may take it.
        if placed[i] == 0 && following {
            eprintln!(
                "llmdd: note: --probe {}: no process to place it in yet; it is placed in \
                 the processes --follow finds",
                probe.label
            );
            continue;
        }
        if placed[i] == 0 {
            match why[i].first() {
                Some((_, e)) => bail!("{e}"),
                None => bail!("--probe {}: no process to place it in", probe.label),
            }
        }
        for (pid, e) in &why[i] {
            eprintln!("llmdd: note: pid {pid}: {e}");
        }
        tracing::info!(
            "user probe {} placed at {} point(s)",
            probe.label,
            placed[i]
        );
    }
    Ok(out)
}

/// ` (rank R of W)` from the environment hints, or nothing.
pub fn describe_rank(t: &target::Target) -> String {
    match (t.rank_hints.rank, t.rank_hints.world_size) {
        (Some(r), Some(w)) => format!(" (env rank {r} of {w})"),
        (Some(r), None) => format!(" (env rank {r})"),
        _ => String::new(),
    }
}

/// Things worth telling the user about a target before tracing it.
pub fn target_notes(t: &target::Target) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(ns) = t.ns_pid.filter(|ns| *ns != t.pid) {
        notes.push(format!("runs in its own pid namespace as pid {ns}"));
    }
    for o in &t.objects {
        if let Some(Err(why)) = &o.comm_offsets {
            notes.push(format!(
                "{}: communicator offsets unknown ({why}); ranks will be matched by rank count and call order",
                o.path.display()
            ));
        }
        if o.deleted {
            notes.push(format!(
                "{} was replaced on disk; probing the mapped copy",
                o.path.display()
            ));
        }
    }
    for i in &t.issues {
        if i.reason == target::NO_GLOO {
            notes.push(format!("{} {}", i.path.display(), i.reason));
        }
    }
    notes
}

/// One paragraph describing a target (for `doctor`).
pub fn describe_target(t: &target::Target) -> String {
    let mut s = format!("  pid {} ({}){}", t.pid, t.comm, describe_rank(t));
    for o in &t.objects {
        let offs = match &o.comm_offsets {
            Some(Ok(c)) => format!(", comm rank@{:#x} nranks@{:#x}", c.rank_off, c.nranks_off),
            Some(Err(_)) => ", comm offsets unknown".to_string(),
            None => String::new(),
        };
        s.push_str(&format!(
            "\n    {:<6} {} ({} functions{}{})",
            o.label,
            o.path.display(),
            o.points.len(),
            o.version
                .as_deref()
                .map(|v| format!(", version {v}"))
                .unwrap_or_default(),
            offs
        ));
    }
    s
}
