//! Straggler evidence: per finished instance, who arrived last, by how much (lag behind the
//! others' median arrival) and how long the others waited. Evaluated over the rolling window
//! into a verdict (the straggler) and a data-parallel idle share (a bubble blamed on the busy
//! rank).

use std::collections::VecDeque;

use super::{config::Config, util::median};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvidenceEntry {
    pub seq: u64,
    /// First and last arrival.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Member index that arrived last.
    pub late: u32,
    /// Last arrival minus the other members' median arrival.
    pub lag_ns: u64,
    /// Sum over the other members of (last arrival - their arrival).
    pub waited_ns: u64,
    /// Members that waited.
    pub others: u32,
    pub op: u16,
}

pub struct EvidenceRing {
    buf: VecDeque<EvidenceEntry>,
    cap: usize,
}

impl EvidenceRing {
    pub fn new(cap: usize) -> EvidenceRing {
        EvidenceRing {
            buf: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    pub fn push(&mut self, e: EvidenceEntry) {
        if self.buf.len() >= self.cap {
            self.buf.pop_front();
        }
        self.buf.push_back(e);
    }

    pub fn iter(&self) -> impl Iterator<Item = &EvidenceEntry> {
        self.buf.iter()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Drops entries that ended before `t`.
    pub fn prune(&mut self, t: u64) {
        while self.buf.front().is_some_and(|e| e.end_ns < t) {
            self.buf.pop_front();
        }
    }
}

/// A rank that keeps arriving late.
#[derive(Clone, Debug, PartialEq)]
pub struct StragglerVerdict {
    pub member: u32,
    /// Instances it was late in (arrived last, by at least the lag threshold), of `total` in
    /// the window.
    pub late_count: u32,
    pub total: u32,
    /// Median lag over the instances it was late in: how late it is when it is late.
    pub median_lag_ns: u64,
    /// Lag from which an instance counted as late.
    pub threshold_ns: u64,
    /// Time the other members waited for it in those instances, summed.
    pub waited_ns: u64,
    /// Its share of the waiting caused by every late instance in the window.
    pub blame: f64,
    pub window: (u64, u64),
    /// The most common op among the instances it was late in.
    pub op: u16,
}

/// Idle time of the other members blamed on one rank.
#[derive(Clone, Debug, PartialEq)]
pub struct IdleVerdict {
    pub member: u32,
    /// Waited time blamed on it / (waiting members × window span).
    pub ratio: f64,
    pub waited_ns: u64,
    pub span_ns: u64,
    pub instances: u32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub straggler: Option<StragglerVerdict>,
    pub idle: Option<IdleVerdict>,
}

/// Evaluates the window ending at `now` for a lane of `members` members whose typical period
/// (median time between consecutive instances) is `period_ns` (0 = not known yet: no
/// verdict before it is).
///
/// Straggler: an instance is *late* for its last arrival when the lag reaches
/// `cfg.straggler_lag_threshold(period_ns)`; each member is charged the waiting its late
/// instances caused, and the member charged most is the straggler when it was late often
/// enough (`straggler_min_late`, `straggler_min_share` of the instances) and caused most of
/// that waiting (`straggler_min_blame`). Ranking by waiting caused, not by how often a rank
/// is last nor by its median lag over every instance, names the rank that costs the job time:
/// a rank 20 ms late every 5th step, not a rank that is last by a hair every step.
pub fn evaluate(
    ring: &mut EvidenceRing,
    now: u64,
    members: usize,
    period_ns: u64,
    cfg: &Config,
    scratch: &mut Vec<u64>,
) -> Evaluation {
    ring.prune(now.saturating_sub(cfg.window_ns));
    let total = ring.len() as u32;
    // Until the period is known, what counts as late is not known either: neither verdict
    // is given before (a straggler would otherwise show first as idle blamed on it).
    if total == 0 || members < 2 || period_ns == 0 {
        return Evaluation::default();
    }
    let threshold = cfg.straggler_lag_threshold(period_ns);
    let mut late = vec![0u32; members];
    let mut caused = vec![0u64; members];
    let mut blamed = vec![0u64; members];
    let (mut start, mut end) = (u64::MAX, 0u64);
    let mut others_sum = 0u64;
    for e in ring.iter() {
        let m = e.late as usize;
        if m < members {
            blamed[m] += e.waited_ns;
            if e.lag_ns >= threshold {
                late[m] += 1;
                caused[m] += e.waited_ns;
            }
        }
        start = start.min(e.start_ns);
        end = end.max(e.end_ns);
        others_sum += e.others as u64;
    }
    let mut out = Evaluation::default();
    // Straggler: the member whose late instances caused the most waiting (lowest index on
    // ties).
    let (m, &mine) = caused
        .iter()
        .enumerate()
        .max_by_key(|(i, c)| (**c, usize::MAX - i))
        .expect("members >= 2");
    let all: u64 = caused.iter().sum();
    let count = late[m];
    let blame = if all > 0 {
        mine as f64 / all as f64
    } else {
        0.0
    };
    if mine > 0
        && total >= cfg.straggler_min_instances
        && count >= cfg.straggler_min_late
        && count as f64 >= cfg.straggler_min_share * total as f64
        && blame >= cfg.straggler_min_blame
    {
        scratch.clear();
        let mut ops: Vec<(u16, u32)> = Vec::new();
        let (mut ws, mut we) = (u64::MAX, 0u64);
        for e in ring
            .iter()
            .filter(|e| e.late as usize == m && e.lag_ns >= threshold)
        {
            scratch.push(e.lag_ns);
            ws = ws.min(e.start_ns);
            we = we.max(e.end_ns);
            match ops.iter_mut().find(|(o, _)| *o == e.op) {
                Some((_, c)) => *c += 1,
                None => ops.push((e.op, 1)),
            }
        }
        let lag = median(scratch);
        let op = ops
            .iter()
            .max_by_key(|(o, c)| (*c, u16::MAX - o))
            .map(|(o, _)| *o)
            .unwrap_or(0);
        out.straggler = Some(StragglerVerdict {
            member: m as u32,
            late_count: count,
            total,
            median_lag_ns: lag,
            threshold_ns: threshold,
            waited_ns: mine,
            blame,
            window: (ws, we),
            op,
        });
    }
    // Idle blamed on the busiest member (every instance counts: many small lags add up too).
    let (bm, &bw) = blamed
        .iter()
        .enumerate()
        .max_by_key(|(i, w)| (**w, usize::MAX - i))
        .expect("members >= 2");
    let span = end.saturating_sub(start).max(1);
    let avg_others = (others_sum as f64 / total as f64).max(1.0);
    let ratio = bw as f64 / (avg_others * span as f64);
    if total >= cfg.bubble_min_events
        && span >= cfg.bubble_min_span_ns
        && ratio >= cfg.bubble_min_ratio
        && bw > 0
    {
        out.idle = Some(IdleVerdict {
            member: bm as u32,
            ratio,
            waited_ns: bw,
            span_ns: span,
            instances: total,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, late: u32, lag: u64) -> EvidenceEntry {
        let start = seq * 10_000_000;
        EvidenceEntry {
            seq,
            start_ns: start,
            end_ns: start + lag,
            late,
            lag_ns: lag,
            waited_ns: 3 * lag,
            others: 3,
            op: 0,
        }
    }

    #[test]
    fn names_the_rank_last_most_often() {
        let cfg = Config {
            bubble_min_span_ns: 0,
            ..Config::default()
        };
        let mut r = EvidenceRing::new(100);
        for s in 0..50 {
            let late = if s % 10 == 0 { 1 } else { 2 };
            r.push(entry(s, late, 5_000_000));
        }
        let ev = evaluate(&mut r, 500_000_000, 4, 10_000_000, &cfg, &mut Vec::new());
        let v = ev.straggler.expect("straggler");
        assert_eq!(
            (v.member, v.late_count, v.total, v.median_lag_ns),
            (2, 45, 50, 5_000_000)
        );
        assert_eq!(v.waited_ns, 45 * 15_000_000);
        assert!((v.blame - 0.9).abs() < 1e-9, "{}", v.blame);
        // Others idle 3*5 ms of every 10 ms step, 45 of 50 steps blamed on rank 2.
        let idle = ev.idle.expect("idle");
        assert_eq!(idle.member, 2);
        assert!((0.4..0.5).contains(&idle.ratio), "{}", idle.ratio);
    }

    #[test]
    fn no_verdict_on_rotating_or_small_lags() {
        let cfg = Config::default();
        let mut r = EvidenceRing::new(100);
        for s in 0..50 {
            r.push(entry(s, (s % 4) as u32, 5_000_000));
        }
        assert_eq!(
            evaluate(&mut r, 500_000_000, 4, 10_000_000, &cfg, &mut Vec::new()).straggler,
            None
        );
        let mut r = EvidenceRing::new(100);
        for s in 0..50 {
            r.push(entry(s, 1, 50_000));
        }
        let ev = evaluate(&mut r, 500_000_000, 4, 10_000_000, &cfg, &mut Vec::new());
        assert_eq!((ev.straggler, ev.idle), (None, None));
    }

    #[test]
    fn waiting_caused_beats_being_last_by_a_hair() {
        // Rank 0 is last by 2 ms in 4 of every 5 steps of 200 ms (the root of a star
        // returning late); rank 2 is 20 ms late every 5th step.
        let cfg = Config::default();
        let mut r = EvidenceRing::new(1000);
        for s in 0..100 {
            let (late, lag) = if s % 5 == 4 {
                (2, 20_000_000)
            } else {
                (0, 2_000_000)
            };
            r.push(entry(s, late, lag));
        }
        let ev = evaluate(&mut r, 2_000_000_000, 4, 200_000_000, &cfg, &mut Vec::new());
        let v = ev.straggler.expect("straggler");
        assert_eq!(
            (v.member, v.late_count, v.median_lag_ns),
            (2, 20, 20_000_000)
        );
        assert_eq!(v.threshold_ns, 10_000_000);
        // The same lags on a lane whose steps take 20 ms: rank 0's 2 ms count as late too,
        // and rank 2 still caused most of the waiting.
        let ev = evaluate(&mut r, 2_000_000_000, 4, 20_000_000, &cfg, &mut Vec::new());
        let v = ev.straggler.expect("straggler");
        assert_eq!((v.member, v.late_count), (2, 20));
        // 20 x 60 ms caused against 80 x 6 ms.
        assert!((v.blame - 1200.0 / 1680.0).abs() < 1e-9, "{}", v.blame);
    }

    #[test]
    fn a_few_late_instances_are_not_a_straggler() {
        let cfg = Config::default();
        let mut r = EvidenceRing::new(1000);
        for s in 0..100 {
            let (late, lag) = if s == 40 || s == 70 {
                (3, 30_000_000)
            } else {
                ((s % 4) as u32, 100_000)
            };
            r.push(entry(s, late, lag));
        }
        let ev = evaluate(&mut r, 2_000_000_000, 4, 10_000_000, &cfg, &mut Vec::new());
        assert_eq!(ev.straggler, None);
    }
}
