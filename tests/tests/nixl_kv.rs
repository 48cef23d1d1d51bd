//! KV-cache transfers over the real NIXL (nixl-cu12 from PyPI, in `target/tools/nixl-venv`,
//! installed by `cargo xtask setup`): prefill processes serve DRAM blocks, a decode process
//! pulls them with NIXL READs over UCX's TCP transport, as llm-d's decode servers do; llmdd
//! attaches to the decode process by pid over the real BPF path.
//!
//! Cases: healthy (two prefill agents: every transfer counted per agent, no finding); one
//! prefill agent slow to serve (stopped and continued by the test, so its transfers wait for
//! it: named slow, the other not); a prefill agent killed mid-run (its transfers fail: named
//! with NIXL_ERR_REMOTE_DISCONNECT, the other agent not).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use llmdd_tests::harness::{require_root, start_llmdd, workspace_root, Proc, Stream};
use serde_json::Value;

/// One NIXL job at a time (2 cores).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn python() -> PathBuf {
    let p = workspace_root().join("target/tools/nixl-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask setup` installs NIXL",
        p.display()
    );
    p
}

fn script() -> PathBuf {
    workspace_root().join("tests/fixtures/nixl/kv.py")
}

fn kv(args: &[&str], dir: &Path, name: &str) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(script())
        .args(args)
        // TCP between the processes (not shared memory): a transfer needs the serving side.
        .env("UCX_TLS", "tcp")
        .env("NIXL_LOG_LEVEL", "ERROR")
        .current_dir(dir);
    let mut p = Proc::spawn(name, cmd).expect("the NIXL fixture starts");
    p.wait_line("READY", Duration::from_secs(120), |s, l| {
        s == Stream::Stdout && l == "READY"
    })
    .unwrap_or_else(|e| panic!("{name} is not ready: {e:#}"));
    p
}

/// What a run gives: llmdd's report and timeline, and the decode side's own transfer lines.
struct Run {
    report: Value,
    trace: Value,
    xfers: Vec<(String, String, f64)>,
}

/// Two prefill agents (`p1-prefill`, `p2-prefill`), a decode pulling `iters` times from each
/// under llmdd; `fault` runs on its own thread with the second prefill's pid while it pulls.
fn run(name: &str, iters: u32, fault: impl FnOnce(u32, Arc<AtomicBool>) + Send + 'static) -> Run {
    require_root();
    let dir = std::env::temp_dir().join(format!("llmdd-nixl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work dir");
    let d = dir.to_string_lossy().into_owned();
    let p1 = kv(&["prefill", "p1-prefill", &d], &dir, "prefill 1");
    let p2 = kv(&["prefill", "p2-prefill", &d], &dir, "prefill 2");
    let n = iters.to_string();
    let mut dec = kv(
        &["decode", "d1-decode", &d, "p1-prefill,p2-prefill", &n],
        &dir,
        "decode",
    );
    let report = dir.join("report.json");
    let trace = dir.join("trace.json");
    let r = report.to_string_lossy().into_owned();
    let t = trace.to_string_lossy().into_owned();
    let mut llmdd = start_llmdd(&[dec.pid()], &["--quiet", "--report", &r, "--trace", &t])
        .expect("llmdd attaches");
    let stop = Arc::new(AtomicBool::new(false));
    let (pid2, flag) = (p2.pid(), stop.clone());
    let faults = std::thread::spawn(move || fault(pid2, flag));
    dec.send_line("go").expect("releasing the decode side");
    dec.wait_line("DONE", Duration::from_secs(240), |s, l| {
        s == Stream::Stdout && l == "DONE"
    })
    .unwrap_or_else(|e| panic!("the decode side did not finish: {e:#}"));
    stop.store(true, Ordering::Relaxed);
    faults.join().expect("the fault thread");
    // Continue the prefill if the fault left it stopped.
    let _ = p2.signal(libc::SIGCONT);
    let xfers = dec
        .lines_of(Stream::Stdout)
        .iter()
        .filter_map(|l| {
            let mut w = l.strip_prefix("XFER ")?.split(' ');
            Some((
                w.next()?.to_string(),
                w.next()?.to_string(),
                w.next()?.parse().ok()?,
            ))
        })
        .collect();
    drop(dec);
    let status = llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd exits once the decode side has");
    assert!(status.success(), "llmdd failed:\n{}", llmdd.transcript());
    drop((p1, p2));
    let text = std::fs::read_to_string(&report).expect("the report");
    let timeline = std::fs::read_to_string(&trace).expect("the timeline");
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        report: serde_json::from_str(&text).expect("the report is JSON"),
        trace: serde_json::from_str(&timeline).expect("the timeline is JSON"),
        xfers,
    }
}

