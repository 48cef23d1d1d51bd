//! Latency distributions over a rolling window: HdrHistograms cut into time slices, so that
//! the window moves by dropping whole old slices (a histogram cannot forget single values).
//! Percentiles merge the live slices on demand (views only).

use hdrhistogram::Histogram;
use serde::Serialize;

/// Values are nanoseconds (or other positive integers) up to this; larger ones are clamped.
const MAX_VALUE: u64 = 1_000_000_000_000;
/// Two significant digits: about 16 KiB of u32 counters per histogram (under 1% error).
const SIGFIG: u8 = 2;
/// One significant digit: about 2.5 KiB (about 6% error), for the per-rank distributions a
/// communicator keeps for each member (views only): a node with a thousand communicators of
/// eight ranks keeps tens of thousands of them.
const SIGFIG_COARSE: u8 = 1;

fn new_hist(sigfig: u8) -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_VALUE, sigfig).expect("static histogram bounds are valid")
}

/// Percentiles of one distribution.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Pctl {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// A histogram over the last `slices × slice_ns` of event time.
#[derive(Clone, Debug)]
pub struct RollingHist {
    slices: Vec<(u64, Histogram<u32>)>,
    slice_ns: u64,
    keep: usize,
    sigfig: u8,
    /// Values recorded ever (not just in the window).
    pub total: u64,
}

impl RollingHist {
    pub fn new(slice_ns: u64, keep: usize) -> RollingHist {
        RollingHist {
            slices: Vec::new(),
            slice_ns: slice_ns.max(1),
            keep: keep.max(1),
            sigfig: SIGFIG,
            total: 0,
        }
    }

    /// As [`RollingHist::new`] with about 6% resolution and a sixth of the memory.
    pub fn coarse(slice_ns: u64, keep: usize) -> RollingHist {
        RollingHist {
            sigfig: SIGFIG_COARSE,
            ..RollingHist::new(slice_ns, keep)
        }
    }

    #[inline]
    pub fn record(&mut self, t_ns: u64, v: u64) {
        let start = t_ns - t_ns % self.slice_ns;
        self.total += 1;
        let v = v.clamp(1, MAX_VALUE);
        if let Some((s, h)) = self.slices.last_mut() {
            if *s == start {
                h.saturating_record(v);
                return;
            }
            if start < *s {
                // Out of order by more than a slice: put it in the slice it belongs to, if kept.
                if let Some((_, h)) = self.slices.iter_mut().find(|(s, _)| *s == start) {
                    h.saturating_record(v);
                }
                return;
            }
        }
        // New slice: reuse the oldest histogram's memory when the ring is full.
        let mut h = if self.slices.len() >= self.keep {
            let (_, mut h) = self.slices.remove(0);
            h.reset();
            h
        } else {
            new_hist(self.sigfig)
        };
        h.saturating_record(v);
        self.slices.push((start, h));
    }

    /// Percentiles over the slices that overlap `[now - window, now]`.
    pub fn pctl(&self, now_ns: u64) -> Pctl {
        let horizon = now_ns.saturating_sub(self.slice_ns * self.keep as u64);
        let mut merged: Option<Histogram<u32>> = None;
        for (s, h) in &self.slices {
            if s + self.slice_ns <= horizon {
                continue;
            }
            match &mut merged {
                None => merged = Some(h.clone()),
                Some(m) => {
                    let _ = m.add(h);
                }
            }
        }
        match merged {
            None => Pctl::default(),
            Some(m) if m.is_empty() => Pctl::default(),
            // The middle of each quantile's bucket, not its top: half the resolution's error
            // either way instead of all of it upwards.
            Some(m) => Pctl {
                count: m.len(),
                p50: m.median_equivalent(m.value_at_quantile(0.5)),
                p90: m.median_equivalent(m.value_at_quantile(0.9)),
                p99: m.median_equivalent(m.value_at_quantile(0.99)),
                max: m.max(),
            },
        }
    }
}

/// A sum over a rolling window (bytes, waited time), by slices.
#[derive(Clone, Debug)]
pub struct RollingSum {
    slices: Vec<(u64, u64)>,
    slice_ns: u64,
    keep: usize,
}

impl RollingSum {
    pub fn new(slice_ns: u64, keep: usize) -> RollingSum {
        RollingSum {
            slices: Vec::new(),
            slice_ns: slice_ns.max(1),
            keep: keep.max(1),
        }
    }

    #[inline]
    pub fn add(&mut self, t_ns: u64, v: u64) {
        let start = t_ns - t_ns % self.slice_ns;
        match self.slices.last_mut() {
            Some((s, sum)) if *s == start => *sum += v,
            Some((s, _)) if start < *s => {
                if let Some((_, sum)) = self.slices.iter_mut().find(|(s, _)| *s == start) {
                    *sum += v;
                }
            }
            _ => {
                if self.slices.len() >= self.keep {
                    self.slices.remove(0);
                }
                self.slices.push((start, v));
            }
        }
    }

    /// Sum over the window ending at `now`.
    pub fn sum(&self, now_ns: u64) -> u64 {
        let horizon = now_ns.saturating_sub(self.slice_ns * self.keep as u64);
        self.slices
            .iter()
            .filter(|(s, _)| s + self.slice_ns > horizon)
            .map(|(_, v)| v)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_the_window() {
        let mut h = RollingHist::new(1_000, 3);
        for i in 1..=100 {
            h.record(500, i * 1_000);
        }
        let p = h.pctl(600);
        assert_eq!(p.count, 100);
        assert!((49_000..=51_000).contains(&p.p50), "{p:?}");
        assert!((98_000..=100_500).contains(&p.p99), "{p:?}");
        // Three slices later the first one has left the window.
        h.record(3_500, 7);
        assert_eq!(h.pctl(3_600).count, 101);
        assert_eq!(h.pctl(4_100).count, 1);
        assert_eq!(h.total, 101);
    }

    #[test]
    fn ring_reuses_slices() {
        let mut h = RollingHist::new(10, 2);
        for t in 0..100 {
            h.record(t * 10, 1);
        }
        assert_eq!(h.slices.len(), 2);
        let mut s = RollingSum::new(10, 2);
        s.add(0, 5);
        s.add(15, 7);
        s.add(25, 1);
        assert_eq!(s.sum(29), 8);
    }
}
