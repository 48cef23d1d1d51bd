//! Findings: what the engine concludes, one per culprit + kind + scope, updated in place as the
//! evidence changes (never duplicated). Each carries human evidence with numbers, a one-line
//! suggestion, the time window it covers and a machine-readable magnitude.

pub mod wording;

use serde::Serialize;

use super::util::FastMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// One rank (or pipeline stage) keeps arriving late; the others wait for it.
    Straggler,
    /// Some ranks entered an instance and others have not, for longer than the threshold.
    Stall,
    /// Idle time: pipeline stages waiting for upstream, data-parallel ranks waiting for the
    /// busy one, gaps in GPU submission.
    Bubble,
    /// Allocation failures (out of memory).
    MemoryPressure,
    /// Retransmits or resets on a connection.
    Link,
    /// Events were lost; conclusions in that window may be incomplete.
    LostEvents,
    /// A member process of a communicator exited (or destroyed/aborted its communicator).
    MemberLeft,
    /// KV-cache transfers (NIXL) from one remote agent failing, stuck or slower than from
    /// every other agent.
    KvTransfer,
}

impl FindingKind {
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::Straggler => "straggler",
            FindingKind::Stall => "stall",
            FindingKind::Bubble => "bubble",
            FindingKind::MemoryPressure => "memory_pressure",
            FindingKind::Link => "link",
            FindingKind::LostEvents => "lost_events",
            FindingKind::MemberLeft => "member_left",
            FindingKind::KvTransfer => "kv_transfer",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// Who or what the finding points at. Fields that do not apply are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Culprit {
    pub pid: Option<u32>,
    pub rank: Option<u32>,
    /// Communicator (or graph group) id.
    pub comm: Option<u64>,
    pub host: Option<String>,
    /// "10.0.0.1:5000 -> 10.0.0.2:41234".
    pub connection: Option<String>,
    /// A remote NIXL agent ("agent 3f2a9c1e…": the first 8 bytes of its name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// A machine-readable size of the problem.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Magnitude {
    /// What the value measures, e.g. "median_lag_ns", "stalled_ns", "bubble_ratio".
    pub name: &'static str,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// Stable id for views (assigned when first raised).
    pub id: u64,
    pub kind: FindingKind,
    pub severity: Severity,
    pub culprit: Culprit,
    /// Human evidence with numbers.
    pub evidence: String,
    /// Which evidence the conclusion rests on ("collective instances", "graph-launch steps",
    /// "send/recv transfers", "socket events", ...).
    pub source: &'static str,
    pub suggestion: String,
    /// Event-time window the evidence covers.
    pub window_start_ns: u64,
    pub window_end_ns: u64,
    pub magnitude: Magnitude,
    /// Event time the finding was first raised and last updated.
    pub raised_ns: u64,
    pub updated_ns: u64,
    /// Still going on (a stall not yet resolved, a straggler still seen in the window).
    pub active: bool,
    pub updates: u64,
    /// Events reported lost in the finding's window (its conclusions may be incomplete).
    pub lost_events_in_window: u64,
}

/// Identity of a finding: kind, scope (communicator / group / process / connection) and culprit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FindingKey {
    pub kind: FindingKind,
    pub scope: u64,
    pub culprit: u64,
}

/// The content of a finding as a detector produces it.
pub struct Draft {
    pub severity: Severity,
    pub culprit: Culprit,
    pub evidence: String,
    pub source: &'static str,
    pub suggestion: String,
    pub window: (u64, u64),
    pub magnitude: Magnitude,
}

#[derive(Default)]
pub struct FindingBook {
    pub list: Vec<Finding>,
    index: FastMap<FindingKey, usize>,
    keys: Vec<FindingKey>,
    next_id: u64,
    pub evicted: u64,
}

