//! Straggler evidence: per finished instance, who arrived last, by how much (lag behind the
//! others' median arrival) and how long the others waited. Evaluated over the rolling window
//! into a verdict: the rank that makes the others wait, with its lag when late, how often,
//! and the share of the others' time it costs them.

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
    /// Completion after the last arrival, while it waits for a typical one to tell how
    /// much of the lag the devices hid (0: not waiting). Not evidence until then.
    pub after_ns: u64,
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

    /// The entries that are evidence (not waiting for a typical completion time).
    pub fn iter(&self) -> impl Iterator<Item = &EvidenceEntry> {
        self.buf.iter().filter(|e| e.after_ns == 0)
    }

    /// Instance `seq` completed `after` its last arrival; its lag is held back until a
    /// typical completion time says how much of it the devices hid.
    pub fn park(&mut self, seq: u64, after: u64) {
        if let Some(e) = self.buf.iter_mut().rev().find(|e| e.seq == seq) {
            e.after_ns = after.max(1);
        }
    }

    /// Held-back entries.
    pub fn parked(&self) -> usize {
        self.buf.iter().filter(|e| e.after_ns != 0).count()
    }

    /// Releases the held-back entries, less what the devices hid given the `typical`
    /// completion time after the last arrival (None: nothing can be told, as they are).
    pub fn settle(&mut self, typical: Option<u64>) {
        for e in self.buf.iter_mut().filter(|e| e.after_ns != 0) {
            let hidden = typical.map_or(0, |t| super::matching::absorbed(t, e.after_ns, e.lag_ns));
            e.lag_ns -= hidden;
            e.waited_ns = e.waited_ns.saturating_sub(hidden * e.others as u64);
            e.after_ns = 0;
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Takes `hidden` off the lag of instance `seq`'s late arrival, and off the waiting it
    /// caused each other member (the device hid that much of it).
    pub fn hide(&mut self, seq: u64, hidden: u64) {
        if hidden == 0 {
            return;
        }
        if let Some(e) = self.buf.iter_mut().rev().find(|e| e.seq == seq) {
            let h = hidden.min(e.lag_ns);
            e.lag_ns -= h;
            e.waited_ns = e.waited_ns.saturating_sub(h * e.others as u64);
        }
    }

    /// Drops the entries of instances from `seq` on (their matching was wrong).
    pub fn forget_from(&mut self, seq: u64) {
        self.buf.retain(|e| e.seq < seq);
    }

    /// Drops entries that ended before `t`.
    pub fn prune(&mut self, t: u64) {
        while self.buf.front().is_some_and(|e| e.end_ns < t) {
            self.buf.pop_front();
        }
    }
}

/// A rank that keeps making the others wait.
#[derive(Clone, Debug, PartialEq)]
pub struct StragglerVerdict {
    pub member: u32,
    /// Instances it was late in (arrived last, by at least the lag threshold), of `total` in
    /// the window.
    pub late_count: u32,
    pub total: u32,
    /// Instances in which some rank was at least half as late as this one's median lag:
    /// (this one's, everyone's).
    pub as_late: (u32, u32),
    /// Chance of a rank being that late in that many of them or more if which rank is late
    /// were luck (every member equally likely).
    pub chance: f64,
    /// Median lag over the instances it was late in: how late it is when it is late.
    pub median_lag_ns: u64,
    /// Lag from which an instance counted as late.
    pub threshold_ns: u64,
    /// Time the other members waited for it in those instances, summed.
    pub waited_ns: u64,
    /// Its share of the waiting caused by every late instance in the window.
    pub blame: f64,
    /// Share of the other members' time in the window spent waiting for it (every instance
    /// it arrived last in counts), and the span that share is of.
    pub idle_ratio: f64,
    /// Share of their time its late instances cost the others.
    pub cost: f64,
    pub span_ns: u64,
    pub window: (u64, u64),
    /// The most common op among the instances it was late in.
    pub op: u16,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub straggler: Option<StragglerVerdict>,
    /// A rank that would be the straggler but for the job's noise or for what it costs:
    /// its verdict at the lag threshold and why it is not named (said in a note).
    pub near_miss: Option<(StragglerVerdict, NotNamed)>,
}

/// Why a rank late often enough, and not by luck, is not named.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NotNamed {
    /// Its lag is under the job's noise floor (the value).
    WithinNoise(u64),
    /// Its late instances cost the others less than `straggler_min_cost` of their time.
    Immaterial,
}

