//! Lost events: the BPF drop counters as they are read. Each report is a window of time in
//! which arrivals may be missing, so lanes touched by it are re-checked before their
//! evidence counts again, and findings whose window overlaps it say so.

use super::{
    findings::{wording, FindingKey, FindingKind},
    Engine,
};

/// Lost-event windows remembered for annotating findings.
pub(super) const MAX_LOST_WINDOWS: usize = 256;

/// Events reported lost between two reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LostWindow {
    pub start: u64,
    pub end: u64,
    pub count: u64,
}

impl Engine {
    /// Reports `count` events lost (BPF drop counters) up to `at_ns`; the window is since the
    /// previous report (or the first event). Findings whose window overlaps say so, and no
    /// stall is raised from an arrival that may have been lost.
    pub fn report_lost(&mut self, at_ns: u64, count: u64) {
        let start = self
            .last_lost_report
            .or(self.first_ns)
            .unwrap_or(0)
            .min(at_ns);
        self.last_lost_report = Some(at_ns);
        if count == 0 {
            return;
        }
        self.lost_total += count;
        if self.lost.len() >= MAX_LOST_WINDOWS {
            self.lost.pop_front();
        }
        self.lost.push_back(LostWindow {
            start,
            end: at_ns,
            count,
        });
        for l in &mut self.lanes {
            if l.last_ns >= start || l.open_instances() > 0 {
                l.mark_unverified(at_ns);
            }
        }
        for f in &mut self.findings.list {
            if f.kind != FindingKind::LostEvents
                && f.window_start_ns <= at_ns
                && f.window_end_ns >= start
            {
                f.lost_events_in_window += count;
            }
        }
        let d = wording::lost_events(self.lost_total, count, (start, at_ns), self.lost.len());
        let key = FindingKey {
            kind: FindingKind::LostEvents,
            scope: 0,
            culprit: 0,
        };
        let t = self.t.max(at_ns);
        self.findings.upsert(key, d, t, self.cfg.max_findings);
    }

    /// Events reported lost in windows overlapping `window`.
    pub(super) fn lost_in(&self, window: (u64, u64)) -> u64 {
        self.lost
            .iter()
            .filter(|w| w.start <= window.1 && w.end >= window.0)
            .map(|w| w.count)
            .sum()
    }
}
