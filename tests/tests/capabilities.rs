//! Once its probes are attached, llmdd keeps only the capabilities that reading and later
//! attaches need (docs/security.md): CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_DAC_OVERRIDE and the
//! rest are gone from its effective and permitted sets, and a library loaded after that is
//! still probed.

use std::time::Duration;

use llmdd_tests::harness::{
    built, fake_lib_dir, require_root, start_llmdd, summary_calls, Proc, Stream,
};

fn caps_of(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("capability line")
}

#[test]
fn unneeded_capabilities_are_dropped_after_attach() {
    require_root();
    let libs = fake_lib_dir();
    let mut cmd = std::process::Command::new(built("callloop"));
    cmd.arg(libs.join("libcudart.so.12"));
    let mut lp = Proc::spawn("callloop", cmd).expect("starts");
    lp.wait_line("READY", Duration::from_secs(30), |s, l| {
        s == Stream::Stdout && l == "READY"
    })
    .expect("ready");
    let mut l = start_llmdd(&[lp.pid()], &["--quiet"]).expect("llmdd starts");
    let me = l.pid();
    for field in ["CapEff:", "CapPrm:"] {
        let caps = caps_of(me, field);
        for (bit, name) in [
            (21, "CAP_SYS_ADMIN"),
            (12, "CAP_NET_ADMIN"),
            (1, "CAP_DAC_OVERRIDE"),
            (0, "CAP_CHOWN"),
        ] {
            assert_eq!(caps & (1 << bit), 0, "{name} still in {field} {caps:x}");
        }
        for (bit, name) in [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (19, "CAP_SYS_PTRACE")] {
            assert_ne!(
                caps & (1 << bit),
                0,
                "{name} needed but dropped from {field} {caps:x}"
            );
        }
    }
    // Attaching still works: NCCL loaded now is probed.
    lp.send_line(&format!("load {}", libs.join("libnccl.so.2").display()))
        .expect("send");
    lp.wait_line("LOADED", Duration::from_secs(30), |s, x| {
        s == Stream::Stdout && x == "LOADED"
    })
    .expect("loaded");
    l.wait_line("probes attached", Duration::from_secs(30), |s, x| {
        s == Stream::Stderr && x.contains("probes attached")
    })
    .expect("the new library is probed after the drop");
    lp.send_line("run 100").expect("send");
    lp.wait_line("ran", Duration::from_secs(30), |s, x| {
        s == Stream::Stdout && x.starts_with("ns_per_call")
    })
    .expect("ran");
    l.signal(libc::SIGINT).expect("SIGINT");
    let status = l.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", l.transcript());
    assert_eq!(
        summary_calls(&l, None, "ncclAllReduce").as_deref(),
        Some("100"),
        "{}",
        l.transcript()
    );
    lp.send_line("quit").ok();
}
