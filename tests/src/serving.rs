//! The real serving stack vLLM's API server runs on (Starlette on uvicorn, from PyPI, in
//! `target/tools/serving-venv`): start the fixture server (`tests/fixtures/serving/app.py`)
//! and stream completions from it with the fixture client, which measures TTFT and
//! inter-token gaps as a client sees them.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::harness::{workspace_root, Proc, Stream};

/// The serving stack's Python.
pub fn python() -> Result<PathBuf> {
    let p = workspace_root().join("target/tools/serving-venv/bin/python");
    if !p.exists() {
        bail!(
            "{} is missing: `cargo xtask setup` installs the serving stack",
            p.display()
        );
    }
    Ok(p)
}

fn fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/serving").join(name)
}

/// A running server.
pub struct Server {
    pub proc: Proc,
    pub pid: u32,
    pub port: u16,
}

/// What the server does: uvicorn's HTTP implementation (`h11`, `httptools`) and event loop
/// (`asyncio`, `uvloop`), delay to the first token and between tokens.
#[derive(Clone, Copy, Debug)]
pub struct ServerSpec {
    pub http: &'static str,
    pub event_loop: &'static str,
    pub ttft_ms: u64,
    pub itl_ms: u64,
}

/// Starts the server on a free port and waits until it listens.
pub fn start(s: ServerSpec) -> Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .context("finding a free port")?;
    let mut cmd = Command::new(python()?);
    cmd.arg(fixture("app.py")).args([
        port.to_string(),
        s.ttft_ms.to_string(),
        s.itl_ms.to_string(),
        "16".into(),
        s.http.into(),
        s.event_loop.into(),
    ]);
    let mut proc = Proc::spawn("uvicorn", cmd)?;
    let ready = proc.wait_line("READY", Duration::from_secs(60), |s, l| {
        s == Stream::Stdout && l.starts_with("READY")
    })?;
    let pid = ready
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .context("READY <pid> <port>")?;
    Ok(Server { proc, pid, port })
}

/// What the client measured, in milliseconds: per request its TTFT, and every gap between
/// consecutive tokens.
pub struct ClientTruth {
    pub ttft_ms: Vec<f64>,
    pub itl_ms: Vec<f64>,
}

/// Streams `requests` completions of `max_tokens` tokens, `concurrency` at a time.
pub fn client(port: u16, requests: u32, concurrency: u32, max_tokens: u32) -> Result<ClientTruth> {
    let out = Command::new(python()?)
        .arg(fixture("client.py"))
        .args([
            port.to_string(),
            requests.to_string(),
            concurrency.to_string(),
            max_tokens.to_string(),
        ])
        .output()
        .context("running the client")?;
    if !out.status.success() {
        bail!("client failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("client JSON")?;
    let nums = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect()
    };
    Ok(ClientTruth {
        ttft_ms: nums("ttft_ms"),
        itl_ms: nums("itl_ms"),
    })
}

/// The median of `v` (0 for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
