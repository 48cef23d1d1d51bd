//! The tracing loop: each pass reads what the probes submitted (recording it when asked),
//! hands it to the engine, attaches what was found since, samples the node and the
//! threads, and refreshes whichever view is shown, until something stops the run.

use std::{
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use super::{state::Found, Run, Stop};
use crate::{session::monotonic_ns, transport::DRAIN_INTERVAL, views::tui};

/// How often the file and metrics views read the engine's matched instances while tracing
/// (the engine keeps 512 per communicator: this covers 2000 collectives a second).
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often the calls still inside a collective are looked at.
const IN_FLIGHT_SCAN: Duration = Duration::from_millis(100);

/// When each periodic step last ran.
struct Clock {
    render: Instant,
    poll: Instant,
    model: Instant,
    events_at_model: u64,
    scan: Instant,
    node: Instant,
}

impl Run {
    /// Traces until a signal, the duration, the targets' end or the live view's quit.
    /// Returns why, and how long ago the last plain summary was printed.
    pub(super) async fn trace(&mut self) -> Result<(Stop, f64)> {
        // Handlers first: a signal right after the "tracing" line must stop llmdd cleanly.
        let mut sigint =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        eprintln!(
            "llmdd: tracing {} process(es); Ctrl-C to stop",
            self.live.pids.len()
        );
        let mut view = if self.wants_tui() {
            self.live.console.live = true;
            Some(tui::live::Live::start()?)
        } else {
            None
        };
        self.started = Instant::now();
        let now = Instant::now();
        let mut clock = Clock {
            render: now,
            poll: now,
            model: now,
            events_at_model: 0,
            scan: now,
            node: now,
        };
        self.live.sample_node(&mut self.session);
        let result: Result<Stop> = async {
            loop {
                let wait = DRAIN_INTERVAL.min(self.args.run.interval);
                let signalled = tokio::select! {
                    _ = self.reader.wait(wait) => None,
                    _ = sigint.recv() => Some(Stop::Signal("SIGINT")),
                    _ = sigterm.recv() => Some(Stop::Signal("SIGTERM")),
                };
                self.drain(true)?;
                self.attach_new()?;
                self.analyse(&mut clock)?;
                if let Some(s) = signalled.or_else(|| self.ended()) {
                    return Ok(s);
                }
                if let Some(stop) = self.refresh(&mut clock, view.as_mut())? {
                    return Ok(stop);
                }
            }
        }
        .await;
        // Leave the live view before anything else is printed, whatever happened.
        drop(view);
        self.live.console.flush();
        Ok((result?, clock.render.elapsed().as_secs_f64()))
    }

    /// Reads what the probes submitted, records it when asked (with a clock tick when
    /// `tick`) and hands it to the session.
    pub(super) fn drain(&mut self, tick: bool) -> Result<()> {
        self.reader.drain(&mut self.batch);
        if let Some(w) = self.recorder.as_mut() {
            let now = monotonic_ns();
            for raw in self.reader.take_raw() {
                w.record(&raw, now)?;
            }
            if tick {
                w.tick(now)?;
            }
        }
        self.live.consume(&mut self.batch, &mut self.session)?;
        if let Some(w) = self.recorder.as_mut() {
            w.stacks(&std::mem::take(&mut self.live.named_stacks))?;
        }
        Ok(())
    }

    /// New losses to the engine, and to the recording after the events drained before them.
    pub(super) fn report_losses(&mut self) -> Result<()> {
        if let Some(mark) = self.live.report_losses(&mut self.session)? {
            if let Some(w) = self.recorder.as_mut() {
                w.losses(&mark)?;
            }
        }
        Ok(())
    }

    /// Probes libraries the traced processes loaded, and attaches the processes
    /// `--follow` and `--children` found.
    fn attach_new(&mut self) -> Result<()> {
        for pid in self.reader.take_new_mappings() {
            if self.live.pids.contains(&pid) {
                self.live.probe_new_libraries(pid);
            }
        }
        for t in self.follow.scan(&self.live.pids) {
            let mut extra = Vec::new();
            if !self.args.run.user_probes.is_empty() {
                let p = crate::userprobe::place(
                    t.pid,
                    &self.args.run.user_probes,
                    &mut self.live.user_tables,
                );
                extra = p.plans;
                for e in p.outcome.into_iter().filter_map(Result::err) {
                    self.live
                        .console
                        .say(format!("llmdd: note: pid {}: {e}", t.pid));
                }
            }
            self.live
                .attach_target(&t, extra, false, Found::Later, &mut self.session)?;
        }
        Ok(())
    }

    /// Losses, calls still in flight, the engine's clock, the duty cycle, the node's and
    /// the threads' samples.
    fn analyse(&mut self, clock: &mut Clock) -> Result<()> {
        self.report_losses()?;
        let now = monotonic_ns();
        if clock.scan.elapsed() >= IN_FLIGHT_SCAN {
            clock.scan = Instant::now();
            self.live.feed_in_flight(&mut self.session, now)?;
        }
        self.session.engine.advance(now);
        self.live.duty_cycle(now);
        if clock.node.elapsed() >= self.args.run.interval {
            clock.node = Instant::now();
            self.live.sample_node(&mut self.session);
        }
        self.watch.tick(&self.live, &mut self.session);
        Ok(())
    }

    /// Whether the run ends now: every target gone (nothing followed) or the duration
    /// reached.
    fn ended(&mut self) -> Option<Stop> {
        // Backstop for a lost or disabled exit tracepoint.
        let gone: Vec<u32> = self
            .live
            .pids
            .iter()
            .copied()
            .filter(|p| !Path::new(&format!("/proc/{p}")).exists())
            .collect();
        for pid in gone {
            self.live.target_exited(pid);
        }
        if self.live.pids.is_empty() && !self.follow.waits() {
            return Some(Stop::TargetsGone);
        }
        let d = self.args.run.duration?;
        (self.started.elapsed() >= d).then_some(Stop::Duration)
    }

    /// Feeds the polled views and the live view from one snapshot, draws the live view
    /// (or prints the plain summary when due).
    fn refresh(
        &mut self,
        clock: &mut Clock,
        mut view: Option<&mut tui::live::Live>,
    ) -> Result<Option<Stop>> {
        let interval = self.args.run.interval;
        let poll_due = self.session.outputs.polls() && clock.poll.elapsed() >= POLL_INTERVAL;
        let model_due =
            view.is_some() && clock.model.elapsed() >= interval.min(Duration::from_secs(1));
        if poll_due || model_due {
            let snap = self.session.engine.snapshot();
            if poll_due {
                clock.poll = Instant::now();
                let lost = self.live.lost_seen;
                let s = &mut self.session;
                s.outputs.poll(&s.engine, &snap, self.reader.records, lost);
            }
            if let (true, Some(v)) = (model_due, view.as_deref_mut()) {
                let m = self.model(clock, &snap, v);
                v.set_model(m);
            }
        }
        if let Some(t) = view {
            if t.input()? == tui::Action::Quit {
                return Ok(Some(Stop::Quit));
            }
            t.draw()?;
        } else if !self.args.quiet && clock.render.elapsed() >= interval {
            self.live
                .summary_figures(&mut self.session, self.aggregating)?;
            let since = clock.render.elapsed().as_secs_f64();
            clock.render = Instant::now();
            let lost = self.live.tracer.counters()?;
            let elapsed = self.started.elapsed().as_secs_f64();
            print!("{}", self.session.summary.render(elapsed, since, &lost));
            print!("{}", self.session.render_findings());
            std::io::stdout().flush().ok();
        }
        Ok(None)
    }

    /// The live view's next model.
    fn model(
        &self,
        clock: &mut Clock,
        snap: &crate::engine::Snapshot,
        view: &tui::live::Live,
    ) -> tui::Model {
        let dt = clock.model.elapsed().as_secs_f64();
        clock.model = Instant::now();
        let records = self.reader.records;
        let status = tui::Status {
            elapsed_s: self.started.elapsed().as_secs_f64(),
            events: records,
            event_rate: (records - clock.events_at_model) as f64 / dt.max(1e-3),
            lost: self.live.lost_seen,
            live_pids: self.live.pids.iter().copied().collect(),
            total_pids: self.targets.len(),
            note: self.live.console.latest.clone(),
            sampled: self
                .live
                .budget
                .as_ref()
                .and_then(|b| crate::budget::sampled_line(&b.duties(monotonic_ns()))),
        };
        clock.events_at_model = records;
        tui::Model::build(
            snap,
            &self.session.outputs.run,
            status,
            Some(view.model()),
            dt,
        )
    }
}
