//! NCCL's RAS view beside llmdd's: a RAS service (`llmdd::ras::serve_canned`, speaking
//! NCCL's client protocol with the JSON report of NCCL 2.28.7+, because the fake NCCL has
//! none) reports the simulated job's communicator with its four ranks; `llmdd attach --ras
//! HOST:PORT` prints that view after its findings and says that membership and missing
//! ranks agree with its own. (The real service is checked against llmdd by scripts/gpu-check.sh on a GPU node.)

use std::time::Duration;

use llmdd_tests::{
    harness::{fake_lib_dir, require_root, start_llmdd, Stream},
    job::Job,
};

/// The simulated job on 4 ranks, `steps` steps of `compute_us` each, waiting for `go`.
fn four_ranks(steps: &str, compute_us: &str) -> Job {
    Job::start(
        &fake_lib_dir(),
        &[
            "--ranks",
            "4",
            "--steps",
            steps,
            "--warmup",
            "1",
            "--compute-us",
            compute_us,
            "--timeout-s",
            "240",
        ],
    )
    .expect("simjob starts")
}

#[test]
fn ras_view_is_printed_beside_the_findings_and_agrees() {
    require_root();
    let mut job = four_ranks("40", "300");
    let ranks: Vec<String> = job
        .pids
        .iter()
        .enumerate()
        .map(|(r, p)| {
            format!(
                r#"{{"rank": {r}, "host": "127.0.0.1", "pid": {p}, "cuda_dev": {r},
                    "nvml_dev": {r}, "status": {{}}, "collective_counts": {{"AllReduce": 40}}}}"#
            )
        })
        .collect();
    let report = format!(
        r#"{{"nccl_version": "2.28.9", "communicators": [{{"hash": "0xabc", "size": 4,
            "ranks_count": 4, "missing_ranks_count": 0, "ranks": [{}], "missing_ranks": []}}],
            "ras": {{"collection_time_sec": 0.001, "timeouts_count": 0}}}}"#,
        ranks.join(",")
    );
    let addr = llmdd::ras::serve_canned(report, true).expect("a RAS service");
    let mut llmdd = start_llmdd(&job.pids, &["--no-tui", "--ras", &addr]).expect("llmdd attaches");
    job.go().expect("releasing the job");
    job.proc
        .wait_exit(Duration::from_secs(240))
        .expect("job completes");
    let status = llmdd.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", llmdd.transcript());
    let out = llmdd.lines_of(Stream::Stdout).join("\n");
    let at = out
        .find("nccl ras: communicator 0xabc of 4 ranks: 4 answering")
        .unwrap_or_else(|| panic!("no RAS block in:\n{out}"));
    assert!(
        out.find("findings").is_some_and(|f| f < at),
        "after the findings:\n{out}"
    );
    assert!(
        out.contains("4 of its 4 traced members answer RAS; missing ranks agree (none)"),
        "{out}"
    );
}

/// RAS asked while tracing: a rank whose AllReduce count stays below its peers' across two
/// looks a second apart is named, as a stall from NCCL's RAS, with its pid.
#[test]
fn a_rank_ras_sees_behind_in_counts_is_named() {
    require_root();
    let mut job = four_ranks("3000", "1000");
    let ranks: Vec<String> = job
        .pids
        .iter()
        .enumerate()
        .map(|(r, p)| {
            let count = if r == 2 { 811 } else { 812 };
            format!(
                r#"{{"rank": {r}, "host": "127.0.0.1", "pid": {p}, "status": {{}},
                    "collective_counts": {{"AllReduce": {count}}}}}"#
            )
        })
        .collect();
    let report = format!(
        r#"{{"nccl_version": "2.28.9", "communicators": [{{"hash": "0xabc", "size": 4,
            "ranks": [{}], "missing_ranks": []}}]}}"#,
        ranks.join(",")
    );
    let addr = llmdd::ras::serve_canned(report, true).expect("a RAS service");
    let out = std::env::temp_dir().join(format!("llmdd-ras-behind-{}.json", std::process::id()));
    let out_s = out.to_string_lossy().into_owned();
    let mut llmdd = start_llmdd(
        &job.pids,
        &[
            "--no-tui",
            "--ras",
            &addr,
            "--duration",
            "4s",
            "--report",
            &out_s,
        ],
    )
    .expect("llmdd attaches");
    job.go().expect("releasing the job");
    let status = llmdd.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", llmdd.transcript());
    let _ = job.proc.signal(libc::SIGTERM);
    let text = std::fs::read_to_string(&out).expect("report");
    let _ = std::fs::remove_file(&out);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let ras: Vec<&serde_json::Value> = doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["source"] == "nccl ras")
        .collect();
    assert_eq!(ras.len(), 1, "{:#}", doc["findings"]);
    assert_eq!(ras[0]["kind"], "stall");
    assert_eq!(ras[0]["culprit"]["pid"], job.pids[2]);
    assert_eq!(ras[0]["magnitude"]["name"], "collectives_behind");
}
