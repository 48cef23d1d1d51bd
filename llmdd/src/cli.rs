//! Command-line definitions (clap) and argument parsing helpers. Nothing here does work.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use crate::values::{parse_bytes, parse_duration, MAX_DURATION_S};

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
        sudo llmdd top\n  \
        sudo llmdd attach --pid 4242 --pid 4243 --dump-events events.jsonl\n  \
        sudo llmdd attach --all --no-tui --report report.json --prometheus 9400\n  \
        sudo llmdd attach --all --duration 30s --trace trace.json --flamegraph calls.svg"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    pub log: String,
    /// Configuration file (thresholds, intervals, probe modes, budget, output defaults;
    /// docs/config.md). Default: /etc/llmdd/llmdd.toml when it exists. Flags given on the
    /// command line win over it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one configuration key (repeatable), e.g. `--set
    /// thresholds.stall_threshold=5s`; wins over the file.
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to running processes and trace them until Ctrl-C, SIGTERM, --duration, `q` in
    /// the live view, or until every target has exited.
    Attach(AttachArgs),
    /// `attach --all` with the live terminal view: every process mapping NCCL/RCCL/CUDA
    /// libraries, traced until `q`, Ctrl-C or SIGTERM.
    Top(TopArgs),
    /// Record what the probes deliver to a file for later analysis (`llmdd report`), on
    /// every node of a job during an incident: `llmdd record --all --duration 60s -o
    /// node1.rec`. Raw probe records plus host, kernel, boot id, clock offsets and the
    /// attached processes; crash-safe (checksummed chunks, each flushed) and mode 0600.
    Record(RecordArgs),
    /// Analyse record files offline with the same engine and views as `attach`: one file,
    /// or one per node of a job (their clocks are aligned from the data and their ranks
    /// merged into one job view). A damaged file gives what could be salvaged and says so.
    Report(ReportArgs),
    /// Write every event of a record file as one JSON object per line (for DuckDB, pandas,
    /// jq): `llmdd export node1.rec -o events.jsonl`. Columns: docs/record.md.
    Export(ExportArgs),
    /// Compare two JSON reports or record files (a healthy baseline, the current run): per communicator
    /// size, op and message size, the change of p50/p99 latency, arrival skew and bus
    /// bandwidth, new and vanished findings, and a verdict line. Exit code 0: no
    /// regression beyond --threshold; 3: a regression (so it can gate a rollout); 1: the
    /// reports could not be read.
    Diff(DiffArgs),
    /// Check or show a configuration file: `llmdd config check llmdd.toml` (points at the
    /// line of any error; exit 1), `llmdd config show` (the effective settings).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check that this machine can run llmdd (privileges, BTF, uprobes, tracefs, ring
    /// buffers, the BPF object itself) and list the processes that can be traced.
    Doctor,
    /// Print a shell completion script for SHELL to stdout (e.g. `llmdd completions bash >
    /// /etc/bash_completion.d/llmdd`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the llmdd(1) man page (roff) to stdout (e.g. `llmdd man | man -l -`).
    Man,
    /// Load the local GPUs with NCCL collectives over a sweep of message sizes (like
    /// nccl-tests): time, algorithm and bus bandwidth per size, where bandwidth stops
    /// growing and latency jumps, and optionally a baseline for `llmdd diff`. One process per
    /// GPU, so `llmdd attach` can trace it as a real job; `--delay-rank` makes one rank late.
    /// Needs an NVIDIA driver, GPUs and NCCL (opened at run time; a clear error without).
    Loadgen(crate::loadgen::LoadgenArgs),
    /// One rank of `llmdd loadgen` (started by it).
    #[command(hide = true)]
    LoadgenWorker,
    /// Ask a running NCCL job's RAS service (NCCL 2.24+) for its communicators, ranks and
    /// missing ranks, and print them (`--json`: its JSON report as it is). Exit 1 when no
    /// service answers.
    Ras {
        /// HOST:PORT of the service (NCCL_RAS_ADDR of the job; localhost:28028 by default).
        #[arg(long, default_value = crate::ras::DEFAULT_ADDR)]
        addr: String,
        /// Print the service's JSON report instead of the summary.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("targets").required(true).multiple(true).args(["pids", "all", "fronts", "follow"])))]
pub struct AttachArgs {
    /// Process to trace (repeatable). Its NCCL/RCCL, CUDA runtime and CUDA driver libraries
    /// are found in /proc/PID/maps.
    #[arg(long = "pid", short = 'p', value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trace every process that maps libnccl, librccl, libcudart or libcuda: those running
    /// now and those that start, or load one, later (looked for every 100 ms; a process
    /// without one is looked at again each second for a minute). Tracing goes on when none
    /// is left, until --duration or Ctrl-C.
    #[arg(long, conflicts_with = "pids")]
    pub all: bool,
    /// A serving front process (the HTTP server in front of the ranks; repeatable). Its
    /// sockets are traced for per-request time to first token and inter-token latency; it
    /// needs no GPU library (its calls are traced too if it maps one).
    #[arg(long = "front", value_name = "PID")]
    pub fronts: Vec<u32>,
    /// Trace every process whose command name is NAME (as in /proc/PID/comm or `ps -o
    /// comm`; repeatable), also ones that start or restart after llmdd: a restarted worker
    /// (new pid, same command) is attached again. Tracing then goes on until stopped even
    /// when no such process runs.
    #[arg(long, value_name = "NAME")]
    pub follow: Vec<String>,
    /// Also trace the children of traced processes, forked or exec'd, now and later (and
    /// theirs): attach to a launcher (`--pid LAUNCHER --children`) to trace its workers. A
    /// --pid that maps no supported library is then accepted as a launcher.
    #[arg(long)]
    pub children: bool,
    /// Print only the final summary, not the periodic blocks (plain output only).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Never show the live terminal view: print the plain periodic summary instead (also
    /// the behaviour whenever stdout is not a terminal).
    #[arg(long)]
    pub no_tui: bool,
    #[command(flatten)]
    pub run: RunArgs,
    /// Record to this file as well (set by `llmdd record`).
    #[arg(skip)]
    pub record: Option<PathBuf>,
}

/// `llmdd record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The record file to write (created with mode 0600; checked before attaching).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub attach: AttachArgs,
}

