//! Which processes a run traces, and what is said and planned for each: resolving the
//! command line's targets (pids, `--all`, `--front`, `--follow`/`--children`), the probe plan
//! of a target (built-in families and `--probe`), the engine's hints, and the lines that
//! describe a target to the user (shared with `doctor`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::{
    cli::{AttachArgs, RunArgs},
    engine::{LayoutLib, ProcessHints},
    follow::Follow,
    probe::{AttachedObject, ObjectPlan},
    tracee::{self, symbols::SymbolTable},
    views::run::{LibInfo, ProcInfo},
};

/// Symbol tables read to place user probes, by file (kept for processes found later).
pub type UserTables = HashMap<PathBuf, Arc<SymbolTable>>;

/// The targets of a run as the command line names them, with the follower that finds the
/// later ones.
pub fn resolve(args: &AttachArgs) -> Result<(Vec<tracee::Target>, Follow)> {
    let opts = &args.run;
    let mut targets = if args.all {
        let found = tracee::discover_all();
        if found.is_empty() {
            eprintln!(
                "llmdd: no process maps libnccl, librccl, libcudart, libcuda or libamdhip64 yet; \
                 waiting for one (Ctrl-C to stop; `llmdd doctor` lists what it can see)"
            );
        }
        found
    } else {
        let mut seen = BTreeSet::new();
        let mut found = Vec::new();
        for &pid in &args.pids {
            if seen.insert(pid) {
                found.push(match tracee::inspect(pid) {
                    Ok(t) => t,
                    // A launcher: its workers are what matters. With user probes, any
                    // process may hold what they name (checked when they are placed).
                    Err(tracee::TargetError::NoSupportedLibrary { .. })
                        if args.children || !opts.user_probes.is_empty() =>
                    {
                        tracee::sockets_only(pid)?
                    }
                    Err(e) => return Err(e.into()),
                });
            }
        }
        found
    };
    let mut follow = Follow::new(args.follow.clone(), args.children)
        .with_all(args.all)
        .with_probe_libraries(opts.user_probes.iter().map(|p| p.library.clone()).collect());
    follow.known(targets.iter().map(|t| t.pid));
    loop {
        // Children of children too: scan until nothing new turns up.
        let traced: BTreeSet<u32> = targets.iter().map(|t| t.pid).collect();
        let more = follow.scan_now(&traced);
        if more.is_empty() {
            break;
        }
        targets.extend(more);
    }
    if targets.is_empty() && !args.follow.is_empty() {
        eprintln!(
            "llmdd: no process named {} yet; waiting for one (Ctrl-C to stop)",
            args.follow.join(" or ")
        );
    }
    for &pid in &args.fronts {
        if targets.iter().any(|t| t.pid == pid) {
            continue;
        }
        targets.push(match tracee::inspect(pid) {
            Ok(t) => t,
            // A front needs no GPU library: its sockets are what matters.
            Err(tracee::TargetError::NoSupportedLibrary { .. }) => tracee::sockets_only(pid)?,
            Err(e) => return Err(e.into()),
        });
    }
    Ok((targets, follow))
}

/// What the engine should assume about a target.
pub fn hints_of(t: &tracee::Target, host: Option<String>) -> ProcessHints {
    ProcessHints {
        rank: t.rank_hints.rank,
        local_rank: t.rank_hints.local_rank,
        world_size: t.rank_hints.world_size,
        host,
        job: t.rank_hints.job.clone(),
        parent: t.ppid,
        world_comm: t.mpi_world_handle,
        layouts: t
            .objects
            .iter()
            .filter(|o| matches!(o.comm_offsets, Some(Ok(_))))
            .map(|o| {
                LayoutLib::new(
                    o.family,
                    o.build_id.as_deref(),
                    &o.path.display().to_string(),
                    o.version.as_deref(),
                )
            })
            .collect(),
    }
}

/// What the views keep about an attached target.
pub fn proc_info(t: &tracee::Target, attached: &[AttachedObject]) -> ProcInfo {
    let libraries = t
        .objects
        .iter()
        .map(|o| LibInfo {
            family: o.family.name(),
            label: o.label,
            path: o.path.display().to_string(),
            version: o.version.clone(),
            build_id: o.build_id.clone(),
            functions_probed: o.points.len(),
            slot: attached
                .iter()
                .find(|a| a.path == o.host_path && a.family == o.family)
                .map(|a| a.slot),
        })
        .collect();
    ProcInfo {
        pid: t.pid,
        comm: t.comm.clone(),
        env_rank: t.rank_hints.rank,
        env_world_size: t.rank_hints.world_size,
        libraries,
        role: t.role.as_ref().map(|r| r.to_string()),
        ..ProcInfo::default()
    }
}

