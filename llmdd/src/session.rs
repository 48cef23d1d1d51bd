//! One tracing session's analysis and outputs, whatever the events come from: the live probes
//! (`attach`, `top`, `record`) or a recording read back (`report`). A session owns the engine,
//! the per-function summary, the views that are written when it ends (JSON report, timeline,
//! flame graph) and the event sinks (the `--dump-events` JSON lines, a record file). The
//! source of events (ring buffer, file) and what to do about a process that exits stay with
//! the caller.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::{
    cli::RunArgs,
    engine::{Config, Engine, ProcessHints},
    events::Event,
    summary::Summary,
    views::{flame, report, run::ProcInfo, run::RunInfo, trace, Outputs},
};

/// Opens an output file now, so a bad path fails before any attach rather than after a long
/// run: a new file of mode 0600, never a symlink followed (`outfile`).
pub fn create_output(path: &Path) -> Result<BufWriter<File>> {
    let file = crate::outfile::create_private(path)
        .with_context(|| format!("cannot write {}: choose a writable path", path.display()))?;
    Ok(BufWriter::new(file))
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

/// This machine's host name, as the kernel has it.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
}

/// Somewhere every decoded event goes, in order, as it is ingested (`--dump-events`, a record
/// file). `finish` is called once, when the session ends.
pub trait EventSink {
    /// What the sink writes to, for messages ("the event dump", "record file x.rec").
    fn name(&self) -> String;
    /// A batch of events, in the order they reach the engine.
    fn write(&mut self, batch: &[Event]) -> Result<()>;
    /// Flush and close; the session reports a failure with the sink's name.
    fn finish(&mut self) -> Result<()>;
}

/// `--dump-events`: one JSON object per line.
pub struct JsonLines {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonLines {
    pub fn create(path: &Path) -> Result<JsonLines> {
        Ok(JsonLines {
            path: path.to_path_buf(),
            out: create_output(path)?,
        })
    }
}

impl EventSink for JsonLines {
    fn name(&self) -> String {
        format!("the event dump {}", self.path.display())
    }

    fn write(&mut self, batch: &[Event]) -> Result<()> {
        for ev in batch {
            serde_json::to_writer(&mut self.out, ev).context("writing the event dump")?;
            self.out
                .write_all(b"\n")
                .context("writing the event dump")?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.out.flush().context("writing the event dump")
    }
}

/// The file views asked for on the command line, opened before anything is attached.
#[derive(Default)]
struct FileViews {
    report: Option<(PathBuf, BufWriter<File>)>,
    trace: Option<PathBuf>,
    flame: Option<(PathBuf, BufWriter<File>)>,
}

/// How a session ended, for the report and the final summary.
pub struct End<'a> {
    /// Records read from the source (ring buffer or file).
    pub records: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// The probes' counters at the stop (losses and diagnostics), as `Tracer::counters`.
    pub counters: &'a [u64],
    /// Why the session stopped, in words ("duration reached").
    pub why: &'a str,
    /// Seconds traced.
    pub duration_s: f64,
}

/// The engine, the summary and the views of one session.
pub struct Session {
    pub engine: Engine,
    pub summary: Summary,
    pub outputs: Outputs,
    files: FileViews,
    sinks: Vec<Box<dyn EventSink>>,
    /// The merged job view for the report, when several hosts' recordings were merged.
    pub job: Option<serde_json::Value>,
    /// Probe families traced entry-only (`--mode FAMILY=entry`): their records have no
    /// return, so they are counted and shown but not analysed (the engine would hold every
    /// one of them as a call still in progress).
    pub entry_only: Vec<&'static str>,
    /// Write the file views without printing the final summary (a report built for `diff`).
    pub quiet: bool,
    /// Node context of the traced processes (CPU, GPUs, NICs), sampled while tracing live.
    pub node: crate::node::NodeContext,
    /// `--ras`: where NCCL's RAS service is asked for its view when the session ends
    /// (live sessions only; `off` offline).
    pub ras: String,
    /// The hints each process was registered with (for the record file).
    pub hints: std::collections::BTreeMap<u32, ProcessHints>,
}

impl Session {
    /// The versions of the NCCL libraries the traced processes map.
    pub fn nccl_versions(&self) -> Vec<(u32, String)> {
        self.outputs
            .run
            .procs
            .iter()
            .flat_map(|(&pid, p)| p.libraries.iter().map(move |l| (pid, l)))
            .filter(|(_, l)| l.family == "nccl" && l.label == "nccl")
            .filter_map(|(pid, l)| Some((pid, l.version.clone()?)))
            .collect()
    }

