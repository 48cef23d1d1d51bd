//! NCCL's own view of a job, from its RAS service (NCCL 2.24 and later run it in every
//! process, on a TCP client port, localhost:28028 unless NCCL_RAS_ADDR moves it): which
//! communicators exist, their ranks with pid and collective counts, and which ranks are
//! missing (unresponsive or dead). llmdd shows it beside its own findings and says where the
//! two agree.
//!
//! The client side of the protocol: `CLIENT PROTOCOL 2` / `SERVER PROTOCOL n`, `TIMEOUT s` /
//! `OK`, `SET FORMAT json` / `OK` (NCCL 2.28.7 and later; older ones answer otherwise and
//! the text report is kept as it is), `VERBOSE STATUS`, then the report until the service
//! closes the connection.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::engine::{RasSight, RasWhat};

mod owner;

/// The ranks RAS names, as findings take them (see `engine::nccl_ras`): per communicator,
/// each missing rank (unresponsive or dead), and each answering rank whose count of some
/// collective is below the highest count of it while at least one rank has that highest
/// count (the ranks at the top started one it has not; a rank named for several functions
/// is named once, for the largest gap).
pub fn sights(s: &RasStatus) -> Vec<RasSight> {
    let mut out = Vec::new();
    let n = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    for c in &s.communicators {
        let answering = c.ranks.len() as u32;
        for m in &c.missing_ranks {
            out.push(RasSight {
                comm: c.hash.clone(),
                nranks: n(c.size),
                rank: n(m.rank),
                pid: n(m.pid),
                host: m.host.clone(),
                what: if m.status.considered_dead {
                    RasWhat::Dead
                } else {
                    RasWhat::Unresponsive
                },
                peers: answering,
            });
        }
        let ops: std::collections::BTreeSet<&String> = c
            .ranks
            .iter()
            .flat_map(|r| r.collective_counts.keys())
            .collect();
        let mut behind: std::collections::BTreeMap<i64, (RasWhat, u32)> = Default::default();
        for op in ops {
            let count = |r: &RasRank| r.collective_counts.get(op).copied().unwrap_or(0);
            let top = c.ranks.iter().map(count).max().unwrap_or(0);
            let at_top = c.ranks.iter().filter(|r| count(r) == top).count() as u32;
            for r in c.ranks.iter().filter(|r| count(r) < top) {
                let gap = top - count(r);
                let better = behind.get(&r.rank).is_none_or(|(w, _)| match w {
                    RasWhat::Behind { count, ahead, .. } => ahead - count < gap,
                    _ => false,
                });
                if better {
                    let what = RasWhat::Behind {
                        op: op.clone(),
                        count: count(r),
                        ahead: top,
                    };
                    behind.insert(r.rank, (what, at_top));
                }
            }
        }
        for (rank, (what, peers)) in behind {
            let r = c.ranks.iter().find(|r| r.rank == rank);
            out.push(RasSight {
                comm: c.hash.clone(),
                nranks: n(c.size),
                rank: n(rank),
                pid: r.map_or(0, |r| n(r.pid)),
                host: r.map(|r| r.host.clone()).unwrap_or_default(),
                what,
                peers,
            });
        }
    }
    out
}

/// NCCL's default RAS client address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:28028";
/// The client protocol version spoken here.
const PROTOCOL: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RasError {
    #[error("no NCCL RAS service at {addr} ({source}): the job runs NCCL before 2.24, has NCCL_RAS_ENABLE=0, or listens elsewhere (NCCL_RAS_ADDR)")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the NCCL RAS service at {addr}: {why}")]
    Protocol { addr: String, why: String },
}

/// One rank of a communicator as RAS reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RasRank {
    pub rank: i64,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid: i64,
    #[serde(default)]
    pub cuda_dev: i64,
    /// Collective operations started, by NCCL function name.
    #[serde(default)]
    pub collective_counts: std::collections::BTreeMap<String, u64>,
}

/// A rank RAS could not reach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RasMissing {
    pub rank: i64,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid: i64,
    #[serde(default)]
    pub status: RasMissingStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RasMissingStatus {
    #[serde(default)]
    pub unresponsive: bool,
    #[serde(default)]
    pub considered_dead: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RasComm {
    #[serde(default)]
    pub hash: String,
    /// Ranks in the communicator.
    pub size: i64,
    #[serde(default)]
    pub ranks: Vec<RasRank>,
    #[serde(default)]
    pub missing_ranks: Vec<RasMissing>,
}

/// The parsed `VERBOSE STATUS` report (JSON format).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RasStatus {
    #[serde(default)]
    pub nccl_version: String,
    #[serde(default)]
    pub communicators: Vec<RasComm>,
}

