//! Per-request timelines from the socket events of a serving port. Payload is never read:
//! only sizes and timing.
//!
//! On a connection of the serving port a request starts with the first bytes received while
//! the connection is idle; its time to first token (TTFT) is the first send back that holds
//! body bytes (on a serving front, the probes recognise a first send that is an HTTP/1
//! status line and header block only, as Starlette/uvicorn and aiohttp send it as soon as
//! they accept the request: that one is the time to headers, not the first token); later
//! sends are tokens (sends closer together than `token_coalesce_ns` are one), their gaps the
//! inter-token gaps; it ends when the connection closes, when it receives again after sending
//! (the next request on a keep-alive connection), or after `request_idle_ns` without a send.
//!
//! The serving port is configured, or detected as the local port with the most connections
//! that received first and then answered like a server of generated text does (at least
//! `serving_port_min_connections`): a response came in at least three sends spread in time
//! (a stream of tokens), or the connection closed after one. Long-lived connections
//! exchanging one message each way at a time (the bootstrap or socket transport of a
//! collective library, whose root receives first and then replies) do not count. Requests
//! that finished before the port was detected are counted once it is (up to 256 of them).
//! A server answering each request with a single send on a kept-alive connection is not
//! detected: configure its port.

use std::{collections::VecDeque, net::IpAddr};

use serde::Serialize;

use super::{
    config::Config,
    stats::{Pctl, RollingHist},
    util::FastMap,
};
use crate::events::{HttpStart, SockEvent, SockKind};

/// TCP states (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_FIN_WAIT1: i32 = 4;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_CLOSE_WAIT: i32 = 8;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestRecord {
    pub pid: u32,
    pub local_port: u16,
    pub remote: Option<String>,
    pub start_ns: u64,
    pub ttft_ns: Option<u64>,
    /// Time from the request to a response header block sent on its own, before the
    /// first token (HTTP servers that stream: Starlette/uvicorn, aiohttp).
    pub headers_ns: Option<u64>,
    pub end_ns: u64,
    /// Sends after coalescing (tokens or chunks).
    pub tokens: u32,
    pub recv_bytes: u64,
    pub sent_bytes: u64,
    pub max_gap_ns: u64,
    /// "closed", "next_request", "idle", "evicted".
    pub end: &'static str,
    /// Inter-token gaps seen before the port was known to be the serving port (at most
    /// `MAX_GAPS_KEPT`), recorded into the distribution when the request is counted.
    #[serde(skip)]
    pub gaps: Vec<u64>,
}

#[derive(Clone, Debug)]
struct Active {
    start: u64,
    recv_bytes: u64,
    /// A header block sent on its own (not the first token).
    headers: Option<u64>,
    first_send: Option<u64>,
    last_send: u64,
    tokens: u32,
    sent_bytes: u64,
    max_gap: u64,
    gaps: Vec<u64>,
}

#[derive(Clone, Debug)]
struct Conn {
    sk: u64,
    pid: u32,
    port: u16,
    remote: Option<(IpAddr, u16)>,
    recv_first: Option<bool>,
    voted: bool,
    active: Option<Active>,
    last_ns: u64,
}

pub struct Requests {
    conns: FastMap<u64, Conn>,
    votes: FastMap<u16, u32>,
    pub detected: Option<u16>,
    ttft: RollingHist,
    gaps: RollingHist,
    duration: RollingHist,
    tokens: RollingHist,
    pub recent: VecDeque<RequestRecord>,
    pub finished: u64,
    pub in_flight: u32,
    pub peak: u32,
    integral: f64,
    last_change: u64,
    first_ns: Option<u64>,
    pub evicted: u64,
    /// Requests finished before any serving port was known.
    early: Vec<RequestRecord>,
}

/// Sends (after coalescing) in one response from which the connection counts as streaming.
const STREAMED_TOKENS: u32 = 3;

/// Inter-token gaps kept per request while the serving port is not known.
const MAX_GAPS_KEPT: usize = 4096;

