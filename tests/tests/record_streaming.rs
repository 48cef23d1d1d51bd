//! `llmdd report` of a long recording streams it: a chunk of events in memory at a time.
//! A recording of 1.5 million calls is reported by the real binary, and its peak resident
//! memory (the kernel's count for the child) must stay under a third of what the decoded
//! events alone would take, while every call is counted.

use std::process::Command;

use llmdd::record::{End, Meta, Writer};
use llmdd_tests::{harness::built, records::call};

const CALLS: u64 = 1_500_000;
/// `cudaLaunchKernel`: cheap for the engine, so the file's size is what the run is about.
const LAUNCH: u16 = 19;

/// Peak resident memory of the children waited for so far, in bytes.
fn children_max_rss() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_maxrss as u64 * 1024
}

#[test]
fn a_long_recording_is_reported_in_bounded_memory() {
    let dir = std::env::temp_dir().join(format!("llmdd-streaming-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (rec, out) = (dir.join("long.rec"), dir.join("report.json"));
    let mut w = Writer::create(&rec).expect("create");
    w.meta(&Meta {
        host: Some("node".into()),
        start_ns: 1_000,
        processes: (7..11)
            .map(|pid| llmdd::record::RecProc {
                pid,
                comm: format!("worker{pid}"),
                ..Default::default()
            })
            .collect(),
        ..Meta::default()
    })
    .expect("meta");
    for i in 0..CALLS {
        let t = 1_000_000 + i * 10_000;
        w.record(&call(7 + (i % 4) as u32, LAUNCH, t, t + 2_000), t + 5_000)
            .expect("record");
    }
    w.finish(&End {
        end_ns: 1_000_000 + CALLS * 10_000,
        records: CALLS,
        stopped_because: "test".into(),
        ..End::default()
    })
    .expect("finish");
    drop(w);
    let status = Command::new(built("llmdd"))
        .args([
            "report",
            &rec.to_string_lossy(),
            "--report",
            &out.to_string_lossy(),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("llmdd report runs");
    assert!(status.success());
    let rss = children_max_rss();
    let held = CALLS * std::mem::size_of::<llmdd::events::Event>() as u64;
    let file = std::fs::metadata(&rec).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "{CALLS} calls, {} MiB file: llmdd report peaked at {} MiB resident; the decoded events alone would be {} MiB",
        file >> 20,
        rss >> 20,
        held >> 20
    );
    assert!(rss < held / 3, "{} MiB resident", rss >> 20);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("json");
    let calls: u64 = doc["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["functions"].as_array().into_iter().flatten())
        .filter(|f| f["name"] == "cudaLaunchKernel")
        .filter_map(|f| f["calls"].as_u64())
        .sum();
    assert_eq!(calls, CALLS, "every call counted");
    let _ = std::fs::remove_dir_all(&dir);
}
