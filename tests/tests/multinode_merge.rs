//! Two hosts, for real: two network namespaces joined by a veth pair, the simulated job's
//! four ranks split across them (ranks 0-1 on host A, 2-3 on host B, their NCCL traffic over
//! the veth), each host traced by its own llmdd with host B's clock shifted by a known
//! offset. The merged job view must bracket the injected offset from the TCP traffic alone
//! and name the straggler (rank 3) with host B.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use llmdd::{
    engine::{Config, Engine, FindingKind},
    events::{CallEvent, Event, ProcExitEvent, SockEvent, SockKind},
    merge::{self, ClockMethod, HostRecording},
};
use llmdd_tests::{
    harness::{built, fake_lib_dir, require_root, Proc, Stream},
    job::parse_ready,
};
use serde_json::Value;

/// Host B's clock reads the true time minus this much (so its offset to host A is this).
const THETA_B_NS: i64 = 7_654_321_987;

/// Two namespaces and a veth pair between them, removed on drop.
struct Hosts {
    ns: [String; 2],
    addr: [String; 2],
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running `ip` (iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Hosts {
    fn new() -> Hosts {
        let id = std::process::id();
        let ns = [format!("llmdd-a-{id}"), format!("llmdd-b-{id}")];
        // A /24 of 10.0.0.0/8 per test process.
        let net = format!("10.{}.{}", 100 + (id >> 8) % 100, id % 256);
        let addr = [format!("{net}.1"), format!("{net}.2")];
        let h = Hosts { ns, addr };
        let veth = [
            format!("va{}", id % 1_000_000),
            format!("vb{}", id % 1_000_000),
        ];
        for n in &h.ns {
            ip(&["netns", "add", n]);
        }
        ip(&[
            "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
        ]);
        for ((v, n), a) in veth.iter().zip(&h.ns).zip(&h.addr) {
            ip(&["link", "set", v, "netns", n]);
            let cidr = format!("{a}/24");
            ip(&["-n", n, "addr", "add", &cidr, "dev", v]);
            ip(&["-n", n, "link", "set", v, "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        h
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn num(v: &Value) -> Option<u64> {
    v.as_u64()
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64()
}

fn endpoint(v: &Value) -> Option<(std::net::IpAddr, u16)> {
    let a = v.as_array()?;
    Some((
        a.first()?.as_str()?.parse().ok()?,
        a.get(1)?.as_u64()? as u16,
    ))
}

/// An event back from its `--dump-events` JSON line.
fn event_from_json(v: &Value) -> Option<Event> {
    match v["type"].as_str()? {
        "call" => {
            let name = v["func"].as_str()?;
            let func = llmdd_common::funcs::FUNCS
                .iter()
                .position(|f| f.name == name)? as u16;
            let spec = llmdd_common::funcs::spec(func)?;
            Some(Event::Call(CallEvent {
                func,
                family: spec.family.name(),
                pid: num(&v["pid"])? as u32,
                tid: num(&v["tid"])? as u32,
                lib_slot: num(&v["lib_slot"]).unwrap_or(0) as u16,
                entry_ns: num(&v["entry_ns"])?,
                exit_ns: num(&v["exit_ns"]),
                ret: int(&v["ret"]),
                rank: int(&v["rank"]).map(|x| x as i32),
                nranks: int(&v["nranks"]).map(|x| x as i32),
                uid_hash: num(&v["uid_hash"]),
                comm: num(&v["comm"]),
                stream: num(&v["stream"]),
                event_handle: num(&v["event_handle"]),
                count: num(&v["count"]),
                bytes: num(&v["bytes"]),
                dtype: num(&v["dtype"]),
                op: num(&v["op"]),
                peer: int(&v["peer"]),
                out: num(&v["out"]),
                args: [0; 9],
            }))
        }
        "sock" => Some(Event::Sock(SockEvent {
            kind: match v["kind"].as_str()? {
                "send" => SockKind::Send,
                "recv" => SockKind::Recv,
                "state" => SockKind::State,
                "retransmit" => SockKind::Retransmit,
                _ => SockKind::Unknown,
            },
            pid: num(&v["pid"])? as u32,
            tid: num(&v["tid"])? as u32,
            ts_ns: num(&v["ts_ns"])?,
            sk: num(&v["sk"])?,
            bytes: int(&v["bytes"])?,
            local: endpoint(&v["local"]),
            remote: endpoint(&v["remote"]),
            oldstate: int(&v["oldstate"]).unwrap_or(0) as i32,
            newstate: int(&v["newstate"]).unwrap_or(0) as i32,
        })),
        "proc_exit" => Some(Event::ProcExit(ProcExitEvent {
            pid: num(&v["pid"])? as u32,
            ts_ns: num(&v["ts_ns"])?,
        })),
        _ => None,
    }
}

/// A host's events read back, with its clock moved back by `theta` (local + θ = true).
fn host_events(path: &Path, theta: i64) -> Vec<Event> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let at = |t: u64| (t as i64 - theta) as u64;
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .filter_map(|v| event_from_json(&v))
        .map(|mut e| {
            match &mut e {
                Event::Call(c) => {
                    c.entry_ns = at(c.entry_ns);
                    c.exit_ns = c.exit_ns.map(at);
                }
                Event::Sock(s) => s.ts_ns = at(s.ts_ns),
                Event::ProcExit(p) => p.ts_ns = at(p.ts_ns),
            }
            e
        })
        .collect()
}

/// `llmdd attach` on one host's ranks, dumping its events.
fn trace_host(pids: &[u32], dump: &Path) -> Proc {
    let mut cmd = Command::new(built("llmdd"));
    cmd.arg("attach");
    for p in pids {
        cmd.arg("--pid").arg(p.to_string());
    }
    cmd.args(["--no-tui", "--quiet", "--dump-events"]).arg(dump);
    let mut p = Proc::spawn("llmdd", cmd).expect("llmdd starts");
    p.wait_line("'tracing' line", Duration::from_secs(60), |s, l| {
        s == Stream::Stderr && l.starts_with("llmdd: tracing")
    })
    .expect("llmdd attaches");
    p
}

/// One job at a time (the tests of this file share a 2-core machine).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the job across two namespaces, ranks 0-1 on host A and 2-3 on host B, rank 3 late
/// by 20 ms every step, each host traced by its own llmdd. `mid_stream`: the tracers
/// attach while the job runs (at different moments), as in an incident, instead of before
/// the communicator exists. Returns the rank pids and each host's event dump.
fn two_host_run(hosts: &Hosts, name: &str, mid_stream: bool) -> (Vec<u32>, [PathBuf; 2]) {
    let lib_dir = fake_lib_dir();
    let work: PathBuf = lib_dir.join(name);
    std::fs::create_dir_all(&work).expect("work dir");
    // The launcher (and ranks 0-1) in namespace A, ranks 2-3 in namespace B.
    let rank_host = |r: usize| format!("{r}={}:{}", hosts.ns[1], hosts.addr[1]);
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", hosts.ns[0]))
        .arg(built("simjob"))
        .env("FAKENCCL_ADDR", &hosts.addr[0])
        .arg("--lib-dir")
        .arg(&lib_dir)
        .args(["--ranks", "4", "--warmup", "2", "--gate-init"])
        .args(["--compute-us", "2000", "--collective", "allreduce:16K"])
        .args(["--straggler", "3:20:1", "--timeout-s", "240"])
        .args(["--rank-host", &rank_host(2), "--rank-host", &rank_host(3)]);
    if mid_stream {
        cmd.arg("--forever");
    } else {
        cmd.args(["--steps", "60"]);
    }
    let mut job = Proc::spawn("simjob", cmd).expect("simjob starts");
    let spawned = job
        .wait_line("SPAWNED line", Duration::from_secs(120), |s, l| {
            s == Stream::Stdout && l.starts_with("SPAWNED ")
        })
        .expect("ranks spawned");
    let pids = parse_ready(&spawned).expect("pids").pids;
    assert_eq!(pids.len(), 4);
    // Ranks 2 and 3 really are in namespace B, 0 and 1 in A.
    let netns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/net")).expect("ns link");
    assert_eq!(netns(pids[0]), netns(pids[1]));
    assert_eq!(netns(pids[2]), netns(pids[3]));
    assert_ne!(netns(pids[0]), netns(pids[2]));

    let dumps = [work.join("a.jsonl"), work.join("b.jsonl")];
    let mut tracers = Vec::new();
    if !mid_stream {
        // Before the communicator exists: the streams are seen from their first byte and
        // ncclCommInitRank is recorded.
        tracers.push(trace_host(&pids[..2], &dumps[0]));
        tracers.push(trace_host(&pids[2..], &dumps[1]));
    }
    job.send_line("init").expect("init");
    job.wait_line("READY line", Duration::from_secs(120), |s, l| {
        s == Stream::Stdout && l.starts_with("READY ")
    })
    .expect("ready");
    job.send_line("go").expect("go");
    if mid_stream {
        // Attach while traffic flows, one host after the other; trace until each has seen
        // 100 more of its ranks' collectives.
        tracers.push(trace_host(&pids[..2], &dumps[0]));
        wait_for_calls(&dumps[0], 20);
        tracers.push(trace_host(&pids[2..], &dumps[1]));
        wait_for_calls(&dumps[1], 100);
        wait_for_calls(&dumps[0], 200);
        job.signal(libc::SIGTERM).expect("stopping the job");
    }
    let status = job.wait_exit(Duration::from_secs(240)).expect("job ends");
    assert!(
        mid_stream || status.success(),
        "simjob: {status}\n{}",
        job.transcript()
    );
    for t in tracers.iter_mut() {
        t.signal(libc::SIGTERM).expect("SIGTERM");
        assert!(t
            .wait_exit(Duration::from_secs(60))
            .expect("exits")
            .success());
    }
    (pids, dumps)
}

/// Waits (bounded) until `dump` holds `n` ncclAllReduce calls.
fn wait_for_calls(dump: &Path, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let calls = std::fs::read_to_string(dump)
            .map(|t| t.matches("\"func\":\"ncclAllReduce\"").count())
            .unwrap_or(0);
        if calls >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: {calls} of {n} calls",
            dump.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The two hosts' recordings, host B's clock moved back by [`THETA_B_NS`]; with
/// `realtime_error_ns`, the recorders' wall-clock offsets as well, host B's off by that
/// much (NTP).
fn recordings(
    pids: &[u32],
    dumps: &[PathBuf; 2],
    realtime_error_ns: Option<i64>,
) -> Vec<HostRecording> {
    let realtime = 1_764_000_000_000_000_000i64;
    vec![
        HostRecording {
            host: "host-a".into(),
            boot_id: Some("a".into()),
            realtime_offset_ns: realtime_error_ns.map(|_| (realtime, realtime)),
            processes: pids[..2].iter().map(|&p| (p, Default::default())).collect(),
            events: host_events(&dumps[0], 0),
            span_ns: None,
        },
        HostRecording {
            host: "host-b".into(),
            boot_id: Some("b".into()),
            realtime_offset_ns: realtime_error_ns.map(|e| {
                let r = realtime + THETA_B_NS + e;
                (r, r)
            }),
            processes: pids[2..].iter().map(|&p| (p, Default::default())).collect(),
            events: host_events(&dumps[1], THETA_B_NS),
            span_ns: None,
        },
    ]
}

/// The merged clock of host B brackets the injected offset.
fn check_clock(m: &merge::Merged) {
    for l in m.clock_lines() {
        eprintln!("{l}");
    }
    let b = &m.hosts[1].offset;
    eprintln!(
        "host-b: injected {THETA_B_NS} ns, estimated {} ± {:?} ns",
        b.offset_ns, b.error_ns
    );
    assert_eq!(b.method, ClockMethod::Data, "{:?}", m.hosts);
    let (lo, hi) = (b.lower_ns.expect("lower"), b.upper_ns.expect("upper"));
    assert!(lo <= THETA_B_NS && THETA_B_NS <= hi, "[{lo}, {hi}]");
    assert!(!b.inconsistent);
}

/// The engine on the merged job names rank 3 on host B, and the process maps back to its
/// pid there.
fn check_straggler(m: &merge::Merged, pids: &[u32]) {
    let mut engine = Engine::new(Config::default());
    for (id, h) in &m.registrations {
        engine.register_process(*id, h.clone());
    }
    engine.ingest_batch(m.events.iter().cloned());
    engine.flush();
    let stragglers: Vec<_> = engine
        .findings()
        .iter()
        .filter(|f| f.kind == FindingKind::Straggler)
        .collect();
    assert_eq!(stragglers.len(), 1, "{:#?}", engine.findings());
    let f = stragglers[0];
    eprintln!("{}", f.evidence);
    assert_eq!(f.culprit.rank, Some(3), "{f:#?}");
    assert_eq!(f.culprit.host.as_deref(), Some("host-b"), "{f:#?}");
    let p = m
        .process(f.culprit.pid.expect("pid"))
        .expect("known process");
    assert_eq!((p.host.as_str(), p.pid), ("host-b", pids[3]));
}

#[test]
fn two_namespaces_merge_into_one_job_with_the_straggler_on_host_b() {
    require_root();
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let hosts = Hosts::new();
    let (pids, dumps) = two_host_run(&hosts, "multinode_merge", false);
    // No wall clock at all: the TCP traffic alone aligns the hosts.
    let m = merge::merge(recordings(&pids, &dumps, None)).expect("merges");
    check_clock(&m);
    // One communicator, spanning both hosts, ranks placed by host.
    assert_eq!(m.communicators.len(), 1, "{:?}", m.communicators);
    let c = &m.communicators[0];
    assert_eq!(c.hosts, ["host-a", "host-b"]);
    let placed: Vec<(i32, &str, u32)> = c
        .members
        .iter()
        .map(|x| (x.rank, x.host.as_str(), x.pid))
        .collect();
    assert_eq!(
        placed,
        [
            (0, "host-a", pids[0]),
            (1, "host-a", pids[1]),
            (2, "host-b", pids[2]),
            (3, "host-b", pids[3])
        ]
    );
    check_straggler(&m, &pids);
}

#[test]
fn recordings_started_mid_run_are_aligned_with_the_wall_clocks_help() {
    require_root();
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let hosts = Hosts::new();
    let (pids, dumps) = two_host_run(&hosts, "multinode_merge_mid", true);
    // Wall clocks 300 µs apart: close enough to pick the stream alignment, and the data
    // then narrows the offset far below that.
    let m = merge::merge(recordings(&pids, &dumps, Some(300_000))).expect("merges");
    check_clock(&m);
    let err = m.hosts[1].offset.error_ns.expect("error bound");
    assert!(
        err < 300_000,
        "± {err} ns is no better than the wall clocks"
    );
    check_straggler(&m, &pids);
}
