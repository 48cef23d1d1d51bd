//! KV-cache transfers over the real NIXL (nixl-cu12 from PyPI, in `target/tools/nixl-venv`,
//! installed by `cargo xtask setup`), for the tests and the accuracy matrix: prefill
//! processes (`p1-prefill`, `p2-prefill`, ...) serve DRAM blocks, a decode process pulls
//! them with NIXL READs over UCX's TCP transport (`tests/fixtures/nixl/kv.py`), and llmdd
//! attaches to the decode process by pid, after its lists were prepared (as when attaching
//! to a running decode server).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::harness::{start_llmdd_with, workspace_root, Proc, Stream};

/// What is done to one prefill agent (index from 0) while the decode side pulls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Stopped `stop_ms` of every `stop_ms + 10` ms: it serves nothing while stopped.
    Slow {
        agent: usize,
        stop_ms: u64,
    },
    /// Killed this long after the pulls start.
    Kill {
        agent: usize,
        after_ms: u64,
    },
}

/// A finished run: llmdd's report and timeline, and the decode side's own transfer lines
/// (agent, final state, milliseconds).
pub struct NixlRun {
    pub report: Value,
    pub trace: Value,
    pub xfers: Vec<(String, String, f64)>,
}

/// The name of prefill agent `i`; its first 8 bytes are what llmdd shows.
pub fn agent_name(i: usize) -> String {
    format!("p{}-prefill", i + 1)
}

/// NIXL's Python.
pub fn python() -> Result<PathBuf> {
    let p = workspace_root().join("target/tools/nixl-venv/bin/python");
    if !p.exists() {
        bail!(
            "{} is missing: `cargo xtask setup` installs NIXL",
            p.display()
        );
    }
    Ok(p)
}

fn kv(args: &[&str], dir: &Path, name: &str) -> Result<Proc> {
    let mut cmd = Command::new(python()?);
    cmd.arg(workspace_root().join("tests/fixtures/nixl/kv.py"))
        .args(args)
        // TCP between the processes (not shared memory): a transfer needs the serving side.
        .env("UCX_TLS", "tcp")
        .env("NIXL_LOG_LEVEL", "ERROR")
        .current_dir(dir);
    let mut p = Proc::spawn(name, cmd)?;
    p.wait_line("READY", Duration::from_secs(120), |s, l| {
        s == Stream::Stdout && l == "READY"
    })
    .with_context(|| format!("{name} is not ready"))?;
    Ok(p)
}

fn inject(fault: Fault, pids: Vec<u32>, stop: Arc<AtomicBool>) {
    let signal = |pid: u32, sig: i32| {
        // SAFETY: signals to children of this process.
        unsafe { libc::kill(pid as i32, sig) };
    };
    match fault {
        Fault::None => {}
        Fault::Slow { agent, stop_ms } => {
            while !stop.load(Ordering::Relaxed) {
                signal(pids[agent], libc::SIGSTOP);
                std::thread::sleep(Duration::from_millis(stop_ms));
                signal(pids[agent], libc::SIGCONT);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Fault::Kill { agent, after_ms } => {
            std::thread::sleep(Duration::from_millis(after_ms));
            signal(pids[agent], libc::SIGKILL);
        }
    }
}

/// `agents` prefill agents, a decode pulling `iters` times from each under `llmdd` (the
/// binary), `fault` injected while it pulls; scratch files in `dir`.
pub fn run(llmdd: &Path, dir: &Path, agents: usize, iters: u32, fault: Fault) -> Result<NixlRun> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let d = dir.to_string_lossy().into_owned();
    let names: Vec<String> = (0..agents).map(agent_name).collect();
    let prefills = names
        .iter()
        .map(|n| kv(&["prefill", n, &d], dir, n))
        .collect::<Result<Vec<Proc>>>()?;
    let n = iters.to_string();
    let mut dec = kv(
        &["decode", "d1-decode", &d, &names.join(","), &n],
        dir,
        "decode",
    )?;
    let report = dir.join("report.json");
    let trace = dir.join("trace.json");
    let (r, t) = (
        report.to_string_lossy().into_owned(),
        trace.to_string_lossy().into_owned(),
    );
    let mut llmdd = start_llmdd_with(
        llmdd,
        &[dec.pid()],
        &["--quiet", "--report", &r, "--trace", &t],
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let (pids, flag) = (prefills.iter().map(Proc::pid).collect(), stop.clone());
    let faults = std::thread::spawn(move || inject(fault, pids, flag));
    dec.send_line("go")?;
    let done = dec.wait_line("DONE", Duration::from_secs(240), |s, l| {
        s == Stream::Stdout && l == "DONE"
    });
    stop.store(true, Ordering::Relaxed);
    let _ = faults.join();
    for p in &prefills {
        let _ = p.signal(libc::SIGCONT);
    }
    done.context("the decode side did not finish")?;
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
    let status = llmdd.wait_exit(Duration::from_secs(60))?;
    anyhow::ensure!(status.success(), "llmdd failed:\n{}", llmdd.transcript());
    drop(prefills);
    let read = |p: &Path| -> Result<Value> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    };
    Ok(NixlRun {
        report: read(&report)?,
        trace: read(&trace)?,
        xfers,
    })
}

impl NixlRun {
    /// The report's transfers from the agent whose name starts with `prefix`.
    pub fn agent(&self, prefix: &str) -> Option<&Value> {
        self.report["kv_transfers"]
            .as_array()?
            .iter()
            .find(|a| a["agent"] == prefix)
    }

    /// The report's `kv_transfer` findings.
    pub fn kv_findings(&self) -> Vec<&Value> {
        self.report["findings"]
            .as_array()
            .map(|f| f.iter().filter(|f| f["kind"] == "kv_transfer").collect())
            .unwrap_or_default()
    }

    /// The decode side's own times of the transfers from `agent` that completed, ms.
    pub fn done(&self, agent: &str) -> Vec<f64> {
        self.xfers
            .iter()
            .filter(|(a, st, _)| a == agent && st == "DONE")
            .map(|x| x.2)
            .collect()
    }

    /// Whether the decode side's own times show the agent labelled `label` ("agent
    /// p2-prefi…") slower, median against median, than every other agent by the slow rule's
    /// ratio: then an agent named slow was slow, fault injected or not (a prefill starved of
    /// CPU on a loaded machine serves slower).
    pub fn measured_slow(&self, label: &str) -> bool {
        let agents: std::collections::BTreeSet<&str> =
            self.xfers.iter().map(|(a, _, _)| a.as_str()).collect();
        let prefix = |a: &str| format!("agent {}…", &a[..8.min(a.len())]);
        let Some(slow) = agents.iter().find(|a| prefix(a) == label) else {
            return false;
        };
        let mine = self.done(slow);
        if mine.is_empty() {
            return false;
        }
        let m = crate::serving::median(mine);
        agents.iter().filter(|a| *a != slow).all(|a| {
            let theirs = self.done(a);
            !theirs.is_empty() && m >= 3.0 * crate::serving::median(theirs)
        })
    }
}
