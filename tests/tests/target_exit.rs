//! A target that exits mid-run is reported once and the others keep being traced: two
//! independent jobs are traced by one llmdd; the short one ends first.

use std::time::Duration;

use llmdd_tests::{
    harness::{fake_lib_dir, read_events, require_root, start_llmdd, Stream},
    job::Job,
};

#[test]
fn exited_target_is_reported_once_and_the_rest_stay_traced() {
    require_root();
    let lib_dir = fake_lib_dir();
    let dir = lib_dir.join("target_exit");
    std::fs::create_dir_all(&dir).expect("work dir");
    let (ta, tb) = (dir.join("a.json"), dir.join("b.json"));
    let (ta_arg, tb_arg) = (
        ta.to_string_lossy().into_owned(),
        tb.to_string_lossy().into_owned(),
    );
    let mut short = Job::start(
        &lib_dir,
        &[
            "--ranks",
            "2",
            "--steps",
            "2",
            "--truth",
            &ta_arg,
            "--timeout-s",
            "120",
        ],
    )
    .expect("short job");
    let mut long = Job::start(
        &lib_dir,
        &[
            "--ranks",
            "2",
            "--steps",
            "30",
            "--truth",
            &tb_arg,
            "--timeout-s",
            "120",
        ],
    )
    .expect("long job");
    let events = dir.join("events.jsonl");
    let pids: Vec<u32> = short.pids.iter().chain(&long.pids).copied().collect();
    let mut llmdd = start_llmdd(
        &pids,
        &["--quiet", "--dump-events", &events.to_string_lossy()],
    )
    .expect("llmdd attaches");

    short.go().expect("go");
    let short_truth = short.finish(&ta).expect("short job ends");
    // Both of its ranks are reported gone, while the long job is still parked.
    let exit_line = |pid: u32| format!("llmdd: pid {pid} exited");
    for pid in &short.pids {
        let already = llmdd
            .lines_of(Stream::Stderr)
            .iter()
            .any(|l| l.starts_with(&exit_line(*pid)));
        if !already {
            llmdd
                .wait_line("exit report", Duration::from_secs(60), |s, l| {
                    s == Stream::Stderr && l.starts_with(&exit_line(*pid))
                })
                .expect("exit reported");
        }
    }
    long.go().expect("go");
    let long_truth = long.finish(&tb).expect("long job ends");
    let status = llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd exits");
    assert!(status.success(), "{}", llmdd.transcript());

    let stderr = llmdd.lines_of(Stream::Stderr);
    for pid in short.pids.iter().chain(&long.pids) {
        let n = stderr
            .iter()
            .filter(|l| l.starts_with(&format!("llmdd: pid {pid} exited")))
            .count();
        assert_eq!(
            n,
            1,
            "pid {pid} reported {n} times:\n{}",
            llmdd.transcript()
        );
    }
    // Every call of the long job, all made after the short one had gone, was traced.
    let ev = read_events(&events).expect("dump");
    for rt in short_truth.ranks.iter().chain(&long_truth.ranks) {
        let seen = ev
            .iter()
            .filter(|e| e["pid"] == rt.pid && e["func"] == "ncclAllReduce")
            .count() as u64;
        assert_eq!(
            Some(&seen),
            rt.call_counts.get("ncclAllReduce"),
            "rank pid {}",
            rt.pid
        );
    }
}
