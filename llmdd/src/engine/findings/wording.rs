//! Every finding's words: evidence, suggestion, severity and magnitude, built from the plain
//! facts a detector gathered (see `verdicts` and the other engine steps). Detectors decide;
//! this file only says. Each figure says what it measures.

use super::{Culprit, Draft, Magnitude, Severity};
use crate::engine::{
    bubbles::PipelineVerdict,
    matching::{Evidence, GRAPH_OP, GROUP_OP},
    stragglers::StragglerVerdict,
    util::{fmt_bytes, fmt_id, fmt_ns},
};

/// "rank 2", or "member 3" while the rank is not known.
pub fn rank_name(rank: u32, member: u32) -> String {
    if rank == u32::MAX {
        format!("member {member}")
    } else {
        format!("rank {rank}")
    }
}

/// "rank 2 (pid 4242 on node1)".
pub fn describe_member(rank: u32, pid: u32, host: Option<&str>) -> String {
    let r = if rank == u32::MAX {
        "a rank".to_string()
    } else {
        format!("rank {rank}")
    };
    match host {
        Some(h) => format!("{r} (pid {pid} on {h})"),
        None => format!("{r} (pid {pid})"),
    }
}

/// "ranks 0, 1, 3" for rank names, else the names as they are.
pub fn join_ranks(names: &[String]) -> String {
    match names.len() {
        0 => "no rank".into(),
        1 => names[0].clone(),
        _ => {
            let nums: Vec<&str> = names
                .iter()
                .map(|n| n.trim_start_matches("rank "))
                .collect();
            if names.iter().all(|n| n.starts_with("rank ")) {
                format!("ranks {}", nums.join(", "))
            } else {
                names.join(", ")
            }
        }
    }
}

pub fn lane_label(e: Evidence) -> &'static str {
    match e {
        Evidence::Collectives => "communicator",
        Evidence::GraphSteps => "graph group",
    }
}

/// Human name of an instance's op (a function id, `GROUP_OP` or `GRAPH_OP`).
pub fn op_label(op: u16) -> &'static str {
    match op {
        GROUP_OP => "grouped",
        GRAPH_OP => "graph-launch",
        x => llmdd_common::funcs::spec(x)
            .map(|s| s.op_label())
            .unwrap_or("unknown"),
    }
}

pub fn fmt_time(ns: u64) -> String {
    format!("t={:.3}s", ns as f64 / 1e9)
}

pub fn fmt_secs(ns: u64) -> String {
    format!("{:.2} s", ns as f64 / 1e9)
}

pub fn lost_events(total: u64, latest: u64, window: (u64, u64), windows: usize) -> Draft {
    Draft {
        severity: Severity::Warning,
        culprit: Culprit::default(),
        evidence: format!(
            "{total} events lost in total ({latest} in the latest report, between {} and {}; \
             {windows} windows); stalls are not raised from arrivals that may be missing and \
             straggler evidence pauses until each communicator's numbering is re-checked",
            fmt_time(window.0),
            fmt_time(window.1),
        ),
        source: "drop counters",
        suggestion: "Enlarge the ring buffer or drain it more often; trace fewer functions if drops persist.".into(),
        window,
        magnitude: Magnitude {
            name: "lost_events",
            value: total as f64,
        },
    }
}

/// How the survivors are left waiting on a member that left.
pub enum LeftWaiting {
    /// Instances the others had entered that it never reached (0: none, an abort).
    Open(usize),
    /// A survivor called on the communicator after it left.
    CalledAfter {
        survivor: String,
        seq: u64,
        at_ns: u64,
    },
}

/// A member left its lane (`how`: "exited", "aborted the communicator") at `t`.
#[allow(clippy::too_many_arguments)]
pub fn member_left(
    who: &str,
    scope: &str,
    id: u64,
    how: &str,
    t: u64,
    waiting: LeftWaiting,
    culprit: Culprit,
    source: &'static str,
) -> Draft {
    let (waiting, open) = match waiting {
        LeftWaiting::Open(0) => (String::new(), 0),
        LeftWaiting::Open(n) => (
            format!("; the other ranks had entered {n} instance(s) it never reached, which cannot complete"),
            n,
        ),
        LeftWaiting::CalledAfter {
            survivor,
            seq,
            at_ns,
        } => (
            format!(
                "; {survivor} called on it again afterwards (instance #{seq} at {}), which cannot complete without it",
                fmt_time(at_ns)
            ),
            1,
        ),
    };
    Draft {
        severity: if open > 0 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        culprit,
        evidence: format!("{who} of {scope} {} {how} at {}{waiting}", fmt_id(id), fmt_time(t)),
        source,
        suggestion: "A member left while the others still needed it: look at why the process ended (exit code, OOM killer, crash log); the survivors will hang or abort in their collectives on this communicator.".into(),
        window: (t, t),
        magnitude: Magnitude {
            name: "open_instances_left",
            value: open as f64,
        },
    }
}

