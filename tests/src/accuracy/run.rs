//! Running one scenario: start the job(s), attach llmdd when the scenario says, let the job
//! run to its end, and score llmdd's report against the job's truth.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;
use simjob::truth::Truth;

use super::{score, Attach, JobKind, Outcome, Scenario, Verdict};
use crate::{
    harness::{start_llmdd_with, Proc},
    job::Job,
    mpi::{MpiJob, MpiSteps},
    serving,
};

/// Where things are.
pub struct Env {
    /// The llmdd binary (the release build, as users run it, for `cargo xtask accuracy`).
    pub llmdd: PathBuf,
    /// The fake libraries, staged under their sonames.
    pub lib_dir: PathBuf,
    /// Scratch space for truths and reports.
    pub work: PathBuf,
    /// The built Open MPI job, when an MPI scenario runs.
    pub mpi_job: Option<PathBuf>,
}

/// Runs `s` and scores it; a scenario that cannot run is an `Error` outcome, not a panic.
pub fn run(s: &Scenario, env: &Env, index: usize) -> Outcome {
    let dir = env.work.join(format!("{index:03}"));
    let result = std::fs::create_dir_all(&dir)
        .context("scratch directory")
        .and_then(|_| match &s.job {
            JobKind::Sim { jobs, attach } => run_sim(s, env, &dir, jobs, *attach),
            JobKind::Mpi {
                steps,
                compute_us,
                slow,
                delay_us,
                attach_after_ms,
                hang_step,
            } => {
                let steps = MpiSteps {
                    steps: *steps,
                    compute_us: *compute_us,
                    slow_rank: *slow,
                    delay_us: *delay_us,
                    hang_step: *hang_step,
                };
                run_mpi(s, env, &dir, steps, *attach_after_ms)
            }
            JobKind::Serving {
                http,
                event_loop,
                ttft_ms,
                itl_ms,
            } => run_serving(s, env, &dir, http, event_loop, *ttft_ms, *itl_ms),
            JobKind::Nixl {
                agents,
                iters,
                fault,
            } => {
                let r = crate::nixl::run(&env.llmdd, &dir.join("nixl"), *agents, *iters, *fault)?;
                let errors = crate::harness::schema_errors(&r.report)?;
                anyhow::ensure!(
                    errors.is_empty(),
                    "the report breaks docs/report.schema.json: {}",
                    errors.join("; ")
                );
                Ok(score::kv(s, &r))
            }
        });
    result.unwrap_or_else(|e| Outcome {
        scenario: s.name.clone(),
        expected: score::expected_label(&s.expect),
        named: "-".into(),
        magnitude_err: None,
        false_findings: 0,
        time_to_finding: None,
        verdict: Verdict::Error,
        detail: format!("{e:#}"),
    })
}

/// Reads a report, which must validate against the shipped schema.
fn report_of(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc = serde_json::from_str(&text).context("parsing the report")?;
    let errors = crate::harness::schema_errors(&doc)?;
    anyhow::ensure!(
        errors.is_empty(),
        "the report breaks docs/report.schema.json: {}",
        errors.join("; ")
    );
    Ok(doc)
}

/// Waits for llmdd to exit on its own (every target gone) and reads its report.
fn finish_llmdd(l: &mut Proc, report: &Path) -> Result<Value> {
    let status = l.wait_exit(Duration::from_secs(180))?;
    anyhow::ensure!(status.success(), "llmdd failed: {}", l.transcript());
    report_of(report)
}