impl RecordArgs {
    /// The equivalent `attach` invocation: plain output, recording to the file.
    pub fn into_attach(self) -> AttachArgs {
        AttachArgs {
            no_tui: true,
            record: Some(self.output),
            ..self.attach
        }
    }
}

/// `llmdd report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Record files written by `llmdd record`: one, or one per node of a job.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Write the versioned JSON report (docs/report.schema.json) to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write a Chrome trace-event JSON timeline (ui.perfetto.dev) to FILE.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Most call slices kept in the --trace file.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub trace_max_slices: u64,
    /// Write a flame graph SVG of the time inside traced calls to FILE.
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<PathBuf>,
    /// Also write every event as JSON lines to FILE (as `attach --dump-events`).
    #[arg(long, value_name = "FILE")]
    pub dump_events: Option<PathBuf>,
    /// Print the plain summary (the live terminal view is not available offline yet; this
    /// is what `report` prints in any case).
    #[arg(long)]
    pub no_tui: bool,
    /// The analysis thresholds (from the configuration file and `--set`).
    #[arg(skip)]
    pub engine_config: Option<crate::engine::Config>,
}

/// `llmdd config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE: unknown keys, wrong types and bad values are errors with the line.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the settings of FILE (or of --config / the default file) as TOML.
    Show {
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

/// `llmdd diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The healthy run: a JSON report (`--report` of attach or report) or a record file.
    #[arg(value_name = "BASELINE")]
    pub baseline: PathBuf,
    /// The run to judge: a JSON report or a record file.
    #[arg(value_name = "CURRENT")]
    pub current: PathBuf,
    /// Smallest change, in percent, that counts as a regression.
    #[arg(long, default_value_t = 10.0, value_name = "PCT")]
    pub threshold: f64,
}

/// `llmdd export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The record file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Output format: jsonl (one JSON object per event).
    #[arg(long, default_value = "jsonl", value_parser = ["jsonl"])]
    pub format: String,
    /// Where to write (created 0600).
    #[arg(long, short = 'o', value_name = "OUT")]
    pub output: PathBuf,
}

