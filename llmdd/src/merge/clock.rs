//! Clock alignment between hosts, from the recorded data itself.
//!
//! Every host's CLOCK_MONOTONIC runs from its own boot, so each host `h` gets an offset
//! `θ_h`: its local time plus `θ_h` is the reference host's time. The data gives difference
//! constraints `θ_to - θ_from ≥ c` ([`Bound`]), each true of the real clocks, so the set of
//! offsets they allow always holds the true ones:
//!
//! * **TCP, seen from both ends.** A connection traced on host A (local a, remote b) and on
//!   host B (local b, remote a) carries one byte stream per direction. Once the two ends'
//!   byte counts are aligned (below), a receive on B returning at `u` (B's clock) whose last
//!   byte was written by A's send `i` proves that A's send `i-1` had returned before it (A's
//!   sends on one socket follow each other): `t(send i-1) + θ_A ≤ u + θ_B`. The reverse
//!   direction bounds the offset from the other side: NTP's two-way bound, each side kept at
//!   its tightest (the least-delayed message).
//! * **Collective instances.** No rank leaves a blocking collective before the last rank
//!   entered it: for the k-th collective call of two members of one communicator (counted from
//!   the `ncclCommInitRank` both recordings saw), `entry_a + θ_A ≤ exit_b + θ_B`. Asynchronous
//!   NCCL calls return after enqueueing and may break this, so these bounds are used only
//!   between hosts that no TCP connection links.
//!
//! Aligning byte counts: a recording may start mid-stream, so each side counts bytes from
//! its own first event. Receive boundaries usually fall on send boundaries (messages are
//! framed), so the shifts that put most receive ends on send ends are found by voting; with
//! periodic traffic several shifts fit equally, one message period apart, each giving a
//! narrow interval one period away from the next. With a prior (the offsets from the wall
//! clocks sampled by the recorders) the interval nearest it is taken; without one only
//! shift zero is trusted (both ends saw the connection from its first byte, as when the
//! recording started before the job connected). See [`choose_alignment`].
//!
//! Offsets are then the tightest bounds through any chain of hosts (longest paths in the
//! constraint graph, Bellman-Ford): the estimate is the wall-clock offset kept within the
//! allowed interval when the recorders sampled their wall clocks (the middle of the interval
//! is biased by a host late on every collective), else the middle; the error is the distance
//! to the farther bound. A host the constraints do not bound on both sides falls back to
//! the wall-clock offset (clamped into the one-sided bound when there is one).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use serde::Serialize;

use crate::events::{Event, SockKind};
use llmdd_common::funcs::CallKind;

/// `θ_to - θ_from ≥ min_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bound {
    pub from: usize,
    pub to: usize,
    pub min_ns: i64,
    pub source: BoundSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BoundSource {
    Tcp,
    Collective,
}

/// How a host's offset was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMethod {
    /// The reference host: offset 0 by definition.
    Reference,
    /// Bounded on both sides by the data (TCP and/or collectives): the middle of the interval.
    Data,
    /// Bounded on both sides by the data, and the wall-clock offsets the recorders sampled
    /// taken within those bounds (see [`solve`]).
    DataRealtime,
    /// Not bounded on both sides: the wall-clock offsets the recorders sampled.
    Realtime,
    /// Neither: no data bound and no wall-clock sample. Offset 0, error unknown.
    Unknown,
}

/// One host's estimated offset.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Offset {
    /// Add to this host's CLOCK_MONOTONIC to get the reference host's.
    pub offset_ns: i64,
    /// Half-width of the interval the data allows (the true offset is within
    /// `offset_ns ± error_ns`); `None` when not bounded on both sides.
    pub error_ns: Option<u64>,
    /// Tightest lower and upper bounds from the data.
    pub lower_ns: Option<i64>,
    pub upper_ns: Option<i64>,
    pub method: ClockMethod,
    /// Bounds (TCP and collective) that involve this host.
    pub bounds: usize,
    /// The data's bounds contradict each other (clock drift, or a misaligned stream): the
    /// interval was empty and the estimate is the middle of the crossing.
    pub inconsistent: bool,
}

