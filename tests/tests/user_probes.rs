//! User-defined probes on a real process: `hooks_app` (C++, built by the test) calls a C
//! function and a C++ method of its own library in a loop with known arguments. llmdd
//! probes both by name (`hooks_c_step`, and the demangled `sched::Scheduler::step`) and
//! must see every call with the arguments and return values the program computed; the
//! timeline carries them too. A wrong spec (library not mapped, symbol not found, argument
//! out of range) is one clear error that names what was wrong, and nothing is attached.

use std::{process::Command, time::Duration};

use llmdd_tests::{
    harness::{built, read_events, require_root, start_llmdd, summary_calls, Stream},
    hooks,
};
use serde_json::Value;

const ITERS: u64 = 500;
/// Steps of the collective test's ranks.
const STEPS: u64 = 150;

const C_PROBE: &str = "libllmddhooks.so:hooks_c_step,arg=0,arg=1,arg=2,ret,label=c_step";
const M_PROBE: &str = "libllmddhooks.so:sched::Scheduler::step,arg=1,arg=2,ret";

#[test]
fn c_function_and_cpp_method_calls_with_their_arguments() {
    require_root();
    let fixture = hooks::build().expect("hooks fixture");
    let mut app = fixture.start(ITERS, None).expect("hooks_app");
    let pid = app.pid();
    let work = fixture.dir.join(format!("user_probes-{pid}"));
    std::fs::create_dir_all(&work).expect("work dir");
    let events = work.join("events.jsonl");
    let trace = work.join("trace.json");
    let (e, t) = (
        events.to_string_lossy().into_owned(),
        trace.to_string_lossy().into_owned(),
    );
    let mut llmdd = start_llmdd(
        &[pid],
        &[
            "--no-tui",
            "--probe",
            C_PROBE,
            "--probe",
            M_PROBE,
            "--dump-events",
            &e,
            "--trace",
            &t,
        ],
    )
    .expect("llmdd attaches");
    let done = hooks::finish(&mut app).expect("hooks_app runs");
    app.wait_exit(Duration::from_secs(60)).expect("exits");
    let status = llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd exits");
    assert!(status.success(), "{}", llmdd.transcript());

    let evs = read_events(&events).expect("events");
    let calls = |name: &str| -> Vec<&Value> {
        evs.iter()
            .filter(|e| e["func"] == name && e["pid"] == pid)
            .collect()
    };
    let c = calls("c_step");
    let m = calls("Scheduler::step");
    assert_eq!(c.len() as u64, ITERS, "every C call seen");
    assert_eq!(m.len() as u64, ITERS, "every method call seen");
    assert!(c
        .iter()
        .all(|e| e["family"] == "user" && e["exit_ns"].is_u64()));
    let (mut c_sum, mut m_sum) = (0i64, 0i64);
    for (i, e) in c.iter().enumerate() {
        let i = i as u64;
        let v = &e["values"];
        assert_eq!(v["arg0"], i % 3, "{e}");
        assert_eq!(v["arg1"], i, "{e}");
        assert_eq!(v["arg2"], 2, "{e}");
        assert_eq!(v["ret"], (i % 3) * 1000 + 2 * i, "{e}");
        c_sum += v["ret"].as_i64().expect("ret");
    }
    for (i, e) in m.iter().enumerate() {
        let i = i as u64;
        let v = &e["values"];
        assert_eq!(v["arg1"], i % 4, "{e}");
        assert_eq!(v["arg2"], 10 * i, "{e}");
        // `int` return in eax: the low 32 bits are the value.
        assert_eq!(
            v["ret"].as_u64().map(|r| r & 0xffff_ffff),
            Some(i % 4 + 7),
            "{e}"
        );
        m_sum += (v["ret"].as_u64().expect("ret") & 0xffff_ffff) as i64;
        assert!(v.get("arg0").is_none(), "only the asked-for arguments: {e}");
    }
    assert_eq!(
        (c_sum, m_sum),
        (done.c_sum, done.m_sum),
        "the program's own totals"
    );

    // The summary shows them like built-in calls.
    assert_eq!(
        summary_calls(&llmdd, Some(pid), "c_step").as_deref(),
        Some(ITERS.to_string().as_str()),
        "{}",
        llmdd.transcript()
    );
    // The timeline has them as slices with the recorded values.
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).expect("trace")).expect("JSON");
    let slices: Vec<&Value> = doc["traceEvents"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["ph"] == "X" && e["name"] == "Scheduler::step")
        .collect();
    assert_eq!(slices.len() as u64, ITERS);
    assert_eq!(slices[3]["args"]["arg2"], 30);
}