/// `llmdd top`: the targets are every traceable process and the view is the live one.
#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

impl TopArgs {
    /// The equivalent `attach` invocation.
    pub fn into_attach(self) -> AttachArgs {
        AttachArgs {
            pids: Vec::new(),
            all: true,
            fronts: Vec::new(),
            follow: Vec::new(),
            children: false,
            quiet: false,
            no_tui: false,
            run: self.run,
            record: None,
        }
    }
}

/// What `attach` and `top` share: how long, how often, and which outputs.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Never stop a traced thread. At attach (and while a job looks stuck) llmdd reads
    /// where each traced thread is, to find a job that was already hung before the probes
    /// existed; a thread that is running (busy-polling) is stopped with ptrace for a few
    /// microseconds to read its registers. With this flag such threads are left unread.
    #[arg(long)]
    pub no_ptrace: bool,
    /// Stop after this long: plain seconds (`5`) or with a unit (`500ms`, `5s`, `2m`, `1h`).
    #[arg(long, short = 'd', value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Time between live summary blocks (plain output) or between refreshes of the
    /// aggregated figures (live view).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Also write every decoded event as one JSON object per line to FILE.
    #[arg(long, value_name = "FILE")]
    pub dump_events: Option<PathBuf>,
    /// Write a versioned JSON report (docs/report.schema.json: host, attached processes and
    /// their libraries, calls and return codes per function, events received and lost,
    /// communicators, per-op statistics, requests, findings) to FILE when tracing stops,
    /// also on SIGTERM. Checked for writability before attaching.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Serve Prometheus metrics on http://[ADDR:]PORT/metrics while tracing (127.0.0.1
    /// unless an address is given). The port is bound before attaching.
    #[arg(long, value_parser = parse_listen, value_name = "[ADDR:]PORT")]
    pub prometheus: Option<SocketAddr>,
    /// Write a Chrome trace-event JSON timeline (open it in ui.perfetto.dev or
    /// chrome://tracing) to FILE when tracing stops: a track per process and thread, calls
    /// as slices, requests as async slices, findings as instants, flow arrows between the
    /// ranks of each matched collective.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Most call slices kept in the --trace file (later calls are counted, not written; the
    /// file's metadata says so).
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub trace_max_slices: u64,
    /// Write a flame graph SVG of the time spent inside traced calls to FILE when tracing
    /// stops, folded by the callers' user stacks (see --stacks), else by
    /// process;thread;library;function;op. The title says which. A FILE ending in
    /// `.folded` gets the folded stacks as text instead (for speedscope or flamegraph.pl).
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<PathBuf>,
    /// Walk the caller's user stack at each traced call (the kernel follows frame
    /// pointers; code built without them gives short stacks) and name its frames from the
    /// process's symbol tables. `auto` (default): when --flamegraph is given. Costs about a
    /// microsecond per call; `cargo xtask bench` measures it.
    #[arg(long, value_enum, default_value_t = Stacks::Auto, value_name = "WHEN")]
    pub stacks: Stacks,
    /// Probe any function of a library the targets map (repeatable), as
    /// LIBRARY:SYMBOL[,arg=N]...[,ret][,label=NAME][,offset=N][,collective].
    /// LIBRARY: a path, file name or file-name prefix (libfoo.so). SYMBOL: a C name, a
    /// mangled name or a demangled C++ name (sched::Scheduler::step, parameters optional).
    /// arg=N records integer/pointer argument N (0-8; a method's 0 is `this`), ret the return
    /// value; label names it in every view (default: the symbol's last two name parts);
    /// offset=N probes N bytes into the function (entry only: no duration); collective
    /// matches its calls across ranks like a collective (ranks from RANK/WORLD_SIZE).
    /// Example: --probe 'libvllm_C.so:vllm::custom_all_reduce,arg=3,label=car'
    #[arg(long = "probe", value_name = "SPEC", value_parser = parse_user_probe)]
    pub user_probes: Vec<crate::userprobe::UserProbe>,
    /// Ask NCCL's RAS service (NCCL 2.24+, in every NCCL process) for its view of the job:
    /// at attach and while a job looks stuck (a rank it cannot reach, or one behind its
    /// peers in collective counts for a second or more, is a finding), and when tracing
    /// stops (printed after every file is written, with what agrees: membership and
    /// missing ranks). `auto` (default): when a traced NCCL is 2.24 or later, at the port its
    /// NCCL_RAS_ADDR names (else 28028), and only when a traced process in llmdd's own
    /// network namespace holds that listener (no other local user can answer; a container's
    /// service is not dialled from outside it); `off`; or HOST:PORT, dialled as given. Each
    /// exchange has one deadline and answers are bounded to 16 MiB.
    #[arg(long, default_value = "auto", value_name = "auto|off|HOST:PORT")]
    pub ras: String,
    /// Trace one probe family in another mode (repeatable), as FAMILY=MODE. FAMILY: nccl,
    /// cudart, cuda (and every other family `llmdd doctor` lists). MODE: `full` (default:
    /// one record per call with duration, return code and out-values), `entry` (one record
    /// at entry and no return probe: no duration or return code) or
    /// `aggregate` (no per-call records: counts, errors and log2 latency histograms per
    /// process, function and size bucket kept in the kernel and read every --interval; the
    /// cheapest, for hot calls such as kernel launches and copies). Keep collectives `full`:
    /// matching them across ranks needs every record. Example: --mode cuda=aggregate
    #[arg(long = "mode", value_parser = parse_family_mode, value_name = "FAMILY=MODE")]
    pub modes: Vec<(llmdd_common::funcs::Family, crate::probe::Mode)>,
    /// Most of each traced thread's time the probes should cost, in percent (`1`, `0.5%`),
    /// or `off` (every call of every probe traced in full, nothing measured). The cost of
    /// one traced call is measured at start, and every 2 s each thread's traced calls are
    /// costed: a thread over the budget is named, with its share, in a warning and the
    /// summary, and (see --enforce-budget) its hot probes are duty-cycled. The report's
    /// `overhead` section gives each thread's estimated slowdown with its range.
    /// Example: --overhead-budget 0.5%
    #[arg(long, default_value = "1%", value_parser = parse_budget, value_name = "PCT|off")]
    pub overhead_budget: OverheadBudget,
    /// Hold the --overhead-budget (on by default) by duty-cycling the probes of hot calls
    /// (kernel launches, copies, event records/queries, stream waits) in threads that make
    /// them faster than the budget affords: attached for part of every 2 s and their counts
    /// extrapolated, as the live view, the summary and the report say; collectives,
    /// communicator setup, graph launches, syncs and allocations stay traced, and threads
    /// within the budget are traced in full. `--enforce-budget=false` only measures and
    /// warns; `--overhead-budget off` traces every call. Caution, measured: on kernels
    /// where removing a uprobe from a thread that keeps hitting it waits for a slow RCU
    /// grace period, the cycling itself can slow such a thread more than tracing it does
    /// (see the README's performance section); prefer --mode aggregate there.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        default_value_t = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        require_equals = true
    )]
    pub enforce_budget: bool,
    /// The analysis thresholds (from the configuration file and `--set`).
    #[arg(skip)]
    pub engine_config: Option<crate::engine::Config>,
    /// Size of the ring buffer that carries records from the probes to llmdd: a power of
    /// two from 4K (`4096`, `64K`, `8M`; default 8M). Records that find it full are counted
    /// as lost, shown, and no finding rests on the windows they fall in.
    #[arg(long, value_parser = parse_ring_size, value_name = "BYTES")]
    pub ring_size: Option<u32>,
}

