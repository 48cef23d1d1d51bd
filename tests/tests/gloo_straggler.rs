//! Gloo on the real thing (opt-in: PyTorch is 4.5 GB with its dependencies; `cargo xtask
//! gloo-test` fetches a pinned wheel set once and runs this): three processes run
//! torch.distributed with the gloo backend on loopback, rank 1 sleeps 30 ms more per step,
//! and ranks 0 and 1 also broadcast in a subgroup. No RANK/WORLD_SIZE in their environment
//! (as under torch.multiprocessing.spawn). llmdd attaches to them by pid, finds
//! `gloo::allreduce` and the other entry points in libtorch_cpu.so by demangled name, reads
//! each call's process group (its `gloo::Context`, with rank and size) through the options
//! object, matches the calls across ranks per group, and names rank 1.

use std::{net::TcpListener, path::PathBuf, process::Command, time::Duration};

use llmdd_tests::harness::{require_root, start_llmdd, workspace_root, Proc, Stream};
use serde_json::Value;

const STEPS: u32 = 40;

fn torch_site() -> PathBuf {
    let site = std::env::var_os("LLMDD_TORCH_SITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("LLMDD_TORCH_SITE is not set: run this test with `cargo xtask gloo-test`")
        });
    assert!(
        site.join("torch").is_dir(),
        "no torch under {}: run `cargo xtask gloo-test`",
        site.display()
    );
    site
}

#[test]
#[ignore = "opt-in: needs PyTorch (4.5 GB); run `cargo xtask gloo-test`"]
fn gloo_straggler_is_named() {
    require_root();
    let site = torch_site();
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
    let findings = doc["findings"].as_array().expect("findings");
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
    eprintln!("gloo straggler: {}", s["evidence"]);
}
