//! Shared by the `findings_*` tests (included with `#[path]`; as a test target of its own it
//! holds no test): run the simulated job with injected faults under `llmdd attach --report`,
//! and read what llmdd concluded next to what the job says it did.

#![allow(dead_code)]

use std::{
    path::PathBuf,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use llmdd_tests::{
    harness::{fake_lib_dir, require_root, start_llmdd, Proc, Stream},
    job::Job,
};
use serde_json::Value;
use simjob::truth::{FaultTruth, Truth};

/// Ranks of every job these tests run.
pub const NRANKS: usize = 4;

/// One job at a time: the tests of one file run on threads of one process, and two jobs
/// sharing a 2-core machine would time each other, not the faults.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A finished run: the job's truth, llmdd's report, and llmdd's output.
pub struct Run {
    pub truth: Truth,
    pub report: Value,
    pub llmdd: Proc,
    pub work: PathBuf,
}

/// What to do while the job runs (after `go`): the started job and llmdd.
pub type During<'a> = &'a mut dyn FnMut(&mut Job, &mut Proc);

/// Starts `simjob` with 4 ranks and `args`, attaches llmdd to its ranks (and its serving
/// front, if any) with `--report` and `llmdd_args`, releases the job, runs `during`, lets the
/// job finish and llmdd stop on its own, and reads both sides.
pub fn run(name: &str, args: &[&str], llmdd_args: &[&str], during: During<'_>) -> Run {
    run_with(name, args, llmdd_args, during, false)
}

/// As [`run`], with llmdd attached before the ranks create their communicators (and make
/// anything else at start-up, such as their CUDA graphs).
pub fn run_from_init(name: &str, args: &[&str], llmdd_args: &[&str]) -> Run {
    run_with(name, args, llmdd_args, &mut nothing(), true)
}

fn run_with(
    name: &str,
    args: &[&str],
    llmdd_args: &[&str],
    during: During<'_>,
    from_init: bool,
) -> Run {
    require_root();
    let lib_dir = fake_lib_dir();
    let work = lib_dir.join(name);
    std::fs::create_dir_all(&work).expect("work dir");
    let truth_path = work.join("truth.json");
    let report_path = work.join("report.json");
    let truth_arg = truth_path.to_string_lossy().into_owned();
    let mut job_args = vec![
        "--ranks",
        "4",
        "--warmup",
        "2",
        "--truth",
        &truth_arg,
        "--timeout-s",
        "240",
    ];
    job_args.extend_from_slice(args);
    let mut job = if from_init {
        Job::start_before_init(&lib_dir, &job_args).expect("simjob starts")
    } else {
        Job::start(&lib_dir, &job_args).expect("simjob starts")
    };
    assert_eq!(job.pids.len(), NRANKS);
    let pids = job.pids.clone();
    let report_arg = report_path.to_string_lossy().into_owned();
    let front_arg = job.front.map(|(pid, _)| pid.to_string());
    let mut extra = vec!["--report", report_arg.as_str()];
    if let Some(front) = &front_arg {
        extra.extend(["--front", front.as_str()]);
    }
    extra.extend_from_slice(llmdd_args);
    let mut llmdd = start_llmdd(&pids, &extra).expect("llmdd attaches");
    if from_init {
        job.init().expect("the ranks set up");
    }
    job.go().expect("releasing the job");
    during(&mut job, &mut llmdd);
    let truth = job.finish(&truth_path).expect("the job completes");
    assert!(truth.complete, "the job ran to completion");
    let status = llmdd
        .wait_exit(Duration::from_secs(120))
        .expect("llmdd exits once every target has");
    assert!(status.success(), "llmdd failed:\n{}", llmdd.transcript());
    let text = std::fs::read_to_string(&report_path).expect("the report");
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    Run {
        truth,
        report,
        llmdd,
        work,
    }
}

/// Nothing to do while the job runs.
pub fn nothing() -> impl FnMut(&mut Job, &mut Proc) {
    |_: &mut Job, _: &mut Proc| {}
}

impl Run {
    /// Every finding in the report, active or not.
    pub fn findings(&self) -> Vec<&Value> {
        self.report["findings"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }

    /// The findings, one line each, for failure messages.
    pub fn describe(&self) -> String {
        let f: Vec<String> = self
            .findings()
            .iter()
            .map(|f| {
                format!(
                    "  {} (active {}) culprit {} magnitude {}: {}",
                    f["kind"], f["active"], f["culprit"], f["magnitude"], f["evidence"]
                )
            })
            .collect();
        format!(
            "{} finding(s):\n{}\nllmdd output:\n{}",
            f.len(),
            f.join("\n"),
            self.llmdd.lines_of(Stream::Stdout).join("\n")
        )
    }

    /// The one finding of the report, which must be of `kind`.
    pub fn only_finding(&self, kind: &str) -> &Value {
        let f = self.findings();
        assert_eq!(
            f.len(),
            1,
            "expected exactly one finding ({kind}), got {}",
            self.describe()
        );
        assert_eq!(f[0]["kind"], kind, "{}", self.describe());
        f[0]
    }

    /// Pid of rank `r`, from the truth.
    pub fn pid_of(&self, r: usize) -> u32 {
        self.truth
            .ranks
            .iter()
            .find(|x| x.rank == r)
            .map(|x| x.pid)
            .expect("rank in the truth")
    }

    /// The injected faults of `kind`, in time order.
    pub fn faults(&self, kind: &str) -> Vec<&FaultTruth> {
        let mut f: Vec<&FaultTruth> = self
            .truth
            .ranks
            .iter()
            .flat_map(|r| r.faults.iter())
            .filter(|f| f.kind == kind)
            .collect();
        f.sort_by_key(|f| f.start_ns);
        f
    }

    /// Asserts that the finding names rank `r` (rank and pid).
    pub fn assert_culprit(&self, f: &Value, r: usize) {
        assert_eq!(f["culprit"]["rank"], r, "{}", self.describe());
        assert_eq!(f["culprit"]["pid"], self.pid_of(r), "{}", self.describe());
    }

    /// The communicator of the job, as llmdd saw it.
    pub fn communicator(&self) -> &Value {
        let c = &self.report["communicators"];
        assert_eq!(
            c.as_array().map(Vec::len),
            Some(1),
            "one communicator: {c:#}"
        );
        &c[0]
    }
}

/// `got` within `tol` (a share) of `want`.
pub fn assert_within(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * want.abs(),
        "{what}: {got:.0} is not within {:.0}% of {want:.0}",
        tol * 100.0
    );
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<u64>) -> u64 {
    assert!(!v.is_empty());
    v.sort_unstable();
    v[v.len() / 2]
}

/// The value at quantile `q` of `v` as HdrHistogram reports it: the smallest value with at
/// least `q` of the values at or below it.
pub fn quantile(v: &[u64], q: f64) -> u64 {
    assert!(!v.is_empty());
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}
