//! Scoring a report against what was done. A finding is right when its kind is the one
//! expected and its culprit's pid is the faulty rank's (a straggler may be named on each of
//! its communicators); every other finding is false. The magnitude is compared with what
//! the job measured: a straggler's median lag with the median delay it slept (20%), a
//! pipeline's lost share with the waiting the job timed in its own calls (20%), a stall's
//! length with the sleep (20%), TTFT and inter-token medians with the client's (10%).
//! KV-transfer findings are scored on the agent they name; without an injected fault, an
//! agent called slow is right when the decode side's own times show it slow by the rule.

use serde_json::Value;
use simjob::truth::{FaultTruth, Truth};

use super::{Expect, Outcome, Scenario, Verdict};
use crate::{mpi::MpiSteps, serving::median, serving::ClientTruth};

/// Lag, share and stall-length tolerance.
const TOLERANCE: f64 = 0.2;
/// TTFT and inter-token tolerance.
const SERVING_TOLERANCE: f64 = 0.1;

pub fn expected_label(e: &Expect) -> String {
    match e {
        Expect::Straggler { rank, .. } => format!("straggler r{rank}"),
        Expect::Pipeline { ranks, .. } => format!(
            "stage {}",
            ranks
                .iter()
                .map(|r| format!("r{r}"))
                .collect::<Vec<_>>()
                .join("|")
        ),
        Expect::Stall { rank, .. } => format!("stall r{rank}"),
        Expect::StallAtAttach { rank, .. } => format!("stall at attach r{rank}"),
        Expect::Nothing => "nothing".into(),
        Expect::DeviceSide => "nobody; device side".into(),
        Expect::Serving => "TTFT, ITL".into(),
        Expect::KvAgent { agent, magnitude } => {
            format!(
                "kv {} {}",
                magnitude.join("|"),
                crate::nixl::agent_name(*agent)
            )
        }
    }
}

fn findings(doc: &Value) -> Vec<&Value> {
    doc["findings"].as_array().into_iter().flatten().collect()
}

fn label(f: &Value) -> String {
    let r = f["culprit"]["rank"]
        .as_u64()
        .map(|r| format!(" r{r}"))
        .unwrap_or_default();
    format!(
        "{}{r} pid {}",
        f["kind"].as_str().unwrap_or("?"),
        f["culprit"]["pid"]
    )
}

/// What a scenario with a culprit expects: finding kinds, culprit pids, the magnitude it
/// should have (name, value), and the fault's occurrences llmdd could see (start times).
struct Want {
    /// The kind expected first; a slow pipeline stage late to a step-end collective is
    /// that collective's straggler too, a finding naming the same culprit.
    kinds: &'static [&'static str],
    pids: Vec<u64>,
    magnitude: Option<(&'static str, f64)>,
    onsets: Vec<u64>,
    may_withhold: bool,
}

fn median_u64(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0) as f64
}

fn faults<'a>(t: &'a Truth, ranks: &[usize], kind: &str) -> Vec<&'a FaultTruth> {
    let mut f: Vec<&FaultTruth> = t
        .ranks
        .iter()
        .filter(|r| ranks.contains(&r.rank))
        .flat_map(|r| r.faults.iter())
        .filter(|f| f.kind == kind)
        .collect();
    f.sort_by_key(|f| f.start_ns);
    f
}

fn pid_of(t: &Truth, rank: usize) -> u64 {
    t.ranks
        .iter()
        .find(|r| r.rank == rank)
        .map(|r| r.pid as u64)
        .unwrap_or(0)
}

/// Calls in which a rank waits for other ranks or the device, as the job recorded them.
const WAITS: &[&str] = &[
    "ncclGroupEnd",
    "ncclSend",
    "ncclRecv",
    "ncclAllReduce",
    "ncclAllGather",
    "ncclReduceScatter",
    "ncclBroadcast",
    "ncclReduce",
    "cudaStreamSynchronize",
    "cudaEventSynchronize",
    "cudaDeviceSynchronize",
];

