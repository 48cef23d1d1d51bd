//! An imbalanced pipeline (`--pipeline --imbalance 2:20000`: stage 2 computes 20 ms more per
//! step, 5 ms more per micro-batch) yields exactly one bubble finding blaming stage 2, which
//! stage 3 waits for.
//!
//! Magnitude (`median_wait_ns`): the median wait of the downstream stage per transfer (its
//! receive posted before the upstream send), i.e. how much longer the upstream stage takes
//! per micro-batch; times the micro-batches of a step it is the injected extra per step.

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
    assert!(
        ev.contains("pipeline stage rank 3") && ev.contains("waited for upstream rank 2"),
        "{ev}"
    );
    assert_eq!(f["magnitude"]["name"], "median_wait_ns");
    let wait = f["magnitude"]["value"].as_f64().expect("magnitude");
    // Per step: within 20% of the injected 20 ms.
    assert_within("wait per step", wait * micro as f64, 20e6, 0.2);
    // Per micro-batch: within 20% of what stage 2 actually slept.
    let extra = r.faults("imbalance");
    assert!(extra.iter().all(|x| x.rank == 2));
    let slept = median(extra.iter().map(|x| x.actual_ns).collect());
    assert_within("wait per transfer vs slept", wait, slept as f64, 0.2);
    eprintln!(
        "imbalance 2:20000: wait per transfer {:.2} ms, x {micro} = {:.2} ms per step (slept {:.2} ms per micro-batch)",
        wait / 1e6,
        wait * micro as f64 / 1e6,
        slept as f64 / 1e6
    );
    // The bubble ratio (stage 3's share of time waiting) is in the evidence.
    assert!(ev.contains("% of the window"), "{ev}");
}
