//! `llmdd attach` (and `llmdd top`): resolve targets, load and attach the probes, read events
//! until told to stop, detach, print the summary and write the requested views (report,
//! trace, flame graph); while tracing, show the live view or the plain periodic summary and
//! serve metrics.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{BufWriter, IsTerminal, Write},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::AttachArgs,
    engine::{Config, Engine, ProcessHints},
    events::Event,
    kernel, privileges,
    probe::{Detached, ObjectPlan, Tracer},
    summary::Summary,
    target,
    transport::{Reader, DRAIN_INTERVAL},
    views::{
        flame, metrics, report,
        run::{LibInfo, ProcInfo, RunInfo},
        trace, tui, Outputs,
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

/// Opens an output file now, so a bad path fails before any attach rather than after a long
/// run. Created with mode 0600: traces describe other users' processes.
pub fn create_output(path: &Path) -> Result<BufWriter<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}: choose a writable path", path.display()))?;
    Ok(BufWriter::new(file))
}

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
    let opts = &args.run;
    let mut dump = opts.dump_events.as_deref().map(create_output).transpose()?;
    let report = opts.report.as_deref().map(create_output).transpose()?;
    let trace_out = opts.trace.as_deref().map(create_output).transpose()?;
    let flame_out = opts.flamegraph.as_deref().map(create_output).transpose()?;
    let metrics_server = opts.prometheus.map(metrics::Server::bind).transpose()?;
    let want_tui = !args.no_tui && std::io::stdout().is_terminal();

    let mut targets = if args.all {
        let found = target::discover_all();
        if found.is_empty() {
            bail!(
                "no process maps libnccl, librccl, libcudart or libcuda: nothing to trace \
                 (`llmdd doctor` lists what it can see)"
            );
        }
        found
    } else {
        let mut seen = BTreeSet::new();
        let mut found = Vec::new();
        for &pid in &args.pids {
            if seen.insert(pid) {
                found.push(target::inspect(pid)?);
            }
        }
        found
    };
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

    let sock_cfg = match kernel::sock_offsets() {
        Ok(cfg) => Some(cfg),
        Err(e) => {
            eprintln!("llmdd: warning: socket addresses and ports unavailable: {e}");
            None
        }
    };
    let mut tracer = Tracer::load(sock_cfg)?;
    for kp in tracer.kernel_probes() {
        if let Err(why) = &kp.status {
            eprintln!("llmdd: warning: kernel probe {} disabled: {why}", kp.name);
        }
    }
    let mut reader = Reader::new(tracer.take_events()?).context("watching the BPF ring buffer")?;

    let mut engine = Engine::new(Config::default());
    let host = hostname();
    for t in &targets {
        engine.register_process(t.pid, hints_of(t, host.clone()));
    }
    let mut outputs = Outputs::new(RunInfo::start(host.clone()));
    let mut live: BTreeSet<u32> = BTreeSet::new();
    let attach_start = Instant::now();
    for t in &targets {
        let plans = plan(t);
        let attached = tracer.attach(t.pid, &plans)?;
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
        outputs.run.add_process(proc_info(t, &attached));
        live.insert(t.pid);
    }
    tracing::info!(
        "attached {} process(es) in {:?}",
        live.len(),
        attach_start.elapsed()
    );
    if let Some(server) = metrics_server {
        let state = Arc::new(Mutex::new(metrics::State::new(
            engine.config().token_coalesce_ns,
        )));
        eprintln!("llmdd: serving metrics on http://{}/metrics", server.addr);
        server.spawn(state.clone())?;
        outputs.metrics = Some(state);
    }
    if let Some(out) = trace_out {
        outputs.trace = Some(trace::Trace::new(out, opts.trace_max_slices));
    }
    if flame_out.is_some() {
        outputs.flame = Some(flame::Folder::default());
    }
    eprintln!("llmdd: tracing {} process(es); Ctrl-C to stop", live.len());

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut console = Console::default();
    let mut tui = if want_tui {
        let t = tui::live::Live::start()?;
        console.live = true;
        Some(t)
    } else {
        None
    };
    let start = Instant::now();
    let mut last_render = start;
    let mut last_poll = start;
    let mut last_model = start;
    let mut events_at_model = 0u64;
    let mut summary = Summary::default();
    let mut lost_seen = 0u64;
    let mut batch = Vec::with_capacity(4096);
    // Threads releasing the probes of targets that exited (slow; never on the reading path).
    let mut reaper: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut last_scan = Instant::now();
    let result: Result<Stop> = async {
        loop {
            let wait = DRAIN_INTERVAL.min(opts.interval);
            let signalled = tokio::select! {
                _ = reader.wait(wait) => None,
                _ = sigint.recv() => Some(Stop::Signal("SIGINT")),
                _ = sigterm.recv() => Some(Stop::Signal("SIGTERM")),
            };
            reader.drain(&mut batch);
            consume(
                &mut batch,
                &mut summary,
                &mut engine,
                &mut outputs,
                dump.as_mut(),
                &mut live,
                &mut tracer,
                &mut reaper,
                &mut console,
            )?;
            for pid in reader.take_new_mappings() {
                if live.contains(&pid) {
                    probe_new_libraries(pid, &mut tracer, &mut console);
                }
            }
            report_losses(&tracer, &mut engine, &mut lost_seen)?;
            let now = monotonic_ns();
            if last_scan.elapsed() >= IN_FLIGHT_SCAN {
                last_scan = Instant::now();
                feed_in_flight(&tracer, &mut engine, now)?;
            }
            engine.advance(now);
            if let Some(s) = signalled {
                return Ok(s);
            }
            // Backstop for a lost or disabled exit tracepoint.
            let gone: Vec<u32> = live
                .iter()
                .copied()
                .filter(|p| !Path::new(&format!("/proc/{p}")).exists())
                .collect();
            for pid in gone {
                target_exited(pid, &mut live, &mut tracer, &mut reaper, &mut console);
            }
            if live.is_empty() {
                return Ok(Stop::TargetsGone);
            }
            if opts.duration.is_some_and(|d| start.elapsed() >= d) {
                return Ok(Stop::Duration);
            }
            let poll_due = outputs.polls() && last_poll.elapsed() >= POLL_INTERVAL;
            let model_due =
                tui.is_some() && last_model.elapsed() >= opts.interval.min(Duration::from_secs(1));
            if poll_due || model_due {
                let snap = engine.snapshot();
                if poll_due {
                    last_poll = Instant::now();
                    outputs.poll(&engine, &snap, reader.records, lost_seen);
                }
                if let (true, Some(t)) = (model_due, tui.as_mut()) {
                    let dt = last_model.elapsed().as_secs_f64();
                    last_model = Instant::now();
                    let status = tui::Status {
                        elapsed_s: start.elapsed().as_secs_f64(),
                        events: reader.records,
                        event_rate: (reader.records - events_at_model) as f64 / dt.max(1e-3),
                        lost: lost_seen,
                        live_pids: live.iter().copied().collect(),
                        total_pids: targets.len(),
                        note: console.latest.clone(),
                    };
                    events_at_model = reader.records;
                    let m = tui::Model::build(&snap, &outputs.run, status, Some(t.model()), dt);
                    t.set_model(m);
                }
            }
            if let Some(t) = tui.as_mut() {
                if t.input()? == tui::Action::Quit {
                    return Ok(Stop::Quit);
                }
                t.draw()?;
            } else if !args.quiet && last_render.elapsed() >= opts.interval {
                let interval = last_render.elapsed().as_secs_f64();
                last_render = Instant::now();
                let lost = tracer.counters()?;
                print!(
                    "{}",
                    summary.render(start.elapsed().as_secs_f64(), interval, &lost)
                );
                print!("{}", render_findings(&engine));
                std::io::stdout().flush().ok();
            }
        }
    }
    .await;
    // Leave the live view before anything else is printed, whatever happened.
    drop(tui);
    console.flush();
    let stop = result?;

    // Final drain: whatever was submitted before we stopped is still counted.
    reader.drain(&mut batch);
    consume(
        &mut batch,
        &mut summary,
        &mut engine,
        &mut outputs,
        dump.as_mut(),
        &mut live,
        &mut tracer,
        &mut reaper,
        &mut console,
    )?;
    // Counters as of the stop: events the targets make while the probes are being removed
    // are outside the traced window and are not reported as lost.
    report_losses(&tracer, &mut engine, &mut lost_seen)?;
    engine.flush();
    let lost = tracer.counters()?;
    let detach_start = Instant::now();
    let mut detached = Detached::default();
    for t in &targets {
        detached.extend(tracer.detach(t.pid));
    }
    detached.release();
    for h in reaper.drain(..) {
        let _ = h.join();
    }
    tracing::info!("detached in {:?}", detach_start.elapsed());
    let why = match stop {
        Stop::Signal(s) => format!("stopped by {s}"),
        Stop::Duration => "duration reached".to_string(),
        Stop::TargetsGone => "every target exited".to_string(),
        Stop::Quit => "stopped from the live view".to_string(),
    };
    println!("=== final summary ({why}) ===");
    print!(
        "{}",
        summary.render(
            start.elapsed().as_secs_f64(),
            last_render.elapsed().as_secs_f64(),
            &lost
        )
    );
    print!("{}", render_findings(&engine));
    if reader.decode_errors > 0 {
        println!("undecodable records: {}", reader.decode_errors);
    }
    std::io::stdout().flush().ok();
    // The file views: each failure is reported, and the others are still written.
    let snap = engine.snapshot();
    if outputs.polls() {
        outputs.poll(&engine, &snap, reader.records, lost_seen);
    }
    let mut failed: Vec<String> = Vec::new();
    if let (Some(mut w), Some(path)) = (report, opts.report.as_deref()) {
        let doc = report::build(&report::Inputs {
            run: &outputs.run,
            summary: &summary,
            snapshot: &snap,
            events: report::EventTotals {
                received: reader.records,
                undecodable: reader.decode_errors,
                counters: lost.to_vec(),
            },
            stopped_because: &why,
            duration_s: start.elapsed().as_secs_f64(),
        });
        let written = serde_json::to_writer_pretty(&mut w, &doc)
            .map_err(anyhow::Error::from)
            .and_then(|()| w.write_all(b"\n").map_err(anyhow::Error::from))
            .and_then(|()| w.flush().map_err(anyhow::Error::from));
        match written {
            Ok(()) => eprintln!("llmdd: report written to {}", path.display()),
            Err(e) => failed.push(format!("writing {}: {e}", path.display())),
        }
    }
    if let (Some(t), Some(path)) = (outputs.trace.take(), opts.trace.as_deref()) {
        match t.finish(&outputs.run, &snap.findings, outputs.instances_missed) {
            Ok(c) => eprintln!(
                "llmdd: trace written to {} ({} slices{}, {} flows, {} requests)",
                path.display(),
                c.slices,
                if c.slices_dropped > 0 {
                    format!(
                        ", {} more not written: --trace-max-slices reached",
                        c.slices_dropped
                    )
                } else {
                    String::new()
                },
                c.flows,
                c.requests
            ),
            Err(e) => failed.push(format!("{}: {e:#}", path.display())),
        }
    }
    if let (Some(f), Some(out), Some(path)) =
        (outputs.flame.take(), flame_out, opts.flamegraph.as_deref())
    {
        match f.write(&outputs.run, out) {
            Ok(()) => eprintln!("llmdd: flame graph written to {}", path.display()),
            Err(e) => failed.push(format!("{}: {e:#}", path.display())),
        }
    }
    if let Some(mut d) = dump {
        if let Err(e) = d.flush() {
            failed.push(format!("writing the event dump: {e}"));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
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

#[allow(clippy::too_many_arguments)]
fn consume(
    batch: &mut Vec<Event>,
    summary: &mut Summary,
    engine: &mut Engine,
    outputs: &mut Outputs,
    mut dump: Option<&mut BufWriter<File>>,
    live: &mut BTreeSet<u32>,
    tracer: &mut Tracer,
    reaper: &mut Vec<std::thread::JoinHandle<()>>,
    console: &mut Console,
) -> Result<()> {
    outputs.on_batch(batch);
    for ev in batch.drain(..) {
        summary.add(&ev);
        if let Some(d) = dump.as_deref_mut() {
            serde_json::to_writer(&mut *d, &ev).context("writing the event dump")?;
            d.write_all(b"\n").context("writing the event dump")?;
        }
        if let Event::ProcExit(p) = &ev {
            target_exited(p.pid, live, tracer, reaper, console);
        }
        engine.ingest(ev);
    }
    Ok(())
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
            if c.family == "nccl" && c.entry_ns.saturating_add(IN_FLIGHT_AGE_NS) < now {
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

/// CLOCK_MONOTONIC in nanoseconds: the clock of every BPF timestamp.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
}

fn hints_of(t: &target::Target, host: Option<String>) -> ProcessHints {
    ProcessHints {
        rank: t.rank_hints.rank,
        local_rank: t.rank_hints.local_rank,
        world_size: t.rank_hints.world_size,
        host,
        job: None,
    }
}

/// The findings block of the live summary.
pub fn render_findings(engine: &Engine) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let findings = engine.findings();
    if findings.is_empty() {
        let _ = writeln!(out, "findings: none");
        return out;
    }
    let _ = writeln!(out, "findings ({}):", findings.len());
    for f in findings {
        let _ = writeln!(
            out,
            "  [{:?}] {}{}: {}\n      -> {}",
            f.severity,
            f.kind.name(),
            if f.active { "" } else { " (resolved)" },
            f.evidence,
            f.suggestion
        );
    }
    out
}

fn target_exited(
    pid: u32,
    live: &mut BTreeSet<u32>,
    tracer: &mut Tracer,
    reaper: &mut Vec<std::thread::JoinHandle<()>>,
    console: &mut Console,
) {
    if live.remove(&pid) {
        let links = tracer.detach(pid);
        reaper.push(std::thread::spawn(move || links.release()));
        console.say(format!(
            "llmdd: pid {pid} exited; {} still traced",
            live.len()
        ));
    }
}

/// A traced process mapped a file executable: probe any library it did not have before
/// (NCCL opened lazily with dlopen, as PyTorch does).
fn probe_new_libraries(pid: u32, tracer: &mut Tracer, console: &mut Console) {
    let Ok(t) = target::inspect(pid) else {
        return;
    };
    match tracer.attach_new(pid, &plan(&t)) {
        Ok(new) => {
            for a in new {
                console.say(format!(
                    "llmdd: pid {pid} loaded {} {} ({} functions); probes attached",
                    a.family.name(),
                    a.path.display(),
                    a.probes
                ));
            }
        }
        Err(e) => console.say(format!(
            "llmdd: warning: pid {pid} loaded a library that could not be probed: {e}"
        )),
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
