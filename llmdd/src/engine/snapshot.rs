//! Plain-data views of the engine's state for the TUI, Prometheus and JSON reports.

use serde::Serialize;

use super::{
    comm::Identity,
    findings::Finding,
    graphs::GroupBasis,
    links::LinkView,
    matching::{Evidence, Lane, GRAPH_OP, GROUP_OP},
    memory::MemoryView,
    op_label,
    requests::RequestsView,
    stats::Pctl,
    util::{fmt_bytes, fmt_id, size_bucket_label},
    Engine,
};

/// Counters of what the engine saw, dropped and decided not to do.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Counts {
    pub events: u64,
    pub calls: u64,
    pub sock_events: u64,
    pub proc_exits: u64,
    /// Events that came in out of order and were put back in order.
    pub reordered: u64,
    /// Events that came in after their time had already been processed (handled at once).
    pub late: u64,
    /// Events held in the reorder buffer now.
    pub held: u64,
    pub lost_reported: u64,
    pub lost_windows: u64,
    /// NCCL calls that returned an error (not matched).
    pub call_errors: u64,
    pub calls_without_comm: u64,
    pub inits_ignored: u64,
    /// Groups whose ncclGroupEnd never came (released as one instance).
    pub groups_unterminated: u64,
    pub completions_bounded: u64,
    pub completions_forgotten: u64,
    /// Calls of late-aligned members that fell before the kept history.
    pub calls_dropped_aligning: u64,
    pub evicted_open_instances: u64,
    pub realignments: u64,
    pub stalls_suppressed: u64,
    pub comms_refused: u64,
    /// Communicators whose members had all left, evicted at the cap to make room.
    pub comms_evicted: u64,
    pub graph_groups_refused: u64,
    pub findings_evicted: u64,
    pub connections_evicted: u64,
    /// Graph launches of processes in no graph-launch group (no communicator, no job).
    pub graph_launches_ungrouped: u64,
    /// Verdicts not raised because their communicator's members were grouped by a guess.
    pub findings_withheld_ambiguous: u64,
    /// Straggler verdicts not raised because the lag was within the hosts' clock error.
    pub stragglers_withheld_clock: u64,
    /// Member-left findings not raised because the lane had lost events not yet re-checked.
    pub departures_withheld_lost: u64,
    /// Resets of serving-port connections (clients closing): counted, not findings.
    pub client_resets: u64,
    /// Finished instances whose arrivals contradicted their completion bounds (numbering
    /// re-checked; kept out of the evidence).
    pub inconsistent_instances: u64,
    pub processes_live: u64,
    pub pids_reused: u64,
    /// Calls reported while still in flight (processed as arrivals before they returned).
    pub in_flight_calls: u64,
    /// Collectives, launches and copies recorded into CUDA graphs being captured (not run
    /// then, so kept out of matching).
    pub captured_calls: u64,
    /// Stuck-transfer checks withheld because events were lost since the transfer's post
    /// (it may have finished in the lost records).
    pub kv_stuck_withheld_lost: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberView {
    pub pid: u32,
    pub rank: Option<u32>,
    pub host: Option<String>,
    /// "aligned", "pending" (first calls being aligned) or "left".
    pub state: &'static str,
    pub calls: u64,
    /// Arrival lag behind the first rank, per instance.
    pub lag: Pctl,
    /// Call duration.
    pub latency: Pctl,
    /// Instances given up for it after lost events.
    pub excused: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpView {
    pub op: &'static str,
    pub size: String,
    pub calls: u64,
    pub latency: Pctl,
    pub skew: Pctl,
    /// Completion upper bound minus last arrival (from syncs).
    pub completion: Pctl,
    /// Bus bandwidth lower bound, GB/s, median over the window.
    pub busbw_gbps_p50: Option<f64>,
}

/// What communicators and graph groups share.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LaneView {
    pub id: String,
    pub evidence: &'static str,
    pub members: Vec<MemberView>,
    pub finished: u64,
    pub open: usize,
    /// Lost events may have touched it and its numbering is not yet re-checked.
    pub unverified: bool,
    pub realignments: u64,
    pub ops: Vec<OpView>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CommView {
    pub identity: Identity,
    /// The library family whose calls it carries (the views name its backend from it).
    #[serde(skip)]
    pub family: llmdd_common::funcs::Family,
    /// Each member's (pid, handle in that process): what the views key per-handle figures
    /// by, so that they never guess a handle's communicator.
    #[serde(skip)]
    pub handles: Vec<(u32, u64)>,
    pub nranks: Option<u32>,
    /// Event time the communicator was first seen (created, or its first call).
    pub first_seen_ns: u64,
    #[serde(flatten)]
    pub lane: LaneView,
}

/// One kind of collective a captured graph holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CapturedCollView {
    /// "all-reduce", "MPI_Allreduce": as the op is named elsewhere.
    pub op: &'static str,
    /// The library family of the call (nccl, vllm, ...).
    pub family: &'static str,
    pub bytes: u64,
    /// The communicator's id, when the engine had placed the handle.
    pub comm: Option<String>,
    /// How many such calls one replay runs.
    pub count: u64,
}

