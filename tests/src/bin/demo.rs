//! `cargo xtask demo`: start a simulated 4-rank job (rank 2 is a straggler), let it run, and
//! trace it live with `llmdd attach` by pid — the no-restart path a user takes.

use std::{process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use llmdd_tests::{
    harness::{built, fake_lib_dir},
    job::Job,
};

fn main() -> Result<()> {
    let mut duration = "10s".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--duration" => duration = args.next().context("--duration needs a value")?,
            other => bail!("unknown argument {other} (only --duration DURATION)"),
        }
    }
    let lib_dir = fake_lib_dir();
    println!("demo: starting a simulated 4-rank job (fake NCCL over loopback TCP, fake CUDA);");
    println!("demo: rank 2 is a straggler: it sleeps 20 ms before its all-reduce every 3rd step");
    let mut job = Job::start(
        &lib_dir,
        &[
            "--ranks",
            "4",
            "--forever",
            "--no-gate",
            "--compute-us",
            "5000",
            "--collective",
            "allreduce:256K",
            "--straggler",
            "2:20:3",
            "--timeout-s",
            "600",
        ],
    )?;
    let pids: Vec<String> = job.pids.iter().map(u32::to_string).collect();
    println!(
        "demo: job running, rank pids {}; attaching llmdd for {duration}:",
        pids.join(",")
    );
    println!(
        "demo: $ llmdd attach {} --duration {duration}",
        pids.iter()
            .map(|p| format!("--pid {p}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut cmd = Command::new(built("llmdd"));
    cmd.arg("attach")
        .args(
            job.pids
                .iter()
                .flat_map(|p| ["--pid".to_string(), p.to_string()]),
        )
        .args(["--duration", &duration]);
    let status = cmd.status().context("running llmdd")?;
    job.proc.signal(libc::SIGTERM)?;
    let _ = job.proc.wait_exit(Duration::from_secs(30));
    if !status.success() {
        bail!("llmdd exited with {status}");
    }
    println!("demo: done; the job was never restarted and kept running while traced");
    Ok(())
}
