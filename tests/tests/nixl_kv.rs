//! KV-cache transfers over the real NIXL (see `llmdd_tests::nixl`): a decode process pulls
//! from two prefill agents over UCX's TCP transport; llmdd attaches to it by pid over the
//! real BPF path.
//!
//! Cases: healthy (every transfer counted per agent, drawn in the timeline, no finding); one
//! prefill agent slow to serve (stopped and continued by the test, so its transfers wait for
//! it: named slow, the other not); a prefill agent killed mid-run (its transfers fail: named
//! with NIXL_ERR_REMOTE_DISCONNECT, the other agent not).

use std::sync::{Mutex, MutexGuard};

use llmdd_tests::{
    harness::{built, require_root, schema_errors},
    nixl::{self, Fault, NixlRun},
};
use serde_json::Value;

/// One NIXL job at a time (2 cores).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(name: &str, iters: u32, fault: Fault) -> NixlRun {
    require_root();
    let dir = std::env::temp_dir().join(format!("llmdd-nixl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let r = nixl::run(&built("llmdd"), &dir, 2, iters, fault)
        .unwrap_or_else(|e| panic!("the NIXL job ({name}): {e:#}"));
    let _ = std::fs::remove_dir_all(&dir);
    let errors = schema_errors(&r.report).expect("the schema loads");
    assert!(
        errors.is_empty(),
        "the report breaks the schema: {errors:#?}"
    );
    r
}

fn agent<'a>(r: &'a NixlRun, prefix: &str) -> &'a Value {
    r.agent(prefix)
        .unwrap_or_else(|| panic!("no transfers from {prefix}: {:#}", r.report["kv_transfers"]))
}

#[test]
fn healthy_transfers_are_counted_per_agent_and_raise_nothing() {
    let _one = serial();
    let r = run("healthy", 40, Fault::None);
    for prefix in ["p1-prefi", "p2-prefi"] {
        let a = agent(&r, prefix);
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
    let p50 = agent(&r, "p1-prefi")["duration"]["p50"]
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
    let r = run(
        "slow",
        30,
        Fault::Slow {
            agent: 1,
            stop_ms: 40,
        },
    );
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
    let r = run(
        "killed",
        200,
        Fault::Kill {
            agent: 1,
            after_ms: 1500,
        },
    );
    let lost = r
        .xfers
        .iter()
        .filter(|(a, st, _)| a == "p2-prefill" && st != "DONE")
        .count();
    assert!(lost > 0, "the kill came after the last transfer");
    let f = r.kv_findings();
    let named: Vec<&&Value> = f
        .iter()
        .filter(|x| x["culprit"]["agent"] == "agent p2-prefi…")
        .collect();
    assert!(
        named.iter().any(|x| x["evidence"]
            .as_str()
            .is_some_and(|e| e.contains("NIXL_ERR_REMOTE_DISCONNECT"))),
        "{f:#?}"
    );
    // The healthy agent is never named, unless the decode side's own times show it slower
    // by the rule's ratio (a prefill starved of CPU while the tests run in parallel): then
    // saying so is right.
    assert!(
        f.iter().all(|x| x["culprit"]["agent"] != "agent p1-prefi…"
            || (x["magnitude"]["name"] == "slow_ratio" && r.measured_slow("agent p1-prefi…"))),
        "{f:#?}"
    );
    assert_eq!(agent(&r, "p1-prefi")["failed"], 0);
}