/// Requests kept from before the serving port was detected.
const MAX_EARLY: usize = 256;

impl Requests {
    pub fn new(cfg: &Config) -> Requests {
        let (s, k) = (cfg.slice_ns(), cfg.window_slices);
        Requests {
            conns: FastMap::default(),
            votes: FastMap::default(),
            detected: None,
            ttft: RollingHist::new(s, k),
            gaps: RollingHist::new(s, k),
            duration: RollingHist::new(s, k),
            tokens: RollingHist::new(s, k),
            recent: VecDeque::new(),
            finished: 0,
            in_flight: 0,
            peak: 0,
            integral: 0.0,
            last_change: 0,
            first_ns: None,
            evicted: 0,
            early: Vec::new(),
        }
    }

    pub(super) fn serving(&self, port: u16, cfg: &Config) -> bool {
        if cfg.serving_ports.is_empty() {
            self.detected == Some(port)
        } else {
            cfg.serving_ports.contains(&port)
        }
    }

    fn set_in_flight(&mut self, n: u32, t: u64) {
        if self.first_ns.is_some() {
            self.integral += self.in_flight as f64 * t.saturating_sub(self.last_change) as f64;
        } else {
            self.first_ns = Some(t);
        }
        self.last_change = t.max(self.last_change);
        self.in_flight = n;
        self.peak = self.peak.max(n);
    }

    pub fn on_sock(&mut self, e: &SockEvent, cfg: &Config) {
        match e.kind {
            SockKind::Send | SockKind::Recv if e.bytes > 0 => {}
            SockKind::State => {
                if matches!(e.newstate, TCP_FIN_WAIT1 | TCP_CLOSE_WAIT | TCP_CLOSE) {
                    if let Some(c) = self.conns.get_mut(&e.sk) {
                        let done = c.active.take().map(|a| (c.clone(), a));
                        if let Some((c, a)) = done {
                            self.finish(&c, a, e.ts_ns, "closed", cfg);
                        }
                    }
                    if e.newstate == TCP_CLOSE {
                        self.conns.remove(&e.sk);
                    }
                }
                return;
            }
            _ => return,
        }
        let Some((_, port)) = e.local else { return };
        if !self.conns.contains_key(&e.sk) && self.conns.len() >= cfg.max_connections {
            self.evict(cfg);
        }
        let recv = e.kind == SockKind::Recv;
        let c = self.conns.entry(e.sk).or_insert(Conn {
            sk: e.sk,
            pid: e.pid,
            port,
            remote: e.remote,
            recv_first: None,
            voted: false,
            active: None,
            last_ns: e.ts_ns,
        });
        c.last_ns = e.ts_ns;
        c.recv_first.get_or_insert(recv);
        let mut ended: Option<(Conn, Active)> = None;
        let mut started = false;
        let mut streamed = false;
        if recv {
            match &mut c.active {
                Some(a) if a.first_send.is_none() => a.recv_bytes += e.bytes as u64,
                Some(_) => {
                    let a = c.active.take().expect("active");
                    ended = Some((c.clone(), a));
                    c.active = Some(new_active(e.ts_ns, e.bytes as u64));
                    started = true;
                }
                None => {
                    c.active = Some(new_active(e.ts_ns, e.bytes as u64));
                    started = true;
                }
            }
        } else {
            if let Some(a) = &mut c.active {
                a.sent_bytes += e.bytes as u64;
                let headers_only = e.http == Some(HttpStart::HeadersOnly);
                match a.first_send {
                    // The status line and headers, sent before any token: the time to the
                    // first token runs on to the next send.
                    None if headers_only && a.headers.is_none() => {
                        a.headers = Some(e.ts_ns);
                        a.last_send = e.ts_ns;
                    }
                    None => {
                        a.first_send = Some(e.ts_ns);
                        a.last_send = e.ts_ns;
                        a.tokens = 1;
                    }
                    Some(_) => {
                        let gap = e.ts_ns.saturating_sub(a.last_send);
                        if gap >= cfg.token_coalesce_ns {
                            a.tokens += 1;
                            // A stream: more sends than a message's header and payload.
                            streamed = a.tokens == STREAMED_TOKENS;
                            a.max_gap = a.max_gap.max(gap);
                            if self.detected == Some(port) || cfg.serving_ports.contains(&port) {
                                self.gaps.record(e.ts_ns, gap);
                            } else if a.gaps.len() < MAX_GAPS_KEPT {
                                // Kept until the port is known to be the serving port.
                                a.gaps.push(gap);
                            }
                        }
                        a.last_send = e.ts_ns;
                    }
                }
            }
        }
        if streamed {
            self.vote(e.sk, port, e.ts_ns, cfg);
        }
        let snapshot = ended;
        if let Some((c, a)) = snapshot {
            self.finish(&c, a, e.ts_ns, "next_request", cfg);
        }
        if started && self.serving(port, cfg) {
            self.set_in_flight(self.in_flight + 1, e.ts_ns);
        }
    }

