//! `--prometheus`: the live /metrics endpoint is scraped while llmdd traces a running job and
//! its exposition text is parsed; a port already in use is one clear line before attaching.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use llmdd_tests::{
    harness::{built, fake_lib_dir, require_root, start_llmdd, Stream},
    job::Job,
};

fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// Where llmdd says it serves its metrics.
fn metrics_addr(llmdd: &llmdd_tests::harness::Proc) -> SocketAddr {
    let line = llmdd
        .lines_of(Stream::Stderr)
        .into_iter()
        .find(|l| l.starts_with("llmdd: serving metrics on http://"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no metrics line:\n{}", llmdd.transcript()));
    line.trim_start_matches("llmdd: serving metrics on http://")
        .trim_end_matches("/metrics")
        .parse()
        .expect("address in the metrics line")
}

/// (types by name, summed value by sample name and label fragment).
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<(String, String, f64)>,
}

impl Exposition {
    fn parse(body: &str) -> Exposition {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut w = rest.split_whitespace();
                if let (Some(n), Some(t)) = (w.next(), w.next()) {
                    types.insert(n.to_string(), t.to_string());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let (key, v) = line.rsplit_once(' ').expect("sample value");
                let (name, labels) = key
                    .split_once('{')
                    .map(|(n, l)| (n.to_string(), l.to_string()))
                    .unwrap_or((key.to_string(), String::new()));
                samples.push((name, labels, v.parse().expect("number")));
            }
        }
        Exposition { types, samples }
    }

    /// Sum of the samples of `name` whose labels contain every fragment of `labels`.
    fn sum(&self, name: &str, labels: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.split(',').all(|f| l.contains(f)))
            .map(|x| x.2)
            .sum()
    }
}