/// The probe plan for a target: every traced object with its points and offsets.
pub fn plan(t: &tracee::Target) -> Vec<ObjectPlan> {
    t.objects
        .iter()
        .map(|o| ObjectPlan {
            family: o.family,
            path: o.host_path.clone(),
            comm_offsets: o
                .comm_offsets
                .as_ref()
                .and_then(|r| r.as_ref().ok())
                .map(|c| (c.rank_off, c.nranks_off)),
            points: o.points.iter().map(|p| (p.func, p.file_offset)).collect(),
        })
        .collect()
}

/// Registers the user probes (`--probe`) and places them in every target before anything is
/// attached: a probe no target can take (library not mapped, symbol not found) is an error
/// that names why; one that only some targets take is a note for the others.
pub fn place_user_probes(
    opts: &RunArgs,
    targets: &[tracee::Target],
    following: bool,
    tables: &mut UserTables,
) -> Result<BTreeMap<u32, Vec<ObjectPlan>>> {
    let mut out = BTreeMap::new();
    if opts.user_probes.is_empty() {
        return Ok(out);
    }
    crate::userprobe::register(&opts.user_probes)?;
    let mut placed = vec![0usize; opts.user_probes.len()];
    let mut why: Vec<Vec<(u32, String)>> = vec![Vec::new(); opts.user_probes.len()];
    for t in targets {
        let p = crate::userprobe::place(t.pid, &opts.user_probes, tables);
        for (i, o) in p.outcome.into_iter().enumerate() {
            match o {
                Ok(n) => placed[i] += n,
                Err(e) => why[i].push((t.pid, e.to_string())),
            }
        }
        if !p.plans.is_empty() {
            out.insert(t.pid, p.plans);
        }
    }
    for (i, probe) in opts.user_probes.iter().enumerate() {
        // With --follow, a process started later may take it.
        if placed[i] == 0 && following {
            eprintln!(
                "llmdd: note: --probe {}: no process to place it in yet; it is placed in \
                 the processes --follow finds",
                probe.label
            );
            continue;
        }
        if placed[i] == 0 {
            match why[i].first() {
                Some((_, e)) => bail!("{e}"),
                None => bail!("--probe {}: no process to place it in", probe.label),
            }
        }
        for (pid, e) in &why[i] {
            eprintln!("llmdd: note: pid {pid}: {e}");
        }
        tracing::info!(
            "user probe {} placed at {} point(s)",
            probe.label,
            placed[i]
        );
    }
    Ok(out)
}

/// ` (env rank R of W)` from the environment hints, or nothing.
pub fn describe_rank(t: &tracee::Target) -> String {
    match (t.rank_hints.rank, t.rank_hints.world_size) {
        (Some(r), Some(w)) => format!(" (env rank {r} of {w})"),
        (Some(r), None) => format!(" (env rank {r})"),
        _ => String::new(),
    }
}

/// Things worth telling the user about a target before tracing it.
pub fn target_notes(t: &tracee::Target) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(ns) = t.ns_pid.filter(|ns| *ns != t.pid) {
        notes.push(format!("runs in its own pid namespace as pid {ns}"));
    }
    for o in &t.objects {
        if let (Some(Err(why)), llmdd_common::funcs::Family::Gloo) = (&o.comm_offsets, o.family) {
            notes.push(format!(
                "{}{}: Gloo's context layout not found in its code ({why}); process groups \
                 take the launcher's RANK/WORLD_SIZE where it sets them (one group per \
                 process), else are shown unidentified",
                o.path.display(),
                o.version
                    .as_deref()
                    .map(|v| format!(" (PyTorch {v})"))
                    .unwrap_or_default(),
            ));
        } else if let Some(Err(why)) = &o.comm_offsets {
            notes.push(format!(
                "{}: communicator offsets unknown ({why}); ranks will be matched by rank count and call order",
                o.path.display()
            ));
        }
        if o.deleted {
            notes.push(format!(
                "{} was replaced on disk; probing the mapped copy",
                o.path.display()
            ));
        }
    }
    for i in &t.issues {
        if i.reason == tracee::NO_GLOO {
            notes.push(format!("{} {}", i.path.display(), i.reason));
        }
    }
    notes
}

/// One paragraph describing a target (for `doctor`), `role` its label on the node.
pub fn describe_target(t: &tracee::Target, role: Option<&str>) -> String {
    let role = role.map(|r| format!(" [{r}]")).unwrap_or_default();
    let mut s = format!("  pid {} ({}){}{role}", t.pid, t.comm, describe_rank(t));
    for o in &t.objects {
        let offs = match &o.comm_offsets {
            Some(Ok(c)) => format!(", comm rank@{:#x} nranks@{:#x}", c.rank_off, c.nranks_off),
            Some(Err(_)) => ", comm offsets unknown".to_string(),
            None => String::new(),
        };
        s.push_str(&format!(
            "\n    {:<6} {} ({} functions{}{})",
            o.label,
            o.path.display(),
            o.points.len(),
            o.version
                .as_deref()
                .map(|v| format!(", version {v}"))
                .unwrap_or_default(),
            offs
        ));
    }
    s
}
