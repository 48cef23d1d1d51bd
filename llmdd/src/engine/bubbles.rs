//! Bubbles: idle time that is not a hang.
//!
//! * **Pipeline stages.** Ranks exchanging `ncclSend`/`ncclRecv` on a communicator: the k-th
//!   send from a to b matches the k-th receive at b from a. When the receive was posted before
//!   the matching send, the receiving stage waited `send - recv` for its upstream (host-side
//!   arrival times, an estimate). Per stage: waits and the share of the window spent waiting
//!   (the bubble ratio).
//! * **Data-parallel idle** is blamed on the busy rank from collective instances (see
//!   `stragglers::IdleVerdict`).
//! * **GPU-submission gaps.** Per process: time between one submission (kernel or graph
//!   launch, async copy, collective) returning and the next on any stream, less the time the
//!   process spent waiting in syncs meanwhile, counted against the stream that ends it when
//!   above `submission_gap_ns` while the process kept making other traced calls (busy with
//!   something else, not idle for lack of work).

use std::collections::VecDeque;

use super::{config::Config, procs::ProcId, stats::RollingSum, util::FastMap};

/// Unmatched sends/receives kept per direction.
const MAX_UNMATCHED: usize = 4096;
/// Waits remembered per stage for the median.
const WAIT_SAMPLES: usize = 256;
/// Streams with gaps tracked (beyond: the map starts over).
const MAX_STREAMS: usize = 1 << 16;

#[derive(Default)]
struct Pair {
    sends: VecDeque<u64>,
    recvs: VecDeque<u64>,
}

/// Waiting of one receiving stage (communicator, rank).
pub struct Stage {
    pub comm: u32,
    pub rank: u32,
    pub pairs: RollingSum,
    pub waited: RollingSum,
    pub waits: VecDeque<(u64, u64)>,
    /// Upstream rank most recently waited for.
    pub upstream: u32,
    pub first_ns: u64,
    pub last_ns: u64,
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
    Pipeline {
        comm: u32,
        rank: u32,
    },
    Submission {
        proc: ProcId,
        stream: u64,
        gap_ns: u64,
    },
}

#[derive(Default)]
pub struct Bubbles {
    pairs: FastMap<(u32, u32, u32), Pair>,
    pub stages: FastMap<(u32, u32), Stage>,
    pub streams: FastMap<(ProcId, u64), StreamGaps>,
    proc_last: FastMap<ProcId, LastSubmission>,
    pub unmatched_dropped: u64,
}

impl Bubbles {
    /// A send (`send` = true) from `src` to `dst` or a receive at `dst` from `src`, on
    /// communicator `comm`, arriving at `t`.
    pub fn p2p(
        &mut self,
        comm: u32,
        src: u32,
        dst: u32,
        send: bool,
        t: u64,
        cfg: &Config,
    ) -> Option<BubbleAlert> {
        let p = self.pairs.entry((comm, src, dst)).or_default();
        let (mine, theirs) = if send {
            (&mut p.sends, &mut p.recvs)
        } else {
            (&mut p.recvs, &mut p.sends)
        };
        let Some(other) = theirs.pop_front() else {
            if mine.len() >= MAX_UNMATCHED {
                mine.pop_front();
                self.unmatched_dropped += 1;
            }
            mine.push_back(t);
            return None;
        };
        let (send_t, recv_t) = if send { (t, other) } else { (other, t) };
        let wait = send_t.saturating_sub(recv_t);
        let (s, k) = (cfg.slice_ns(), cfg.window_slices);
        let stage = self.stages.entry((comm, dst)).or_insert_with(|| Stage {
            comm,
            rank: dst,
            pairs: RollingSum::new(s, k),
            waited: RollingSum::new(s, k),
            waits: VecDeque::new(),
            upstream: src,
            first_ns: recv_t,
            last_ns: recv_t,
        });
        let at = send_t.max(recv_t);
        stage.pairs.add(at, 1);
        stage.last_ns = stage.last_ns.max(at);
        if wait > 0 {
            stage.waited.add(at, wait);
            stage.upstream = src;
            if stage.waits.len() >= WAIT_SAMPLES {
                stage.waits.pop_front();
            }
            stage.waits.push_back((at, wait));
        }
        let (ratio, n) = stage_ratio(stage, at, cfg);
        // A share of a short span is the pipeline filling up, or noise.
        let span = at.saturating_sub(stage.first_ns);
        (n >= cfg.bubble_min_events as u64
            && span >= cfg.bubble_min_span_ns
            && ratio >= cfg.bubble_min_ratio)
            .then_some(BubbleAlert::Pipeline { comm, rank: dst })
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
        self.pairs.retain(|(c, _, _), _| *c != comm);
        self.stages.retain(|(c, _), _| *c != comm);
    }

    pub fn forget_proc(&mut self, proc: ProcId) {
        self.streams.retain(|(p, _), _| *p != proc);
        self.proc_last.remove(&proc);
    }
}

/// (share of the window the stage spent waiting, transfers in the window).
pub fn stage_ratio(stage: &Stage, now: u64, cfg: &Config) -> (f64, u64) {
    let waited = stage.waited.sum(now);
    let n = stage.pairs.sum(now);
    let span = now
        .saturating_sub(stage.first_ns.max(now.saturating_sub(cfg.window_ns)))
        .max(1);
    (waited as f64 / span as f64, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downstream_stage_waiting_for_upstream() {
        let cfg = Config::default();
        let mut b = Bubbles::default();
        let mut alert = None;
        // Every 10 ms step, stage 1 posts its receive at t and stage 0 sends 4 ms later.
        for k in 0..150u64 {
            let t = k * 10_000_000;
            assert!(b.p2p(7, 0, 1, false, t, &cfg).is_none());
            alert = b.p2p(7, 0, 1, true, t + 4_000_000, &cfg).or(alert);
        }
        assert_eq!(alert, Some(BubbleAlert::Pipeline { comm: 7, rank: 1 }));
        let st = &b.stages[&(7, 1)];
        let (ratio, n) = stage_ratio(st, st.last_ns, &cfg);
        assert_eq!(n, 150);
        assert!((0.38..0.45).contains(&ratio), "{ratio}");
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
