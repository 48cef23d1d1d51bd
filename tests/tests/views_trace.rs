//! `--trace` and `--flamegraph` end to end: llmdd traces a 4-rank job with a straggler until
//! it exits; the Chrome trace-event JSON is parsed back (slices per rank, named process
//! tracks, flows joining the ranks of each matched collective) and the flame graph SVG names
//! the traced functions and the folding.

use std::time::Duration;

use llmdd_tests::{
    harness::{fake_lib_dir, require_root, start_llmdd, Stream},
    job::Job,
};
use serde_json::Value;

const STEPS: u64 = 30;

#[test]
fn trace_and_flamegraph_of_a_running_job() {
    require_root();
    let lib_dir = fake_lib_dir();
    let work = lib_dir.join("views_trace");
    std::fs::create_dir_all(&work).expect("work dir");
    let trace = work.join("trace.json");
    let svg = work.join("calls.svg");
    let steps = STEPS.to_string();
    let mut job = Job::start(
        &lib_dir,
        &[
            "--ranks",
            "4",
            "--steps",
            &steps,
            "--warmup",
            "1",
            "--compute-us",
            "300",
            "--straggler",
            "2:6:1",
            "--timeout-s",
            "240",
        ],
    )
    .expect("simjob starts");
    let (t, s) = (
        trace.to_string_lossy().into_owned(),
        svg.to_string_lossy().into_owned(),
    );
    let mut llmdd = start_llmdd(
        &job.pids,
        &["--no-tui", "--quiet", "--trace", &t, "--flamegraph", &s],
    )
    .expect("llmdd attaches");
    job.go().expect("releasing the job");
    job.proc
        .wait_exit(Duration::from_secs(240))
        .expect("job completes");
    let status = llmdd.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", llmdd.transcript());
    let err = llmdd.lines_of(Stream::Stderr).join("\n");
    assert!(err.contains("trace written to"), "{err}");
    assert!(err.contains("flame graph written to"), "{err}");

    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).expect("trace")).expect("JSON");
    let evs = doc["traceEvents"].as_array().expect("traceEvents");
    assert_eq!(doc["metadata"]["capped"], false);
    for (rank, pid) in job.pids.iter().enumerate() {
        let allreduce: Vec<&Value> = evs
            .iter()
            .filter(|e| e["ph"] == "X" && e["pid"] == *pid && e["name"] == "ncclAllReduce")
            .collect();
        assert_eq!(allreduce.len() as u64, STEPS, "rank {rank}");
        assert!(allreduce
            .iter()
            .all(|e| e["args"]["rank"] == rank && e["args"]["bytes"].as_u64() > Some(0)));
        assert!(evs
            .iter()
            .any(|e| e["ph"] == "X" && e["pid"] == *pid && e["cat"] == "cudart"));
        let name = evs
            .iter()
            .find(|e| e["ph"] == "M" && e["name"] == "process_name" && e["pid"] == *pid)
            .and_then(|e| e["args"]["name"].as_str())
            .unwrap_or("");
        assert!(
            name.starts_with(&format!("pid {pid} (rank {rank})")),
            "{name}"
        );
    }
    // Flows: one per matched instance, starting at one rank and finishing at another,
    // each step bound to a slice of that rank at that time.
    let flows = doc["metadata"]["flows"].as_u64().unwrap_or(0);
    assert!(flows >= STEPS - 2, "flows {flows}");
    let by_id = |ph: &str| -> Vec<&Value> { evs.iter().filter(|e| e["ph"] == ph).collect() };
    let (starts, ends) = (by_id("s"), by_id("f"));
    assert_eq!(starts.len() as u64, flows);
    assert_eq!(ends.len() as u64, flows);
    let straggler = job.pids[2];
    let late = ends.iter().filter(|f| f["pid"] == straggler).count() as u64;
    assert!(
        late * 10 >= flows * 9,
        "the straggler arrives last: {late} of {flows}"
    );
    for f in starts.iter().chain(&ends) {
        let ts = f["ts"].as_f64().expect("ts");
        assert!(
            evs.iter().any(|x| x["ph"] == "X"
                && x["pid"] == f["pid"]
                && x["tid"] == f["tid"]
                && x["ts"].as_f64() == Some(ts)),
            "flow step without its slice: {f}"
        );
    }

    let svg = std::fs::read_to_string(&svg).expect("svg");
    assert!(svg.starts_with("<?xml") && svg.contains("<svg"));
    for needle in [
        "ncclAllReduce",
        "libnccl.so.2",
        "(rank 0)",
        "sum float32",
        "process;user stack;library function;op",
    ] {
        assert!(svg.contains(needle), "{needle} missing from the SVG");
    }
}