/// What the estimator needs of one clock domain (a host and boot).
pub struct Domain<'a> {
    /// Events of every recording of this domain, each with its local times.
    pub events: Vec<&'a Event>,
    /// This domain's wall-clock offset (`CLOCK_REALTIME - CLOCK_MONOTONIC`) as its recorder
    /// sampled it, if it did: the difference of two domains' is the prior for their offset.
    pub prior_ns: Option<i64>,
}

/// Normalised endpoint (IPv4-mapped IPv6 as IPv4).
fn norm(a: (IpAddr, u16)) -> (IpAddr, u16) {
    match a.0 {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), a.1),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// An address that may name the same endpoint from another host (loopback and unspecified
/// addresses are every host's own).
fn routable(a: &IpAddr) -> bool {
    !(a.is_loopback() || a.is_unspecified() || a.is_multicast())
}

/// One socket's data events as seen from one side: `(time, bytes)` in time order.
#[derive(Default)]
struct Side {
    sends: Vec<(u64, u64)>,
    recvs: Vec<(u64, u64)>,
}

type Tuple = ((IpAddr, u16), (IpAddr, u16));

/// Per domain: 4-tuple (local, remote) -> socket -> its events. Only sockets whose tuple is
/// seen on one socket per domain are kept (a reused tuple cannot be paired safely).
fn sockets(events: &[&Event]) -> HashMap<Tuple, Side> {
    let mut by_tuple: HashMap<Tuple, (u64, Side, bool)> = HashMap::new();
    let mut ordered: Vec<&crate::events::SockEvent> = events
        .iter()
        .filter_map(|e| match e {
            Event::Sock(s) if matches!(s.kind, SockKind::Send | SockKind::Recv) && s.bytes > 0 => {
                Some(s)
            }
            _ => None,
        })
        .collect();
    ordered.sort_by_key(|s| s.ts_ns);
    for s in ordered {
        let (Some(l), Some(r)) = (s.local, s.remote) else {
            continue;
        };
        let (l, r) = (norm(l), norm(r));
        if !routable(&l.0) || !routable(&r.0) {
            continue;
        }
        let entry = by_tuple
            .entry((l, r))
            .or_insert_with(|| (s.sk, Side::default(), true));
        if entry.0 != s.sk {
            entry.2 = false;
            continue;
        }
        let ev = (s.ts_ns, s.bytes as u64);
        match s.kind {
            SockKind::Send => entry.1.sends.push(ev),
            _ => entry.1.recvs.push(ev),
        }
    }
    by_tuple
        .into_iter()
        .filter(|(_, (_, _, unique))| *unique)
        .map(|(k, (_, side, _))| (k, side))
        .collect()
}

/// One direction of a connection: the sender's sends and the receiver's receives, with
/// their cumulative end positions (each side counted from its own first event).
struct Dir<'a> {
    sends: &'a [(u64, u64)],
    recvs: &'a [(u64, u64)],
    s_ends: Vec<u64>,
    r_ends: Vec<u64>,
}

/// Cumulative end positions.
fn ends(evs: &[(u64, u64)]) -> Vec<u64> {
    let mut pos = 0u64;
    evs.iter()
        .map(|(_, n)| {
            pos += n;
            pos
        })
        .collect()
}