fn run_sim(
    s: &Scenario,
    env: &Env,
    dir: &Path,
    jobs: &[Vec<String>],
    attach: Attach,
) -> Result<Outcome> {
    let report = dir.join("report.json");
    let report_arg = report.to_string_lossy().into_owned();
    let mut started = Vec::new();
    for (j, a) in jobs.iter().enumerate() {
        let truth = dir.join(format!("truth{j}.json"));
        let mut full: Vec<String> = vec![
            "--warmup".into(),
            "2".into(),
            "--truth".into(),
            truth.to_string_lossy().into_owned(),
            "--timeout-s".into(),
            "240".into(),
        ];
        full.extend(a.iter().cloned());
        if matches!(attach, Attach::During { .. }) {
            full.push("--no-gate".into());
        }
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let job = match attach {
            Attach::BeforeInit => Job::start_before_init(&env.lib_dir, &refs)?,
            _ => Job::start(&env.lib_dir, &refs)?,
        };
        started.push((job, truth));
    }
    if let Attach::During { after_ms } = attach {
        std::thread::sleep(Duration::from_millis(after_ms));
    }
    let pids: Vec<u32> = started.iter().flat_map(|(j, _)| j.pids.clone()).collect();
    let t0 = Instant::now();
    let mut l = start_llmdd_with(&env.llmdd, &pids, &["--quiet", "--report", &report_arg])?;
    let attach_s = t0.elapsed().as_secs_f64();
    let attached_ns = simjob::now_ns();
    for (job, _) in started.iter_mut() {
        if attach == Attach::BeforeInit {
            job.init()?;
        }
        if !matches!(attach, Attach::During { .. }) {
            job.go()?;
        }
    }
    let mut truths: Vec<Truth> = Vec::new();
    for (job, truth) in started.iter_mut() {
        truths.push(job.finish(truth)?);
    }
    let doc = finish_llmdd(&mut l, &report)?;
    let mut o = score::sim(s, &truths, &doc, attached_ns);
    if o.verdict != Verdict::Right {
        o.detail = format!("{}; attach took {attach_s:.2} s", o.detail);
    }
    Ok(o)
}

fn run_mpi(s: &Scenario, env: &Env, dir: &Path, steps: MpiSteps, after_ms: u64) -> Result<Outcome> {
    let job = env
        .mpi_job
        .as_deref()
        .context("the Open MPI job was not built")?;
    let report = dir.join("report.json");
    let report_arg = report.to_string_lossy().into_owned();
    let mut m = MpiJob::start(job, steps)?;
    m.go()?;
    if steps.hang_step.is_some() {
        m.wait_hung()?;
    }
    std::thread::sleep(Duration::from_millis(after_ms));
    let mut args = vec![
        "--quiet",
        "--report",
        &report_arg,
        "--overhead-budget",
        "off",
    ];
    if steps.hang_step.is_some() {
        args.extend(["--duration", "4s"]);
    }
    let mut l = start_llmdd_with(&env.llmdd, &m.pids, &args)?;
    let attached_ns = simjob::now_ns();
    if steps.hang_step.is_some() {
        let doc = finish_llmdd(&mut l, &report)?;
        m.kill();
        return Ok(score::mpi(s, &m.pids, steps, &doc, attached_ns));
    }
    m.finish()?;
    let doc = finish_llmdd(&mut l, &report)?;
    Ok(score::mpi(s, &m.pids, steps, &doc, attached_ns))
}

fn run_serving(
    s: &Scenario,
    env: &Env,
    dir: &Path,
    http: &'static str,
    event_loop: &'static str,
    ttft_ms: u64,
    itl_ms: u64,
) -> Result<Outcome> {
    let report = dir.join("report.json");
    let report_arg = report.to_string_lossy().into_owned();
    let srv = serving::start(serving::ServerSpec {
        http,
        event_loop,
        ttft_ms,
        itl_ms,
    })?;
    let mut l = start_llmdd_with(
        &env.llmdd,
        &[],
        &[
            "--front",
            &srv.pid.to_string(),
            "--quiet",
            "--report",
            &report_arg,
        ],
    )?;
    let client = serving::client(srv.port, 24, 4, 12)?;
    l.signal(libc::SIGINT)?;
    let status = l.wait_exit(Duration::from_secs(60))?;
    anyhow::ensure!(status.success(), "llmdd failed: {}", l.transcript());
    let _ = srv.proc.signal(libc::SIGTERM);
    let doc = report_of(&report)?;
    Ok(score::serving(s, srv.port, &client, &doc))
}
