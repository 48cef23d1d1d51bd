//! Running the simulated job (`simjob`) from tests and the demo: start it, wait for its
//! READY line (communicators exist, warm-up done), release it with `go`, read its truth.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result};
use simjob::truth::Truth;

use crate::harness::{built, Proc, Stream};

/// A started job, parked at its gate.
pub struct Job {
    pub proc: Proc,
    /// Rank pids, in rank order.
    pub pids: Vec<u32>,
    /// The serving front, when started with `--serve`.
    pub front: Option<(u32, u16)>,
}

impl Job {
    /// Starts `simjob --lib-dir LIB_DIR ARGS...` and waits for READY.
    pub fn start(lib_dir: &Path, args: &[&str]) -> Result<Job> {
        let mut cmd = Command::new(built("simjob"));
        cmd.arg("--lib-dir").arg(lib_dir).args(args);
        let mut proc = Proc::spawn("simjob", cmd)?;
        let ready = proc.wait_line("READY line", Duration::from_secs(120), |s, l| {
            s == Stream::Stdout && l.starts_with("READY ")
        })?;
        let Ready { pids, front } =
            parse_ready(&ready).with_context(|| format!("parsing `{ready}`"))?;
        Ok(Job { proc, pids, front })
    }

    /// Starts the job with `--gate-init`: the rank processes have loaded the libraries but
    /// not yet created their communicator. `pids` are known; call [`Job::init`] next.
    pub fn start_before_init(lib_dir: &Path, args: &[&str]) -> Result<Job> {
        let mut cmd = Command::new(built("simjob"));
        cmd.arg("--lib-dir")
            .arg(lib_dir)
            .arg("--gate-init")
            .args(args);
        let mut proc = Proc::spawn("simjob", cmd)?;
        let spawned = proc.wait_line("SPAWNED line", Duration::from_secs(120), |s, l| {
            s == Stream::Stdout && l.starts_with("SPAWNED ")
        })?;
        let Ready { pids, .. } =
            parse_ready(&spawned).with_context(|| format!("parsing `{spawned}`"))?;
        Ok(Job {
            proc,
            pids,
            front: None,
        })
    }

    /// Lets the ranks create their communicator, and waits for READY.
    pub fn init(&mut self) -> Result<()> {
        self.proc.send_line("init")?;
        let ready = self
            .proc
            .wait_line("READY line", Duration::from_secs(120), |s, l| {
                s == Stream::Stdout && l.starts_with("READY ")
            })?;
        self.front = parse_ready(&ready)
            .with_context(|| format!("parsing `{ready}`"))?
            .front;
        Ok(())
    }

    /// Releases the measured phase.
    pub fn go(&mut self) -> Result<()> {
        self.proc.send_line("go")
    }

    /// Waits for the job to finish and reads its truth file.
    pub fn finish(&mut self, truth: &Path) -> Result<Truth> {
        let status = self.proc.wait_exit(Duration::from_secs(300))?;
        anyhow::ensure!(
            status.success(),
            "simjob failed ({status}):\n{}",
            self.proc.transcript()
        );
        let text = std::fs::read_to_string(truth)
            .with_context(|| format!("reading {}", truth.display()))?;
        serde_json::from_str(&text).context("parsing the truth file")
    }
}

/// What the READY line says.
#[derive(Debug, PartialEq, Eq)]
pub struct Ready {
    pub pids: Vec<u32>,
    pub front: Option<(u32, u16)>,
}

/// Parses `READY pids=1,2,3 [front=PID port=PORT]` (and `SPAWNED pids=...`).
pub fn parse_ready(line: &str) -> Option<Ready> {
    let mut pids = None;
    let mut front = None;
    let mut port = None;
    for word in line.split_whitespace().skip(1) {
        if let Some(v) = word.strip_prefix("pids=") {
            pids = v
                .split(',')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u32>>>();
        } else if let Some(v) = word.strip_prefix("front=") {
            front = v.parse().ok();
        } else if let Some(v) = word.strip_prefix("port=") {
            port = v.parse().ok();
        }
    }
    Some(Ready {
        pids: pids?,
        front: front.zip(port),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_ready() {
        let r = super::parse_ready("READY pids=10,11 front=12 port=8080").expect("parses");
        assert_eq!(r.pids, vec![10, 11]);
        assert_eq!(r.front, Some((12, 8080)));
        assert!(super::parse_ready("READY nothing").is_none());
    }
}
