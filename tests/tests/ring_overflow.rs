//! A ring buffer far too small for the job (`--ring-size 4K`, the reader draining on its own
//! timer): records are lost, counted and shown, in the summary and the report, and the
//! healthy job gets no false stall, straggler or member leaving from the gaps (its ranks
//! exit at the end while records are being lost).

#[path = "findings_common.rs"]
mod common;

use common::{nothing, run, serial};
use llmdd_tests::harness::Stream;

/// A job far too busy for the ring: 40 launches and a 64 KiB copy per step besides its
/// all-reduce.
const JOB: &[&str] = &[
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
];
/// The ring far too small for it, the reader draining on its own timer.
const TRACE: &[&str] = &["--ring-size", "4K", "--overhead-budget", "off"];

#[test]
fn overflow_is_counted_and_raises_no_false_finding() {
    let _one = serial();
    let r = run("ring_overflow", JOB, TRACE, &mut nothing());
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
            f["kind"] != "straggler" && f["kind"] != "stall" && f["kind"] != "member_left",
            "no false finding from lost records: {}",
            r.describe()
        );
    }
}

/// The same overflow recorded: read back offline, the recording gives the live run's loss
/// figures, marks the same windows (a lost-events finding, losses counted in the findings'
/// windows) and raises no false finding either.
#[test]
fn a_recording_replays_its_losses_where_the_live_run_saw_them() {
    use llmdd_tests::{
        harness::{built, fake_lib_dir, start_record},
        job::Job,
    };
    use serde_json::Value;
    use std::time::Duration;

    let _one = serial();
    let work = fake_lib_dir().join("ring_overflow_record");
    std::fs::create_dir_all(&work).expect("dir");
    let (rec, live, off) = (
        work.join("job.rec"),
        work.join("live.json"),
        work.join("offline.json"),
    );
    let mut job_args = vec!["--ranks", "4", "--warmup", "2", "--timeout-s", "240"];
    job_args.extend_from_slice(JOB);
    let mut job = Job::start(&fake_lib_dir(), &job_args).expect("simjob starts");
    let live_arg = live.to_string_lossy().into_owned();
    let mut trace = TRACE.to_vec();
    trace.extend(["--report", &live_arg]);
    let mut r = start_record(&job.pids, &rec, &trace).expect("records");
    job.go().expect("go");
    job.proc
        .wait_exit(Duration::from_secs(240))
        .expect("job completes");
    let status = r.wait_exit(Duration::from_secs(120)).expect("exits");
    assert!(status.success(), "{}", r.transcript());
    let out = std::process::Command::new(built("llmdd"))
        .args([
            "report",
            &rec.to_string_lossy(),
            "--report",
            &off.to_string_lossy(),
        ])
        .output()
        .expect("llmdd report runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = |p: &std::path::Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p).expect("report")).expect("json")
    };
    let (live, off) = (doc(&live), doc(&off));
    let lost = live["events"]["lost"].as_u64().expect("lost");
    assert!(lost > 0, "a 4 KiB ring overflows: {}", live["events"]);
    assert_eq!(off["events"]["lost"], live["events"]["lost"]);
    let kinds = |d: &Value| -> Vec<String> {
        let mut k: Vec<String> = d["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["kind"].as_str().map(str::to_string))
            .collect();
        k.sort();
        k.dedup();
        k
    };
    assert!(
        kinds(&off).iter().any(|k| k == "lost_events"),
        "{:#}",
        off["findings"]
    );
    for k in kinds(&off) {
        assert!(
            k != "stall" && k != "straggler" && k != "member_left",
            "offline false finding {k}: {:#}",
            off["findings"]
        );
    }
    assert_eq!(
        kinds(&off),
        kinds(&live),
        "the same findings offline as live"
    );
    // The same windows, at the same times: the lost-events finding says how many windows
    // and the latest one's bounds, and when it was first raised.
    let lost_finding = |d: &Value| -> Value {
        d["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["kind"] == "lost_events")
            .cloned()
            .unwrap_or_default()
    };
    let (l, o) = (lost_finding(&live), lost_finding(&off));
    assert_eq!(o["evidence"], l["evidence"]);
    assert_eq!(o["raised_ns"], l["raised_ns"]);
}
