//! `cargo xtask bench`: the cost llmdd adds to each traced call, measured side by side in one
//! run against the same process: untraced, the floor (an empty uprobe+uretprobe pair: the
//! kernel's trap alone), llmdd as users run it (every probe of every library attached, the
//! daemon reading; and once with the daemon stopped, its ring filling), and bpftrace keeping
//! a latency histogram with its own uprobe+uretprobe pair. Ratios, not absolute times, are the result: the trap's cost differs a lot between
//! virtual machines and bare metal.
//!
//! Then three cases that need longer runs: the overhead budget held on a thread hammering a
//! hot call, events delivered vs calls made at rising rates across two processes (full and
//! aggregate mode), and the simulated job's step time with and without llmdd next to the
//! prediction from the measured floor.
//!
//! Usage: bench [--calls N] [--rounds R] [--out FILE.json] [--no-bpftrace] [--no-extra]
//!        [--budget-secs S] [--macro-only] [--shape prefill|decode]

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use llmdd::probe::{ObjectPlan, ProbeSet, Tracer};
use llmdd_common::funcs::Family;
use llmdd_tests::harness::{
    built, fake_lib_dir, loop_cmd, start_callloop, start_llmdd_with, Proc, Stream,
};

struct Opts {
    calls: u64,
    rounds: usize,
    out: std::path::PathBuf,
    bpftrace: bool,
    /// The overhead-budget, loss-vs-rate and macro cases (off for a smoke run).
    extra: bool,
    /// Seconds of hot calls the budget case measures.
    budget_secs: f64,
    /// Of the longer cases, only the macro one (the per-call cases still run: the macro
    /// rows compare with their floor).
    macro_only: bool,
    /// Only this macro shape (`prefill` or `decode`).
    shape: Option<String>,
}

