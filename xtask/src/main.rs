//! Project automation: `cargo xtask <setup|build|demo|test|bench|soak|accuracy|gloo-test>`.
//!
//! - `setup`: idempotent bootstrap of what building and testing need on a fresh machine
//!   (Debian's BPF-capable rustc and LLVM, bpf-linker, a mounted tracefs, and the tools of
//!   the end-to-end tests: tmux, Open MPI, chromium and speedscope).
//! - `build`: `cargo build` of the whole workspace (llmdd's build.rs builds the eBPF object).
//! - `demo`: run a simulated 4-rank job with a straggler and attach llmdd to it.
//! - `test`: formatting, lints, and every test (unit and root-only integration tests).
//! - `bench`, `soak`, `accuracy`: measurements, not tests.
//! - `gloo-test`: only the Gloo tests on the real PyTorch releases.
//!
//! Every command that needs the toolchain runs `setup` first; it does nothing when all is
//! in place.

mod setup;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "llmdd project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the BPF toolchain and mount tracefs when missing (idempotent; needs root).
    Setup,
    /// Build the whole workspace, including the embedded eBPF object.
    Build,
    /// Run a simulated 4-rank job with an injected straggler and trace it with llmdd.
    Demo {
        /// How long llmdd traces the job.
        #[arg(long, default_value = "10s")]
        duration: String,
    },
    /// Measure the cost llmdd adds per traced call against the uprobe floor and bpftrace
    /// (same process, same run), then the analysis engine's throughput. Not a test.
    Bench {
        /// Calls per round and case.
        #[arg(long, default_value = "200000")]
        calls: u64,
        /// Rounds per case (the median is reported).
        #[arg(long, default_value = "5")]
        rounds: u64,
        /// Events fed to the engine benchmark.
        #[arg(long, default_value = "10000000")]
        engine_events: u64,
    },
    /// Soak llmdd: N simulated ranks at a traced-call rate for a while, Prometheus on;
    /// checks no crash, /metrics served, report written, memory flat (not a test: minutes).
    Soak {
        /// Seconds to run.
        #[arg(long, default_value = "600")]
        duration: u64,
        /// Simulated ranks.
        #[arg(long, default_value = "8")]
        ranks: u64,
        /// Traced calls per second, all ranks together.
        #[arg(long, default_value = "50000")]
        rate: u64,
    },
    /// The accuracy matrix: simulated jobs of many shapes with a known fault (or none), the
    /// real Open MPI job attached mid-run (repeated), the real uvicorn serving stack, traced
    /// by llmdd as users run it (release build); prints one table of expected and named
    /// culprits, magnitude errors, false findings and time to finding. Not a test: minutes.
    Accuracy {
        /// Seed of the matrix's parameters (default: the time; printed, to rerun a matrix).
        #[arg(long)]
        seed: Option<u64>,
        /// Runs of the Open MPI case.
        #[arg(long, default_value = "5")]
        mpi_repeats: u32,
        /// Only the part of the matrix CI runs.
        #[arg(long)]
        quick: bool,
        /// Only the scenarios whose name contains this.
        #[arg(long)]
        only: Option<String>,
        /// Also write the table as Markdown to this file (for the README).
        #[arg(long)]
        markdown: Option<String>,
    },
    /// Only the Gloo tests on the real PyTorch (tests/tests/gloo_straggler.rs), on the
    /// pinned 2.5.1 and the current 2.15.0 (setup fetches both from PyPI once: about 6 GB
    /// to download, 9 GB installed under target/tools; `test` runs them too).
    GlooTest,
    /// Run formatting and lint checks and the whole test suite (as root).
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for the test binaries (after `--`).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
}

