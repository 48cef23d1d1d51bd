//! The real thing, not our fake: Open MPI (Debian's openmpi-bin, installed by `cargo xtask
//! setup`) runs a 4-rank job under mpirun on loopback (shared memory and TCP), one rank
//! made slow; llmdd attaches to the running ranks by pid and names that rank as the
//! straggler of MPI_Allreduce, its ranks taken from Open MPI's environment.

use std::{path::PathBuf, process::Command, time::Duration};

use llmdd_tests::harness::{build_dir, require_root, start_llmdd, Proc, Stream};
use serde_json::Value;

const SLOW: u32 = 2;

/// Builds the job with mpicc (once per build directory), or says why it cannot.
fn build_job() -> Option<PathBuf> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/mpi-job/mpi_job.c");
    let out = build_dir().join("mpi_job");
    let status = Command::new("mpicc")
        .arg("-O2")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .ok()?;
    status.success().then_some(out)
}

#[test]
fn open_mpi_straggler_is_named() {
    require_root();
    let Some(job) = build_job() else {
        panic!("mpicc is missing: `cargo xtask setup` installs openmpi-bin and libopenmpi-dev");
    };
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        "4",
        "--mca",
        "btl",
        "self,vader,tcp",
        "--mca",
        "btl_tcp_if_include",
        "lo",
    ])
    .arg(&job)
    .args(["300", "2000", &SLOW.to_string(), "15000"]);
    let mut run = Proc::spawn("mpirun", cmd).expect("mpirun starts");
    run.wait_line("READY", Duration::from_secs(120), |s, l| {
        s == Stream::Stdout && l.starts_with("READY")
    })
    .expect("the MPI job is up");
    // mpirun forwards each rank's output on its own: a rank's pid line may come after
    // rank 0's READY.
    let parse = |run: &Proc| {
        let mut pids = vec![0u32; 4];
        for l in run.lines_of(Stream::Stdout) {
            let w: Vec<&str> = l.split_whitespace().collect();
            if let ["RANK", r, "PID", p] = w[..] {
                pids[r.parse::<usize>().expect("rank")] = p.parse().expect("pid");
            }
        }
        pids
    };
    let mut pids = parse(&run);
    while let Some(r) = pids.iter().position(|p| *p == 0) {
        run.wait_line("a rank's pid line", Duration::from_secs(60), |s, l| {
            s == Stream::Stdout && l.starts_with(&format!("RANK {r} PID"))
        })
        .expect("every rank says its pid");
        pids = parse(&run);
    }
    assert!(pids.iter().all(|p| *p > 0), "{}", run.transcript());
    let report = build_dir().join("mpi_straggler_report.json");
    let report_arg = report.to_string_lossy().into_owned();
    let mut l = start_llmdd(
        &pids,
        &[
            "--quiet",
            "--report",
            &report_arg,
            "--overhead-budget",
            "off",
        ],
    )
    .expect("llmdd attaches to the MPI ranks");
    assert!(l.transcript().contains("mpi "), "{}", l.transcript());
    run.send_line("go").expect("release the job");
    run.wait_line("DONE", Duration::from_secs(240), |s, x| {
        s == Stream::Stdout && x == "DONE"
    })
    .expect("the job finishes");
    let status = l
        .wait_exit(Duration::from_secs(120))
        .expect("llmdd exits with the ranks");
    assert!(status.success(), "{}", l.transcript());
    let _ = run.wait_exit(Duration::from_secs(60));

    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let stragglers: Vec<&Value> = doc["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["kind"] == "straggler")
        .collect();
    assert_eq!(
        stragglers.len(),
        1,
        "one straggler: {:#}\n{}",
        doc["findings"],
        l.lines_of(Stream::Stdout).join("\n")
    );
    let c = &stragglers[0]["culprit"];
    assert_eq!(c["rank"], SLOW, "{c}");
    assert_eq!(c["pid"], pids[SLOW as usize], "{c}");

    // Derived communicators: the two halves from MPI_Comm_split and the duplicate from
    // MPI_Comm_dup, matched across their ranks by split sequence and color.
    let comms = doc["communicators"].as_array().expect("communicators");
    assert!(comms.iter().all(|c| c["backend"] == "mpi"), "{comms:#?}");
    let split: Vec<&Value> = comms
        .iter()
        .filter(|c| c["identity"]["by"] == "split")
        .collect();
    let members = |c: &Value| c["members"].as_array().map(Vec::len).unwrap_or(0);
    let halves: Vec<&&Value> = split.iter().filter(|c| members(c) == 2).collect();
    assert_eq!(halves.len(), 2, "{comms:#?}");
    for h in &halves {
        assert!(h["instances_finished"].as_u64() >= Some(290), "{h:#}");
        assert_eq!(h["ops"][0]["op"], "MPI_Allreduce", "{h:#}");
    }
    let colors: std::collections::BTreeSet<i64> = halves
        .iter()
        .filter_map(|h| h["identity"]["color"].as_i64())
        .collect();
    assert_eq!(colors, [0, 1].into_iter().collect());
    let dup: Vec<&&Value> = split.iter().filter(|c| members(c) == 4).collect();
    assert_eq!(dup.len(), 1, "{comms:#?}");
    assert_eq!(dup[0]["ops"][0]["op"], "MPI_Barrier", "{:#}", dup[0]);
    assert_eq!(dup[0]["instances_finished"], 1, "{:#}", dup[0]);
    let calls = |name: &str| -> u64 {
        doc["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["functions"].as_array().into_iter().flatten())
            .filter(|f| f["name"] == name)
            .map(|f| f["calls"].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(calls("MPI_Comm_split"), 4);
    assert_eq!(calls("MPI_Comm_dup"), 4);
}
