//! Bubbles: idle time that is not a hang.
//!
//! * **Pipeline stages.** The members of a communicator that exchange `ncclSend`/`ncclRecv`
//!   are the stages of a pipeline. Sends are flow-controlled: a sender waits when its
//!   receiver is behind (NCCL's buffers are bounded; on a GPU a send completes only when
//!   the peer receives), and a receiver waits for data that is not there yet. So behind a
//!   slow stage, the stages upstream wait to send and the stages downstream wait to
//!   receive; the slow stage is the one that does not wait. Each stage's waiting is the
//!   time its process spends in calls that wait for other ranks or for the device
//!   (send/receive groups, collectives, syncs), as a share of the window; the stage that
//!   waits far less than the others is named, with the share of time the others lose. A
//!   balanced pipeline, fill and drain included, gives every stage about the same share.
//! * **GPU-submission gaps.** Per process: time between one submission (kernel or graph
//!   launch, async copy, collective) returning and the next on any stream, less the time the
//!   process spent waiting in syncs meanwhile, counted against the stream that ends it when
//!   above `submission_gap_ns` while the process kept making other traced calls (busy with
//!   something else, not idle for lack of work).

use super::{config::Config, procs::ProcId, stats::RollingSum, util::FastMap};

/// Streams with gaps tracked (beyond: the map starts over).
const MAX_STREAMS: usize = 1 << 16;

/// A pipeline: the stages of one communicator that exchange sends and receives.
pub struct Pipeline {
    pub comm: u32,
    /// Stage rank -> the process holding it (the latest to send or receive as it).
    pub stages: Vec<(u32, ProcId)>,
    pub transfers: RollingSum,
    /// Evaluated since the last transfer.
    pub evaluated: bool,
}

/// Time a process spent waiting for other ranks or for the device.
pub struct Waits {
    pub waited: RollingSum,
    pub first_ns: u64,
    /// Send/receive calls (or groups holding them) it made.
    pub transfers: RollingSum,
}

/// One stage's waiting over the window.
#[derive(Clone, Debug, PartialEq)]
pub struct StageWait {
    pub rank: u32,
    pub proc: ProcId,
    /// Share of the span spent waiting.
    pub share: f64,
    /// Waiting per send/receive call (or group) it made.
    pub per_transfer_ns: u64,
    pub span_ns: u64,
}

/// The stage of a pipeline that the others wait for.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineVerdict {
    pub slow: StageWait,
    /// The other stages, in rank order.
    pub others: Vec<StageWait>,
    /// Mean share of their time the other stages spent waiting.
    pub others_share: f64,
    pub transfers: u64,
}

struct LastSubmission {
    at_ns: u64,
    busy: u64,
    sync_ns: u64,
}

pub struct StreamGaps {
    pub busy_gaps: RollingSum,
    pub longest_ns: u64,
    pub total_busy_gaps: u64,
}

/// A stage or stream that crossed the bubble threshold.
#[derive(Clone, Debug, PartialEq)]
pub enum BubbleAlert {
    Submission {
        proc: ProcId,
        stream: u64,
        gap_ns: u64,
    },
}

#[derive(Default)]
pub struct Bubbles {
    pub pipelines: FastMap<u32, Pipeline>,
    waits: FastMap<ProcId, Waits>,
    pub streams: FastMap<(ProcId, u64), StreamGaps>,
    proc_last: FastMap<ProcId, LastSubmission>,
}

impl Bubbles {
    /// A send or receive by `proc` as stage `rank` of communicator `comm`, at `t`.
    pub fn transfer(&mut self, comm: u32, rank: u32, proc: ProcId, t: u64, cfg: &Config) {
        let (sl, k) = (cfg.slice_ns(), cfg.window_slices);
        let p = self.pipelines.entry(comm).or_insert_with(|| Pipeline {
            comm,
            stages: Vec::new(),
            transfers: RollingSum::new(sl, k),
            evaluated: false,
        });
        p.transfers.add(t, 1);
        p.evaluated = false;
        match p.stages.iter_mut().find(|(r, _)| *r == rank) {
            Some(s) => s.1 = proc,
            None => {
                p.stages.push((rank, proc));
                p.stages.sort_unstable();
            }
        }
        self.wait_entry(proc, t, cfg).transfers.add(t, 1);
    }

