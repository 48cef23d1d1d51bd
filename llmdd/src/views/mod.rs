//! Views of a run for people and tools: the versioned JSON report (`report`), Prometheus
//! metrics (`metrics`), the Chrome/Perfetto timeline (`trace`), the flame graph (`flame`)
//! and the live terminal view (`tui`). Each reads the engine's snapshot API and the events
//! themselves; none changes what the engine concludes. `run` holds what a run knows outside
//! the engine (host, kernel, processes and their libraries).

pub mod flame;
pub mod metrics;
pub mod report;
pub mod run;
pub mod trace;
pub mod tui;

#[cfg(test)]
pub(crate) mod fixture;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use llmdd_common::funcs::CallKind;

use crate::{
    engine::{Engine, Snapshot},
    events::{CallEvent, Event},
};
use run::RunInfo;

/// Event time of an event: a call's entry, a socket event's or an exit's timestamp.
pub fn event_time(ev: &Event) -> u64 {
    match ev {
        Event::Call(c) => c.entry_ns,
        Event::Sock(s) => s.ts_ns,
        Event::ProcExit(p) => p.ts_ns,
    }
}

/// One rank's arrival at a matched instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub pid: u32,
    pub tid: u32,
    pub entry_ns: u64,
}

/// A finished instance of a communicator (or graph group) matched across its ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    /// Communicator id (16 hex digits, as in the report).
    pub comm: String,
    pub op: &'static str,
    pub seq: u64,
    /// In member order, the members that arrived.
    pub arrivals: Vec<Arrival>,
}

/// Short op name of a call, as the engine names ops (`all-reduce`, ...; else the function).
pub fn op_name(func: u16) -> &'static str {
    match llmdd_common::funcs::spec(func) {
        Some(s) if s.kind == llmdd_common::funcs::CallKind::GraphLaunch => "graph-launch",
        Some(s) => s.op_label(),
        None => "unknown",
    }
}

/// Recent matchable calls (collectives, send/recv, graph launches) per process, by entry
/// time: finds the thread and op of an instance's arrivals. Bounded per process.
#[derive(Debug, Default)]
pub struct CallIndex {
    per_pid: HashMap<u32, BTreeMap<u64, (u32, u16)>>,
}

/// Calls remembered per process (about a second of a busy rank between two polls).
const INDEX_PER_PID: usize = 32_768;
/// Processes indexed at most.
const INDEX_PIDS: usize = 4096;

impl CallIndex {
    pub fn add(&mut self, c: &CallEvent) {
        if !matches!(
            c.spec().kind,
            CallKind::Collective | CallKind::P2p | CallKind::GraphLaunch
        ) {
            return;
        }
        if !self.per_pid.contains_key(&c.pid) && self.per_pid.len() >= INDEX_PIDS {
            return;
        }
        let m = self.per_pid.entry(c.pid).or_default();
        m.insert(c.entry_ns, (c.tid, c.func));
        if m.len() > INDEX_PER_PID {
            m.pop_first();
        }
    }

    /// (tid, func) of the call `pid` entered at `entry_ns`.
    pub fn get(&self, pid: u32, entry_ns: u64) -> Option<(u32, u16)> {
        self.per_pid.get(&pid)?.get(&entry_ns).copied()
    }
}

/// What the run loop feeds and the file views write at the end: the run's facts, and the
/// optional metrics state, trace and flame graph.
pub struct Outputs {
    pub run: RunInfo,
    index: CallIndex,
    pub metrics: Option<Arc<Mutex<metrics::State>>>,
    pub trace: Option<trace::Trace>,
    pub flame: Option<flame::Folder>,
    /// Per lane: the newest finished instance handed on.
    lanes_seen: HashMap<u64, u64>,
    /// Finished instances that left the engine's history before a poll saw them.
    pub instances_missed: u64,
}

