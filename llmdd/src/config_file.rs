//! `llmdd.toml`: alarm thresholds, intervals, probe family modes, the overhead budget and
//! output defaults in one file (`--config FILE`, else `/etc/llmdd/llmdd.toml` when it
//! exists). Unknown keys and wrong types are errors that name the file, line and column.
//! Every setting also has a command-line flag, and a flag given on the command line wins:
//! run options by their own flags, thresholds by `--set thresholds.KEY=VALUE`. Every key is
//! documented in docs/config.md.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    cli::{parse_budget, parse_duration, parse_listen, RunArgs},
    engine::Config,
};

/// Where the configuration is looked for when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/llmdd/llmdd.toml";

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {key}: {message}", path.display())]
    Value {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("--set {0}: {1}")]
    Set(String, String),
}

/// Alarm thresholds (the engine's); durations as `250ms`, `2s`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Fewest finished instances before a straggler can be named.
    pub straggler_min_instances: Option<u32>,
    /// Fewest late instances of the rank.
    pub straggler_min_late: Option<u32>,
    /// Smallest share of instances the rank must be late in (0-1).
    pub straggler_min_share: Option<f64>,
    /// Smallest lag that makes an arrival late.
    pub straggler_min_lag: Option<String>,
    /// Lag from which a straggler is critical.
    pub straggler_critical_lag: Option<String>,
    /// Longest a collective may wait for a rank before it is a stall.
    pub stall_threshold: Option<String>,
    /// Shortest stall threshold, however fast the collective's period.
    pub stall_min: Option<String>,
    /// Retransmits on one connection that make it a bad link.
    pub link_retransmits: Option<u32>,
    /// Retransmit rate (per segment, 0-1) that makes a connection a bad link.
    pub link_retransmit_rate: Option<f64>,
    /// Smallest idle share of a pipeline stage that is a bubble (0-1).
    pub bubble_min_ratio: Option<f64>,
    /// Serving ports to build request timelines for (empty: detect).
    pub serving_ports: Option<Vec<u16>>,
}

/// Intervals.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Intervals {
    /// Between plain summary blocks / live view refreshes (`--interval`).
    pub refresh: Option<String>,
    /// Between evaluations of the findings.
    pub evaluate: Option<String>,
}

/// The overhead budget.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    /// `--overhead-budget`: `1%`, `0.5`, `off`.
    pub overhead: Option<String>,
    /// `--enforce-budget`.
    pub enforce: Option<bool>,
}

/// Output defaults.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    pub report: Option<PathBuf>,
    pub trace: Option<PathBuf>,
    pub trace_max_slices: Option<u64>,
    pub flamegraph: Option<PathBuf>,
    /// `--stacks`: `auto`, `on` or `off`.
    pub stacks: Option<String>,
    pub dump_events: Option<PathBuf>,
    /// `[ADDR:]PORT`.
    pub prometheus: Option<String>,
}

/// `[probes]`: family modes (`cuda = "aggregate"`) and user probes (`[[probes.user]]`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ProbesSection {
    /// User-defined probes, as `--probe`: library, symbol, and optionally offset, args,
    /// ret, label, collective.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user: Vec<crate::userprobe::UserProbe>,
    /// Probe family -> mode (`full`, `entry`, `aggregate`), as `--mode FAMILY=MODE`.
    #[serde(flatten)]
    pub modes: BTreeMap<String, String>,
}

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub thresholds: Thresholds,
    #[serde(default)]
    pub intervals: Intervals,
    /// Probe family -> mode (`full`, `entry`, `aggregate`), as `--mode FAMILY=MODE`.
    #[serde(default)]
    pub probes: ProbesSection,
    #[serde(default)]
    pub budget: BudgetSection,
    #[serde(default)]
    pub outputs: Outputs,
}

/// The file given, else the default one when it exists, else none.
pub fn locate(given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists()),
    }
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let cfg = parse(path, &text)?;
    // Values are checked now, so `config check` finds them too.
    let mut run = RunArgs::defaults();
    apply_run(&cfg, path, &mut run, &|_| false)?;
    engine_config(&cfg, path, &[])?;
    Ok(cfg)
}

/// Parses configuration text; errors carry the line and column.
pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().to_string(),
        }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, column)
}