    fn wait_entry(&mut self, proc: ProcId, t: u64, cfg: &Config) -> &mut Waits {
        let (sl, k) = (cfg.slice_ns(), cfg.window_slices);
        self.waits.entry(proc).or_insert_with(|| Waits {
            waited: RollingSum::new(sl, k),
            first_ns: t,
            transfers: RollingSum::new(sl, k),
        })
    }

    /// `proc` waited in a call from `entry` to `exit` (for other ranks or the device).
    pub fn waited(&mut self, proc: ProcId, entry: u64, exit: u64, cfg: &Config) {
        self.wait_entry(proc, entry, cfg)
            .waited
            .add(exit, exit.saturating_sub(entry));
    }

    /// The waiting of one stage over the window ending at `now`.
    fn stage_wait(&self, rank: u32, proc: ProcId, now: u64, cfg: &Config) -> Option<StageWait> {
        let w = self.waits.get(&proc)?;
        let span = now.saturating_sub(w.first_ns.max(now.saturating_sub(cfg.window_ns)));
        let waited = w.waited.sum(now);
        let transfers = w.transfers.sum(now).max(1);
        Some(StageWait {
            rank,
            proc,
            share: (waited as f64 / span.max(1) as f64).min(1.0),
            per_transfer_ns: waited / transfers,
            span_ns: span,
        })
    }

    /// Every stage's waiting in the pipeline of `comm`.
    pub fn stage_waits(&self, comm: u32, now: u64, cfg: &Config) -> Vec<StageWait> {
        let Some(p) = self.pipelines.get(&comm) else {
            return Vec::new();
        };
        p.stages
            .iter()
            .filter_map(|&(r, proc)| self.stage_wait(r, proc, now, cfg))
            .collect()
    }

    /// The pipeline of `comm` as of `now`: the stage that waits far less than the others,
    /// when one does. Needs `bubble_min_events` transfers over at least `bubble_min_span`
    /// of every stage; the stage is named when the others wait `bubble_min_ratio` of their
    /// time more than it does on average and it waits less than half as much as they do.
    pub fn evaluate(&mut self, comm: u32, now: u64, cfg: &Config) -> Option<PipelineVerdict> {
        let p = self.pipelines.get_mut(&comm)?;
        p.evaluated = true;
        let transfers = p.transfers.sum(now);
        let waits = self.stage_waits(comm, now, cfg);
        if waits.len() < 2
            || transfers < cfg.bubble_min_events as u64
            || waits.iter().any(|w| w.span_ns < cfg.bubble_min_span_ns)
        {
            return None;
        }
        let slow = waits
            .iter()
            .min_by(|a, b| a.share.total_cmp(&b.share).then(a.rank.cmp(&b.rank)))?
            .clone();
        let others: Vec<StageWait> = waits.into_iter().filter(|w| w.rank != slow.rank).collect();
        let others_share = others.iter().map(|w| w.share).sum::<f64>() / others.len() as f64;
        (others_share - slow.share >= cfg.bubble_min_ratio && slow.share * 2.0 <= others_share)
            .then_some(PipelineVerdict {
                slow,
                others,
                others_share,
                transfers,
            })
    }

    /// A GPU submission on `stream` by `proc`. `busy_calls` counts the process's traced calls
    /// that are not waits, this one included; `sync_ns` is its total time spent waiting in
    /// synchronising calls. The gap since the process's previous submission (on any stream)
    /// counts, against the stream that ends it, when less the time waited in syncs it is
    /// still above the threshold and the process made other calls meanwhile (it was busy with
    /// something else, not idle for lack of work).
    #[allow(clippy::too_many_arguments)]
    pub fn submission(
        &mut self,
        proc: ProcId,
        stream: u64,
        entry: u64,
        exit: u64,
        busy_calls: u64,
        sync_ns: u64,
        cfg: &Config,
    ) -> Option<BubbleAlert> {
        let last = self.proc_last.entry(proc).or_insert(LastSubmission {
            at_ns: 0,
            busy: busy_calls,
            sync_ns,
        });
        let mut alert = None;
        if last.at_ns != 0 && entry > last.at_ns {
            let gap = entry - last.at_ns;
            let waited = sync_ns.saturating_sub(last.sync_ns);
            let others = busy_calls.saturating_sub(last.busy + 1);
            if gap.saturating_sub(waited) >= cfg.submission_gap_ns && others > 0 {
                if self.streams.len() >= MAX_STREAMS && !self.streams.contains_key(&(proc, stream))
                {
                    self.streams.clear();
                }
                let (s, k) = (cfg.slice_ns(), cfg.window_slices);
                let g = self
                    .streams
                    .entry((proc, stream))
                    .or_insert_with(|| StreamGaps {
                        busy_gaps: RollingSum::new(s, k),
                        longest_ns: 0,
                        total_busy_gaps: 0,
                    });
                g.busy_gaps.add(entry, 1);
                g.total_busy_gaps += 1;
                g.longest_ns = g.longest_ns.max(gap);
                if g.busy_gaps.sum(entry) >= cfg.submission_gap_min_count as u64 {
                    alert = Some(BubbleAlert::Submission {
                        proc,
                        stream,
                        gap_ns: gap,
                    });
                }
            }
        }
        *last = LastSubmission {
            at_ns: last.at_ns.max(exit.max(entry)),
            busy: busy_calls,
            sync_ns,
        };
        alert
    }