/// What a stall detector saw: who entered an instance and who has not.
pub struct StallFacts<'a> {
    /// "all-reduce #12 on communicator 1f…" or "graph-launch step #3 of group …".
    pub what: String,
    pub arrived: &'a [String],
    pub missing: &'a [String],
    /// The missing members described with pid and host.
    pub missing_desc: &'a [String],
    pub first_ns: u64,
    pub now: u64,
    /// Set for a stall seen only once it was over.
    pub ended_ns: Option<u64>,
    pub threshold_ns: u64,
    pub first_missing_pid: u32,
    pub culprit: Culprit,
    pub source: &'static str,
}

pub fn stall(f: StallFacts<'_>) -> Draft {
    let verb = if f.missing.len() == 1 { "has" } else { "have" };
    let (arrived, missing) = (join_ranks(f.arrived), join_ranks(f.missing));
    let desc = f.missing_desc.join(", ");
    let what = &f.what;
    let (evidence, window, age) = match f.ended_ns {
        None => {
            let age = f.now.saturating_sub(f.first_ns);
            (
                format!(
                    "{arrived} entered {what} {} ago; {missing} {verb} not arrived ({desc}; stall threshold {})",
                    fmt_ns(age),
                    fmt_ns(f.threshold_ns)
                ),
                (f.first_ns, f.now),
                age,
            )
        }
        Some(end) => {
            let lasted = end.saturating_sub(f.first_ns);
            (
                format!(
                    "{arrived} entered {what} at {} and waited {} for {missing} ({desc}; stall threshold {}); \
                     resolved after {} (seen once over: the waiting ranks' calls were \
                     reported when they returned)",
                    fmt_time(f.first_ns),
                    fmt_ns(lasted),
                    fmt_ns(f.threshold_ns),
                    fmt_ns(lasted)
                ),
                (f.first_ns, end),
                lasted,
            )
        }
    };
    Draft {
        severity: Severity::Critical,
        culprit: f.culprit,
        evidence,
        source: f.source,
        suggestion: format!(
            "Find what {} is doing instead of calling in (e.g. `py-spy dump --pid {}`): a hang, a crash in progress, or a diverged code path that skips this call.",
            f.missing.first().map(String::as_str).unwrap_or("the missing rank"),
            f.first_missing_pid
        ),
        window,
        magnitude: Magnitude {
            name: "stalled_ns",
            value: age as f64,
        },
    }
}

/// What the straggler detector concluded about one rank.
pub struct StragglerFacts {
    pub who: String,
    pub rank_name: String,
    pub evidence: Evidence,
    pub lane_id: u64,
    pub critical_lag_ns: u64,
    pub culprit: Culprit,
    pub verdict: StragglerVerdict,
}

/// The straggler finding, and the lane member it names.
pub fn straggler(f: StragglerFacts) -> (Draft, u32) {
    let v = &f.verdict;
    let what = match f.evidence {
        Evidence::Collectives => format!(
            "arrived last by {} or more in {} of {} {} instances on communicator {}",
            fmt_ns(v.threshold_ns),
            v.late_count,
            v.total,
            op_label(v.op),
            fmt_id(f.lane_id)
        ),
        Evidence::GraphSteps => format!(
            "launched its graph last by {} or more in {} of {} graph-launch steps of group {}",
            fmt_ns(v.threshold_ns),
            v.late_count,
            v.total,
            fmt_id(f.lane_id)
        ),
    };
    let (k, n) = v.as_late;
    let evidence = format!(
        "{} {what}; its median lag in those instances was {} (host time: its call's entry \
         after the other ranks' median entry, less any part the devices hid by still working \
         on earlier queued work when it enqueued); the other ranks waited {} for it there, {:.0}% \
         of the waiting on late ranks, and {:.1}% of their time over the last {} was spent \
         waiting for it; {k} of the {n} instances in which any rank was {} or more late were \
         its own (chance {} were which rank is late luck)",
        f.who,
        fmt_ns(v.median_lag_ns),
        fmt_secs(v.waited_ns),
        v.blame * 100.0,
        v.idle_ratio * 100.0,
        fmt_ns(v.span_ns),
        fmt_ns((v.median_lag_ns / 2).max(v.threshold_ns)),
        fmt_chance(v.chance),
    );
    let d = Draft {
        severity: if v.median_lag_ns >= f.critical_lag_ns {
            Severity::Critical
        } else {
            Severity::Warning
        },
        culprit: f.culprit,
        evidence,
        source: f.evidence.label(),
        suggestion: format!(
            "Look at what {} does before it calls in: host-side work (CPU contention, data loading, Python GC, checkpoints), a slower or throttled GPU, or more work than the other ranks.",
            f.rank_name
        ),
        window: v.window,
        magnitude: Magnitude {
            name: "median_lag_ns",
            value: v.median_lag_ns as f64,
        },
    };
    (d, v.member)
}

