//! `--prometheus [ADDR:]PORT`: an OpenMetrics `/metrics` endpoint (prometheus-client).
//!
//! The run loop feeds [`State`] from events (call durations, calls and return codes, token
//! gaps) and from the engine's snapshot (communicator ids, bus bandwidth, findings, skew of
//! matched instances); a scrape encodes it through a custom collector. Label sets are bounded:
//! past each cap new series are not created and `llmdd_metrics_series_dropped_total` counts
//! the observations that had no series.
//!
//! Metric names and labels (units in the name, counters end in `_total`):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `llmdd_collective_duration_seconds` | histogram | comm, op, rank |
//! | `llmdd_collective_arrival_skew_seconds` | histogram | comm, op |
//! | `llmdd_collective_completion_seconds` | gauge (p50 over the window) | comm, op, size |
//! | `llmdd_collective_bus_bandwidth_bytes_per_second` | gauge (p50 over the window) | comm, op, size |
//!
//! What each collective figure measures: `duration` is the host call time (entry to return;
//! with asynchronous NCCL that is the enqueue, microseconds, never the collective's
//! latency); `completion` is the completion bound, from the last rank's entry to the first
//! sync that saw the collective done (an upper bound of how long it ran on the device side,
//! GPU work queued before it included); `arrival_skew` is the matched instance's span of
//! entries (last minus first rank).
//! | `llmdd_request_ttft_seconds` | histogram | |
//! | `llmdd_request_inter_token_seconds` | histogram | |
//! | `llmdd_calls_total` | counter | pid, function |
//! | `llmdd_call_errors_total` | counter | pid, function, code |
//! | `llmdd_findings_total` | counter (findings raised) | kind |
//! | `llmdd_findings_active` | gauge | kind |
//! | `llmdd_events_total` | counter (records received) | |
//! | `llmdd_events_lost_total` | counter | |
//! | `llmdd_processes_traced` | gauge | |
//! | `llmdd_process_role` | gauge (1) | pid, role |
//! | `llmdd_kv_transfers` | counter (NIXL transfers ended) | pid, agent |
//! | `llmdd_kv_transfer_errors` | counter | pid, agent, error |
//! | `llmdd_kv_transfer_duration_seconds` | gauge (p50, p99 over the window: post to final status) | pid, agent, quantile |
//! | `llmdd_kv_transfers_in_flight` | gauge | pid, agent |
//! | `llmdd_metrics_series_dropped_total` | counter | |

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use llmdd_common::funcs::CallKind;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::MetricType,
    registry::{Registry, Unit},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    engine::Snapshot,
    events::{Event, SockKind},
};

use super::{op_name, Matched};

/// Upper bounds of the duration / skew / gap buckets, seconds.
pub const TIME_BOUNDS: [f64; 22] = [
    1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Series caps.
const MAX_COLLECTIVE_SERIES: usize = 2048;
const MAX_SKEW_SERIES: usize = 512;
const MAX_CALL_SERIES: usize = 4096;
const MAX_ERROR_SERIES: usize = 1024;
const MAX_CONNECTIONS: usize = 16_384;
const MAX_ROLE_SERIES: usize = 1024;
/// Polls after which a handle whose communicator cannot be told is labelled `unresolved`.
const RESOLVE_POLLS: u32 = 3;

/// A fixed-bucket histogram in seconds.
#[derive(Clone, Debug, Default)]
pub struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    pub fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; TIME_BOUNDS.len() + 1];
        }
        let i = TIME_BOUNDS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(TIME_BOUNDS.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn merge(&mut self, o: &Hist) {
        if self.counts.is_empty() {
            self.counts = vec![0; TIME_BOUNDS.len() + 1];
        }
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.sum += o.sum;
        self.count += o.count;
    }

    fn buckets(&self) -> Vec<(f64, u64)> {
        TIME_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            .map(|(i, b)| (b, self.counts.get(i).copied().unwrap_or(0)))
            .collect()
    }
}

#[derive(Clone, Debug, Default)]
struct CollSeries {
    backend: &'static str,
    rank: Option<i32>,
    nranks: Option<i32>,
    hist: Hist,
}