fn ns(path: &Path, key: &str, v: &str) -> Result<u64, ConfigError> {
    parse_duration(v)
        .map(|d| d.as_nanos() as u64)
        .map_err(|message| ConfigError::Value {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        })
}

/// Applies the file to the run options, except where `on_command_line(flag)` says the flag
/// was given (the flag wins).
pub fn apply_run(
    cfg: &FileConfig,
    path: &Path,
    run: &mut RunArgs,
    on_command_line: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    let bad = |key: &str, message: String| ConfigError::Value {
        path: path.to_path_buf(),
        key: key.to_string(),
        message,
    };
    if let (Some(v), false) = (&cfg.intervals.refresh, on_command_line("interval")) {
        run.interval = parse_duration(v).map_err(|m| bad("intervals.refresh", m))?;
    }
    if !on_command_line("modes") {
        for (i, u) in cfg.probes.user.iter().enumerate() {
            if !on_command_line("user_probes") {
                let probe = u
                    .clone()
                    .validated(&format!("{}:{}", u.library, u.symbol))
                    .map_err(|e| bad(&format!("probes.user[{i}]"), e.to_string()))?;
                run.user_probes.push(probe);
            }
        }
        for (family, mode) in &cfg.probes.modes {
            let parsed = crate::cli::parse_family_mode(&format!("{family}={mode}"))
                .map_err(|m| bad(&format!("probes.{family}"), m))?;
            run.modes.push(parsed);
        }
    }
    if let (Some(v), false) = (&cfg.budget.overhead, on_command_line("overhead_budget")) {
        run.overhead_budget = parse_budget(v).map_err(|m| bad("budget.overhead", m))?;
    }
    if let (Some(v), false) = (cfg.budget.enforce, on_command_line("enforce_budget")) {
        run.enforce_budget = v;
    }
    let o = &cfg.outputs;
    if !on_command_line("report") && o.report.is_some() {
        run.report = o.report.clone();
    }
    if !on_command_line("trace") && o.trace.is_some() {
        run.trace = o.trace.clone();
    }
    if let (Some(v), false) = (o.trace_max_slices, on_command_line("trace_max_slices")) {
        run.trace_max_slices = v;
    }
    if !on_command_line("flamegraph") && o.flamegraph.is_some() {
        run.flamegraph = o.flamegraph.clone();
    }
    if let (Some(v), false) = (&o.stacks, on_command_line("stacks")) {
        use clap::ValueEnum;
        run.stacks = crate::cli::Stacks::from_str(v, true)
            .map_err(|_| bad("outputs.stacks", format!("`{v}` is not auto, on or off")))?;
    }
    if !on_command_line("dump_events") && o.dump_events.is_some() {
        run.dump_events = o.dump_events.clone();
    }
    if let (Some(v), false) = (&o.prometheus, on_command_line("prometheus")) {
        run.prometheus = Some(parse_listen(v).map_err(|m| bad("outputs.prometheus", m))?);
    }
    Ok(())
}

/// The engine configuration: defaults, then the file, then `--set` overrides
/// (`thresholds.KEY=VALUE` or `intervals.evaluate=VALUE`).
pub fn engine_config(
    cfg: &FileConfig,
    path: &Path,
    sets: &[String],
) -> Result<Config, ConfigError> {
    let mut t = cfg.thresholds.clone();
    let mut evaluate = cfg.intervals.evaluate.clone();
    for s in sets {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| ConfigError::Set(s.clone(), "use KEY=VALUE".into()))?;
        let doc = match key.split_once('.') {
            Some((section, k)) => format!("[{section}]\n{k} = {}", toml_value(value)),
            None => {
                return Err(ConfigError::Set(
                    s.clone(),
                    "use SECTION.KEY=VALUE, e.g. thresholds.stall_threshold=5s".into(),
                ))
            }
        };
        let one = parse(Path::new("--set"), &doc)
            .map_err(|e| ConfigError::Set(s.clone(), e.to_string()))?;
        merge_thresholds(&mut t, one.thresholds);
        if one.intervals.evaluate.is_some() {
            evaluate = one.intervals.evaluate;
        }
    }
    let mut c = Config::default();
    let p = path;
    if let Some(v) = t.straggler_min_instances {
        c.straggler_min_instances = v;
    }
    if let Some(v) = t.straggler_min_late {
        c.straggler_min_late = v;
    }
    if let Some(v) = t.straggler_min_share {
        c.straggler_min_share = share(p, "thresholds.straggler_min_share", v)?;
    }
    if let Some(v) = &t.straggler_min_lag {
        c.straggler_min_lag_ns = ns(p, "thresholds.straggler_min_lag", v)?;
    }
    if let Some(v) = &t.straggler_critical_lag {
        c.straggler_critical_lag_ns = ns(p, "thresholds.straggler_critical_lag", v)?;
    }
    if let Some(v) = &t.stall_threshold {
        c.stall_threshold_ns = ns(p, "thresholds.stall_threshold", v)?;
    }
    if let Some(v) = &t.stall_min {
        c.stall_min_ns = ns(p, "thresholds.stall_min", v)?;
    }
    if let Some(v) = t.link_retransmits {
        c.link_retransmits = v;
    }
    if let Some(v) = t.link_retransmit_rate {
        c.link_retransmit_rate = share(p, "thresholds.link_retransmit_rate", v)?;
    }
    if let Some(v) = t.bubble_min_ratio {
        c.bubble_min_ratio = share(p, "thresholds.bubble_min_ratio", v)?;
    }
    if let Some(v) = &t.serving_ports {
        c.serving_ports = v.clone();
    }
    if let Some(v) = &evaluate {
        c.eval_interval_ns = ns(p, "intervals.evaluate", v)?;
    }
    Ok(c)
}

