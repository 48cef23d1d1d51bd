//! The no-restart path end to end: a simulated 4-rank job is started first and parked after
//! its communicators exist; llmdd attaches by pid with real BPF programs; the job runs its
//! measured steps and exits; what llmdd saw is compared with the job's own ground truth.

use std::collections::BTreeMap;

use llmdd_tests::{
    harness::{fake_lib_dir, read_events, require_root, start_llmdd, Stream},
    job::Job,
};
use serde_json::Value;

const NRANKS: usize = 4;
const STEPS: u64 = 12;

#[test]
fn attach_to_running_job_matches_ground_truth() {
    require_root();
    let lib_dir = fake_lib_dir();
    let work = lib_dir.join("attach_simjob");
    std::fs::create_dir_all(&work).expect("work dir");
    let truth_path = work.join("truth.json");
    let events_path = work.join("events.jsonl");

    let steps = STEPS.to_string();
    let truth_arg = truth_path.to_string_lossy().into_owned();
    let mut job = Job::start(
        &lib_dir,
        &[
            "--ranks",
            "4",
            "--steps",
            &steps,
            "--warmup",
            "2",
            "--compute-us",
            "500",
            "--collective",
            "allreduce:1M,allgather:64K",
            "--memcpy-bytes",
            "4096",
            "--events",
            "--truth",
            &truth_arg,
            "--timeout-s",
            "240",
        ],
    )
    .expect("simjob starts");
    assert_eq!(job.pids.len(), NRANKS);

    let events_arg = events_path.to_string_lossy().into_owned();
    let mut llmdd =
        start_llmdd(&job.pids, &["--quiet", "--dump-events", &events_arg]).expect("llmdd attaches");
    // Every rank was attached with all three libraries.
    for pid in &job.pids {
        let line = llmdd
            .seen
            .iter()
            .find(|(s, l)| {
                *s == Stream::Stderr && l.starts_with(&format!("llmdd: attached to pid {pid}"))
            })
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| panic!("no attach line for {pid}:\n{}", llmdd.transcript()));
        for fam in ["nccl ", "cudart ", "cuda "] {
            assert!(line.contains(fam), "pid {pid} lacks {fam}: {line}");
        }
    }

    job.go().expect("releasing the job");
    let truth = job.finish(&truth_path).expect("job completes after attach");
    assert!(truth.complete, "the job ran to completion");

    // llmdd stops on its own once every target has exited.
    let status = llmdd
        .wait_exit(std::time::Duration::from_secs(60))
        .expect("llmdd exits");
    assert!(status.success(), "llmdd failed:\n{}", llmdd.transcript());
    let out = llmdd.lines_of(Stream::Stdout).join("\n");
    assert!(out.contains("every target exited"), "{out}");
    assert!(out.contains("lost events: 0"), "events were lost:\n{out}");

    let events = read_events(&events_path).expect("event dump");
    let calls: Vec<&Value> = events.iter().filter(|e| e["type"] == "call").collect();

    for rt in &truth.ranks {
        let mine: Vec<&&Value> = calls.iter().filter(|e| e["pid"] == rt.pid).collect();
        // Calls per function in the measured window: exactly what the job made.
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        for e in &mine {
            *seen
                .entry(e["func"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        assert_eq!(
            seen, rt.call_counts,
            "rank {} (pid {}): calls seen vs made",
            rt.rank, rt.pid
        );

        // Communicator mapping through the handle: rank and nranks on every collective, and
        // the handle the job used.
        let with_comm = mine.iter().filter(|e| {
            e["family"] == "nccl" && !e["func"].as_str().unwrap_or("").starts_with("ncclGroup")
        });
        for e in with_comm {
            assert_eq!(e["rank"], rt.rank, "rank via handle: {e}");
            assert_eq!(e["nranks"], NRANKS, "nranks via handle: {e}");
            assert_eq!(e["comm"], rt.comm, "comm handle: {e}");
        }
        // Bytes per call, in call order, against the truth.
        for func in ["ncclAllReduce", "ncclAllGather", "cudaMemcpyAsync"] {
            let got: Vec<u64> = mine
                .iter()
                .filter(|e| e["func"] == func)
                .filter_map(|e| e["bytes"].as_u64())
                .collect();
            let want: Vec<u64> = rt.calls_of(func).filter_map(|c| c.bytes).collect();
            assert_eq!(got, want, "rank {} {func} bytes", rt.rank);
        }
        // Return codes: every call succeeded, and was seen returning.
        for e in &mine {
            assert_eq!(e["ret"], 0, "{e}");
        }

        // Socket bytes to each peer rank, from the kernel's send/recv tracepoints, within
        // 1% of what the fake NCCL wrote and read.
        for peer in &rt.peers {
            let (mut sent, mut recv) = (0u64, 0u64);
            for e in events
                .iter()
                .filter(|e| e["type"] == "sock" && e["pid"] == rt.pid)
            {
                if e["local"][1] != peer.local_port || e["remote"][1] != peer.remote_port {
                    continue;
                }
                let b = e["bytes"].as_i64().unwrap_or(0).max(0) as u64;
                match e["kind"].as_str() {
                    Some("send") => sent += b,
                    Some("recv") => recv += b,
                    _ => {}
                }
            }
            for (what, got, want) in [
                ("sent", sent, peer.sent_bytes),
                ("received", recv, peer.recv_bytes),
            ] {
                let tol = (want as f64 * 0.01).max(1.0);
                assert!(
                    (got as f64 - want as f64).abs() <= tol,
                    "rank {} {what} {got} B to/from peer {} (ports {}->{}), job says {want} B",
                    rt.rank,
                    peer.peer,
                    peer.local_port,
                    peer.remote_port
                );
            }
        }
    }
}

/// Attached before the communicator exists, llmdd sees ncclCommInitRank itself: the hash of
/// the by-value ncclUniqueId (read from the stack), the rank and rank count from the
/// arguments, and the new handle written back through the out-pointer.
#[test]
fn comm_init_yields_unique_id_hash_rank_and_handle() {
    require_root();
    let lib_dir = fake_lib_dir();
    let work = lib_dir.join("attach_before_init");
    std::fs::create_dir_all(&work).expect("work dir");
    let truth_path = work.join("truth.json");
    let events_path = work.join("events.jsonl");
    let truth_arg = truth_path.to_string_lossy().into_owned();
    let mut job = Job::start_before_init(
        &lib_dir,
        &[
            "--ranks",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--compute-us",
            "200",
            "--truth",
            &truth_arg,
            "--timeout-s",
            "240",
        ],
    )
    .expect("simjob starts");
    let events_arg = events_path.to_string_lossy().into_owned();
    let mut llmdd =
        start_llmdd(&job.pids, &["--quiet", "--dump-events", &events_arg]).expect("llmdd attaches");
    job.init().expect("communicators created");
    job.go().expect("releasing the job");
    let truth = job.finish(&truth_path).expect("job completes");
    assert!(llmdd
        .wait_exit(std::time::Duration::from_secs(60))
        .expect("llmdd exits")
        .success());

    let events = read_events(&events_path).expect("event dump");
    for rt in &truth.ranks {
        let inits: Vec<&Value> = events
            .iter()
            .filter(|e| e["pid"] == rt.pid && e["func"] == "ncclCommInitRank")
            .collect();
        assert_eq!(inits.len(), 1, "rank {}: one init: {inits:?}", rt.rank);
        let e = inits[0];
        assert_eq!(e["uid_hash"], truth.uid_hash, "unique-id hash: {e}");
        assert_eq!(e["rank"], rt.rank, "{e}");
        assert_eq!(e["nranks"], NRANKS, "{e}");
        assert_eq!(e["comm"], rt.comm, "handle written back: {e}");
        assert_eq!(e["ret"], 0, "{e}");
        // Every later collective of this rank goes through that handle.
        let later: Vec<&Value> = events
            .iter()
            .filter(|c| c["pid"] == rt.pid && c["func"] == "ncclAllReduce")
            .collect();
        assert!(!later.is_empty());
        assert!(
            later
                .iter()
                .all(|c| c["comm"] == rt.comm && c["rank"] == rt.rank),
            "{later:?}"
        );
    }
}
