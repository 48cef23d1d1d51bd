//! The accuracy matrix: jobs with a known fault (or none), traced by llmdd as a user would,
//! and what llmdd named scored against what was done. `cargo xtask accuracy` runs the full
//! matrix and prints one table; `tests/tests/accuracy_matrix.rs` runs a part of it in CI.
//!
//! - `matrix`: the scenarios, generated from a seed (shapes, ranks, ops, magnitudes,
//!   frequencies and when llmdd attaches vary with it);
//! - `run`: runs one scenario (simulated jobs, the real Open MPI, the real uvicorn);
//! - `score`: compares llmdd's report with the job's truth.

mod matrix;
mod run;
mod score;

pub use matrix::{matrix, Size};
pub use run::{run, Env};

/// A fault to find, or none, in a job of a given shape.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Short, unique within a matrix: what the job is and what was done to it.
    pub name: String,
    pub job: JobKind,
    pub expect: Expect,
}

/// What runs.
#[derive(Clone, Debug)]
pub enum JobKind {
    /// One or more simulated jobs (`simjob` arguments each, `--ranks` included), all traced
    /// by one llmdd.
    Sim {
        jobs: Vec<Vec<String>>,
        attach: Attach,
    },
    /// The real Open MPI job, 4 ranks, rank `slow` late by `delay_us` every step; llmdd
    /// attached `attach_after_ms` into the run. With `hang_step`, rank `slow` stops for good
    /// before that step: llmdd attaches `attach_after_ms` after it did, traces for a few
    /// seconds, and the job is killed.
    Mpi {
        steps: u32,
        compute_us: u32,
        slow: u32,
        delay_us: u32,
        attach_after_ms: u64,
        hang_step: Option<u32>,
    },
    /// KV-cache transfers over the real NIXL: a decode process pulling `iters` times from
    /// each of `agents` prefill agents, `fault` done to one of them (see `crate::nixl`).
    Nixl {
        agents: usize,
        iters: u32,
        fault: crate::nixl::Fault,
    },
    /// The real Starlette + uvicorn serving stack, llmdd attached as a front.
    Serving {
        http: &'static str,
        event_loop: &'static str,
        ttft_ms: u64,
        itl_ms: u64,
    },
}

/// When llmdd attaches to a simulated job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// Before the ranks create their communicators (init and splits seen).
    BeforeInit,
    /// After the communicators exist, before the measured steps (and their faults).
    BeforeFault,
    /// This long into the measured steps: the fault is already going on.
    During { after_ms: u64 },
}

/// What llmdd should say.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// A straggler: rank `rank` of job `job` (a world rank), named with its lag when late.
    /// `may_withhold`: its communicator may not be identifiable (made before attach, with
    /// another of the same shape): saying so instead of naming is right too.
    Straggler {
        job: usize,
        rank: usize,
        may_withhold: bool,
    },
    /// A pipeline bottleneck: any rank of `ranks` (the slow stage) of job `job`, named with
    /// the share of time the others lose to it (`may_withhold` as for stragglers).
    Pipeline {
        job: usize,
        ranks: Vec<usize>,
        may_withhold: bool,
    },
    /// A stall: rank `rank` of job `job` is the one the others wait for.
    Stall { job: usize, rank: usize },
    /// A stall already going on when llmdd attached: rank `rank` of job `job` (a world
    /// rank) is the one the others wait for; its length is a lower bound (not scored).
    StallAtAttach { job: usize, rank: usize },
    /// Nothing at all.
    Nothing,
    /// No rank named, and a note that the time is on the device side (a slower GPU the
    /// host cannot attribute).
    DeviceSide,
    /// TTFT and inter-token medians as the client measured them (within 10%).
    Serving,
    /// A `kv_transfer` finding naming prefill agent `agent` (index), with this magnitude
    /// ("slow_ratio", "failed_transfers", "stuck_ns"); nothing about another agent.
    KvAgent {
        agent: usize,
        magnitude: &'static [&'static str],
    },
}