/// A small probability, readably ("1e-12", "0.003").
fn fmt_chance(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.0e}")
    }
}

/// The stage of a pipeline the others wait for.
pub struct PipelineFacts {
    pub comm_id: u64,
    pub slow_pid: u32,
    /// Pids of `verdict.others`, in their order.
    pub others_pids: Vec<u32>,
    pub window: (u64, u64),
    pub culprit: Culprit,
    pub verdict: PipelineVerdict,
}

/// The pipeline finding, and the stage rank it names.
pub fn pipeline(f: PipelineFacts) -> (Draft, u32) {
    let v = &f.verdict;
    let others: Vec<String> = v
        .others
        .iter()
        .zip(&f.others_pids)
        .map(|(w, pid)| format!("rank {} (pid {pid}) {:.0}%", w.rank, w.share * 100.0))
        .collect();
    let per_transfer = {
        let mut w: Vec<u64> = v.others.iter().map(|w| w.per_transfer_ns).collect();
        crate::engine::util::median(&mut w)
    };
    let evidence = format!(
        "pipeline stage rank {} (pid {}) of communicator {} spent {:.0}% of the last {} waiting \
         (in sends, receives, collectives and syncs: time its process spent in calls that wait \
         for other ranks or the device), while the other stages spent {:.0}% on average: {}; \
         with bounded send buffers the stages before it wait to send to it and the stages \
         after it wait to receive from it, {} per send/receive (median over the other \
         stages), over {} transfers",
        v.slow.rank,
        f.slow_pid,
        fmt_id(f.comm_id),
        v.slow.share * 100.0,
        fmt_ns(v.slow.span_ns),
        v.others_share * 100.0,
        others.join(", "),
        fmt_ns(per_transfer),
        v.transfers
    );
    let d = Draft {
        severity: Severity::Warning,
        culprit: f.culprit,
        evidence,
        source: "send/recv transfers",
        suggestion: format!(
            "Stage rank {} is the pipeline's bottleneck: give it fewer layers (or faster hardware), or look at what slows its host (CPU contention, data loading) if its work matches the others'.",
            v.slow.rank
        ),
        window: f.window,
        // The share of their time the other stages lose to it, beyond its own waiting.
        magnitude: Magnitude {
            name: "others_wait_share",
            value: v.others_share - v.slow.share,
        },
    };
    (d, v.slow.rank)
}

/// A stream that went without submissions while its process was busy.
pub struct SubmissionGapFacts {
    pub stream: u64,
    pub pid: u32,
    pub threshold_ns: u64,
    pub gaps: u64,
    pub latest_ns: u64,
    pub longest_ns: u64,
    pub now: u64,
    pub culprit: Culprit,
}

pub fn submission_gap(f: SubmissionGapFacts) -> Draft {
    Draft {
        severity: Severity::Info,
        culprit: f.culprit,
        evidence: format!(
            "stream {:#x} of pid {} went without GPU submissions for more than {} {} times in the window while the process kept making other calls (latest {}, longest {})",
            f.stream,
            f.pid,
            fmt_ns(f.threshold_ns),
            f.gaps,
            fmt_ns(f.latest_ns),
            fmt_ns(f.longest_ns)
        ),
        source: "GPU submissions",
        suggestion: "The host is busy with something else between launches (scheduling, sampling, tokenisation, Python overhead): profile the host side of this process.".into(),
        window: (f.now.saturating_sub(f.latest_ns), f.now),
        magnitude: Magnitude {
            name: "longest_gap_ns",
            value: f.longest_ns as f64,
        },
    }
}

/// Out-of-memory allocation failures of a process.
pub struct AllocFacts<'a> {
    pub func: &'a str,
    pub bytes: u64,
    pub pid: u32,
    pub failures: u64,
    pub first_failure_ns: u64,
    pub outstanding: u64,
    pub peak: u64,
    pub at_ns: u64,
    pub culprit: Culprit,
}