    /// Opens every output `opts` names (failing now on a bad path) and starts an empty engine.
    /// `host` names the machine the events come from.
    pub fn open(opts: &RunArgs, host: Option<String>) -> Result<Session> {
        let cfg = opts.engine_config.clone().unwrap_or_default();
        Session::open_with(opts, RunInfo::start(host), cfg)
    }

    /// As [`Session::open`], with the run's description and the engine's configuration given.
    pub fn open_with(opts: &RunArgs, run: RunInfo, cfg: Config) -> Result<Session> {
        let mut sinks: Vec<Box<dyn EventSink>> = Vec::new();
        if let Some(p) = opts.dump_events.as_deref() {
            sinks.push(Box::new(JsonLines::create(p)?));
        }
        let mut files = FileViews::default();
        if let Some(p) = opts.report.as_deref() {
            files.report = Some((p.to_path_buf(), create_output(p)?));
        }
        let mut outputs = Outputs::new(run);
        if let Some(p) = opts.trace.as_deref() {
            outputs.trace = Some(trace::Trace::new(create_output(p)?, opts.trace_max_slices));
            files.trace = Some(p.to_path_buf());
        }
        if let Some(p) = opts.flamegraph.as_deref() {
            files.flame = Some((p.to_path_buf(), create_output(p)?));
            outputs.flame = Some(flame::Folder::default());
        }
        Ok(Session {
            engine: Engine::new(cfg),
            summary: Summary::default(),
            outputs,
            files,
            sinks,
            job: None,
            quiet: false,
            node: Default::default(),
            ras: "off".to_string(),
            hints: Default::default(),
            entry_only: opts
                .modes
                .iter()
                .filter(|(_, m)| *m == crate::probe::Mode::EntryOnly)
                .map(|(f, _)| f.name())
                .collect(),
        })
    }

    /// Adds a sink that sees every event from now on (e.g. a record file).
    pub fn add_sink(&mut self, sink: Box<dyn EventSink>) {
        self.sinks.push(sink);
    }

    /// A traced process: what the engine should assume about it and what the views show.
    pub fn register_process(&mut self, hints: ProcessHints, info: ProcInfo) {
        self.hints.insert(info.pid, hints.clone());
        self.engine.register_process(info.pid, hints);
        self.outputs.run.add_process(info);
    }

    /// Feeds a batch to the sinks, the views, the summary and the engine, in that order, and
    /// empties it. The pids of processes whose exit is in the batch are pushed to `exited`.
    pub fn ingest(&mut self, batch: &mut Vec<Event>, exited: &mut Vec<u32>) -> Result<()> {
        for sink in &mut self.sinks {
            let name = sink.name();
            sink.write(batch)
                .with_context(|| format!("writing {name}"))?;
        }
        self.outputs.on_batch(batch);
        for ev in batch.drain(..) {
            self.summary.add(&ev);
            if let Event::ProcExit(p) = &ev {
                exited.push(p.pid);
            }
            if let Event::Call(c) = &ev {
                // A user probe inside a function body is entry-only too.
                if self.entry_only.contains(&c.family) || c.spec().entry_only {
                    continue;
                }
            }
            self.engine.ingest(ev);
        }
        Ok(())
    }

    /// The findings block of the plain summary.
    pub fn render_findings(&self) -> String {
        render_findings_with(&self.engine, &self.node)
    }

