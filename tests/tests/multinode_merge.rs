//! Two hosts, for real: two network namespaces joined by a veth pair, the simulated job's
//! four ranks split across them (ranks 0-1 on host A, 2-3 on host B, their NCCL traffic over
//! the veth), each host recorded by its own `llmdd record` (run in its namespace, under its
//! own host name). Host B's recording is then moved onto a clock 7.65 s behind (its wall
//! clock 200-300 µs off besides, as NTP leaves it), and `llmdd report a.rec b.rec` must
//! bracket that offset from the data and name the straggler (rank 3) with host B.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use llmdd::{
    events::{Event, SockKind},
    merge::{self, ClockMethod},
    record,
};
use llmdd_common::{
    call::{CallRecord, F_DEREF, F_OUT, F_RANK, F_RETURNED, F_UID, NO_SLOT},
    proc::ProcExitRecord,
    sock::{
        SockRecord, AF_INET, AF_INET6, SF_ADDR, SOCK_RECV, SOCK_RETRANSMIT, SOCK_SEND, SOCK_STATE,
    },
    RecordKind,
};
use llmdd_tests::{
    harness::{built, fake_lib_dir, require_root, Proc, Stream},
    job::parse_ready,
};
use serde_json::Value;

/// Host B's clock reads the true time minus this much (so its offset to host A is this).
const THETA_B_NS: i64 = 7_654_321_987;

/// One job at a time (the tests of this file share a 2-core machine).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

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

const HOST_NAMES: [&str; 2] = ["host-a", "host-b"];

/// `llmdd record` of one host's ranks, run in that host's network namespace under its host
/// name, also dumping its events (to follow its progress).
fn record_host(hosts: &Hosts, h: usize, pids: &[u32], file: &Path, dump: &Path) -> Proc {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", hosts.ns[h]))
        .args([
            "unshare",
            "--uts",
            "sh",
            "-c",
            "hostname \"$0\" && exec \"$@\"",
        ])
        .arg(HOST_NAMES[h])
        .arg(built("llmdd"))
        .args(["record", "--quiet", "-o"])
        .arg(file)
        .arg("--dump-events")
        .arg(dump);
    for p in pids {
        cmd.args(["--pid", &p.to_string()]);
    }
    let mut p = Proc::spawn(HOST_NAMES[h], cmd).expect("llmdd record starts");
    p.wait_line("recording line", Duration::from_secs(60), |s, l| {
        s == Stream::Stderr && l.starts_with("llmdd: recording to")
    })
    .expect("records");
    p
}

