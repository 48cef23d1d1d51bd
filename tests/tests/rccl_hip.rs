//! AMD's stack with stand-in libraries: librccl (NCCL's names) is found and labelled RCCL,
//! libamdhip64 is probed as the HIP family, and their calls are traced like NCCL and CUDA
//! runtime calls.

use std::time::Duration;

use llmdd_tests::harness::{built, fake_lib_dir, require_root, start_llmdd, Proc, Stream};
use serde_json::Value;

#[test]
fn rccl_and_hip_calls_are_traced_and_labelled() {
    require_root();
    let libs = fake_lib_dir();
    let mut cmd = std::process::Command::new(built("callloop"));
    cmd.arg(libs.join("librccl.so.1"))
        .arg(libs.join("libamdhip64.so.6"));
    let mut lp = Proc::spawn("callloop", cmd).expect("starts");
    lp.wait_line("READY", Duration::from_secs(30), |s, l| {
        s == Stream::Stdout && l == "READY"
    })
    .expect("ready");
    let report = libs.join("rccl_hip_report.json");
    let report_arg = report.to_string_lossy().into_owned();
    let mut l = start_llmdd(
        &[lp.pid()],
        &[
            "--quiet",
            "--overhead-budget",
            "off",
            "--report",
            &report_arg,
        ],
    )
    .expect("llmdd attaches");
    let text = l.transcript();
    assert!(
        text.contains("librccl.so.1") && text.contains("hip "),
        "{text}"
    );
    for cmd in ["run 30", "hip 40"] {
        lp.send_line(cmd).expect("send");
        lp.wait_line("ran", Duration::from_secs(30), |s, x| {
            s == Stream::Stdout && x.starts_with("ns_per_call")
        })
        .expect("ran");
    }
    l.signal(libc::SIGINT).expect("SIGINT");
    let status = l.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", l.transcript());
    lp.send_line("quit").ok();
    let out = l.lines_of(Stream::Stdout);
    let calls = |f: &str| {
        out.iter()
            .rfind(|x| x.split_whitespace().nth(1) == Some(f))
            .and_then(|x| x.split_whitespace().nth(2))
            .map(str::to_string)
    };
    assert_eq!(
        calls("ncclAllReduce").as_deref(),
        Some("30"),
        "{}",
        l.transcript()
    );
    assert_eq!(
        calls("hipLaunchKernel").as_deref(),
        Some("40"),
        "{}",
        l.transcript()
    );
    assert_eq!(
        calls("hipMalloc").as_deref(),
        Some("1"),
        "{}",
        l.transcript()
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let libs_seen: Vec<(String, String)> = doc["processes"][0]["libraries"]
        .as_array()
        .expect("libraries")
        .iter()
        .map(|l| {
            (
                l["family"].as_str().unwrap_or("").to_string(),
                l["label"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        libs_seen.contains(&("nccl".into(), "rccl".into())),
        "{libs_seen:?}"
    );
    assert!(
        libs_seen.contains(&("hip".into(), "hip".into())),
        "{libs_seen:?}"
    );
}
