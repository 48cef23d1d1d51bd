//! Finding the built binaries and fixtures, and driving processes line by line: start a
//! process, wait for a line it prints, send it a line, stop it with a signal. Waiting is
//! always for an event (a line, an exit), never a sleep.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

/// The cargo target directory holding the debug build.
pub fn build_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("debug")
}

/// A built artefact of the workspace; panics with the remedy when it is missing.
pub fn built(name: &str) -> PathBuf {
    let p = build_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`; `cargo xtask test` does it)",
        p.display()
    );
    p
}

/// Whether this process runs as root (integration tests that load BPF need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Panics with a clear message when not root: the probe path cannot be tested otherwise,
/// and a silently skipped test would claim a coverage it does not have.
pub fn require_root() {
    assert!(
        is_root(),
        "this integration test loads BPF programs and must run as root (sudo cargo xtask test)"
    );
}

/// A directory holding the fake libraries under their real sonames (libnccl.so.2,
/// libcudart.so.12, libcuda.so.1), private to this test process.
/// Staged once per test process, however many tests ask at once.
pub fn fake_lib_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = build_dir()
            .join("fixture-libs")
            .join(std::process::id().to_string());
        simjob::fixture::stage_libs(&dir)
            .unwrap_or_else(|e| panic!("staging the fake libraries: {e:#}"));
        dir
    })
    .clone()
}

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A child process whose output is read line by line on background threads.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Stream, String)>,
    /// Every line seen so far, in arrival order.
    pub seen: Vec<(Stream, String)>,
}

impl Proc {
    /// Starts `cmd` with piped stdin/stdout/stderr.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().context("no stdout")?;
        let err = child.stderr.take().context("no stderr")?;
        for (stream, reader) in [
            (
                Stream::Stdout,
                Box::new(out) as Box<dyn std::io::Read + Send>,
            ),
            (
                Stream::Stderr,
                Box::new(err) as Box<dyn std::io::Read + Send>,
            ),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(reader).lines().map_while(Result::ok) {
                    if tx.send((stream, line)).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Proc {
            name: name.to_string(),
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line satisfying `pred` (a generous deadline guards against hangs only; it
    /// is not a timing assertion).
    pub fn wait_line(
        &mut self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(Stream, &str) -> bool,
    ) -> Result<String> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((stream, line)) => {
                    self.seen.push((stream, line.clone()));
                    if pred(stream, &line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{}: no {what} within {deadline:?}; output so far:\n{}",
                        self.name,
                        self.transcript()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{}: exited ({status:?}) before {what}; output:\n{}",
                        self.name,
                        self.transcript()
                    )
                }
            }
        }
    }

    /// Sends one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: stdin closed", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to {}", self.name))
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) -> Result<()> {
        // SAFETY: plain kill(2) on our own child.
        if unsafe { libc::kill(self.child.id() as i32, sig) } != 0 {
            bail!(
                "kill({}, {sig}): {}",
                self.child.id(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Waits for the child to exit (bounded by `deadline`), collecting all remaining output.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        drop(self.stdin.take());
        let end = Instant::now() + deadline;
        loop {
            match self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(l) => self.seen.push(l),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    bail!(
                        "{}: did not exit within {deadline:?}; output:\n{}",
                        self.name,
                        self.transcript()
                    )
                }
            }
        }
        self.child
            .wait()
            .with_context(|| format!("waiting for {}", self.name))
    }

    /// All lines of one stream.
    pub fn lines_of(&self, stream: Stream) -> Vec<&str> {
        self.seen
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.as_str())
            .collect()
    }

    /// Everything seen, for failure messages.
    pub fn transcript(&self) -> String {
        self.seen
            .iter()
            .map(|(s, l)| format!("{}{l}", if *s == Stream::Stderr { "[err] " } else { "" }))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `llmdd attach` on `pids` with extra args, and waits until it says it is tracing.
pub fn start_llmdd(pids: &[u32], extra: &[&str]) -> Result<Proc> {
    start_llmdd_with(&built("llmdd"), pids, extra)
}

/// [`start_llmdd`] with another llmdd binary (the benchmark measures the release build).
pub fn start_llmdd_with(bin: &Path, pids: &[u32], extra: &[&str]) -> Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.arg("attach");
    for p in pids {
        cmd.arg("--pid").arg(p.to_string());
    }
    cmd.args(extra);
    let mut p = Proc::spawn("llmdd", cmd)?;
    p.wait_line("'tracing' line", Duration::from_secs(60), |s, l| {
        s == Stream::Stderr && l.starts_with("llmdd: tracing")
    })?;
    Ok(p)
}

/// Starts `llmdd record -o FILE --quiet` on `pids` with extra args, and waits until it says
/// it is recording.
pub fn start_record(pids: &[u32], file: &Path, extra: &[&str]) -> Result<Proc> {
    let mut cmd = Command::new(built("llmdd"));
    cmd.arg("record").arg("-o").arg(file).arg("--quiet");
    for p in pids {
        cmd.args(["--pid", &p.to_string()]);
    }
    cmd.args(extra);
    let mut p = Proc::spawn("llmdd record", cmd)?;
    p.wait_line("recording line", Duration::from_secs(60), |s, l| {
        s == Stream::Stderr && l.starts_with("llmdd: recording to")
    })?;
    Ok(p)
}

/// Reads a JSON-lines event dump written by `llmdd attach --dump-events`.
pub fn read_events(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad JSON line: {l}")))
        .collect()
}

/// The `calls` column of the last summary row of `func` printed by llmdd `l` (of `pid` when
/// given): the final summary's, once llmdd has exited.
pub fn summary_calls(l: &Proc, pid: Option<u32>, func: &str) -> Option<String> {
    l.lines_of(Stream::Stdout)
        .iter()
        .rfind(|x| {
            let mut w = x.split_whitespace();
            let p = w.next();
            w.next() == Some(func) && pid.is_none_or(|pid| p == Some(pid.to_string().as_str()))
        })
        .and_then(|x| x.split_whitespace().nth(2))
        .map(str::to_string)
}

/// Starts the `callloop` target over `libs` and waits for its READY line.
pub fn start_callloop(libs: &[PathBuf]) -> Result<Proc> {
    let mut cmd = Command::new(built("callloop"));
    cmd.args(libs);
    let mut lp = Proc::spawn("callloop", cmd)?;
    lp.wait_line("READY", Duration::from_secs(30), |s, l| {
        s == Stream::Stdout && l == "READY"
    })?;
    Ok(lp)
}

/// Sends one command to a `callloop` and waits for its `ns_per_call X` line; returns X.
pub fn loop_cmd(lp: &mut Proc, cmd: &str) -> Result<f64> {
    lp.send_line(cmd)?;
    let line = lp.wait_line("ns_per_call", Duration::from_secs(600), |s, l| {
        s == Stream::Stdout && l.starts_with("ns_per_call")
    })?;
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("an ns_per_call value")
}

/// What in `doc` breaks the shipped report schema (`docs/report.schema.json`), one line
/// each; empty when it validates.
pub fn schema_errors(doc: &serde_json::Value) -> Result<Vec<String>> {
    let path = workspace_root().join("docs/report.schema.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let schema: serde_json::Value = serde_json::from_str(&text).context("the schema is JSON")?;
    let v = jsonschema::validator_for(&schema).map_err(|e| anyhow!("schema: {e}"))?;
    Ok(v.iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect())
}
