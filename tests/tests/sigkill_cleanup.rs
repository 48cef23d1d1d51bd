//! llmdd killed with SIGKILL mid-run leaves no program, map or link in the kernel, and the
//! traced job carries on to completion. (Alone in its test binary: it counts every llmdd
//! object in the kernel, so no other llmdd may run at the same time.)

use std::time::Duration;

use llmdd_tests::{
    harness::{fake_lib_dir, require_root, start_llmdd},
    job::Job,
    kernel_objects::{links_of, llmdd_maps, llmdd_programs},
};

#[test]
fn sigkill_leaves_nothing_in_the_kernel_and_the_job_finishes() {
    require_root();
    assert!(
        llmdd_programs().is_empty(),
        "llmdd programs loaded before the test: {:?}",
        llmdd_programs()
    );
    let lib_dir = fake_lib_dir();
    let truth = lib_dir.join("sigkill_truth.json");
    let truth_arg = truth.to_string_lossy().into_owned();
    let mut job = Job::start(
        &lib_dir,
        &[
            "--ranks",
            "2",
            "--steps",
            "20",
            "--compute-us",
            "500",
            "--truth",
            &truth_arg,
            "--timeout-s",
            "120",
        ],
    )
    .expect("simjob starts");
    let mut llmdd = start_llmdd(&job.pids, &["--quiet"]).expect("llmdd attaches");

    let progs = llmdd_programs();
    let prog_ids: Vec<u32> = progs.iter().map(|p| p.0).collect();
    assert!(
        progs.iter().any(|(_, n)| n == "nccl_entry"),
        "probes are in the kernel while tracing: {progs:?}"
    );
    assert!(
        !llmdd_maps().is_empty(),
        "maps are in the kernel while tracing"
    );
    assert!(
        !links_of(&prog_ids).is_empty(),
        "links are in the kernel while tracing"
    );

    job.go().expect("releasing the job");
    llmdd.signal(libc::SIGKILL).expect("SIGKILL");
    let status = llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd is reaped");
    assert!(!status.success());

    assert_eq!(llmdd_programs(), vec![], "programs left behind");
    assert_eq!(llmdd_maps(), vec![], "maps left behind");
    assert_eq!(links_of(&prog_ids), Vec::<u32>::new(), "links left behind");

    let t = job
        .finish(&truth)
        .expect("the job completes after its tracer was killed");
    assert!(t.complete);
    for r in &t.ranks {
        assert_eq!(
            r.call_counts.get("ncclAllReduce"),
            Some(&20),
            "rank {} ran every step",
            r.rank
        );
    }
}
