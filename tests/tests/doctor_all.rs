//! `llmdd doctor` and `attach --all` find a running job's processes on their own.

use std::{process::Command, time::Duration};

use llmdd_tests::{
    harness::{built, fake_lib_dir, require_root, Proc, Stream},
    job::Job,
};

#[test]
fn doctor_checks_pass_and_list_the_job_with_its_libraries() {
    require_root();
    let job = Job::start(
        &fake_lib_dir(),
        &["--ranks", "2", "--steps", "1", "--timeout-s", "120"],
    )
    .expect("simjob");
    let out = Command::new(built("llmdd"))
        .arg("doctor")
        .output()
        .expect("running doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "doctor failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "privileges",
        "kernel BTF",
        "uprobes",
        "tracefs",
        "ring buffers",
        "BPF object",
        "socket offsets",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("[ ok ]") && l.contains(check)),
            "{check} not ok:\n{text}"
        );
    }
    for pid in &job.pids {
        let block: Vec<&str> = text
            .lines()
            // A tree by parent: "  pid N ..." or, under its launcher, "    `- pid N ...".
            .skip_while(|l| {
                !l.trim_start()
                    .trim_start_matches("`- ")
                    .starts_with(&format!("pid {pid} "))
            })
            .take(4)
            .collect();
        assert!(!block.is_empty(), "rank pid {pid} not listed:\n{text}");
        let block = block.join("\n");
        assert!(
            block.contains("nccl ") && block.contains("comm rank@0x2f40 nranks@0x2f44"),
            "{block}"
        );
        assert!(
            block.contains("cudart ") && block.contains("cuda "),
            "{block}"
        );
    }
}

#[test]
fn attach_all_finds_every_rank() {
    require_root();
    let mut job = Job::start(
        &fake_lib_dir(),
        &["--ranks", "2", "--steps", "3", "--timeout-s", "120"],
    )
    .expect("simjob");
    let mut cmd = Command::new(built("llmdd"));
    cmd.args(["attach", "--all", "--quiet", "--duration", "60"]);
    let mut llmdd = Proc::spawn("llmdd", cmd).expect("llmdd");
    llmdd
        .wait_line("'tracing' line", Duration::from_secs(60), |s, l| {
            s == Stream::Stderr && l.starts_with("llmdd: tracing")
        })
        .expect("llmdd attaches");
    for pid in &job.pids {
        assert!(
            llmdd.lines_of(Stream::Stderr).iter().any(|l| {
                let head = format!("llmdd: attached to pid {pid}");
                l.strip_prefix(&head)
                    .is_some_and(|rest| rest.starts_with(':') || rest.starts_with(" ("))
            }),
            "rank {pid} not attached:\n{}",
            llmdd.transcript()
        );
    }
    job.go().expect("go");
    job.proc
        .wait_exit(Duration::from_secs(120))
        .expect("job ends");
    llmdd.signal(libc::SIGINT).expect("stop llmdd");
    let status = llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd exits");
    assert!(status.success(), "{}", llmdd.transcript());
    let out = llmdd.lines_of(Stream::Stdout).join("\n");
    for pid in &job.pids {
        assert!(
            out.contains(&format!("{pid:>8}  ncclAllReduce")),
            "no calls from {pid}:\n{out}"
        );
    }
}

/// `attach --all` started on a node with no job: it waits, picks up the job's ranks when they
/// start, traces their calls, and keeps running once the job has ended (a DaemonSet's case).
#[test]
fn attach_all_picks_up_a_job_that_starts_later() {
    require_root();
    let mut cmd = Command::new(built("llmdd"));
    cmd.args(["attach", "--all", "--quiet", "--duration", "90"]);
    let mut llmdd = Proc::spawn("llmdd", cmd).expect("llmdd");
    llmdd
        .wait_line(
            "'tracing' or 'waiting' line",
            Duration::from_secs(60),
            |s, l| {
                s == Stream::Stderr
                    && (l.starts_with("llmdd: tracing") || l.contains("waiting for one"))
            },
        )
        .expect("llmdd starts");
    let mut job = Job::start(
        &fake_lib_dir(),
        &["--ranks", "2", "--steps", "20", "--timeout-s", "120"],
    )
    .expect("simjob");
    for pid in job.pids.clone() {
        llmdd
            .wait_line("the rank attached", Duration::from_secs(60), |s, l| {
                s == Stream::Stderr && l.contains(&format!("attached to pid {pid}"))
            })
            .unwrap_or_else(|e| panic!("rank {pid} not picked up: {e}\n{}", llmdd.transcript()));
    }
    job.go().expect("go");
    job.proc
        .wait_exit(Duration::from_secs(120))
        .expect("job ends");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        std::fs::read_to_string(format!("/proc/{}/stat", llmdd.pid()))
            .is_ok_and(|s| !s.contains(") Z ")),
        "llmdd stopped when the job ended:\n{}",
        llmdd.transcript()
    );
    llmdd.signal(libc::SIGINT).expect("stop llmdd");
    let status = llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd exits");
    assert!(status.success(), "{}", llmdd.transcript());
    let out = llmdd.lines_of(Stream::Stdout).join("\n");
    for pid in &job.pids {
        assert!(
            out.contains(&format!("{pid:>8}  ncclAllReduce")),
            "no calls from {pid}:\n{out}"
        );
    }
}
