//! `--trace FILE`: a Chrome trace-event JSON timeline (opens in ui.perfetto.dev,
//! chrome://tracing, speedscope).
//!
//! * one process per traced pid, named `pid N (rank R)`, with a thread track per thread;
//! * every traced call as a complete slice (`ph: X`) on its thread, category its family
//!   (`nccl`, `cudart`, `cuda`), with its arguments (bytes, count, dtype, op, peer, comm
//!   handle, stream, rank, nranks, return code);
//! * each matched collective instance as a flow (`s`, `t`, `f`) from the first rank's call to
//!   the last's, in arrival order;
//! * requests on the serving port as async slices (`b`/`e`) with a nested time-to-first-token
//!   slice;
//! * findings as instant events on the culprit process (global when there is none).
//!
//! Events are streamed to the file as they come (memory stays bounded); slices beyond
//! `--trace-max-slices` are counted, not written, and the file's `metadata` says so
//! (`capped`, `slices_dropped`). Timestamps are CLOCK_MONOTONIC microseconds.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    fs::File,
    io::{BufWriter, Write},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::{
    engine::{Finding, RequestRecord},
    events::{CallEvent, Event},
};

use super::{report, run::RunInfo, Matched};

/// Threads named at most (beyond, slices still go to their thread, unnamed).
const MAX_THREADS: usize = 65_536;
/// Requests remembered to avoid writing one twice.
const REQUESTS_REMEMBERED: usize = 4096;

/// Trace-event timestamps are microseconds.
fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// Counts of what was written, for the file's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceCounts {
    pub slices: u64,
    pub slices_dropped: u64,
    pub unfinished_calls: u64,
    pub flows: u64,
    pub requests: u64,
    pub findings: u64,
}

/// Captured graphs whose launches are labelled (one per executable per process).
const MAX_GRAPH_LABELS: usize = 4096;

pub struct Trace {
    out: BufWriter<File>,
    wrote_any: bool,
    max_slices: u64,
    pub counts: TraceCounts,
    threads: BTreeSet<(u32, u32)>,
    requests_seen: HashSet<(u32, u16, u64)>,
    requests_order: VecDeque<(u32, u16, u64)>,
    next_id: u64,
    /// What each replay of a captured graph runs, by (pid, executable handle as hex), from
    /// the engine's snapshot (see [`Trace::on_graphs`]).
    graph_holds: HashMap<(u32, String), String>,
    /// The newest KV transfer drawn (its `seq`).
    kv_seen: u64,
    /// The first write error (reported when the trace is finished).
    error: Option<std::io::Error>,
}

impl Trace {
    /// Starts the document in `out` (opened before attaching).
    pub fn new(mut out: BufWriter<File>, max_slices: u64) -> Trace {
        let error = out
            .write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")
            .err();
        Trace {
            out,
            wrote_any: false,
            max_slices,
            counts: TraceCounts::default(),
            threads: BTreeSet::new(),
            requests_seen: HashSet::new(),
            requests_order: VecDeque::new(),
            next_id: 0,
            graph_holds: HashMap::new(),
            kv_seen: 0,
            error,
        }
    }

    /// Learns what the captured graphs hold, so that their later launches say it
    /// (`args.runs`); launches traced before the engine saw the graph's first replay stay
    /// unlabelled.
    pub fn on_graphs(&mut self, graphs: &[crate::engine::CapturedGraphView]) {
        for g in graphs {
            if self.graph_holds.len() >= MAX_GRAPH_LABELS {
                break;
            }
            self.graph_holds
                .entry((g.pid, g.exec.clone()))
                .or_insert_with(|| g.holds());
        }
    }

    fn emit(&mut self, v: &Value) {
        if self.error.is_some() {
            return;
        }
        let sep: &[u8] = if self.wrote_any { b",\n" } else { b"" };
        self.wrote_any = true;
        let r = self
            .out
            .write_all(sep)
            .and_then(|()| serde_json::to_writer(&mut self.out, v).map_err(std::io::Error::from));
        if let Err(e) = r {
            self.error = Some(e);
        }
    }

