//! `--overhead-budget`: a thread hammering a hot CUDA runtime call (cudaEventQuery) is
//! traced by real probes under a 1% budget. By default the probes of its hot calls are
//! duty-cycled to hold the budget (fewer records than calls, the summary and the report say
//! so and extrapolate), while collectives in the same process stay fully traced; with
//! `--enforce-budget=false` llmdd traces every call and names the thread and what its probes
//! cost it, in the summary and the report's `overhead` section.

use std::time::Duration;

use llmdd_tests::harness::{
    built, fake_lib_dir, read_events, require_root, start_llmdd, Proc, Stream,
};

/// The final summary's lost-records total. A reader behind a hot loop (these tests run two
/// at once, in debug builds) loses records rather than slowing the traced thread; they are
/// counted, and the tests account for them.
fn lost_in(summary: &str) -> u64 {
    summary
        .lines()
        .rfind(|x| x.starts_with("lost events:"))
        .and_then(|x| x.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A ring big enough that the records of a hot loop rarely overflow it.
const RING: [&str; 2] = ["--ring-size", "64M"];

fn command(lp: &mut Proc, cmd: &str) {
    lp.send_line(cmd).expect("send");
    lp.wait_line("ns_per_call", Duration::from_secs(300), |s, l| {
        s == Stream::Stdout && l.starts_with("ns_per_call")
    })
    .expect("loop ran");
}

#[test]
fn hot_calls_are_duty_cycled_and_collectives_are_not() {
    require_root();
    let libs = fake_lib_dir();
    let mut cmd = std::process::Command::new(built("callloop"));
    cmd.arg(libs.join("libcudart.so.12"))
        .arg(libs.join("libnccl.so.2"));
    let mut lp = Proc::spawn("callloop", cmd).expect("callloop starts");
    lp.wait_line("READY", Duration::from_secs(30), |s, l| {
        s == Stream::Stdout && l == "READY"
    })
    .expect("ready");

    let dir = libs.join("overhead_budget");
    std::fs::create_dir_all(&dir).expect("dir");
    let dump = dir.join("events.jsonl");
    let dump_arg = dump.to_string_lossy().into_owned();
    let report = dir.join("report.json");
    let report_arg = report.to_string_lossy().into_owned();
    // The default budget (1%, held): no budget flag.
    let mut l = start_llmdd(
        &[lp.pid()],
        &[
            "--report",
            &report_arg,
            RING[0],
            RING[1],
            "--interval",
            "1s",
            "--dump-events",
            &dump_arg,
        ],
    )
    .expect("llmdd starts");
    // Hot calls, with collectives between them, until a duty period has ended with the
    // probes cycled (the periodic block says so), then two more rounds.
    const CHUNK: u64 = 500_000;
    const COLLECTIVES_PER_ROUND: u64 = 10;
    let mut rounds = 0u64;
    let mut after = None;
    while rounds < 400 && after.is_none_or(|n| n > 0) {
        command(&mut lp, &format!("query {CHUNK}"));
        command(&mut lp, &format!("run {COLLECTIVES_PER_ROUND}"));
        rounds += 1;
        after = match after {
            None if l.transcript().contains("overhead budget: cudart") => Some(2),
            Some(n) => Some(n - 1),
            a => a,
        };
    }
    let made = rounds * CHUNK;
    let collectives = rounds * COLLECTIVES_PER_ROUND;
    l.signal(libc::SIGINT).expect("SIGINT");
    let status = l.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", l.transcript());
    lp.send_line("quit").ok();

    let text = l.transcript();
    assert!(
        text.contains("overhead budget 1% of each traced thread's time"),
        "{text}"
    );
    let events = read_events(&dump).expect("dump");
    let count = |name: &str| {
        events
            .iter()
            .filter(|e| e["type"] == "call" && e["func"] == name)
            .count() as u64
    };
    let queries = count("cudaEventQuery");
    assert!(
        queries > 0 && queries < made / 2,
        "hot calls traced {queries} of {made} times: not duty-cycled\n{text}"
    );
    // The final summary states the duty cycle and extrapolates the hot call's count.
    let summary = text
        .split("=== final summary")
        .nth(1)
        .expect("final summary");
    let lost = lost_in(summary);
    let seen = count("ncclAllReduce");
    assert!(
        seen <= collectives && seen + lost >= collectives,
        "collectives are never cycled: {seen} of {collectives} seen, {lost} records lost"
    );
    assert!(summary.contains("overhead budget: cudart"), "{summary}");
    let row = summary
        .lines()
        .find(|x| x.contains(" cudaEventQuery "))
        .expect("cudaEventQuery row");
    let shown = row.split_whitespace().nth(2).expect("calls column");
    assert!(shown.starts_with('~'), "extrapolated count marked: {row}");
    let estimate: f64 = shown.trim_start_matches('~').parse().expect("number");
    assert!(
        estimate > queries as f64,
        "the estimate ({estimate}) scales up the {queries} calls seen"
    );
    // The report says what was sampled, by how much its counts are scaled.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    let overhead = &doc["overhead"];
    assert_eq!(overhead["enforced"], true, "{overhead}");
    let sampled = overhead["sampled"].as_array().expect("sampled");
    assert!(
        sampled.iter().any(|x| x["pid"] == lp.pid()
            && x["family"] == "cudart"
            && x["attached"].as_f64().is_some_and(|a| a < 0.9)
            && x["count_scale"].as_f64().is_some_and(|k| k > 1.0)),
        "{overhead}"
    );
}

#[test]
fn unenforced_a_thread_over_the_budget_is_named_fully_traced_and_costed() {
    require_root();
    let libs = fake_lib_dir();
    let mut cmd = std::process::Command::new(built("callloop"));
    cmd.arg(libs.join("libcudart.so.12"));
    let mut lp = Proc::spawn("callloop", cmd).expect("callloop starts");
    lp.wait_line("READY", Duration::from_secs(30), |s, l| {
        s == Stream::Stdout && l == "READY"
    })
    .expect("ready");
    let pid = lp.pid();
    let dir = libs.join("overhead_budget_unenforced");
    std::fs::create_dir_all(&dir).expect("dir");
    let report = dir.join("report.json");
    let report_arg = report.to_string_lossy().into_owned();
    let mut l = start_llmdd(
        &[pid],
        &[
            "--quiet",
            "--enforce-budget=false",
            "--report",
            &report_arg,
            RING[0],
            RING[1],
        ],
    )
    .expect("llmdd starts");
    // Enough hot calls to span more than one 2 s costing window whatever the machine.
    const CHUNK: u64 = 200_000;
    let mut made = 0;
    for _ in 0..30 {
        command(&mut lp, &format!("query {CHUNK}"));
        made += CHUNK;
        let named = l
            .transcript()
            .contains(&format!("pid {pid} thread {pid}: probes cost about"));
        if named && made >= 4 * CHUNK {
            break;
        }
    }
    l.signal(libc::SIGINT).expect("SIGINT");
    let status = l.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", l.transcript());
    lp.send_line("quit").ok();
    let text = l.transcript();
    assert!(
        text.contains(&format!("pid {pid} thread {pid}: probes cost about")),
        "the costly thread is named\n{text}"
    );
    assert!(text.contains("over the 1% budget"), "{text}");
    // Not enforcing: every call was traced (seen, or its record counted lost), none
    // extrapolated.
    let summary = text.split("=== final summary").nth(1).expect("summary");
    let row = summary
        .lines()
        .find(|x| x.contains(" cudaEventQuery "))
        .expect("row");
    let shown = row.split_whitespace().nth(2).expect("calls column");
    let seen: u64 = shown
        .parse()
        .expect("a plain count, not an extrapolated one");
    assert_eq!(seen + lost_in(summary), made, "{row}");
    // The report costs the thread: every call counted, the calibrated share, and its
    // kernel time (traps and programs run in kernel mode) as a bound at least that large
    // once measured.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    let overhead = &doc["overhead"];
    assert_eq!(overhead["enforced"], false, "{overhead}");
    assert_eq!(overhead["sampled"].as_array().map(Vec::len), Some(0));
    let t = overhead["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .find(|t| t["tid"] == pid)
        .expect("the loop's thread is costed")
        .clone();
    assert_eq!(t["calls"].as_u64(), Some(seen), "{t}");
    let share = t["calibrated_share"].as_f64().expect("share");
    assert!(share > 0.01, "a thread over the budget: {t}");
    let est = t["estimated_slowdown"].as_f64().expect("estimate");
    assert!((est - share / (1.0 - share)).abs() < 1e-9, "{t}");
    if let Some(k) = t["kernel_share"].as_f64() {
        assert!(k > share / 2.0, "the traps show in its kernel time: {t}");
        assert!(t["slowdown_high"].as_f64() >= Some(est), "{t}");
    }
}
