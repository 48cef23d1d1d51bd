//! The `--report FILE` document: versioned JSON, described by `docs/report.schema.json`.
//!
//! Its types are this module's own, converted from the engine's snapshot, so that the
//! engine's internals can change without changing the document; a change to the document
//! changes [`SCHEMA_VERSION`] and the schema file together (a test validates one against the
//! other). Times are CLOCK_MONOTONIC nanoseconds unless a field's name says otherwise.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    engine::{CommView, Finding, GroupBasis, Identity, LaneView, Pctl, RequestsView, Snapshot},
    summary::Summary,
};
use llmdd_common::counters;

use super::run::{KernelInfo, LibInfo, RunInfo};

/// Version of the report document. 1 was the unversioned first form (an engine snapshot
/// dump); 2 is the documented one.
pub const SCHEMA_VERSION: u32 = 4;

/// The schema, as shipped in the repository.
pub const SCHEMA: &str = include_str!("../../../docs/report.schema.json");

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: Tool,
    pub host: Host,
    pub run: Run,
    pub events: Events,
    pub processes: Vec<Process>,
    pub communicators: Vec<Communicator>,
    pub graph_groups: Vec<GraphGroup>,
    /// Replayed graph executables whose capture was seen, with what each replay runs.
    pub captured_graphs: Vec<crate::engine::CapturedGraphView>,
    /// KV-cache transfers (NIXL) per (pulling process, remote agent).
    pub kv_transfers: Vec<crate::engine::KvAgentView>,
    pub requests: Requests,
    pub findings: Vec<ReportFinding>,
    /// What the analysis could not conclude and why, one line each.
    pub notes: Vec<String>,
    /// The engine's counters (what it saw, held back, dropped, evicted), by name.
    pub engine_counts: BTreeMap<String, u64>,
    /// Several hosts' recordings merged (`llmdd report a.rec b.rec`): each host's clock
    /// offset with its error and how it was found, the bounds, the processes by host and the
    /// communicators matched across hosts (`merge::Merged`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<serde_json::Value>,
    /// The node's network interfaces over the last sampling interval (live tracing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nics: Option<Vec<crate::node::NicSample>>,
    /// What the probes cost each traced thread and what was sampled rather than traced
    /// in full (live runs with the overhead budget on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead: Option<Overhead>,
}

/// The probes' cost and sampling.
#[derive(Clone, Debug, Serialize)]
pub struct Overhead {
    /// The budget as a share of each thread's time, and whether hot probes are
    /// duty-cycled to hold it.
    pub budget: f64,
    pub enforced: bool,
    /// One traced call's cost as the calibration measured it (llmdd's own function, in
    /// its own process), ns.
    pub calibrated_call_ns: f64,
    pub threads: Vec<crate::cost::ThreadCost>,
    /// Calls counted in the kernel (aggregate mode), per process: each still costs its
    /// thread a trap, but no record says which thread; the share is what they would take
    /// of one thread's time over the process's traced span.
    pub aggregated: Vec<Aggregated>,
    /// Probe families attached only part of the time: their counts are extrapolated.
    pub sampled: Vec<Sampled>,
}

/// One process's calls counted in the kernel.
#[derive(Clone, Debug, Serialize)]
pub struct Aggregated {
    pub pid: u32,
    pub calls: u64,
    pub seconds: f64,
    pub calibrated_share: f64,
}

/// One process's probe family under the duty cycle.
#[derive(Clone, Debug, Serialize)]
pub struct Sampled {
    pub pid: u32,
    pub family: &'static str,
    /// Share of the time its hot probes were attached, and the factor their counts are
    /// multiplied by.
    pub attached: f64,
    pub count_scale: f64,
}

fn aggregated(s: &Summary) -> Vec<Aggregated> {
    let cost = s.call_cost_ns.unwrap_or(0.0);
    s.aggregated_calls
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(&pid, &calls)| {
            // The process's traced span: its longest-traced thread's.
            let seconds = s
                .thread_costs
                .iter()
                .filter(|t| t.pid == pid)
                .map(|t| t.seconds)
                .fold(0.0, f64::max);
            Aggregated {
                pid,
                calls,
                seconds,
                calibrated_share: if seconds > 0.0 {
                    (calls as f64 * cost / (seconds * 1e9)).min(1.0)
                } else {
                    0.0
                },
            }
        })
        .collect()
}

