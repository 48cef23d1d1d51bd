//! `cargo xtask accuracy`: the accuracy matrix (see `llmdd_tests::accuracy`), run against
//! llmdd as users run it, printed as one table. Not a test: it measures how often llmdd
//! names the right culprit, with the right magnitude and nothing else, over jobs whose
//! shape, fault and attach time vary with the seed.
//!
//! Usage: accuracy [--seed N] [--mpi-repeats K] [--quick] [--only TEXT] [--markdown FILE]
//! [--keep DIR]

use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};
use llmdd_tests::{
    accuracy::{self, Env, Size},
    harness::{built, fake_lib_dir, require_root},
    mpi,
};

struct Args {
    seed: u64,
    size: Size,
    only: Option<String>,
    markdown: Option<PathBuf>,
    keep: Option<PathBuf>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1),
        size: Size::Full { mpi_repeats: 5 },
        only: None,
        markdown: None,
        keep: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--seed" => a.seed = val()?.parse().context("--seed")?,
            "--mpi-repeats" => {
                a.size = Size::Full {
                    mpi_repeats: val()?.parse().context("--mpi-repeats")?,
                }
            }
            "--quick" => a.size = Size::Quick,
            "--only" => a.only = Some(val()?),
            "--markdown" => a.markdown = Some(PathBuf::from(val()?)),
            "--keep" => a.keep = Some(PathBuf::from(val()?)),
            "--help" | "-h" => {
                println!(
                    "accuracy [--seed N] [--mpi-repeats K] [--quick] [--only TEXT] [--markdown FILE] \
                     [--keep DIR]\n\
                     Runs the accuracy matrix (every scenario, or those whose name contains \
                     TEXT) and prints one table; --markdown also writes it as Markdown; \
                     --keep leaves each scenario's report and truths in DIR/NNN/."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (see --help)"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    require_root();
    let a = parse()?;
    let mut scenarios = accuracy::matrix(a.seed, a.size);
    if let Some(o) = &a.only {
        scenarios.retain(|s| s.name.contains(o.as_str()));
    }
    let llmdd = std::env::var_os("LLMDD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| built("llmdd"));
    let mpi_job = scenarios
        .iter()
        .any(|s| matches!(s.job, accuracy::JobKind::Mpi { .. }))
        .then(mpi::build_job)
        .transpose()?;
    let env = Env {
        llmdd: llmdd.clone(),
        lib_dir: fake_lib_dir(),
        work: a.keep.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("llmdd-accuracy-{}", std::process::id()))
        }),
        mpi_job,
    };
    eprintln!(
        "accuracy: seed {} ({} scenarios), llmdd {}",
        a.seed,
        scenarios.len(),
        llmdd.display()
    );
    let start = Instant::now();
    let mut outcomes = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        let t = Instant::now();
        let o = accuracy::run(s, &env, i);
        eprintln!(
            "[{}/{}] {} -> {} ({:.1} s){}",
            i + 1,
            scenarios.len(),
            s.name,
            o.verdict.label(),
            t.elapsed().as_secs_f64(),
            if o.verdict.ok() {
                String::new()
            } else {
                format!("\n    {}", o.detail)
            }
        );
        outcomes.push(o);
    }
    println!(
        "\nseed {} ({:.0} s)\n{}",
        a.seed,
        start.elapsed().as_secs_f64(),
        accuracy::table(&outcomes)
    );
    if let Some(p) = &a.markdown {
        let md = format!(
            "Seed {}, `cargo xtask accuracy --seed {}`:\n\n{}",
            a.seed,
            a.seed,
            accuracy::markdown(&outcomes)
        );
        std::fs::write(p, md).with_context(|| format!("writing {}", p.display()))?;
    }
    if a.keep.is_none() {
        let _ = std::fs::remove_dir_all(&env.work);
    }
    Ok(())
}
