//! A stall (`--stall 1:3:1500`: rank 1 stops for 1.5 s before the collectives of step 3,
//! while the other ranks wait for it inside the all-reduce) yields exactly one stall finding
//! naming rank 1, resolved, lasting the injected time within 20%; and it is named while it is
//! still going on.
//!
//! Magnitude (`stalled_ns`): from the first rank entering the stalled instance to the missing
//! rank arriving.

#[path = "findings_common.rs"]
mod common;

use std::time::Duration;

use common::{assert_within, nothing, run, serial, Run};
use llmdd_tests::harness::Stream;

const JOB: &[&str] = &[
    "--steps",
    "30",
    "--compute-us",
    "2000",
    "--collective",
    "allreduce:16K",
    "--stall",
    "1:3:1500",
];

/// The final report: one stall finding, resolved, naming rank 1, with the stall's duration.
fn check_report(r: &Run) {
    let f = r.only_finding("stall");
    r.assert_culprit(f, 1);
    assert_eq!(f["active"], false, "resolved: {}", r.describe());
    let faults = r.faults("stall");
    assert_eq!(faults.len(), 1, "{faults:?}");
    let stall = faults[0];
    assert_eq!(f["magnitude"]["name"], "stalled_ns");
    let lasted = f["magnitude"]["value"].as_f64().expect("magnitude");
    assert_within("stall duration", lasted, 1.5e9, 0.2);
    assert_within(
        "stall duration vs slept",
        lasted,
        stall.actual_ns as f64,
        0.2,
    );
    eprintln!(
        "stall 1:3:1500: lasted {:.3} s (slept {:.3} s)",
        lasted / 1e9,
        stall.actual_ns as f64 / 1e9
    );
    let ev = f["evidence"].as_str().unwrap_or("");
    assert!(
        ev.contains("ranks 0, 2, 3 entered all-reduce #3"),
        "the ranks that waited and the instance: {ev}"
    );
    assert!(ev.contains("resolved after"), "{ev}");
    // The window is the stall's, within the scheduling slack of the ranks entering.
    let (start, end) = (
        f["window"]["start_ns"].as_u64().expect("window"),
        f["window"]["end_ns"].as_u64().expect("window"),
    );
    assert!(
        start.abs_diff(stall.start_ns) < 100_000_000 && end.abs_diff(stall.end_ns) < 100_000_000,
        "window {start}..{end} vs stall {}..{}",
        stall.start_ns,
        stall.end_ns
    );
}

#[test]
fn stall_is_one_resolved_finding_with_its_duration() {
    let _one = serial();
    let r = run("findings_stall", JOB, &["--quiet"], &mut nothing());
    check_report(&r);
}

#[test]
fn stall_is_named_while_it_goes_on() {
    let _one = serial();
    let mut seen_at = None;
    let mut watch = |_: &mut llmdd_tests::job::Job, llmdd: &mut llmdd_tests::harness::Proc| {
        llmdd
            .wait_line(
                "live stall line naming rank 1",
                Duration::from_secs(60),
                |s, l| {
                    s == Stream::Stdout
                        && l.contains("stall: ")
                        && l.contains("rank 1 has not arrived")
                },
            )
            .expect("the stall is named while it goes on");
        seen_at = Some(simjob::now_ns());
    };
    let r = run(
        "findings_stall_live",
        JOB,
        &["--interval", "200ms"],
        &mut watch,
    );
    let seen_at = seen_at.expect("watched");
    let stall = r.faults("stall")[0];
    assert!(
        seen_at < stall.end_ns,
        "the stall line came {:.3} s after rank 1 resumed",
        (seen_at - stall.end_ns) as f64 / 1e9
    );
    assert!(seen_at > stall.start_ns);
    eprintln!(
        "stall 1:3:1500: named live {:.3} s into it, {:.3} s before it ended",
        (seen_at - stall.start_ns) as f64 / 1e9,
        (stall.end_ns - seen_at) as f64 / 1e9
    );
    check_report(&r);
}
