//! Bad input gives one clear line and a non-zero exit, never a panic.

use std::process::Command;

use llmdd_tests::harness::{built, require_root};

fn run_llmdd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(built("llmdd"))
        .args(args)
        .output()
        .expect("running llmdd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_clear_line(code: i32, stderr: &str, must_contain: &str) {
    assert_ne!(code, 0, "expected failure, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "llmdd panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(
        lines[0].contains(must_contain),
        "expected `{must_contain}` in: {stderr}"
    );
}

#[test]
fn nonexistent_pid_is_one_clear_line() {
    require_root();
    // Pids above pid_max never exist.
    let (code, _, err) = run_llmdd(&["attach", "--pid", "2147483646", "--duration", "1"]);
    assert_one_clear_line(code, &err, "2147483646");
    assert!(
        err.contains("no such process") || err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn pid_without_supported_libraries_is_one_clear_line() {
    require_root();
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawning sleep");
    let pid = sleeper.id().to_string();
    let (code, _, err) = run_llmdd(&["attach", "--pid", &pid, "--duration", "1"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_one_clear_line(code, &err, &pid);
    assert!(
        err.contains("nccl") || err.contains("NCCL"),
        "should name what was looked for: {err}"
    );
}

#[test]
fn unprivileged_run_is_one_clear_line() {
    require_root();
    // Drop to nobody with no capabilities, as an unprivileged user would run it.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(built("llmdd"))
        .args(["attach", "--pid", "1", "--duration", "1"])
        .output()
        .expect("running setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_one_clear_line(out.status.code().unwrap_or(-1), &err, "privileges");
    assert!(
        err.contains("sudo") || err.contains("CAP_BPF"),
        "should say the remedy: {err}"
    );
}

#[test]
fn bad_duration_and_missing_target_are_usage_errors() {
    let (code, _, err) = run_llmdd(&["attach", "--pid", "1", "--duration", "5x"]);
    assert_eq!(code, 2, "clap usage errors exit 2: {err}");
    assert!(err.contains("unknown unit"), "{err}");
    let (code, _, err) = run_llmdd(&["attach"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--pid") && err.contains("--all"),
        "should name the alternatives: {err}"
    );
    let (code, _, err) = run_llmdd(&["attach", "--pid", "1", "--all"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn unwritable_output_path_fails_before_attaching() {
    require_root();
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawning sleep");
    let pid = sleeper.id().to_string();
    let (code, _, err) = run_llmdd(&[
        "attach",
        "--pid",
        &pid,
        "--dump-events",
        "/nonexistent-dir/events.jsonl",
    ]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    // The path is refused first, before the target is even inspected.
    assert_one_clear_line(code, &err, "/nonexistent-dir/events.jsonl");
}

/// A root under which the feature checks look (`LLMDD_SYSFS_ROOT`), with `dirs` created.
fn fake_sysfs(name: &str, dirs: &[&str]) -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("llmdd-sysfs-{name}-{}", std::process::id()));
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).expect("dir");
    }
    std::fs::create_dir_all(&root).expect("root");
    root
}

#[test]
fn kernel_without_uprobes_is_one_clear_line() {
    require_root();
    let root = fake_sysfs("nouprobes", &[]);
    let out = Command::new(built("llmdd"))
        .args(["attach", "--pid", &std::process::id().to_string()])
        .env("LLMDD_SYSFS_ROOT", &root)
        .output()
        .expect("runs");
    assert_one_clear_line(
        out.status.code().unwrap_or(-1),
        &String::from_utf8_lossy(&out.stderr),
        "this kernel has no uprobes",
    );
}

#[test]
fn kernel_without_btf_degrades_with_one_warning() {
    require_root();
    use llmdd_tests::harness::{fake_lib_dir, Proc, Stream};
    use std::time::Duration;
    let root = fake_sysfs("nobtf", &["sys/bus/event_source/devices/uprobe"]);
    let mut cmd = Command::new(built("callloop"));
    cmd.arg(fake_lib_dir().join("libnccl.so.2"));
    let mut lp = Proc::spawn("callloop", cmd).expect("starts");
    lp.wait_line("READY", Duration::from_secs(30), |s, l| {
        s == Stream::Stdout && l == "READY"
    })
    .expect("ready");
    let out = Command::new(built("llmdd"))
        .args([
            "attach",
            "--pid",
            &lp.pid().to_string(),
            "--duration",
            "200ms",
            "--quiet",
        ])
        .env("LLMDD_SYSFS_ROOT", &root)
        .output()
        .expect("runs");
    lp.send_line("quit").ok();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tracing still works without BTF: {err}"
    );
    assert!(
        err.contains("warning: socket addresses and ports unavailable"),
        "{err}"
    );
}

#[test]
fn unknown_and_conflicting_flags_are_usage_errors() {
    let (code, _, err) = run_llmdd(&["attach", "--pid", "1", "--frobnicate"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unexpected argument '--frobnicate'"), "{err}");
    let (code, _, err) = run_llmdd(&["attach", "--all", "--pid", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, _, err) = run_llmdd(&["attach", "--pid", "1", "--ring-size", "5000"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("power of two"), "{err}");
}
