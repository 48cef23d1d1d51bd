//! A live run (`llmdd attach`, `top`, `record`) from start to end, in one place:
//!
//! 1. [`Run::prepare`]: every output opened and the metrics port bound, the targets
//!    resolved and the user probes placed, the BPF programs loaded, the overhead budget
//!    measured, before anything is attached (a bad path or a wrong pid fails here).
//! 2. [`Run::attach`]: each target attached and registered the same way whichever way it
//!    was found ([`state::Live::attach_target`]); then privileges are dropped to what
//!    reading needs and the metrics server starts.
//! 3. [`Run::trace`] (`tick.rs`): read, record, analyse, attach what `--follow` finds,
//!    sample the node and the threads, refresh the views, until a stop.
//! 4. [`Run::finish`] (`shutdown.rs`): the last records, detach, the recording's end,
//!    the final summary and the file views.
//!
//! Probes and what is attached live in `state`, target resolution and description in
//! `targets`, thread rounds in `watch`, user messages in `console`.

mod console;
mod shutdown;
mod state;
pub mod targets;
mod tick;
mod watch;

use std::{collections::BTreeMap, io::IsTerminal, sync::Arc, sync::Mutex, time::Instant};

use anyhow::{Context, Result};

use crate::{
    budget::Budget,
    cli::AttachArgs,
    events::Event,
    follow::Follow,
    kernel, privileges,
    probe::{Mode, ObjectPlan, ProbeSet, Tracer},
    record,
    session::{hostname, monotonic_ns, Session},
    tracee::Target,
    transport::Reader,
    views::metrics,
};
use state::{Found, Live};

/// Why tracing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Signal(&'static str),
    Duration,
    TargetsGone,
    Quit,
}

impl Stop {
    fn why(self) -> String {
        match self {
            Stop::Signal(s) => format!("stopped by {s}"),
            Stop::Duration => "duration reached".to_string(),
            Stop::TargetsGone => "every target exited".to_string(),
            Stop::Quit => "stopped from the live view".to_string(),
        }
    }
}

/// Everything a live run holds.
pub struct Run {
    args: AttachArgs,
    session: Session,
    recorder: Option<record::Writer>,
    metrics: Option<metrics::Server>,
    live: Live,
    reader: Reader,
    /// The targets found at start (later ones are in `live.pids`).
    targets: Vec<Target>,
    user_plans: BTreeMap<u32, Vec<ObjectPlan>>,
    follow: Follow,
    watch: watch::Watch,
    batch: Vec<Event>,
    /// Some family traced in aggregate mode (its calls are counted in the kernel).
    aggregating: bool,
    started: Instant,
}

/// Runs `llmdd attach` (and `top`, `record`) to its end.
pub async fn run(args: AttachArgs) -> Result<()> {
    privileges::check().map_err(anyhow::Error::msg)?;
    kernel::preflight().map_err(anyhow::Error::msg)?;
    let mut run = Run::prepare(args)?;
    run.attach()?;
    let (stop, last_render) = run.trace().await?;
    run.finish(stop, last_render)
}

impl Run {
    fn prepare(args: AttachArgs) -> Result<Run> {
        let opts = &args.run;
        let host = hostname();
        let mut session = Session::open(opts, host.clone())?;
        session.ras = opts.ras.clone();
        let recorder = args
            .record
            .as_deref()
            .map(record::Writer::create)
            .transpose()?;
        let metrics = opts.prometheus.map(metrics::Server::bind).transpose()?;
        let (targets, follow) = targets::resolve(&args)?;
        let mut user_tables = targets::UserTables::new();
        let user_plans =
            targets::place_user_probes(opts, &targets, follow.active(), &mut user_tables)?;
        let (tracer, budget) = load_tracer(&args)?;
        let aggregating = opts.modes.iter().any(|&(_, m)| m == Mode::Aggregate);
        let mut live = Live::new(tracer, budget, user_tables, recorder.is_some(), host);
        if opts.walks_stacks() {
            live.tracer.set_stacks(true);
            live.stacks = Some(crate::stacks::StackWalker::new(live.tracer.take_stacks()?));
        }
        let mut reader =
            Reader::new(live.tracer.take_events()?).context("watching the BPF ring buffer")?;
        // The calibration's own records: not a target's.
        reader.drain(&mut Vec::new());
        let watch = watch::Watch::new(!args.run.no_ptrace, opts.interval);
        Ok(Run {
            session,
            recorder,
            metrics,
            live,
            reader,
            targets,
            user_plans,
            follow,
            watch,
            batch: Vec::with_capacity(4096),
            aggregating,
            started: Instant::now(),
            args,
        })
    }

