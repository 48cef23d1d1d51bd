//! `llmdd.toml`: `config check` accepts a good file and points at the line of a bad one; a
//! running `attach` takes its defaults from the file, and a flag on the command line wins.

use std::{path::Path, process::Command, time::Duration};

use llmdd_tests::harness::{built, fake_lib_dir, require_root, Proc, Stream};

fn llmdd(args: &[&str]) -> std::process::Output {
    Command::new(built("llmdd"))
        .args(args)
        .output()
        .expect("llmdd runs")
}

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("llmdd-config-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

#[test]
fn check_accepts_a_good_file_and_points_at_a_bad_line() {
    let d = dir();
    let good = d.join("good.toml");
    std::fs::write(
        &good,
        "[thresholds]\nstall_threshold = \"5s\"\n\n[probes]\ncudart = \"aggregate\"\n",
    )
    .expect("write");
    let out = llmdd(&["config", "check", good.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    let bad = d.join("bad.toml");
    std::fs::write(
        &bad,
        "[thresholds]\nstall_threshold = \"5s\"\nstal_min = \"1s\"\n",
    )
    .expect("write");
    let out = llmdd(&["config", "check", bad.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3:1:"), "{err}");
    assert!(err.contains("unknown field `stal_min`"), "{err}");

    let typed = d.join("typed.toml");
    std::fs::write(&typed, "[budget]\nenforce = \"yes\"\n").expect("write");
    let out = llmdd(&["config", "check", typed.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("typed.toml:2:"));

    let value = d.join("value.toml");
    std::fs::write(&value, "[probes]\ngpu = \"full\"\n").expect("write");
    let out = llmdd(&["config", "check", value.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("probes.gpu"));
}

/// Runs `llmdd attach` for a moment on a call loop with `args`.
fn attach_briefly(args: &[&str]) -> Proc {
    let lib = fake_lib_dir().join("libnccl.so.2");
    let mut cmd = Command::new(built("callloop"));
    cmd.arg(&lib);
    let mut lp = Proc::spawn("callloop", cmd).expect("starts");
    lp.wait_line("READY", Duration::from_secs(30), |s, l| {
        s == Stream::Stdout && l == "READY"
    })
    .expect("ready");
    let mut c = Command::new(built("llmdd"));
    c.args([
        "attach",
        "--pid",
        &lp.pid().to_string(),
        "--duration",
        "300ms",
    ]);
    c.args(args);
    let mut l = Proc::spawn("llmdd", c).expect("llmdd starts");
    let status = l.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", l.transcript());
    lp.send_line("quit").ok();
    l
}

#[test]
fn attach_takes_defaults_from_the_file_and_flags_win() {
    require_root();
    let d = dir();
    let from_file = d.join("from-file.json");
    let from_flag = d.join("from-flag.json");
    let cfg = d.join("llmdd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[outputs]\nreport = {:?}\n\n[budget]\noverhead = \"off\"\n",
            from_file.to_str().expect("utf-8")
        ),
    )
    .expect("write");
    let cfg_arg = cfg.to_str().expect("utf-8");
    let l = attach_briefly(&["--config", cfg_arg, "--quiet"]);
    assert!(Path::new(&from_file).exists(), "{}", l.transcript());
    assert!(
        !l.transcript().contains("overhead budget 1%"),
        "the file turned the budget off"
    );
    std::fs::remove_file(&from_file).expect("rm");
    attach_briefly(&[
        "--config",
        cfg_arg,
        "--quiet",
        "--report",
        from_flag.to_str().expect("utf-8"),
    ]);
    assert!(from_flag.exists(), "the flag's path is written");
    assert!(!from_file.exists(), "the flag wins over the file");
}
