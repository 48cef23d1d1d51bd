//! `llmdd loadgen`: NCCL collectives across the local GPUs over a sweep of message sizes,
//! like nccl-tests, to find where bandwidth stops growing and latency jumps before a launch,
//! and to record a baseline `llmdd diff` understands. One worker process per GPU (each in
//! one communicator through `ncclCommInitRank`), so `llmdd attach` sees a real multi-rank
//! job; `--delay-rank R --delay-us N` makes one rank late on purpose.
//!
//! CUDA and NCCL are opened at run time (cudarc with dynamic loading): the binary runs
//! everywhere and says clearly what is missing where there is no driver, GPU or NCCL.
//! [`sweep`] is the pure part (sizes, bandwidths, inflections, baseline), [`worker`] the
//! GPU part.

pub mod sweep;
pub mod worker;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::values::parse_bytes;
use sweep::{Op, Point};

/// Environment variable carrying a worker's plan (JSON).
pub const PLAN_ENV: &str = "LLMDD_LOADGEN_PLAN";

#[derive(Debug, Args, Clone)]
pub struct LoadgenArgs {
    /// Collectives to run, comma-separated: allreduce, allgather, reducescatter, broadcast.
    #[arg(
        long,
        default_value = "allreduce,allgather,reducescatter",
        value_delimiter = ','
    )]
    pub ops: Vec<String>,
    /// Smallest message in bytes (K, M, G suffixes: 8, 64K, 1M).
    #[arg(long, default_value = "8", value_parser = parse_bytes)]
    pub min_bytes: u64,
    /// Largest message in bytes.
    #[arg(long, default_value = "256M", value_parser = parse_bytes)]
    pub max_bytes: u64,
    /// Each size is this many times the last.
    #[arg(long, default_value_t = 2)]
    pub factor: u64,
    /// Timed iterations per size (each waited for; the distribution's percentiles are
    /// reported and at least 20 make a baseline row significant for `llmdd diff`).
    #[arg(long, default_value_t = 20)]
    pub iters: u32,
    /// Untimed iterations per size first.
    #[arg(long, default_value_t = 5)]
    pub warmup: u32,
    /// GPUs to use (default: all visible ones).
    #[arg(long)]
    pub gpus: Option<usize>,
    /// Make this rank late: it sleeps --delay-us before every timed collective.
    #[arg(long, requires = "delay_us")]
    pub delay_rank: Option<usize>,
    #[arg(long, requires = "delay_rank")]
    pub delay_us: Option<u64>,
    /// Seconds the workers wait once their communicator is up, before the sweep: time to
    /// `llmdd attach --pid` them (their pids are printed).
    #[arg(long, default_value_t = 0.0)]
    pub start_delay: f64,
    /// Write the sweep as a baseline document for `llmdd diff BASELINE CURRENT`.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
}

/// Runs `f`, turning a panic into an error: cudarc resolves every symbol of a library when
/// it opens it and panics on one that is missing (a driver older than its bindings, or a
/// library that is not the real one). The panic message is kept off the terminal.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let detail = why
            .rsplit("desc: \"")
            .next()
            .unwrap_or(&why)
            .trim_end_matches("\" }");
        anyhow::anyhow!(
            "{what} is not usable: {detail} (a driver or library older than the CUDA 12.6 API \
             llmdd loadgen uses, or not the real one)"
        )
    })
}