fn parse() -> Result<Opts> {
    let mut o = Opts {
        calls: 200_000,
        rounds: 3,
        out: llmdd_tests::harness::build_dir().join("../bench/overhead.json"),
        bpftrace: true,
        extra: true,
        budget_secs: 10.0,
        macro_only: false,
        shape: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--calls" => o.calls = args.next().context("--calls N")?.parse()?,
            "--rounds" => o.rounds = args.next().context("--rounds R")?.parse()?,
            "--out" => o.out = args.next().context("--out FILE")?.into(),
            "--no-bpftrace" => o.bpftrace = false,
            "--no-extra" => o.extra = false,
            "--macro-only" => o.macro_only = true,
            "--shape" => {
                let v = args.next().context("--shape prefill|decode")?;
                if !SHAPES.iter().any(|(s, _)| *s == v) {
                    bail!("unknown --shape {v}: prefill or decode");
                }
                o.shape = Some(v);
            }
            "--budget-secs" => o.budget_secs = args.next().context("--budget-secs S")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

/// Calls made while llmdd's reader is stopped: 40,000 records of 176 bytes fill 7 of the
/// ring's 8 MiB, past the 256 KiB wakeup threshold but short of dropping any.
const STALLED_CALLS: u64 = 40_000;

/// Runs `n` calls in the loop process; returns ns per call.
fn run_calls(lp: &mut Proc, n: u64) -> Result<f64> {
    loop_cmd(lp, &format!("run {n}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let o = parse()?;
    let lib = fake_lib_dir().join("libnccl.so.2");
    let mut lp = Proc::spawn("callloop", {
        let mut c = Command::new(built("callloop"));
        c.arg(&lib);
        c
    })?;
    lp.wait_line("READY", Duration::from_secs(30), |s, l| {
        s == Stream::Stdout && l == "READY"
    })?;
    let pid = lp.pid();
    let target = llmdd::tracee::inspect(pid)?;
    let nccl = target
        .objects_of(Family::Nccl)
        .next()
        .context("no NCCL object in the loop process")?;
    let point = nccl
        .points
        .iter()
        .find(|p| p.symbol.ends_with("ncclAllReduce"))
        .context("no ncclAllReduce probe point")?;
    let plan = vec![ObjectPlan {
        family: Family::Nccl,
        path: nccl.host_path.clone(),
        comm_offsets: None,
        points: vec![(point.func, point.file_offset)],
    }];
    let have_bpftrace = o.bpftrace && Command::new("bpftrace").arg("--version").output().is_ok();

    eprintln!(
        "bench: {} calls x {} rounds per case; warming up",
        o.calls, o.rounds
    );
    run_calls(&mut lp, o.calls / 4)?;
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut attach_s = Vec::new();
    let mut delivered = Vec::new();
    for round in 0..o.rounds {
        eprintln!("bench: round {}/{}", round + 1, o.rounds);
        samples
            .entry("untraced")
            .or_default()
            .push(run_calls(&mut lp, o.calls)?);

        {
            let mut t = Tracer::load_with(None, ProbeSet::Floor)?;
            t.attach(pid, &plan)?;
            samples
                .entry("floor (empty uprobe+uretprobe)")
                .or_default()
                .push(run_calls(&mut lp, o.calls)?);
            t.detach(pid).release();
        }

        for (case, extra) in [
            ("llmdd (all probes, daemon reading)", &[][..]),
            (
                "llmdd --stacks on (user stack walk)",
                &["--stacks", "on"][..],
            ),
            ("llmdd --mode nccl=entry", &["--mode", "nccl=entry"][..]),
            (
                "llmdd --mode nccl=aggregate",
                &["--mode", "nccl=aggregate"][..],
            ),
        ] {
            let t0 = Instant::now();
            let mut l = start_llmdd_on(&[pid], extra)?;
            if extra.is_empty() {
                attach_s.push(t0.elapsed().as_secs_f64());
            }
            samples
                .entry(case)
                .or_default()
                .push(run_calls(&mut lp, o.calls)?);
            l.signal(libc::SIGINT)?;
            l.wait_exit(Duration::from_secs(60))?;
            // The final summary's ncclAllReduce row: pid, name, calls, ...
            let seen: u64 = l
                .lines_of(Stream::Stdout)
                .iter()
                .rfind(|x| x.contains(" ncclAllReduce "))
                .and_then(|x| x.split_whitespace().nth(2))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            delivered.push((case, seen, o.calls));
        }

        // The reader stalled (llmdd stopped): records pile up in the ring past the wakeup
        // threshold. Fewer calls than the ring holds, so that none is dropped.
        {
            let mut l = start_llmdd_on(&[pid], &[])?;
            l.signal(libc::SIGSTOP)?;
            let ns = run_calls(&mut lp, o.calls.min(STALLED_CALLS));
            l.signal(libc::SIGCONT)?;
            samples
                .entry("llmdd, its reader stopped (SIGSTOP)")
                .or_default()
                .push(ns?);
            l.signal(libc::SIGINT)?;
            l.wait_exit(Duration::from_secs(60))?;
        }

        if have_bpftrace {
            let path = lib.display();
            // BEGIN runs once every probe is attached: its line is the ready signal
            // ("Attaching N probes..." comes before the attachment is done).
            let script = format!(
                "BEGIN {{ printf(\"bench-ready\\n\"); }} uprobe:{path}:ncclAllReduce {{ @s[tid] = nsecs; }} \
                 uretprobe:{path}:ncclAllReduce /@s[tid]/ {{ @h = hist(nsecs - @s[tid]); delete(@s[tid]); }}"
            );
            let mut cmd = Command::new("bpftrace");
            cmd.args(["-p", &pid.to_string(), "-e", &script]);
            let mut b = Proc::spawn("bpftrace", cmd)?;
            b.wait_line("ready line", Duration::from_secs(120), |s, x| {
                s == Stream::Stdout && x == "bench-ready"
            })?;
            samples
                .entry("bpftrace (uprobe+uretprobe, hist)")
                .or_default()
                .push(run_calls(&mut lp, o.calls)?);
            b.signal(libc::SIGINT)?;
            b.wait_exit(Duration::from_secs(60))?;
        }
    }
    lp.send_line("quit")?;

    let mut med: BTreeMap<&str, f64> = samples.iter_mut().map(|(k, v)| (*k, median(v))).collect();
    let base = med["untraced"];
    let added = |k: &str| med.get(k).map(|v| v - base);
    let floor = added("floor (empty uprobe+uretprobe)");
    let bpft = added("bpftrace (uprobe+uretprobe, hist)");
    println!(
        "\nns per ncclAllReduce call (median of {} rounds of {} calls; same process, same run)",
        o.rounds, o.calls
    );
    println!(
        "{:<38} {:>10} {:>12} {:>10} {:>12}",
        "case", "ns/call", "added ns", "x floor", "x bpftrace"
    );
    let mut rows = Vec::new();
    for (k, v) in &med {
        let a = v - base;
        let xf = floor.filter(|f| *f > 0.0).map(|f| a / f);
        let xb = bpft.filter(|b| *b > 0.0).map(|b| a / b);
        let fmt = |x: Option<f64>| x.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        println!(
            "{k:<38} {v:>10.1} {a:>12.1} {:>10} {:>12}",
            fmt(xf),
            fmt(xb)
        );
        rows.push(serde_json::json!({"case": k, "ns_per_call": v, "added_ns": a, "ratio_to_floor": xf, "ratio_to_bpftrace": xb}));
    }
    println!(
        "llmdd attach to tracing (s): {:?}",
        attach_s
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
    );
    for (case, seen, calls) in &delivered {
        println!("{case}: calls seen {seen} of {calls} made");
    }
    if !have_bpftrace {
        println!("(bpftrace not installed: its row is missing; `cargo xtask bench` installs it)");
    }
    med.clear();

    let machine = serde_json::json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines()
            .find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("").trim(),
        "virtualised": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().contains(" hypervisor"),
    });
    let floor_ns = floor.unwrap_or(0.0);
    let budget = if o.extra && !o.macro_only {
        Some(budget_case(&o)?)
    } else {
        None
    };
    let loss = if o.extra && !o.macro_only {
        Some(loss_vs_rate(&o)?)
    } else {
        None
    };
    let macro_rows = if o.extra {
        Some(macro_case(&o, floor_ns)?)
    } else {
        None
    };
    let doc = serde_json::json!({
        "budget": budget, "loss_vs_rate": loss, "macro": macro_rows,
        "calls_per_round": o.calls, "rounds": o.rounds, "machine": machine, "rows": rows,
        "attach_to_tracing_s": attach_s,
        "delivered_vs_calls": delivered.iter().map(|(c, s, n)| serde_json::json!({"case": c, "seen": s, "calls": n})).collect::<Vec<_>>(),
    });
    if let Some(dir) = o.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&o.out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", o.out.display()))?;
    println!("written: {}", o.out.display());
    Ok(())
}

/// The llmdd binary to measure: `LLMDD_BIN` (`cargo xtask bench` sets the release build),
/// else the workspace's debug build.
fn llmdd_bin() -> std::path::PathBuf {
    std::env::var_os("LLMDD_BIN")
        .map(Into::into)
        .unwrap_or_else(|| built("llmdd"))
}

/// Starts a `callloop` process over `libs` (file names in the fake library directory).
fn start_loop(libs: &[&str]) -> Result<Proc> {
    let dir = fake_lib_dir();
    start_callloop(&libs.iter().map(|l| dir.join(l)).collect::<Vec<_>>())
}

/// The calls column of the final summary's row for `func` of `pid` (`~N` when extrapolated).
fn final_calls(l: &Proc, pid: u32, func: &str) -> Option<f64> {
    let out = l.lines_of(Stream::Stdout);
    let start = out
        .iter()
        .rposition(|x| x.starts_with("=== final summary"))?;
    out[start..]
        .iter()
        .find(|x| {
            let mut w = x.split_whitespace();
            w.next() == Some(&pid.to_string()) && w.next() == Some(func)
        })
        .and_then(|x| x.split_whitespace().nth(2))
        .and_then(|n| n.trim_start_matches('~').parse().ok())
}

fn start_llmdd_on(pids: &[u32], extra: &[&str]) -> Result<Proc> {
    let mut args = vec!["--quiet"];
    args.extend_from_slice(extra);
    start_llmdd_with(&llmdd_bin(), pids, &args)
}

fn stop(l: &mut Proc) -> Result<()> {
    l.signal(libc::SIGINT)?;
    l.wait_exit(Duration::from_secs(120))?;
    Ok(())
}

/// The overhead budget on a thread calling cudaEventQuery as fast as it can: ns per call
/// untraced, traced in full, and under a 1% budget (after a warm-up of two duty periods),
/// plus the extrapolated count against the calls made.
fn budget_case(o: &Opts) -> Result<serde_json::Value> {
    eprintln!("bench: overhead budget ({} s of hot calls)", o.budget_secs);
    let mut lp = start_loop(&["libcudart.so.12"])?;
    loop_cmd(&mut lp, "query 1000000")?;
    let untraced = loop_cmd(&mut lp, "query 5000000")?;
    let n = (o.budget_secs * 1e9 / untraced.max(1.0)) as u64;
    let pid = lp.pid();

    let mut l = start_llmdd_on(&[pid], &["--overhead-budget", "off"])?;
    let full = loop_cmd(&mut lp, &format!("query {}", (n / 200).max(1000)))?;
    stop(&mut l)?;

    let mut l = start_llmdd_on(&[pid], &["--overhead-budget", "1%", "--enforce-budget"])?;
    // Warm-up: the first periods start fully attached and brake.
    let warm = (4e9 / untraced.max(1.0)) as u64;
    loop_cmd(&mut lp, &format!("query {warm}"))?;
    let budgeted = loop_cmd(&mut lp, &format!("query {n}"))?;
    stop(&mut l)?;
    let estimate = final_calls(&l, pid, "cudaEventQuery").unwrap_or(0.0);
    let made = (warm + n) as f64;
    lp.send_line("quit")?;

    let added_pct = (budgeted / untraced - 1.0) * 100.0;
    let full_pct = (full / untraced - 1.0) * 100.0;
    println!("\noverhead budget: a thread calling cudaEventQuery back to back");
    println!("  untraced            {untraced:>9.1} ns/call");
    println!("  llmdd, budget off   {full:>9.1} ns/call  (+{full_pct:.0}% of the thread's time)");
    println!(
        "  llmdd, budget 1% enforced {budgeted:>9.1} ns/call  (+{added_pct:.2}%: {})",
        if added_pct <= 1.0 { "held" } else { "NOT held" }
    );
    println!(
        "  calls made {made:.0}, estimated from the duty-cycled probes {estimate:.0} ({:+.1}%)",
        (estimate / made - 1.0) * 100.0
    );
    Ok(serde_json::json!({
        "untraced_ns": untraced, "budget_off_ns": full, "budget_1pct_ns": budgeted,
        "added_pct_under_budget": added_pct, "calls_made": made, "calls_estimated": estimate,
    }))
}

/// Events delivered vs calls made by two processes calling ncclAllReduce at rising paced
/// rates for two seconds each, in full and aggregate mode.
fn loss_vs_rate(o: &Opts) -> Result<serde_json::Value> {
    let _ = o;
    eprintln!("bench: events delivered vs calls made at rising rates (2 processes)");
    let mut a = start_loop(&["libnccl.so.2"])?;
    let mut b = start_loop(&["libnccl.so.2"])?;
    let pids = [a.pid(), b.pid()];
    let mut rows = Vec::new();
    println!("\nevents delivered vs calls made, 2 processes x 2 s each (ncclAllReduce)");
    println!(
        "{:>14} {:>10} {:>12} {:>12} {:>12} {:>10}",
        "rate/process", "made", "full: seen", "lost", "agg: seen", "achieved/s"
    );
    for rate in [10_000.0, 50_000.0, 100_000.0, 200_000.0, 1e9] {
        let n = if rate >= 1e9 {
            200_000
        } else {
            (rate * 2.0) as u64
        };
        let mut seen = Vec::new();
        let mut lost = 0u64;
        let mut achieved = 0.0;
        for mode in [None, Some("nccl=aggregate")] {
            let mut extra = vec!["--overhead-budget", "off"];
            if let Some(m) = mode {
                extra.extend(["--mode", m]);
            }
            let mut l = start_llmdd_on(&pids, &extra)?;
            a.send_line(&format!("pace {n} {rate}"))?;
            b.send_line(&format!("pace {n} {rate}"))?;
            let mut ns = 0.0;
            for p in [&mut a, &mut b] {
                let line = p.wait_line("ns_per_call", Duration::from_secs(900), |s, x| {
                    s == Stream::Stdout && x.starts_with("ns_per_call")
                })?;
                ns += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
            stop(&mut l)?;
            let got: f64 = pids
                .iter()
                .map(|p| final_calls(&l, *p, "ncclAllReduce").unwrap_or(0.0))
                .sum();
            if mode.is_none() {
                lost = l
                    .lines_of(Stream::Stdout)
                    .iter()
                    .rfind(|x| x.starts_with("lost events:"))
                    .and_then(|x| x.split_whitespace().nth(2))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                achieved = 2.0 * 1e9 / (ns / 2.0).max(1.0);
            }
            seen.push(got);
        }
        let label = if rate >= 1e9 {
            "unpaced".to_string()
        } else {
            format!("{rate:.0}")
        };
        println!(
            "{label:>14} {:>10} {:>12.0} {lost:>12} {:>12.0} {achieved:>10.0}",
            2 * n,
            seen[0],
            seen[1]
        );
        rows.push(serde_json::json!({
            "rate_per_process": label, "made": 2 * n, "full_seen": seen[0], "full_lost": lost,
            "aggregate_seen": seen[1], "achieved_calls_per_s": achieved,
        }));
    }
    a.send_line("quit")?;
    b.send_line("quit")?;
    Ok(serde_json::Value::Array(rows))
}

/// The two step shapes of a vLLM server on the simulated job, each untraced and traced in
/// each mode: the step's slowdown (mean step time, rank 0) next to the floor's prediction
/// (traced calls per step x the floor's cost per call) and llmdd's own estimate for the
/// rank's thread (the report's `overhead.threads`).
fn macro_case(o: &Opts, floor_ns: f64) -> Result<serde_json::Value> {
    eprintln!("bench: macro (vLLM-shaped steps of the simulated job, per mode)");
    let lib = fake_lib_dir();
    let dir = lib.join("bench-macro");
    std::fs::create_dir_all(&dir)?;
    let mut rows = Vec::new();
    println!(
        "\nmacro: simulated job, mean step time of rank 0 per mode (median of {} rounds)",
        o.rounds
    );
    println!(
        "{:<8} {:<26} {:>10} {:>10} {:>9} {:>10} {:>11} {:>12} {:>9}",
        "shape",
        "mode",
        "calls/step",
        "step us",
        "slowdown",
        "predicted",
        "llmdd est.",
        "est. range",
        "est. err"
    );
    for (shape, args) in SHAPES
        .iter()
        .copied()
        .filter(|(s, _)| o.shape.as_deref().is_none_or(|w| w == *s))
    {
        // Rounds of every mode in turn, so that a slow spell of the machine falls on all
        // of them alike; each mode's median round is kept.
        let mut runs: Vec<Vec<MacroRun>> = MACRO_MODES.iter().map(|_| Vec::new()).collect();
        for round in 0..o.rounds {
            eprintln!("bench: macro {shape}, round {}/{}", round + 1, o.rounds);
            for (i, (_, extra)) in MACRO_MODES.iter().enumerate() {
                runs[i].push(macro_run(&lib, &dir, shape, args, *extra)?);
            }
        }
        let mut base_us = 0.0;
        // The untraced rounds' spread, as a share of their median: a slowdown within it is
        // the machine's noise, and no estimate is scored against it.
        let mut noise = 0.0;
        for ((mode, extra), mut mine) in MACRO_MODES.into_iter().zip(runs) {
            mine.sort_by(|a, b| a.step_us.total_cmp(&b.step_us));
            let spread = mine.last().map(|r| r.step_us).unwrap_or(0.0)
                - mine.first().map(|r| r.step_us).unwrap_or(0.0);
            let r = mine.swap_remove(mine.len() / 2);
            if extra.is_none() {
                base_us = r.step_us;
                noise = spread / base_us.max(1e-9);
                println!(
                    "{shape}: untraced rounds spread over {:.1}% of their median step",
                    noise * 100.0
                );
            }
            let slowdown = r.step_us / base_us.max(1e-9) - 1.0;
            let predicted = r.calls_per_step * floor_ns / 1e3 / base_us.max(1e-9);
            let err = r
                .estimate
                .filter(|_| slowdown.abs() > noise.max(0.005))
                .map(|(e, _, _)| (e - slowdown) / slowdown.abs());
            let pct = |x: f64| format!("{:.1}%", x * 100.0);
            println!(
                "{shape:<8} {mode:<26} {:>10.1} {:>10.1} {:>9} {:>10} {:>11} {:>12} {:>9}",
                r.calls_per_step,
                r.step_us,
                if extra.is_some() {
                    pct(slowdown)
                } else {
                    "-".into()
                },
                if extra.is_some() {
                    pct(predicted)
                } else {
                    "-".into()
                },
                r.estimate.map(|e| pct(e.0)).unwrap_or_else(|| "-".into()),
                r.estimate
                    .map(|e| format!("{}-{}", pct(e.1), pct(e.2)))
                    .unwrap_or_else(|| "-".into()),
                err.map(pct).unwrap_or_else(|| "-".into()),
            );
            rows.push(serde_json::json!({
                "shape": shape, "mode": mode, "calls_per_step": r.calls_per_step,
                "step_us": r.step_us, "slowdown": slowdown, "floor_predicted_slowdown": predicted,
                "llmdd_estimate": r.estimate.map(|e| e.0),
                "llmdd_estimate_range": r.estimate.map(|e| [e.1, e.2]),
                "llmdd_calibrated_estimate": r.calibrated,
                "estimate_error": err, "untraced_spread": noise,
            }));
        }
    }
    Ok(serde_json::Value::Array(rows))
}

/// The step shapes: an eager prefill step, host-bound (80 layers of 12 kernel launches
/// after 15 us of dispatch each, and 2 all-reduces: about 1,000 launches and 160
/// all-reduces per step; one rank, so that the step is the host's time rather than the
/// fake collectives' rendezvous, and the daemon has a core of its own), and a graph-replayed decode step (10 ms of host time, one graph
/// launch, a copy, an event record/query/sync and a stream sync).
const SHAPES: [(&str, &[&str]); 2] = [
    (
        "prefill",
        &[
            "--ranks",
            "1",
            "--warmup",
            "250",
            "--steps",
            "400",
            "--compute-us",
            "0",
            "--layers",
            "80",
            "--launches",
            "12",
            "--driver-launches",
            "0",
            "--dispatch-us",
            "15",
            "--kernel-us",
            "1",
            "--collective",
            "allreduce:64K,allreduce:64K",
        ],
    ),
    (
        "decode",
        &[
            "--ranks",
            "2",
            "--warmup",
            "200",
            "--steps",
            "300",
            "--graph",
            "--compute-us",
            "10000",
            "--launches",
            "64",
            "--kernel-us",
            "20",
            "--memcpy-bytes",
            "64K",
            "--events",
        ],
    ),
];

/// The modes measured on each shape (`None`: untraced). Each run's first 4 s or so are
/// warm-up steps, left out of the mean: the duty cycle settles over its first 2 s periods.
const MACRO_MODES: [(&str, Option<&[&str]>); 5] = [
    ("untraced", None),
    ("default (1% budget held)", Some(&[])),
    ("full", Some(&["--enforce-budget=false"])),
    (
        "full, launches entry-only",
        Some(&[
            "--enforce-budget=false",
            "--mode",
            "cudart=entry",
            "--mode",
            "cuda=entry",
        ]),
    ),
    (
        "full, launches aggregated",
        Some(&[
            "--enforce-budget=false",
            "--mode",
            "cudart=aggregate",
            "--mode",
            "cuda=aggregate",
        ]),
    ),
];

struct MacroRun {
    step_us: f64,
    calls_per_step: f64,
    /// llmdd's estimated slowdown of rank 0's busiest thread, with its range.
    estimate: Option<(f64, f64, f64)>,
    /// The same from the calibrated call cost alone.
    calibrated: Option<f64>,
}

fn macro_run(
    lib: &std::path::Path,
    dir: &std::path::Path,
    shape: &str,
    args: &[&str],
    extra: Option<&[&str]>,
) -> Result<MacroRun> {
    let tag = format!("{shape}-{}", extra.map(|e| e.join("_")).unwrap_or_default());
    let truth_path = dir.join(format!("truth-{tag}.json"));
    let report_path = dir.join(format!("report-{tag}.json"));
    let _ = std::fs::remove_file(&report_path);
    let truth_arg = truth_path.to_string_lossy().into_owned();
    let mut job_args = vec!["--truth", &truth_arg];
    job_args.extend_from_slice(args);
    let mut job = llmdd_tests::job::Job::start(lib, &job_args)?;
    let report_arg = report_path.to_string_lossy().into_owned();
    let mut l = match extra {
        Some(e) => {
            let mut a = vec!["--report", &report_arg];
            a.extend_from_slice(e);
            Some(start_llmdd_on(&job.pids, &a)?)
        }
        None => None,
    };
    job.go()?;
    let truth = job.finish(&truth_path)?;
    if let Some(l) = l.as_mut() {
        stop(l)?;
    }
    let r0 = truth.ranks.first().context("no rank in the truth")?;
    let steps: Vec<f64> = r0
        .steps
        .iter()
        .map(|s| (s.end_ns - s.start_ns) as f64 / 1e3)
        .collect();
    let step_us = steps.iter().sum::<f64>() / steps.len().max(1) as f64;
    // The truth lists the calls of measured steps only.
    let calls_per_step = r0.calls.len() as f64 / truth.measured_steps.max(1) as f64;
    let (estimate, calibrated) = match extra {
        Some(_) => rank_estimate(&report_path, job.pids[0])?,
        None => (None, None),
    };
    Ok(MacroRun {
        step_us,
        calls_per_step,
        estimate,
        calibrated,
    })
}

/// A rank's estimated slowdown with its range, and the calibrated figure alone.
type RankEstimate = (Option<(f64, f64, f64)>, Option<f64>);

/// llmdd's estimate for the busiest traced thread of `pid` in a report, with the process's
/// calls counted in the kernel (aggregate mode) added to it: the simulated rank makes
/// every call on that one thread.
fn rank_estimate(report: &std::path::Path, pid: u32) -> Result<RankEstimate> {
    let text =
        std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    let busiest = doc["overhead"]["threads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["pid"].as_u64() == Some(pid as u64))
        .max_by_key(|t| t["calls"].as_u64().unwrap_or(0));
    let Some(t) = busiest else {
        return Ok((None, None));
    };
    let agg: f64 = doc["overhead"]["aggregated"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["pid"].as_u64() == Some(pid as u64))
        .filter_map(|a| a["calibrated_share"].as_f64())
        .sum();
    // Slowdown d = p/(1-p) back to its share p, the aggregated share added, and forth.
    let with_agg = |d: f64| {
        let p = d / (1.0 + d) + agg;
        p.min(0.95) / (1.0 - p.min(0.95))
    };
    let f = |k: &str| t[k].as_f64();
    let est = match (
        f("estimated_slowdown"),
        f("slowdown_low"),
        f("slowdown_high"),
    ) {
        // The high end is the thread's kernel time, which holds the aggregated traps too.
        (Some(e), Some(lo), Some(hi)) => Some((with_agg(e), with_agg(lo), hi.max(with_agg(e)))),
        _ => None,
    };
    let cal = f("calibrated_share").map(|p| with_agg(p / (1.0 - p.min(0.95))));
    Ok((est, cal))
}