/// Parses `--ring-size`: bytes with an optional K/M suffix, a power of two of at least 4 KiB
/// and at most 1 GiB.
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let bytes =
        parse_bytes(s).map_err(|_| format!("`{s}` is not a size: use e.g. 4096, 64K, 8M"))?;
    if !bytes.is_power_of_two() || !(4096..=(1 << 30)).contains(&bytes) {
        return Err(format!(
            "`{s}`: the ring buffer size must be a power of two between 4K and 1024M"
        ));
    }
    Ok(bytes as u32)
}

impl RunArgs {
    /// Every option at its default (what the flags' defaults give).
    pub fn defaults() -> RunArgs {
        RunArgs {
            duration: None,
            interval: Duration::from_secs(1),
            dump_events: None,
            report: None,
            prometheus: None,
            trace: None,
            trace_max_slices: 1_000_000,
            flamegraph: None,
            stacks: Stacks::Auto,
            user_probes: Vec::new(),
            ras: "auto".to_string(),
            modes: Vec::new(),
            overhead_budget: OverheadBudget(Some(0.01)),
            enforce_budget: true,
            engine_config: None,
            ring_size: None,
            no_ptrace: false,
        }
    }
}

/// `--overhead-budget`: a fraction of each traced thread's time, or none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OverheadBudget(pub Option<f64>);