/// `cargo run` of one of the tests crate's binaries (demo, bench, soak) with `args`.
fn run_tests_bin(bin: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["run", "--quiet", "-p", "llmdd-tests", "--bin", bin, "--"];
    all.extend_from_slice(args);
    cargo(&all)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Setup => {
            setup::ensure()?;
            setup::ensure_torches()
        }
        Cmd::Build => {
            setup::ensure()?;
            cargo(&["build", "--workspace"])
        }
        Cmd::Demo { duration } => {
            setup::ensure()?;
            cargo(&["build", "--workspace"])?;
            run_tests_bin("demo", &["--duration", &duration])
        }
        Cmd::Bench {
            calls,
            rounds,
            engine_events,
        } => {
            setup::ensure()?;
            setup::ensure_bpftrace()?;
            cargo(&["build", "--workspace"])?;
            // The daemon as users run it: the release build.
            cargo(&["build", "--release", "-p", "llmdd"])?;
            let release = setup::workspace_root().join("target/release/llmdd");
            // SAFETY: setting an environment variable before spawning children, single-threaded.
            unsafe { std::env::set_var("LLMDD_BIN", &release) };
            run_tests_bin(
                "bench",
                &[
                    "--calls",
                    &calls.to_string(),
                    "--rounds",
                    &rounds.to_string(),
                ],
            )?;
            // SAFETY: setting an environment variable before spawning children, single-threaded.
            unsafe { std::env::set_var("LLMDD_BENCH_EVENTS", engine_events.to_string()) };
            cargo(&["bench", "-p", "llmdd", "--bench", "engine"])
        }
        Cmd::Soak {
            duration,
            ranks,
            rate,
        } => {
            setup::ensure()?;
            cargo(&["build", "--workspace"])?;
            run_tests_bin(
                "soak",
                &[
                    "--duration",
                    &duration.to_string(),
                    "--ranks",
                    &ranks.to_string(),
                    "--rate",
                    &rate.to_string(),
                ],
            )
        }
        Cmd::Accuracy {
            seed,
            mpi_repeats,
            quick,
            only,
            markdown,
        } => {
            setup::ensure()?;
            cargo(&["build", "--workspace"])?;
            cargo(&["build", "--release", "-p", "llmdd"])?;
            let release = setup::workspace_root().join("target/release/llmdd");
            // SAFETY: setting an environment variable before spawning children, single-threaded.
            unsafe { std::env::set_var("LLMDD_BIN", &release) };
            let mut args: Vec<String> = vec!["--mpi-repeats".into(), mpi_repeats.to_string()];
            if let Some(s) = seed {
                args.extend(["--seed".into(), s.to_string()]);
            }
            if quick {
                args.push("--quick".into());
            }
            if let Some(o) = only {
                args.extend(["--only".into(), o]);
            }
            if let Some(m) = markdown {
                let path = std::path::Path::new(&m);
                let abs = if path.is_absolute() {
                    path.to_path_buf()
                } else {
                    std::env::current_dir()?.join(path)
                };
                args.extend(["--markdown".into(), abs.to_string_lossy().into_owned()]);
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run_tests_bin("accuracy", &refs)
        }
        Cmd::GlooTest => {
            setup::ensure()?;
            setup::ensure_torches()?;
            cargo(&["build", "--workspace"])?;
            cargo_test(&[
                "test",
                "-p",
                "llmdd-tests",
                "--test",
                "gloo_straggler",
                "--",
                "--nocapture",
            ])
        }
        Cmd::Test { no_lint, test_args } => {
            setup::ensure()?;
            // PyTorch (two releases, several GB) downloads and unpacks while the code is
            // linted and built: it is network and disk, the build is CPU.
            let torch = std::thread::spawn(setup::ensure_torches);
            if !no_lint {
                cargo(&["fmt", "--all", "--check"])
                    .context("formatting differs: run `cargo fmt --all`")?;
                cargo(&[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])?;
                let cycles = Command::new("python3")
                    .arg("scripts/module-cycles.py")
                    .current_dir(setup::workspace_root())
                    .status()
                    .context("running scripts/module-cycles.py")?;
                if !cycles.success() {
                    bail!("llmdd's modules import each other in a circle (listed above)");
                }
            }
            cargo(&["build", "--workspace"])?;
            torch
                .join()
                .map_err(|_| anyhow::anyhow!("the PyTorch install panicked"))??;
            let mut args = vec!["test", "--workspace", "--no-fail-fast", "--"];
            args.extend(test_args.iter().map(String::as_str));
            cargo_test(&args)
        }
    }
}

/// Runs `cargo test`, echoing its output, and closes with one line totalling every test
/// binary's result (cargo's own last line is that of whichever binary ran last).
fn cargo_test(args: &[&str]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(setup::workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let out = child.stdout.take().context("cargo test has no stdout")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(out).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// Runs cargo with `args` in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(setup::workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
