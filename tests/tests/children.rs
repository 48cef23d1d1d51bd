//! `--children`: attached to the simulated job's launcher (which maps no GPU library), llmdd
//! traces the rank processes it spawned.

use std::time::Duration;

use llmdd_tests::{
    harness::{fake_lib_dir, require_root, start_llmdd, summary_calls},
    job::Job,
};

#[test]
fn the_workers_of_a_traced_launcher_are_traced() {
    require_root();
    let work = fake_lib_dir().join("children");
    std::fs::create_dir_all(&work).expect("dir");
    let truth = work.join("truth.json");
    let truth_arg = truth.to_string_lossy().into_owned();
    let mut job = Job::start(
        &fake_lib_dir(),
        &[
            "--ranks",
            "4",
            "--steps",
            "20",
            "--warmup",
            "2",
            "--collective",
            "allreduce:16K",
            "--truth",
            &truth_arg,
        ],
    )
    .expect("simjob starts");
    let launcher = job.proc.pid();
    let mut l = start_llmdd(
        &[launcher],
        &["--children", "--quiet", "--overhead-budget", "off"],
    )
    .expect("llmdd starts");
    for pid in &job.pids {
        assert!(
            l.transcript().contains(&format!("attached to pid {pid}")),
            "rank pid {pid} attached through --children:\n{}",
            l.transcript()
        );
    }
    job.go().expect("go");
    let t = job.finish(&truth).expect("the job completes");
    let status = l
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd exits with its targets");
    assert!(status.success(), "{}", l.transcript());
    for r in &t.ranks {
        let calls: u64 = summary_calls(&l, Some(r.pid), "ncclAllReduce")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("rank {} traced:\n{}", r.rank, l.transcript()));
        assert!(calls >= 20, "rank {} calls {calls}", r.rank);
    }
}
