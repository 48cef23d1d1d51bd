//! Targets in their own mount and pid namespace, and targets whose library was deleted while
//! mapped: the libraries are reached through /proc/PID/root and /proc/PID/map_files, the
//! notes say so, and calls are traced.

use std::{process::Command, time::Duration};

use llmdd_tests::harness::{
    built, fake_lib_dir, require_root, start_llmdd, summary_calls, Proc, Stream,
};

/// Runs `run N` in the loop and returns llmdd's final count of its ncclAllReduce calls.
fn traced_calls(lp: &mut Proc, pid: u32, n: u64) -> (Option<String>, String) {
    let mut l =
        start_llmdd(&[pid], &["--quiet", "--overhead-budget", "off"]).expect("llmdd attaches");
    lp.send_line(&format!("run {n}")).expect("send");
    lp.wait_line("ran", Duration::from_secs(30), |s, x| {
        s == Stream::Stdout && x.starts_with("ns_per_call")
    })
    .expect("ran");
    l.signal(libc::SIGINT).expect("SIGINT");
    let status = l.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", l.transcript());
    (summary_calls(&l, None, "ncclAllReduce"), l.transcript())
}

#[test]
fn a_target_in_its_own_mount_and_pid_namespace_is_traced() {
    require_root();
    let lib = fake_lib_dir().join("libnccl.so.2");
    // A directory that is empty on the host: inside the namespace a private tmpfs holds the
    // library, so the host sees it only through /proc/PID/root.
    let private = std::env::temp_dir().join(format!("llmdd-ns-{}", std::process::id()));
    std::fs::create_dir_all(&private).expect("dir");
    let script = format!(
        "mount -t tmpfs llmdd-test {d} && cp {lib} {d}/ && exec {loop_} {d}/libnccl.so.2",
        d = private.display(),
        lib = lib.display(),
        loop_ = built("callloop").display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--pid",
        "--fork",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]);
    let mut lp = Proc::spawn("unshare+callloop", cmd).expect("unshare starts");
    lp.wait_line("READY", Duration::from_secs(30), |s, l| {
        s == Stream::Stdout && l == "READY"
    })
    .expect("the namespaced loop is ready");
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", lp.pid()))
        .expect("children of unshare");
    let pid: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the loop's host pid");
    assert!(
        !private.join("libnccl.so.2").exists(),
        "the library is not visible from the host"
    );
    let (calls, text) = traced_calls(&mut lp, pid, 40);
    assert_eq!(calls.as_deref(), Some("40"), "{text}");
    assert!(
        text.contains(&format!(
            "pid {pid}: runs in its own pid namespace as pid 1"
        )),
        "host and namespace pid both shown: {text}"
    );
    assert!(
        text.contains("/proc/"),
        "opened through /proc/PID/root: {text}"
    );
    lp.send_line("quit").ok();
}

#[test]
fn a_library_deleted_while_mapped_is_probed_through_map_files() {
    require_root();
    let dir = std::env::temp_dir().join(format!("llmdd-deleted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let copy = dir.join("libnccl.so.2");
    std::fs::copy(fake_lib_dir().join("libnccl.so.2"), &copy).expect("copy");
    let mut cmd = Command::new(built("callloop"));
    cmd.arg(&copy);
    let mut lp = Proc::spawn("callloop", cmd).expect("starts");
    lp.wait_line("READY", Duration::from_secs(30), |s, l| {
        s == Stream::Stdout && l == "READY"
    })
    .expect("ready");
    std::fs::remove_file(&copy).expect("delete the mapped library");
    let pid = lp.pid();
    let (calls, text) = traced_calls(&mut lp, pid, 25);
    assert_eq!(calls.as_deref(), Some("25"), "{text}");
    assert!(
        text.contains("was replaced on disk; probing the mapped copy"),
        "{text}"
    );
    lp.send_line("quit").ok();
}
