//! `attach --follow NAME`: a traced process that restarts (new pid, same command) is
//! attached again, and its calls are traced; llmdd keeps waiting while none runs.

use std::time::{Duration, Instant};

use llmdd_tests::harness::{
    fake_lib_dir, loop_cmd, require_root, start_callloop, start_llmdd, summary_calls, Proc, Stream,
};

fn start_loop() -> Proc {
    start_callloop(&[fake_lib_dir().join("libnccl.so.2")]).expect("callloop starts")
}

#[test]
fn a_restarted_process_is_attached_again() {
    require_root();
    let mut first = start_loop();
    let mut l = start_llmdd(
        &[],
        &[
            "--follow",
            "callloop",
            "--quiet",
            "--overhead-budget",
            "off",
        ],
    )
    .expect("llmdd starts");
    assert!(
        l.transcript()
            .contains(&format!("attached to pid {}", first.pid())),
        "{}",
        l.transcript()
    );
    loop_cmd(&mut first, "run 50").expect("ran");
    first.send_line("quit").expect("quit");
    first.wait_exit(Duration::from_secs(30)).expect("exits");
    l.wait_line("exit noticed", Duration::from_secs(30), |s, x| {
        s == Stream::Stderr && x.contains(&format!("pid {} exited", first.pid()))
    })
    .expect("the exit is noticed, and llmdd keeps following");

    // The restart: same command, new pid.
    let mut second = start_loop();
    let started = Instant::now();
    let pid = second.pid();
    l.wait_line("re-attach", Duration::from_secs(30), |s, x| {
        s == Stream::Stderr && x.contains(&format!("following callloop: attached to pid {pid}"))
    })
    .expect("the restarted process is attached");
    eprintln!(
        "re-attached {:.0} ms after the restart was ready",
        started.elapsed().as_secs_f64() * 1e3
    );
    second.send_line("run 70").expect("send");
    second
        .wait_line("ran", Duration::from_secs(30), |s, x| {
            s == Stream::Stdout && x.starts_with("ns_per_call")
        })
        .expect("ran");
    l.signal(libc::SIGINT).expect("SIGINT");
    let status = l.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", l.transcript());
    second.send_line("quit").ok();
    let calls = |p: u32| summary_calls(&l, Some(p), "ncclAllReduce");
    assert_eq!(
        calls(first.pid()).as_deref(),
        Some("50"),
        "{}",
        l.transcript()
    );
    assert_eq!(calls(pid).as_deref(), Some("70"), "{}", l.transcript());
}
