//! A library loaded after attach (NCCL opened lazily with dlopen, as PyTorch does) is probed
//! too: the kernel reports the executable mapping, llmdd looks at the process again and
//! attaches the new library's probes before the process calls into it.

use std::{process::Command, time::Duration};

use llmdd_tests::harness::{
    built, fake_lib_dir, read_events, require_root, start_llmdd, Proc, Stream,
};

#[test]
fn nccl_loaded_after_attach_is_probed() {
    require_root();
    let dir = fake_lib_dir();
    let mut cmd = Command::new(built("callloop"));
    cmd.arg(dir.join("libcudart.so.12"));
    let mut target = Proc::spawn("callloop", cmd).expect("callloop");
    target
        .wait_line("READY", Duration::from_secs(30), |s, l| {
            s == Stream::Stdout && l == "READY"
        })
        .expect("ready");

    let events = dir.join("lazy_events.jsonl");
    let mut llmdd = start_llmdd(
        &[target.pid()],
        &["--quiet", "--dump-events", &events.to_string_lossy()],
    )
    .expect("llmdd attaches");
    let first = llmdd.lines_of(Stream::Stderr).join("\n");
    assert!(
        first.contains("cudart ") && !first.contains("nccl "),
        "only the runtime at first:\n{first}"
    );

    target
        .send_line(&format!("load {}", dir.join("libnccl.so.2").display()))
        .expect("load");
    target
        .wait_line("LOADED", Duration::from_secs(30), |s, l| {
            s == Stream::Stdout && l == "LOADED"
        })
        .expect("loaded");
    // llmdd says when the new library's probes are in; only then does the target call it.
    llmdd
        .wait_line("new library attached", Duration::from_secs(30), |s, l| {
            s == Stream::Stderr && l.contains("loaded") && l.contains("libnccl.so.2")
        })
        .expect("llmdd notices the new library");
    target.send_line("run 50").expect("run");
    target
        .wait_line("calls done", Duration::from_secs(30), |s, l| {
            s == Stream::Stdout && l.starts_with("ns_per_call")
        })
        .expect("calls");
    target.send_line("quit").expect("quit");
    assert!(target
        .wait_exit(Duration::from_secs(30))
        .expect("exit")
        .success());
    assert!(
        llmdd
            .wait_exit(Duration::from_secs(60))
            .expect("llmdd exits")
            .success(),
        "{}",
        llmdd.transcript()
    );

    let ev = read_events(&events).expect("dump");
    let n = ev
        .iter()
        .filter(|e| e["func"] == "ncclAllReduce" && e["pid"] == target.pid())
        .count();
    assert_eq!(
        n, 50,
        "every call into the lazily loaded library was traced"
    );
}
