//! TTFT on the real serving stack vLLM's API server runs on: Starlette on uvicorn (from
//! PyPI, pinned; `cargo xtask setup` installs it into target/tools/serving-venv). Its
//! streaming responses send the status line and headers as soon as the handler starts,
//! and the first token later. llmdd, attached to the server as a front, must time the
//! first token, not the headers: its TTFT and inter-token medians within 10% of what the
//! client measured, with both of uvicorn's HTTP implementations (h11 on asyncio,
//! httptools on uvloop). The serving port is found on its own.

use std::{path::PathBuf, process::Command, time::Duration};

use llmdd_tests::harness::{require_root, start_llmdd, workspace_root, Proc, Stream};
use serde_json::Value;

const TTFT_MS: u64 = 120;
const ITL_MS: u64 = 15;

fn python() -> PathBuf {
    let p = workspace_root().join("target/tools/serving-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask setup` installs the serving stack",
        p.display()
    );
    p
}

fn fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/serving").join(name)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One server at a time: two on 2 cores would time each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check(http: &str, event_loop: &str) {
    require_root();
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Port 0 is not an option for uvicorn's own socket here: pick a free one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut cmd = Command::new(python());
    cmd.arg(fixture("app.py")).args([
        port.to_string(),
        TTFT_MS.to_string(),
        ITL_MS.to_string(),
        "16".into(),
        http.into(),
        event_loop.into(),
    ]);
    let mut app = Proc::spawn("uvicorn", cmd).expect("uvicorn starts");
    let ready = app
        .wait_line("READY", Duration::from_secs(60), |s, l| {
            s == Stream::Stdout && l.starts_with("READY")
        })
        .expect("the server is up");
    let pid: u32 = ready
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("READY <pid> <port>");
    let dir = std::env::temp_dir().join(format!("llmdd-serving-{}-{http}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let report = dir.join("report.json");
    let report_arg = report.to_string_lossy().into_owned();
    let mut l = start_llmdd(
        &[],
        &[
            "--front",
            &pid.to_string(),
            "--quiet",
            "--report",
            &report_arg,
        ],
    )
    .expect("llmdd attaches to the server");
    let out = Command::new(python())
        .arg(fixture("client.py"))
        .args([port.to_string(), "24".into(), "4".into(), "12".into()])
        .output()
        .expect("the client runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client: Value = serde_json::from_slice(&out.stdout).expect("client JSON");
    l.signal(libc::SIGINT).expect("stop llmdd");
    let status = l.wait_exit(Duration::from_secs(60)).expect("llmdd exits");
    assert!(status.success(), "{}", l.transcript());
    let _ = app.signal(libc::SIGTERM);
    let _ = app.wait_exit(Duration::from_secs(20));

    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let r = &doc["requests"];
    assert_eq!(r["serving_port"], port, "{r:#}");
    // Requests still open when tracing stopped (the last connection's close not seen yet)
    // are in flight, not lost.
    let (finished, open) = (r["finished"].as_u64(), r["in_flight"].as_u64());
    assert_eq!(finished.zip(open).map(|(f, o)| f + o), Some(24), "{r:#}");
    assert!(finished >= Some(20), "{r:#}");
    let nums = |v: &Value| -> Vec<f64> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect()
    };
    let (c_ttft, c_itl) = (
        median(nums(&client["ttft_ms"])),
        median(nums(&client["itl_ms"])),
    );
    let ms = |v: &Value| v.as_f64().unwrap_or(0.0) / 1e6;
    let (ttft, itl) = (ms(&r["ttft_ns"]["p50"]), ms(&r["inter_token_ns"]["p50"]));
    eprintln!(
        "{http}/{event_loop}: TTFT p50 llmdd {ttft:.1} ms, client {c_ttft:.1} ms; inter-token p50 llmdd {itl:.1} ms, client {c_itl:.1} ms"
    );
    assert!(
        (ttft - c_ttft).abs() <= 0.1 * c_ttft,
        "TTFT {ttft} vs client {c_ttft}"
    );
    assert!(
        (itl - c_itl).abs() <= 0.1 * c_itl,
        "ITL {itl} vs client {c_itl}"
    );
    // The header block went out on its own: the app sends it, then sleeps TTFT_MS before the
    // first token, so in each request the first token comes at least that long after the
    // headers (however late a loaded machine ran the handler).
    for q in r["recent"].as_array().expect("recent") {
        let headers = q["headers_ns"].as_f64().expect("headers timed") / 1e6;
        let first = q["ttft_ns"].as_f64().expect("first token timed") / 1e6;
        assert!(
            first - headers >= 0.9 * TTFT_MS as f64,
            "headers at {headers} ms, first token at {first} ms: {q}"
        );
    }
}

#[test]
fn ttft_on_uvicorn_h11_asyncio_is_the_first_token() {
    check("h11", "asyncio");
}

#[test]
fn ttft_on_uvicorn_httptools_uvloop_is_the_first_token() {
    check("httptools", "uvloop");
}
