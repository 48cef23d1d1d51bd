//! Events merged from several hosts are on one clock only as well as the hosts' clocks were
//! aligned (`merge::clock`): each host's offset is known to within an error, and a rank on
//! one host can look late, or on time, against ranks on another by up to the sum of the
//! two hosts' errors. A straggler whose peers run on other hosts is named as follows, and
//! its finding says the error:
//! - offsets from the data alone (the middle of what TCP or collective bounds allow): only
//!   when its lag, less the error, still reaches the lateness threshold (late however the
//!   clocks are offset within what the data allows); otherwise it is not named and the notes say why (a host
//!   late on every collective widens its own bounds, and the data alone cannot tell its
//!   lateness from its clock's offset);
//! - offsets from the recorders' wall clocks (kept within the data's bounds when there are
//!   some): named, the finding saying that its lag rests on the hosts' wall-clock
//!   synchronisation and how far the data alone could move it.
//!
//! On one host, or live, every rank shares one clock and nothing here applies.

use std::collections::BTreeMap;

use super::{findings::Draft, procs::ProcId, stragglers::StragglerVerdict, util, Engine};

/// How well one host's clock is aligned with the job's reference clock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostClock {
    /// The true offset is within this of the one used; `None`: not bounded (wall clock only).
    pub error_ns: Option<u64>,
    /// The offset is the recorders' wall clocks' (within the data's bounds, if any).
    pub wall_clock: bool,
}

/// Hosts' clocks, and the stragglers not named because of them.
#[derive(Default)]
pub(super) struct HostClocks {
    hosts: BTreeMap<String, HostClock>,
    /// (who, lag, error) of each straggler withheld, for the notes.
    withheld: Vec<(String, u64, u64)>,
}

/// Stragglers withheld remembered for the notes.
const MAX_WITHHELD: usize = 16;

impl Engine {
    /// The hosts' clock alignment of a merged job (`llmdd report` of several recordings).
    pub fn set_host_clocks(&mut self, hosts: impl IntoIterator<Item = (String, HostClock)>) {
        self.host_clocks.hosts = hosts.into_iter().collect();
    }

    /// The error bound between `culprit`'s host and its peers' hosts on `lane`: `None` when
    /// they all share one host (or nothing is known of the hosts), else the culprit host's
    /// error plus the largest of the others' (`None` inside: some error is unbounded), and
    /// whether any of those offsets is the wall clocks'.
    fn cross_host_error(&self, lane: u32, culprit: ProcId) -> Option<(Option<u64>, bool)> {
        if self.host_clocks.hosts.is_empty() {
            return None;
        }
        let host_of = |p: ProcId| self.procs.host(p).map(str::to_owned);
        let mine = host_of(culprit)?;
        let others: Vec<String> = self.lanes[lane as usize]
            .members
            .iter()
            .filter_map(|m| host_of(m.proc))
            .filter(|h| *h != mine)
            .collect();
        if others.is_empty() {
            return None;
        }
        let clock = |h: &str| self.host_clocks.hosts.get(h).cloned().unwrap_or_default();
        let err = |h: &str| clock(h).error_ns;
        let theirs = others.iter().map(|h| err(h)).collect::<Option<Vec<u64>>>();
        let error = err(&mine)
            .zip(theirs)
            .map(|(e, t)| e + t.into_iter().max().unwrap_or(0));
        let wall = std::iter::once(&mine)
            .chain(&others)
            .any(|h| clock(h).wall_clock);
        Some((error, wall))
    }

    /// Whether a straggler verdict may be raised given the hosts' clocks; when it may, the
    /// draft says how well they were aligned.
    pub(super) fn clock_check(
        &mut self,
        lane: u32,
        v: &StragglerVerdict,
        culprit: ProcId,
        who: &str,
        d: &mut Draft,
    ) -> bool {
        match self.cross_host_error(lane, culprit) {
            None => true,
            Some((None, _)) => {
                d.evidence.push_str(
                    "; its peers run on other hosts whose clocks were aligned by the wall \
                     clocks only (error unknown): the lag is as good as their synchronisation",
                );
                true
            }
            Some((Some(e), true)) => {
                d.evidence.push_str(&format!(
                    "; its peers run on other hosts: the lag is measured with the hosts' wall \
                     clocks, which the recorded data bounds only to ±{} (record a TCP exchange \
                     between the hosts to prove it)",
                    util::fmt_ns(e)
                ));
                true
            }
            // Late by the lateness threshold even with the clocks at the far end of their
            // error: the lag cannot be the clocks' offset.
            Some((Some(e), false)) if v.median_lag_ns >= e.saturating_add(v.threshold_ns) => {
                d.evidence.push_str(&format!(
                    "; its peers run on other hosts, whose clocks were aligned with it within \
                     ±{}: late by the threshold or more however they are offset within that",
                    util::fmt_ns(e)
                ));
                true
            }
            Some((Some(e), false)) => {
                self.counts.stragglers_withheld_clock += 1;
                let w = &mut self.host_clocks.withheld;
                if w.len() >= MAX_WITHHELD {
                    w.remove(0);
                }
                w.retain(|(x, _, _)| x != who);
                w.push((who.to_string(), v.median_lag_ns, e));
                false
            }
        }
    }

    /// Notes on the stragglers withheld because of the hosts' clocks.
    pub(super) fn clock_notes(&self) -> Vec<String> {
        self.host_clocks
            .withheld
            .iter()
            .map(|(who, lag, e)| {
                format!(
                    "{who} arrived {} after its peers on other hosts, within the hosts' clock \
                     alignment error (±{}): not named, since the lag may be the clocks' offset \
                     (record a TCP exchange between the hosts, or keep their wall clocks in \
                     sync, to narrow it)",
                    util::fmt_ns(*lag),
                    util::fmt_ns(*e)
                )
            })
            .collect()
    }
}