    /// Connection `sk` on local `port` answered like a serving connection: it counts once
    /// toward detecting the serving port, if it received first.
    fn vote(&mut self, sk: u64, port: u16, t: u64, cfg: &Config) {
        let Some(c) = self.conns.get_mut(&sk) else {
            return;
        };
        if c.recv_first != Some(true) || c.voted {
            return;
        }
        c.voted = true;
        *self.votes.entry(port).or_insert(0) += 1;
        self.redetect(t, cfg);
    }

    fn redetect(&mut self, t: u64, cfg: &Config) {
        let best = self
            .votes
            .iter()
            .filter(|(_, v)| **v >= cfg.serving_port_min_connections)
            .max_by_key(|(p, v)| (**v, u16::MAX - **p))
            .map(|(p, _)| *p);
        if best != self.detected {
            self.detected = best;
            // Requests that finished on it before it was detected count too.
            let early = std::mem::take(&mut self.early);
            for rec in early {
                if Some(rec.local_port) == best {
                    self.record(rec, cfg);
                }
            }
            if cfg.serving_ports.is_empty() {
                let n = self
                    .conns
                    .values()
                    .filter(|c| c.active.is_some() && Some(c.port) == best)
                    .count() as u32;
                self.set_in_flight(n, t);
            }
        }
    }

    fn finish(&mut self, c: &Conn, a: Active, t: u64, why: &'static str, cfg: &Config) {
        if why == "closed" && a.first_send.is_some() {
            self.vote(c.sk, c.port, t, cfg);
        }
        let serving = self.serving(c.port, cfg);
        let undecided = cfg.serving_ports.is_empty() && self.detected.is_none();
        if !serving && !undecided {
            return;
        }
        let end = if why == "closed" {
            t
        } else {
            a.first_send.map(|_| a.last_send).unwrap_or(t)
        };
        let rec = RequestRecord {
            pid: c.pid,
            local_port: c.port,
            remote: c.remote.map(|(ip, p)| format!("{ip}:{p}")),
            start_ns: a.start,
            ttft_ns: a.first_send.map(|f| f - a.start),
            headers_ns: a.headers.map(|h| h - a.start),
            end_ns: end,
            tokens: a.tokens,
            recv_bytes: a.recv_bytes,
            sent_bytes: a.sent_bytes,
            max_gap_ns: a.max_gap,
            end: why,
            gaps: a.gaps,
        };
        if !serving {
            // No serving port known yet: keep it in case this port, a candidate, turns out
            // to be it.
            if self.votes.get(&c.port).is_some_and(|v| *v > 0) && self.early.len() < MAX_EARLY {
                self.early.push(rec);
            }
            return;
        }
        self.set_in_flight(self.in_flight.saturating_sub(1), t);
        self.record(rec, cfg);
    }