#[test]
fn live_metrics_endpoint_serves_conventional_metrics() {
    require_root();
    let lib_dir = fake_lib_dir();
    let mut job = Job::start(
        &lib_dir,
        &[
            "--ranks",
            "4",
            "--forever",
            "--warmup",
            "1",
            "--compute-us",
            "300",
            "--oom-every",
            "5",
            "--timeout-s",
            "240",
        ],
    )
    .expect("simjob starts");
    let mut llmdd = start_llmdd(
        &job.pids,
        &["--no-tui", "--quiet", "--prometheus", "127.0.0.1:0"],
    )
    .expect("llmdd attaches");
    let addr = metrics_addr(&llmdd);
    assert!(addr.ip().is_loopback(), "{addr}");
    job.go().expect("releasing the job");

    // Scrape until the collectives show (the handle -> communicator mapping takes a poll).
    let deadline = Instant::now() + Duration::from_secs(120);
    let (head, expo) = loop {
        let text = scrape(addr).expect("scrape");
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        let e = Exposition::parse(body);
        if e.sum(
            "llmdd_collective_duration_seconds_count",
            "op=\"all-reduce\"",
        ) >= 20.0
            && e.sum("llmdd_collective_arrival_skew_seconds_count", "") > 0.0
        {
            break (head.to_string(), e);
        }
        assert!(
            Instant::now() < deadline,
            "no collectives in /metrics:\n{body}\n{}",
            llmdd.transcript()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    for (n, t) in [
        ("llmdd_collective_duration_seconds", "histogram"),
        ("llmdd_collective_arrival_skew_seconds", "histogram"),
        ("llmdd_collective_bus_bandwidth_bytes_per_second", "gauge"),
        ("llmdd_request_ttft_seconds", "histogram"),
        ("llmdd_request_inter_token_seconds", "histogram"),
        ("llmdd_findings", "counter"),
        ("llmdd_events_lost", "counter"),
        ("llmdd_calls", "counter"),
    ] {
        assert_eq!(expo.types.get(n).map(String::as_str), Some(t), "{n}");
    }
    for (i, pid) in job.pids.iter().enumerate() {
        assert!(
            expo.sum(
                "llmdd_collective_duration_seconds_count",
                &format!("rank=\"{i}\"")
            ) > 0.0,
            "rank {i}"
        );
        assert!(
            expo.sum(
                "llmdd_calls_total",
                &format!("function=\"ncclAllReduce\",pid=\"{pid}\"")
            ) > 0.0
        );
    }
    // All ranks' handles resolved to one communicator.
    let comms: std::collections::BTreeSet<&str> = expo
        .samples
        .iter()
        .filter(|(n, _, _)| n == "llmdd_collective_duration_seconds_count")
        .filter_map(|(_, l, _)| l.split("comm=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(comms.len(), 1, "{comms:?}");
    assert_eq!(expo.sum("llmdd_events_lost_total", ""), 0.0);

    llmdd.signal(libc::SIGTERM).expect("SIGTERM");
    assert!(llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("exits")
        .success());
    job.proc.signal(libc::SIGTERM).expect("stopping the job");
    let _ = job.proc.wait_exit(Duration::from_secs(60));
}

#[test]
fn a_port_in_use_fails_in_one_line_before_attaching() {
    require_root();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = Command::new(built("llmdd"))
        .args(["attach", "--pid", "1", "--no-tui", "--prometheus", &port])
        .output()
        .expect("runs llmdd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("already in use"), "{err}");
    assert!(lines[0].contains(&port), "{err}");
    drop(taken);
}

/// Descriptors llmdd holds open now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Hundreds of clients that connect to /metrics and never finish their request, all through a
/// run: llmdd holds at most `MAX_SCRAPES` of them at once (the rest wait in the kernel's
/// backlog), drains every event (none lost, every rank's calls counted alike) and exits when
/// the job ends.
#[test]
fn a_flood_of_slow_connections_costs_no_event() {
    require_root();
    let lib_dir = fake_lib_dir();
    let steps = 900;
    let mut job = Job::start(
        &lib_dir,
        &[
            "--ranks",
            "2",
            "--steps",
            &steps.to_string(),
            "--warmup",
            "1",
            "--compute-us",
            "500",
            "--timeout-s",
            "240",
        ],
    )
    .expect("simjob starts");
    let report = std::env::temp_dir().join(format!("llmdd-flood-{}.json", std::process::id()));
    let report_s = report.to_string_lossy().into_owned();
    let mut llmdd = start_llmdd(
        &job.pids,
        &[
            "--no-tui",
            "--quiet",
            "--prometheus",
            "127.0.0.1:0",
            "--report",
            &report_s,
        ],
    )
    .expect("llmdd attaches");
    let addr = metrics_addr(&llmdd);
    let before = open_fds(llmdd.pid());
    job.go().expect("releasing the job");
    let started = Instant::now();
    let mut slow = Vec::new();
    let mut most = 0;
    // Connections past the backlog time out or are refused: 200 tries, whatever they give.
    for _ in 0..200 {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
            slow.push(s);
        }
        most = most.max(open_fds(llmdd.pid()));
    }
    assert!(slow.len() > 100, "only {} connections made", slow.len());
    let flooded = started.elapsed();
    let running = |p: &u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| !s.contains(") Z "))
    };
    assert!(
        job.pids.iter().all(running),
        "the job ended before the flood did"
    );
    assert!(
        most <= before + llmdd::views::metrics::MAX_SCRAPES + 4,
        "llmdd held {most} descriptors under the flood, {before} before it"
    );
    job.proc
        .wait_exit(Duration::from_secs(240))
        .expect("job completes");
    eprintln!(
        "{} slow connections in {flooded:?}, the job ran {:?}; llmdd held {most} descriptors at most, {before} before",
        slow.len(),
        started.elapsed()
    );
    let status = llmdd.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", llmdd.transcript());
    drop(slow);
    let text = std::fs::read_to_string(&report).expect("report");
    let _ = std::fs::remove_file(&report);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(doc["events"]["lost"], 0, "{:#}", doc["events"]);
    let calls: Vec<u64> = job
        .pids
        .iter()
        .map(|pid| {
            doc["processes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["pid"] == *pid)
                .flat_map(|p| p["functions"].as_array().into_iter().flatten())
                .filter(|f| f["name"] == "ncclAllReduce")
                .filter_map(|f| f["calls"].as_u64())
                .sum()
        })
        .collect();
    assert!(calls[0] >= steps, "{calls:?}");
    assert!(calls.iter().all(|&c| c == calls[0]), "{calls:?}");
}
