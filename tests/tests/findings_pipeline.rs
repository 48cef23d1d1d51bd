//! An imbalanced pipeline (`--pipeline --imbalance 2:20000`: stage 2 computes 20 ms more per
//! step, 5 ms more per micro-batch) yields exactly one bubble finding naming stage 2: the
//! fake NCCL's sends are flow-controlled (bounded socket buffers), so stages 0 and 1 wait to
//! send to it and stage 3 waits to receive from it; stage 2 is the one that does not wait.
//!
//! Magnitude (`others_wait_share`): the share of their time the other stages spend waiting
//! beyond what stage 2 does. With a bottleneck taking E more per micro-batch than the B the
//! others take, the others wait about E / (E + B) of the time.

#[path = "findings_common.rs"]
mod common;

use common::{assert_within, median, nothing, run, serial};

#[test]
fn imbalanced_stage_is_one_bubble_blaming_it() {
    let _one = serial();
    let micro = 4u64;
    let r = run(
        "findings_pipeline",
        &[
            "--steps",
            "80",
            "--compute-us",
            "2000",
            "--pipeline",
            "--microbatches",
            &micro.to_string(),
            "--imbalance",
            "2:20000",
        ],
        &["--quiet"],
        &mut nothing(),
    );
    let f = r.only_finding("bubble");
    r.assert_culprit(f, 2);
    let ev = f["evidence"].as_str().unwrap_or("");
    assert!(ev.contains("pipeline stage rank 2"), "{ev}");
    assert_eq!(f["magnitude"]["name"], "others_wait_share");
    let share = f["magnitude"]["value"].as_f64().expect("magnitude");
    let extra = r.faults("imbalance");
    assert!(extra.iter().all(|x| x.rank == 2));
    let slept = median(extra.iter().map(|x| x.actual_ns).collect()) as f64;
    let base = 2e6 / micro as f64;
    let expected = slept / (slept + base);
    assert_within("others' wait share", share, expected, 0.2);
    eprintln!(
        "imbalance 2:20000: others wait {:.0}% more than stage 2 (expected about {:.0}%)",
        share * 100.0,
        expected * 100.0
    );
}