    fn record(&mut self, mut rec: RequestRecord, cfg: &Config) {
        if let Some(x) = rec.ttft_ns {
            self.ttft.record(rec.start_ns, x);
        }
        for &g in &rec.gaps {
            self.gaps.record(rec.start_ns, g);
        }
        rec.gaps = Vec::new();
        self.duration
            .record(rec.start_ns, rec.end_ns.saturating_sub(rec.start_ns));
        self.tokens.record(rec.start_ns, rec.tokens as u64);
        self.finished += 1;
        if self.recent.len() >= cfg.max_requests_kept.max(1) {
            self.recent.pop_front();
        }
        self.recent.push_back(rec);
    }

    fn evict(&mut self, cfg: &Config) {
        let mut ages: Vec<(u64, u64)> = self.conns.iter().map(|(sk, c)| (c.last_ns, *sk)).collect();
        ages.sort_unstable();
        let n = (ages.len() / 8).max(1);
        for (_, sk) in ages.into_iter().take(n) {
            if let Some(mut c) = self.conns.remove(&sk) {
                if let Some(a) = c.active.take() {
                    let t = c.last_ns;
                    self.finish(&c, a, t, "evicted", cfg);
                }
                self.evicted += 1;
            }
        }
    }

    /// Ends requests idle for `request_idle_ns` after their last send.
    pub fn tick(&mut self, now: u64, cfg: &Config) {
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.active.as_ref().is_some_and(|a| {
                    a.first_send.is_some() && now.saturating_sub(a.last_send) >= cfg.request_idle_ns
                })
            })
            .map(|(sk, _)| *sk)
            .collect();
        for sk in idle {
            if let Some(c) = self.conns.get_mut(&sk) {
                if let Some(a) = c.active.take() {
                    let c = c.clone();
                    self.finish(&c, a, now, "idle", cfg);
                }
            }
        }
        if self.first_ns.is_some() {
            let n = self.in_flight;
            self.set_in_flight(n, now);
        }
    }

    pub fn view(&self, now: u64, cfg: &Config, recent: usize) -> RequestsView {
        let (port, source) = if !cfg.serving_ports.is_empty() {
            (cfg.serving_ports.first().copied(), "configured")
        } else if self.detected.is_some() {
            (self.detected, "detected")
        } else {
            (None, "none")
        };
        let elapsed = self
            .first_ns
            .map(|f| self.last_change.saturating_sub(f))
            .unwrap_or(0);
        RequestsView {
            serving_port: port,
            port_source: source,
            finished: self.finished,
            in_flight: self.in_flight,
            peak_concurrency: self.peak,
            mean_concurrency: if elapsed > 0 {
                self.integral / elapsed as f64
            } else {
                0.0
            },
            ttft: self.ttft.pctl(now),
            inter_token: self.gaps.pctl(now),
            duration: self.duration.pctl(now),
            tokens: self.tokens.pctl(now),
            recent: self.recent.iter().rev().take(recent).cloned().collect(),
            evicted_connections: self.evicted,
        }
    }
}

fn new_active(t: u64, bytes: u64) -> Active {
    Active {
        start: t,
        recv_bytes: bytes,
        headers: None,
        first_send: None,
        last_send: t,
        tokens: 0,
        sent_bytes: 0,
        max_gap: 0,
        gaps: Vec::new(),
    }
}

/// Requests summary for views.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestsView {
    pub serving_port: Option<u16>,
    /// "configured", "detected" or "none".
    pub port_source: &'static str,
    pub finished: u64,
    pub in_flight: u32,
    pub peak_concurrency: u32,
    /// Time-weighted mean of requests in flight since the first one.
    pub mean_concurrency: f64,
    pub ttft: Pctl,
    pub inter_token: Pctl,
    pub duration: Pctl,
    pub tokens: Pctl,
    /// Most recent first.
    pub recent: Vec<RequestRecord>,
    pub evicted_connections: u64,
}
