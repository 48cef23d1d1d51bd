//! `--mode`: the same loop of ncclAllReduce calls traced in entry-only and aggregate mode by
//! real probes. Entry-only delivers one record per call, none with a return; aggregate
//! delivers no call record at all, yet the final summary counts every call (read from the
//! kernel's aggregate map) and the report lists them.

use std::time::Duration;

use llmdd_tests::harness::{
    fake_lib_dir, loop_cmd, read_events, require_root, start_callloop, start_llmdd, summary_calls,
    Proc,
};

const CALLS: u64 = 5_000;

fn start_loop() -> Proc {
    start_callloop(&[fake_lib_dir().join("libnccl.so.2")]).expect("callloop starts")
}

fn run_calls(lp: &mut Proc, n: u64) {
    loop_cmd(lp, &format!("run {n}")).expect("loop ran");
}

/// The `calls` column of the final summary's ncclAllReduce row.
fn final_calls(l: &Proc) -> Option<u64> {
    summary_calls(l, None, "ncclAllReduce").and_then(|n| n.parse().ok())
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
    assert_eq!(final_calls(&l), Some(CALLS), "{}", l.transcript());
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
    assert_eq!(final_calls(&l), Some(CALLS), "{}", l.transcript());
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