fn share(path: &Path, key: &str, v: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::Value {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: format!("{v} is not a share between 0 and 1"),
        })
    }
}

/// A `--set` value as TOML: numbers, booleans and arrays as they are, anything else quoted.
fn toml_value(v: &str) -> String {
    let v = v.trim();
    let plain = v.parse::<f64>().is_ok()
        || v == "true"
        || v == "false"
        || (v.starts_with('[') && v.ends_with(']'))
        || (v.starts_with('"') && v.ends_with('"'));
    if plain {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

fn merge_thresholds(into: &mut Thresholds, from: Thresholds) {
    macro_rules! take {
        ($($f:ident),*) => { $( if from.$f.is_some() { into.$f = from.$f; } )* };
    }
    take!(
        straggler_min_instances,
        straggler_min_late,
        straggler_min_share,
        straggler_min_lag,
        straggler_critical_lag,
        stall_threshold,
        stall_min,
        link_retransmits,
        link_retransmit_rate,
        bubble_min_ratio,
        serving_ports
    );
}

/// The effective configuration as TOML (`llmdd config show`): the file's settings, and
/// the built-in value of every threshold the file leaves out.
pub fn show(cfg: &FileConfig) -> String {
    let mut full = cfg.clone();
    let c = engine_config(cfg, Path::new("llmdd.toml"), &[]).unwrap_or_default();
    let t = &mut full.thresholds;
    let dur = |ns: u64| format!("{}ms", ns as f64 / 1e6);
    t.straggler_min_instances
        .get_or_insert(c.straggler_min_instances);
    t.straggler_min_late.get_or_insert(c.straggler_min_late);
    t.straggler_min_share.get_or_insert(c.straggler_min_share);
    t.straggler_min_lag
        .get_or_insert_with(|| dur(c.straggler_min_lag_ns));
    t.straggler_critical_lag
        .get_or_insert_with(|| dur(c.straggler_critical_lag_ns));
    t.stall_threshold
        .get_or_insert_with(|| dur(c.stall_threshold_ns));
    t.stall_min.get_or_insert_with(|| dur(c.stall_min_ns));
    t.link_retransmits.get_or_insert(c.link_retransmits);
    t.link_retransmit_rate.get_or_insert(c.link_retransmit_rate);
    t.bubble_min_ratio.get_or_insert(c.bubble_min_ratio);
    t.serving_ports
        .get_or_insert_with(|| c.serving_ports.clone());
    full.intervals
        .evaluate
        .get_or_insert_with(|| dur(c.eval_interval_ns));
    full.intervals.refresh.get_or_insert_with(|| "1s".into());
    full.budget.overhead.get_or_insert_with(|| "1%".into());
    full.budget.enforce.get_or_insert(false);
    toml::to_string_pretty(&full).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::OverheadBudget;

    const GOOD: &str = r#"
[thresholds]
straggler_min_late = 3
stall_threshold = "5s"
link_retransmit_rate = 0.02

[intervals]
refresh = "2s"

[probes]
cudart = "aggregate"

[[probes.user]]
library = "libhooks.so"
symbol = "sched::Scheduler::step"
args = [1, 2]
ret = true

[budget]
overhead = "0.5%"
enforce = true

[outputs]
report = "/tmp/r.json"
prometheus = "9400"
"#;

    #[test]
    fn a_good_file_sets_run_options_and_thresholds() {
        let p = Path::new("llmdd.toml");
        let cfg = parse(p, GOOD).expect("parses");
        let mut run = RunArgs::defaults();
        apply_run(&cfg, p, &mut run, &|_| false).expect("applies");
        assert_eq!(run.interval, std::time::Duration::from_secs(2));
        assert_eq!(run.overhead_budget, OverheadBudget(Some(0.005)));
        assert!(run.enforce_budget);
        assert_eq!(run.modes.len(), 1);
        assert_eq!(run.user_probes.len(), 1);
        let u = &run.user_probes[0];
        assert_eq!(
            (u.symbol.as_str(), &u.args[..], u.ret, u.label.as_str()),
            (
                "sched::Scheduler::step",
                &[1u8, 2][..],
                true,
                "Scheduler::step"
            )
        );
        assert_eq!(run.report.as_deref(), Some(Path::new("/tmp/r.json")));
        assert_eq!(run.prometheus.map(|a| a.port()), Some(9400));
        let c = engine_config(&cfg, p, &[]).expect("engine");
        assert_eq!(c.straggler_min_late, 3);
        assert_eq!(c.stall_threshold_ns, 5_000_000_000);
        assert_eq!(c.link_retransmit_rate, 0.02);
    }

    #[test]
    fn flags_given_on_the_command_line_win() {
        let p = Path::new("llmdd.toml");
        let cfg = parse(p, GOOD).expect("parses");
        let mut run = RunArgs::defaults();
        run.interval = std::time::Duration::from_secs(7);
        apply_run(&cfg, p, &mut run, &|f| f == "interval" || f == "report").expect("applies");
        assert_eq!(run.interval, std::time::Duration::from_secs(7));
        assert_eq!(run.report, None);
        let c = engine_config(
            &cfg,
            p,
            &[
                "thresholds.stall_threshold=9s".into(),
                "thresholds.straggler_min_late=8".into(),
            ],
        )
        .expect("engine");
        assert_eq!(c.stall_threshold_ns, 9_000_000_000);
        assert_eq!(c.straggler_min_late, 8);
    }

    #[test]
    fn unknown_keys_and_wrong_types_point_at_the_line() {
        let p = Path::new("bad.toml");
        let e = parse(
            p,
            "[thresholds]\nstall_threshold = \"2s\"\nstal_min = \"1s\"\n",
        )
        .expect_err("unknown key");
        let msg = e.to_string();
        assert!(msg.starts_with("bad.toml:3:1:"), "{msg}");
        assert!(msg.contains("unknown field `stal_min`"), "{msg}");
        let e = parse(p, "[thresholds]\n\nstraggler_min_late = \"many\"\n").expect_err("type");
        let msg = e.to_string();
        assert!(msg.starts_with("bad.toml:3:"), "{msg}");
        let e = parse(
            p,
            "[probes]\n[[probes.user]]\nlibrary = \"l.so\"\nsymbol = \"f\"\nargz = [1]\n",
        )
        .expect_err("unknown user-probe key");
        assert!(e.to_string().contains("argz"), "{e}");
        let e = parse(p, "[colours]\nx = 1\n").expect_err("section");
        assert!(e.to_string().contains("unknown field `colours`"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let p = Path::new("v.toml");
        let cfg = parse(p, "[thresholds]\nstall_threshold = \"soon\"\n").expect("parses");
        let e = engine_config(&cfg, p, &[]).expect_err("bad duration");
        assert!(e.to_string().contains("thresholds.stall_threshold"), "{e}");
        let cfg = parse(p, "[probes]\ngpu = \"full\"\n").expect("parses");
        let mut run = RunArgs::defaults();
        let e = apply_run(&cfg, p, &mut run, &|_| false).expect_err("bad family");
        assert!(e.to_string().contains("probes.gpu"), "{e}");
        let e = engine_config(&FileConfig::default(), p, &["nokey".into()]).expect_err("set");
        assert!(e.to_string().contains("--set nokey"), "{e}");
    }
}
