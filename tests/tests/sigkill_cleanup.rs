//! llmdd killed with SIGKILL mid-run leaves no program, map or link in the kernel, and the
//! traced job carries on to completion. The objects are identified through llmdd's own file
//! descriptors (/proc/PID/fdinfo), so other BPF users on the machine do not disturb the test.

use std::time::Duration;

use llmdd_tests::{
    harness::{fake_lib_dir, require_root, start_llmdd},
    job::Job,
    kernel_objects::{ids_held_by, llmdd_programs, still_loaded},
};

#[test]
fn sigkill_leaves_nothing_in_the_kernel_and_the_job_finishes() {
    require_root();
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

    let (progs, maps, links) = ids_held_by(llmdd.pid());
    let named: Vec<String> = llmdd_programs()
        .into_iter()
        .filter(|(id, _)| progs.contains(id))
        .map(|(_, n)| n)
        .collect();
    assert!(
        named.iter().any(|n| n == "nccl_entry"),
        "llmdd's probes are in the kernel: {named:?}"
    );
    assert!(maps.len() >= 7, "llmdd's maps are in the kernel: {maps:?}");
    assert!(!links.is_empty(), "llmdd's links are in the kernel");

    job.go().expect("releasing the job");
    llmdd.signal(libc::SIGKILL).expect("SIGKILL");
    let status = llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd is reaped");
    assert!(!status.success());

    // Programs and links go when the process's files are closed; maps are freed by a kernel
    // work item once the last program using them is gone, which no event announces: poll for
    // that, with a deadline far above the few milliseconds it takes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let left = loop {
        let left = still_loaded(&progs, &maps, &links);
        if left == (vec![], vec![], vec![]) || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        left,
        (vec![], vec![], vec![]),
        "programs, maps, links left behind"
    );

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
