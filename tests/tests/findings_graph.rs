//! CUDA-graph decode: each step is one cudaGraphLaunch whose graph holds the collective, so
//! no NCCL call is visible on the host. A rank that is late every step is still named, from
//! the graph-launch steps matched across ranks, and the finding says so.

#[path = "findings_common.rs"]
mod common;

use common::{assert_within, nothing, run, serial};

#[test]
fn straggler_under_cuda_graphs_is_named_from_graph_launches() {
    let _one = serial();
    let r = run(
        "findings_graph",
        &[
            "--graph",
            "--steps",
            "100",
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
    // No NCCL call reached the host during the measured steps: only graph launches.
    for rt in &r.truth.ranks {
        assert!(
            rt.call_counts
                .keys()
                .all(|f| !f.starts_with("nccl") || f == "ncclCommDestroy"),
            "{:?}",
            rt.call_counts
        );
        assert!(rt.call_counts.get("cudaGraphLaunch").copied().unwrap_or(0) >= 100);
    }
    let f = r.only_finding("straggler");
    assert_eq!(f["culprit"]["pid"], r.pid_of(2), "{}", r.describe());
    assert_eq!(f["source"], "graph-launch steps", "{}", r.describe());
    let lag = f["magnitude"]["value"].as_f64().expect("magnitude");
    assert_within("graph-step lag", lag, 20e6, 0.2);
    eprintln!("graph straggler 2:20:1: lag {:.2} ms", lag / 1e6);
}
