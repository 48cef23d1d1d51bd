//! The `--trace` timeline rendered by a real viewer, offline: llmdd traces a 4-rank job,
//! the Chrome trace-event file is served on localhost with the speedscope web app
//! (`cargo xtask setup` installs it from npm, and Debian's chromium), headless chromium
//! loads it, and the rendered page must list one track per rank with its pid and rank and a
//! non-zero total. (Perfetto's trace processor downloads itself at run time, which an
//! offline machine cannot do; speedscope reads the same trace-event JSON.)

use std::{path::PathBuf, process::Command, time::Duration};

use llmdd_tests::{
    harness::{fake_lib_dir, require_root, start_llmdd, workspace_root, Proc, Stream},
    job::Job,
};

fn speedscope_release() -> PathBuf {
    let dir = workspace_root().join("target/tools/speedscope/node_modules/speedscope/dist/release");
    assert!(
        dir.join("index.html").exists(),
        "speedscope is missing at {}: run `cargo xtask setup`",
        dir.display()
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: run `cargo xtask setup`"
    );
    dir
}

#[test]
fn speedscope_renders_one_track_per_rank_from_the_trace() {
    require_root();
    let release = speedscope_release();
    let lib_dir = fake_lib_dir();
    let site = lib_dir.join("speedscope_site");
    std::fs::create_dir_all(&site).expect("site dir");
    for entry in std::fs::read_dir(&release).expect("release dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), site.join(entry.file_name())).expect("copy the web app");
    }
    let trace = site.join("run.trace.json");
    let t = trace.to_string_lossy().into_owned();

    let mut job = Job::start(
        &lib_dir,
        &[
            "--ranks",
            "4",
            "--steps",
            "20",
            "--warmup",
            "1",
            "--compute-us",
            "300",
            "--timeout-s",
            "240",
        ],
    )
    .expect("simjob starts");
    let mut llmdd =
        start_llmdd(&job.pids, &["--no-tui", "--quiet", "--trace", &t]).expect("llmdd attaches");
    job.go().expect("releasing the job");
    job.proc
        .wait_exit(Duration::from_secs(240))
        .expect("job completes");
    let status = llmdd.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", llmdd.transcript());
    // The file is written 0600 for root; the server runs as root too.

    let mut cmd = Command::new("python3");
    cmd.args([
        "-u",
        "-m",
        "http.server",
        "0",
        "--bind",
        "127.0.0.1",
        "--directory",
    ])
    .arg(&site);
    let mut server = Proc::spawn("http.server", cmd).expect("http server");
    let line = server
        .wait_line("serving line", Duration::from_secs(30), |s, l| {
            s == Stream::Stdout && l.starts_with("Serving HTTP on")
        })
        .expect("server listening");
    let port: u16 = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a port in {line}"));
    let url = format!(
        "http://127.0.0.1:{port}/index.html#profileURL=http://127.0.0.1:{port}/run.trace.json"
    );
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=20000",
            "--dump-dom",
        ])
        .arg(&url)
        .output()
        .expect("chromium runs");
    let _ = server.signal(libc::SIGTERM);
    let _ = server.wait_exit(Duration::from_secs(10));
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<title>run.trace.json - speedscope</title>"),
        "speedscope did not load the trace: {}",
        &dom[..dom.len().min(2000)]
    );
    for (rank, pid) in job.pids.iter().enumerate() {
        let track = format!("pid {pid} (rank {rank})");
        assert!(
            dom.contains(&track),
            "no track {track} in the rendered page"
        );
    }
    assert!(dom.contains("(1/4)"), "four tracks expected");
    // Each track row ends with its total weight, e.g. `<td ...>1.20s</td>`; none is zero.
    assert!(!dom.contains(">0.00ms<"), "a track with no time");
}
