//! A ring buffer far too small for the job (`--ring-size 4K`, the reader draining on its own
//! timer): records are lost, counted and shown, in the summary and the report, and the
//! healthy job gets no false stall or straggler from the gaps.

#[path = "findings_common.rs"]
mod common;

use common::{nothing, run, serial};
use llmdd_tests::harness::Stream;

#[test]
fn overflow_is_counted_and_raises_no_false_finding() {
    let _one = serial();
    let r = run(
        "ring_overflow",
        &[
            "--steps",
            "150",
            "--compute-us",
            "1000",
            "--launches",
            "40",
            "--memcpy-bytes",
            "64K",
            "--collective",
            "allreduce:16K",
        ],
        &["--ring-size", "4K", "--overhead-budget", "off"],
        &mut nothing(),
    );
    let lost = r.report["events"]["lost"].as_u64().expect("lost count");
    assert!(lost > 0, "a 4 KiB ring overflows: {}", r.report["events"]);
    assert_eq!(
        r.report["events"]["lost_by_reason"]["ring_buffer_full"].as_u64(),
        Some(lost)
    );
    let out = r.llmdd.lines_of(Stream::Stdout).join("\n");
    assert!(
        out.contains(&format!("lost events: {lost} (ring_buffer_full={lost})")),
        "the summary shows the loss: {out}"
    );
    for f in r.findings() {
        assert!(
            f["kind"] != "straggler" && f["kind"] != "stall",
            "no false finding from lost records: {}",
            r.describe()
        );
    }
}
