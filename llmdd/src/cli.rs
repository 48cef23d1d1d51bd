//! Command-line definitions (clap) and argument parsing helpers. Nothing here does work.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "llmdd",
    version,
    about = "llm-d diagnostics: trace running NCCL/CUDA inference processes with eBPF, no restart",
    long_about = "llm-d diagnostics: attach eBPF probes to running vLLM / llm-d processes \
        (libnccl, libcudart, libcuda, kernel socket tracepoints) without restarting them, \
        and report what each rank is doing.\n\n\
        Run as root (or with CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE). Start with \
        `llmdd doctor` to check the kernel and list the processes that can be traced.",
    after_help = "Examples:\n  \
        sudo llmdd doctor\n  \
        sudo llmdd attach --all --duration 30s\n  \
        sudo llmdd attach --pid 4242 --pid 4243 --dump-events events.jsonl"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to running processes and trace them until Ctrl-C, SIGTERM, --duration, or
    /// until every target has exited.
    Attach(AttachArgs),
    /// Check that this machine can run llmdd (privileges, BTF, uprobes, tracefs, ring
    /// buffers, the BPF object itself) and list the processes that can be traced.
    Doctor,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("targets").required(true).args(["pids", "all"])))]
pub struct AttachArgs {
    /// Process to trace (repeatable). Its NCCL/RCCL, CUDA runtime and CUDA driver libraries
    /// are found in /proc/PID/maps.
    #[arg(long = "pid", short = 'p', value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trace every process that maps libnccl, librccl, libcudart or libcuda.
    #[arg(long, conflicts_with = "pids")]
    pub all: bool,
    /// Stop after this long: plain seconds (`5`) or with a unit (`500ms`, `5s`, `2m`, `1h`).
    #[arg(long, short = 'd', value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Seconds between live summary blocks.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Also write every decoded event as one JSON object per line to FILE.
    #[arg(long, value_name = "FILE")]
    pub dump_events: Option<PathBuf>,
    /// Write a JSON report (findings with their evidence, communicators, per-op statistics,
    /// requests, memory, links) to FILE when tracing stops, also on SIGTERM. Checked for
    /// writability before attaching.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print only the final summary, not the periodic blocks.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Parses `5`, `5s`, `250ms`, `2m`, `1h` (also fractional, `1.5s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 5, 5s, 250ms, 2m, 1h"))?;
    let scale = match unit {
        "ms" => 1e-3,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`: use ms, s, m or h")),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("`{s}` must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