/// Waits (bounded) until `dump` holds `n` ncclAllReduce calls.
fn wait_for_calls(dump: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let calls = std::fs::read_to_string(dump)
            .map(|t| t.matches("\"func\":\"ncclAllReduce\"").count())
            .unwrap_or(0);
        if calls >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {calls} of {n} calls",
            dump.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the job across two namespaces, ranks 0-1 on host A and 2-3 on host B, rank 3 late
/// by 20 ms every step, each host recorded by its own llmdd. `mid_stream`: the recorders
/// attach while the job runs (at different moments), as in an incident, instead of before
/// the communicator exists. Returns the rank pids and each host's record file.
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

    let files = [work.join("a.rec"), work.join("b.rec")];
    let dumps = [work.join("a.jsonl"), work.join("b.jsonl")];
    let mut recorders = Vec::new();
    let mut start = |h: usize, pids: &[u32]| {
        recorders.push(record_host(hosts, h, pids, &files[h], &dumps[h]));
    };
    if !mid_stream {
        // Before the communicator exists: the streams are seen from their first byte and
        // ncclCommInitRank is recorded.
        start(0, &pids[..2]);
        start(1, &pids[2..]);
    }
    job.send_line("init").expect("init");
    job.wait_line("READY line", Duration::from_secs(120), |s, l| {
        s == Stream::Stdout && l.starts_with("READY ")
    })
    .expect("ready");
    job.send_line("go").expect("go");
    if mid_stream {
        // Attach while traffic flows, one host after the other.
        start(0, &pids[..2]);
        wait_for_calls(&dumps[0], 20);
        start(1, &pids[2..]);
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
    // Every target gone: the recorders stop by themselves.
    for r in recorders.iter_mut() {
        let status = r
            .wait_exit(Duration::from_secs(60))
            .expect("recorder exits");
        assert!(status.success(), "{}", r.transcript());
    }
    (pids, files)
}

/// The raw probe record an event was decoded from (the inverse of `Event::decode` for what
/// an event keeps; checked by decoding it again).
fn encode(ev: &Event) -> Vec<u8> {
    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: viewing a plain #[repr(C)] integer record as bytes.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }
    match ev {
        Event::Call(c) => {
            let roles = &c.spec().roles;
            let mut flags = 0;
            if c.exit_ns.is_some() {
                flags |= F_RETURNED;
            }
            if c.out.is_some() {
                flags |= F_OUT;
            }
            if c.uid_hash.is_some() {
                flags |= F_UID;
            }
            if c.rank.is_some() && c.nranks.is_some() {
                flags |= F_RANK;
            }
            let deref = roles.deref != NO_SLOT && roles.stream == NO_SLOT && c.stream.is_some();
            if deref {
                flags |= F_DEREF;
            }
            bytes(&CallRecord {
                kind: RecordKind::Call as u32,
                func: c.func,
                lib_slot: c.lib_slot,
                pid: c.pid,
                tid: c.tid,
                entry_ns: c.entry_ns,
                exit_ns: c.exit_ns.unwrap_or(0),
                args: c.args,
                ret: c.ret.map_or(0, |r| r as i32 as u32 as u64),
                out_val: c.out.unwrap_or(0),
                deref_val: if deref { c.stream.unwrap_or(0) } else { 0 },
                uid_hash: c.uid_hash.unwrap_or(0),
                rank: c.rank.unwrap_or(0),
                nranks: c.nranks.unwrap_or(0),
                flags,
                cpu: 0,
                ..CallRecord::default()
            })
        }
        Event::Sock(s) => {
            let octets = |a: Option<(std::net::IpAddr, u16)>| -> [u8; 16] {
                let mut o = [0u8; 16];
                match a.map(|x| x.0) {
                    Some(std::net::IpAddr::V4(v)) => o[..4].copy_from_slice(&v.octets()),
                    Some(std::net::IpAddr::V6(v)) => o = v.octets(),
                    None => {}
                }
                o
            };
            let v6 = matches!(s.local, Some((std::net::IpAddr::V6(_), _)));
            bytes(&SockRecord {
                kind: RecordKind::Sock as u32,
                event: match s.kind {
                    SockKind::Send => SOCK_SEND,
                    SockKind::Recv => SOCK_RECV,
                    SockKind::State => SOCK_STATE,
                    SockKind::Retransmit => SOCK_RETRANSMIT,
                    SockKind::Unknown => 0,
                },
                pid: s.pid,
                tid: s.tid,
                ts_ns: s.ts_ns,
                sk: s.sk,
                bytes: s.bytes,
                family: if v6 { AF_INET6 } else { AF_INET },
                protocol: 6,
                sport: s.local.map_or(0, |x| x.1),
                dport: s.remote.map_or(0, |x| x.1),
                oldstate: s.oldstate,
                newstate: s.newstate,
                saddr: octets(s.local),
                daddr: octets(s.remote),
                flags: if s.local.is_some() { SF_ADDR } else { 0 },
                _pad: 0,
            })
        }
        Event::ProcExit(p) => bytes(&ProcExitRecord {
            kind: RecordKind::ProcExit as u32,
            pid: p.pid,
            tid: p.pid,
            group_dead: 1,
            ts_ns: p.ts_ns,
        }),
    }
}

/// Rewrites record file `from` into `to` as if its host's CLOCK_MONOTONIC read `theta` less
/// (every event, chunk time and the start/end times), its wall-clock offsets moved to match
/// and then `realtime_error` off.
fn shift_recording(from: &Path, to: &Path, theta: i64, realtime_error: i64) {
    let r = record::read(from, |_, _| {}).expect("reads the recording");
    assert!(r.salvage.complete, "{:?}", r.salvage);
    let at = |t: u64| (t as i64 - theta) as u64;
    let mut w = record::Writer::create(to).expect("creates the copy");
    let mut meta = r.meta.clone();
    meta.start_ns = at(meta.start_ns);
    meta.realtime_offset_ns += theta + realtime_error;
    w.meta(&meta).expect("meta");
    for chunk in &r.chunks {
        for ev in &chunk.events {
            let mut ev = ev.clone();
            match &mut ev {
                Event::Call(c) => {
                    c.entry_ns = at(c.entry_ns);
                    c.exit_ns = c.exit_ns.map(at);
                }
                Event::Sock(s) => s.ts_ns = at(s.ts_ns),
                Event::ProcExit(p) => p.ts_ns = at(p.ts_ns),
            }
            let raw = encode(&ev);
            assert_eq!(Event::decode(&raw).as_ref(), Ok(&ev), "re-encoding");
            w.record(&raw, at(chunk.now_ns)).expect("record");
        }
    }
    let mut end = r.end.clone().expect("end metadata");
    end.end_ns = at(end.end_ns);
    end.realtime_offset_ns += theta + realtime_error;
    w.finish(&end).expect("end");
}

/// `llmdd report` of both hosts' files: the merged report, and the clock line of host B
/// as (offset, error) in ns.
fn report(files: &[PathBuf; 2], shifted: &Path, out: &Path) -> (Value, (i64, i64)) {
    let o = Command::new(built("llmdd"))
        .arg("report")
        .arg(&files[0])
        .arg(shifted)
        .arg("--report")
        .arg(out)
        .output()
        .expect("llmdd report runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    eprintln!("{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("llmdd: host-b: clock offset "))
        .unwrap_or_else(|| panic!("no clock line for host-b:\n{err}"));
    assert!(line.contains("bound(s) in the data"), "{line}");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(out).expect("report")).expect("JSON");
    (doc, parse_clock(line))
}

/// `... clock offset +7.654321987 s ± 26.485 µs, ...` -> (offset, error) in ns.
fn parse_clock(line: &str) -> (i64, i64) {
    let rest = line.split("clock offset ").nth(1).expect("offset");
    let words: Vec<&str> = rest.split_whitespace().collect();
    let ns = |num: &str, unit: &str| -> i64 {
        let unit = unit.trim_end_matches(',');
        let scale = match unit {
            "s" => 1e9,
            "ms" => 1e6,
            "µs" => 1e3,
            other => panic!("unit {other} in {line}"),
        };
        (num.parse::<f64>().expect("number") * scale).round() as i64
    };
    assert_eq!(words[2], "±", "{line}");
    (ns(words[0], words[1]), ns(words[3], words[4]))
}

/// Checks the merged report: host B's clock bracketed, exactly one straggler, rank 3 on
/// host B with its pid there.
fn check(doc: &Value, clock: (i64, i64), pids: &[u32]) {
    let (offset, error) = clock;
    eprintln!("host-b: injected {THETA_B_NS} ns, estimated {offset} ± {error} ns");
    assert!(
        (offset - THETA_B_NS).abs() <= error,
        "estimate {offset} ± {error} misses {THETA_B_NS}"
    );
    assert!(error < 1_000_000, "± {error} ns");
    let findings = doc["findings"].as_array().cloned().unwrap_or_default();
    let stragglers: Vec<&Value> = findings
        .iter()
        .filter(|f| f["kind"] == "straggler")
        .collect();
    assert_eq!(stragglers.len(), 1, "{findings:#?}");
    let c = &stragglers[0]["culprit"];
    assert_eq!(c["rank"], 3, "{c}");
    assert_eq!(c["host"], "host-b", "{c}");
    // Pids are unique across the two "hosts" (one kernel), so they keep their numbers.
    assert_eq!(c["pid"], pids[3], "{c}");
    // The report carries the job view: both hosts, and the communicator across them.
    let hosts: Vec<&str> = doc["job"]["hosts"]
        .as_array()
        .map(|h| h.iter().filter_map(|x| x["host"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(hosts.len(), 2, "{:#}", doc["job"]);
    assert!(hosts.contains(&"host-b"), "{hosts:?}");
}

#[test]
fn two_namespaces_recorded_apart_report_as_one_job_with_the_straggler_on_host_b() {
    require_root();
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let hosts = Hosts::new();
    let (pids, files) = two_host_run(&hosts, "multinode_merge", false);
    let shifted = files[1].with_file_name("b-shifted.rec");
    shift_recording(&files[1], &shifted, THETA_B_NS, 200_000);
    let (doc, clock) = report(&files, &shifted, &files[0].with_file_name("merged.json"));
    // Recorded from before the job connected: its communicator setup is in the files, and
    // the job view matches the communicator across the hosts by its unique id.
    assert!(
        doc["job"]["communicators"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c["hosts"].as_array().map(Vec::len) == Some(2))),
        "a communicator spans both hosts: {:#}",
        doc["job"]["communicators"]
    );

    check(&doc, clock, &pids);

    // The same files through the library: one communicator across both hosts, its ranks
    // placed by host.
    let read = |p: &Path| record::read(p, |_, _| {}).expect("reads").to_host();
    let m = merge::merge(vec![read(&files[0]), read(&shifted)]).expect("merges");
    assert!(
        matches!(
            m.hosts[1].offset.method,
            ClockMethod::Data | ClockMethod::DataRealtime
        ),
        "{:?}",
        m.hosts[1].offset
    );
    assert_eq!(m.communicators.len(), 1, "{:?}", m.communicators);
    let c = &m.communicators[0];
    assert_eq!(c.hosts, HOST_NAMES);
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
}

#[test]
fn recordings_started_mid_run_are_aligned_with_help_from_the_wall_clocks() {
    require_root();
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let hosts = Hosts::new();
    let (pids, files) = two_host_run(&hosts, "multinode_merge_mid", true);
    // Wall clocks 300 µs apart: close enough to pick the stream alignment, and the data
    // then narrows the offset well below that.
    let shifted = files[1].with_file_name("b-shifted.rec");
    shift_recording(&files[1], &shifted, THETA_B_NS, 300_000);
    let (doc, clock) = report(&files, &shifted, &files[0].with_file_name("merged.json"));
    check(&doc, clock, &pids);
    assert!(
        clock.1 < 300_000,
        "± {} ns is no better than the wall clocks",
        clock.1
    );
}
