//! Putting it together for one process ([`inspect`]) or all of them ([`discover`]).

use std::{
    io,
    path::{Path, PathBuf},
};

use llmdd_common::funcs::Family;

use super::{
    elf::ElfError,
    library::{version_from_file_name, LibraryCache, LibraryInfo},
    maps::{mapped_files, parse_maps, MappedFile},
    procfs, ObjectIssue, Target, TargetError, TracedObject,
};

/// Where `vllm::CustomAllreduce` keeps its rank and group size: its first members, `int
/// rank_; int world_size_;` (no virtual functions). Seen in the vllm 0.34.0 wheel's
/// `allreduce<float>` (`mov (%rbx),%r8d` passes `rank_` to the kernel, `mov 0x4(%rbx),%eax`
/// switches on `world_size_`); a build laid out otherwise gives reads the plausibility
/// check refuses, and the worker's environment is used instead.
pub const VLLM_CUSTOM_AR: super::CommOffsets = super::CommOffsets {
    rank_off: 0,
    nranks_off: 4,
};

/// Why a PyTorch CPU library gives no Gloo probes (a `Target::issues` reason).
pub const NO_GLOO: &str = "exports no gloo:: collective entry points (PyTorch built without \
     Gloo, or with its symbols hidden): Gloo collectives are not traced in this process";

/// PyTorch's CPU library, where Gloo is linked in.
fn is_torch_cpu(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libtorch_cpu"))
}

/// The PyTorch release a `torch/lib/libtorch_cpu.so` belongs to, from the package's
/// `torch/version.py` (`__version__ = '2.15.0+cu130'`) beside its `lib` directory.
fn torch_version(lib: &Path) -> Option<String> {
    let file = lib.parent()?.parent()?.join("version.py");
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let v = l.strip_prefix("__version__")?.trim_start();
        let v = v.strip_prefix('=')?.trim();
        let v = v.trim_matches(|c| c == '\'' || c == '"');
        (!v.is_empty() && v.len() < 64).then(|| v.to_string())
    })
}

/// The short name of a library family as shown to users.
pub fn label(family: Family, path: &Path) -> &'static str {
    match family {
        Family::Nccl
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("librccl")) =>
        {
            "rccl"
        }
        f => f.name(),
    }
}

/// Where llmdd opens a file mapped by `pid`: through the process's root when that still
/// names the mapped file (same inode), else through `/proc/PID/map_files/` (files deleted or
/// replaced on disk since they were mapped).
pub fn open_path(pid: u32, file: &MappedFile) -> Result<(PathBuf, std::fs::Metadata), io::Error> {
    let by_map_files = || {
        let m = file
            .mappings
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no mapping"))?;
        let p = procfs::proc_path(pid, "map_files").join(m.map_files_name());
        let meta = std::fs::metadata(&p)?;
        Ok((p, meta))
    };
    if file.deleted {
        return by_map_files();
    }
    let p = procfs::host_path(pid, &file.path);
    match std::fs::metadata(&p) {
        Ok(meta) if std::os::unix::fs::MetadataExt::ino(&meta) == file.inode => Ok((p, meta)),
        // Replaced on disk, or not visible by that path: the mapping still names the file.
        Ok(meta) => by_map_files().or(Ok((p, meta))),
        Err(e) => by_map_files().map_err(|_| e),
    }
}

/// The traced objects of one analysed file (one per family it exports).
fn traced_objects(file: &MappedFile, host_path: &Path, info: &LibraryInfo) -> Vec<TracedObject> {
    info.families
        .iter()
        .map(|fp| {
            let nccl = fp.family == Family::Nccl;
            TracedObject {
                family: fp.family,
                label: label(fp.family, &file.path),
                path: file.path.clone(),
                host_path: host_path.to_path_buf(),
                deleted: file.deleted,
                build_id: info.build_id.clone(),
                version: match fp.family {
                    _ if nccl => info.nccl_version.clone(),
                    Family::Gloo => torch_version(host_path),
                    _ => None,
                }
                .or_else(|| version_from_file_name(&file.path)),
                points: fp.points.clone(),
                comm_offsets: match fp.family {
                    _ if nccl => info.comm_offsets.clone(),
                    Family::Gloo => info.gloo_offsets.clone(),
                    Family::Vllm => Some(Ok(VLLM_CUSTOM_AR)),
                    _ => None,
                },
            }
        })
        .collect()
}