impl FindingBook {
    /// Raises or updates the finding for `key`.
    pub fn upsert(&mut self, key: FindingKey, d: Draft, now_ns: u64, cap: usize) -> &mut Finding {
        if let Some(&i) = self.index.get(&key) {
            let f = &mut self.list[i];
            f.severity = d.severity;
            f.culprit = d.culprit;
            f.evidence = d.evidence;
            f.source = d.source;
            f.suggestion = d.suggestion;
            f.window_start_ns = f.window_start_ns.min(d.window.0);
            f.window_end_ns = f.window_end_ns.max(d.window.1);
            f.magnitude = d.magnitude;
            f.updated_ns = now_ns;
            f.active = true;
            f.updates += 1;
            return &mut self.list[i];
        }
        if self.list.len() >= cap.max(1) {
            self.evict_one();
        }
        self.next_id += 1;
        self.list.push(Finding {
            id: self.next_id,
            kind: key.kind,
            severity: d.severity,
            culprit: d.culprit,
            evidence: d.evidence,
            source: d.source,
            suggestion: d.suggestion,
            window_start_ns: d.window.0,
            window_end_ns: d.window.1,
            magnitude: d.magnitude,
            raised_ns: now_ns,
            updated_ns: now_ns,
            active: true,
            updates: 0,
            lost_events_in_window: 0,
        });
        self.keys.push(key);
        let i = self.list.len() - 1;
        self.index.insert(key, i);
        &mut self.list[i]
    }

    /// The keys of the findings of `kind`.
    pub fn keys_of(&self, kind: FindingKind) -> Vec<FindingKey> {
        self.keys
            .iter()
            .filter(|k| k.kind == kind)
            .copied()
            .collect()
    }

    pub fn get_mut(&mut self, key: &FindingKey) -> Option<&mut Finding> {
        self.index.get(key).map(|&i| &mut self.list[i])
    }

    #[cfg(test)]
    pub fn get(&self, key: &FindingKey) -> Option<&Finding> {
        self.index.get(key).map(|&i| &self.list[i])
    }

    /// Withdraws a finding that turned out to be none (it is gone from the record).
    pub fn remove(&mut self, key: &FindingKey) -> bool {
        let Some(i) = self.index.remove(key) else {
            return false;
        };
        self.list.swap_remove(i);
        self.keys.swap_remove(i);
        if i < self.list.len() {
            self.index.insert(self.keys[i], i);
        }
        true
    }

    /// Marks a finding no longer going on (kept for the record).
    pub fn deactivate(&mut self, key: &FindingKey, now_ns: u64) {
        if let Some(f) = self.get_mut(key) {
            if f.active {
                f.active = false;
                f.updated_ns = now_ns;
            }
        }
    }

    fn evict_one(&mut self) {
        // Oldest inactive first, else the oldest.
        let victim = self
            .list
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.active)
            .min_by_key(|(_, f)| f.updated_ns)
            .or_else(|| {
                self.list
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, f)| f.updated_ns)
            })
            .map(|(i, _)| i);
        if let Some(i) = victim {
            self.list.swap_remove(i);
            let k = self.keys.swap_remove(i);
            self.index.remove(&k);
            if i < self.list.len() {
                self.index.insert(self.keys[i], i);
            }
            self.evicted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(ev: &str) -> Draft {
        Draft {
            severity: Severity::Warning,
            culprit: Culprit::default(),
            evidence: ev.into(),
            source: "test",
            suggestion: String::new(),
            window: (10, 20),
            magnitude: Magnitude {
                name: "x",
                value: 1.0,
            },
        }
    }

    #[test]
    fn upsert_updates_in_place_and_evicts_inactive_first() {
        let mut b = FindingBook::default();
        let k1 = FindingKey {
            kind: FindingKind::Stall,
            scope: 1,
            culprit: 2,
        };
        let k2 = FindingKey {
            kind: FindingKind::Straggler,
            scope: 1,
            culprit: 2,
        };
        b.upsert(k1, draft("a"), 5, 2);
        let id = b.upsert(k1, draft("b"), 6, 2).id;
        assert_eq!(b.list.len(), 1);
        assert_eq!(
            b.get(&k1).map(|f| (f.id, f.evidence.as_str(), f.updates)),
            Some((id, "b", 1))
        );
        b.upsert(k2, draft("c"), 7, 2);
        b.deactivate(&k1, 8);
        let k3 = FindingKey {
            kind: FindingKind::Link,
            scope: 3,
            culprit: 0,
        };
        b.upsert(k3, draft("d"), 9, 2);
        assert!(b.get(&k1).is_none());
        assert!(b.get(&k2).is_some() && b.get(&k3).is_some());
        assert_eq!(b.evicted, 1);
    }
}
