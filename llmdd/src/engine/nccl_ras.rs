//! Findings from NCCL's own RAS service (NCCL 2.24 and later): a rank RAS cannot reach, or
//! one whose collective count stays behind its peers'. RAS counts the collectives each rank
//! has started, per communicator and function: the ranks with the highest count have started
//! an operation that a rank with a lower count has not, so they wait for it. A count read
//! while ranks are between calls differs by one for a moment in a healthy job, so a count
//! gap is raised only when the same counts are seen again at least
//! `stall_at_attach_confirm` later; a rank RAS reports unresponsive or dead has already been
//! timed out by RAS itself and is raised at once. The queries are done outside the engine
//! (`crate::ras`); this is plain data in, findings out.

use super::{
    findings::{wording::describe_member, Draft, FindingKey},
    util::{fmt_ns, mix, FastMap},
    Culprit, Engine, FindingKind, Magnitude, Severity,
};

/// What RAS says about one rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RasWhat {
    /// RAS could not reach its process.
    Unresponsive,
    /// RAS considers its process dead.
    Dead,
    /// It has started `count` `op` collectives; every rank at the top has started `ahead`.
    Behind { op: String, count: u64, ahead: u64 },
}

/// One rank RAS names, with its communicator as RAS identifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RasSight {
    /// RAS's communicator hash.
    pub comm: String,
    pub nranks: u32,
    pub rank: u32,
    pub pid: u32,
    pub host: String,
    pub what: RasWhat,
    /// Ranks at the top count (for Behind) or answering (otherwise).
    pub peers: u32,
}

#[derive(Default)]
pub struct RasState {
    /// (comm, rank) -> what was seen and since when.
    seen: FastMap<(String, u32), (RasWhat, u64)>,
    raised: FastMap<(String, u32), FindingKey>,
}

impl Engine {
    /// What NCCL's RAS service answered at `at_ns` (CLOCK_MONOTONIC): every rank it names.
    pub fn ras_look(&mut self, at_ns: u64, sights: Vec<RasSight>) {
        let confirm = self.cfg.stall_at_attach_confirm_ns;
        let keys: Vec<(String, u32)> = sights.iter().map(|s| (s.comm.clone(), s.rank)).collect();
        // Ranks RAS no longer names: resolved.
        let gone: Vec<(String, u32)> = self
            .ras
            .seen
            .keys()
            .filter(|k| !keys.contains(k))
            .cloned()
            .collect();
        for k in gone {
            self.ras.seen.remove(&k);
            if let Some(key) = self.ras.raised.remove(&k) {
                self.findings.deactivate(&key, at_ns);
            }
        }
        for s in sights {
            let k = (s.comm.clone(), s.rank);
            let since = match self.ras.seen.get(&k) {
                Some((w, t)) if *w == s.what => *t,
                _ => {
                    self.ras.seen.insert(k.clone(), (s.what.clone(), at_ns));
                    at_ns
                }
            };
            let confirmed =
                !matches!(s.what, RasWhat::Behind { .. }) || at_ns.saturating_sub(since) >= confirm;
            if confirmed {
                let key = FindingKey {
                    kind: if s.what == RasWhat::Dead {
                        FindingKind::MemberLeft
                    } else {
                        FindingKind::Stall
                    },
                    scope: mix(&s.comm.bytes().map(u64::from).collect::<Vec<_>>()),
                    culprit: 0x7_0000_0000 | s.rank as u64,
                };
                let d = self.ras_draft(&s, since, at_ns);
                self.ras.raised.insert(k, key);
                self.raise(key, d);
            }
        }
    }

    fn ras_draft(&self, s: &RasSight, since: u64, now: u64) -> Draft {
        let proc = self.procs.find_live(s.pid);
        let host = proc
            .and_then(|p| self.procs.host(p))
            .or(Some(s.host.as_str()));
        let who = describe_member(s.rank, s.pid, host);
        let comm = format!(
            "communicator {} ({} ranks, as NCCL's RAS service names it)",
            s.comm, s.nranks
        );
        let (evidence, suggestion, magnitude) = match &s.what {
            RasWhat::Behind { op, count, ahead } => (
                format!(
                    "NCCL's RAS service counts {count} {op} started by {who} of {comm} and \
                     {ahead} by {} other rank(s), unchanged for at least {}: they have started \
                     {} it has not, and wait for it",
                    s.peers,
                    fmt_ns(now.saturating_sub(since)),
                    ahead - count,
                ),
                "Look at what that rank is doing (`py-spy dump --pid`, its frames in llmdd's thread view): it skipped or has not reached the collective its peers are in.".to_string(),
                Magnitude {
                    name: "collectives_behind",
                    value: (ahead - count) as f64,
                },
            ),
            RasWhat::Unresponsive | RasWhat::Dead => {
                let state = if s.what == RasWhat::Dead {
                    "considers it dead"
                } else {
                    "cannot reach it"
                };
                (
                    format!(
                        "NCCL's RAS service {state}: {who} of {comm}, while {} rank(s) answer",
                        s.peers
                    ),
                    "Check that process and its node (alive? stopped? OOM-killed? network partitioned?): its peers cannot finish a collective without it.".to_string(),
                    Magnitude {
                        name: "ras_missing_ranks",
                        value: 1.0,
                    },
                )
            }
        };
        Draft {
            severity: Severity::Critical,
            culprit: Culprit {
                pid: Some(s.pid),
                rank: Some(s.rank),
                host: host.map(str::to_string),
                ..Culprit::default()
            },
            evidence,
            source: "nccl ras",
            suggestion,
            window: (since, now),
            magnitude,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Config;

    const S: u64 = 1_000_000_000;

    fn behind(count: u64) -> RasSight {
        RasSight {
            comm: "c0ffee".into(),
            nranks: 4,
            rank: 2,
            pid: 102,
            host: "10.0.0.2".into(),
            what: RasWhat::Behind {
                op: "AllReduce".into(),
                count,
                ahead: 812,
            },
            peers: 3,
        }
    }

    fn active(e: &Engine) -> Vec<&crate::engine::Finding> {
        e.findings().iter().filter(|f| f.active).collect()
    }

    #[test]
    fn a_count_gap_is_named_once_it_persists_and_closes_when_gone() {
        let mut e = Engine::new(Config::default());
        e.ras_look(10 * S, vec![behind(811)]);
        assert!(active(&e).is_empty(), "one look at counts proves nothing");
        // The rank moved on (811 -> 812 would remove it); a new gap restarts the clock.
        e.ras_look(11 * S, vec![behind(810)]);
        assert!(active(&e).is_empty());
        e.ras_look(12 * S, vec![behind(810)]);
        let f = active(&e);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, FindingKind::Stall);
        assert_eq!((f[0].culprit.pid, f[0].culprit.rank), (Some(102), Some(2)));
        assert_eq!(f[0].magnitude.value, 2.0);
        assert!(f[0].evidence.contains("810 AllReduce"), "{}", f[0].evidence);
        e.ras_look(13 * S, Vec::new());
        assert!(active(&e).is_empty(), "resolved once RAS names nobody");
    }

    #[test]
    fn a_rank_ras_cannot_reach_is_named_at_once() {
        let mut e = Engine::new(Config::default());
        let dead = RasSight {
            what: RasWhat::Dead,
            ..behind(0)
        };
        e.ras_look(10 * S, vec![dead]);
        let f = active(&e);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, FindingKind::MemberLeft);
        assert!(
            f[0].evidence.contains("considers it dead"),
            "{}",
            f[0].evidence
        );
    }
}
