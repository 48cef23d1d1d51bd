//! `--report FILE` end to end: llmdd traces a running 4-rank job with a straggler and a
//! failing allocation, is stopped by SIGTERM mid-run, exits 0, and its report validates
//! against docs/report.schema.json with the job's processes, libraries, return codes and
//! findings in it.

use std::time::Duration;

use llmdd_tests::{
    harness::{fake_lib_dir, require_root, start_llmdd, Stream},
    job::Job,
};
use serde_json::Value;

fn validate(doc: &Value) {
    let errors = llmdd_tests::harness::schema_errors(doc).expect("the schema loads");
    assert!(errors.is_empty(), "invalid report:\n{}", errors.join("\n"));
}

/// Calls of `func` in the newest summary line for it (plain output), if any.
fn calls_in(line: &str, func: &str) -> Option<u64> {
    let mut w = line.split_whitespace();
    w.next()?;
    if w.next()? != func {
        return None;
    }
    w.next()?.parse().ok()
}

#[test]
fn report_written_on_sigterm_validates_against_the_schema() {
    require_root();
    let lib_dir = fake_lib_dir();
    let work = lib_dir.join("views_report");
    std::fs::create_dir_all(&work).expect("work dir");
    let report = work.join("report.json");
    let mut job = Job::start(
        &lib_dir,
        &[
            "--ranks",
            "4",
            // Long enough to be stopped mid-run (faults are injected in measured steps only,
            // so not --forever).
            "--steps",
            "5000",
            "--warmup",
            "1",
            "--compute-us",
            "300",
            "--straggler",
            "3:3:1",
            "--oom-every",
            "5",
            "--timeout-s",
            "240",
        ],
    )
    .expect("simjob starts");
    let report_arg = report.to_string_lossy().into_owned();
    let mut llmdd = start_llmdd(
        &job.pids,
        &["--no-tui", "--interval", "200ms", "--report", &report_arg],
    )
    .expect("llmdd attaches");
    job.go().expect("releasing the job");
    // Mid-run: enough collectives seen for the straggler to be named. (A line is one
    // process's count; the ranks run in lockstep, a call or two apart, so 45 in one line
    // means at least 40 in each.)
    llmdd
        .wait_line("45 all-reduce calls", Duration::from_secs(120), |s, l| {
            s == Stream::Stdout && calls_in(l, "ncclAllReduce").is_some_and(|n| n >= 45)
        })
        .expect("llmdd sees the collectives");
    llmdd.signal(libc::SIGTERM).expect("SIGTERM");
    let status = llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd exits");
    assert!(status.success(), "{status}:\n{}", llmdd.transcript());
    let out = llmdd.lines_of(Stream::Stdout).join("\n");
    assert!(
        out.contains("=== final summary (stopped by SIGTERM) ==="),
        "{out}"
    );
    job.proc.signal(libc::SIGTERM).expect("stopping the job");
    let _ = job.proc.wait_exit(Duration::from_secs(60));
    // Without an NVIDIA driver, one line says there is no GPU context, and all else works.
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        let err = llmdd.lines_of(Stream::Stderr).join("\n");
        let notes: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("no GPU context"))
            .collect();
        assert_eq!(notes.len(), 1, "{err}");
        assert!(notes[0].contains("libnvidia-ml.so.1 not found"), "{err}");
    }

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report"))
        .expect("report is JSON");
    validate(&doc);
    assert_eq!(doc["schema_version"], 4);
    assert_eq!(doc["run"]["stopped_because"], "stopped by SIGTERM");
    assert!(doc["events"]["received"].as_u64() > Some(0));
    assert_eq!(doc["events"]["lost"], 0);
    assert!(!doc["host"]["kernel"]["release"]
        .as_str()
        .unwrap_or("")
        .is_empty());
    // The node's NICs over the last interval, when it has any besides loopback.
    let nics = std::fs::read_dir("/sys/class/net")
        .map(|d| d.flatten().filter(|e| e.file_name() != "lo").count())
        .unwrap_or(0);
    if nics > 0 {
        assert_eq!(
            doc["nics"].as_array().map(Vec::len),
            Some(nics),
            "{}",
            doc["nics"]
        );
    }
    let procs = doc["processes"].as_array().expect("processes");
    assert_eq!(procs.len(), 4);
    for (i, pid) in job.pids.iter().enumerate() {
        let p = procs
            .iter()
            .find(|p| p["pid"] == *pid)
            .unwrap_or_else(|| panic!("pid {pid} missing: {procs:?}"));
        assert_eq!(p["rank"], i, "{p}");
        assert_eq!(p["nranks"], 4, "{p}");
        assert_eq!(p["rank_source"], "communicator");
        let families: Vec<&str> = p["libraries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["family"].as_str())
            .collect();
        for f in ["nccl", "cudart", "cuda"] {
            assert!(families.contains(&f), "pid {pid}: {families:?}");
        }
        assert!(p["libraries"][0]["path"]
            .as_str()
            .is_some_and(|x| x.starts_with('/')));
        let funcs = p["functions"].as_array().expect("functions");
        let malloc = funcs
            .iter()
            .find(|f| f["name"] == "cudaMalloc")
            .unwrap_or_else(|| panic!("no cudaMalloc for pid {pid}: {funcs:?}"));
        assert_eq!(malloc["errors"][0]["code"], 2, "{malloc}");
        assert!(malloc["errors"][0]["count"].as_u64() >= Some(1));
        assert!(funcs
            .iter()
            .any(|f| f["name"] == "ncclAllReduce" && f["calls"].as_u64() >= Some(40)));
    }
    let comm = &doc["communicators"][0];
    assert_eq!(comm["nranks"], 4, "{comm}");
    assert!(comm["ops"][0]["calls"].as_u64() > Some(0));
    let findings = doc["findings"].as_array().expect("findings");
    let straggler = findings
        .iter()
        .find(|f| f["kind"] == "straggler")
        .unwrap_or_else(|| panic!("no straggler finding: {findings:#?}"));
    assert_eq!(straggler["culprit"]["rank"], 3, "{straggler}");
    assert_eq!(straggler["culprit"]["pid"], job.pids[3]);
    assert!(!straggler["suggestion"].as_str().unwrap_or("").is_empty());
    assert!(findings.iter().any(|f| f["kind"] == "memory_pressure"));
}
