//! User-defined probes (`--probe SPEC`, `[[probes.user]]` in the configuration file): any
//! function of any library a target maps, named by its C name, its mangled name or its
//! demangled C++ name, optionally at an offset inside it. They run on the same generic BPF
//! call path as the built-in families (`user_entry`/`user_return`, driven by the attach
//! cookie: no code is generated on the node), get function ids from `funcs::USER_BASE` on,
//! and so appear in the summary, TUI, report, Prometheus and timeline like built-in calls.
//! A probe declared `collective` is matched across ranks: the n-th call of that probe in
//! each process of a job (ranks from the environment) is one instance.
//!
//! Spec: `LIBRARY:SYMBOL[,arg=N]...[,ret][,label=NAME][,offset=N][,collective]`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use llmdd_common::funcs::{self, CallKind, Family, FuncId, FuncSpec, MAX_USER, USER_BASE};
use serde::{Deserialize, Serialize};

use crate::{
    probe::ObjectPlan,
    tracee::{
        maps::{mapped_files, parse_maps, MappedFile},
        symbols::SymbolTable,
    },
};

/// Argument slots a probe can record: the six integer argument registers and the first
/// three stack words (x86-64 SysV; for a C++ method, argument 0 is `this`).
pub const MAX_ARG: u8 = 8;
/// Longest label (labels are Prometheus label values: kept short and plain).
pub const MAX_LABEL: usize = 48;

/// One user-defined probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserProbe {
    /// A path, a file name (`libhooks.so.1`) or a prefix of one (`libhooks.so`).
    pub library: String,
    /// C name, mangled name, or demangled C++ name with or without its parameter list.
    pub symbol: String,
    /// Bytes into the function (0: its entry). A probe inside a function records no
    /// duration or return value: only the entry is probed.
    #[serde(default)]
    pub offset: u64,
    /// Integer/pointer arguments to record (0-8).
    #[serde(default)]
    pub args: Vec<u8>,
    /// Record the return value.
    #[serde(default)]
    pub ret: bool,
    /// Name shown everywhere (default: the symbol's last path component).
    #[serde(default)]
    pub label: String,
    /// Match calls across ranks as a collective.
    #[serde(default)]
    pub collective: bool,
}

/// A probe spec that cannot be used, or a probe that cannot be placed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserProbeError {
    #[error("--probe `{spec}`: {why}")]
    Spec { spec: String, why: String },
    #[error("at most {MAX_USER} user probes ({n} given)")]
    TooMany { n: usize },
    #[error("two user probes are labelled `{0}`: give one a label=NAME")]
    DuplicateLabel(String),
    #[error(
        "--probe {label}: no traced process maps a library matching `{library}` (pid {pid} \
         maps {maps})"
    )]
    NoLibrary {
        label: String,
        library: String,
        pid: u32,
        maps: String,
    },
    #[error("--probe {label}: {} has no function `{symbol}`{hint}", path.display())]
    NoSymbol {
        label: String,
        symbol: String,
        path: PathBuf,
        hint: String,
    },
    #[error("--probe {label}: reading {}: {why}", path.display())]
    Unreadable {
        label: String,
        path: PathBuf,
        why: String,
    },
}

fn bad(spec: &str, why: impl Into<String>) -> UserProbeError {
    UserProbeError::Spec {
        spec: spec.to_string(),
        why: why.into(),
    }
}

/// Splits `s` at commas outside parentheses and angle brackets (C++ parameter lists and
/// template arguments hold commas).
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'(' | b'<' => depth += 1,
            b')' | b'>' => depth -= 1,
            b',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_u64(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// The default label: the symbol without parameters and namespaces (`sched::Scheduler::step`
/// gives `Scheduler::step`).
fn default_label(symbol: &str) -> String {
    let bare = crate::tracee::symbols::without_params(symbol);
    let parts: Vec<&str> = bare.rsplit("::").take(2).collect();
    let label: String = parts.into_iter().rev().collect::<Vec<_>>().join("::");
    label.chars().take(MAX_LABEL).collect()
}