    /// Attaches every target found at start, then keeps only the privileges reading needs
    /// and starts serving metrics.
    fn attach(&mut self) -> Result<()> {
        let began = Instant::now();
        for t in &self.targets {
            let extra = self.user_plans.remove(&t.pid).unwrap_or_default();
            let front = self.args.fronts.contains(&t.pid);
            self.live
                .attach_target(t, extra, front, Found::AtStart, &mut self.session)?;
        }
        if self.live.pids.is_empty() && !self.targets.is_empty() && !self.follow.active() {
            anyhow::bail!("every target exited before llmdd could attach to it");
        }
        if let Some(w) = self.recorder.as_mut() {
            self.reader.capture();
            w.meta(&shutdown::record_meta(
                &self.targets,
                &self.session,
                self.live.hostname.clone(),
                &self.args.run.user_probes,
            ))?;
            eprintln!("llmdd: recording to {}", w.path().display());
        }
        tracing::info!(
            "attached {} process(es) in {:?}",
            self.live.pids.len(),
            began.elapsed()
        );
        // Everything is attached and every output open: keep only what reading and later
        // attaches need (docs/security.md), before any other thread starts.
        match privileges::drop_to_tracing() {
            Ok(kept) => tracing::info!("capabilities kept: {}", kept.join(", ")),
            Err(e) => eprintln!("llmdd: warning: could not drop unneeded capabilities: {e}"),
        }
        if let Some(server) = self.metrics.take() {
            let state = Arc::new(Mutex::new(metrics::State::new(
                self.session.engine.config().token_coalesce_ns,
            )));
            eprintln!("llmdd: serving metrics on http://{}/metrics", server.addr);
            server.spawn(state.clone())?;
            self.session.outputs.metrics = Some(state);
        }
        Ok(())
    }

    /// Whether the live terminal view is shown.
    fn wants_tui(&self) -> bool {
        !self.args.no_tui && std::io::stdout().is_terminal()
    }
}

/// Loads the BPF programs and sets each family's mode; measures a traced call's cost for
/// the overhead budget first (it is about full tracing's cost).
fn load_tracer(args: &AttachArgs) -> Result<(Tracer, Option<Budget>)> {
    let opts = &args.run;
    let sock_cfg = match kernel::sock_offsets() {
        Ok(cfg) => Some(cfg),
        Err(e) => {
            eprintln!("llmdd: warning: socket addresses and ports unavailable: {e}");
            None
        }
    };
    let mut tracer = Tracer::load_sized(sock_cfg, ProbeSet::Full, opts.ring_size)?;
    let budget = match opts.overhead_budget.0 {
        Some(fraction) => budget_for(&mut tracer, fraction, opts.enforce_budget),
        None => None,
    };
    for &(family, mode) in &opts.modes {
        tracer.set_mode(family, mode);
        if family.has_collectives() && mode != Mode::Full {
            eprintln!(
                "llmdd: warning: {} traced in {} mode: collectives cannot be matched across \
                 ranks, so no straggler or stall findings",
                family.name(),
                mode.name()
            );
        }
    }
    for kp in tracer.kernel_probes() {
        if let Err(why) = &kp.status {
            eprintln!("llmdd: warning: kernel probe {} disabled: {why}", kp.name);
        }
    }
    Ok((tracer, budget))
}

/// The overhead budget's controller, from a traced call's cost measured now.
fn budget_for(tracer: &mut Tracer, fraction: f64, enforce: bool) -> Option<Budget> {
    match crate::budget::calibrate(tracer) {
        Ok(cost_ns) => {
            eprintln!(
                "llmdd: overhead budget {}% of each traced thread's time (one traced call \
                 costs {:.1} us on this machine, measured now){}",
                fraction * 100.0,
                cost_ns / 1e3,
                if enforce {
                    "; hot calls are duty-cycled to hold it"
                } else {
                    ""
                }
            );
            if enforce {
                tracer.split_hot_points();
            }
            Some(Budget::new(fraction, cost_ns, monotonic_ns(), enforce))
        }
        Err(why) => {
            eprintln!(
                "llmdd: warning: overhead budget not enforced: cannot measure the cost of a \
                 traced call ({why})"
            );
            None
        }
    }
}