    /// Ends the session: flushes the engine, prints the final summary and findings, then
    /// writes every file view and closes every sink. Each failure is reported and the other
    /// outputs are still written.
    pub fn finish(mut self, end: &End, last_interval_s: f64) -> Result<()> {
        self.engine.flush();
        let snap = self.engine.snapshot();
        if !self.quiet {
            println!("=== final summary ({}) ===", end.why);
            print!(
                "{}",
                self.summary
                    .render(end.duration_s, last_interval_s, end.counters)
            );
            print!("{}", render_findings_with(&self.engine, &self.node));
            if end.undecodable > 0 {
                println!("undecodable records: {}", end.undecodable);
            }
            std::io::stdout().flush().ok();
        }

        let lost: u64 = llmdd_common::counters::LOSSES
            .iter()
            .filter_map(|&i| end.counters.get(i as usize))
            .sum();
        if self.outputs.polls() {
            self.outputs.poll(&self.engine, &snap, end.records, lost);
        }
        let mut failed: Vec<String> = Vec::new();
        if let Some((path, mut w)) = self.files.report.take() {
            let doc = report::build(&report::Inputs {
                run: &self.outputs.run,
                summary: &self.summary,
                snapshot: &snap,
                events: report::EventTotals {
                    received: end.records,
                    undecodable: end.undecodable,
                    counters: end.counters.to_vec(),
                },
                stopped_because: end.why,
                duration_s: end.duration_s,
                job: self.job.as_ref(),
                node: (!self.node.is_empty()).then_some(&self.node),
            });
            let written = serde_json::to_writer_pretty(&mut w, &doc)
                .map_err(anyhow::Error::from)
                .and_then(|()| w.write_all(b"\n").map_err(anyhow::Error::from))
                .and_then(|()| w.flush().map_err(anyhow::Error::from));
            match written {
                Ok(()) if self.quiet => {}
                Ok(()) => eprintln!("llmdd: report written to {}", path.display()),
                Err(e) => failed.push(format!("writing {}: {e}", path.display())),
            }
        }
        if let (Some(t), Some(path)) = (self.outputs.trace.take(), self.files.trace.take()) {
            match t.finish(
                &self.outputs.run,
                &snap.findings,
                self.outputs.instances_missed,
            ) {
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
        if let (Some(f), Some((path, out))) = (self.outputs.flame.take(), self.files.flame.take()) {
            let folded = path.extension().is_some_and(|e| e == "folded");
            match f.write_as(&self.outputs.run, out, folded) {
                Ok(()) => eprintln!("llmdd: flame graph written to {}", path.display()),
                Err(e) => failed.push(format!("{}: {e:#}", path.display())),
            }
        }
        for sink in &mut self.sinks {
            if let Err(e) = sink.finish() {
                failed.push(format!("{}: {e:#}", sink.name()));
            }
        }
        // Last, once every file is written: the service may take seconds to answer.
        if !self.quiet {
            let versions = self.nccl_versions();
            if let Some(lines) = crate::ras::summary_block(&self.ras, &versions, &snap) {
                for l in lines {
                    println!("{l}");
                }
                std::io::stdout().flush().ok();
            }
        }
        if !failed.is_empty() {
            bail!("{}", failed.join("; "));
        }
        Ok(())
    }
}

/// The findings block of the plain summary.
pub fn render_findings(engine: &Engine) -> String {
    render_findings_with(engine, &Default::default())
}

/// The findings block, with the node context of each culprit that has one.
pub fn render_findings_with(engine: &Engine, node: &crate::node::NodeContext) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let findings = engine.findings();
    for note in engine.notes() {
        let _ = writeln!(out, "note: {note}");
    }
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
        for (line, hint) in node.culprit_lines(f.culprit.pid) {
            let _ = writeln!(out, "      {line}");
            if let Some(hint) = hint {
                let _ = writeln!(out, "      -> {hint}");
            }
        }
    }
    out
}
