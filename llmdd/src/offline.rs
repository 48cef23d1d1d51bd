//! `llmdd report` and `llmdd export`: record files read back, through the same engine and
//! views as live tracing (`session`), one host or several merged into one job (`merge`).

use std::{io::Write, path::Path};

use anyhow::{bail, Context, Result};

use crate::{
    cli::{ExportArgs, OverheadBudget, ReportArgs, RunArgs},
    events::Event,
    record::{self, Recording},
    session::{create_output, End, Session},
    views::run::{KernelInfo, RunInfo},
};

/// Records fed to the engine per step when replaying a merged job.
const BATCH: usize = 4096;

/// Reads several files against one table of user probes (`record::read_all`), each with
/// its progress line when large, and says what was salvaged from damaged ones.
fn load_all(paths: &[std::path::PathBuf]) -> Result<Vec<Recording>> {
    let mut lines: Vec<_> = paths.iter().map(|p| progress_line(p)).collect();
    let recs = record::read_all(paths, |i, done, total| {
        if let Some(show) = lines.get_mut(i) {
            show(done, total);
        }
    })?;
    for r in &recs {
        if let Some(msg) = r.salvage.message(&r.path) {
            eprintln!("llmdd: warning: {msg}");
        }
    }
    Ok(recs)
}

/// The outputs of `report`, as the session takes them.
fn run_args(a: &ReportArgs) -> RunArgs {
    RunArgs {
        dump_events: a.dump_events.clone(),
        report: a.report.clone(),
        trace: a.trace.clone(),
        trace_max_slices: a.trace_max_slices,
        flamegraph: a.flamegraph.clone(),
        overhead_budget: OverheadBudget(None),
        engine_config: a.engine_config.clone(),
        ..RunArgs::defaults()
    }
}

/// The JSON report of record files, built as `llmdd report --report` would and returned
/// (for `diff` on record files); nothing is printed but salvage warnings.
pub fn report_document(files: &[std::path::PathBuf]) -> Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!("llmdd-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(
        "{}.json",
        files
            .first()
            .and_then(|f| f.file_stem())
            .and_then(|s| s.to_str())
            .unwrap_or("report")
    ));
    let args = ReportArgs {
        files: files.to_vec(),
        report: Some(path.clone()),
        trace: None,
        trace_max_slices: 0,
        flamegraph: None,
        dump_events: None,
        no_tui: true,
        engine_config: None,
    };
    report_inner(args, true)?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    serde_json::from_str(&text).context("the report just written is not JSON")
}

/// `llmdd report FILE...`.
pub fn report(args: ReportArgs) -> Result<()> {
    report_inner(args, false)
}

fn report_inner(args: ReportArgs, quiet: bool) -> Result<()> {
    match args.files.as_slice() {
        [one] => report_one(&args, one, quiet),
        _ => report_merged(&args, quiet),
    }
}

/// The session of an offline report, described by the first recording's metadata.
fn start(args: &ReportArgs, meta: &record::Meta, quiet: bool) -> Result<Session> {
    let mut run = RunInfo::start(meta.host.clone());
    run.kernel = KernelInfo {
        release: meta.kernel_release.clone(),
        version: meta.kernel_version.clone(),
        machine: meta.machine.clone(),
    };
    run.started_unix_s = meta.started_unix_s;
    let opts = run_args(args);
    let cfg = opts.engine_config.clone().unwrap_or_default();
    let mut session = Session::open_with(&opts, run, cfg)?;
    session.quiet = quiet;
    Ok(session)
}

/// Prints how far a large file has been read (over 64 MiB), on one line.
fn progress_line(path: &Path) -> impl FnMut(u64, u64) + '_ {
    let show = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) > 64 << 20;
    move |done, total| {
        if show && total > 0 {
            eprint!(
                "\rllmdd: reading {}: {:.0}%",
                path.display(),
                done as f64 * 100.0 / total as f64
            );
            if done >= total {
                eprintln!();
            }
        }
    }
}