/// The share of its measured time each rank spent in waiting calls, as the job itself
/// timed them: the others' mean less the slow stage's (`slow` ranks, their mean), which is
/// what the slow stage costs the others.
fn lost_share(t: &Truth, slow: &[usize]) -> f64 {
    let share = |r: &simjob::truth::RankTruth| -> f64 {
        let waited: u64 = r
            .calls
            .iter()
            .filter(|c| c.step.is_some() && WAITS.contains(&c.func.as_str()))
            .map(|c| c.exit_ns.saturating_sub(c.entry_ns))
            .sum();
        let first = r
            .calls
            .iter()
            .filter(|c| c.step.is_some())
            .map(|c| c.entry_ns)
            .min();
        let last = r
            .calls
            .iter()
            .filter(|c| c.step.is_some())
            .map(|c| c.exit_ns)
            .max();
        match (first, last) {
            (Some(a), Some(b)) if b > a => waited as f64 / (b - a) as f64,
            _ => 0.0,
        }
    };
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (s, o): (Vec<_>, Vec<_>) = t.ranks.iter().partition(|r| slow.contains(&r.rank));
    mean(o.into_iter().map(share).collect()) - mean(s.into_iter().map(share).collect())
}

fn want_sim(e: &Expect, truths: &[Truth]) -> Option<Want> {
    match e {
        Expect::Straggler {
            job,
            rank,
            may_withhold,
        } => {
            let t = &truths[*job];
            let f = faults(t, &[*rank], "straggler");
            Some(Want {
                kinds: &["straggler"],
                pids: vec![pid_of(t, *rank)],
                magnitude: Some((
                    "median_lag_ns",
                    median_u64(f.iter().map(|f| f.actual_ns).collect()),
                )),
                onsets: f.iter().map(|f| f.start_ns).collect(),
                may_withhold: *may_withhold,
            })
        }
        Expect::Pipeline {
            job,
            ranks,
            may_withhold,
        } => {
            let t = &truths[*job];
            let f = faults(t, ranks, "imbalance");
            Some(Want {
                kinds: &["bubble", "straggler"],
                pids: ranks.iter().map(|r| pid_of(t, *r)).collect(),
                magnitude: Some(("others_wait_share", lost_share(t, ranks))),
                onsets: f.iter().map(|f| f.start_ns).collect(),
                may_withhold: *may_withhold,
            })
        }
        Expect::Stall { job, rank } => {
            let t = &truths[*job];
            let f = faults(t, &[*rank], "stall");
            Some(Want {
                kinds: &["stall"],
                pids: vec![pid_of(t, *rank)],
                magnitude: Some((
                    "stalled_ns",
                    median_u64(f.iter().map(|f| f.actual_ns).collect()),
                )),
                onsets: f.iter().map(|f| f.start_ns).collect(),
                may_withhold: false,
            })
        }
        Expect::StallAtAttach { job, rank } => Some(Want {
            kinds: &["stall"],
            pids: vec![pid_of(&truths[*job], *rank)],
            magnitude: None,
            onsets: Vec::new(),
            may_withhold: false,
        }),
        Expect::Nothing | Expect::DeviceSide | Expect::Serving | Expect::KvAgent { .. } => None,
    }
}