pub fn alloc_failure(f: AllocFacts<'_>) -> Draft {
    Draft {
        severity: if f.failures > 1 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        culprit: f.culprit,
        evidence: format!(
            "{} of {} failed with out-of-memory in pid {} ({} failure(s) since {}); {} of device memory outstanding from allocations traced since attach (peak {})",
            f.func,
            fmt_bytes(f.bytes),
            f.pid,
            f.failures,
            fmt_time(f.first_failure_ns),
            fmt_bytes(f.outstanding),
            fmt_bytes(f.peak)
        ),
        source: "allocation calls",
        suggestion: "Lower the memory footprint (gpu-memory-utilization, max batch/sequence length, KV-cache size) or look for a leak in outstanding allocations.".into(),
        window: (f.first_failure_ns, f.at_ns),
        magnitude: Magnitude {
            name: "failed_bytes",
            value: f.bytes as f64,
        },
    }
}

/// What a connection showed.
pub enum LinkFacts {
    Retransmits {
        in_window: u64,
        rate: f64,
        assumed_mss: u64,
        sent: u64,
        recvd: u64,
    },
    Reset {
        resets: u64,
    },
}

pub fn link(
    f: LinkFacts,
    label: String,
    pid: u32,
    window: (u64, u64),
    mut culprit: Culprit,
) -> Draft {
    let (evidence, severity, name, value) = match f {
        LinkFacts::Retransmits {
            in_window,
            rate,
            assumed_mss,
            sent,
            recvd,
        } => (
            format!(
                "{in_window} retransmits in the window on {label} (pid {pid}), {:.2}% of the segments it sent (estimated at {assumed_mss} B each; {} sent, {} received)",
                rate * 100.0,
                fmt_bytes(sent),
                fmt_bytes(recvd)
            ),
            Severity::Warning,
            "retransmit_rate",
            rate,
        ),
        LinkFacts::Reset { resets } => (
            format!("connection {label} of pid {pid} was reset ({resets} resets)"),
            Severity::Info,
            "resets",
            resets as f64,
        ),
    };
    culprit.connection = Some(label);
    Draft {
        severity,
        culprit,
        evidence,
        source: "socket events",
        suggestion: "Check the network path between these endpoints (NIC errors, congestion, MTU) and the peer's health.".into(),
        window,
        magnitude: Magnitude { name, value },
    }
}

/// Ranks of one job placed by their threads, stuck since `since_ns`.
pub struct StuckFacts {
    /// "rank 0 (pid 10) inside ncclAllReduce (thread 10 'python', ...)" per waiting rank.
    pub waiting: Vec<String>,
    /// The same for the ranks not waiting.
    pub elsewhere: Vec<String>,
    pub since_ns: u64,
    pub now_ns: u64,
    /// The first rank elsewhere, if any.
    pub culprit: Option<Culprit>,
    /// "communicator 0123abcd", "the job of 4 ranks (...)".
    pub group: String,
    /// The communicator, when the group is one.
    pub comm: Option<u64>,
}

/// A job found stuck from where its threads are (see `positions`).
pub fn stuck_at_attach(f: StuckFacts) -> Draft {
    let lasted = f.now_ns.saturating_sub(f.since_ns);
    let (evidence, suggestion, culprit) = match f.culprit {
        Some(c) => (
            format!(
                "found at attach, from where each thread is: no collective, send/receive or \
                 graph launch by any rank of {} for at least {} (since llmdd first looked; \
                 it may have begun earlier) while {} waited: {}; and not waiting: {} - the \
                 rank(s) the others wait for",
                f.group,
                fmt_ns(lasted),
                if f.waiting.len() == 1 { "one rank" } else { "these ranks" },
                f.waiting.join("; "),
                f.elsewhere.join("; ")
            ),
            "Look at what the rank not waiting is doing (its frames above; `py-spy dump --pid` for Python): a hang, a deadlock in host code, a crash in progress, or a diverged code path that skips the collective.".to_string(),
            c,
        ),
        None => (
            format!(
                "found at attach, from where each thread is: every rank of {} has been \
                 waiting for at least {} (since llmdd first looked) with no collective, send/receive or graph launch: {}; no rank \
                 is missing on the host, so the hang is on the device or the network",
                f.group,
                fmt_ns(lasted),
                f.waiting.join("; ")
            ),
            "Every rank is inside the collective or waiting on its GPU: look at the GPUs (nvidia-smi, Xid errors in dmesg, NVLink/NIC errors) and at NCCL's own view (NCCL_DEBUG=INFO, `llmdd ras`).".to_string(),
            Culprit {
                comm: f.comm,
                ..Culprit::default()
            },
        ),
    };
    Draft {
        severity: Severity::Critical,
        culprit,
        evidence,
        source: "thread positions",
        suggestion,
        window: (f.since_ns, f.now_ns),
        magnitude: Magnitude {
            name: "stalled_at_least_ns",
            value: lasted as f64,
        },
    }
}