/// One recording, streamed: a first pass reads everything but the events (processes,
/// stacks, loss marks, the end), a second feeds the events to the engine a chunk at a time,
/// so memory does not grow with the file.
fn report_one(args: &ReportArgs, path: &Path, quiet: bool) -> Result<()> {
    let r = record::scan(path, &mut |_, _| {})?;
    let mut session = start(args, &r.meta, quiet)?;
    for p in r.processes() {
        session.register_process(p.hints(r.meta.host.clone()), p.info());
    }
    // Stacks named while recording (`record --stacks on`) fold the flame graph. (One host
    // only: merged recordings renumber processes.)
    if let Some(f) = session.outputs.flame.as_mut() {
        for s in &r.stacks {
            f.learn_stack((s.pid, s.id, s.caller), s.frames.clone().into());
        }
    }
    let mut losses = Losses::default();
    let (mut exited, mut failed) = (Vec::new(), None);
    let (mut i, mut events, mut last_ns) = (0usize, 0u64, None);
    let mut show = progress_line(path);
    let read = record::visit(path, &mut show, &mut |chunk| {
        if failed.is_some() {
            return;
        }
        losses.replay(&mut session, r.losses.iter().filter(|(at, _)| *at == i));
        events += chunk.events.len() as u64;
        let mut batch = chunk.events;
        if let Err(e) = session.ingest(&mut batch, &mut exited) {
            failed = Some(e);
        }
        session.engine.advance(chunk.now_ns);
        last_ns = Some(chunk.now_ns);
        i += 1;
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(msg) = read.salvage.message(path) {
        eprintln!("llmdd: warning: {msg}");
    }
    losses.replay(&mut session, r.losses.iter().filter(|(at, _)| *at >= i));
    let end_ns = r
        .end
        .as_ref()
        .map(|e| e.end_ns)
        .or(last_ns)
        .unwrap_or(r.meta.start_ns);
    // A recording made before loss marks were written has only its end's counters: told at
    // the end, the only time they are known at.
    losses.report(
        &mut session,
        end_ns,
        unmarked_losses(std::slice::from_ref(&r)),
    );
    let why = format!(
        "recording of {} read back{}",
        r.meta.host.as_deref().unwrap_or("one host"),
        r.end
            .as_ref()
            .map(|e| format!("; recorder: {}", e.stopped_because))
            .unwrap_or_else(|| "; the recorder did not stop cleanly".to_string())
    );
    let span = end_ns.saturating_sub(r.meta.start_ns);
    let counters = sum_counters(std::slice::from_ref(&r));
    session.finish(
        &End {
            records: r.end.as_ref().map_or(events, |e| e.records),
            undecodable: read.salvage.undecodable,
            counters: &counters,
            why: &why,
            duration_s: span as f64 / 1e9,
        },
        span as f64 / 1e9,
    )
}

/// Several recordings merged into one job on one clock (every event held: the merge sorts
/// them all).
fn report_merged(args: &ReportArgs, quiet: bool) -> Result<()> {
    let mut recs = load_all(&args.files)?;
    let mut session = start(args, &recs[0].meta, quiet)?;
    let counters: Vec<u64> = sum_counters(&recs);
    let records: u64 = recs
        .iter()
        .map(|r| {
            r.end
                .as_ref()
                .map(|e| e.records)
                .unwrap_or(r.event_count() as u64)
        })
        .sum();
    let undecodable: u64 = recs.iter().map(|r| r.salvage.undecodable).sum();
    let mut exited = Vec::new();
    let hosts: Vec<crate::merge::HostRecording> = recs.iter_mut().map(|r| r.take_host()).collect();
    let merged = crate::merge::merge(hosts).context("merging the recordings")?;
    if !quiet {
        for line in merged.clock_lines() {
            eprintln!("llmdd: {line}");
        }
    }
    session.job = serde_json::to_value(&merged).ok();
    session.engine.set_host_clocks(merged.host_clocks());
    for (id, hints) in &merged.registrations {
        let proc = merged.process(*id);
        let info = proc
            .and_then(|jp| {
                let r = recs
                    .iter()
                    .find(|r| r.meta.host.as_deref() == Some(jp.host.as_str()))?;
                r.processes().into_iter().find(|p| p.pid == jp.pid)
            })
            .map(|p| {
                let mut i = p.info();
                i.pid = *id;
                i
            })
            .unwrap_or_else(|| crate::views::run::ProcInfo {
                pid: *id,
                comm: proc
                    .map(|p| format!("{}:{}", p.host, p.pid))
                    .unwrap_or_default(),
                ..Default::default()
            });
        session.register_process(hints.clone(), info);
    }
    let marks = merged_marks(&recs, &merged);
    let mut next = 0;
    let mut losses = Losses::default();
    for part in merged.events.chunks(BATCH) {
        let last = part.last().map(event_time).unwrap_or(0);
        let mut batch = part.to_vec();
        session.ingest(&mut batch, &mut exited)?;
        while let Some(&(t, total)) = marks.get(next).filter(|(t, _)| *t <= last) {
            losses.report(&mut session, t, total);
            next += 1;
        }
        session.engine.advance(last);
    }
    let end = merged.events.last().map(event_time).unwrap_or(0);
    for &(t, total) in &marks[next..] {
        losses.report(&mut session, t.max(end), total);
    }
    losses.report(&mut session, end, losses.told + unmarked_losses(&recs));
    let span = match merged.window_ns {
        Some((a, b)) => b.saturating_sub(a),
        None => {
            let first = merged.events.first().map(event_time).unwrap_or(0);
            let last = merged.events.last().map(event_time).unwrap_or(0);
            last.saturating_sub(first)
        }
    };
    let why = format!("{} recordings merged into one job", recs.len());
    session.finish(
        &End {
            records,
            undecodable,
            counters: &counters,
            why: &why,
            duration_s: span as f64 / 1e9,
        },
        span as f64 / 1e9,
    )
}

/// Losses told to the offline engine as the live one was told them: each mark's new losses
/// at the mark's time, after the events drained before it.
#[derive(Default)]
struct Losses {
    told: u64,
}

impl Losses {
    /// The losses up to a running `total` (all recordings) at `at_ns`.
    fn report(&mut self, session: &mut Session, at_ns: u64, total: u64) {
        if total > self.told {
            session.engine.report_lost(at_ns, total - self.told);
            self.told = total;
        }
    }

    fn replay<'a>(
        &mut self,
        session: &mut Session,
        marks: impl Iterator<Item = &'a (usize, crate::record::LossMark)>,
    ) {
        for (_, m) in marks {
            self.report(session, m.at_ns, crate::record::LossMark::lost(&m.counters));
        }
    }
}

/// Losses of the recordings that carry no loss marks (made before marks were written): their
/// end's counters. A recording with marks has told every loss the live engine was told.
fn unmarked_losses(recs: &[Recording]) -> u64 {
    recs.iter()
        .filter(|r| r.losses.is_empty())
        .map(|r| crate::record::LossMark::lost(&r.final_counters()))
        .sum()
}

/// Every recording's loss marks on the merged clock, as (time, running total over all
/// recordings), in time order.
fn merged_marks(recs: &[Recording], merged: &crate::merge::Merged) -> Vec<(u64, u64)> {
    let mut deltas: Vec<(u64, u64)> = Vec::new();
    for h in &merged.hosts {
        for &i in &h.recordings {
            let Some(r) = recs.get(i) else { continue };
            let mut before = 0;
            for (_, m) in &r.losses {
                let total = crate::record::LossMark::lost(&m.counters);
                let t = m.at_ns.saturating_add_signed(h.offset.offset_ns);
                deltas.push((t, total.saturating_sub(before)));
                before = total;
            }
        }
    }
    deltas.sort_unstable();
    let mut running = 0;
    deltas
        .into_iter()
        .map(|(t, d)| {
            running += d;
            (t, running)
        })
        .collect()
}

/// The probes' counters of every recording, added up.
fn sum_counters(recs: &[Recording]) -> Vec<u64> {
    let mut out = vec![0u64; llmdd_common::counters::COUNT as usize];
    for r in recs {
        for (o, c) in out.iter_mut().zip(&r.final_counters()) {
            *o += c;
        }
    }
    out
}

/// The time of an event (CLOCK_MONOTONIC of its host).
fn event_time(ev: &Event) -> u64 {
    match ev {
        Event::Call(c) => c.exit_ns.unwrap_or(c.entry_ns),
        Event::Sock(s) => s.ts_ns,
        Event::ProcExit(p) => p.ts_ns,
    }
}

/// `llmdd export FILE -o OUT`.
pub fn export(args: ExportArgs) -> Result<()> {
    if args.format != "jsonl" {
        bail!("unknown format `{}`: use jsonl", args.format);
    }
    // Streamed: a chunk of events in memory at a time, whatever the file's size.
    record::scan(&args.file, &mut |_, _| {})?;
    let mut out = create_output(&args.output)?;
    let (mut n, mut failed) = (0u64, None);
    let mut show = progress_line(&args.file);
    let read = record::visit(&args.file, &mut show, &mut |chunk| {
        for ev in &chunk.events {
            if failed.is_some() {
                return;
            }
            let written = serde_json::to_writer(&mut out, ev)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            match written {
                Ok(()) => n += 1,
                Err(e) => failed = Some(e),
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e).with_context(|| format!("writing {}", args.output.display()));
    }
    if let Some(msg) = read.salvage.message(&args.file) {
        eprintln!("llmdd: warning: {msg}");
    }
    out.flush()
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "llmdd: {n} events of {} written to {}",
        args.file.display(),
        args.output.display()
    );
    Ok(())
}
