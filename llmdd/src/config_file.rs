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

/// Intervals.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Intervals {
    /// Between plain summary blocks / live view refreshes (`--interval`).
    pub refresh: Option<String>,
}

/// The overhead budget.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    /// `--overhead-budget`: `1%`, `0.5`, `off`.
    pub overhead: Option<String>,
    /// `--enforce-budget` (on by default).
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
    /// The engine's thresholds and bounds, declared (with their defaults and documentation)
    /// in `engine::Config`.
    #[serde(default)]
    pub thresholds: Config,
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

/// The engine configuration: defaults, then the file's `[thresholds]`, then `--set
/// thresholds.KEY=VALUE` overrides, in that order.
pub fn engine_config(cfg: &FileConfig, sets: &[String]) -> Result<Config, ConfigError> {
    if sets.is_empty() {
        return Ok(cfg.thresholds.clone());
    }
    let mut table = toml::Table::try_from(&cfg.thresholds)
        .map_err(|e| ConfigError::Set(String::new(), e.to_string()))?;
    for s in sets {
        let bad = |m: &str| ConfigError::Set(s.clone(), m.to_string());
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| bad("use SECTION.KEY=VALUE, e.g. thresholds.stall_threshold=5s"))?;
        let Some(("thresholds", key)) = key.trim().split_once('.') else {
            return Err(bad(
                "only thresholds can be set this way (thresholds.KEY=VALUE, e.g. \
                 thresholds.stall_threshold=5s); run options have their own flags",
            ));
        };
        let doc = format!("v = {}", toml_value(value));
        let v = toml::from_str::<toml::Table>(&doc)
            .map_err(|e| bad(e.message()))?
            .remove("v")
            .ok_or_else(|| bad("no value"))?;
        table.insert(key.to_string(), v);
    }
    let one = sets.join(" ");
    <Config as serde::Deserialize>::deserialize(table)
        .map_err(|e| ConfigError::Set(one, e.message().to_string()))
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

/// Every threshold as TOML, each with its documentation as a comment above it: the
/// `[thresholds]` part of `llmdd config show`, and the reference in docs/config.md.
pub fn thresholds_toml(c: &Config) -> String {
    use documented::DocumentedFields;
    let table = toml::Table::try_from(c).unwrap_or_default();
    let mut out = String::from("[thresholds]\n");
    for (key, value) in &table {
        let doc = Config::get_field_docs(key)
            .or_else(|_| Config::get_field_docs(format!("{key}_ns")))
            .unwrap_or("");
        for line in doc.lines() {
            out.push_str(&format!("# {}\n", line.trim()).replace("# \n", "#\n"));
        }
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

/// The effective configuration as TOML (`llmdd config show`): the file's settings with the
/// built-in value of everything the file leaves out, thresholds documented.
pub fn show(cfg: &FileConfig) -> String {
    let mut full = cfg.clone();
    full.intervals.refresh.get_or_insert_with(|| "1s".into());
    full.budget.overhead.get_or_insert_with(|| "1%".into());
    full.budget.enforce.get_or_insert(true);
    let mut rest = toml::Table::try_from(&full).unwrap_or_default();
    rest.remove("thresholds");
    format!(
        "{}\n{}",
        thresholds_toml(&full.thresholds),
        toml::to_string_pretty(&rest).unwrap_or_default()
    )
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
enforce = false

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
        assert!(!run.enforce_budget, "the file turns the default off");
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
        let c = engine_config(&cfg, &[]).expect("engine");
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
        let e = parse(p, "[thresholds]\nstall_threshold = \"soon\"\n").expect_err("bad duration");
        assert!(e.to_string().starts_with("v.toml:2:"), "{e}");
        assert!(e.to_string().contains("not a duration"), "{e}");
        let e = parse(p, "[thresholds]\nstraggler_min_blame = 2\n").expect_err("bad share");
        assert!(e.to_string().contains("not a share"), "{e}");
        let e = engine_config(
            &FileConfig::default(),
            &["thresholds.stall_min=never".into()],
        )
        .expect_err("bad --set duration");
        assert!(e.to_string().contains("never"), "{e}");
        let cfg = parse(p, "[probes]\ngpu = \"full\"\n").expect("parses");
        let mut run = RunArgs::defaults();
        let e = apply_run(&cfg, p, &mut run, &|_| false).expect_err("bad family");
        assert!(e.to_string().contains("probes.gpu"), "{e}");
        let e = engine_config(&FileConfig::default(), &["nokey".into()]).expect_err("set");
        assert!(e.to_string().contains("--set nokey"), "{e}");
    }
}

#[cfg(test)]
mod docs {
    use super::*;

    const BEGIN: &str = "<!-- thresholds: generated from engine::Config (LLMDD_BLESS=1 cargo test -p llmdd config_file) -->\n```toml\n";
    const END: &str = "```\n<!-- end of thresholds -->";

    /// docs/config.md lists every threshold with its default and documentation exactly as
    /// `engine::Config` declares them (`LLMDD_BLESS=1` rewrites the block).
    #[test]
    fn docs_list_every_threshold_as_declared() {
        let block = format!("{BEGIN}{}{END}", thresholds_toml(&Config::default()));
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
        let doc = std::fs::read_to_string(&path).expect("docs/config.md");
        if std::env::var_os("LLMDD_BLESS").is_some() {
            let (a, b) = (doc.find(BEGIN), doc.find(END));
            let new = match (a, b) {
                (Some(a), Some(b)) => format!("{}{block}{}", &doc[..a], &doc[b + END.len()..]),
                _ => format!("{doc}\n{block}\n"),
            };
            std::fs::write(&path, new).expect("writes docs/config.md");
            return;
        }
        assert!(
            doc.contains(&block),
            "docs/config.md's thresholds are out of date: run LLMDD_BLESS=1 cargo test -p llmdd config_file"
        );
        // And the file's own reference parses back to the defaults.
        let parsed = parse(Path::new("x"), &thresholds_toml(&Config::default())).expect("parses");
        assert_eq!(
            toml::Table::try_from(&parsed.thresholds).ok(),
            toml::Table::try_from(Config::default()).ok()
        );
    }
}