impl<'a> Dir<'a> {
    fn new(sends: &'a [(u64, u64)], recvs: &'a [(u64, u64)]) -> Dir<'a> {
        Dir {
            sends,
            recvs,
            s_ends: ends(sends),
            r_ends: ends(recvs),
        }
    }

    /// Candidate shifts `δ` (receive position + δ = send position), found by voting
    /// receive boundaries onto send boundaries: a sample of receives (spread over the whole
    /// recording, as either side may have started first) each votes for every shift that
    /// would end it on a send's end, noting the bound that pairing implies. Shifts with
    /// at least 90% of the best one's votes are ranked by how near their implied bound (`upper`: negated) is to
    /// `prior`, and the `keep` nearest returned.
    fn shifts(&self, prior: i64, upper: bool, keep: usize) -> Vec<i64> {
        const VOTERS: usize = 48;
        let step = self.r_ends.len().div_ceil(VOTERS).max(1);
        let mut votes: HashMap<i64, (u32, i64)> = HashMap::new();
        let mut n_voters = 0u32;
        // Only pairings whose bound lies within PRIOR_WINDOW_NS of the prior vote: work and
        // memory stay bounded on long, busy connections.
        let center = if upper { -prior } else { prior };
        for j in (0..self.r_ends.len()).step_by(step) {
            n_voters += 1;
            let (re, u) = (self.r_ends[j] as i64, self.recvs[j].0 as i64);
            let from = u.saturating_add(center).saturating_sub(PRIOR_WINDOW_NS);
            let to = u.saturating_add(center).saturating_add(PRIOR_WINDOW_NS);
            let first = self.sends.partition_point(|s| (s.0 as i64) < from);
            let last = self.sends.partition_point(|s| (s.0 as i64) <= to);
            for i in (first + 1)..(last + 1).min(self.s_ends.len()) {
                let c = self.sends[i - 1].0 as i64 - u;
                let v = votes.entry(self.s_ends[i] as i64 - re).or_insert((0, c));
                v.0 += 1;
                v.1 = v.1.max(c);
            }
        }
        // Only shifts that end (nearly) as many sampled receives on send ends as the best
        // one: a shift by part of a message (a header's length) fits some receives only,
        // and pairs them with later sends.
        let best = votes.values().map(|v| v.0).max().unwrap_or(0);
        let need = (n_voters / 8).max(2).max(best - best / 10);
        let mut ranked: Vec<(i64, i64)> = votes
            .into_iter()
            .filter(|(_, (n, _))| *n >= need)
            .map(|(d, (_, c))| {
                let b = if upper { -c } else { c };
                ((b - prior).saturating_abs(), d)
            })
            .collect();
        ranked.sort_unstable();
        ranked.into_iter().take(keep).map(|x| x.1).collect()
    }

    /// The tightest `θ_recv - θ_send ≥ c` under shift `δ`, over every `stride`-th receive
    /// (1: all).
    fn bound(&self, delta: i64, stride: usize) -> Option<i64> {
        let mut best: Option<i64> = None;
        for (j, &re) in self.r_ends.iter().enumerate().step_by(stride.max(1)) {
            let p = re as i64 + delta;
            if p <= 0 {
                continue;
            }
            let p = p as u64;
            // The send holding byte p-1 (the receive's last byte): first send end >= p.
            let i = self.s_ends.partition_point(|&e| e < p);
            // i == 0: no earlier send recorded; i == len: bytes past every recorded send
            // (sent after the sender's recording ended). Neither gives a bound.
            if i == 0 || i >= self.s_ends.len() {
                continue;
            }
            let c = self.sends[i - 1].0 as i64 - self.recvs[j].0 as i64;
            best = Some(best.map_or(c, |b: i64| b.max(c)));
        }
        best
    }
}

/// Candidate alignments nearest the prior whose exact bounds are computed, per direction.
const NEAREST: usize = 8;
/// How far from the wall clocks' offset a stream alignment is looked for: wall clocks that
/// disagree by more leave a mid-stream connection unaligned.
const PRIOR_WINDOW_NS: i64 = 2_000_000_000;

/// `(shift, bound)` for each shift with a bound; `upper`: negated (bounds from the reverse
/// direction are upper bounds on the same offset).
fn shifts_bounds(d: &Dir<'_>, shifts: &[i64], stride: usize, upper: bool) -> Vec<(i64, i64)> {
    shifts
        .iter()
        .filter_map(|&s| {
            let b = d.bound(s, stride)?;
            Some((s, if upper { -b } else { b }))
        })
        .collect()
}