/// What the service answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RasReport {
    Json(RasStatus),
    /// A service without the JSON format: its text report, as it is.
    Text(String),
}

fn proto(addr: &str, why: impl Into<String>) -> RasError {
    RasError::Protocol {
        addr: addr.to_string(),
        why: why.into(),
    }
}

/// Queries the RAS service at `addr` (`HOST:PORT`), waiting at most `timeout` for each step.
pub fn query(addr: &str, timeout: Duration) -> Result<RasReport, RasError> {
    let sa: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|source| RasError::Connect {
            addr: addr.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| proto(addr, "the address resolves to nothing"))?;
    let stream = TcpStream::connect_timeout(&sa, timeout).map_err(|source| RasError::Connect {
        addr: addr.to_string(),
        source,
    })?;
    let mut conn = Bounded::new(stream, addr, timeout)?;
    let ask = |c: &mut Bounded, msg: &str| {
        c.send(msg)?;
        c.line()
    };
    let hello = ask(&mut conn, &format!("CLIENT PROTOCOL {PROTOCOL}\n"))?;
    if !hello.to_ascii_uppercase().starts_with("SERVER PROTOCOL ") {
        return Err(proto(addr, format!("unexpected greeting `{hello}`")));
    }
    // NCCL waits this long for the other processes' answers; ours waits a little more.
    let secs = timeout.as_secs().saturating_sub(1).max(1);
    let ok = ask(&mut conn, &format!("TIMEOUT {secs}\n"))?;
    if !ok.eq_ignore_ascii_case("OK") {
        return Err(proto(addr, format!("TIMEOUT refused: `{ok}`")));
    }
    let json = ask(&mut conn, "SET FORMAT json\n")?.eq_ignore_ascii_case("OK");
    conn.send("VERBOSE STATUS\n")?;
    let body = conn.rest()?;
    if !json {
        return Ok(RasReport::Text(body));
    }
    serde_json::from_str(&body)
        .map(RasReport::Json)
        .map_err(|e| proto(addr, format!("the JSON report does not parse: {e}")))
}

/// The most a RAS reply may hold: a JSON report of a few thousand ranks is a few MiB.
pub const MAX_REPLY: usize = 16 << 20;
/// The longest protocol line (greetings, `OK`).
const MAX_LINE: usize = 4096;

/// A RAS connection read within one deadline for the whole exchange and a size bound, so a
/// peer that trickles bytes or never stops cannot hold llmdd.
struct Bounded<'a> {
    stream: TcpStream,
    addr: &'a str,
    deadline: std::time::Instant,
    buf: Vec<u8>,
}

impl<'a> Bounded<'a> {
    fn new(stream: TcpStream, addr: &'a str, timeout: Duration) -> Result<Self, RasError> {
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| proto(addr, e.to_string()))?;
        Ok(Bounded {
            stream,
            addr,
            deadline: std::time::Instant::now() + timeout,
            buf: Vec::new(),
        })
    }

    fn send(&mut self, msg: &str) -> Result<(), RasError> {
        self.stream
            .write_all(msg.as_bytes())
            .map_err(|e| proto(self.addr, e.to_string()))
    }

    /// Reads more; false at the end of the stream.
    fn more(&mut self) -> Result<bool, RasError> {
        let left = self
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(proto(self.addr, "no complete answer in time"));
        }
        if self.buf.len() > MAX_REPLY {
            return Err(proto(
                self.addr,
                format!("the answer exceeds {MAX_REPLY} bytes"),
            ));
        }
        let err = |e: std::io::Error| match e.kind() {
            // The read timeout (the rest of the deadline) ran out.
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                proto(self.addr, "no complete answer in time")
            }
            _ => proto(self.addr, e.to_string()),
        };
        self.stream.set_read_timeout(Some(left)).map_err(err)?;
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).map_err(err)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// One line, trimmed.
    fn line(&mut self) -> Result<String, RasError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&line).trim().to_string());
            }
            if self.buf.len() > MAX_LINE {
                return Err(proto(self.addr, "a protocol line is too long"));
            }
            if !self.more()? {
                return Err(proto(self.addr, "the service closed the connection"));
            }
        }
    }

    /// Everything up to the end of the stream.
    fn rest(&mut self) -> Result<String, RasError> {
        while self.more()? {}
        Ok(String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned())
    }
}

