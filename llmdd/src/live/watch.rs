//! Where the traced threads are: rounds of thread snapshots (`crate::threads`) for the
//! engine's stall-at-attach analysis (`engine::positions`). A job already stuck when llmdd
//! attaches makes no call the probes could see, so its threads' positions are the only
//! evidence.
//!
//! Rounds run at attach and one and two seconds later, then only while the engine says a
//! job may be stuck (its ranks placed alike, some waiting, no collective call since), at
//! the summary interval. A healthy job makes calls between the first rounds and is not
//! looked at again. A traced process's thread that is running is stopped for a few
//! microseconds per round to read its registers, unless `--no-ptrace`.

use std::time::{Duration, Instant};

use super::state::Live;
use crate::{
    session::{monotonic_ns, Session},
    stacks::Symbolizer,
};

/// The rounds after attach, whatever the engine says.
const EARLY_ROUNDS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(2),
];

pub struct Watch {
    ptrace: bool,
    sym: Symbolizer,
    started: Instant,
    rounds: usize,
    last: Option<Instant>,
    interval: Duration,
}

impl Watch {
    pub fn new(ptrace: bool, interval: Duration) -> Watch {
        Watch {
            ptrace,
            sym: Symbolizer::new(),
            started: Instant::now(),
            rounds: 0,
            last: None,
            interval: interval.max(Duration::from_secs(1)),
        }
    }

    /// Runs a round when one is due.
    pub fn tick(&mut self, live: &Live, session: &mut Session) {
        let due = match EARLY_ROUNDS.get(self.rounds) {
            Some(&at) => self.started.elapsed() >= at,
            None => {
                session.engine.threads_wanted()
                    && self.last.is_none_or(|l| l.elapsed() >= self.interval)
            }
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