impl UserProbe {
    /// Checks the fields (also of a probe read from the configuration file) and fills the
    /// default label.
    pub fn validated(mut self, spec: &str) -> Result<UserProbe, UserProbeError> {
        if self.library.trim().is_empty() {
            return Err(bad(spec, "no library: write LIBRARY:SYMBOL"));
        }
        if self.symbol.trim().is_empty() {
            return Err(bad(spec, "no symbol: write LIBRARY:SYMBOL"));
        }
        if let Some(a) = self.args.iter().find(|a| **a > MAX_ARG) {
            return Err(bad(
                spec,
                format!(
                    "argument index {a} is out of range: arguments 0-{MAX_ARG} can be recorded \
                     (the six argument registers and three stack words; a C++ method's \
                     argument 0 is `this`)"
                ),
            ));
        }
        if self.offset != 0 && self.ret {
            return Err(bad(
                spec,
                "`ret` needs the probe at the function's entry: a probe at an offset sees no \
                 return",
            ));
        }
        self.args.sort_unstable();
        self.args.dedup();
        if self.label.is_empty() {
            self.label = default_label(&self.symbol);
        }
        if self.label.len() > MAX_LABEL
            || !self
                .label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
        {
            return Err(bad(
                spec,
                format!(
                    "label `{}` must be at most {MAX_LABEL} characters of letters, digits and \
                     _ . : -",
                    self.label
                ),
            ));
        }
        Ok(self)
    }
}

/// Parses `LIBRARY:SYMBOL[,arg=N]...[,ret][,label=NAME][,offset=N][,collective]`.
pub fn parse(spec: &str) -> Result<UserProbe, UserProbeError> {
    let s = spec.trim();
    let Some((library, rest)) = s.split_once(':') else {
        return Err(bad(spec, "write LIBRARY:SYMBOL (e.g. libfoo.so:foo_step)"));
    };
    if rest.starts_with(':') {
        return Err(bad(
            spec,
            "the library is missing: write LIBRARY:SYMBOL (e.g. libsched.so:sched::Scheduler::step)",
        ));
    }
    let mut parts = split_top(rest).into_iter();
    let symbol = parts.next().unwrap_or_default().trim().to_string();
    let mut p = UserProbe {
        library: library.trim().to_string(),
        symbol,
        offset: 0,
        args: Vec::new(),
        ret: false,
        label: String::new(),
        collective: false,
    };
    for opt in parts {
        let (k, v) = match opt.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (opt.trim(), None),
        };
        match (k, v) {
            ("arg", Some(v)) => p.args.push(v.parse().map_err(|_| {
                bad(
                    spec,
                    format!("`arg={v}`: an argument index is a number 0-{MAX_ARG}"),
                )
            })?),
            ("ret", None) => p.ret = true,
            ("collective", None) => p.collective = true,
            ("label", Some(v)) => p.label = v.to_string(),
            ("offset", Some(v)) => {
                p.offset = parse_u64(v)
                    .ok_or_else(|| bad(spec, format!("`offset={v}` is not a number")))?
            }
            _ => {
                return Err(bad(
                    spec,
                    format!(
                        "unknown option `{opt}`: use arg=N, ret, label=NAME, offset=N or \
                         collective"
                    ),
                ))
            }
        }
    }
    p.validated(spec)
}

/// The probes of this run, in function-id order (`USER_BASE + index`).
static PROBES: OnceLock<Vec<UserProbe>> = OnceLock::new();

/// Installs the run's user probes: function specs for every view, and what each records.
/// Once per process.
pub fn register(probes: &[UserProbe]) -> Result<(), UserProbeError> {
    if probes.len() > MAX_USER {
        return Err(UserProbeError::TooMany { n: probes.len() });
    }
    let mut seen = std::collections::HashSet::new();
    for p in probes {
        if !seen.insert(p.label.as_str()) {
            return Err(UserProbeError::DuplicateLabel(p.label.clone()));
        }
    }
    if probes.is_empty() {
        return Ok(());
    }
    let specs: Vec<FuncSpec> = probes
        .iter()
        .enumerate()
        .map(|(i, p)| FuncSpec {
            id: USER_BASE + i as FuncId,
            name: Box::leak(p.label.clone().into_boxed_str()),
            family: Family::User,
            kind: if p.collective {
                CallKind::Collective
            } else {
                CallKind::Other
            },
            symbols: &[],
            roles: funcs::NO_ROLES,
            entry_only: p.offset != 0,
        })
        .collect();
    if PROBES.set(probes.to_vec()).is_err() || !funcs::register_user(specs.leak()) {
        // Only one set of user probes per process (one run).
        tracing::warn!("user probes already registered; keeping the first set");
    }
    Ok(())
}