fn refused(spec: &str, needles: &[&str]) {
    let fixture = hooks::build().expect("hooks fixture");
    let mut app = fixture.start(10, None).expect("hooks_app");
    let out = Command::new(built("llmdd"))
        .args([
            "attach",
            "--no-tui",
            "--pid",
            &app.pid().to_string(),
            "--probe",
            spec,
        ])
        .output()
        .expect("llmdd runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{spec}: {err}");
    assert!(!err.contains("llmdd: tracing"), "nothing attached: {err}");
    for n in needles {
        assert!(err.contains(n), "{spec}: `{n}` missing from: {err}");
    }
    assert!(
        err.lines()
            .filter(|l| l.starts_with("llmdd: error"))
            .count()
            <= 1,
        "{err}"
    );
    hooks::finish(&mut app).expect("hooks_app still runs");
    let _ = app.wait_exit(Duration::from_secs(30));
    let _ = app.lines_of(Stream::Stdout);
}

#[test]
fn wrong_specs_are_one_clear_error() {
    require_root();
    refused(
        "libnosuch.so:f",
        &[
            "no traced process maps a library matching `libnosuch.so`",
            "libllmddhooks.so",
        ],
    );
    refused(
        "libllmddhooks.so:sched::Scheduler::stop",
        &["has no function `sched::Scheduler::stop`"],
    );
    refused(
        "libllmddhooks.so:hooks_c_stepp",
        &["has no function `hooks_c_stepp`", "similar: hooks_c_step"],
    );
    refused(
        "libllmddhooks.so:hooks_c_step,arg=12",
        &["argument index 12 is out of range"],
    );
}

/// A user probe declared `collective` is matched across ranks: three processes of one job
/// (RANK/WORLD_SIZE in their environment) each call `hooks_c_step` once per step, rank 2
/// sleeping 2 ms longer per 3 ms step; llmdd names rank 2 as the straggler of `step_sync`.
#[test]
fn a_collective_user_probe_names_the_late_rank() {
    require_root();
    let fixture = hooks::build().expect("hooks fixture");
    let mut apps = Vec::new();
    for rank in 0..3u32 {
        let mut env = vec![
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", "3".to_string()),
            ("HOOKS_STEP_US", "3000".to_string()),
        ];
        if rank == 2 {
            env.push(("HOOKS_SLOW_US", "2000".to_string()));
        }
        apps.push(
            fixture
                .start_with_env(STEPS, None, &env)
                .expect("hooks_app"),
        );
    }
    let pids: Vec<u32> = apps.iter().map(|a| a.pid()).collect();
    let report = fixture.dir.join(format!("collective-{}.json", pids[0]));
    let r = report.to_string_lossy().into_owned();
    let mut llmdd = start_llmdd(
        &pids,
        &[
            "--no-tui",
            "--probe",
            "libllmddhooks.so:hooks_c_step,collective,label=step_sync",
            "--report",
            &r,
        ],
    )
    .expect("llmdd attaches");
    for a in &mut apps {
        a.send_line("go").expect("go");
    }
    for a in &mut apps {
        a.wait_exit(Duration::from_secs(60)).expect("rank exits");
    }
    let status = llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd exits");
    assert!(status.success(), "{}", llmdd.transcript());
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    let findings = doc["findings"].as_array().expect("findings");
    let straggler = findings
        .iter()
        .find(|f| f["kind"] == "straggler")
        .unwrap_or_else(|| {
            panic!(
                "no straggler finding: {findings:#?}\n{}",
                llmdd.transcript()
            )
        });
    assert_eq!(straggler["culprit"]["pid"], pids[2], "{straggler:#}");
    assert_eq!(straggler["culprit"]["rank"], 2, "{straggler:#}");
    assert!(
        straggler["evidence"]
            .as_str()
            .unwrap_or("")
            .contains("step_sync"),
        "{straggler:#}"
    );
}