impl Run {
    fn agent(&self, prefix: &str) -> &Value {
        self.report["kv_transfers"]
            .as_array()
            .expect("kv_transfers")
            .iter()
            .find(|a| a["agent"] == prefix)
            .unwrap_or_else(|| {
                panic!(
                    "no transfers from {prefix}: {:#}",
                    self.report["kv_transfers"]
                )
            })
    }

    fn kv_findings(&self) -> Vec<&Value> {
        self.report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter(|f| f["kind"] == "kv_transfer")
            .collect()
    }

    fn done(&self, agent: &str) -> Vec<f64> {
        self.xfers
            .iter()
            .filter(|(a, st, _)| a == agent && st == "DONE")
            .map(|x| x.2)
            .collect()
    }
}

#[test]
fn healthy_transfers_are_counted_per_agent_and_raise_nothing() {
    let _one = serial();
    let r = run("healthy", 40, |_, _| {});
    for prefix in ["p1-prefi", "p2-prefi"] {
        let a = r.agent(prefix);
        assert_eq!(a["transfers"], 40, "{a:#}");
        assert_eq!(a["failed"], 0, "{a:#}");
        assert_eq!(a["reads"], 40, "{a:#}");
        assert_eq!(a["descriptors"], 40 * 16, "{a:#}");
    }
    assert!(r.kv_findings().is_empty(), "{:#?}", r.kv_findings());
    // The timeline draws every transfer once, on the thread that posted it.
    let slices: Vec<&Value> = r.trace["traceEvents"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["cat"] == "kv-transfer")
        .collect();
    assert_eq!(slices.len(), 80, "{slices:#?}");
    assert!(slices.iter().all(|s| s["args"]["status"] == "NIXL_SUCCESS"));
    assert_eq!(
        slices
            .iter()
            .filter(|s| s["name"] == "KV READ from agent p1-prefi…")
            .count(),
        40
    );
    // The transfer time is a bound on what the decode side measured around each one.
    let p50 = r.agent("p1-prefi")["duration"]["p50"]
        .as_f64()
        .expect("p50")
        / 1e6;
    let mut own = r.done("p1-prefill");
    own.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
    assert!(p50 <= own[own.len() / 2] * 1.5 + 0.5, "{p50} ms vs {own:?}");
}

#[test]
fn a_prefill_agent_slow_to_serve_is_named() {
    let _one = serial();
    let r = run("slow", 30, |pid, stop| {
        // Stopped 40 ms of every 50: it serves nothing while stopped.
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: signals to a child of this test.
            unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
            std::thread::sleep(Duration::from_millis(40));
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let f = r.kv_findings();
    let slow: Vec<&&Value> = f
        .iter()
        .filter(|x| x["magnitude"]["name"] == "slow_ratio")
        .collect();
    assert_eq!(slow.len(), 1, "{f:#?}");
    assert_eq!(slow[0]["culprit"]["agent"], "agent p2-prefi…", "{f:#?}");
    assert!(
        f.iter().all(|x| x["culprit"]["agent"] != "agent p1-prefi…"),
        "{f:#?}"
    );
    eprintln!("slow prefill: {}", slow[0]["evidence"]);
}

#[test]
fn a_prefill_agent_killed_mid_run_is_named_with_its_error() {
    let _one = serial();
    let r = run("killed", 200, |pid, _| {
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: a child of this test.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let lost = r
        .xfers
        .iter()
        .filter(|(a, st, _)| a == "p2-prefill" && st != "DONE")
        .count();
    assert!(
        lost > 0,
        "the kill came after the last transfer: {:?}",
        r.xfers.len()
    );
    let f = r.kv_findings();
    let failed: Vec<&&Value> = f
        .iter()
        .filter(|x| x["culprit"]["agent"] == "agent p2-prefi…")
        .collect();
    assert!(!failed.is_empty(), "{f:#?}");
    assert!(
        failed.iter().any(|x| x["evidence"]
            .as_str()
            .is_some_and(|e| e.contains("NIXL_ERR_REMOTE_DISCONNECT"))),
        "{failed:#?}"
    );
    assert!(
        f.iter().all(|x| x["culprit"]["agent"] != "agent p1-prefi…"),
        "{f:#?}"
    );
    assert_eq!(r.agent("p1-prefi")["failed"], 0);
}
