//! The real Open MPI job (Debian's openmpi-bin, installed by `cargo xtask setup`): build
//! `tests/fixtures/mpi-job/mpi_job.c` with mpicc, start it under mpirun with 4 ranks on
//! loopback, learn the ranks' pids, release it.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context, Result};

use crate::harness::{build_dir, workspace_root, Proc, Stream};

/// Builds the job with mpicc (once per build directory).
pub fn build_job() -> Result<PathBuf> {
    let src = workspace_root().join("tests/fixtures/mpi-job/mpi_job.c");
    let out = build_dir().join("mpi_job");
    let status = Command::new("mpicc")
        .arg("-O2")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .context("mpicc is missing: `cargo xtask setup` installs openmpi-bin and libopenmpi-dev")?;
    if !status.success() {
        bail!("mpicc failed on {}", src.display());
    }
    Ok(out)
}

/// A started MPI job, parked until [`MpiJob::go`].
pub struct MpiJob {
    pub run: Proc,
    /// Rank pids, in rank order.
    pub pids: Vec<u32>,
}

/// What the job does each step (see the fixture's usage line).
#[derive(Clone, Copy, Debug)]
pub struct MpiSteps {
    pub steps: u32,
    pub compute_us: u32,
    pub slow_rank: u32,
    pub delay_us: u32,
    /// The step before which the slow rank stops for good (sleeps until killed).
    pub hang_step: Option<u32>,
}

impl MpiJob {
    /// Starts 4 ranks under mpirun (shared memory and TCP on loopback) and waits until every
    /// rank said its pid.
    pub fn start(job: &std::path::Path, s: MpiSteps) -> Result<MpiJob> {
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
        .arg(job)
        .args([
            s.steps.to_string(),
            s.compute_us.to_string(),
            s.slow_rank.to_string(),
            s.delay_us.to_string(),
        ])
        .args(s.hang_step.map(|h| h.to_string()));
        let mut run = Proc::spawn("mpirun", cmd)?;
        run.wait_line("READY", Duration::from_secs(120), |s, l| {
            s == Stream::Stdout && l.starts_with("READY")
        })?;
        // mpirun forwards each rank's output on its own: a rank's pid line may come after
        // rank 0's READY.
        let mut pids = parse_pids(&run);
        while let Some(r) = pids.iter().position(|p| *p == 0) {
            run.wait_line("a rank's pid line", Duration::from_secs(60), |s, l| {
                s == Stream::Stdout && l.starts_with(&format!("RANK {r} PID"))
            })?;
            pids = parse_pids(&run);
        }
        Ok(MpiJob { run, pids })
    }

    /// Releases the measured steps.
    pub fn go(&mut self) -> Result<()> {
        self.run.send_line("go")
    }

    /// Waits until the slow rank says it stopped for good (`hang_step`).
    pub fn wait_hung(&mut self) -> Result<()> {
        self.run
            .wait_line("HUNG", Duration::from_secs(120), |s, x| {
                s == Stream::Stdout && x.starts_with("HUNG")
            })
            .map(|_| ())
    }

    /// Ends a hung job (mpirun takes its ranks down with it).
    pub fn kill(&mut self) {
        let _ = self.run.signal(libc::SIGTERM);
        if self.run.wait_exit(Duration::from_secs(20)).is_err() {
            let _ = self.run.signal(libc::SIGKILL);
            for &p in &self.pids {
                // SAFETY: kill(2) on the job's own rank pids.
                unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
            }
        }
    }

    /// Waits for the job's DONE line and its exit.
    pub fn finish(&mut self) -> Result<()> {
        self.run
            .wait_line("DONE", Duration::from_secs(300), |s, x| {
                s == Stream::Stdout && x == "DONE"
            })
            .map(|_| ())?;
        let _ = self.run.wait_exit(Duration::from_secs(60));
        Ok(())
    }
}

fn parse_pids(run: &Proc) -> Vec<u32> {
    let mut pids = vec![0u32; 4];
    for l in run.lines_of(Stream::Stdout) {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let ["RANK", r, "PID", p] = w[..] {
            if let (Ok(r), Ok(p)) = (r.parse::<usize>(), p.parse()) {
                if r < pids.len() {
                    pids[r] = p;
                }
            }
        }
    }
    pids
}
