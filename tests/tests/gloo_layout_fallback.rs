//! A Gloo whose context layout llmdd cannot read: the fake `libtorch_cpu.so` exports
//! `gloo::allreduce` and `gloo::Context`'s constructors under their real mangled names, but
//! its constructor hands rank and size to a helper, so the decoder finds no store of them
//! and llmdd must not guess. Over the real BPF path: a one-line note names the library and
//! what is used instead; with the launcher's RANK/WORLD_SIZE the process group takes those
//! ranks and a late rank is named on a group of the right size; without them the group is
//! shown unidentified and no rank is named.

#[path = "findings_common.rs"]
mod common;

use serde_json::Value;

const JOB: [&str; 8] = [
    "--gloo",
    "--steps",
    "60",
    "--compute-us",
    "2000",
    "--collective",
    "allreduce:64K",
    "--straggler",
];

fn gloo_comms(r: &common::Run) -> Vec<Value> {
    r.report["communicators"]
        .as_array()
        .expect("communicators")
        .iter()
        .filter(|c| c["backend"] == "gloo")
        .cloned()
        .collect()
}

fn assert_noted(r: &common::Run) {
    let t = r.llmdd.transcript();
    assert!(
        t.contains("libtorch_cpu.so: Gloo's context layout not found in its code")
            && t.contains("gloo::Context::Context(int, int, int)"),
        "the fallback is said:\n{t}"
    );
}

#[test]
fn an_unreadable_gloo_layout_falls_back_to_the_launchers_ranks_and_says_so() {
    let _one = common::serial();
    let mut args = JOB.to_vec();
    args.push("2:20:1");
    let r = common::run(
        "gloo_fallback_env",
        &args,
        &["--quiet"],
        &mut common::nothing(),
    );
    assert_noted(&r);
    let comms = gloo_comms(&r);
    assert_eq!(comms.len(), 1, "{comms:#?}");
    assert_eq!(comms[0]["nranks"], 4, "{:#}", comms[0]);
    assert_eq!(comms[0]["identity"]["rank_source"], "environment");
    let f = r.only_finding("straggler");
    r.assert_culprit(f, 2);
}

#[test]
fn without_the_launchers_ranks_an_unreadable_gloo_group_is_unidentified_not_guessed() {
    let _one = common::serial();
    let mut args = JOB.to_vec();
    args.extend(["2:20:1", "--no-launcher-env"]);
    let r = common::run(
        "gloo_fallback_bare",
        &args,
        &["--quiet"],
        &mut common::nothing(),
    );
    assert_noted(&r);
    let comms = gloo_comms(&r);
    assert_eq!(
        comms.len(),
        4,
        "one unidentified group per process: {comms:#?}"
    );
    for c in &comms {
        assert_eq!(c["identity"]["rank_source"], "unknown", "{c:#}");
        assert!(c["nranks"].is_null(), "{c:#}");
    }
    assert!(
        r.findings().iter().all(|f| f["culprit"]["rank"].is_null()),
        "no rank is named without ranks: {}",
        r.describe()
    );
}