    pub fn capped(&self) -> bool {
        self.counts.slices >= self.max_slices
    }

    pub fn on_event(&mut self, ev: &Event) {
        if let Event::Call(c) = ev {
            self.call(c);
        }
    }

    fn call(&mut self, c: &CallEvent) {
        if self.capped() {
            self.counts.slices_dropped += 1;
            return;
        }
        if self.threads.len() < MAX_THREADS {
            self.threads.insert((c.pid, c.tid));
        }
        let mut args = serde_json::Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                args.insert(k.to_string(), v);
            }
        };
        put("bytes", c.bytes.map(Value::from));
        put("count", c.count.map(Value::from));
        put("dtype", c.dtype.map(Value::from));
        put("op", c.op.map(Value::from));
        put("peer", c.peer.map(Value::from));
        put("comm", c.comm.map(|h| Value::from(format!("{h:#x}"))));
        put("stream", c.stream.map(|h| Value::from(format!("{h:#x}"))));
        put("rank", c.rank.map(Value::from));
        put("nranks", c.nranks.map(Value::from));
        put("ret", c.ret.map(Value::from));
        for (k, v) in &c.values {
            put(k, Some(Value::from(*v)));
        }
        if c.spec().kind == llmdd_common::funcs::CallKind::GraphLaunch {
            let key = (c.pid, format!("{:016x}", c.args[0]));
            put("runs", self.graph_holds.get(&key).cloned().map(Value::from));
        }
        let dur = match c.duration_ns() {
            Some(d) => d,
            None => {
                self.counts.unfinished_calls += 1;
                put("unfinished", Some(Value::Bool(true)));
                0
            }
        };
        self.counts.slices += 1;
        self.emit(&json!({
            "ph": "X",
            "name": c.name(),
            "cat": c.family,
            "pid": c.pid,
            "tid": c.tid,
            "ts": us(c.entry_ns),
            "dur": us(dur),
            "args": args,
        }));
    }

    /// Flow arrows joining the ranks' calls of one matched instance, in arrival order.
    pub fn on_instance(&mut self, m: &Matched) {
        if m.arrivals.len() < 2 || self.capped() {
            return;
        }
        let mut arr: Vec<&super::Arrival> = m.arrivals.iter().collect();
        arr.sort_by_key(|a| a.entry_ns);
        self.next_id += 1;
        let id = self.next_id;
        let n = arr.len();
        for (i, a) in arr.into_iter().enumerate() {
            let ph = match i {
                0 => "s",
                i if i + 1 == n => "f",
                _ => "t",
            };
            let mut ev = json!({
                "ph": ph,
                "id": id,
                "name": m.op,
                "cat": "collective",
                "pid": a.pid,
                "tid": a.tid,
                "ts": us(a.entry_ns),
                "args": {"comm": m.comm, "instance": m.seq},
            });
            if ph == "f" {
                ev["bp"] = Value::from("e");
            }
            self.emit(&ev);
        }
        self.counts.flows += 1;
    }

    /// A finished request as an async slice (written once).
    /// A finished KV transfer (NIXL) as a slice on the thread that posted it, from its post
    /// to the return of the call that gave its final status (drawn once per transfer).
    pub fn on_kv_transfer(&mut self, t: &crate::engine::TransferRecord) {
        if t.seq <= self.kv_seen {
            return;
        }
        self.kv_seen = t.seq;
        if self.capped() {
            self.counts.slices_dropped += 1;
            return;
        }
        let name = format!(
            "KV {} from {}",
            t.op.unwrap_or("transfer"),
            t.agent
                .as_deref()
                .map(|a| format!("agent {a}…"))
                .unwrap_or_else(|| "an unnamed agent".into())
        );
        self.counts.slices += 1;
        self.emit(&json!({
            "ph": "X",
            "name": name,
            "cat": "kv-transfer",
            "pid": t.pid,
            "tid": t.tid,
            "ts": us(t.posted_ns),
            "dur": us(t.end_ns.saturating_sub(t.posted_ns)),
            "args": {"status": t.status, "descriptors": t.descriptors,
                     "measures": "post to the return of the call that gave the final status (completion bound)"},
        }));
    }

    pub fn on_request(&mut self, r: &RequestRecord) {
        let key = (r.pid, r.local_port, r.start_ns);
        if !self.requests_seen.insert(key) {
            return;
        }
        self.requests_order.push_back(key);
        if self.requests_order.len() > REQUESTS_REMEMBERED {
            if let Some(old) = self.requests_order.pop_front() {
                self.requests_seen.remove(&old);
            }
        }
        self.next_id += 1;
        let id = format!("req{}", self.next_id);
        let name = format!("request :{}", r.local_port);
        let args = json!({
            "remote": r.remote,
            "ttft_ms": r.ttft_ns.map(|t| t as f64 / 1e6),
            "tokens": r.tokens,
            "recv_bytes": r.recv_bytes,
            "sent_bytes": r.sent_bytes,
            "max_inter_token_ms": r.max_gap_ns as f64 / 1e6,
            "end": r.end,
        });
        let base = |ph: &str, name: &str, ts: u64| {
            json!({"ph": ph, "cat": "request", "name": name, "id": id, "pid": r.pid,
                   "tid": r.pid, "ts": us(ts)})
        };
        let mut b = base("b", &name, r.start_ns);
        b["args"] = args;
        self.emit(&b);
        if let Some(t) = r.ttft_ns {
            self.emit(&base("b", "time to first token", r.start_ns));
            self.emit(&base("e", "time to first token", r.start_ns + t));
        }
        self.emit(&base("e", &name, r.end_ns.max(r.start_ns)));
        self.counts.requests += 1;
    }

    /// Writes process and thread names, findings and metadata, and closes the document.
    pub fn finish(
        mut self,
        run: &RunInfo,
        findings: &[Finding],
        instances_missed: u64,
    ) -> Result<TraceCounts> {
        let mut pids: BTreeSet<u32> = run.procs.keys().copied().collect();
        pids.extend(self.threads.iter().map(|(p, _)| *p));
        for pid in &pids {
            let (name, sort) = match run.procs.get(pid) {
                Some(p) => {
                    let r = p.rank().0;
                    (
                        format!("{} {}", p.label(), p.comm).trim().to_string(),
                        r.map(i64::from),
                    )
                }
                None => (format!("pid {pid}"), None),
            };
            self.emit(
                &json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                              "args": {"name": name}}),
            );
            if let Some(s) = sort {
                self.emit(&json!({"ph": "M", "name": "process_sort_index", "pid": pid,
                                  "tid": 0, "args": {"sort_index": s}}));
            }
        }
        let threads: Vec<(u32, u32)> = self.threads.iter().copied().collect();
        for (pid, tid) in threads {
            let name = if pid == tid {
                format!("main thread {tid}")
            } else {
                format!("thread {tid}")
            };
            self.emit(
                &json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                              "args": {"name": name}}),
            );
        }
        for f in findings {
            let rf = report::finding(f);
            let mut ev = json!({
                "ph": "i",
                "name": format!("{} ({})", rf.kind, rf.severity),
                "cat": "finding",
                "ts": us(f.raised_ns.max(f.window_start_ns)),
                "pid": f.culprit.pid.unwrap_or(0),
                "tid": f.culprit.pid.unwrap_or(0),
                "s": if f.culprit.pid.is_some() { "p" } else { "g" },
                "args": {
                    "evidence": rf.evidence,
                    "suggestion": rf.suggestion,
                    "culprit": serde_json::to_value(&rf.culprit).unwrap_or(Value::Null),
                    "window_start_us": us(f.window_start_ns),
                    "window_end_us": us(f.window_end_ns),
                    "active": f.active,
                },
            });
            if f.culprit.pid.is_none() {
                if let Some(m) = ev.as_object_mut() {
                    m.remove("pid");
                    m.remove("tid");
                }
                ev["pid"] = Value::from(0);
                ev["tid"] = Value::from(0);
            }
            self.emit(&ev);
            self.counts.findings += 1;
        }
        let meta = json!({
            "tool": "llmdd",
            "version": env!("CARGO_PKG_VERSION"),
            "clock": "CLOCK_MONOTONIC, microseconds",
            "host": run.host,
            "capped": self.counts.slices_dropped > 0,
            "max_slices": self.max_slices,
            "slices_written": self.counts.slices,
            "slices_dropped": self.counts.slices_dropped,
            "unfinished_calls": self.counts.unfinished_calls,
            "flows": self.counts.flows,
            "instances_missed": instances_missed,
            "requests": self.counts.requests,
            "findings": self.counts.findings,
        });
        if let Some(e) = self.error.take() {
            return Err(e).context("writing the trace");
        }
        self.out
            .write_all(b"\n],\"metadata\":")
            .and_then(|()| {
                serde_json::to_writer(&mut self.out, &meta).map_err(std::io::Error::from)
            })
            .and_then(|()| self.out.write_all(b"}\n"))
            .and_then(|()| self.out.flush())
            .context("writing the trace")?;
        Ok(self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::{fixture, Outputs};

    fn traced(max_slices: u64) -> (TraceCounts, Value) {
        let (run, _summary, e) = fixture::sample();
        let dir =
            std::env::temp_dir().join(format!("llmdd-trace-{}-{max_slices}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("t.json");
        let out = crate::session::create_output(&path).expect("open");
        let mut o = Outputs::new(run);
        o.trace = Some(Trace::new(out, max_slices));
        o.on_batch(&fixture::events());
        let snap = e.snapshot();
        o.poll(&e, &snap, 0, 0);
        let t = o.trace.take().expect("trace");
        let counts = t
            .finish(&o.run, &snap.findings, o.instances_missed)
            .expect("finish");
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        let _ = std::fs::remove_dir_all(&dir);
        (counts, doc)
    }

    #[test]
    fn trace_has_slices_per_rank_flows_requests_findings() {
        let (counts, doc) = traced(1000);
        assert_eq!((counts.slices, counts.slices_dropped), (321, 0));
        assert_eq!(doc["metadata"]["capped"], false);
        let evs = doc["traceEvents"].as_array().expect("events");
        for pid in 100..104u32 {
            let n = evs
                .iter()
                .filter(|v| v["ph"] == "X" && v["pid"] == pid && v["name"] == "ncclAllReduce")
                .count();
            assert_eq!(n, 40, "pid {pid}");
        }
        let names: Vec<&str> = evs
            .iter()
            .filter(|v| v["ph"] == "M" && v["name"] == "process_name")
            .filter_map(|v| v["args"]["name"].as_str())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("pid 103 (rank 3)")),
            "{names:?}"
        );
        // One flow per matched instance, from the first arrival to the last (rank 3).
        assert!(counts.flows >= 30, "{counts:?}");
        let starts = evs.iter().filter(|v| v["ph"] == "s").count() as u64;
        let ends: Vec<&Value> = evs
            .iter()
            .filter(|v| v["ph"] == "f" && v["bp"] == "e")
            .collect();
        assert_eq!((starts, ends.len() as u64), (counts.flows, counts.flows));
        assert!(
            ends.iter().all(|f| f["pid"] == 103),
            "the straggler arrives last"
        );
        assert_eq!(counts.requests, 4);
        assert!(evs.iter().any(|v| v["ph"] == "b" && v["cat"] == "request"));
        assert!(evs.iter().any(|v| v["ph"] == "i"
            && v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("straggler"))));
    }

    #[test]
    fn a_capped_trace_says_so() {
        let (counts, doc) = traced(100);
        assert_eq!((counts.slices, counts.slices_dropped), (100, 221));
        assert_eq!(doc["metadata"]["capped"], true);
        assert_eq!(doc["metadata"]["slices_dropped"], 221);
    }
}