impl Outputs {
    pub fn new(run: RunInfo) -> Outputs {
        Outputs {
            run,
            index: CallIndex::default(),
            metrics: None,
            trace: None,
            flame: None,
            lanes_seen: HashMap::new(),
            instances_missed: 0,
        }
    }

    /// Whether anything needs the engine's snapshot while tracing.
    pub fn polls(&self) -> bool {
        self.metrics.is_some() || self.trace.is_some()
    }

    /// Takes a batch of events (before the engine does).
    pub fn on_batch(&mut self, batch: &[Event]) {
        let mut metrics = self.metrics.as_ref().map(|m| lock(m));
        for ev in batch {
            self.run.observe(ev);
            if let Some(m) = metrics.as_deref_mut() {
                let backend = match ev {
                    Event::Call(c) => self.run.backend(c.pid, c.func),
                    _ => "",
                };
                m.on_event(ev, backend);
            }
            if let Event::Call(c) = ev {
                if metrics.is_some() || self.trace.is_some() {
                    self.index.add(c);
                }
                if let Some(f) = &mut self.flame {
                    f.add(c);
                }
            }
            if let Some(t) = &mut self.trace {
                t.on_event(ev);
            }
        }
    }

    /// Reads the engine: newly finished instances (skew, flows), requests, communicator ids.
    pub fn poll(&mut self, engine: &Engine, snap: &Snapshot, events: u64, lost: u64) {
        let lanes = snap.communicators.iter().map(|c| (&c.lane, None)).chain(
            snap.graph_groups
                .iter()
                .map(|g| (&g.lane, Some("graph-launch"))),
        );
        let mut matched = Vec::new();
        for (lane, fixed_op) in lanes {
            let Ok(id) = u64::from_str_radix(&lane.id, 16) else {
                continue;
            };
            let seen = self.lanes_seen.get(&id).copied();
            let mut newest = seen;
            let mut first_new = None;
            for (seq, entries, finished) in engine.instances(id) {
                if !finished || seen.is_some_and(|s| seq <= s) {
                    continue;
                }
                first_new.get_or_insert(seq);
                newest = Some(newest.map_or(seq, |n: u64| n.max(seq)));
                let mut arrivals = Vec::new();
                let mut op = fixed_op;
                for (i, e) in entries.iter().enumerate() {
                    let (Some(t), Some(m)) = (e, lane.members.get(i)) else {
                        continue;
                    };
                    let (tid, func) = match self.index.get(m.pid, *t) {
                        Some((tid, func)) => (tid, Some(func)),
                        None => (m.pid, None),
                    };
                    if op.is_none() {
                        op = func.map(op_name);
                    }
                    arrivals.push(Arrival {
                        pid: m.pid,
                        tid,
                        entry_ns: *t,
                    });
                }
                matched.push(Matched {
                    comm: lane.id.clone(),
                    op: op.unwrap_or("unknown"),
                    seq,
                    arrivals,
                });
            }
            if let (Some(s), Some(f)) = (seen, first_new) {
                self.instances_missed += f.saturating_sub(s + 1);
            }
            if let Some(n) = newest {
                self.lanes_seen.insert(id, n);
            }
        }
        let live = self.run.procs.values().filter(|p| !p.exited).count() as u64;
        if let Some(m) = &self.metrics {
            let mut m = lock(m);
            m.on_snapshot(snap, events, lost, live);
            m.set_roles(
                self.run
                    .procs
                    .values()
                    .filter(|p| !p.exited)
                    .filter_map(|p| Some((p.pid, p.role.clone()?))),
            );
            for i in &matched {
                m.on_instance(i);
            }
        }
        if let Some(t) = &mut self.trace {
            t.on_graphs(&snap.captured_graphs);
            for i in &matched {
                t.on_instance(i);
            }
            for r in &snap.requests.recent {
                t.on_request(r);
            }
            for k in &snap.kv_recent {
                t.on_kv_transfer(k);
            }
        }
    }
}

/// Locks a mutex, taking the data of a poisoned one (a panicking scrape leaves it usable).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
