//! `--flamegraph` with user stacks: llmdd walks the caller's stack at each traced call of a
//! C++ program built with frame pointers (`hooks_app`: main -> outer_step -> middle_step ->
//! cudaStreamSynchronize of the fake CUDA runtime) and folds the calls by the named frames.
//! The folded output (`.folded`) is checked line by line and the SVG by its title; `--stacks
//! off` falls back to the thread folding.

use std::time::Duration;

use llmdd_tests::{
    harness::{fake_lib_dir, require_root, start_llmdd, Stream},
    hooks,
};

const ITERS: u64 = 2000;

fn trace(out: &str, extra: &[&str]) -> (u32, String) {
    let lib_dir = fake_lib_dir();
    let fixture = hooks::build().expect("hooks fixture");
    let cudart = lib_dir.join("libcudart.so.12");
    let mut app = fixture.start(ITERS, Some(&cudart)).expect("hooks_app");
    let pid = app.pid();
    let work = lib_dir.join("user_stacks");
    std::fs::create_dir_all(&work).expect("work dir");
    let path = work.join(out);
    let p = path.to_string_lossy().into_owned();
    let mut args = vec!["--no-tui", "--quiet", "--flamegraph", &p];
    args.extend_from_slice(extra);
    let mut llmdd = start_llmdd(&[pid], &args).expect("llmdd attaches");
    let done = hooks::finish(&mut app).expect("hooks_app runs");
    assert_eq!(done.iters, ITERS);
    app.wait_exit(Duration::from_secs(60))
        .expect("hooks_app exits");
    let status = llmdd
        .wait_exit(Duration::from_secs(60))
        .expect("llmdd exits");
    assert!(status.success(), "{}", llmdd.transcript());
    let err = llmdd.lines_of(Stream::Stderr).join("\n");
    assert!(err.contains("flame graph written to"), "{err}");
    (
        pid,
        std::fs::read_to_string(&path).expect("flame graph file"),
    )
}

#[test]
fn calls_fold_by_their_callers_named_frames() {
    require_root();
    let (pid, folded) = trace("stacks.folded", &[]);
    let lines: Vec<&str> = folded.lines().collect();
    let want = ";main;outer_step;middle_step;libcudart.so.12 cudaStreamSynchronize ";
    let hits: Vec<&&str> = lines.iter().filter(|l| l.contains(want)).collect();
    assert_eq!(
        hits.len(),
        1,
        "one stack for the loop's call site: {lines:#?}"
    );
    assert!(
        hits[0].starts_with(&format!("pid {pid} hooks_app;")),
        "{}",
        hits[0]
    );
    let ns: u64 = hits[0]
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a time");
    assert!(ns > 0);
    // Every call was folded by its stack: no thread frame anywhere.
    assert!(lines.iter().all(|l| !l.contains(";tid ")), "{lines:#?}");
}

#[test]
fn the_svg_title_names_the_stack_folding_and_stacks_off_falls_back() {
    require_root();
    let (_, svg) = trace("stacks.svg", &[]);
    assert!(svg.contains("folded by process;user stack;library function;op"));
    assert!(svg.contains("outer_step") && svg.contains("middle_step"));
    let (_, off) = trace("nostacks.svg", &["--stacks", "off"]);
    assert!(off.contains("process;thread;library;function;op (no user stacks)"));
    assert!(!off.contains("outer_step"));
}

/// `record --stacks on` keeps the stacks' names, and `report --flamegraph` of the file folds
/// by them as the live run would.
#[test]
fn a_recording_keeps_the_named_stacks() {
    require_root();
    let lib_dir = fake_lib_dir();
    let fixture = hooks::build().expect("hooks fixture");
    let mut app = fixture
        .start(500, Some(&lib_dir.join("libcudart.so.12")))
        .expect("hooks_app");
    let pid = app.pid();
    let work = lib_dir.join("user_stacks");
    std::fs::create_dir_all(&work).expect("work dir");
    let file = work.join(format!("stacks-{pid}.llmddrec"));
    let folded = work.join(format!("stacks-{pid}.folded"));
    let mut rec =
        llmdd_tests::harness::start_record(&[pid], &file, &["--stacks", "on"]).expect("recording");
    hooks::finish(&mut app).expect("hooks_app runs");
    app.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(rec
        .wait_exit(Duration::from_secs(60))
        .expect("recorder exits")
        .success());
    let out = std::process::Command::new(llmdd_tests::harness::built("llmdd"))
        .arg("report")
        .arg(&file)
        .arg("--flamegraph")
        .arg(&folded)
        .output()
        .expect("report runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&folded).expect("folded");
    assert!(
        text.lines()
            .any(|l| l
                .contains(";main;outer_step;middle_step;libcudart.so.12 cudaStreamSynchronize ")),
        "{text}"
    );
}