/// What llmdd knows of one communicator, for the comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OurComm {
    pub id: String,
    pub nranks: Option<u32>,
    /// (rank, pid) of the members llmdd traces.
    pub members: Vec<(Option<u32>, u32)>,
    /// Ranks llmdd names as missing from an open instance (stall findings).
    pub missing: Vec<u32>,
}

/// llmdd's communicators as the comparison takes them: members from the snapshot, missing
/// ranks from the active stall findings on each.
pub fn ours(snap: &crate::engine::Snapshot) -> Vec<OurComm> {
    snap.communicators
        .iter()
        .map(|c| OurComm {
            id: c.lane.id.clone(),
            nranks: c.nranks,
            members: c.lane.members.iter().map(|m| (m.rank, m.pid)).collect(),
            missing: snap
                .findings
                .iter()
                .filter(|f| {
                    f.active
                        && f.kind == crate::engine::FindingKind::Stall
                        && f.culprit.comm.map(|x| format!("{x:016x}")) == Some(c.lane.id.clone())
                })
                .filter_map(|f| f.culprit.rank)
                .collect(),
        })
        .collect()
}

/// Whether a traced NCCL runs the RAS service by default (2.24 and later).
pub fn nccl_has_ras(version: &str) -> bool {
    let mut v = version
        .split('.')
        .map(|p| p.trim().parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) >= (2, 24)
}

/// Where to ask, and whether the user named it (`--ras`), for the traced NCCLs `nccl` (pid,
/// version): None when off, or when `auto` and no traced NCCL is 2.24 or later; an error
/// says why `auto` does not dial (`owner`).
pub fn address(setting: &str, nccl: &[(u32, String)]) -> Option<Result<(String, bool), String>> {
    match setting {
        "off" => None,
        "auto" => {
            let mut pids: Vec<u32> = nccl
                .iter()
                .filter(|(_, v)| nccl_has_ras(v))
                .map(|(p, _)| *p)
                .collect();
            pids.dedup();
            (!pids.is_empty()).then(|| owner::auto_address(&pids).map(|a| (a, false)))
        }
        a => Some(Ok((a.to_string(), true))),
    }
}

/// The `--ras` block of the final summary: RAS's view and how it compares, or why there is
/// none (`None` when nothing should be said: auto mode and no RAS-capable NCCL traced).
pub fn summary_block(
    setting: &str,
    nccl: &[(u32, String)],
    snap: &crate::engine::Snapshot,
) -> Option<Vec<String>> {
    let (addr, explicit) = match address(setting, nccl)? {
        Ok(a) => a,
        Err(why) => return Some(vec![format!("nccl ras: not asked: {why}")]),
    };
    match query(&addr, Duration::from_secs(6)) {
        Ok(RasReport::Json(s)) => Some(compare(&s, &ours(snap))),
        Ok(RasReport::Text(t)) => Some(
            std::iter::once(
                "nccl ras (text report: this NCCL has no JSON format, nothing compared):"
                    .to_string(),
            )
            .chain(t.lines().map(|l| format!("  {l}")))
            .collect(),
        ),
        Err(e) if explicit => Some(vec![format!("nccl ras: {e}")]),
        Err(e) => {
            tracing::info!("{e}");
            None
        }
    }
}

/// A stand-in RAS service on a free localhost port, speaking the protocol above to every
/// client and answering `VERBOSE STATUS` with `report` (JSON when `json`, else as a service
/// older than the JSON format would): for tests, and for trying `--ras` without a GPU job.
/// Returns its `HOST:PORT`.
pub fn serve_canned(report: String, json: bool) -> std::io::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    let report = std::sync::Arc::new(report);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let report = report.clone();
            std::thread::spawn(move || canned_client(s, &report, json));
        }
    });
    Ok(addr)
}

fn canned_client(s: TcpStream, report: &str, json: bool) {
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let reply = match line.trim() {
            l if l.starts_with("CLIENT PROTOCOL") => "SERVER PROTOCOL 2\n",
            l if l.starts_with("TIMEOUT") => "OK\n",
            "SET FORMAT json" if json => "OK\n",
            "SET FORMAT json" => "ERROR: Unknown command\n",
            "VERBOSE STATUS" => {
                let _ = w.write_all(report.as_bytes());
                return;
            }
            _ => "ERROR\n",
        };
        let _ = w.write_all(reply.as_bytes());
    }
}