/// Why loadgen cannot run here, in one sentence, or the number of GPUs.
pub fn gpus_available() -> Result<usize> {
    // SAFETY: only probes whether the library can be opened.
    if !guarded("the CUDA driver library", || unsafe {
        cudarc::driver::sys::is_culib_present()
    })? {
        bail!(
            "no CUDA driver: libcuda.so.1 was not found, so there is no NVIDIA GPU to load \
             on this machine (llmdd loadgen needs an NVIDIA driver and GPU; everything else \
             in llmdd works without)"
        );
    }
    // SAFETY: as above.
    if !guarded("the NCCL library", || unsafe {
        cudarc::nccl::sys::is_culib_present()
    })? {
        bail!(
            "NCCL not found: libnccl.so.2 could not be opened (install NCCL, e.g. the \
             nvidia-nccl-cu12 wheel, and put its lib directory on LD_LIBRARY_PATH)"
        );
    }
    let n = guarded("the CUDA driver", cudarc::driver::CudaContext::device_count)?
        .map_err(|e| anyhow::anyhow!("the CUDA driver found no usable GPU: {e:?}"))?;
    if n <= 0 {
        bail!("the CUDA driver sees no GPU (CUDA_VISIBLE_DEVICES empty?)");
    }
    Ok(n as usize)
}

/// NCCL's algorithm names by index (`NCCL_ALGO_*`), for its tuning log lines.
fn algo_name(i: &str) -> String {
    match i {
        "0" => "Tree",
        "1" => "Ring",
        "2" => "CollNetDirect",
        "3" => "CollNetChain",
        "4" => "NVLS",
        "5" => "NVLSTree",
        "6" => "PAT",
        other => other,
    }
    .to_string()
}

/// `AllReduce: 4194304 Bytes -> Algo 1 proto 2 time 57.8` (NCCL_DEBUG_SUBSYS=TUNING) as
/// (op, bytes, algorithm).
pub fn parse_tuning(line: &str) -> Option<(Op, u64, String)> {
    let (head, tail) = line.split_once(" Bytes -> Algo ")?;
    let mut w = head.split_whitespace().rev();
    let bytes: u64 = w.next()?.parse().ok()?;
    let op = Op::parse(w.next()?.trim_end_matches(':'))?;
    let algo = algo_name(tail.split_whitespace().next()?);
    Some((op, bytes, algo))
}

enum Msg {
    Line(usize, String),
    Tuning(Op, u64, String),
    /// An NCCL tuning line this parser does not understand (kept as a sample).
    Unparsed(String),
    Err(usize, String),
}