/// Picks one alignment per direction of a connection from the candidates' bounds
/// (`(shift, bound)`: lower bounds from one direction, upper from the other).
///
/// A wrong alignment pairs receives with sends one or more messages away: pairing with later
/// sends gives bounds that are too tight (wrong), with earlier ones bounds that are loose
/// (still true). With periodic traffic the right pair of alignments and pairs shifted by the
/// same number of periods in both directions all give narrow intervals, one period apart.
/// So each lower bound is paired with the nearest upper bound above it, and:
/// * with a prior (the wall clocks), the pair nearest the prior is taken: right while the
///   wall clocks agree to better than half a period;
/// * without one, only the alignment of both ends from their first byte (shift 0) is
///   trusted (the recording saw the connection start); a connection whose shift-0 bounds
///   contradict each other gives no bound at all; traffic one way only gives its shift-0
///   bound alone.
///
/// With a prior, traffic one way only gives no bound.
fn choose_alignment(
    lows: &[(i64, i64)],
    highs: &[(i64, i64)],
    prior: Option<i64>,
) -> (Option<i64>, Option<i64>) {
    let at_zero = |v: &[(i64, i64)]| v.iter().find(|(d, _)| *d == 0).map(|x| x.1);
    let (l0, h0) = (at_zero(lows), at_zero(highs));
    let Some(p) = prior else {
        return match (l0, h0) {
            (Some(l), Some(h)) if l > h => (None, None),
            other => other,
        };
    };
    if lows.is_empty() || highs.is_empty() {
        // One direction only: no pair to tell a right alignment from a shifted one.
        return (None, None);
    }
    let mut ups: Vec<i64> = highs.iter().map(|x| x.1).collect();
    ups.sort_unstable();
    let pick = lows
        .iter()
        .filter_map(|&(_, l)| {
            let i = ups.partition_point(|&h| h < l);
            ups.get(i).map(|&h| (l, h))
        })
        .min_by_key(|&(l, h)| {
            let dist = if (l..=h).contains(&p) {
                0
            } else {
                (p - (l + (h - l) / 2)).saturating_abs()
            };
            (dist, h - l, l)
        });
    pick.map_or((None, None), |(l, h)| (Some(l), Some(h)))
}

/// TCP bounds between two domains: `(θ_b - θ_a ≥ lo, θ_b - θ_a ≤ hi)`, over every
/// connection seen from both ends.
fn tcp_bounds(
    a: &HashMap<Tuple, Side>,
    b: &HashMap<Tuple, Side>,
    prior: Option<i64>,
) -> (Option<i64>, Option<i64>) {
    let mut lo: Option<i64> = None;
    let mut hi: Option<i64> = None;
    let mut keys: Vec<&Tuple> = a.keys().collect();
    keys.sort();
    for key in keys {
        let Some(sb) = b.get(&(key.1, key.0)) else {
            continue;
        };
        let sa = &a[key];
        // a -> b gives lower bounds on θ_b - θ_a; b -> a gives upper bounds
        // (θ_a - θ_b ≥ u  <=>  θ_b - θ_a ≤ -u), one per candidate alignment.
        let fwd = Dir::new(&sa.sends, &sb.recvs);
        let rev = Dir::new(&sb.sends, &sa.recvs);
        let (lows, highs) = match prior {
            // Without wall clocks only shift 0 is trusted (see `choose_alignment`).
            None => (
                shifts_bounds(&fwd, &[0], 1, false),
                shifts_bounds(&rev, &[0], 1, true),
            ),
            Some(p) => (
                shifts_bounds(&fwd, &fwd.shifts(p, false, NEAREST), 1, false),
                shifts_bounds(&rev, &rev.shifts(p, true, NEAREST), 1, true),
            ),
        };
        let (l, h) = choose_alignment(&lows, &highs, prior);
        if let Some(l) = l {
            lo = Some(lo.map_or(l, |x| x.max(l)));
        }
        if let Some(h) = h {
            hi = Some(hi.map_or(h, |x| x.min(h)));
        }
    }
    (lo, hi)
}