/// Parses `1`, `1%`, `0.5%` or `off` for `--overhead-budget`.
pub fn parse_budget(s: &str) -> Result<OverheadBudget, String> {
    let t = s.trim();
    if t == "off" || t == "none" {
        return Ok(OverheadBudget(None));
    }
    let pct: f64 = t
        .strip_suffix('%')
        .unwrap_or(t)
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage: use e.g. 1, 0.5% or off"))?;
    if !(pct > 0.0 && pct <= 100.0) {
        return Err(format!(
            "`{s}` is out of range: a budget is above 0% and at most 100% (or `off`)"
        ));
    }
    Ok(OverheadBudget(Some(pct / 100.0)))
}

/// Parses `FAMILY=MODE` for `--mode`.
pub fn parse_family_mode(
    s: &str,
) -> Result<(llmdd_common::funcs::Family, crate::probe::Mode), String> {
    use llmdd_common::funcs::FUNCS;
    let Some((fam, mode)) = s.split_once('=') else {
        return Err(format!(
            "`{s}` is not FAMILY=MODE (e.g. cuda=aggregate, cudart=entry)"
        ));
    };
    let mut names: Vec<&str> = FUNCS.iter().map(|f| f.family.name()).collect();
    names.dedup();
    let family = FUNCS
        .iter()
        .map(|f| f.family)
        .find(|f| f.name() == fam.trim())
        .ok_or_else(|| {
            format!(
                "unknown probe family `{fam}` in `{s}`: use one of {}",
                names.join(", ")
            )
        })?;
    let mode = crate::probe::Mode::parse(mode.trim()).ok_or_else(|| {
        format!(
            "unknown mode `{mode}` in `{s}`: use one of {}",
            crate::probe::Mode::NAMES.join(", ")
        )
    })?;
    Ok((family, mode))
}

