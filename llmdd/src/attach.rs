//! `llmdd attach`: resolve targets, load and attach the probes, read events until told to
//! stop, detach, and print the summary.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    time::Instant,
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
};

/// Why tracing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Signal(&'static str),
    Duration,
    TargetsGone,
}

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

pub async fn run(args: AttachArgs) -> Result<()> {
    privileges::check().map_err(anyhow::Error::msg)?;
    let mut dump = args.dump_events.as_deref().map(create_output).transpose()?;
    let report = args.report.as_deref().map(create_output).transpose()?;

    let targets = if args.all {
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
        live.insert(t.pid);
    }
    tracing::info!(
        "attached {} process(es) in {:?}",
        live.len(),
        attach_start.elapsed()
    );
    eprintln!("llmdd: tracing {} process(es); Ctrl-C to stop", live.len());

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let start = Instant::now();
    let mut last_render = start;
    let mut summary = Summary::default();
    let mut lost_seen = 0u64;
    let mut batch = Vec::with_capacity(4096);
    // Threads releasing the probes of targets that exited (slow; never on the reading path).
    let mut reaper: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let stop = loop {
        let wait = DRAIN_INTERVAL.min(args.interval);
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
            dump.as_mut(),
            &mut live,
            &mut tracer,
            &mut reaper,
        )?;
        report_losses(&tracer, &mut engine, &mut lost_seen)?;
        engine.advance(monotonic_ns());
        if let Some(s) = signalled {
            break s;
        }
        // Backstop for a lost or disabled exit tracepoint.
        let gone: Vec<u32> = live
            .iter()
            .copied()
            .filter(|p| !Path::new(&format!("/proc/{p}")).exists())
            .collect();
        for pid in gone {
            target_exited(pid, &mut live, &mut tracer, &mut reaper);
        }
        if live.is_empty() {
            break Stop::TargetsGone;
        }
        if args.duration.is_some_and(|d| start.elapsed() >= d) {
            break Stop::Duration;
        }
        if !args.quiet && last_render.elapsed() >= args.interval {
            let interval = last_render.elapsed().as_secs_f64();
            last_render = Instant::now();
            let lost = tracer.counters()?;
            print!(
                "{}",
                summary.render(start.elapsed().as_secs_f64(), interval, &lost)
            );
            std::io::stdout().flush().ok();
        }
    };

    // Final drain: whatever was submitted before we stopped is still counted.
    reader.drain(&mut batch);
    consume(
        &mut batch,
        &mut summary,
        &mut engine,
        dump.as_mut(),
        &mut live,
        &mut tracer,
        &mut reaper,
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
    if let (Some(mut w), Some(path)) = (report, args.report.as_deref()) {
        let doc = serde_json::json!({
            "schema_version": 1,
            "tool_version": env!("CARGO_PKG_VERSION"),
            "host": host,
            "stopped_because": why,
            "events_received": reader.records,
            "events_lost": llmdd_common::counters::LOSSES.iter().map(|&i| lost[i as usize]).sum::<u64>(),
            "snapshot": engine.snapshot(),
        });
        serde_json::to_writer_pretty(&mut w, &doc).context("writing the report")?;
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("llmdd: report written to {}", path.display());
    }
    if let Some(mut d) = dump {
        d.flush().context("writing the event dump")?;
    }
    Ok(())
}

fn consume(
    batch: &mut Vec<Event>,
    summary: &mut Summary,
    engine: &mut Engine,
    mut dump: Option<&mut BufWriter<File>>,
    live: &mut BTreeSet<u32>,
    tracer: &mut Tracer,
    reaper: &mut Vec<std::thread::JoinHandle<()>>,
) -> Result<()> {
    for ev in batch.drain(..) {
        summary.add(&ev);
        if let Some(d) = dump.as_deref_mut() {
            serde_json::to_writer(&mut *d, &ev).context("writing the event dump")?;
            d.write_all(b"\n").context("writing the event dump")?;
        }
        if let Event::ProcExit(p) = &ev {
            target_exited(p.pid, live, tracer, reaper);
        }
        engine.ingest(ev);
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
) {
    if live.remove(&pid) {
        let links = tracer.detach(pid);
        reaper.push(std::thread::spawn(move || links.release()));
        eprintln!("llmdd: pid {pid} exited; {} still traced", live.len());
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
