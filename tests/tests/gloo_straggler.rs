//! Gloo on the real thing (opt-in: PyTorch is 4.5 GB with its dependencies; `cargo xtask
//! gloo-test` fetches a pinned wheel set once and runs this): three processes run
//! torch.distributed with the gloo backend on loopback, rank 1 sleeps 30 ms more per step;
//! llmdd attaches to them by pid, finds `gloo::allreduce` and the other entry points in
//! libtorch_cpu.so by demangled name, matches the calls across ranks and names rank 1.

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
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "3")
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
    eprintln!("gloo straggler: {}", s["evidence"]);
}