/// The k-th collective call (entry, exit) of each communicator member, keyed by the
/// communicator's unique-id hash and the member's rank, counted from its `ncclCommInitRank`.
fn collective_calls(events: &[&Event]) -> BTreeMap<(u64, i32), Vec<(u64, u64)>> {
    let mut handle: HashMap<(u32, u64), (u64, i32)> = HashMap::new();
    let mut calls: Vec<&crate::events::CallEvent> = events
        .iter()
        .filter_map(|e| match e {
            Event::Call(c) => Some(c),
            _ => None,
        })
        .collect();
    calls.sort_by_key(|c| c.entry_ns);
    let mut out: BTreeMap<(u64, i32), Vec<(u64, u64)>> = BTreeMap::new();
    for c in calls {
        match c.spec().kind {
            CallKind::CommInit => {
                if let (Some(uid), Some(h), Some(rank), Some(0)) =
                    (c.uid_hash, c.comm, c.rank, c.ret)
                {
                    handle.insert((c.pid, h), (uid, rank));
                    out.insert((uid, rank), Vec::new());
                }
            }
            CallKind::Collective => {
                if let (Some(h), Some(exit)) = (c.comm, c.exit_ns) {
                    if let Some(key) = handle.get(&(c.pid, h)) {
                        if let Some(v) = out.get_mut(key) {
                            v.push((c.entry_ns, exit));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Collective bounds between two domains: `(lo, hi)` on `θ_b - θ_a`.
fn collective_bounds(
    a: &BTreeMap<(u64, i32), Vec<(u64, u64)>>,
    b: &BTreeMap<(u64, i32), Vec<(u64, u64)>>,
) -> (Option<i64>, Option<i64>) {
    let (mut lo, mut hi): (Option<i64>, Option<i64>) = (None, None);
    for ((uid, _), ca) in a {
        for (_, cb) in b.range((*uid, i32::MIN)..=(*uid, i32::MAX)) {
            for (&(ea, xa), &(eb, xb)) in ca.iter().zip(cb) {
                // entry_a + θ_a ≤ exit_b + θ_b  =>  θ_b - θ_a ≥ entry_a - exit_b
                let l = ea as i64 - xb as i64;
                // entry_b + θ_b ≤ exit_a + θ_a  =>  θ_b - θ_a ≤ exit_a - entry_b
                let h = xa as i64 - eb as i64;
                lo = Some(lo.map_or(l, |x| x.max(l)));
                hi = Some(hi.map_or(h, |x| x.min(h)));
            }
        }
    }
    (lo, hi)
}

/// Every pairwise bound between domains (index 0 is the reference for priors).
pub fn bounds(domains: &[Domain<'_>]) -> Vec<Bound> {
    let socks: Vec<HashMap<Tuple, Side>> = domains.iter().map(|d| sockets(&d.events)).collect();
    let colls: Vec<_> = domains
        .iter()
        .map(|d| collective_calls(&d.events))
        .collect();
    let mut out = Vec::new();
    for a in 0..domains.len() {
        for b in a + 1..domains.len() {
            let prior = domains[a]
                .prior_ns
                .zip(domains[b].prior_ns)
                .map(|(pa, pb)| pb - pa);
            let (mut lo, mut hi) = tcp_bounds(&socks[a], &socks[b], prior);
            let mut source = BoundSource::Tcp;
            if lo.is_none() || hi.is_none() {
                let (cl, ch) = collective_bounds(&colls[a], &colls[b]);
                if cl.is_some() || ch.is_some() {
                    source = BoundSource::Collective;
                    lo = match (lo, cl) {
                        (Some(x), Some(y)) => Some(x.max(y)),
                        (x, y) => x.or(y),
                    };
                    hi = match (hi, ch) {
                        (Some(x), Some(y)) => Some(x.min(y)),
                        (x, y) => x.or(y),
                    };
                }
            }
            if let Some(l) = lo {
                out.push(Bound {
                    from: a,
                    to: b,
                    min_ns: l,
                    source,
                });
            }
            if let Some(h) = hi {
                // θ_b - θ_a ≤ h  <=>  θ_a - θ_b ≥ -h
                out.push(Bound {
                    from: b,
                    to: a,
                    min_ns: -h,
                    source,
                });
            }
        }
    }
    out
}

/// Longest paths from `src` over `θ_to - θ_from ≥ w` edges (Bellman-Ford); `None` when a
/// positive cycle (contradicting bounds) is reachable.
fn longest_from(n: usize, edges: &[Bound], src: usize, reverse: bool) -> Option<Vec<Option<i64>>> {
    let mut d: Vec<Option<i64>> = vec![None; n];
    d[src] = Some(0);
    for round in 0..=n {
        let mut changed = false;
        for e in edges {
            let (u, v) = if reverse {
                (e.to, e.from)
            } else {
                (e.from, e.to)
            };
            if let Some(du) = d[u] {
                let cand = du.saturating_add(e.min_ns);
                if d[v].is_none_or(|dv| cand > dv) {
                    d[v] = Some(cand);
                    changed = true;
                }
            }
        }
        if !changed {
            return Some(d);
        }
        if round == n {
            return None;
        }
    }
    Some(d)
}

/// Offsets of every domain against domain 0, from `bounds` (tightest over all chains of
/// hosts) with the priors as fallback.
pub fn solve(priors: &[Option<i64>], bounds: &[Bound]) -> Vec<Offset> {
    let n = priors.len();
    // Lower bounds of θ_h: longest path 0 -> h. Upper bounds: θ_h ≤ -(longest path h -> 0),
    // i.e. longest path from 0 on the reversed graph, negated.
    let (lower, upper, inconsistent) = match (
        longest_from(n, bounds, 0, false),
        longest_from(n, bounds, 0, true),
    ) {
        (Some(l), Some(u)) => (l, u.into_iter().map(|x| x.map(|v| -v)).collect(), false),
        // Contradicting bounds: fall back to the direct bounds to the reference only.
        _ => {
            let mut l = vec![None; n];
            let mut u = vec![None; n];
            l[0] = Some(0);
            u[0] = Some(0);
            for b in bounds {
                if b.from == 0 {
                    l[b.to] = Some(l[b.to].map_or(b.min_ns, |x: i64| x.max(b.min_ns)));
                } else if b.to == 0 {
                    u[b.from] = Some(u[b.from].map_or(-b.min_ns, |x: i64| x.min(-b.min_ns)));
                }
            }
            (l, u, true)
        }
    };
    let prior0 = priors.first().copied().flatten();
    (0..n)
        .map(|h| {
            let count = bounds.iter().filter(|b| b.from == h || b.to == h).count();
            if h == 0 {
                return Offset {
                    offset_ns: 0,
                    error_ns: Some(0),
                    lower_ns: Some(0),
                    upper_ns: Some(0),
                    method: ClockMethod::Reference,
                    bounds: count,
                    inconsistent: false,
                };
            }
            let prior = prior0.zip(priors[h]).map(|(p0, ph)| ph - p0);
            let (lo, hi) = (lower[h], upper[h]);
            match (lo, hi) {
                (Some(l), Some(u)) => {
                    let crossed = l > u;
                    let (a, b) = if crossed { (u, l) } else { (l, u) };
                    // The middle of the interval is biased when the bounds are: a host late
                    // on every collective widens its interval on one side only, and the middle
                    // moves by half its lateness, hiding half of it. The wall clocks do not
                    // depend on who is late: taken when there are some, kept within the proven
                    // bounds, the error then being the distance to the farther bound.
                    let (offset, method) = match prior {
                        Some(p) if !crossed => (p.clamp(a, b), ClockMethod::DataRealtime),
                        _ => (a + (b - a) / 2, ClockMethod::Data),
                    };
                    let error = (offset - a).max(b - offset) as u64;
                    Offset {
                        offset_ns: offset,
                        error_ns: Some(error),
                        lower_ns: lo,
                        upper_ns: hi,
                        method,
                        bounds: count,
                        inconsistent: inconsistent || crossed,
                    }
                }
                _ => {
                    let (offset, method) = match prior {
                        Some(p) => {
                            let p = lo.map_or(p, |l| p.max(l));
                            (hi.map_or(p, |u| p.min(u)), ClockMethod::Realtime)
                        }
                        None => (lo.or(hi).unwrap_or(0), ClockMethod::Unknown),
                    };
                    Offset {
                        offset_ns: offset,
                        error_ns: None,
                        lower_ns: lo,
                        upper_ns: hi,
                        method,
                        bounds: count,
                        inconsistent,
                    }
                }
            }
        })
        .collect()
}