fn overhead(s: &Summary) -> Option<Overhead> {
    Some(Overhead {
        budget: s.over_budget.0,
        enforced: s.budget_enforced,
        calibrated_call_ns: s.call_cost_ns?,
        threads: s.thread_costs.clone(),
        aggregated: aggregated(s),
        sampled: s
            .duties
            .iter()
            .map(|d| Sampled {
                pid: d.pid,
                family: d.family.name(),
                attached: d.attached,
                count_scale: d.scale,
            })
            .collect(),
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct Tool {
    pub name: &'static str,
    pub version: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Host {
    pub hostname: Option<String>,
    pub kernel: KernelInfo,
}

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub started_unix_s: f64,
    pub duration_s: f64,
    pub stopped_because: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Events {
    /// Records read from the ring buffer.
    pub received: u64,
    pub undecodable: u64,
    /// Records the kernel side could not deliver (sum of `lost_by_reason`).
    pub lost: u64,
    pub lost_by_reason: BTreeMap<&'static str, u64>,
    /// Probe diagnostics that are not losses (returns without entry are calls already in
    /// flight at attach; failed user or kernel reads leave one field unknown).
    pub probe_notes: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub rank: Option<u32>,
    pub nranks: Option<u32>,
    /// "communicator" (read through its NCCL handles), "environment" or "unknown".
    pub rank_source: &'static str,
    /// What it is on a vLLM / llm-d node ("vllm worker TP1", "llm-d routing sidecar ..."),
    /// from its title and command line; absent when they say nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub exited: bool,
    pub libraries: Vec<LibInfo>,
    pub functions: Vec<Function>,
    /// Host context over the last sampling interval (live tracing only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<crate::node::HostSample>,
    /// The GPU it uses, as last sampled (live tracing with NVML only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<ProcessGpu>,
    /// Where its threads were last found (live tracing, the process running at the end).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<Thread>,
}

/// A thread of a traced process and where it was last found.
#[derive(Clone, Debug, Serialize)]
pub struct Thread {
    pub tid: u32,
    pub name: String,
    pub now: ThreadNow,
}

/// Where a thread was, as last read.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadNow {
    /// When it was read (CLOCK_MONOTONIC ns).
    pub at_ns: u64,
    pub state: char,
    pub syscall: Option<i64>,
    pub regs_from: &'static str,
    #[serde(flatten)]
    pub place: crate::engine::Place,
    pub frames: Vec<String>,
    pub site: String,
}

fn threads_of(snap: &Snapshot, pid: u32) -> Vec<Thread> {
    snap.threads
        .iter()
        .filter(|p| p.pid == pid)
        .flat_map(|p| {
            p.threads.iter().map(|t| Thread {
                tid: t.tid,
                name: t.name.clone(),
                now: ThreadNow {
                    at_ns: p.at_ns,
                    state: t.state,
                    syscall: t.syscall,
                    regs_from: t.regs_from,
                    place: t.place.clone(),
                    frames: t.frames.clone(),
                    site: t.site.clone(),
                },
            })
        })
        .collect()
}

/// A process's GPU and how llmdd knows it is that one.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessGpu {
    #[serde(flatten)]
    pub device: crate::gpu::GpuSample,
    pub mapped_by: crate::gpu::MappedBy,
}

#[derive(Clone, Debug, Serialize)]
pub struct Function {
    pub name: &'static str,
    pub calls: u64,
    pub bytes: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Each non-success return code and how often it was returned.
    pub errors: Vec<ReturnCode>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReturnCode {
    pub code: i64,
    pub count: u64,
}

/// Percentiles in nanoseconds over the engine's rolling window.
#[derive(Clone, Debug, Serialize)]
pub struct Dist {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl From<&Pctl> for Dist {
    fn from(p: &Pctl) -> Dist {
        Dist {
            count: p.count,
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            max: p.max,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Member {
    pub pid: u32,
    pub rank: Option<u32>,
    pub host: Option<String>,
    pub state: &'static str,
    pub calls: u64,
    pub arrival_lag_ns: Dist,
    pub latency_ns: Dist,
    pub excused_instances: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Op {
    pub op: &'static str,
    pub size: String,
    pub calls: u64,
    pub latency_ns: Dist,
    pub arrival_skew_ns: Dist,
    pub completion_ns: Dist,
    pub bus_bandwidth_bytes_per_second_p50: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Lane {
    pub id: String,
    pub evidence: &'static str,
    pub members: Vec<Member>,
    pub instances_finished: u64,
    pub instances_open: usize,
    pub unverified: bool,
    pub realignments: u64,
    pub ops: Vec<Op>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommIdentity {
    /// "unique_id", "split" or "inferred".
    pub by: &'static str,
    pub uid_hash: Option<String>,
    pub parent: Option<String>,
    pub split: Option<u32>,
    pub color: Option<i64>,
    pub rank_source: Option<&'static str>,
    /// Grouped by a guess (another communicator of the same shape was as likely): no
    /// finding names a rank on it.
    pub ambiguous: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Communicator {
    /// nccl, rccl, mpi, gloo or user (the family of its calls).
    pub backend: &'static str,
    pub identity: CommIdentity,
    pub nranks: Option<u32>,
    pub first_seen_ns: u64,
    #[serde(flatten)]
    pub lane: Lane,
}

#[derive(Clone, Debug, Serialize)]
pub struct GraphGroup {
    /// "communicator" or "environment".
    pub basis: &'static str,
    #[serde(flatten)]
    pub lane: Lane,
}

#[derive(Clone, Debug, Serialize)]
pub struct Request {
    pub pid: u32,
    pub local_port: u16,
    pub remote: Option<String>,
    pub start_ns: u64,
    pub ttft_ns: Option<u64>,
    /// Request to a header block sent on its own before the first token.
    pub headers_ns: Option<u64>,
    pub end_ns: u64,
    pub tokens: u32,
    pub recv_bytes: u64,
    pub sent_bytes: u64,
    pub max_inter_token_ns: u64,
    pub end: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Requests {
    pub serving_port: Option<u16>,
    pub port_source: &'static str,
    pub finished: u64,
    pub in_flight: u32,
    pub peak_concurrency: u32,
    pub mean_concurrency: f64,
    pub ttft_ns: Dist,
    pub inter_token_ns: Dist,
    pub duration_ns: Dist,
    pub tokens: Dist,
    pub recent: Vec<Request>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReportCulprit {
    pub host: Option<String>,
    pub pid: Option<u32>,
    pub rank: Option<u32>,
    /// Communicator or graph group id (16 hex digits, as in `communicators[].id`).
    pub comm: Option<String>,
    pub connection: Option<String>,
    /// A remote NIXL agent (kv_transfer findings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReportMagnitude {
    pub name: &'static str,
    pub value: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReportFinding {
    pub id: u64,
    pub kind: &'static str,
    pub severity: &'static str,
    pub active: bool,
    pub culprit: ReportCulprit,
    pub evidence: String,
    /// Which evidence the conclusion rests on.
    pub source: &'static str,
    pub window: Window,
    pub magnitude: ReportMagnitude,
    pub suggestion: String,
    pub raised_ns: u64,
    pub updated_ns: u64,
    pub lost_events_in_window: u64,
}

/// Counters of the event path for the report.
#[derive(Clone, Debug, Default)]
pub struct EventTotals {
    pub received: u64,
    pub undecodable: u64,
    pub counters: Vec<u64>,
}

/// Everything a report is made of.
pub struct Inputs<'a> {
    pub run: &'a RunInfo,
    pub summary: &'a Summary,
    pub snapshot: &'a Snapshot,
    pub events: EventTotals,
    pub stopped_because: &'a str,
    pub duration_s: f64,
    /// The merged job view, when several hosts were merged.
    pub job: Option<&'a serde_json::Value>,
    /// Node context of the traced processes (live tracing).
    pub node: Option<&'a crate::node::NodeContext>,
}

pub fn id_hex(id: u64) -> String {
    format!("{id:016x}")
}

pub fn severity_name(s: crate::engine::Severity) -> &'static str {
    match s {
        crate::engine::Severity::Info => "info",
        crate::engine::Severity::Warning => "warning",
        crate::engine::Severity::Critical => "critical",
    }
}

fn lane(l: &LaneView) -> Lane {
    Lane {
        id: l.id.clone(),
        evidence: l.evidence,
        members: l
            .members
            .iter()
            .map(|m| Member {
                pid: m.pid,
                rank: m.rank,
                host: m.host.clone(),
                state: m.state,
                calls: m.calls,
                arrival_lag_ns: (&m.lag).into(),
                latency_ns: (&m.latency).into(),
                excused_instances: m.excused,
            })
            .collect(),
        instances_finished: l.finished,
        instances_open: l.open,
        unverified: l.unverified,
        realignments: l.realignments,
        ops: l
            .ops
            .iter()
            .map(|o| Op {
                op: o.op,
                size: o.size.clone(),
                calls: o.calls,
                latency_ns: (&o.latency).into(),
                arrival_skew_ns: (&o.skew).into(),
                completion_ns: (&o.completion).into(),
                bus_bandwidth_bytes_per_second_p50: o.busbw_gbps_p50.map(|g| g * 1e9),
            })
            .collect(),
    }
}

fn communicator(c: &CommView, run: &RunInfo) -> Communicator {
    let identity = match &c.identity {
        Identity::UniqueId { uid_hash } => CommIdentity {
            by: "unique_id",
            uid_hash: Some(id_hex(*uid_hash)),
            parent: None,
            split: None,
            color: None,
            rank_source: None,
            ambiguous: false,
        },
        Identity::Split {
            parent,
            split,
            color,
        } => CommIdentity {
            by: "split",
            uid_hash: None,
            parent: Some(id_hex(*parent)),
            split: Some(*split),
            color: Some(*color),
            rank_source: None,
            ambiguous: false,
        },
        Identity::Inferred {
            rank_source,
            ambiguous,
            ..
        } => CommIdentity {
            by: "inferred",
            uid_hash: None,
            parent: None,
            split: None,
            color: None,
            rank_source: Some(rank_source),
            ambiguous: *ambiguous,
        },
    };
    Communicator {
        backend: run.family_backend(c.lane.members.first().map(|m| m.pid).unwrap_or(0), c.family),
        identity,
        nranks: c.nranks,
        first_seen_ns: c.first_seen_ns,
        lane: lane(&c.lane),
    }
}

fn requests(r: &RequestsView) -> Requests {
    Requests {
        serving_port: r.serving_port,
        port_source: r.port_source,
        finished: r.finished,
        in_flight: r.in_flight,
        peak_concurrency: r.peak_concurrency,
        mean_concurrency: r.mean_concurrency,
        ttft_ns: (&r.ttft).into(),
        inter_token_ns: (&r.inter_token).into(),
        duration_ns: (&r.duration).into(),
        tokens: (&r.tokens).into(),
        recent: r
            .recent
            .iter()
            .map(|q| Request {
                pid: q.pid,
                local_port: q.local_port,
                remote: q.remote.clone(),
                start_ns: q.start_ns,
                ttft_ns: q.ttft_ns,
                headers_ns: q.headers_ns,
                end_ns: q.end_ns,
                tokens: q.tokens,
                recv_bytes: q.recv_bytes,
                sent_bytes: q.sent_bytes,
                max_inter_token_ns: q.max_gap_ns,
                end: q.end,
            })
            .collect(),
    }
}

pub fn finding(f: &Finding) -> ReportFinding {
    ReportFinding {
        id: f.id,
        kind: f.kind.name(),
        severity: severity_name(f.severity),
        active: f.active,
        culprit: ReportCulprit {
            host: f.culprit.host.clone(),
            pid: f.culprit.pid,
            rank: f.culprit.rank,
            comm: f.culprit.comm.map(id_hex),
            connection: f.culprit.connection.clone(),
            agent: f.culprit.agent.clone(),
        },
        evidence: f.evidence.clone(),
        source: f.source,
        window: Window {
            start_ns: f.window_start_ns,
            end_ns: f.window_end_ns,
        },
        magnitude: ReportMagnitude {
            name: f.magnitude.name,
            value: if f.magnitude.value.is_finite() {
                f.magnitude.value
            } else {
                0.0
            },
        },
        suggestion: f.suggestion.clone(),
        raised_ns: f.raised_ns,
        updated_ns: f.updated_ns,
        lost_events_in_window: f.lost_events_in_window,
    }
}

/// The engine's counters by name (whatever fields `Counts` has, as integers).
fn engine_counts(s: &Snapshot) -> BTreeMap<String, u64> {
    match serde_json::to_value(&s.counts) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| v.as_u64().map(|n| (k, n)))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Builds the report.
pub fn build(i: &Inputs) -> Report {
    let mut lost_by_reason = BTreeMap::new();
    let mut probe_notes = BTreeMap::new();
    for (idx, n) in i.events.counters.iter().enumerate() {
        let name = counters::NAMES.get(idx).copied().unwrap_or("unknown");
        if counters::is_loss(idx as u32) {
            lost_by_reason.insert(name, *n);
        } else {
            probe_notes.insert(name, *n);
        }
    }
    let processes = i
        .run
        .procs
        .values()
        .map(|p| {
            let (rank, nranks, rank_source) = p.rank();
            let functions = i
                .summary
                .funcs
                .range((p.pid, "")..)
                .take_while(|((pid, _), _)| *pid == p.pid)
                .map(|((_, name), s)| Function {
                    name,
                    calls: s.calls,
                    bytes: s.bytes,
                    total_ns: s.total_ns,
                    max_ns: s.max_ns,
                    errors: s
                        .errors
                        .iter()
                        .map(|(code, count)| ReturnCode {
                            code: *code,
                            count: *count,
                        })
                        .collect(),
                })
                .collect();
            Process {
                pid: p.pid,
                comm: p.comm.clone(),
                rank,
                nranks,
                rank_source,
                role: p.role.clone(),
                exited: p.exited || i.summary.exited.contains(&p.pid),
                libraries: p.libraries.clone(),
                functions,
                host: i.node.and_then(|n| n.procs.get(&p.pid).copied()),
                gpu: i.node.and_then(|n| {
                    n.gpu_of(p.pid).map(|(g, by)| ProcessGpu {
                        device: g.clone(),
                        mapped_by: by,
                    })
                }),
                threads: threads_of(i.snapshot, p.pid),
            }
        })
        .collect();
    Report {
        schema_version: SCHEMA_VERSION,
        tool: Tool {
            name: "llmdd",
            version: env!("CARGO_PKG_VERSION"),
        },
        host: Host {
            hostname: i.run.host.clone(),
            kernel: i.run.kernel.clone(),
        },
        run: Run {
            started_unix_s: i.run.started_unix_s,
            duration_s: i.duration_s,
            stopped_because: i.stopped_because.to_string(),
        },
        events: Events {
            received: i.events.received,
            undecodable: i.events.undecodable,
            lost: lost_by_reason.values().sum(),
            lost_by_reason,
            probe_notes,
        },
        processes,
        communicators: i
            .snapshot
            .communicators
            .iter()
            .map(|c| communicator(c, i.run))
            .collect(),
        graph_groups: i
            .snapshot
            .graph_groups
            .iter()
            .map(|g| GraphGroup {
                basis: match g.basis {
                    GroupBasis::Communicator { .. } => "communicator",
                    GroupBasis::Environment { .. } => "environment",
                },
                lane: lane(&g.lane),
            })
            .collect(),
        captured_graphs: i.snapshot.captured_graphs.clone(),
        kv_transfers: i.snapshot.kv_transfers.clone(),
        requests: requests(&i.snapshot.requests),
        notes: i.snapshot.notes.clone(),
        findings: i
            .snapshot
            .findings
            .iter()
            .map(|f| {
                let mut r = finding(f);
                for (line, hint) in i
                    .node
                    .map(|n| n.culprit_lines(f.culprit.pid))
                    .unwrap_or_default()
                {
                    r.evidence = format!("{}; {line}", r.evidence);
                    if let Some(hint) = hint {
                        r.suggestion = format!("{hint}; {}", r.suggestion);
                    }
                }
                r
            })
            .collect(),
        engine_counts: engine_counts(i.snapshot),
        job: i.job.cloned(),
        nics: i
            .node
            .filter(|n| !n.nics.is_empty())
            .map(|n| n.nics.clone()),
        overhead: overhead(i.summary),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::fixture::sample;

    pub fn validate(doc: &serde_json::Value) {
        let schema: serde_json::Value =
            serde_json::from_str(SCHEMA).expect("docs/report.schema.json is JSON");
        let v = jsonschema::validator_for(&schema).expect("the schema compiles");
        let errors: Vec<String> = v
            .iter_errors(doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "report does not validate:\n{}",
            errors.join("\n")
        );
    }

    #[test]
    fn report_validates_against_the_shipped_schema() {
        let (run, summary, e) = sample();
        let snap = e.snapshot();
        let mut counters = vec![0; counters::COUNT as usize];
        counters[counters::RING_FULL as usize] = 2;
        counters[counters::RETURN_WITHOUT_ENTRY as usize] = 5;
        // Node context as a live run with NVML would have it.
        let mut node = crate::node::NodeContext::default();
        node.procs.insert(
            103,
            crate::node::HostSample {
                cpu_percent: 90.0,
                runqueue_ms_per_s: 1.0,
                rss_kib: 1024,
                threads: 8,
            },
        );
        node.gpus.push(crate::gpu::GpuSample {
            index: 3,
            uuid: "GPU-3".into(),
            name: "H200".into(),
            sm_clock_mhz: Some(1400),
            throttle_bits: crate::gpu::throttle::HW_THERMAL_SLOWDOWN,
            throttle_reasons: vec!["hw_thermal_slowdown"],
            ..Default::default()
        });
        node.devices
            .insert(103, (3, crate::gpu::MappedBy::ComputeProcess));
        node.nics.push(crate::node::NicSample {
            name: "eth0".into(),
            errors: 2,
            ..Default::default()
        });
        let r = build(&Inputs {
            job: None,
            node: Some(&node),
            run: &run,
            summary: &summary,
            snapshot: &snap,
            events: EventTotals {
                received: 100,
                undecodable: 1,
                counters,
            },
            stopped_because: "stopped by SIGTERM",
            duration_s: 1.5,
        });
        let doc = serde_json::to_value(&r).expect("serializes");
        validate(&doc);
        assert_eq!(doc["schema_version"], SCHEMA_VERSION);
        let p3 = &doc["processes"][3];
        assert_eq!(p3["gpu"]["index"], 3);
        assert_eq!(p3["gpu"]["mapped_by"], "compute_process");
        assert_eq!(p3["gpu"]["throttle_reasons"][0], "hw_thermal_slowdown");
        assert_eq!(doc["nics"][0]["errors"], 2);
        assert_eq!(doc["communicators"][0]["backend"], "nccl");
        assert_eq!(doc["events"]["lost"], 2);
        assert_eq!(doc["events"]["probe_notes"]["return_without_entry"], 5);
        assert_eq!(doc["processes"].as_array().map(Vec::len), Some(4));
        assert_eq!(doc["processes"][0]["rank"], 0);
        assert_eq!(doc["processes"][0]["nranks"], 4);
        assert_eq!(doc["processes"][0]["libraries"][0]["version"], "2.21.5");
        let malloc = doc["processes"][1]["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["name"] == "cudaMalloc")
            .cloned()
            .unwrap_or_default();
        assert_eq!(malloc["calls"], 1);
        assert_eq!(malloc["errors"][0]["code"], 2);
        assert_eq!(malloc["errors"][0]["count"], 1);
        assert!(doc["communicators"][0]["ops"][0]["calls"].as_u64() >= Some(40));
        let kinds: Vec<&str> = doc["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["kind"].as_str())
            .collect();
        assert!(kinds.contains(&"straggler"), "{kinds:?}");
        assert!(kinds.contains(&"memory_pressure"), "{kinds:?}");
        let straggler = doc["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["kind"] == "straggler")
            .cloned()
            .unwrap_or_default();
        assert_eq!(straggler["culprit"]["rank"], 3);
        assert_eq!(straggler["culprit"]["pid"], 103);
    }

    #[test]
    fn schema_rejects_a_document_missing_its_version() {
        let (run, summary, e) = sample();
        let snap = e.snapshot();
        let r = build(&Inputs {
            job: None,
            node: None,
            run: &run,
            summary: &summary,
            snapshot: &snap,
            events: EventTotals::default(),
            stopped_because: "duration reached",
            duration_s: 1.0,
        });
        let mut doc = serde_json::to_value(&r).expect("serializes");
        if let Some(m) = doc.as_object_mut() {
            m.remove("schema_version");
        }
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
        let v = jsonschema::validator_for(&schema).expect("the schema compiles");
        assert!(!v.is_valid(&doc));
    }
}
