//! The soak run (`cargo xtask soak`, and a 30-second version in the tests): the simulated
//! job with N ranks running until stopped at a target traced-call rate, llmdd attached with
//! the plain output and Prometheus on; llmdd's memory sampled, /metrics scraped, and at the
//! end its report checked. A command, not a test, at full length: it runs for minutes.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{
    harness::{built, fake_lib_dir, Proc, Stream},
    job::Job,
};

/// What to run.
#[derive(Clone, Debug)]
pub struct SoakOpts {
    pub duration: Duration,
    pub ranks: usize,
    /// Traced calls per second, all ranks together (approximate: set through the job's
    /// launches per step).
    pub rate: u64,
    /// Seconds between samples.
    pub sample_every: Duration,
}

/// What was seen.
#[derive(Clone, Debug, Default)]
pub struct SoakResult {
    /// (seconds since start, llmdd VmRSS in KiB).
    pub rss_kib: Vec<(f64, u64)>,
    pub scrapes_ok: usize,
    pub scrapes_failed: usize,
    pub events_received: u64,
    pub events_lost: u64,
    pub seconds: f64,
    pub exit_ok: bool,
    pub report_written: bool,
}

impl SoakResult {
    /// RSS growth from the sample at a third of the run (after warm-up) to the last, in %.
    pub fn rss_growth_pct(&self) -> f64 {
        let n = self.rss_kib.len();
        if n < 3 {
            return 0.0;
        }
        let base = self.rss_kib[n / 3].1 as f64;
        let last = self.rss_kib[n - 1].1 as f64;
        (last / base.max(1.0) - 1.0) * 100.0
    }

    /// Events per second received.
    pub fn rate(&self) -> f64 {
        self.events_received as f64 / self.seconds.max(1e-9)
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "soak: {:.0} s, {} events received ({:.0}/s), {} lost, exit {}, report {}\n",
            self.seconds,
            self.events_received,
            self.rate(),
            self.events_lost,
            if self.exit_ok { "ok" } else { "FAILED" },
            if self.report_written {
                "written"
            } else {
                "MISSING"
            }
        ));
        s.push_str(&format!(
            "      /metrics scrapes ok {} failed {}; RSS (MiB) ",
            self.scrapes_ok, self.scrapes_failed
        ));
        let step = (self.rss_kib.len() / 10).max(1);
        for (t, kib) in self.rss_kib.iter().step_by(step) {
            s.push_str(&format!("{t:.0}s:{:.1} ", *kib as f64 / 1024.0));
        }
        s.push_str(&format!(
            "\n      RSS growth after warm-up {:+.1}%\n",
            self.rss_growth_pct()
        ));
        s
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn scrape(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Runs the soak.
pub fn run(o: &SoakOpts) -> Result<SoakResult> {
    let lib_dir = fake_lib_dir();
    let work = lib_dir.join(format!("soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let report = work.join("report.json");
    // About 1 ms of compute per step: launches per step set the per-rank call rate.
    let per_rank = (o.rate / o.ranks.max(1) as u64).max(1000);
    let launches = (per_rank / 1000).saturating_sub(1).max(1);
    let ranks = o.ranks.to_string();
    let launches = launches.to_string();
    let mut job = Job::start(
        &lib_dir,
        &[
            "--ranks",
            &ranks,
            "--forever",
            "--warmup",
            "2",
            "--compute-us",
            "1000",
            "--launches",
            &launches,
            "--collective",
            "allreduce:16K",
        ],
    )?;
    let port = free_port()?;
    let mut cmd = std::process::Command::new(built("llmdd"));
    cmd.arg("attach");
    for p in &job.pids {
        cmd.args(["--pid", &p.to_string()]);
    }
    cmd.args(["--no-tui", "--quiet", "--overhead-budget", "off"])
        .arg("--prometheus")
        .arg(port.to_string())
        .arg("--report")
        .arg(&report);
    let mut l = Proc::spawn("llmdd", cmd)?;
    l.wait_line("tracing", Duration::from_secs(60), |s, x| {
        s == Stream::Stderr && x.starts_with("llmdd: tracing")
    })?;
    job.go()?;
    let start = Instant::now();
    let mut r = SoakResult::default();
    let mut next = start;
    while start.elapsed() < o.duration {
        // Wake at each sample time (the job and llmdd run meanwhile; nothing to wait on).
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += o.sample_every;
        if let Some(kib) = rss_kib(l.pid()) {
            r.rss_kib.push((start.elapsed().as_secs_f64(), kib));
        } else {
            bail!(
                "llmdd is gone after {:.0} s:\n{}",
                start.elapsed().as_secs_f64(),
                l.transcript()
            );
        }
        match scrape(port) {
            Ok(body) if body.contains("llmdd_") => r.scrapes_ok += 1,
            _ => r.scrapes_failed += 1,
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    l.signal(libc::SIGTERM)?;
    let status = l.wait_exit(Duration::from_secs(120))?;
    r.exit_ok = status.success();
    job.proc.signal(libc::SIGTERM).ok();
    let _ = job.proc.wait_exit(Duration::from_secs(60));
    if let Ok(text) = std::fs::read_to_string(&report) {
        let doc: Value = serde_json::from_str(&text).context("the report is JSON")?;
        r.report_written = true;
        r.events_received = doc["events"]["received"].as_u64().unwrap_or(0);
        r.events_lost = doc["events"]["lost"].as_u64().unwrap_or(0);
    }
    Ok(r)
}