/// Everything `/metrics` shows.
#[derive(Debug, Default)]
pub struct State {
    coll: BTreeMap<(u32, u64, &'static str), CollSeries>,
    /// (pid, role) of the traced processes that have one.
    roles: Vec<(u32, String)>,
    /// KV transfers per (process, agent), from the last snapshot.
    kv: Vec<crate::engine::KvAgentView>,
    comm_of: HashMap<(u32, u64), String>,
    /// Communicator id -> backend (from the calls on its handles).
    comm_backend: HashMap<String, &'static str>,
    polls_unresolved: HashMap<(u32, u64), u32>,
    skew: BTreeMap<(String, &'static str), Hist>,
    busbw: Vec<(String, &'static str, String, f64)>,
    /// (comm, op, size, completion bound p50 in seconds).
    completion: Vec<(String, &'static str, String, f64)>,
    ttft: Hist,
    inter_token: Hist,
    /// Last send per connection of the serving port while a request is answered.
    last_send: HashMap<u64, Option<u64>>,
    serving_port: Option<u16>,
    coalesce_ns: u64,
    requests_seen: HashSet<(u32, u16, u64)>,
    findings_seen: HashSet<u64>,
    findings_total: BTreeMap<&'static str, u64>,
    findings_active: BTreeMap<&'static str, u64>,
    calls: BTreeMap<(u32, &'static str, &'static str), u64>,
    errors: BTreeMap<(u32, &'static str, i64), u64>,
    events: u64,
    lost: u64,
    processes: u64,
    dropped: u64,
}

impl State {
    pub fn new(coalesce_ns: u64) -> State {
        State {
            coalesce_ns,
            ..State::default()
        }
    }

    /// Counts what one event says; `backend` is the collective library of a call (nccl,
    /// rccl, mpi, gloo, user; see `RunInfo::backend`).
    pub fn on_event(&mut self, ev: &Event, backend: &'static str) {
        match ev {
            Event::Call(c) => {
                let name = c.name();
                let n = self.calls.len();
                match self.calls.get_mut(&(c.pid, backend, name)) {
                    Some(v) => *v += 1,
                    None if n < MAX_CALL_SERIES => {
                        self.calls.insert((c.pid, backend, name), 1);
                    }
                    None => self.dropped += 1,
                }
                if let Some(code) = c.ret.filter(|r| *r != 0) {
                    let n = self.errors.len();
                    match self.errors.get_mut(&(c.pid, name, code)) {
                        Some(v) => *v += 1,
                        None if n < MAX_ERROR_SERIES => {
                            self.errors.insert((c.pid, name, code), 1);
                        }
                        None => self.dropped += 1,
                    }
                }
                let coll = matches!(c.spec().kind, CallKind::Collective | CallKind::P2p);
                if let (true, Some(h), Some(d)) = (coll, c.comm, c.duration_ns()) {
                    let key = (c.pid, h, op_name(c.func));
                    let n = self.coll.len();
                    let s = match self.coll.get_mut(&key) {
                        Some(s) => Some(s),
                        None if n < MAX_COLLECTIVE_SERIES => {
                            Some(self.coll.entry(key).or_default())
                        }
                        None => None,
                    };
                    match s {
                        Some(s) => {
                            s.backend = backend;
                            if c.rank.is_some() {
                                s.rank = c.rank;
                            }
                            if c.nranks.is_some() {
                                s.nranks = c.nranks;
                            }
                            s.hist.observe(d as f64 / 1e9);
                        }
                        None => self.dropped += 1,
                    }
                }
            }
            Event::Sock(s) => self.on_sock(s),
            Event::ProcExit(_) => {}
        }
    }

    /// Token gaps on the serving port, as the engine counts them: sends closer than the
    /// coalescing interval are one token; a receive starts a new request.
    fn on_sock(&mut self, s: &crate::events::SockEvent) {
        let Some(port) = self.serving_port else {
            return;
        };
        if s.local.map(|(_, p)| p) != Some(port) {
            return;
        }
        match s.kind {
            SockKind::Recv
                if s.bytes > 0
                    && (self.last_send.len() < MAX_CONNECTIONS
                        || self.last_send.contains_key(&s.sk)) =>
            {
                self.last_send.insert(s.sk, None);
            }
            SockKind::Send if s.bytes > 0 => {
                if let Some(last) = self.last_send.get_mut(&s.sk) {
                    if let Some(l) = *last {
                        let gap = s.ts_ns.saturating_sub(l);
                        if gap >= self.coalesce_ns {
                            self.inter_token.observe(gap as f64 / 1e9);
                        }
                    }
                    *last = Some(s.ts_ns);
                }
            }
            SockKind::State if matches!(s.newstate, 7) => {
                self.last_send.remove(&s.sk);
            }
            _ => {}
        }
    }

    /// Takes what the engine knows: communicator ids of handles, bus bandwidth, findings,
    /// finished requests; `lost` is the total of lost records so far.
    /// The roles of the traced processes (pid, "vllm worker TP1"), bounded like every series.
    pub fn set_roles(&mut self, roles: impl Iterator<Item = (u32, String)>) {
        self.roles = roles.take(MAX_ROLE_SERIES).collect();
    }

    pub fn on_snapshot(&mut self, snap: &Snapshot, events: u64, lost: u64, processes: u64) {
        self.events = events;
        self.lost = lost;
        self.processes = processes;
        self.serving_port = snap.requests.serving_port;
        self.kv = snap.kv_transfers.clone();
        // Handle -> communicator, as the engine placed each member's handle.
        let keys: Vec<((u32, u64), &'static str)> = self
            .coll
            .iter()
            .map(|((p, h, _), s)| ((*p, *h), s.backend))
            .collect();
        for (k, backend) in keys {
            if let Some(c) = self.comm_of.get(&k) {
                self.comm_backend.entry(c.clone()).or_insert(backend);
                continue;
            }
            let found = snap
                .communicators
                .iter()
                .find(|c| c.handles.contains(&k))
                .map(|c| c.lane.id.as_str());
            if let Some(found) = found {
                self.comm_of.insert(k, found.to_string());
                self.comm_backend
                    .entry(found.to_string())
                    .or_insert(backend);
                self.polls_unresolved.remove(&k);
            } else {
                let n = self.polls_unresolved.entry(k).or_insert(0);
                *n += 1;
                if *n >= RESOLVE_POLLS {
                    self.comm_of.insert(k, "unresolved".into());
                    self.polls_unresolved.remove(&k);
                }
            }
        }
        self.busbw = snap
            .communicators
            .iter()
            .flat_map(|c| {
                c.lane.ops.iter().filter_map(|o| {
                    o.busbw_gbps_p50
                        .map(|g| (c.lane.id.clone(), o.op, o.size.clone(), g * 1e9))
                })
            })
            .collect();
        self.completion = snap
            .communicators
            .iter()
            .flat_map(|c| {
                c.lane
                    .ops
                    .iter()
                    .filter(|o| o.completion.count > 0)
                    .map(|o| {
                        let secs = o.completion.p50 as f64 / 1e9;
                        (c.lane.id.clone(), o.op, o.size.clone(), secs)
                    })
            })
            .collect();
        for f in &snap.findings {
            if self.findings_seen.insert(f.id) {
                *self.findings_total.entry(f.kind.name()).or_default() += 1;
            }
        }
        self.findings_active.clear();
        for f in snap.findings.iter().filter(|f| f.active) {
            *self.findings_active.entry(f.kind.name()).or_default() += 1;
        }
        for r in &snap.requests.recent {
            if self.requests_seen.len() >= MAX_CONNECTIONS {
                self.requests_seen.clear();
            }
            if self.requests_seen.insert((r.pid, r.local_port, r.start_ns)) {
                if let Some(t) = r.ttft_ns {
                    self.ttft.observe(t as f64 / 1e9);
                }
            }
        }
    }

    /// The backend of a communicator id, as its calls said ("unknown" before any).
    fn backend_of(&self, comm: &str) -> &'static str {
        self.comm_backend.get(comm).copied().unwrap_or("unknown")
    }

    /// A matched collective instance: its arrival skew.
    pub fn on_instance(&mut self, m: &Matched) {
        let (Some(first), Some(last)) = (
            m.arrivals.iter().map(|a| a.entry_ns).min(),
            m.arrivals.iter().map(|a| a.entry_ns).max(),
        ) else {
            return;
        };
        if m.arrivals.len() < 2 {
            return;
        }
        let key = (m.comm.clone(), m.op);
        let n = self.skew.len();
        match self.skew.get_mut(&key) {
            Some(h) => h.observe((last - first) as f64 / 1e9),
            None if n < MAX_SKEW_SERIES => {
                self.skew
                    .entry(key)
                    .or_default()
                    .observe((last - first) as f64 / 1e9);
            }
            None => self.dropped += 1,
        }
    }

    /// The exposition text (OpenMetrics).
    pub fn encode(state: Arc<Mutex<State>>) -> Result<String, std::fmt::Error> {
        let mut reg = Registry::default();
        reg.register_collector(Box::new(Shared(state)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg)?;
        Ok(out)
    }
}

fn lbl(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect()
}

/// The collector a scrape runs: encodes [`State`] under its lock.
#[derive(Debug)]
struct Shared(Arc<Mutex<State>>);

struct Gauge(f64);
impl EncodeMetric for Gauge {
    fn encode(
        &self,
        mut e: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        e.encode_gauge(&self.0)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// The NIXL transfer families (see the module table).
fn encode_kv(
    kv: &[crate::engine::KvAgentView],
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let agent =
        |k: &crate::engine::KvAgentView| k.agent.clone().unwrap_or_else(|| "unknown".into());
    {
        let mut m = enc.encode_descriptor(
            "llmdd_kv_transfers",
            "NIXL transfers that reached a final status, per pulling process and remote agent",
            None,
            MetricType::Counter,
        )?;
        for k in kv {
            let l = lbl(&[("pid", k.pid.to_string()), ("agent", agent(k))]);
            m.encode_family(&l)?
                .encode_counter::<Vec<(String, String)>, u64, f64>(&k.transfers, None)?;
        }
    }
    {
        let mut m = enc.encode_descriptor(
            "llmdd_kv_transfer_errors",
            "NIXL transfers that ended in an error, by error",
            None,
            MetricType::Counter,
        )?;
        for k in kv {
            for (e, n) in &k.errors {
                let l = lbl(&[
                    ("pid", k.pid.to_string()),
                    ("agent", agent(k)),
                    ("error", e.clone()),
                ]);
                m.encode_family(&l)?
                    .encode_counter::<Vec<(String, String)>, u64, f64>(n, None)?;
            }
        }
    }
    {
        let mut m = enc.encode_descriptor(
            "llmdd_kv_transfer_duration_seconds",
            "NIXL transfer time, post to final status (a completion bound, host time), over the window",
            None,
            MetricType::Gauge,
        )?;
        for k in kv.iter().filter(|k| k.duration.count > 0) {
            for (q, v) in [("0.5", k.duration.p50), ("0.99", k.duration.p99)] {
                let l = lbl(&[
                    ("pid", k.pid.to_string()),
                    ("agent", agent(k)),
                    ("quantile", q.into()),
                ]);
                Gauge(v as f64 / 1e9).encode(m.encode_family(&l)?)?;
            }
        }
    }
    let mut m = enc.encode_descriptor(
        "llmdd_kv_transfers_in_flight",
        "NIXL transfers posted and not yet at a final status",
        None,
        MetricType::Gauge,
    )?;
    for k in kv {
        let l = lbl(&[("pid", k.pid.to_string()), ("agent", agent(k))]);
        Gauge(k.in_flight as f64).encode(m.encode_family(&l)?)?;
    }
    Ok(())
}

impl Collector for Shared {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = match self.0.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Collective durations, merged per (comm, op, rank) once the handle's communicator
        // is known.
        let mut merged: BTreeMap<(String, &'static str, String, &'static str), Hist> =
            BTreeMap::new();
        for ((pid, h, op), series) in &s.coll {
            let Some(comm) = s.comm_of.get(&(*pid, *h)) else {
                continue;
            };
            let rank = series
                .rank
                .map(|r| r.to_string())
                .unwrap_or_else(|| "unknown".into());
            merged
                .entry((comm.clone(), op, rank, series.backend))
                .or_default()
                .merge(&series.hist);
        }
        {
            let mut m = enc.encode_descriptor(
                "llmdd_collective_duration",
                "Host call time of collective and point-to-point calls, entry to return (with \
                 asynchronous NCCL the enqueue, not the collective's latency: see \
                 llmdd_collective_completion_seconds)",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for ((comm, op, rank, backend), h) in &merged {
                let l = lbl(&[
                    ("backend", (*backend).to_string()),
                    ("comm", comm.clone()),
                    ("op", (*op).to_string()),
                    ("rank", rank.clone()),
                ]);
                m.encode_family(&l)?
                    .encode_histogram::<Vec<(String, String)>>(
                        h.sum,
                        h.count,
                        &h.buckets(),
                        None,
                    )?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "llmdd_collective_arrival_skew",
                "Last minus first rank's entry into each matched collective instance",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for ((comm, op), h) in &s.skew {
                let l = lbl(&[
                    ("backend", s.backend_of(comm).to_string()),
                    ("comm", comm.clone()),
                    ("op", (*op).to_string()),
                ]);
                m.encode_family(&l)?
                    .encode_histogram::<Vec<(String, String)>>(
                        h.sum,
                        h.count,
                        &h.buckets(),
                        None,
                    )?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "llmdd_collective_completion",
                "Completion bound: from the last rank's entry to the first sync that saw the \
                 collective done (device-side time, work queued before it included), median \
                 over the rolling window",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for (comm, op, size, v) in &s.completion {
                let l = lbl(&[
                    ("backend", s.backend_of(comm).to_string()),
                    ("comm", comm.clone()),
                    ("op", (*op).to_string()),
                    ("size", size.clone()),
                ]);
                Gauge(*v).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let unit = Unit::Other("bytes_per_second".into());
            let mut m = enc.encode_descriptor(
                "llmdd_collective_bus_bandwidth",
                "Bus bandwidth lower bound (nccl-tests factors), median over the rolling window",
                Some(&unit),
                MetricType::Gauge,
            )?;
            for (comm, op, size, v) in &s.busbw {
                let l = lbl(&[
                    ("backend", s.backend_of(comm).to_string()),
                    ("comm", comm.clone()),
                    ("op", (*op).to_string()),
                    ("size", size.clone()),
                ]);
                Gauge(*v).encode(m.encode_family(&l)?)?;
            }
        }
        for (name, help, h) in [
            (
                "llmdd_request_ttft",
                "Time to first token of finished requests on the serving port",
                &s.ttft,
            ),
            (
                "llmdd_request_inter_token",
                "Gaps between tokens (coalesced sends) of requests on the serving port",
                &s.inter_token,
            ),
        ] {
            let m =
                enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
            let mut m = m;
            m.encode_histogram::<Vec<(String, String)>>(h.sum, h.count, &h.buckets(), None)?;
        }
        {
            let mut m = enc.encode_descriptor(
                "llmdd_calls",
                "Traced calls per process and function",
                None,
                MetricType::Counter,
            )?;
            for ((pid, backend, f), n) in &s.calls {
                let l = lbl(&[
                    ("pid", pid.to_string()),
                    ("backend", (*backend).to_string()),
                    ("function", (*f).to_string()),
                ]);
                m.encode_family(&l)?
                    .encode_counter::<Vec<(String, String)>, u64, f64>(n, None)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "llmdd_call_errors",
                "Traced calls that returned a non-success code",
                None,
                MetricType::Counter,
            )?;
            for ((pid, f, code), n) in &s.errors {
                let l = lbl(&[
                    ("pid", pid.to_string()),
                    ("function", (*f).to_string()),
                    ("code", code.to_string()),
                ]);
                m.encode_family(&l)?
                    .encode_counter::<Vec<(String, String)>, u64, f64>(n, None)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "llmdd_findings",
                "Findings raised, by kind",
                None,
                MetricType::Counter,
            )?;
            for (k, n) in &s.findings_total {
                let l = lbl(&[("kind", (*k).to_string())]);
                m.encode_family(&l)?
                    .encode_counter::<Vec<(String, String)>, u64, f64>(n, None)?;
            }
        }
        encode_kv(&s.kv, &mut enc)?;
        {
            let mut m = enc.encode_descriptor(
                "llmdd_process_role",
                "1 for each traced process whose title or command line names its role on a vLLM / llm-d node",
                None,
                MetricType::Gauge,
            )?;
            for (pid, role) in &s.roles {
                let l = lbl(&[("pid", pid.to_string()), ("role", role.clone())]);
                Gauge(1.0).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "llmdd_findings_active",
                "Findings still going on, by kind",
                None,
                MetricType::Gauge,
            )?;
            for (k, n) in &s.findings_active {
                let l = lbl(&[("kind", (*k).to_string())]);
                Gauge(*n as f64).encode(m.encode_family(&l)?)?;
            }
        }
        for (name, help, v) in [
            (
                "llmdd_events",
                "Records read from the ring buffer",
                s.events,
            ),
            (
                "llmdd_events_lost",
                "Records the kernel side could not deliver",
                s.lost,
            ),
            (
                "llmdd_metrics_series_dropped",
                "Observations without a series because a label cap was reached",
                s.dropped,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            m.encode_counter::<Vec<(String, String)>, u64, f64>(&v, None)?;
        }
        let m = enc.encode_descriptor(
            "llmdd_processes_traced",
            "Processes still traced",
            None,
            MetricType::Gauge,
        )?;
        Gauge(s.processes as f64).encode(m)?;
        Ok(())
    }
}

/// A bound `/metrics` listener (bound before attaching, so a taken port fails early).
pub struct Server {
    listener: std::net::TcpListener,
    pub addr: SocketAddr,
}

impl Server {
    pub fn bind(addr: SocketAddr) -> Result<Server> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                anyhow::anyhow!("--prometheus {addr}: address already in use; choose another port")
            } else {
                anyhow::anyhow!("--prometheus {addr}: cannot listen: {e}")
            }
        })?;
        listener
            .set_nonblocking(true)
            .context("making the metrics listener non-blocking")?;
        let addr = listener.local_addr().unwrap_or(addr);
        Ok(Server { listener, addr })
    }

    /// Serves scrapes until the runtime stops. Must be called inside the tokio runtime.
    pub fn spawn(self, state: Arc<Mutex<State>>) -> Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .context("registering the metrics listener")?;
        tokio::spawn(serve(listener, state));
        Ok(())
    }
}

/// Connections answered at once; more wait in the kernel's listen backlog (no descriptor,
/// no memory here) until one ends.
pub const MAX_SCRAPES: usize = 16;
/// The most one connection may take, from accept to the last byte of the answer: a client
/// that sends its request slowly, or reads the answer slowly, is cut off then.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts and answers scrapes: at most `MAX_SCRAPES` at once, each within
/// `REQUEST_TIMEOUT`; after a failed accept (descriptors exhausted, say) it waits, longer each
/// time up to a second, instead of retrying in a loop on the thread that drains the ring.
async fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<State>>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    let mut backoff = Duration::from_millis(10);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((sock, _)) => {
                backoff = Duration::from_millis(10);
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(sock, state)).await;
                    drop(slot);
                });
            }
            Err(_) => {
                drop(slot);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Answers one HTTP/1.x request and closes the connection.
async fn answer(mut sock: tokio::net::TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => match State::encode(state) {
            Ok(text) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => (
                "500 Internal Server Error",
                "text/plain",
                "encoding failed\n".to_string(),
            ),
        },
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "llmdd: metrics at /metrics\n".to_string(),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let mut resp = String::new();
    let _ = write!(
        resp,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    if method != "HEAD" {
        sock.write_all(body.as_bytes()).await?;
    }
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::fixture;

    type Samples = Vec<(String, String, f64)>;

    /// Parses exposition text into (name, labels, value) samples and `# TYPE` lines.
    fn parse(text: &str) -> (Samples, BTreeMap<String, String>) {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut w = rest.split_whitespace();
                if let (Some(n), Some(t)) = (w.next(), w.next()) {
                    types.insert(n.to_string(), t.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (key, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match key.split_once('{') {
                Some((n, l)) => (n.to_string(), l.trim_end_matches('}').to_string()),
                None => (key.to_string(), String::new()),
            };
            samples.push((name, labels, value.parse().expect("numeric value")));
        }
        (samples, types)
    }

    #[test]
    fn exposition_has_conventional_names_types_and_bounded_labels() {
        let (_run, _summary, e) = fixture::sample();
        let st = Arc::new(Mutex::new(State::new(200_000)));
        let evs = fixture::events();
        {
            let mut s = st.lock().expect("lock");
            s.on_snapshot(&e.snapshot(), 0, 0, 4);
            for ev in &evs {
                s.on_event(ev, "nccl");
            }
            s.on_snapshot(&e.snapshot(), evs.len() as u64, 3, 4);
            s.on_instance(&Matched {
                comm: "00000000000000aa".into(),
                op: "all-reduce",
                seq: 1,
                arrivals: vec![
                    super::super::Arrival {
                        pid: 100,
                        tid: 100,
                        entry_ns: 10,
                    },
                    super::super::Arrival {
                        pid: 101,
                        tid: 101,
                        entry_ns: 2_000_010,
                    },
                ],
            });
        }
        let text = State::encode(st).expect("encodes");
        let (samples, types) = parse(&text);
        for (n, t) in [
            ("llmdd_collective_duration_seconds", "histogram"),
            ("llmdd_collective_arrival_skew_seconds", "histogram"),
            ("llmdd_collective_bus_bandwidth_bytes_per_second", "gauge"),
            ("llmdd_request_ttft_seconds", "histogram"),
            ("llmdd_request_inter_token_seconds", "histogram"),
            ("llmdd_findings", "counter"),
            ("llmdd_events_lost", "counter"),
            ("llmdd_calls", "counter"),
        ] {
            assert_eq!(types.get(n).map(String::as_str), Some(t), "{n}:\n{text}");
        }
        let count = |name: &str, want: &str| -> f64 {
            samples
                .iter()
                .filter(|(n, l, _)| n == name && l.contains(want))
                .map(|(_, _, v)| v)
                .sum()
        };
        assert_eq!(
            count("llmdd_collective_duration_seconds_count", "rank=\"3\""),
            40.0,
            "{text}"
        );
        assert_eq!(
            count("llmdd_collective_arrival_skew_seconds_count", ""),
            1.0
        );
        assert_eq!(count("llmdd_request_ttft_seconds_count", ""), 4.0, "{text}");
        assert!(
            count("llmdd_request_inter_token_seconds_count", "") >= 12.0,
            "{text}"
        );
        assert_eq!(count("llmdd_findings_total", "kind=\"straggler\""), 1.0);
        assert_eq!(count("llmdd_events_lost_total", ""), 3.0);
        assert_eq!(
            count("llmdd_calls_total", "function=\"ncclAllReduce\""),
            160.0
        );
        // Every call and collective series says which backend it is.
        assert_eq!(
            count(
                "llmdd_calls_total",
                "backend=\"nccl\",function=\"ncclAllReduce\""
            ),
            160.0,
            "{text}"
        );
        assert_eq!(
            count(
                "llmdd_collective_duration_seconds_count",
                "backend=\"nccl\""
            ),
            160.0,
            "{text}"
        );
        assert!(
            count(
                "llmdd_collective_bus_bandwidth_bytes_per_second",
                "backend=\"nccl\""
            ) > 0.0,
            "{text}"
        );
        assert_eq!(count("llmdd_call_errors_total", "code=\"2\""), 1.0);
        assert!(
            count(
                "llmdd_collective_bus_bandwidth_bytes_per_second",
                "op=\"all-reduce\""
            ) > 0.0
        );
        // One communicator: every rank's handle resolved to it.
        let comms: HashSet<&str> = samples
            .iter()
            .filter(|(n, _, _)| n == "llmdd_collective_duration_seconds_count")
            .filter_map(|(_, l, _)| l.split("comm=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(comms.len(), 1, "{comms:?}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let mut h = Hist::default();
        h.observe(0.0005);
        h.observe(20.0);
        h.observe(100.0);
        let b = h.buckets();
        assert_eq!(b.len(), TIME_BOUNDS.len() + 1);
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), 3);
        assert_eq!(b.last().map(|x| x.1), Some(1));
    }

    #[test]
    fn a_taken_port_is_one_clear_error() {
        let first = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("binds");
        let err = Server::bind(first.addr).err().expect("second bind fails");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("already in use") && !msg.contains('\n'),
            "{msg}"
        );
    }
}