/// A KV-transfer alert's numbers, with the process's culprit and the agent's label.
pub struct KvFacts<'a> {
    pub culprit: Culprit,
    pub agent: &'a str,
    pub now_ns: u64,
}

/// Transfers from one agent ended in errors.
pub fn kv_failed(f: KvFacts<'_>, s: &crate::engine::kv::AgentStats) -> Draft {
    let errors: Vec<String> = s
        .errors
        .iter()
        .map(|(code, n)| format!("{} x{n}", crate::engine::kv::status_name(*code)))
        .collect();
    let pid = f.culprit.pid.unwrap_or(0);
    Draft {
        severity: if s.failed >= s.done {
            Severity::Critical
        } else {
            Severity::Warning
        },
        evidence: format!(
            "{} of {} KV transfers pid {pid} made from {} ended in an error ({}); the requests \
             waiting for that KV cache fail or are recomputed",
            s.failed,
            s.failed + s.done,
            f.agent,
            errors.join(", ")
        ),
        source: "NIXL transfer statuses",
        suggestion: format!(
            "check the prefill server behind {} (alive, its NIXL agent serving) and the path \
             to it (UCX transport, NIC); NIXL_ERR_REMOTE_DISCONNECT means the remote side went \
             away",
            f.agent
        ),
        window: (s.last_ns.min(f.now_ns), f.now_ns),
        magnitude: Magnitude {
            name: "failed_transfers",
            value: s.failed as f64,
        },
        culprit: f.culprit,
    }
}

/// A transfer in progress far longer than the process's transfers take.
pub fn kv_stuck(f: KvFacts<'_>, age_ns: u64, threshold_ns: u64, typical_ns: Option<u64>) -> Draft {
    let pid = f.culprit.pid.unwrap_or(0);
    let typical = typical_ns
        .map(|t| format!("its completed transfers take up to {} (p99)", fmt_ns(t)))
        .unwrap_or_else(|| "none of its transfers has completed yet".to_string());
    Draft {
        severity: Severity::Critical,
        evidence: format!(
            "a KV transfer pid {pid} posted to {} has been in progress for {} (host time since \
             its post, still polled or not), over the {} line; {typical}",
            f.agent,
            fmt_ns(age_ns),
            fmt_ns(threshold_ns)
        ),
        source: "NIXL transfer statuses",
        suggestion: format!(
            "the remote side of {} has stopped serving: check that its prefill server is alive \
             and its NIXL agent reachable; the request waiting for this KV cache is stuck",
            f.agent
        ),
        window: (f.now_ns.saturating_sub(age_ns), f.now_ns),
        magnitude: Magnitude {
            name: "stuck_ns",
            value: age_ns as f64,
        },
        culprit: f.culprit,
    }
}

/// One agent's transfers slower than every other agent's.
pub fn kv_slow(f: KvFacts<'_>, p50_ns: u64, others_p50_ns: u64, others: usize, n: u64) -> Draft {
    let pid = f.culprit.pid.unwrap_or(0);
    let ratio = p50_ns as f64 / others_p50_ns.max(1) as f64;
    Draft {
        severity: Severity::Warning,
        evidence: format!(
            "KV transfers pid {pid} pulls from {} take a median {} (post to final status, a \
             completion bound; {n} transfers), {ratio:.1}x the slowest median of its {others} \
             other agent(s) ({}); the requests served from it wait that much longer for their \
             KV cache (transfer sizes are not compared: the same server pulls the same kind of \
             blocks from each)",
            f.agent,
            fmt_ns(p50_ns),
            fmt_ns(others_p50_ns),
        ),
        source: "NIXL transfer statuses",
        suggestion: format!(
            "look at the prefill server behind {}: its load, its NIXL progress thread, and the \
             link to it",
            f.agent
        ),
        window: (f.now_ns.saturating_sub(p50_ns), f.now_ns),
        magnitude: Magnitude {
            name: "slow_ratio",
            value: ratio,
        },
        culprit: f.culprit,
    }
}
