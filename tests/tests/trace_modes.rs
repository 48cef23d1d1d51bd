//! `--mode`: the same loop of ncclAllReduce calls traced in entry-only and aggregate mode by
//! real probes. Entry-only delivers one record per call, none with a return; aggregate
//! delivers no call record at all, yet the final summary counts every call (read from the
//! kernel's aggregate map) and the report lists them.

use std::time::Duration;

use llmdd_tests::harness::{
    built, fake_lib_dir, read_events, require_root, start_llmdd, Proc, Stream,
};

const CALLS: u64 = 5_000;

fn start_loop() -> Proc {
    let lib = fake_lib_dir().join("libnccl.so.2");
    let mut cmd = std::process::Command::new(built("callloop"));
    cmd.arg(&lib);
    let mut lp = Proc::spawn("callloop", cmd).expect("callloop starts");
    lp.wait_line("READY", Duration::from_secs(30), |s, l| {
        s == Stream::Stdout && l == "READY"
    })
    .expect("callloop ready");
    lp
}

fn run_calls(lp: &mut Proc, n: u64) {
    lp.send_line(&format!("run {n}")).expect("send");
    lp.wait_line("ns_per_call", Duration::from_secs(120), |s, l| {
        s == Stream::Stdout && l.starts_with("ns_per_call")
    })
    .expect("loop ran");
}

/// The `calls` column of the final summary's ncclAllReduce row.
fn summary_calls(l: &Proc) -> Option<u64> {
    l.lines_of(Stream::Stdout)
        .iter()
        .rfind(|x| x.contains(" ncclAllReduce "))
        .and_then(|x| x.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
}

#[test]
fn entry_only_mode_sends_one_record_per_call_without_a_return() {
    require_root();
    let mut lp = start_loop();
    let dir = fake_lib_dir().join("trace_modes_entry");
    std::fs::create_dir_all(&dir).expect("dir");
    let dump = dir.join("events.jsonl");
    let dump_arg = dump.to_string_lossy().into_owned();
    let mut l = start_llmdd(
        &[lp.pid()],
        &[
            "--mode",
            "nccl=entry",
            "--quiet",
            "--dump-events",
            &dump_arg,
        ],
    )
    .expect("llmdd starts");
    run_calls(&mut lp, CALLS);
    l.signal(libc::SIGINT).expect("SIGINT");
    let status = l.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", l.transcript());
    lp.send_line("quit").ok();

    let events = read_events(&dump).expect("dump");
    let calls: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "call" && e["func"] == "ncclAllReduce")
        .collect();
    assert_eq!(calls.len() as u64, CALLS, "{}", l.transcript());
    assert!(
        calls
            .iter()
            .all(|c| c["exit_ns"].is_null() && c["ret"].is_null()),
        "entry-only records carry no return"
    );
    // The arguments are still captured at entry.
    assert!(calls
        .iter()
        .all(|c| c["entry_ns"].as_u64().unwrap_or(0) > 0));
    assert_eq!(summary_calls(&l), Some(CALLS), "{}", l.transcript());
}

#[test]
fn aggregate_mode_counts_every_call_without_sending_records() {
    require_root();
    let mut lp = start_loop();
    let dir = fake_lib_dir().join("trace_modes_aggregate");
    std::fs::create_dir_all(&dir).expect("dir");
    let dump = dir.join("events.jsonl");
    let report = dir.join("report.json");
    let dump_arg = dump.to_string_lossy().into_owned();
    let report_arg = report.to_string_lossy().into_owned();
    let mut l = start_llmdd(
        &[lp.pid()],
        &[
            "--mode",
            "nccl=aggregate",
            "--quiet",
            "--dump-events",
            &dump_arg,
            "--report",
            &report_arg,
        ],
    )
    .expect("llmdd starts");
    run_calls(&mut lp, CALLS);
    l.signal(libc::SIGINT).expect("SIGINT");
    let status = l.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", l.transcript());
    lp.send_line("quit").ok();

    let events = read_events(&dump).expect("dump");
    assert!(
        !events.iter().any(|e| e["type"] == "call"),
        "aggregate mode sends no call records"
    );
    assert_eq!(summary_calls(&l), Some(CALLS), "{}", l.transcript());
    assert!(
        l.transcript().contains("nccl traced in aggregate mode"),
        "the user is told what aggregate mode costs them"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let text = doc.to_string();
    assert!(
        text.contains("ncclAllReduce") && text.contains(&CALLS.to_string()),
        "the report lists the aggregated calls"
    );
}