/// Inspects process `pid` with the given cache: its identity, rank hints, and every mapped
/// object that exports traced functions.
pub fn inspect_with(pid: u32, cache: &LibraryCache) -> Result<Target, TargetError> {
    let status = status_of(pid)?;

    let maps = procfs::read(pid, "maps")?;
    let maps = parse_maps(&maps).map_err(|source| TargetError::MapsFormat { pid, source })?;
    let files: Vec<MappedFile> = mapped_files(&maps)
        .into_iter()
        .filter(MappedFile::executable)
        .collect();

    let mut objects = Vec::new();
    let mut issues = Vec::new();
    let mut mpi_world_handle = None;
    for file in &files {
        let (host_path, meta) = match open_path(pid, file) {
            Ok(found) => found,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(TargetError::PermissionDenied {
                    pid,
                    path: procfs::host_path(pid, &file.path),
                })
            }
            Err(e) => {
                // The process may have exited meanwhile: say so rather than list every file.
                if !procfs::proc_path(pid, "").exists() {
                    return Err(TargetError::NoSuchProcess { pid });
                }
                issues.push(ObjectIssue {
                    path: file.path.clone(),
                    reason: format!("cannot open it from llmdd: {e}"),
                });
                continue;
            }
        };
        if !meta.is_file() {
            continue;
        }
        match cache.get(&host_path, &meta) {
            Ok(info) => {
                if is_torch_cpu(&file.path) && info.family(Family::Gloo).is_none() {
                    issues.push(ObjectIssue {
                        path: file.path.clone(),
                        reason: NO_GLOO.to_string(),
                    });
                }
                if let Some(w) = &info.mpi_world {
                    mpi_world_handle = mpi_world_handle.or_else(|| w.handle(pid, &file.mappings));
                }
                objects.extend(traced_objects(file, &host_path, &info))
            }
            Err(e) => match &*e {
                ElfError::NotElf { .. } => {}
                other => issues.push(ObjectIssue {
                    path: file.path.clone(),
                    reason: other.to_string(),
                }),
            },
        }
    }
    share_gloo_layout(&mut objects);
    if objects.is_empty() {
        return Err(TargetError::NoSupportedLibrary {
            pid,
            looked_at: files.len(),
        });
    }

    let mut t = describe(pid, status, objects, issues);
    t.mpi_world_handle = mpi_world_handle;
    Ok(t)
}

/// Gloo's context is one class of one PyTorch build: an object with Gloo entry points but
/// not the context's constructor (PyTorch 2.15's libtorch_cuda exports `gloo::allgatherv`)
/// reads contexts with the layout decoded from the object that has it (libtorch_cpu).
fn share_gloo_layout(objects: &mut [TracedObject]) {
    let gloo = |o: &&mut TracedObject| o.family == Family::Gloo;
    let Some(decoded) = objects
        .iter()
        .filter(|o| o.family == Family::Gloo)
        .find_map(|o| o.comm_offsets.clone().filter(|r| r.is_ok()))
    else {
        return;
    };
    for o in objects.iter_mut().filter(gloo) {
        if matches!(o.comm_offsets, Some(Err(_))) {
            o.comm_offsets = Some(decoded.clone());
        }
    }
}

/// The process's status, refusing a thread id.
fn status_of(pid: u32) -> Result<procfs::Status, TargetError> {
    let status = procfs::read(pid, "status")?;
    let status = procfs::parse_status(&String::from_utf8_lossy(&status));
    if let Some(tgid) = status.tgid.filter(|&t| t != pid) {
        return Err(TargetError::NotAProcess { pid, tgid });
    }
    Ok(status)
}

/// A process traced for its sockets only (a serving front): who it is, no objects.
pub fn sockets_only(pid: u32) -> Result<Target, TargetError> {
    let status = status_of(pid)?;
    Ok(describe(pid, status, Vec::new(), Vec::new()))
}

/// Assembles a target; from here on everything is best effort.
fn describe(
    pid: u32,
    status: procfs::Status,
    objects: Vec<TracedObject>,
    issues: Vec<ObjectIssue>,
) -> Target {
    let cmdline = procfs::read(pid, "cmdline")
        .map(|raw| procfs::split_nul(&raw))
        .unwrap_or_default();
    let environ = procfs::read(pid, "environ")
        .map(|raw| procfs::split_nul(&raw))
        .unwrap_or_default();
    let rank_hints = procfs::rank_hints(&environ);
    let role = super::role::role_of(&cmdline, &environ);
    Target {
        pid,
        ppid: status.ppid,
        mpi_world_handle: None,
        ns_pid: status.ns_pid(),
        comm: status.name,
        exe: procfs::exe(pid),
        cmdline,
        rank_hints,
        role,
        objects,
        issues,
    }
}
