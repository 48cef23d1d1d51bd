//! Links: bytes and throughput per connection, retransmits, resets (an established connection
//! going straight to CLOSE, which only an RST does), send/receive errors.
//!
//! Retransmits are judged as a rate: retransmits per segment sent in the window, segments
//! estimated from the sends (see `Config::link_retransmit_rate`). A count alone cannot tell
//! loss from the few spurious retransmits a busy host shows on a bulk transfer: a dozen per
//! 100 MiB on loopback is a rate near 1e-4, real loss is percents.
//!
//! A retransmit that comes while the connection has sent nothing for a while, sooner than a
//! retransmission timeout (`link_tail_probe_min_ns..link_tail_probe_max_ns` after the last
//! send), is a tail-loss probe: TCP re-sends the last segment of a burst whose ACK is late.
//! On request/response traffic with pauses (a collective waiting for a late rank) the peer
//! delays its ACK and nearly every pause ends in one, lost or not. Those are counted apart
//! (`tail_probes`) and not taken as loss; loss on such a connection shows in its timeouts and
//! in the retransmits amid its bursts.

use std::net::IpAddr;

use serde::Serialize;

use super::{
    config::Config, requests::TCP_CLOSE, requests::TCP_ESTABLISHED, stats::RollingSum,
    util::FastMap,
};
use crate::events::{SockEvent, SockKind};

#[derive(Clone, Debug)]
pub struct Link {
    pub pid: u32,
    pub local: Option<(IpAddr, u16)>,
    pub remote: Option<(IpAddr, u16)>,
    pub sent: u64,
    pub recvd: u64,
    pub errors: u64,
    pub retransmits: u64,
    /// Retransmits that were tail-loss probes (counted in `retransmits` too).
    pub tail_probes: u64,
    pub resets: u64,
    pub first_ns: u64,
    /// Latest send (0 = none yet).
    last_send_ns: u64,
    pub last_ns: u64,
    pub state: i32,
    bytes_window: RollingSum,
    retrans_window: RollingSum,
    /// Segments sent, estimated (`ceil(bytes / link_assumed_mss)` per send).
    segs_window: RollingSum,
}

impl Link {
    pub fn label(&self) -> String {
        let f = |a: Option<(IpAddr, u16)>| {
            a.map(|(ip, p)| format!("{ip}:{p}"))
                .unwrap_or_else(|| "?".into())
        };
        format!("{} -> {}", f(self.local), f(self.remote))
    }
}

/// Something on a link worth a finding.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkAlert {
    Retransmits {
        sk: u64,
        in_window: u64,
        /// Retransmits per estimated segment sent in the window.
        rate: f64,
    },
    Reset {
        sk: u64,
    },
}

#[derive(Default)]
pub struct Links {
    pub conns: FastMap<u64, Link>,
    pub evicted: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinkView {
    pub pid: u32,
    pub connection: String,
    pub sent_bytes: u64,
    pub recv_bytes: u64,
    /// Bytes per second over the rolling window.
    pub throughput_bps: f64,
    pub retransmits: u64,
    /// Of `retransmits`, tail-loss probes (not taken as loss).
    pub tail_probes: u64,
    pub resets: u64,
    pub errors: u64,
    pub state: i32,
}

impl Links {
    pub fn on_sock(&mut self, e: &SockEvent, cfg: &Config) -> Option<LinkAlert> {
        if !self.conns.contains_key(&e.sk) && self.conns.len() >= cfg.max_connections {
            self.evict();
        }
        let (s, k) = (cfg.slice_ns(), cfg.window_slices);
        let l = self.conns.entry(e.sk).or_insert_with(|| Link {
            pid: e.pid,
            local: e.local,
            remote: e.remote,
            sent: 0,
            recvd: 0,
            errors: 0,
            retransmits: 0,
            tail_probes: 0,
            resets: 0,
            first_ns: e.ts_ns,
            last_send_ns: 0,
            last_ns: e.ts_ns,
            state: TCP_ESTABLISHED,
            bytes_window: RollingSum::new(s, k),
            retrans_window: RollingSum::new(s, k),
            segs_window: RollingSum::new(s, k),
        });
        l.last_ns = l.last_ns.max(e.ts_ns);
        if l.local.is_none() {
            l.local = e.local;
            l.remote = e.remote;
        }
        match e.kind {
            SockKind::Send | SockKind::Recv if e.bytes < 0 => l.errors += 1,
            SockKind::Send => {
                l.last_send_ns = l.last_send_ns.max(e.ts_ns);
                l.sent += e.bytes as u64;
                l.bytes_window.add(e.ts_ns, e.bytes as u64);
                l.segs_window.add(
                    e.ts_ns,
                    (e.bytes as u64).div_ceil(cfg.link_assumed_mss.max(1)),
                );
            }
            SockKind::Recv => {
                l.recvd += e.bytes as u64;
                l.bytes_window.add(e.ts_ns, e.bytes as u64);
            }
            SockKind::Retransmit => {
                l.retransmits += 1;
                let quiet = e.ts_ns.saturating_sub(l.last_send_ns);
                if l.last_send_ns != 0
                    && quiet >= cfg.link_tail_probe_min_ns
                    && quiet < cfg.link_tail_probe_max_ns
                {
                    l.tail_probes += 1;
                    return None;
                }
                l.retrans_window.add(e.ts_ns, 1);
                let n = l.retrans_window.sum(e.ts_ns);
                // Every retransmit was a segment sent too.
                let segs = l.segs_window.sum(e.ts_ns).max(n).max(1);
                let rate = n as f64 / segs as f64;
                if n >= cfg.link_retransmits as u64 && rate >= cfg.link_retransmit_rate {
                    return Some(LinkAlert::Retransmits {
                        sk: e.sk,
                        in_window: n,
                        rate,
                    });
                }
            }
            SockKind::State => {
                l.state = e.newstate;
                if e.oldstate == TCP_ESTABLISHED && e.newstate == TCP_CLOSE {
                    l.resets += 1;
                    return Some(LinkAlert::Reset { sk: e.sk });
                }
            }
            SockKind::Unknown => {}
        }
        None
    }

    fn evict(&mut self) {
        // Closed connections first, then the least recently active.
        let mut ages: Vec<(bool, u64, u64)> = self
            .conns
            .iter()
            .map(|(sk, l)| (l.state != TCP_CLOSE, l.last_ns, *sk))
            .collect();
        ages.sort_unstable();
        let n = (ages.len() / 8).max(1);
        for (_, _, sk) in ages.into_iter().take(n) {
            self.conns.remove(&sk);
            self.evicted += 1;
        }
    }

    /// The busiest connections by bytes in the window.
    pub fn view(&self, now: u64, cfg: &Config, top: usize) -> Vec<LinkView> {
        let secs = cfg.window_ns as f64 / 1e9;
        let mut v: Vec<(u64, u64, LinkView)> = self
            .conns
            .iter()
            .map(|(sk, l)| {
                let w = l.bytes_window.sum(now);
                let view = LinkView {
                    pid: l.pid,
                    connection: l.label(),
                    sent_bytes: l.sent,
                    recv_bytes: l.recvd,
                    throughput_bps: w as f64 / secs,
                    retransmits: l.retransmits,
                    tail_probes: l.tail_probes,
                    resets: l.resets,
                    errors: l.errors,
                    state: l.state,
                };
                (w, *sk, view)
            })
            .collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        v.into_iter().take(top).map(|(_, _, l)| l).collect()
    }
}
