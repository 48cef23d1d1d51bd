//! `llmdd record` then `llmdd report`: the simulated job with a straggler is recorded by
//! real probes; read back offline, the same engine names the same rank as the live run did.
//! A recorder killed with SIGKILL leaves a file whose written chunks are salvaged, with a
//! message; `export` writes one JSON line per recorded event.

use std::{path::Path, process::Command, time::Duration};

use llmdd_tests::{
    harness::{built, fake_lib_dir, require_root, Proc},
    job::Job,
};
use serde_json::Value;

fn job(work: &Path, straggler: &str, steps: &str) -> Job {
    let truth = work.join("truth.json").to_string_lossy().into_owned();
    Job::start(
        &fake_lib_dir(),
        &[
            "--ranks",
            "4",
            "--warmup",
            "2",
            "--steps",
            steps,
            "--compute-us",
            "2000",
            "--collective",
            "allreduce:16K",
            "--straggler",
            straggler,
            "--truth",
            &truth,
            "--timeout-s",
            "240",
        ],
    )
    .expect("simjob starts")
}

fn recorder(pids: &[u32], file: &Path, extra: &[&str]) -> Proc {
    llmdd_tests::harness::start_record(pids, file, extra).expect("records")
}

fn llmdd(args: &[&str]) -> std::process::Output {
    Command::new(built("llmdd"))
        .args(args)
        .output()
        .expect("llmdd runs")
}

fn findings(report: &Path) -> Vec<Value> {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(report).expect("report")).expect("json");
    doc["findings"].as_array().cloned().unwrap_or_default()
}

fn stragglers(f: &[Value]) -> Vec<(u64, u64)> {
    f.iter()
        .filter(|f| f["kind"] == "straggler")
        .map(|f| {
            (
                f["culprit"]["rank"].as_u64().unwrap_or(99),
                f["culprit"]["pid"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_recording_read_back_names_the_same_straggler_and_exports_every_event() {
    require_root();
    let work = fake_lib_dir().join("record_report");
    std::fs::create_dir_all(&work).expect("dir");
    let rec = work.join("job.rec");
    let live = work.join("live.json");
    let dump = work.join("live.jsonl");
    let mut j = job(&work, "2:20:1", "60");
    let pids = j.pids.clone();
    let live_arg = live.to_string_lossy().into_owned();
    let dump_arg = dump.to_string_lossy().into_owned();
    let mut r = recorder(
        &pids,
        &rec,
        &["--report", &live_arg, "--dump-events", &dump_arg],
    );
    j.go().expect("go");
    let truth = j.finish(&work.join("truth.json")).expect("job completes");
    let status = r.wait_exit(Duration::from_secs(120)).expect("exits");
    assert!(status.success(), "{}", r.transcript());
    assert!(r.transcript().contains("recording written to"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&rec).expect("file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "record files are private");

    let rank2 = truth
        .ranks
        .iter()
        .find(|x| x.rank == 2)
        .expect("rank 2")
        .pid as u64;
    assert_eq!(stragglers(&findings(&live)), vec![(2, rank2)], "live");
    // Live, the culprit's host context (CPU, run-queue wait, memory) is in its finding, and
    // every process has its figures.
    let live_doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&live).expect("live")).expect("json");
    let f = findings(&live);
    let s = f
        .iter()
        .find(|f| f["kind"] == "straggler")
        .expect("straggler");
    assert!(
        s["evidence"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("host: pid {rank2} used"))),
        "{}",
        s["evidence"]
    );
    assert!(live_doc["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .all(|p| p["host"]["threads"].as_u64().is_some_and(|t| t >= 1)));

    let off = work.join("offline.json");
    let out = llmdd(&[
        "report",
        rec.to_str().expect("utf-8"),
        "--report",
        off.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stragglers(&findings(&off)),
        vec![(2, rank2)],
        "offline: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Every event the live run saw is in the file.
    let jsonl = work.join("export.jsonl");
    let out = llmdd(&[
        "export",
        rec.to_str().expect("utf-8"),
        "-o",
        jsonl.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .expect("read")
            .lines()
            .filter(|l| !l.is_empty())
            .count()
    };
    assert_eq!(lines(&jsonl), lines(&dump));
    assert!(lines(&jsonl) > 4 * 60, "collectives of every rank");

    // diff takes record files too (analysed first as `report` would): a recording against
    // itself shows the same rows and findings, so no regression.
    let out = llmdd(&[
        "diff",
        rec.to_str().expect("utf-8"),
        rec.to_str().expect("utf-8"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("verdict: no regression"), "{text}");
    assert!(
        text.contains("MPI_Allreduce") || text.contains("all-reduce"),
        "{text}"
    );
}

#[test]
fn a_recorder_killed_mid_run_leaves_a_salvageable_file() {
    require_root();
    let work = fake_lib_dir().join("record_killed");
    std::fs::create_dir_all(&work).expect("dir");
    let rec = work.join("killed.rec");
    // Long enough that the recorder is killed while the job still runs.
    let mut j = job(&work, "1:5:4", "3000");
    let pids = j.pids.clone();
    let mut r = recorder(&pids, &rec, &[]);
    j.go().expect("go");
    // Kill the recorder once a chunk or two must be on disk (chunks are written every
    // second), while the job still runs.
    let header = 16;
    let mut waited = 0;
    while std::fs::metadata(&rec).map(|m| m.len()).unwrap_or(0) < header + 2000 && waited < 600 {
        // Polls the file itself; the job keeps running meanwhile.
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
    }
    r.signal(libc::SIGKILL).expect("SIGKILL");
    let _ = r.wait_exit(Duration::from_secs(30));
    assert!(
        !r.transcript().contains("recording written"),
        "the recorder was killed before it finished"
    );
    let _ = j.finish(&work.join("truth.json"));

    let out = llmdd(&["report", rec.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("did not stop cleanly") || stderr.contains("cut short"),
        "the salvage is stated: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ncclAllReduce"),
        "events were salvaged: {stdout}"
    );
}

#[test]
fn report_refuses_what_is_not_a_recording() {
    let dir = std::env::temp_dir().join(format!("llmdd-notrec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("x.rec");
    std::fs::write(&p, b"definitely not a recording").expect("write");
    let out = llmdd(&["report", p.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not an llmdd record file"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let out = llmdd(&["report", dir.join("missing.rec").to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
