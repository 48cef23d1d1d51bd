//! The live view end to end: the real binary in a tmux pane (a real terminal) traces a
//! running job; the panes show its communicator, ranks and findings; `?` opens the help,
//! `q` quits, the terminal is restored and the plain final summary follows.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use llmdd_tests::{
    harness::{built, fake_lib_dir, require_root},
    job::Job,
};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("tmux {args:?}: {e} (cargo xtask setup installs tmux)"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

/// Waits until the pane shows every one of `want`; the pane text.
fn wait_screen(target: &str, want: &[&str], what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", target]);
        if want.iter().all(|w| screen.contains(w)) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} on the screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn live_view_in_tmux_shows_the_panes_and_quits_on_q() {
    require_root();
    let lib_dir = fake_lib_dir();
    let work = lib_dir.join("views_tui");
    std::fs::create_dir_all(&work).expect("work dir");
    let report = work.join("report.json");
    let mut job = Job::start(
        &lib_dir,
        &[
            "--ranks",
            "2",
            "--steps",
            "5000",
            "--warmup",
            "1",
            "--compute-us",
            "300",
            "--straggler",
            "1:3:1",
            "--timeout-s",
            "240",
        ],
    )
    .expect("simjob starts");
    job.go().expect("releasing the job");
    let name = format!("llmdd-tui-{}", std::process::id());
    let pids: Vec<String> = job.pids.iter().map(|p| format!("--pid {p}")).collect();
    let cmd = format!(
        "{} attach {} --interval 300ms --report {}; echo LLMDD_EXIT=$?; sleep 60",
        built("llmdd").display(),
        pids.join(" "),
        report.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &name,
        "-x",
        "180",
        "-y",
        "45",
        "sh",
        "-c",
        &cmd,
    ]);
    let _session = Session(name.clone());
    let screen = wait_screen(
        &name,
        &[
            "communicators x ops (1)",
            "all-reduce",
            "per-rank lateness (2)",
            "findings",
            "requests",
            "pids 2/2",
        ],
        "live panes",
    );
    assert!(!screen.contains("=== final summary"), "{screen}");
    wait_screen(&name, &["STRAGGLER", "straggler"], "straggler");
    tmux(&["send-keys", "-t", &name, "?"]);
    wait_screen(&name, &["help (Esc to close)", "pause / resume"], "help");
    tmux(&["send-keys", "-t", &name, "Escape"]);
    tmux(&["send-keys", "-t", &name, "q"]);
    let after = wait_screen(&name, &["LLMDD_EXIT="], "exit");
    assert!(after.contains("LLMDD_EXIT=0"), "{after}");
    assert!(
        after.contains("=== final summary (stopped from the live view) ==="),
        "the terminal is back to normal and the summary printed:\n{after}"
    );
    assert!(!after.contains("per-rank lateness"), "{after}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report"))
            .expect("report JSON");
    assert_eq!(doc["run"]["stopped_because"], "stopped from the live view");
    job.proc.signal(libc::SIGTERM).expect("stopping the job");
    let _ = job.proc.wait_exit(Duration::from_secs(60));
}
