//! Gloo on the real thing, on what users install: the pinned PyTorch 2.5.1 and the current
//! PyPI release 2.15.0 (`cargo xtask setup` fetches both once; their `gloo::Context` layouts
//! differ: a vtable then rank and size at 8 and 12, against no vtable and both at 0 and 4).
//! Three processes run torch.distributed with the gloo backend on loopback, rank 1 sleeps
//! 30 ms more per step, and ranks 0 and 1 also broadcast in a subgroup. No RANK/WORLD_SIZE
//! in their environment (as under torch.multiprocessing.spawn). llmdd attaches to them by
//! pid, finds `gloo::allreduce` and the other entry points in libtorch_cpu.so by demangled
//! name, decodes where this build's context keeps rank and size from its constructor, reads
//! each call's process group through the options object, matches the calls across ranks per
//! group, and names rank 1 on a group of 3.

use std::{net::TcpListener, path::PathBuf, process::Command, time::Duration};

use llmdd_tests::harness::{require_root, start_llmdd, workspace_root, Proc, Stream};
use serde_json::Value;

const STEPS: u32 = 40;

fn torch_site(version: &str) -> PathBuf {
    let site = workspace_root()
        .join("target/tools")
        .join(format!("torch-{version}"))
        .join("site");
    assert!(
        site.join(".llmdd-complete").exists(),
        "PyTorch {version} is not installed under {}: run `cargo xtask setup`",
        site.display()
    );
    site
}

#[test]
fn gloo_straggler_is_named_on_pytorch_2_5_1() {
    gloo_straggler_is_named("2.5.1");
}

#[test]
fn gloo_straggler_is_named_on_the_current_pytorch_2_15_0() {
    gloo_straggler_is_named("2.15.0");
}

fn gloo_straggler_is_named(version: &str) {
    require_root();
    let site = torch_site(version);
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let script = workspace_root().join("tests/fixtures/gloo-job/gloo_job.py");
    let mut ranks = Vec::new();
    for rank in 0..3 {
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args([&port.to_string(), &STEPS.to_string(), "0.01", "1", "0.03"])
            .env("PYTHONPATH", &site)
            .env("PYTHONUNBUFFERED", "1")
            .env("LLMDD_TEST_RANK", rank.to_string())
            .env("LLMDD_TEST_WORLD", "3")
            .env("OMP_NUM_THREADS", "1");
        ranks.push(Proc::spawn(&format!("gloo rank {rank}"), cmd).expect("python starts"));
    }
    let mut pids = Vec::new();
    for r in &mut ranks {
        let l = r
            .wait_line("READY", Duration::from_secs(180), |s, l| {
                s == Stream::Stdout && l.starts_with("READY ")
            })
            .expect("rank ready");
        pids.push(l[6..].trim().parse::<u32>().expect("pid"));
    }
    let report = std::env::temp_dir().join(format!("llmdd-gloo-{port}.json"));
    let r = report.to_string_lossy().into_owned();
    let mut llmdd = start_llmdd(&pids, &["--no-tui", "--report", &r]).expect("llmdd attaches");
    let err = llmdd.lines_of(Stream::Stderr).join("\n");
    assert!(
        err.contains("gloo"),
        "the gloo entry points are probed:\n{err}"
    );
    assert!(
        !err.contains("layout not found"),
        "this build's context layout decodes:\n{err}"
    );
    for r in &mut ranks {
        r.send_line("go").expect("go");
    }
    for r in &mut ranks {
        r.wait_line("DONE", Duration::from_secs(180), |s, l| {
            s == Stream::Stdout && l.starts_with("DONE")
        })
        .expect("rank done");
        let _ = r.wait_exit(Duration::from_secs(60));
    }
    let status = llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd exits");
    assert!(status.success(), "{}", llmdd.transcript());
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let calls: u64 = doc["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .flat_map(|p| p["functions"].as_array().into_iter().flatten())
        .filter(|f| f["name"] == "gloo::allreduce")
        .map(|f| f["calls"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        calls >= 3 * u64::from(STEPS),
        "gloo::allreduce calls: {calls}"
    );
    // Gloo's entry points return void: nothing in their return register is an error.
    for f in doc["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .flat_map(|p| p["functions"].as_array().into_iter().flatten())
    {
        assert_eq!(f["errors"], serde_json::json!([]), "{f:#}");
    }
    let findings = doc["findings"].as_array().expect("findings");
    // A CPU job: its host collectives are not GPU submissions, so no submission bubbles.
    assert!(
        findings.iter().all(|f| f["kind"] != "bubble"),
        "{findings:#?}"
    );
    let s = findings
        .iter()
        .find(|f| f["kind"] == "straggler")
        .unwrap_or_else(|| panic!("no straggler: {findings:#?}\n{}", llmdd.transcript()));
    assert_eq!(s["culprit"]["rank"], 1, "{s:#}");
    assert_eq!(s["culprit"]["pid"], pids[1], "{s:#}");
    // Two process groups, told apart by their contexts, with ranks read through them.
    let comms = doc["communicators"].as_array().expect("communicators");
    let by_size = |n: u64| -> Vec<&Value> {
        comms
            .iter()
            .filter(|c| c["backend"] == "gloo" && c["nranks"] == n)
            .collect()
    };
    let (world, pair) = (by_size(3), by_size(2));
    assert_eq!(world.len(), 1, "{comms:#?}");
    assert_eq!(pair.len(), 1, "{comms:#?}");
    assert!(pair[0]["ops"]
        .as_array()
        .is_some_and(|o| o.iter().any(|o| o["op"] == "gloo::broadcast")));
    assert!(pair[0]["instances_finished"].as_u64() >= Some(u64::from(STEPS) - 1));
    for c in comms.iter().filter(|c| c["backend"] == "gloo") {
        assert_eq!(c["identity"]["rank_source"], "handle", "{c:#}");
    }
    // The job ended normally: Gloo has no traced teardown, so ranks exiting with nothing
    // open are not findings.
    assert!(
        findings.iter().all(|f| f["kind"] != "member_left"),
        "{findings:#?}"
    );
    eprintln!("gloo straggler on PyTorch {version}: {}", s["evidence"]);
}