/// Lines comparing RAS's communicators with llmdd's: matched by rank count and member pids;
/// per communicator whether membership and missing ranks agree.
pub fn compare(ras: &RasStatus, ours: &[OurComm]) -> Vec<String> {
    let mut out = Vec::new();
    for c in &ras.communicators {
        let pids: Vec<u32> = c
            .ranks
            .iter()
            .filter_map(|r| u32::try_from(r.pid).ok())
            .collect();
        let missing: Vec<i64> = c.missing_ranks.iter().map(|m| m.rank).collect();
        let found = ours.iter().find(|o| {
            o.nranks.map(i64::from) == Some(c.size)
                && o.members.iter().any(|(_, p)| pids.contains(p))
        });
        let ras_line = format!(
            "nccl ras: communicator {} of {} ranks: {} answering{}",
            c.hash,
            c.size,
            c.ranks.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(
                    ", missing rank(s) {}",
                    missing
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        out.push(ras_line);
        let Some(o) = found else {
            out.push(
                "  llmdd: no traced communicator with that size and those pids (not attached \
                 to its processes?)"
                    .to_string(),
            );
            continue;
        };
        let ours_pids: Vec<u32> = o.members.iter().map(|(_, p)| *p).collect();
        let both = pids.iter().filter(|p| ours_pids.contains(p)).count();
        let mut ours_missing = o.missing.clone();
        ours_missing.sort_unstable();
        let mut ras_missing: Vec<u32> = missing
            .iter()
            .filter_map(|r| u32::try_from(*r).ok())
            .collect();
        ras_missing.sort_unstable();
        let agree = ours_missing == ras_missing;
        out.push(format!(
            "  llmdd: communicator {}: {} of its {} traced members answer RAS; missing ranks \
             {} ({})",
            o.id,
            both,
            o.members.len(),
            if agree { "agree" } else { "differ" },
            if agree {
                if ras_missing.is_empty() {
                    "none".to_string()
                } else {
                    format!("{ras_missing:?}")
                }
            } else {
                format!("RAS {ras_missing:?}, llmdd {ours_missing:?}")
            }
        ));
    }
    if ras.communicators.is_empty() {
        out.push("nccl ras: no communicators".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve(json: bool, report: &'static str) -> String {
        serve_canned(report.to_string(), json).expect("a stand-in service")
    }

    const REPORT: &str = r#"{
  "nccl_version": "2.28.9",
  "cuda_runtime_version": 12090,
  "cuda_driver_version": 12090,
  "timestamp": "2026-12-04 13:00:00",
  "communicators_count": 1,
  "communicators": [
    {
      "hash": "0x5a1b",
      "secondary_hash": "0x1:0x2",
      "size": 4,
      "ranks_count": 3,
      "missing_ranks_count": 1,
      "ranks": [
        {"rank": 0, "host": "10.0.0.1", "pid": 100, "cuda_dev": 0, "nvml_dev": 0,
         "status": {"init_state": 0, "async_error": 0, "finalize_called": false,
                    "destroy_flag": false, "abort_flag": false},
         "collective_counts": {"AllReduce": 41}},
        {"rank": 1, "host": "10.0.0.1", "pid": 101, "cuda_dev": 1, "nvml_dev": 1,
         "status": {}, "collective_counts": {"AllReduce": 41}},
        {"rank": 3, "host": "10.0.0.1", "pid": 103, "cuda_dev": 3, "nvml_dev": 3,
         "status": {}, "collective_counts": {"AllReduce": 41}}
      ],
      "missing_ranks": [
        {"rank": 2, "host": "10.0.0.1", "pid": 102, "cuda_dev": 2, "nvml_dev": 2,
         "status": {"unresponsive": true, "considered_dead": false}}
      ]
    }
  ],
  "ras": {"collection_time_sec": 0.004, "timeouts_count": 0}
}
"#;

    #[test]
    fn queries_a_service_and_compares_with_our_communicators() {
        let addr = serve(true, REPORT);
        let RasReport::Json(s) = query(&addr, Duration::from_secs(5)).expect("query") else {
            panic!("JSON expected");
        };
        assert_eq!(s.nccl_version, "2.28.9");
        assert_eq!(s.communicators[0].missing_ranks[0].pid, 102);
        assert!(s.communicators[0].missing_ranks[0].status.unresponsive);
        let ours = vec![OurComm {
            id: "c0ffee".into(),
            nranks: Some(4),
            members: vec![
                (Some(0), 100),
                (Some(1), 101),
                (Some(2), 102),
                (Some(3), 103),
            ],
            missing: vec![2],
        }];
        let lines = compare(&s, &ours);
        assert!(
            lines[0].contains("4 ranks: 3 answering, missing rank(s) 2"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("3 of its 4 traced members answer RAS"),
            "{lines:?}"
        );
        assert!(lines[1].contains("missing ranks agree ([2])"), "{lines:?}");
        let mut disagree = ours.clone();
        disagree[0].missing.clear();
        let lines = compare(&s, &disagree);
        assert!(lines[1].contains("differ (RAS [2], llmdd [])"), "{lines:?}");
    }

    #[test]
    fn missing_ranks_and_ranks_behind_in_count_are_named() {
        let json = r#"{"nccl_version": "2.27.5", "communicators": [{"hash": "c0ffee", "size": 4,
          "ranks": [
            {"rank": 0, "host": "10.0.0.1", "pid": 100, "collective_counts": {"AllReduce": 812, "Broadcast": 3}},
            {"rank": 1, "host": "10.0.0.1", "pid": 101, "collective_counts": {"AllReduce": 812, "Broadcast": 3}},
            {"rank": 2, "host": "10.0.0.2", "pid": 102, "collective_counts": {"AllReduce": 811, "Broadcast": 2}}],
          "missing_ranks": [{"rank": 3, "host": "10.0.0.2", "pid": 103,
            "status": {"unresponsive": true, "considered_dead": false}}]}]}"#;
        let s: RasStatus = serde_json::from_str(json).expect("parses");
        let v = sights(&s);
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(
            (v[0].rank, v[0].pid, &v[0].what),
            (3, 103, &RasWhat::Unresponsive)
        );
        assert_eq!(v[1].rank, 2);
        assert_eq!(v[1].peers, 2);
        assert!(
            matches!(
                &v[1].what,
                RasWhat::Behind {
                    count: 811,
                    ahead: 812,
                    ..
                }
            ),
            "{:?}",
            v[1].what
        );
        // Every rank at the same counts: nobody behind.
        let even = json
            .replace("811", "812")
            .replace("\"Broadcast\": 2", "\"Broadcast\": 3");
        let s: RasStatus = serde_json::from_str(&even).expect("parses");
        assert_eq!(sights(&s).len(), 1);
    }

    #[test]
    fn an_older_service_gives_its_text_report() {
        let addr = serve(false, "Job summary\n===========\n");
        assert_eq!(
            query(&addr, Duration::from_secs(5)).expect("query"),
            RasReport::Text("Job summary\n===========\n".into())
        );
    }

    #[test]
    fn no_service_is_one_clear_error() {
        // A port nothing listens on: bind one, then free it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let e = query(&format!("127.0.0.1:{port}"), Duration::from_secs(2)).expect_err("none");
        assert!(e.to_string().contains("no NCCL RAS service"), "{e}");
    }

    /// A peer on a free local port that serves its first client with `serve`; its address.
    fn peer(serve: impl FnOnce(TcpStream) + Send + 'static) -> String {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        std::thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                serve(s);
            }
        });
        addr
    }

    /// A peer that greets, then sends a byte every 100 ms forever: each read succeeds, yet the
    /// whole exchange ends at the deadline.
    #[test]
    fn a_trickling_service_is_cut_off_at_the_deadline() {
        let addr = peer(|mut s| {
            let _ = s.write_all(b"SERVER PROTOCOL 2\n");
            while s.write_all(b"x").is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t = std::time::Instant::now();
        let e = query(&addr, Duration::from_secs(1)).expect_err("cut off");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(e.to_string().contains("in time"), "{e}");
    }

    /// A peer that answers with more than `MAX_REPLY` bytes: refused, not held in memory.
    #[test]
    fn an_endless_answer_is_refused_at_the_bound() {
        let addr = peer(|s| {
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut w = s;
            let mut line = String::new();
            for answer in ["SERVER PROTOCOL 2\n", "OK\n", "OK\n"] {
                line.clear();
                let _ = r.read_line(&mut line);
                let _ = w.write_all(answer.as_bytes());
            }
            let block = vec![b'{'; 1 << 20];
            while w.write_all(&block).is_ok() {}
        });
        let e = query(&addr, Duration::from_secs(20)).expect_err("too long");
        assert!(e.to_string().contains("exceeds"), "{e}");
    }
}
