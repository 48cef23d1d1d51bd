//! The part of the accuracy matrix that runs in CI (`llmdd_tests::accuracy`, `Size::Quick`):
//! a rare straggler attached mid-run, an every-step straggler on 8 ranks, a pipeline with a
//! slow stage and a balanced one with a step-end collective, a DP x TP straggler seen from
//! communicator creation, ranks ending without destroy a little apart, two independent
//! replicas, a clean run attached mid-run, the real Open MPI job attached mid-run, and a
//! simulated and the real Open MPI job already hung when llmdd attaches. Each must name the
//! right culprit with its magnitude within 20%, and nothing else.
//!
//! The parameters (which rank, how late, when llmdd attaches) change with the seed: the time,
//! unless `LLMDD_ACCURACY_SEED` is set; a failure prints the seed to rerun it with `cargo
//! xtask accuracy --quick --seed N`.

use llmdd_tests::{
    accuracy::{self, Env, Size},
    harness::{built, fake_lib_dir, require_root},
    mpi,
};

#[test]
fn the_quick_matrix_names_every_fault_right_and_nothing_else() {
    require_root();
    let seed = std::env::var("LLMDD_ACCURACY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(1)
        });
    let scenarios = accuracy::matrix(seed, Size::Quick);
    let env = Env {
        llmdd: built("llmdd"),
        lib_dir: fake_lib_dir(),
        work: std::env::temp_dir().join(format!("llmdd-accuracy-ci-{}", std::process::id())),
        mpi_job: Some(mpi::build_job().expect("the Open MPI job builds")),
    };
    let outcomes: Vec<_> = scenarios
        .iter()
        .enumerate()
        .map(|(i, s)| accuracy::run(s, &env, i))
        .collect();
    let table = accuracy::table(&outcomes);
    eprintln!("seed {seed}\n{table}");
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.verdict.ok())
        .map(|o| format!("{}: {} ({})", o.scenario, o.verdict.label(), o.detail))
        .collect();
    let _ = std::fs::remove_dir_all(&env.work);
    assert!(
        bad.is_empty(),
        "seed {seed} (rerun: cargo xtask accuracy --quick --seed {seed}):\n{}\n\n{table}",
        bad.join("\n")
    );
}
