//! `llmdd diff` as a rollout gate: a healthy run of the simulated job against itself passes
//! (exit 0); the same job with a straggler fails it (exit 3) with a verdict line naming the
//! regression and the new finding.

#[path = "findings_common.rs"]
mod common;

use common::{nothing, run, serial};
use llmdd_tests::harness::built;

fn diff(a: &std::path::Path, b: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(built("llmdd"))
        .arg("diff")
        .arg(a)
        .arg(b)
        .output()
        .expect("llmdd diff runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_straggler_fails_the_gate_and_a_healthy_run_passes_it() {
    let _one = serial();
    let job = |straggler: Option<&str>| {
        let mut args = vec![
            "--steps",
            "80",
            "--compute-us",
            "2000",
            "--collective",
            "allreduce:16K",
        ];
        if let Some(s) = straggler {
            args.extend(["--straggler", s]);
        }
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let healthy_args = job(None);
    let healthy_refs: Vec<&str> = healthy_args.iter().map(String::as_str).collect();
    let healthy = run("diff_healthy", &healthy_refs, &["--quiet"], &mut nothing());
    let slow_args = job(Some("2:20:1"));
    let slow_refs: Vec<&str> = slow_args.iter().map(String::as_str).collect();
    let slow = run("diff_straggler", &slow_refs, &["--quiet"], &mut nothing());
    let h = healthy.work.join("report.json");
    let s = slow.work.join("report.json");

    let (code, text) = diff(&h, &h);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("verdict: no regression beyond 10%"), "{text}");

    let (code, text) = diff(&h, &s);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("verdict: REGRESSION"), "{text}");
    assert!(
        text.contains("new finding: straggler (critical) on rank 2"),
        "{text}"
    );

    let (code, text) = diff(&h, &healthy.work.join("missing.json"));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cannot read"), "{text}");
}