/// Scores a simulated job's report; `attached_ns`: when llmdd was tracing (CLOCK_MONOTONIC),
/// the earliest a fault occurrence could be seen.
pub fn sim(s: &Scenario, truths: &[Truth], doc: &Value, attached_ns: u64) -> Outcome {
    let mut want = want_sim(&s.expect, truths);
    if let Some(w) = want.as_mut() {
        w.onsets.retain(|&t| t >= attached_ns);
        if matches!(s.expect, Expect::StallAtAttach { .. }) {
            // Already going on: the time to the finding counts from the attach.
            w.onsets = vec![attached_ns];
        }
    }
    let mut o = judge(s, want, doc);
    let said = doc["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|n| n.contains("on the device side"));
    if s.expect == Expect::DeviceSide && o.verdict == Verdict::Right && !said {
        o.verdict = Verdict::Missed;
        o.detail = "no note that the time is on the device side".into();
    }
    o
}

/// Scores the Open MPI job's report: rank `slow` late by `delay_us` in every step, from the
/// start (so the first occurrence llmdd could see is at attach).
/// With `hang_step`, the slow rank is the stall's culprit instead (its length, a lower
/// bound, is not scored).
pub fn mpi(s: &Scenario, pids: &[u32], steps: MpiSteps, doc: &Value, attached_ns: u64) -> Outcome {
    let slow = vec![pids[steps.slow_rank as usize] as u64];
    let want = match steps.hang_step {
        Some(_) => Want {
            kinds: &["stall"],
            pids: slow,
            magnitude: None,
            onsets: vec![attached_ns],
            may_withhold: false,
        },
        None => Want {
            kinds: &["straggler"],
            pids: slow,
            magnitude: Some(("median_lag_ns", steps.delay_us as f64 * 1e3)),
            onsets: Vec::new(),
            may_withhold: false,
        },
    };
    judge(s, Some(want), doc)
}

fn judge(s: &Scenario, want: Option<Want>, doc: &Value) -> Outcome {
    let all = findings(doc);
    let named = if all.is_empty() {
        "none".to_string()
    } else {
        all.iter().map(|f| label(f)).collect::<Vec<_>>().join(", ")
    };
    let mut o = Outcome {
        scenario: s.name.clone(),
        expected: expected_label(&s.expect),
        named,
        magnitude_err: None,
        false_findings: 0,
        time_to_finding: None,
        verdict: Verdict::Right,
        detail: String::new(),
    };
    let details = || {
        let notes = doc["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .map(|n| format!("note: {n}"));
        all.iter()
            .map(|f| format!("{}: {}", label(f), f["evidence"].as_str().unwrap_or("")))
            .chain(notes)
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let Some(w) = want else {
        o.false_findings = all.len();
        if !all.is_empty() {
            o.verdict = Verdict::FalseFindings;
            o.detail = details();
        }
        return o;
    };
    let kind_ok = |f: &Value| w.kinds.iter().any(|k| f["kind"] == *k);
    let is_right = |f: &Value| {
        kind_ok(f)
            && f["culprit"]["pid"]
                .as_u64()
                .is_some_and(|p| w.pids.contains(&p))
    };
    let right: Vec<&&Value> = all.iter().filter(|f| is_right(f)).collect();
    o.false_findings = all.len() - right.len();
    let wrong_culprit = all.iter().any(|f| kind_ok(f) && !is_right(f));
    let notes: Vec<&str> = doc["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let withheld = notes.iter().any(|n| n.contains("withheld"));
    let said_why = notes.iter().any(|n| {
        n.contains("not named") && w.pids.iter().any(|p| n.contains(&format!("(pid {p}")))
    });
    if right.is_empty() {
        o.verdict = if wrong_culprit {
            Verdict::Wrong
        } else if w.may_withhold && withheld && all.is_empty() {
            Verdict::Withheld
        } else if said_why && all.is_empty() {
            Verdict::SaidWhy
        } else {
            Verdict::Missed
        };
        o.detail = details();
        return o;
    }
    if let Some((name, want_value)) = w.magnitude {
        let got: Vec<f64> = right
            .iter()
            .filter(|f| f["magnitude"]["name"] == name)
            .filter_map(|f| f["magnitude"]["value"].as_f64())
            .collect();
        // Named on several communicators (DP x TP), each measures the lag on its own: on
        // one the devices may have hidden part of it (asynchronous NCCL), so the closest
        // reading counts.
        if want_value > 0.0 {
            o.magnitude_err = got
                .iter()
                .map(|g| (g - want_value).abs() / want_value)
                .min_by(f64::total_cmp);
        }
    }
    let raised = right.iter().filter_map(|f| f["raised_ns"].as_u64()).min();
    if let (Some(r), Some(first)) = (raised, w.onsets.first()) {
        let before = w.onsets.iter().filter(|&&t| t < r).count();
        o.time_to_finding = Some((r.saturating_sub(*first) as f64 / 1e6, before));
    }
    if o.false_findings > 0 {
        o.verdict = Verdict::FalseFindings;
        o.detail = details();
    } else if o.magnitude_err.is_some_and(|e| e > TOLERANCE) {
        o.verdict = Verdict::Magnitude;
        o.detail = details();
    }
    o
}

/// Scores the serving stack's report against the client's measurements.
pub fn serving(s: &Scenario, port: u16, client: &ClientTruth, doc: &Value) -> Outcome {
    let r = &doc["requests"];
    let ms = |v: &Value| v.as_f64().unwrap_or(0.0) / 1e6;
    let (ttft, itl) = (ms(&r["ttft_ns"]["p50"]), ms(&r["inter_token_ns"]["p50"]));
    let (c_ttft, c_itl) = (
        median(client.ttft_ms.clone()),
        median(client.itl_ms.clone()),
    );
    let err = ((ttft - c_ttft).abs() / c_ttft).max((itl - c_itl).abs() / c_itl);
    let all = findings(doc);
    let mut o = Outcome {
        scenario: s.name.clone(),
        expected: format!("TTFT {c_ttft:.0} ms, ITL {c_itl:.1} ms"),
        named: format!("TTFT {ttft:.0} ms, ITL {itl:.1} ms"),
        magnitude_err: Some(err),
        false_findings: all.len(),
        time_to_finding: None,
        verdict: Verdict::Right,
        detail: String::new(),
    };
    if r["serving_port"] != port {
        o.verdict = Verdict::Missed;
        o.detail = format!("serving port {} (expected {port})", r["serving_port"]);
    } else if !all.is_empty() {
        o.verdict = Verdict::FalseFindings;
        o.detail = all
            .iter()
            .map(|f| format!("{}: {}", label(f), f["evidence"].as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(" | ");
    } else if err > SERVING_TOLERANCE {
        o.verdict = Verdict::Magnitude;
    }
    o
}

/// KV-transfer scenarios: the expected agent named (by its label) with one of the expected
/// magnitudes, or nothing at all; any other finding is false, except, where the agent is
/// killed, an informational reset of a connection (a killed process resets its connections:
/// saying so is true, and names no other culprit). The magnitude is not scored
/// against the job (the fault is a kind, not a size); the slow ratio is shown as named.
pub fn kv(s: &Scenario, r: &crate::nixl::NixlRun) -> Outcome {
    let all = findings(&r.report);
    let label = |f: &Value| {
        format!(
            "{} {} ({})",
            f["kind"].as_str().unwrap_or("?"),
            f["culprit"]["agent"].as_str().unwrap_or("-"),
            f["magnitude"]["name"].as_str().unwrap_or("?")
        )
    };
    let mut o = Outcome {
        scenario: s.name.clone(),
        expected: expected_label(&s.expect),
        named: if all.is_empty() {
            "none".into()
        } else {
            all.iter().map(|f| label(f)).collect::<Vec<_>>().join(", ")
        },
        magnitude_err: None,
        false_findings: 0,
        time_to_finding: None,
        verdict: Verdict::Right,
        detail: all
            .iter()
            .map(|f| f["evidence"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join(" | "),
    };
    match &s.expect {
        Expect::KvAgent { agent, magnitude } => {
            let name = crate::nixl::agent_name(*agent);
            let want = format!("agent {}…", &name[..8.min(name.len())]);
            let hit = |f: &&Value| {
                f["kind"] == "kv_transfer"
                    && f["culprit"]["agent"] == want.as_str()
                    && magnitude.iter().any(|m| f["magnitude"]["name"] == *m)
            };
            let right = all.iter().filter(|f| hit(f)).count();
            let killed = magnitude.contains(&"failed_transfers");
            let co_symptom =
                |f: &&&Value| killed && f["kind"] == "link" && f["magnitude"]["name"] == "resets";
            let other = all
                .iter()
                .filter(|f| f["culprit"]["agent"] != want.as_str() && !co_symptom(f))
                .count();
            o.false_findings = other;
            o.verdict = if right == 0 {
                Verdict::Missed
            } else if other > 0 {
                Verdict::FalseFindings
            } else {
                Verdict::Right
            };
        }
        _ => {
            // No fault was injected, but the job's own timing is the truth: an agent whose
            // transfers the decode side itself measured slower than every other's by the
            // rule's ratio was slow, and saying so is right.
            let measured_slow = |f: &&Value| {
                f["magnitude"]["name"] == "slow_ratio"
                    && f["culprit"]["agent"]
                        .as_str()
                        .is_some_and(|a| r.measured_slow(a))
            };
            o.false_findings = all.iter().filter(|f| !measured_slow(f)).count();
            if o.false_findings > 0 {
                o.verdict = Verdict::FalseFindings;
            }
        }
    }
    o
}