/// The user probe of a function id.
pub fn probe(func: FuncId) -> Option<&'static UserProbe> {
    PROBES.get()?.get(func.checked_sub(USER_BASE)? as usize)
}

/// The recorded values of a user-probe call: `argN` and `ret`, in that order.
pub fn values(func: FuncId, args: &[u64; 9], ret: Option<u64>) -> Vec<(String, u64)> {
    let Some(p) = probe(func) else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64)> = p
        .args
        .iter()
        .filter_map(|&a| args.get(a as usize).map(|v| (format!("arg{a}"), *v)))
        .collect();
    if p.ret {
        if let Some(r) = ret {
            out.push(("ret".to_string(), r));
        }
    }
    out
}

/// The communicator handle a collective user probe's calls share in every process: the
/// label's hash (ranks then come from the environment, as for MPI's world communicator).
pub fn collective_handle(func: FuncId) -> Option<u64> {
    let p = probe(func)?;
    p.collective.then(|| {
        p.label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        }) | 1
    })
}

/// Whether a mapped file is the probe's library: the same path, or a file name equal to or
/// starting with the given name.
pub fn matches_library(want: &str, file: &Path) -> bool {
    if want.contains('/') {
        return Path::new(want) == file;
    }
    file.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == want || n.starts_with(want))
}

/// Where each user probe goes in one process.
pub struct Placement {
    /// The objects to attach (one per probed file).
    pub plans: Vec<ObjectPlan>,
    /// Per probe, in order: the number of points placed, or why none was.
    pub outcome: Vec<Result<usize, UserProbeError>>,
}

