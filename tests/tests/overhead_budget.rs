//! `--overhead-budget`: a thread hammering a hot CUDA runtime call (cudaEventQuery) is
//! traced by real probes under a 1% budget. By default llmdd names the thread and what its
//! probes cost it; with `--enforce-budget` the probes of its hot calls are duty-cycled (fewer
//! records than calls, the summary says so and extrapolates), while collectives in the same
//! process stay fully traced.

use std::time::Duration;

use llmdd_tests::harness::{
    built, fake_lib_dir, read_events, require_root, start_llmdd, Proc, Stream,
};

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
    let mut l = start_llmdd(
        &[lp.pid()],
        &[
            "--overhead-budget",
            "1%",
            "--enforce-budget",
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
    assert_eq!(
        count("ncclAllReduce"),
        collectives,
        "collectives are never cycled"
    );
    // The final summary states the duty cycle and extrapolates the hot call's count.
    let summary = text
        .split("=== final summary")
        .nth(1)
        .expect("final summary");
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
}

#[test]
fn by_default_a_thread_over_the_budget_is_named_and_fully_traced() {
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
    let mut l = start_llmdd(&[pid], &["--quiet"]).expect("llmdd starts");
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
    // Not enforcing: every call was traced, none extrapolated.
    let summary = text.split("=== final summary").nth(1).expect("summary");
    let row = summary
        .lines()
        .find(|x| x.contains(" cudaEventQuery "))
        .expect("row");
    assert_eq!(
        row.split_whitespace().nth(2),
        Some(made.to_string().as_str()),
        "{row}"
    );
}
