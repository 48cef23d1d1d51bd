//! `cargo xtask bench`: the cost llmdd adds to each traced call, measured side by side in one
//! run against the same process: untraced, the floor (an empty uprobe+uretprobe pair: the
//! kernel's trap alone), llmdd as users run it (every probe of every library attached, the
//! daemon reading), and bpftrace keeping a latency histogram with its own uprobe+uretprobe
//! pair. Ratios, not absolute times, are the result: the trap's cost differs a lot between
//! virtual machines and bare metal.
//!
//! Usage: bench [--calls N] [--rounds R] [--out FILE.json] [--no-bpftrace]

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use llmdd::probe::{ObjectPlan, ProbeSet, Tracer};
use llmdd_common::funcs::Family;
use llmdd_tests::harness::{built, fake_lib_dir, Proc, Stream};

struct Opts {
    calls: u64,
    rounds: usize,
    out: std::path::PathBuf,
    bpftrace: bool,
}

fn parse() -> Result<Opts> {
    let mut o = Opts {
        calls: 200_000,
        rounds: 3,
        out: llmdd_tests::harness::build_dir().join("../bench/overhead.json"),
        bpftrace: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--calls" => o.calls = args.next().context("--calls N")?.parse()?,
            "--rounds" => o.rounds = args.next().context("--rounds R")?.parse()?,
            "--out" => o.out = args.next().context("--out FILE")?.into(),
            "--no-bpftrace" => o.bpftrace = false,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

/// Runs `n` calls in the loop process; returns ns per call.
fn run_calls(lp: &mut Proc, n: u64) -> Result<f64> {
    lp.send_line(&format!("run {n}"))?;
    let line = lp.wait_line("ns_per_call", Duration::from_secs(600), |s, l| {
        s == Stream::Stdout && l.starts_with("ns_per_call")
    })?;
    line.split_whitespace()
        .nth(1)
        .context("ns value")?
        .parse()
        .context("ns value")
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
    let target = llmdd::target::inspect(pid)?;
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

        for (case, mode) in [
            ("llmdd (all probes, daemon reading)", None),
            ("llmdd --mode nccl=entry", Some("nccl=entry")),
            ("llmdd --mode nccl=aggregate", Some("nccl=aggregate")),
        ] {
            let t0 = Instant::now();
            let mut cmd = Command::new(built("llmdd"));
            cmd.args(["attach", "--pid", &pid.to_string(), "--quiet"]);
            if let Some(m) = mode {
                cmd.args(["--mode", m]);
            }
            let mut l = Proc::spawn("llmdd", cmd)?;
            l.wait_line("tracing", Duration::from_secs(60), |s, x| {
                s == Stream::Stderr && x.starts_with("llmdd: tracing")
            })?;
            if mode.is_none() {
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
    let doc = serde_json::json!({
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