/// Per member: instances late in, waiting caused by them, waiting caused by every
/// instance it arrived last in.
#[derive(Clone, Copy, Default)]
struct Tally {
    late: u32,
    caused: u64,
    last_waited: u64,
    /// Instances it arrived last in late, but within the job's noise (the lag threshold
    /// up to the noise floor): how often the noise lands on it.
    last_noise: u32,
}

/// Evaluates the window ending at `now` for a lane of `members` members whose typical period
/// (median time between consecutive instances) is `period_ns` (0 = not known yet: no
/// verdict before it is).
///
/// An instance is *late* for its last arrival when the lag reaches
/// `cfg.straggler_lag_threshold(period_ns)`. Each member is charged the waiting its late
/// instances caused, and the member charged most is the straggler when
/// - it was late often enough to be a pattern (`straggler_min_late`, among at least
///   `straggler_min_instances` finished instances);
/// - its lateness is not luck: were no rank slow, the rank arriving that late would be the
///   one the job's noise makes late, as often as the noise lands on it. That base rate is
///   measured on the instances late within the noise (the lag threshold up to the noise
///   floor): noise does not land evenly (the last rank a root releases, CPU placement,
///   NUMA distance), and a rank last by a hair in every normal step tells nothing about
///   being late by much. Among the instances in which some rank was about as late as this
///   one typically is (at least half its median lag), its count follows a binomial law of
///   that base rate under the hypothesis of luck; the chance of that count or more must be
///   at most `straggler_max_chance`. This holds whatever the rank count and
///   however rarely the rank is late: a rank late in 1 of 20 steps by 50 ms is as clear as
///   one late in every step once it has been that late a few times and nobody else has.
///   Comparing like with like (lags of its size) keeps smaller, more frequent lateness of
///   another rank (noise, a root that always returns last) from hiding it;
/// - it caused most of the waiting on late ranks (`straggler_min_blame`);
/// - and that waiting is a material share of the others' time (`straggler_min_cost`).
///
/// Ranking by waiting caused, not by how often a rank is last nor by its median lag over
/// every instance, names the rank that costs the job time: a rank 20 ms late every 5th step,
/// not a rank that is last by a hair every step.
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
    // Until the period is known, what counts as late is not known either.
    if total < cfg.straggler_min_instances.max(1) || members < 2 || period_ns == 0 {
        return Evaluation::default();
    }
    let threshold = cfg.straggler_lag_threshold(period_ns);
    // Who costs the others the most, then whether that stands out from the job's noise.
    let Some(m) = costliest(ring, members, threshold) else {
        return Evaluation::default();
    };
    let floor = threshold.max(noise_floor(ring, m, cfg, scratch));
    let straggler = verdict_at(ring, m, members, (threshold, floor), cfg, scratch)
        .filter(|v| v.cost >= cfg.straggler_min_cost);
    let near_miss = match straggler {
        Some(_) => None,
        None => verdict_at(ring, m, members, (threshold, threshold), cfg, scratch).and_then(|v| {
            if v.median_lag_ns < floor {
                Some((v, NotNamed::WithinNoise(floor)))
            } else if v.cost < cfg.straggler_min_cost {
                Some((v, NotNamed::Immaterial))
            } else {
                None
            }
        }),
    };
    Evaluation {
        straggler,
        near_miss,
    }
}

/// The member whose late instances (lag at least `threshold`) caused the most waiting
/// (lowest index on ties), if any did.
fn costliest(ring: &EvidenceRing, members: usize, threshold: u64) -> Option<usize> {
    let mut caused = vec![0u64; members];
    for e in ring.iter().filter(|e| e.lag_ns >= threshold) {
        if let Some(c) = caused.get_mut(e.late as usize) {
            *c += e.waited_ns;
        }
    }
    caused
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .max_by_key(|(i, c)| (**c, usize::MAX - i))
        .map(|(i, _)| i)
}

