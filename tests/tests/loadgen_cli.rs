//! `llmdd loadgen` and the GPU validation script where there is no GPU (this machine kind,
//! and CI): the reason is one line and the exit code says it failed; bad options are usage
//! errors; the script says there is nothing to check and succeeds. (On a GPU node,
//! scripts/gpu-check.sh runs loadgen for real.)

use std::process::Command;

use llmdd_tests::harness::{built, workspace_root};

fn no_gpu() -> bool {
    !std::path::Path::new("/dev/nvidiactl").exists()
}

#[test]
fn without_a_driver_loadgen_says_why_in_one_line() {
    if !no_gpu() {
        return;
    }
    // As on a machine without a driver: cargo puts the fixtures' fake libcuda.so on the
    // library path of tests, which is not what a user has.
    let out = Command::new(built("llmdd"))
        .args(["loadgen", "--max-bytes", "1M"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("llmdd runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no CUDA driver: libcuda.so.1 was not found"),
        "{err}"
    );
}

#[test]
fn a_library_that_is_not_the_real_driver_is_an_error_not_a_crash() {
    // The fixtures' fake libcuda.so (on the library path under cargo test) lacks most of
    // the driver API.
    let fake = llmdd_tests::harness::build_dir();
    if !fake.join("libcuda.so").exists() || !no_gpu() {
        return;
    }
    let out = Command::new(built("llmdd"))
        .args(["loadgen", "--max-bytes", "1M"])
        .env("LD_LIBRARY_PATH", &fake)
        .output()
        .expect("llmdd runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is not usable"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_loadgen_options_are_refused_before_any_gpu_work() {
    let run = |args: &[&str]| {
        let out = Command::new(built("llmdd"))
            .arg("loadgen")
            .args(args)
            .output()
            .expect("llmdd runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--ops", "alltoall"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown op `alltoall`"), "{err}");
    let (code, err) = run(&["--min-bytes", "1G", "--max-bytes", "1M"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--min-bytes is larger"), "{err}");
    let (code, err) = run(&["--max-bytes", "lots"]);
    assert_eq!(code, Some(2), "a usage error: {err}");
    let (code, err) = run(&["--delay-rank", "1"]);
    assert_eq!(code, Some(2), "--delay-rank needs --delay-us: {err}");
}

#[test]
fn the_gpu_check_script_parses_and_has_nothing_to_do_without_a_gpu() {
    let script = workspace_root().join("scripts/gpu-check.sh");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("bash runs");
    assert!(syntax.success());
    if !no_gpu() {
        return;
    }
    let out = Command::new("bash")
        .arg(&script)
        .arg(built("llmdd"))
        .output()
        .expect("script runs");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no NVIDIA GPU on this machine"));
}
