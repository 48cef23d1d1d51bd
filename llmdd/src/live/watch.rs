//! Where the traced threads are: rounds of thread snapshots (`crate::threads`) for the
//! engine's stall-at-attach analysis (`engine::positions`). A job already stuck when llmdd
//! attaches makes no call the probes could see, so its threads' positions are the only
//! evidence.
//!
//! Rounds run at attach and twice more, each `stall_at_attach_confirm` (1 s) after the
//! previous one ended, then only while the engine says a job may be stuck (its ranks placed
//! alike, some waiting, no collective call since), at the summary interval. A healthy job makes calls between the first rounds and is not
//! looked at again. A traced process's thread that is running is stopped for a few
//! microseconds per round to read its registers, unless `--no-ptrace`. Each round also asks
//! NCCL's RAS service, where one runs (`--ras`), which ranks it cannot reach or sees behind.

use std::time::{Duration, Instant};

use super::state::Live;
use crate::{
    session::{monotonic_ns, Session},
    stacks::Symbolizer,
};

/// The rounds after attach, whatever the engine says.
const EARLY_ROUNDS: usize = 3;

pub struct Watch {
    ptrace: bool,
    sym: Symbolizer,
    rounds: usize,
    last: Option<Instant>,
    interval: Duration,
    /// NCCL's RAS service stopped answering (asked again only at the end).
    ras_failed: bool,
}

impl Watch {
    pub fn new(ptrace: bool, interval: Duration) -> Watch {
        Watch {
            ptrace,
            sym: Symbolizer::new(),
            rounds: 0,
            last: None,
            interval: interval.max(Duration::from_secs(1)),
            ras_failed: false,
        }
    }

    /// With each round, NCCL's own view where its RAS service runs (`--ras`): the ranks it
    /// cannot reach or that are behind in their collective counts (`engine::nccl_ras`).
    fn ask_ras(&mut self, session: &mut Session) {
        if self.ras_failed {
            return;
        }
        let versions = session.nccl_versions();
        let addr = match crate::ras::address(&session.ras, &versions) {
            None => return,
            Some(Ok((addr, _))) => addr,
            // Asked again next round: the service starts with NCCL's first communicator.
            Some(Err(why)) => {
                tracing::debug!("nccl ras not asked: {why}");
                return;
            }
        };
        match crate::ras::query(&addr, Duration::from_secs(2)) {
            Ok(crate::ras::RasReport::Json(s)) => {
                session
                    .engine
                    .ras_look(monotonic_ns(), crate::ras::sights(&s));
            }
            Ok(crate::ras::RasReport::Text(_)) => self.ras_failed = true,
            Err(e) => {
                tracing::info!("{e}; not asked again while tracing");
                self.ras_failed = true;
            }
        }
    }

    /// Runs a round when one is due.
    pub fn tick(&mut self, live: &Live, session: &mut Session) {
        let confirm = Duration::from_nanos(session.engine.config().stall_at_attach_confirm_ns);
        let due = if self.rounds < EARLY_ROUNDS {
            self.last.is_none_or(|l| l.elapsed() >= confirm)
        } else {
            session.engine.threads_wanted()
                && self
                    .last
                    .is_none_or(|l| l.elapsed() >= self.interval.max(confirm))
        };
        if due {
            self.round(live, session);
        }
    }

    fn round(&mut self, live: &Live, session: &mut Session) {
        let began = Instant::now();
        for (&pid, traced) in &live.traced {
            let threads = crate::threads::snapshot(pid, traced, &mut self.sym, self.ptrace);
            session.engine.threads_now(pid, monotonic_ns(), threads);
        }
        session.engine.threads_round_done(monotonic_ns());
        self.ask_ras(session);
        self.rounds += 1;
        self.last = Some(Instant::now());
        tracing::debug!(
            "thread round {} over {} process(es) in {:?}",
            self.rounds,
            live.traced.len(),
            began.elapsed()
        );
    }
}