/// How late a rank must be to stand out from the job's own arrival noise:
/// `straggler_noise_factor` times the 95th percentile of the lags of the instances some
/// other rank than `m` was last in (0 with fewer than `straggler_noise_min_instances` of
/// them). On a loaded host every rank is late by a millisecond or more now and then, most
/// often the one most exposed to the contention; lateness within that spread is noise,
/// whichever rank it lands on, and not a rank to page someone about.
fn noise_floor(ring: &EvidenceRing, m: usize, cfg: &Config, scratch: &mut Vec<u64>) -> u64 {
    scratch.clear();
    scratch.extend(
        ring.iter()
            .filter(|e| e.late as usize != m)
            .map(|e| e.lag_ns),
    );
    if (scratch.len() as u32) < cfg.straggler_noise_min_instances.max(1) {
        return 0;
    }
    scratch.sort_unstable();
    let p95 = scratch[(scratch.len() * 95 / 100).min(scratch.len() - 1)];
    (p95 as f64 * cfg.straggler_noise_factor) as u64
}

/// Member `m`'s verdict with `floor` as the lag that makes an instance late (and
/// `threshold` as the lag from which an instance is late at all, the noise between them):
/// its late instances, their median lag, whether that many that late are more than luck,
/// and its share of the waiting.
fn verdict_at(
    ring: &EvidenceRing,
    m: usize,
    members: usize,
    (threshold, floor): (u64, u64),
    cfg: &Config,
    scratch: &mut Vec<u64>,
) -> Option<StragglerVerdict> {
    let mut tally = vec![Tally::default(); members];
    let (mut start, mut end, mut others_sum, mut noise) = (u64::MAX, 0u64, 0u64, 0u32);
    for e in ring.iter() {
        if let Some(t) = tally.get_mut(e.late as usize) {
            t.last_waited += e.waited_ns;
            if e.lag_ns >= floor {
                t.late += 1;
                t.caused += e.waited_ns;
            } else if e.lag_ns >= threshold {
                t.last_noise += 1;
                noise += 1;
            }
        }
        start = start.min(e.start_ns);
        end = end.max(e.end_ns);
        others_sum += e.others as u64;
    }
    let mine = tally[m];
    let all: u64 = tally.iter().map(|t| t.caused).sum();
    let blame = mine.caused as f64 / all.max(1) as f64;
    let span = end.saturating_sub(start).max(1);
    let avg_others = (others_sum as f64 / ring.len().max(1) as f64).max(1.0);
    let cost = mine.caused as f64 / (avg_others * span as f64);
    if mine.late < cfg.straggler_min_late || blame < cfg.straggler_min_blame {
        return None;
    }
    let lags_from = |at: u64, scratch: &mut Vec<u64>| {
        scratch.clear();
        let mine = ring
            .iter()
            .filter(|e| e.late as usize == m && e.lag_ns >= at);
        scratch.extend(mine.map(|e| e.lag_ns));
        median(scratch)
    };
    // Not luck: among the instances in which some rank was about as late as this one
    // typically is (half its median lag or more), how many were its own, against how
    // often the job's noise makes it the late one (Laplace smoothed: 1/members when there
    // is no noise to go by).
    let big = floor.max(lags_from(floor, scratch) / 2);
    let (mut k, mut n) = (0u32, 0u32);
    for e in ring.iter().filter(|e| e.lag_ns >= big) {
        n += 1;
        k += u32::from(e.late as usize == m);
    }
    let base = (mine.last_noise as f64 + 1.0) / (noise as f64 + members as f64);
    let chance = binomial_tail(n, k, base);
    if k < cfg.straggler_min_late || chance > cfg.straggler_max_chance {
        return None;
    }
    let late: Vec<&EvidenceEntry> = ring
        .iter()
        .filter(|e| e.late as usize == m && e.lag_ns >= floor)
        .collect();
    Some(StragglerVerdict {
        member: m as u32,
        late_count: mine.late,
        total: ring.len() as u32,
        as_late: (k, n),
        chance,
        // How late it is when it is late: over the instances as late as it typically is.
        median_lag_ns: lags_from(big, scratch),
        threshold_ns: floor,
        waited_ns: mine.caused,
        blame,
        idle_ratio: mine.last_waited as f64 / (avg_others * span as f64),
        cost,
        span_ns: span,
        window: (
            late.iter().map(|e| e.start_ns).min().unwrap_or(start),
            late.iter().map(|e| e.end_ns).max().unwrap_or(end),
        ),
        op: most_common_op(&late),
    })
}

