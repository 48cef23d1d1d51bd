//! A healthy job yields no finding. The fake NCCL's all-reduce is a star through rank 0, so
//! rank 0 returns from every collective, and calls the next one, a little after the others:
//! that is not a straggler. Loopback shows a few spurious retransmits under load (tail-loss
//! probes, a dozen per 100 MiB): that is not a lossy link.

#[path = "findings_common.rs"]
mod common;

use common::{nothing, run, serial, NRANKS};

#[test]
fn clean_run_small_messages_yields_no_finding() {
    let _one = serial();
    let steps = 300u64;
    let r = run(
        "findings_clean_small",
        &[
            "--steps",
            &steps.to_string(),
            "--compute-us",
            "2000",
            "--collective",
            "allreduce:16K,allgather:2K",
        ],
        &["--quiet"],
        &mut nothing(),
    );
    assert!(r.findings().is_empty(), "{}", r.describe());
    // Not vacuous: every instance of both collectives was matched across the 4 ranks.
    let c = r.communicator();
    assert_eq!(c["instances_finished"], 2 * steps, "{c:#}");
    assert_eq!(c["members"].as_array().map(Vec::len), Some(NRANKS));
}

#[test]
fn clean_run_bulk_transfers_yields_no_finding() {
    let _one = serial();
    // 100 MiB each way on every connection to rank 0.
    let steps = 100u64;
    let r = run(
        "findings_clean_bulk",
        &[
            "--steps",
            &steps.to_string(),
            "--compute-us",
            "2000",
            "--collective",
            "allreduce:1M",
        ],
        &["--quiet"],
        &mut nothing(),
    );
    assert!(r.findings().is_empty(), "{}", r.describe());
    assert_eq!(r.communicator()["instances_finished"], steps);
    // Not vacuous: the sockets were traced, and each rank moved its 100 MiB each way.
    assert!(
        r.report["engine_counts"]["sock_events"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{:#}",
        r.report["engine_counts"]
    );
    for p in r.report["processes"].as_array().expect("processes") {
        let bytes: u64 = p["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["name"] == "ncclAllReduce")
            .filter_map(|f| f["bytes"].as_u64())
            .sum();
        assert_eq!(bytes, steps << 20, "{p:#}");
    }
}