/// Parses `PORT`, `ADDR:PORT` or `[V6ADDR]:PORT`; a bare port listens on 127.0.0.1.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        if host == "localhost" {
            if let Ok(port) = port.parse::<u16>() {
                return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
            }
        }
    }
    Err(format!(
        "`{s}` is not a listen address: use PORT, ADDR:PORT or [V6ADDR]:PORT (e.g. 9400, 0.0.0.0:9400)"
    ))
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
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("1e400").is_err());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("9400"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9400)))
        );
        assert_eq!(
            parse_listen("0.0.0.0:9400"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 9400)))
        );
        assert_eq!(
            parse_listen("localhost:80"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 80)))
        );
        assert!(parse_listen("[::1]:9400").is_ok_and(|a| a.is_ipv6()));
        assert!(parse_listen("host:port").is_err());
        assert!(parse_listen("70000").is_err());
    }

    #[test]
    fn completions_and_man_page_are_generated_from_the_definitions() {
        use clap::CommandFactory;
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "llmdd", &mut out);
            let text = String::from_utf8_lossy(&out);
            for word in ["attach", "top", "doctor", "prometheus", "no-tui"] {
                assert!(text.contains(word), "{shell:?} completion lacks {word}");
            }
        }
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .expect("renders");
        let man = String::from_utf8_lossy(&man);
        assert!(man.starts_with(".ie") || man.contains(".TH llmdd"), "{man}");
        assert!(man.contains("attach") && man.contains("top"));
    }

    #[test]
    fn top_is_attach_all_with_the_live_view() {
        let cli = Cli::try_parse_from(["llmdd", "top", "--duration", "5s", "--report", "r.json"])
            .expect("parses");
        let Command::Top(t) = cli.command else {
            panic!("not top")
        };
        let a = t.into_attach();
        assert!(a.all && a.pids.is_empty() && !a.no_tui && !a.quiet);
        assert_eq!(a.run.duration, Some(Duration::from_secs(5)));
        assert!(Cli::try_parse_from(["llmdd", "top", "--pid", "1"]).is_err());
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert_eq!(parse_ring_size("64K"), Ok(65536));
        assert_eq!(parse_ring_size("8M"), Ok(8 << 20));
        assert!(parse_ring_size("5000").is_err());
        assert!(parse_ring_size("1K").is_err());
        assert!(parse_ring_size("big").is_err());
    }

    #[test]
    fn budgets() {
        assert_eq!(parse_budget("1%"), Ok(OverheadBudget(Some(0.01))));
        assert_eq!(parse_budget("0.5"), Ok(OverheadBudget(Some(0.005))));
        assert_eq!(parse_budget("off"), Ok(OverheadBudget(None)));
        assert!(parse_budget("0").is_err());
        assert!(parse_budget("150%").is_err());
        assert!(parse_budget("lots").is_err());
    }

    #[test]
    fn family_modes() {
        use crate::probe::Mode;
        use llmdd_common::funcs::Family;
        assert_eq!(
            parse_family_mode("cuda=aggregate"),
            Ok((Family::CudaDriver, Mode::Aggregate))
        );
        assert_eq!(
            parse_family_mode("cudart=entry"),
            Ok((Family::CudaRuntime, Mode::EntryOnly))
        );
        let e = parse_family_mode("gpu=full").unwrap_err();
        assert!(
            e.contains("unknown probe family `gpu`") && e.contains("nccl"),
            "{e}"
        );
        let e = parse_family_mode("nccl=fast").unwrap_err();
        assert!(e.contains("aggregate"), "{e}");
        assert!(parse_family_mode("nccl").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

/// `--probe SPEC`.
fn parse_user_probe(s: &str) -> Result<crate::userprobe::UserProbe, String> {
    crate::userprobe::parse(s).map_err(|e| e.to_string())
}

/// When user stacks are walked (`--stacks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Stacks {
    /// With --flamegraph.
    #[default]
    Auto,
    On,
    Off,
}

impl RunArgs {
    /// Whether user stacks are walked in this run.
    pub fn walks_stacks(&self) -> bool {
        match self.stacks {
            Stacks::Auto => self.flamegraph.is_some(),
            Stacks::On => true,
            Stacks::Off => false,
        }
    }
}

/// Every value parser over arbitrary text: an error or a value, never a panic.
#[cfg(test)]
mod parser_props {
    use super::*;
    use proptest::prelude::*;

    fn all(s: &str) {
        let _ = parse_duration(s);
        let _ = parse_bytes(s);
        let _ = parse_ring_size(s);
        let _ = parse_budget(s);
        let _ = parse_listen(s);
        let _ = parse_family_mode(s);
        let _ = parse_user_probe(s);
        let _ = crate::config_file::engine_config(&Default::default(), &[s.to_string()]);
        let _ = crate::config_file::parse(std::path::Path::new("llmdd.toml"), s);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_text(s in ".{0,48}") {
            all(&s);
        }

        #[test]
        fn number_shaped_text(s in "[0-9]{0,30}(\\.[0-9]{0,30})?(e[0-9]{1,4})?(ms|s|m|h|K|M|G|%)?") {
            all(&s);
            for key in ["stall_threshold", "straggler_min_lag", "max_series"] {
                let set = format!("thresholds.{key}={s}");
                let _ = crate::config_file::engine_config(&Default::default(), &[set]);
            }
            let _ = crate::config_file::parse(
                std::path::Path::new("llmdd.toml"),
                &format!("[intervals]\nrefresh = \"{s}\"\n[thresholds]\nstall_threshold = \"{s}\"\n"),
            );
        }
    }
}