/// A recording keeps its user probes: `report` of the file gives every call back with its
/// label and recorded values.
#[test]
fn a_recording_keeps_user_probe_calls() {
    require_root();
    let fixture = hooks::build().expect("hooks fixture");
    let mut app = fixture.start(100, None).expect("hooks_app");
    let pid = app.pid();
    let file = fixture.dir.join(format!("user-{pid}.llmddrec"));
    let dump = fixture.dir.join(format!("user-{pid}.jsonl"));
    let mut rec = llmdd_tests::harness::start_record(&[pid], &file, &["--probe", C_PROBE])
        .expect("recording");
    hooks::finish(&mut app).expect("hooks_app runs");
    app.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(rec
        .wait_exit(Duration::from_secs(60))
        .expect("recorder exits")
        .success());
    let out = Command::new(built("llmdd"))
        .arg("report")
        .arg(&file)
        .arg("--dump-events")
        .arg(&dump)
        .output()
        .expect("report runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let evs = read_events(&dump).expect("events");
    let c: Vec<&Value> = evs.iter().filter(|e| e["func"] == "c_step").collect();
    assert_eq!(c.len(), 100);
    assert_eq!(c[7]["values"]["ret"], 1000 + 14);
}

/// With `--follow`, a user probe is placed in a process that starts after llmdd, even one
/// that maps no NCCL or CUDA library.
#[test]
fn a_followed_process_gets_the_user_probes() {
    require_root();
    let fixture = hooks::build().expect("hooks fixture");
    let events = fixture
        .dir
        .join(format!("follow-{}.jsonl", std::process::id()));
    let mut cmd = Command::new(built("llmdd"));
    cmd.args([
        "attach",
        "--no-tui",
        "--follow",
        "hooks_followed",
        "--probe",
        C_PROBE,
        "--dump-events",
    ])
    .arg(&events);
    let mut llmdd = llmdd_tests::harness::Proc::spawn("llmdd", cmd).expect("llmdd starts");
    llmdd
        .wait_line("waiting line", Duration::from_secs(60), |s, l| {
            s == Stream::Stderr && l.contains("no process named hooks_followed yet")
        })
        .expect("llmdd waits for hooks_app");
    // A name of its own: other tests run hooks_app at the same time.
    let mut app = fixture
        .start_named("hooks_followed", 50)
        .expect("hooks_app");
    let pid = app.pid();
    llmdd
        .wait_line("attach line", Duration::from_secs(60), |s, l| {
            s == Stream::Stderr && l.contains(&format!("attached to pid {pid}"))
        })
        .expect("llmdd follows hooks_app");
    hooks::finish(&mut app).expect("hooks_app runs");
    app.wait_exit(Duration::from_secs(60)).expect("exits");
    llmdd
        .wait_line("exit line", Duration::from_secs(60), |s, l| {
            s == Stream::Stderr && l.contains(&format!("pid {pid} exited"))
        })
        .expect("llmdd sees it exit");
    llmdd.signal(libc::SIGINT).expect("SIGINT");
    assert!(llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd exits")
        .success());
    let evs = read_events(&events).expect("events");
    let c = evs
        .iter()
        .filter(|e| e["func"] == "c_step" && e["pid"] == pid)
        .count();
    assert_eq!(c, 50, "{}", llmdd.transcript());
}