    /// A submission reported in flight (processed at its entry) returned at `exit`.
    pub fn returned(&mut self, proc: ProcId, exit: u64) {
        if let Some(last) = self.proc_last.get_mut(&proc) {
            last.at_ns = last.at_ns.max(exit);
        }
    }

    /// The communicator slot `comm` was reused for another communicator.
    pub fn forget_comm(&mut self, comm: u32) {
        self.pipelines.remove(&comm);
    }

    pub fn forget_proc(&mut self, proc: ProcId) {
        self.streams.retain(|(p, _), _| *p != proc);
        self.proc_last.remove(&proc);
        self.waits.remove(&proc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stage 2 of 4 takes 5 ms per micro-batch, the others 1 ms: stages 0 and 1 wait to
    /// send, stage 3 to receive, 4 ms of every 5; stage 2 never waits. It is named, with
    /// the others' 80% lost to it. Balanced, nobody is.
    #[test]
    fn the_stage_that_does_not_wait_is_the_slow_one() {
        let cfg = Config::default();
        for (slow_extra, named) in [(4_000_000u64, Some(2u32)), (0, None)] {
            let mut b = Bubbles::default();
            let cycle = 1_000_000 + slow_extra;
            for k in 0..2_000u64 {
                let t = k * cycle;
                for stage in 0..4u32 {
                    b.transfer(7, stage, stage, t, &cfg);
                    if stage != 2 && slow_extra > 0 {
                        b.waited(stage, t, t + slow_extra, &cfg);
                    }
                    // Fill and drain of a balanced pipeline: everyone waits a little.
                    b.waited(stage, t, t + 50_000, &cfg);
                }
            }
            let now = 2_000 * cycle;
            let v = b.evaluate(7, now, &cfg);
            assert_eq!(v.as_ref().map(|v| v.slow.rank), named, "{v:?}");
            if let Some(v) = v {
                assert!((0.75..0.85).contains(&v.others_share), "{v:?}");
                assert!(v.slow.share < 0.05, "{v:?}");
            }
        }
    }

    #[test]
    fn busy_submission_gaps_only() {
        let cfg = Config::default();
        let mut b = Bubbles::default();
        let mut calls = 0;
        let mut alerts = 0;
        let t = |k: u64| k * 50_000_000;
        for k in 0..5u64 {
            calls += 1;
            alerts += b
                .submission(1, 0x51, t(k), t(k) + 1000, calls, 0, &cfg)
                .is_some() as u32;
        }
        assert_eq!(alerts, 0, "idle gaps (no other calls) do not count");
        // Other calls, but the gap was spent waiting in a sync: not a host bubble.
        let mut waited = 0;
        for k in 5..8u64 {
            calls += 2;
            waited += 45_000_000;
            alerts += b
                .submission(1, 0x52, t(k), t(k) + 1000, calls, waited, &cfg)
                .is_some() as u32;
        }
        assert_eq!(alerts, 0, "gaps spent in syncs do not count");
        for k in 8..13u64 {
            calls += 2; // another call in between
            alerts += b
                .submission(1, 0x51, t(k), t(k) + 1000, calls, waited, &cfg)
                .is_some() as u32;
        }
        assert_eq!(alerts, 3);
        assert_eq!(b.streams[&(1, 0x51)].total_busy_gaps, 5);
        assert!(!b.streams.contains_key(&(1, 0x52)));
    }
}
