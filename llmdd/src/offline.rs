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

/// Reads one file with a progress line on stderr for large files, and says what was
/// salvaged from a damaged one.
fn load(path: &Path) -> Result<Recording> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let show = size > 64 << 20;
    let r = record::read(path, |done, total| {
        if show && total > 0 {
            eprint!(
                "\rllmdd: reading {}: {:.0}%",
                path.display(),
                done as f64 * 100.0 / total as f64
            );
        }
    })?;
    if show {
        eprintln!();
    }
    if let Some(msg) = r.salvage.message(path) {
        eprintln!("llmdd: warning: {msg}");
    }
    Ok(r)
}

/// Reads several files against one table of user probes (`record::read_all`), with the
/// same progress and salvage messages as [`load`].
fn load_all(paths: &[std::path::PathBuf]) -> Result<Vec<Recording>> {
    if let [one] = paths {
        return Ok(vec![load(one)?]);
    }
    let sizes: Vec<u64> = paths
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .collect();
    let recs = record::read_all(paths, |i, done, total| {
        if sizes.get(i).is_some_and(|&s| s > 64 << 20) && total > 0 {
            eprint!(
                "\rllmdd: reading {}: {:.0}%",
                paths[i].display(),
                done as f64 * 100.0 / total as f64
            );
            if done == total {
                eprintln!();
            }
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
    let recs = load_all(&args.files)?;
    let first = &recs[0];
    let mut run = RunInfo::start(first.meta.host.clone());
    run.kernel = KernelInfo {
        release: first.meta.kernel_release.clone(),
        version: first.meta.kernel_version.clone(),
        machine: first.meta.machine.clone(),
    };
    run.started_unix_s = first.meta.started_unix_s;
    let opts = run_args(&args);
    let cfg = opts.engine_config.clone().unwrap_or_default();
    let mut session = Session::open_with(&opts, run, cfg)?;
    session.quiet = quiet;
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
    let (span, why) = if recs.len() == 1 {
        let r = &recs[0];
        for p in r.processes() {
            session.register_process(p.hints(r.meta.host.clone()), p.info());
        }
        // Stacks named while recording (`record --stacks on`) fold the flame graph. (One
        // host only: merged recordings renumber processes.)
        if let Some(f) = session.outputs.flame.as_mut() {
            for s in &r.stacks {
                f.learn_stack((s.pid, s.id, s.caller), s.frames.clone().into());
            }
        }
        let end_ns = r
            .end
            .as_ref()
            .map(|e| e.end_ns)
            .or_else(|| r.chunks.last().map(|c| c.now_ns))
            .unwrap_or(r.meta.start_ns);
        let mut losses = Losses::default();
        for (i, chunk) in r.chunks.iter().enumerate() {
            losses.replay(&mut session, r.losses.iter().filter(|(at, _)| *at == i));
            let mut batch = chunk.events.clone();
            session.ingest(&mut batch, &mut exited)?;
            session.engine.advance(chunk.now_ns);
        }
        let n = r.chunks.len();
        losses.replay(&mut session, r.losses.iter().filter(|(at, _)| *at >= n));
        // A recording made before loss marks were written has only its end's counters: told
        // at the end, the only time they are known at.
        losses.report(
            &mut session,
            end_ns,
            unmarked_losses(std::slice::from_ref(r)),
        );
        let why = format!(
            "recording of {} read back{}",
            r.meta.host.as_deref().unwrap_or("one host"),
            r.end
                .as_ref()
                .map(|e| format!("; recorder: {}", e.stopped_because))
                .unwrap_or_else(|| "; the recorder did not stop cleanly".to_string())
        );
        (end_ns.saturating_sub(r.meta.start_ns), why)
    } else {
        let hosts: Vec<crate::merge::HostRecording> = recs.iter().map(|r| r.to_host()).collect();
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
        (
            span,
            format!("{} recordings merged into one job", recs.len()),
        )
    };
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
    let r = load(&args.file)?;
    let mut out = create_output(&args.output)?;
    let mut n = 0u64;
    for ev in r.events() {
        serde_json::to_writer(&mut out, ev)
            .with_context(|| format!("writing {}", args.output.display()))?;
        out.write_all(b"\n")
            .with_context(|| format!("writing {}", args.output.display()))?;
        n += 1;
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
