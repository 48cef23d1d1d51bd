//! A straggler (`--straggler RANK:DELAY_MS:EVERY_K`: the rank sleeps before its collectives
//! every K-th step) yields exactly one finding, naming that rank and pid, raised within 1 s
//! of the evidence being there.
//!
//! Magnitude (`median_lag_ns`): how late the rank is when it is late, i.e. the median, over
//! the instances it arrived last in by at least the lateness threshold, of its arrival minus
//! the other ranks' median arrival. For a rank late every K-th step that is the injected
//! delay, whatever K is (a median over every instance would be 0 for K > 2).

#[path = "findings_common.rs"]
mod common;

use common::{assert_within, median, nothing, run, serial, Run};
use llmdd::engine::Config;

/// Checks the straggler finding of a run with `--straggler 2:DELAY:EVERY`.
fn check(r: &Run, delay_ms: u64, every: u64, steps: u64) {
    let f = r.only_finding("straggler");
    r.assert_culprit(f, 2);
    let faults = r.faults("straggler");
    assert_eq!(faults.len() as u64, steps / every, "{faults:?}");
    assert!(faults.iter().all(|x| x.rank == 2));
    // Magnitude within 20% of the injected delay (and of what was actually slept).
    assert_eq!(f["magnitude"]["name"], "median_lag_ns");
    let lag = f["magnitude"]["value"].as_f64().expect("magnitude");
    assert_within("lag when late", lag, (delay_ms * 1_000_000) as f64, 0.2);
    let slept = median(faults.iter().map(|x| x.actual_ns).collect());
    assert_within("lag when late vs slept", lag, slept as f64, 0.2);
    eprintln!(
        "straggler 2:{delay_ms}:{every}: lag when late {:.2} ms (slept median {:.2} ms)",
        lag / 1e6,
        slept as f64 / 1e6
    );
    // Raised within 1 s of the evidence being there: the first late instance at which the
    // engine's thresholds are all met (late count, instances seen, and enough late
    // instances that luck is ruled out: k of k on 4 ranks in a uniform order is 4^-k).
    let cfg = Config::default();
    let (k, at) = faults
        .iter()
        .enumerate()
        .map(|(k, x)| (k as u64 + 1, x))
        .find(|(late, x)| {
            let seen = x.step + 1;
            *late >= cfg.straggler_min_late as u64
                && seen >= cfg.straggler_min_instances as u64
                && 0.25f64.powi(*late as i32) <= cfg.straggler_max_chance
        })
        .expect("enough late instances for a verdict");
    let raised = f["raised_ns"].as_u64().expect("raised_ns");
    eprintln!(
        "straggler 2:{delay_ms}:{every}: raised {:.3} s after the evidence",
        (raised as f64 - at.end_ns as f64) / 1e9
    );
    assert!(
        raised <= at.end_ns + 1_000_000_000,
        "raised at {raised}, {:.3} s after the evidence was there (late instance {k}, step {}, at {})",
        (raised as f64 - at.end_ns as f64) / 1e9,
        at.step,
        at.end_ns
    );
}

#[test]
fn straggler_every_step_names_rank_2() {
    let _one = serial();
    let steps = 100;
    let r = run(
        "findings_straggler_every",
        &[
            "--steps",
            &steps.to_string(),
            "--compute-us",
            "2000",
            "--collective",
            "allreduce:16K",
            "--straggler",
            "2:20:1",
        ],
        &["--quiet"],
        &mut nothing(),
    );
    check(&r, 20, 1, steps);
}

#[test]
fn intermittent_straggler_names_rank_2() {
    let _one = serial();
    let steps = 160;
    let r = run(
        "findings_straggler_every4",
        &[
            "--steps",
            &steps.to_string(),
            "--compute-us",
            "2000",
            "--collective",
            "allreduce:16K",
            "--straggler",
            "2:30:4",
        ],
        &["--quiet"],
        &mut nothing(),
    );
    check(&r, 30, 4, steps);
}