/// A CUDA-graph executable whose capture llmdd saw, and what each replay of it runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CapturedGraphView {
    pub pid: u32,
    /// The `cudaGraphExec_t` handle.
    pub exec: String,
    /// `cudaGraphLaunch`es of it seen.
    pub replays: u64,
    pub collectives: Vec<CapturedCollView>,
    /// Collectives beyond what is remembered per graph (counted only).
    pub collectives_dropped: u64,
    /// Kernel (and nested graph) launches and copies captured into it.
    pub launches: u64,
    pub copies: u64,
}

impl CapturedGraphView {
    /// One line of what each replay runs: "1x all-reduce 64.0 KiB (nccl, comm 0481263379852cc2);
    /// 3 launches, 0 copies".
    pub fn holds(&self) -> String {
        let mut parts: Vec<String> = self
            .collectives
            .iter()
            .map(|c| {
                format!(
                    "{}x {} {} ({}{})",
                    c.count,
                    c.op,
                    fmt_bytes(c.bytes),
                    c.family,
                    c.comm
                        .as_deref()
                        .map(|id| format!(", comm {id}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        if self.collectives_dropped > 0 {
            parts.push(format!("{} more collectives", self.collectives_dropped));
        }
        if parts.is_empty() {
            parts.push("no collective".into());
        }
        format!(
            "{}; {} launches, {} copies",
            parts.join(", "),
            self.launches,
            self.copies
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupView {
    pub basis: GroupBasis,
    #[serde(flatten)]
    pub lane: LaneView,
}

/// A receiving pipeline stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageView {
    pub comm: String,
    pub rank: u32,
    pub pid: u32,
    /// Share of the window its process spent waiting for other ranks or the device.
    pub wait_share: f64,
    /// Waiting per send/receive it made.
    pub wait_per_transfer_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    pub now_ns: u64,
    pub communicators: Vec<CommView>,
    pub graph_groups: Vec<GroupView>,
    /// Replayed graph executables whose capture was seen (most replayed first, at most
    /// [`MAX_GRAPH_VIEWS`]).
    pub captured_graphs: Vec<CapturedGraphView>,
    /// KV-cache transfers (NIXL) per (pulling process, remote agent).
    pub kv_transfers: Vec<super::kv::KvAgentView>,
    /// The last finished KV transfers, oldest first (for the timeline).
    #[serde(skip)]
    pub kv_recent: Vec<super::kv::TransferRecord>,
    pub findings: Vec<Finding>,
    pub requests: RequestsView,
    pub memory: Vec<MemoryView>,
    pub links: Vec<LinkView>,
    pub stages: Vec<StageView>,
    pub counts: Counts,
    /// What the engine could not conclude and why (see `Engine::notes`).
    pub notes: Vec<String>,
    /// Where each traced process's threads were last found (live runs; see `positions`).
    pub threads: Vec<super::positions::ProcThreads>,
}

/// Captured graphs shown in a snapshot.
pub const MAX_GRAPH_VIEWS: usize = 64;

fn captured_graphs(e: &Engine) -> Vec<CapturedGraphView> {
    let mut execs: Vec<&super::capture::Exec> =
        e.captures.execs.iter().filter(|x| x.replays > 0).collect();
    execs.sort_by_key(|x| (std::cmp::Reverse(x.replays), x.pid, x.handle));
    execs.truncate(MAX_GRAPH_VIEWS);
    execs
        .into_iter()
        .map(|x| {
            let mut colls: Vec<CapturedCollView> = Vec::new();
            for op in &x.contents.ops {
                let spec = llmdd_common::funcs::spec(op.func);
                let view = CapturedCollView {
                    op: spec.map_or("unknown", |s| s.op_label()),
                    family: spec.map_or("unknown", |s| s.family.name()),
                    bytes: op.bytes,
                    comm: op.comm.map(fmt_id),
                    count: 1,
                };
                match colls.iter_mut().find(|c| {
                    (c.op, c.family, c.bytes, &c.comm)
                        == (view.op, view.family, view.bytes, &view.comm)
                }) {
                    Some(c) => c.count += 1,
                    None => colls.push(view),
                }
            }
            CapturedGraphView {
                pid: x.pid,
                exec: fmt_id(x.handle),
                replays: x.replays,
                collectives: colls,
                collectives_dropped: x.contents.ops_dropped,
                launches: x.contents.launches,
                copies: x.contents.copies,
            }
        })
        .collect()
}

fn lane_view(e: &Engine, l: &Lane, now: u64) -> LaneView {
    let members = l
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| MemberView {
            pid: m.pid,
            rank: (m.rank != u32::MAX).then_some(m.rank),
            host: e.procs.host(m.proc).map(str::to_owned),
            state: if m.left_ns.is_some() {
                "left"
            } else if m.offset.is_none() {
                "pending"
            } else {
                "aligned"
            },
            calls: m.n_calls,
            lag: l.rank_lag(i, now),
            latency: l.rank_latency(i, now),
            excused: m.excused,
        })
        .collect();
    let ops = l
        .series
        .iter()
        .map(|s| {
            let bw = s.busbw_mbps.pctl(now);
            OpView {
                op: match s.op {
                    GROUP_OP => "grouped",
                    GRAPH_OP => "graph-launch",
                    x => op_label(x),
                },
                size: size_bucket_label(s.bucket),
                calls: s.calls,
                latency: s.latency.pctl(now),
                skew: s.skew.pctl(now),
                completion: s.completion.pctl(now),
                busbw_gbps_p50: (bw.count > 0).then(|| bw.p50 as f64 / 1000.0),
            }
        })
        .collect();
    LaneView {
        id: fmt_id(l.id),
        evidence: match l.evidence {
            Evidence::Collectives => "collective instances",
            Evidence::GraphSteps => "graph-launch steps",
        },
        members,
        finished: l.finished_total,
        open: l.open_instances(),
        unverified: l.unverified_since.is_some() || l.suspect_since.is_some(),
        realignments: l.realignments,
        ops,
    }
}

pub fn build(e: &Engine) -> Snapshot {
    let now = e.now();
    let communicators = e
        .comms
        .list
        .iter()
        .map(|c| CommView {
            identity: c.identity.clone(),
            family: c.family,
            handles: c
                .members
                .iter()
                .filter_map(|m| {
                    let pid = e.lanes[c.lane as usize]
                        .members
                        .get(m.lane_member as usize)?
                        .pid;
                    Some((pid, m.handle))
                })
                .collect(),
            nranks: c.nranks,
            first_seen_ns: c.created_ns,
            lane: lane_view(e, &e.lanes[c.lane as usize], now),
        })
        .collect();
    let graph_groups = e
        .graphs
        .groups
        .iter()
        .map(|g| GroupView {
            basis: g.basis.clone(),
            lane: lane_view(e, &e.lanes[g.lane as usize], now),
        })
        .collect();
    let mut memory: Vec<MemoryView> = e
        .memory
        .procs
        .iter()
        .map(|(p, m)| MemoryView {
            pid: e.procs.proc(*p).pid,
            outstanding_bytes: m.outstanding,
            peak_bytes: m.peak,
            host_outstanding_bytes: m.host_outstanding,
            failures: m.failures,
            unmatched_frees: m.unmatched_frees,
        })
        .collect();
    memory.sort_by_key(|m| m.pid);
    let mut stages: Vec<StageView> = e
        .bubbles
        .pipelines
        .keys()
        .flat_map(|&c| {
            let comm = fmt_id(e.comms.list[c as usize].id);
            e.bubbles
                .stage_waits(c, now, &e.cfg)
                .into_iter()
                .map(move |w| StageView {
                    comm: comm.clone(),
                    rank: w.rank,
                    pid: e.procs.proc(w.proc).pid,
                    wait_share: w.share,
                    wait_per_transfer_ns: w.per_transfer_ns,
                })
        })
        .collect();
    stages.sort_by(|a, b| (&a.comm, a.rank).cmp(&(&b.comm, b.rank)));
    let mut counts = e.counts.clone();
    counts.reordered = e.reorder.reordered;
    counts.late = e.reorder.late;
    counts.held = e.reorder.len() as u64;
    counts.lost_reported = e.lost_total;
    counts.lost_windows = e.lost.len() as u64;
    counts.completions_forgotten = e.sync.forgotten;
    counts.comms_refused = e.comms.refused;
    counts.comms_evicted = e.comms.evicted;
    counts.inconsistent_instances = e.lanes.iter().map(|l| l.inconsistent).sum();
    counts.graph_groups_refused = e.graphs.refused;
    counts.findings_evicted = e.findings.evicted;
    counts.connections_evicted = e.links.evicted + e.requests.evicted;
    counts.graph_launches_ungrouped = e.graphs.ungrouped;
    counts.processes_live = e.procs.live_count() as u64;
    counts.pids_reused = e.procs.reused_pids;
    Snapshot {
        now_ns: now,
        communicators,
        graph_groups,
        captured_graphs: captured_graphs(e),
        kv_transfers: e.kv.views(now, &e.procs),
        kv_recent: e.kv.recent.iter().cloned().collect(),
        findings: e.findings.list.clone(),
        requests: e.requests.view(now, &e.cfg, 32),
        memory,
        links: e.links.view(now, &e.cfg, 32),
        stages,
        counts,
        notes: e.notes(),
        threads: e.threads_view(),
    }
}