/// How a scenario came out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The right culprit (or rightly nothing), and nothing else.
    Right,
    /// Rightly withheld: the evidence could not attribute it, and llmdd said so.
    Withheld,
    /// Not named, and llmdd said why: the rank's lateness was within the job's noise or
    /// cost the others less than a straggler must (the note names the right rank).
    SaidWhy,
    /// The fault was not named.
    Missed,
    /// Another rank named for the fault.
    Wrong,
    /// The right culprit, but also findings that should not be there.
    FalseFindings,
    /// The magnitude is off by more than the tolerance.
    Magnitude,
    /// The scenario itself failed to run.
    Error,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        matches!(self, Verdict::Right | Verdict::Withheld | Verdict::SaidWhy)
    }

    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Right => "ok",
            Verdict::Withheld => "ok (withheld)",
            Verdict::SaidWhy => "ok (below noise or cost, said)",
            Verdict::Missed => "MISSED",
            Verdict::Wrong => "WRONG",
            Verdict::FalseFindings => "FALSE",
            Verdict::Magnitude => "MAGNITUDE",
            Verdict::Error => "ERROR",
        }
    }
}

/// One scenario's result.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub scenario: String,
    /// What should be named ("straggler r2", "stage r1|r3", "nothing", "ttft 120ms").
    pub expected: String,
    /// What was named ("straggler r2", "none", ...).
    pub named: String,
    /// Relative error of the magnitude (lag, share, TTFT), when there is one.
    pub magnitude_err: Option<f64>,
    /// Findings that name something other than the expected culprit.
    pub false_findings: usize,
    /// From the fault's first occurrence to the finding (ms), and how many occurrences
    /// there had been by then.
    pub time_to_finding: Option<(f64, usize)>,
    pub verdict: Verdict,
    /// Why, when not right: the findings, or the error.
    pub detail: String,
}

/// The table, one line per outcome and a summary line.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "scenario".into(),
        "expected".into(),
        "named".into(),
        "magnitude err".into(),
        "false".into(),
        "to finding".into(),
        "verdict".into(),
    ]];
    for o in outcomes {
        rows.push([
            o.scenario.clone(),
            o.expected.clone(),
            o.named.clone(),
            o.magnitude_err
                .map(|e| format!("{:.1}%", e * 100.0))
                .unwrap_or_else(|| "-".into()),
            o.false_findings.to_string(),
            o.time_to_finding
                .map(|(ms, n)| format!("{ms:.0} ms ({n}x)"))
                .unwrap_or_else(|| "-".into()),
            o.verdict.label().into(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&summary(outcomes));
    out.push('\n');
    out
}

/// The table as Markdown (for the README).
pub fn markdown(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | expected | named | magnitude err | false findings | to finding | verdict |\n|---|---|---|---:|---:|---:|---|\n",
    );
    for o in outcomes {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            o.scenario,
            o.expected,
            o.named,
            o.magnitude_err
                .map(|e| format!("{:.1}%", e * 100.0))
                .unwrap_or_else(|| "–".into()),
            o.false_findings,
            o.time_to_finding
                .map(|(ms, n)| format!("{ms:.0} ms ({n}×)"))
                .unwrap_or_else(|| "–".into()),
            o.verdict.label()
        ));
    }
    out.push('\n');
    out.push_str(&summary(outcomes));
    out.push('\n');
    out
}

/// "48 scenarios: 46 right (2 withheld), 1 missed, ...; 0 false findings".
pub fn summary(outcomes: &[Outcome]) -> String {
    let count = |v: Verdict| outcomes.iter().filter(|o| o.verdict == v).count();
    let right = count(Verdict::Right) + count(Verdict::Withheld) + count(Verdict::SaidWhy);
    let false_findings: usize = outcomes.iter().map(|o| o.false_findings).sum();
    let mut parts = vec![format!(
        "{} scenarios: {right} right ({} withheld as unattributable, {} not named as below the noise or cost line, with a note)",
        outcomes.len(),
        count(Verdict::Withheld),
        count(Verdict::SaidWhy)
    )];
    for (v, what) in [
        (Verdict::Missed, "missed"),
        (Verdict::Wrong, "wrong culprit"),
        (Verdict::FalseFindings, "with false findings"),
        (Verdict::Magnitude, "magnitude off"),
        (Verdict::Error, "failed to run"),
    ] {
        let n = count(v);
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    format!(
        "{}; {false_findings} false findings in all",
        parts.join(", ")
    )
}