/// Places every registered probe in process `pid`, reading its mappings and the symbol
/// tables of the files it maps (cached across processes by host path).
pub fn place(
    pid: u32,
    probes: &[UserProbe],
    tables: &mut HashMap<PathBuf, Arc<SymbolTable>>,
) -> Placement {
    let files: Vec<MappedFile> = std::fs::read(format!("/proc/{pid}/maps"))
        .ok()
        .and_then(|b| parse_maps(&b).ok())
        .map(|m| mapped_files(&m))
        .unwrap_or_default()
        .into_iter()
        .filter(MappedFile::executable)
        .collect();
    let mut by_file: HashMap<PathBuf, Vec<(FuncId, u64)>> = HashMap::new();
    let mut outcome = Vec::new();
    for (i, p) in probes.iter().enumerate() {
        let func = USER_BASE + i as FuncId;
        let hits: Vec<&MappedFile> = files
            .iter()
            .filter(|f| matches_library(&p.library, &f.path))
            .collect();
        if hits.is_empty() {
            let mut names: Vec<String> = files
                .iter()
                .filter_map(|f| f.path.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            names.sort();
            names.dedup();
            outcome.push(Err(UserProbeError::NoLibrary {
                label: p.label.clone(),
                library: p.library.clone(),
                pid,
                maps: names.join(", "),
            }));
            continue;
        }
        let mut placed = 0;
        let mut last_err = None;
        for f in hits {
            let unreadable = |why: String| UserProbeError::Unreadable {
                label: p.label.clone(),
                path: f.path.clone(),
                why,
            };
            let loaded = crate::tracee::open_path(pid, f)
                .map_err(|e| unreadable(e.to_string()))
                .and_then(|(host, _)| match tables.get(&host) {
                    Some(t) => Ok((host, t.clone())),
                    None => SymbolTable::load(&host)
                        .map(|t| {
                            let t = Arc::new(t);
                            tables.insert(host.clone(), t.clone());
                            (host, t)
                        })
                        .map_err(|e| unreadable(e.to_string())),
                });
            let (host, table) = match loaded {
                Ok(x) => x,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let found = table.find(&p.symbol);
            if found.is_empty() {
                let similar = table.similar(&p.symbol, 3);
                last_err = Some(UserProbeError::NoSymbol {
                    label: p.label.clone(),
                    symbol: p.symbol.clone(),
                    path: f.path.clone(),
                    hint: if similar.is_empty() {
                        String::new()
                    } else {
                        format!(" (similar: {})", similar.join("; "))
                    },
                });
                continue;
            }
            for s in found {
                if p.offset != 0 && s.size != 0 && p.offset >= s.size {
                    last_err = Some(bad(
                        &p.label,
                        format!(
                            "offset {:#x} is past the end of {} ({} bytes)",
                            p.offset,
                            s.name(),
                            s.size
                        ),
                    ));
                    continue;
                }
                by_file
                    .entry(host.clone())
                    .or_default()
                    .push((func, s.file_offset + p.offset));
                placed += 1;
            }
        }
        outcome.push(match (placed, last_err) {
            (0, Some(e)) => Err(e),
            (n, _) => Ok(n),
        });
    }
    let mut plans: Vec<ObjectPlan> = by_file
        .into_iter()
        .map(|(path, mut points)| {
            points.sort_unstable();
            points.dedup_by_key(|p| p.1);
            ObjectPlan {
                family: Family::User,
                path,
                comm_offsets: None,
                points,
            }
        })
        .collect();
    plans.sort_by(|a, b| a.path.cmp(&b.path));
    Placement { plans, outcome }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_c_and_cpp_specs_with_options() {
        let p = parse("libhooks.so:hooks_c_step,arg=0,arg=1,ret,label=c_step").expect("valid");
        assert_eq!(
            (
                p.library.as_str(),
                p.symbol.as_str(),
                &p.args[..],
                p.ret,
                p.label.as_str()
            ),
            ("libhooks.so", "hooks_c_step", &[0u8, 1][..], true, "c_step")
        );
        let p = parse("/opt/x/libsched.so:sched::Scheduler::step(int, long),arg=2,collective")
            .expect("valid");
        assert_eq!(p.symbol, "sched::Scheduler::step(int, long)");
        assert_eq!(p.label, "Scheduler::step");
        assert!(p.collective && !p.ret);
        let p = parse("libx.so:f,offset=0x10").expect("valid");
        assert_eq!(p.offset, 16);
    }

    #[test]
    fn bad_specs_name_what_is_wrong() {
        let msg = |s: &str| parse(s).expect_err(s).to_string();
        assert!(msg("hooks_c_step").contains("LIBRARY:SYMBOL"));
        assert!(msg("sched::Scheduler::step").contains("library is missing"));
        assert!(msg("libx.so:f,arg=9").contains("argument index 9 is out of range"));
        assert!(msg("libx.so:f,arg=x").contains("`arg=x`"));
        assert!(msg("libx.so:f,bogus").contains("unknown option `bogus`"));
        assert!(msg("libx.so:f,offset=4,ret").contains("`ret` needs the probe"));
        assert!(msg("libx.so:f,label=a b").contains("label `a b`"));
        assert!(msg("libx.so:").contains("no symbol"));
    }

    #[test]
    fn library_matching_by_path_name_or_prefix() {
        let f = Path::new("/usr/lib/libhooks.so.1.2");
        assert!(matches_library("libhooks.so", f));
        assert!(matches_library("libhooks.so.1.2", f));
        assert!(matches_library("/usr/lib/libhooks.so.1.2", f));
        assert!(!matches_library("/lib/libhooks.so.1.2", f));
        assert!(!matches_library("libhook2", f));
    }

    #[test]
    fn places_a_probe_in_this_process_and_names_a_missing_one() {
        // This test binary maps itself: probe its `main` (the symbol table has it).
        let exe = std::env::current_exe().expect("exe");
        let name = exe
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        let probes = vec![
            parse(&format!("{name}:main")).expect("valid"),
            parse(&format!("{name}:no_such_function_here")).expect("valid"),
            parse("libnot-mapped-anywhere.so:f").expect("valid"),
        ];
        let mut tables = HashMap::new();
        let placed = place(std::process::id(), &probes, &mut tables);
        assert_eq!(placed.outcome[0], Ok(1));
        assert_eq!(placed.plans.len(), 1);
        assert_eq!(placed.plans[0].points[0].0, USER_BASE);
        let e1 = placed.outcome[1]
            .as_ref()
            .expect_err("no such symbol")
            .to_string();
        assert!(
            e1.contains("has no function `no_such_function_here`"),
            "{e1}"
        );
        let e2 = placed.outcome[2]
            .as_ref()
            .expect_err("no library")
            .to_string();
        assert!(
            e2.contains("no traced process maps a library matching"),
            "{e2}"
        );
        assert!(e2.contains(&name), "the message lists what is mapped: {e2}");
    }
}
