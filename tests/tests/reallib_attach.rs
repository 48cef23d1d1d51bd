//! The probe path on the genuine binaries: real libnccl.so.2 (2.32.3) and libcudart.so.12
//! from PyPI wheels, loaded by a running process without a GPU. llmdd attaches by pid and
//! must see every call once (ncclX and pncclX share an address: one probe, one event) with
//! the return codes the libraries really give.

use std::{collections::BTreeMap, path::Path, time::Duration};

use llmdd_tests::{
    harness::{read_events, require_root, start_llmdd, Stream},
    reallibs::{real_libs, start_caller},
};

const ITERS: u64 = 5;

#[test]
fn real_nccl_and_cudart_calls_are_seen_once_with_their_return_codes() {
    require_root();
    let libs =
        real_libs().unwrap_or_else(|e| panic!("fetching the real libraries from PyPI: {e:#}"));
    let mut caller = start_caller(&libs, ITERS).expect("caller loads the libraries");

    let dir = std::env::temp_dir().join(format!("llmdd-reallib-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let events_path = dir.join("events.jsonl");
    let mut llmdd = start_llmdd(
        &[caller.pid()],
        &["--quiet", "--dump-events", &events_path.to_string_lossy()],
    )
    .expect("llmdd attaches to the real libraries");
    let attach_line = llmdd
        .lines_of(Stream::Stderr)
        .into_iter()
        .find(|l| l.starts_with("llmdd: attached to pid"))
        .map(str::to_string)
        .expect("attach line");
    assert!(
        attach_line.contains("nccl ") && attach_line.contains("cudart "),
        "{attach_line}"
    );

    caller.send_line("go").expect("releasing the caller");
    let done = caller
        .wait_line("DONE", Duration::from_secs(60), |s, l| {
            s == Stream::Stdout && l.starts_with("DONE")
        })
        .expect("caller finishes");
    assert!(
        done.contains("nccl_version=23203"),
        "ncclGetVersion succeeds: {done}"
    );
    assert!(caller
        .wait_exit(Duration::from_secs(30))
        .expect("caller exits")
        .success());
    let status = llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd exits once the target is gone");
    assert!(status.success(), "{}", llmdd.transcript());

    let events = read_events(&events_path).expect("event dump");
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e["type"] == "call" && e["pid"] == caller.pid())
    {
        seen.entry(e["func"].as_str().unwrap_or("?").to_string())
            .or_default()
            .push(e["ret"].as_i64().expect("every call returned"));
    }
    // Without a driver the runtime answers cudaErrorInsufficientDriver (35).
    let no_driver = !Path::new("/dev/nvidiactl").exists();
    let mut want: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    want.insert("ncclAllReduce".into(), vec![4; ITERS as usize]);
    if no_driver {
        want.insert("cudaLaunchKernel".into(), vec![35; ITERS as usize]);
        want.insert("cudaStreamSynchronize".into(), vec![35; ITERS as usize]);
    } else {
        for f in ["cudaLaunchKernel", "cudaStreamSynchronize"] {
            assert_eq!(
                seen.get(f).map(Vec::len),
                Some(ITERS as usize),
                "{f}: {seen:?}"
            );
            want.insert(f.into(), seen[f].clone());
        }
    }
    assert_eq!(
        seen, want,
        "one event per call with the library's own return code"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