/// The most common op among `entries` (lowest op on ties).
fn most_common_op(entries: &[&EvidenceEntry]) -> u16 {
    let mut ops: Vec<(u16, u32)> = Vec::new();
    for e in entries {
        match ops.iter_mut().find(|(o, _)| *o == e.op) {
            Some((_, c)) => *c += 1,
            None => ops.push((e.op, 1)),
        }
    }
    ops.iter()
        .max_by_key(|(o, c)| (*c, u16::MAX - o))
        .map(|(o, _)| *o)
        .unwrap_or(0)
}

/// P(X >= k) for X ~ Binomial(n, p), summed in log space (n is at most the evidence ring's
/// size, a thousand or so; a statistics crate for one tail sum is not worth its weight).
pub fn binomial_tail(n: u32, k: u32, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    // ln C(n, i) built up from ln C(n, 0) = 0.
    let mut ln_c = 0.0f64;
    let mut sum = 0.0f64;
    for i in 0..=n {
        if i > 0 {
            ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        if i >= k {
            sum += (ln_c + i as f64 * lp + (n - i) as f64 * lq).exp();
        }
    }
    sum.min(1.0)
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
            after_ns: 0,
        }
    }

    fn eval(r: &mut EvidenceRing, now: u64, period: u64) -> Option<StragglerVerdict> {
        evaluate(r, now, 4, period, &Config::default(), &mut Vec::new()).straggler
    }

    #[test]
    fn names_the_rank_last_most_often() {
        let mut r = EvidenceRing::new(100);
        for s in 0..50 {
            let late = if s % 10 == 0 { 1 } else { 2 };
            r.push(entry(s, late, 5_000_000));
        }
        let v = eval(&mut r, 500_000_000, 10_000_000).expect("straggler");
        assert_eq!(
            (v.member, v.late_count, v.total, v.median_lag_ns),
            (2, 45, 50, 5_000_000)
        );
        assert_eq!(v.waited_ns, 45 * 15_000_000);
        assert!((v.blame - 0.9).abs() < 1e-9, "{}", v.blame);
        // Others idle 3*5 ms of every 10 ms step, 45 of 50 steps blamed on rank 2.
        assert!((0.4..0.5).contains(&v.idle_ratio), "{}", v.idle_ratio);
    }

    #[test]
    fn no_verdict_on_rotating_or_small_lags() {
        let mut r = EvidenceRing::new(100);
        for s in 0..50 {
            r.push(entry(s, (s % 4) as u32, 5_000_000));
        }
        assert_eq!(eval(&mut r, 500_000_000, 10_000_000), None);
        let mut r = EvidenceRing::new(100);
        for s in 0..50 {
            r.push(entry(s, 1, 50_000));
        }
        assert_eq!(eval(&mut r, 500_000_000, 10_000_000), None);
    }

    #[test]
    fn waiting_caused_beats_being_last_by_a_hair() {
        // Rank 0 is last by 2 ms in 4 of every 5 steps of 200 ms (the root of a star
        // returning late); rank 2 is 20 ms late every 5th step.
        let mut r = EvidenceRing::new(1000);
        for s in 0..100 {
            let (late, lag) = if s % 5 == 4 {
                (2, 20_000_000)
            } else {
                (0, 2_000_000)
            };
            r.push(entry(s, late, lag));
        }
        let v = eval(&mut r, 2_000_000_000, 200_000_000).expect("straggler");
        assert_eq!(
            (v.member, v.late_count, v.median_lag_ns),
            (2, 20, 20_000_000)
        );
        assert_eq!(v.threshold_ns, 10_000_000);
        // The same lags on a lane whose steps take 20 ms: rank 0's 2 ms count as late too,
        // and rank 2 still caused most of the waiting. Rank 0's 2 ms are the job's arrival
        // noise then (its 95th percentile, times 3: 6 ms), which rank 2's 20 ms stand out
        // from; every instance as late as that is rank 2's.
        let v = eval(&mut r, 2_000_000_000, 20_000_000).expect("straggler");
        assert_eq!((v.member, v.late_count, v.as_late), (2, 20, (20, 20)));
        assert_eq!((v.threshold_ns, v.blame), (6_000_000, 1.0));
    }

    #[test]
    fn a_few_late_instances_are_not_a_straggler() {
        let mut r = EvidenceRing::new(1000);
        for s in 0..100 {
            let (late, lag) = if s == 40 || s == 70 {
                (3, 30_000_000)
            } else {
                ((s % 4) as u32, 100_000)
            };
            r.push(entry(s, late, lag));
        }
        assert_eq!(eval(&mut r, 2_000_000_000, 10_000_000), None);
    }

    /// A rank late in 1 of 20 steps by 50 ms, with every rank late by a couple of
    /// milliseconds now and then (noise): named once its late instances stand out from
    /// luck, with the lag it has when it is late.
    #[test]
    fn a_rare_large_straggler_is_named_by_the_waiting_it_causes() {
        let mut r = EvidenceRing::new(1000);
        let mut named_at = None;
        for s in 0..400u64 {
            let (late, lag) = if s % 20 == 19 {
                (1, 50_000_000)
            } else if s % 7 == 3 {
                (((s / 7) % 4) as u32, 1_500_000)
            } else {
                (((s * 7) % 4) as u32, 100_000)
            };
            r.push(entry(s, late, lag));
            if named_at.is_none() && eval(&mut r, s * 10_000_000, 10_000_000).is_some() {
                named_at = Some(s);
            }
        }
        let v = eval(&mut r, 4_000_000_000, 10_000_000).expect("straggler");
        assert_eq!(
            (v.member, v.as_late, v.median_lag_ns),
            (1, (20, 20), 50_000_000)
        );
        assert!(v.chance < 1e-3 && v.blame > 0.9, "{v:?}");
        // 5 late instances of its own among the noise's are enough, not 15% of the steps.
        let at = named_at.expect("named");
        assert!(at < 140, "named only at step {at}");
    }

    /// Every rank is late by up to 2 ms now and then (a loaded host), one of them somewhat
    /// more often: within the job's noise, nobody is named. A rank 3 ms late every 10th step
    /// on top of that noise is not named either (within 3 times its spread), 10 ms late is.
    #[test]
    fn lateness_within_the_jobs_noise_is_nobodys_fault() {
        let noisy = |s: u64, extra: Option<(u32, u64)>| -> (u32, u64) {
            if let Some((r, lag)) = extra.filter(|_| s % 10 == 9) {
                return (r, lag);
            }
            // Rank 3 is last twice as often, and late by 1-2 ms in 1 of 8 steps.
            let r = [0, 1, 2, 3, 3][(s * 7 % 5) as usize] as u32;
            let lag = if s % 8 == 3 {
                1_000_000 + (s * 7919 % 1000) * 1000
            } else {
                200_000
            };
            (r, lag)
        };
        for (extra, named) in [
            (None, None),
            (Some((1, 3_000_000)), None),
            (Some((1, 10_000_000)), Some(1)),
        ] {
            let mut r = EvidenceRing::new(1000);
            for s in 0..300 {
                let (late, lag) = noisy(s, extra);
                r.push(entry(s, late, lag));
            }
            let v = eval(&mut r, 3_000_000_000, 10_000_000);
            assert_eq!(v.as_ref().map(|v| v.member), named, "{extra:?}: {v:?}");
        }
    }

    /// Two ranks, rank 0 last by a hair in every step (a root that returns last) and 5 ms
    /// late in every other one: being last anyway says nothing about being late by much.
    #[test]
    fn a_rank_last_by_a_hair_anyway_is_named_when_it_is_late() {
        let mut r = EvidenceRing::new(1000);
        for s in 0..100 {
            let lag = if s % 2 == 1 { 5_000_000 } else { 100_000 };
            r.push(entry(s, 0, lag));
        }
        let v = evaluate(
            &mut r,
            1_000_000_000,
            2,
            10_000_000,
            &Config::default(),
            &mut Vec::new(),
        )
        .straggler
        .expect("straggler");
        assert_eq!(
            (v.member, v.as_late, v.median_lag_ns),
            (0, (50, 50), 5_000_000)
        );
    }

    #[test]
    fn binomial_tails() {
        assert!((binomial_tail(10, 10, 0.5) - 1.0 / 1024.0).abs() < 1e-12);
        assert!((binomial_tail(4, 1, 0.25) - (1.0 - 0.75f64.powi(4))).abs() < 1e-12);
        assert_eq!(binomial_tail(5, 0, 0.3), 1.0);
        assert_eq!(binomial_tail(5, 6, 0.3), 0.0);
        let p = binomial_tail(1000, 300, 0.25);
        assert!(p > 1e-5 && p < 1e-3, "{p}");
    }
}