/// `llmdd loadgen`.
pub fn run(args: LoadgenArgs) -> Result<()> {
    let ops: Vec<Op> = args
        .ops
        .iter()
        .map(|o| {
            Op::parse(o).with_context(|| {
                format!("unknown op `{o}`: use allreduce, allgather, reducescatter, broadcast")
            })
        })
        .collect::<Result<_>>()?;
    if args.min_bytes > args.max_bytes {
        bail!("--min-bytes is larger than --max-bytes");
    }
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let out = args
        .baseline
        .as_deref()
        .map(|p| {
            crate::outfile::create_private(p)
                .map(std::io::BufWriter::new)
                .with_context(|| format!("cannot write {}: choose a writable path", p.display()))
        })
        .transpose()?;
    let found = gpus_available()?;
    let world = args.gpus.unwrap_or(found).min(found).max(1);
    if let Some(r) = args.delay_rank {
        if r >= world {
            bail!(
                "--delay-rank {r}: there are {world} ranks (0-{})",
                world - 1
            );
        }
    }
    let sizes = sweep::sizes(args.min_bytes, args.max_bytes, args.factor);
    let id = guarded("NCCL", cudarc::nccl::Id::new)?
        .map_err(|e| anyhow::anyhow!("ncclGetUniqueId: {e:?}"))?;
    let uid = worker::uid_to_hex(&id);
    let exe = std::env::current_exe().context("finding llmdd's own binary")?;
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut children = Vec::new();
    for rank in 0..world {
        let plan = worker::Plan {
            rank,
            world,
            device: rank,
            uid: uid.clone(),
            ops: ops.clone(),
            sizes: sizes.clone(),
            warmup: args.warmup,
            iters: args.iters,
            delay: args.delay_rank.zip(args.delay_us),
            start_delay_s: args.start_delay,
        };
        let mut child = Command::new(&exe)
            .arg("loadgen-worker")
            .env(PLAN_ENV, serde_json::to_string(&plan)?)
            .env("NCCL_DEBUG", "INFO")
            .env("NCCL_DEBUG_SUBSYS", "TUNING")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting a loadgen worker")?;
        let (Some(so), Some(se)) = (child.stdout.take(), child.stderr.take()) else {
            bail!("a loadgen worker has no output pipes");
        };
        // NCCL writes its log (NCCL_DEBUG) to stdout or stderr depending on the version and
        // NCCL_DEBUG_FILE: both streams are read the same way, and only the worker's own
        // lines (READY, DONE, JSON) are taken as results.
        for (stream, is_out) in [
            (Box::new(so) as Box<dyn std::io::Read + Send>, true),
            (Box::new(se) as Box<dyn std::io::Read + Send>, false),
        ] {
            let t = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stream).lines().map_while(Result::ok) {
                    let msg = if is_out
                        && (l.starts_with('{') || l.starts_with("READY ") || l == "DONE")
                    {
                        Msg::Line(rank, l)
                    } else if let Some((op, b, a)) = parse_tuning(&l) {
                        Msg::Tuning(op, b, a)
                    } else if l.contains("NCCL INFO") {
                        if l.contains(" Algo ") {
                            Msg::Unparsed(l)
                        } else {
                            continue;
                        }
                    } else {
                        Msg::Err(rank, l)
                    };
                    if t.send(msg).is_err() {
                        break;
                    }
                }
            });
        }
        children.push(child);
    }
    drop(tx);
    eprintln!(
        "llmdd loadgen: {world} rank(s) on {world} of {found} GPU(s), {} op(s) x {} sizes, {} iterations each",
        ops.len(),
        sizes.len(),
        args.iters
    );
    let mut per: BTreeMap<(usize, u64), Vec<Vec<u64>>> = BTreeMap::new();
    let mut algos: BTreeMap<(Op, u64), String> = BTreeMap::new();
    let mut points: Vec<Point> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut unparsed: Vec<String> = Vec::new();
    let mut done = 0;
    let order = |op: Op| ops.iter().position(|o| *o == op).unwrap_or(0);
    println!(
        "{:<15} {:>10} {:>12} {:>12} {:>12}  algorithm",
        "op", "size", "time p50 us", "algbw GB/s", "busbw GB/s"
    );
    for msg in rx {
        match msg {
            Msg::Tuning(op, b, a) => {
                algos.entry((op, b)).or_insert(a);
            }
            Msg::Err(rank, l) => errors.push(format!("rank {rank}: {l}")),
            Msg::Unparsed(l) => {
                if unparsed.len() < 2 {
                    unparsed.push(l);
                }
            }
            Msg::Line(rank, l) if l.starts_with("READY ") => {
                eprintln!(
                    "llmdd loadgen: rank {rank} on GPU {rank} is pid {}",
                    l.trim_start_matches("READY ")
                );
            }
            Msg::Line(_, l) if l == "DONE" => done += 1,
            Msg::Line(rank, l) => {
                let m: worker::Measured = serde_json::from_str(&l)
                    .with_context(|| format!("rank {rank} printed `{l}`"))?;
                let key = (order(m.op), m.bytes);
                let v = per.entry(key).or_default();
                v.push(m.times_ns);
                if v.len() == world {
                    let iters = v.iter().map(Vec::len).min().unwrap_or(0);
                    let times: Vec<u64> = (0..iters)
                        .map(|i| v.iter().map(|t| t[i]).max().unwrap_or(0))
                        .collect();
                    let op = m.op;
                    let p = Point {
                        op,
                        bytes: m.bytes,
                        ranks: world as u32,
                        times_ns: times,
                        algorithm: algos.get(&(op, m.bytes)).cloned(),
                    };
                    println!(
                        "{:<15} {:>10} {:>12.1} {:>12.2} {:>12.2}  {}",
                        op.nccl_name(),
                        crate::engine::util::fmt_bytes(p.bytes),
                        p.p50_ns() as f64 / 1e3,
                        p.algbw() / 1e9,
                        p.busbw() / 1e9,
                        p.algorithm.as_deref().unwrap_or("-")
                    );
                    std::io::stdout().flush().ok();
                    points.push(p);
                }
            }
        }
    }
    let mut failed = Vec::new();
    for (rank, mut c) in children.into_iter().enumerate() {
        let status = c.wait().context("waiting for a loadgen worker")?;
        if !status.success() {
            failed.push(format!("rank {rank} {status}"));
        }
    }
    if !failed.is_empty() || done < world {
        let tail: Vec<&String> = errors.iter().rev().take(8).collect();
        bail!(
            "loadgen workers failed ({}): {}",
            failed.join(", "),
            tail.into_iter()
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let mut notes = Vec::new();
    if world == 1 {
        notes.push(
            "one GPU: a one-rank communicator moves no data between GPUs (bus bandwidth 0); \
             cross-GPU figures need more GPUs"
                .to_string(),
        );
    }
    if let (Some(r), Some(us)) = (args.delay_rank, args.delay_us) {
        notes.push(format!(
            "rank {r} was made {us} us late before every timed collective"
        ));
    }
    println!();
    for op in &ops {
        let refs: Vec<&Point> = points.iter().collect();
        let i = sweep::inflections(*op, &refs);
        let fmt = |b: Option<u64>| b.map_or("-".to_string(), crate::engine::util::fmt_bytes);
        println!(
            "{}: latency-bound up to {}; bandwidth stops growing at {} (peak {} bandwidth {:.2} GB/s){}",
            op.nccl_name(),
            fmt(i.latency_bound_until_bytes),
            fmt(i.bandwidth_plateau_bytes),
            i.bandwidth,
            i.peak_busbw / 1e9,
            if i.jumps_at_bytes.is_empty() {
                String::new()
            } else {
                format!(
                    "; latency jumps at {}",
                    i.jumps_at_bytes
                        .iter()
                        .map(|b| crate::engine::util::fmt_bytes(*b))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    if algos.is_empty() && !unparsed.is_empty() {
        notes.push(format!(
            "NCCL's tuning lines were not understood, so no algorithm is shown; e.g. `{}`",
            unparsed[0].trim()
        ));
    }
    for n in &notes {
        println!("note: {n}");
    }
    if let (Some(mut w), Some(path)) = (out, args.baseline.as_deref()) {
        serde_json::to_writer_pretty(&mut w, &sweep::baseline(&points, world as u32, &notes))?;
        w.write_all(b"\n")?;
        w.flush()?;
        eprintln!("llmdd loadgen: baseline written to {}", path.display());
    }
    Ok(())
}

/// `llmdd loadgen-worker` (started by `run`, not by hand).
pub fn run_worker() -> Result<()> {
    let plan = std::env::var(PLAN_ENV)
        .context("loadgen-worker is started by `llmdd loadgen`, which gives it a plan")?;
    let plan: worker::Plan = serde_json::from_str(&plan).context("the worker's plan")?;
    worker::run(&plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_tuning_lines_parse() {
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("8"), Ok(8));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert!(parse_bytes("lots").is_err());
        assert!(
            parse_bytes("99999999999G").is_err(),
            "too large for 64 bits"
        );
        assert_eq!(
            parse_tuning(
                "host:1:2 [0] NCCL INFO AllReduce: 4194304 Bytes -> Algo 1 proto 2 time 57.800003"
            ),
            Some((Op::AllReduce, 4194304, "Ring".to_string()))
        );
        assert_eq!(parse_tuning("NCCL INFO Channel 00/02"), None);
    }

    #[test]
    fn without_a_driver_the_reason_is_one_sentence() {
        // Under `cargo test` the fake libcuda.so of the test fixtures is on the library path:
        // it lacks most of the driver API, which must be an error, not a panic.
        if let Err(e) = gpus_available() {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(
                msg.contains("libcuda.so.1")
                    || msg.contains("not usable")
                    || msg.contains("NCCL")
                    || msg.contains("GPU"),
                "{msg}"
            );
        }
    }
}
