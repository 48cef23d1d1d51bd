//! Serving: the job's HTTP front (`--serve`) answers 20 streamed requests, 4 at a time, from
//! `simjob client` on loopback while the ranks run. llmdd, attached to the ranks and the
//! front, finds the serving port on its own, and its time to first token and inter-token
//! percentiles are within 10% of the front's own record (server side: first token sent minus
//! request complete; gaps between the token writes). The job is healthy: no finding.

#[path = "findings_common.rs"]
mod common;

use std::{process::Command, time::Duration};

use common::{quantile, run, serial};
use llmdd_tests::{
    harness::{built, Proc},
    job::Job,
};
use serde_json::Value;

const REQUESTS: u64 = 20;

#[test]
fn streamed_requests_match_the_front_record() {
    let _one = serial();
    let requests = REQUESTS.to_string();
    let mut client_run = |job: &mut Job, _: &mut Proc| {
        let (_, port) = job.front.expect("the front's port");
        let mut cmd = Command::new(built("simjob"));
        cmd.args(["client", "--port", &port.to_string()]).args([
            "--requests",
            &requests,
            "--concurrency",
            "4",
        ]);
        let mut client = Proc::spawn("simjob client", cmd).expect("client starts");
        let status = client
            .wait_exit(Duration::from_secs(120))
            .expect("client ends");
        assert!(status.success(), "client:\n{}", client.transcript());
    };
    let r = run(
        "findings_serving",
        &[
            "--steps",
            "50",
            "--compute-us",
            "2000",
            "--collective",
            "allreduce:16K",
            "--serve",
            "--serve-requests",
            &requests,
        ],
        &["--quiet"],
        &mut client_run,
    );
    assert!(r.findings().is_empty(), "{}", r.describe());
    let front = r.truth.front.as_ref().expect("the front's truth");
    assert_eq!(front.requests.len() as u64, REQUESTS);
    let ttft: Vec<u64> = front
        .requests
        .iter()
        .map(|q| q.token_write_ns[0] - q.request_complete_ns)
        .collect();
    let gaps: Vec<u64> = front
        .requests
        .iter()
        .flat_map(|q| q.token_write_ns.windows(2).map(|w| w[1] - w[0]))
        .collect();

    let q = &r.report["requests"];
    assert_eq!(q["serving_port"], front.port, "{q:#}");
    assert_eq!(q["port_source"], "detected");
    assert_eq!(q["finished"], REQUESTS, "{q:#}");
    assert_eq!(q["ttft_ns"]["count"], REQUESTS, "{q:#}");
    let check = |what: &str, got: &Value, truth: &[u64]| {
        for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            let v = got[name].as_f64().expect("percentile");
            let want = quantile(truth, p) as f64;
            eprintln!(
                "{what} {name}: llmdd {:.2} ms, the front {:.2} ms",
                v / 1e6,
                want / 1e6
            );
            assert!(
                (v - want).abs() <= 0.1 * want,
                "{what} {name}: llmdd {v:.0} ns, the front {want:.0} ns\n{got:#}"
            );
        }
    };
    check("ttft", &q["ttft_ns"], &ttft);
    check("inter-token", &q["inter_token_ns"], &gaps);
    // Every token gap was seen (a late final chunk may add one per request).
    let n = q["inter_token_ns"]["count"].as_u64().unwrap_or(0);
    assert!(
        n >= gaps.len() as u64 && n <= gaps.len() as u64 + REQUESTS,
        "{n} gaps, the front wrote {}",
        gaps.len()
    );
}
