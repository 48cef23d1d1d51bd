//! What one object file offers to the probes, independent of the process mapping it: probe
//! points per library family, communicator offsets and version for NCCL, the build id.
//! Results are cached by file identity so that inspecting many processes that map the same
//! libraries parses each file once.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Arc, Mutex, OnceLock},
};

use llmdd_common::funcs::{self, Family, FuncId, FUNCS};

use super::{
    elf::{self, ElfError, ElfScan, ElfSymbol},
    gloo_offsets,
    nccl_offsets::{self, CommOffsets, DecodeError},
};

/// The `ncclCommUserRank` / `ncclCommCount` / `ncclGetVersion` names: read for decoding,
/// not probed. The strong `pnccl` names come first.
const USER_RANK: [&str; 2] = ["pncclCommUserRank", "ncclCommUserRank"];
const COUNT: [&str; 2] = ["pncclCommCount", "ncclCommCount"];
const GET_VERSION: [&str; 2] = ["pncclGetVersion", "ncclGetVersion"];
/// `gloo::Context::Context(int, int, int)`, base-object constructor first: read to find
/// where this build keeps a context's rank and size, not probed.
const GLOO_CONTEXT_CTOR: [&str; 2] = ["_ZN4gloo7ContextC2Eiii", "_ZN4gloo7ContextC1Eiii"];
/// Code read for decoding when a symbol has no size.
const DEFAULT_CODE_BYTES: u64 = 4096;
/// Upper bound on the code read for decoding one function.
const MAX_CODE_BYTES: u64 = 64 << 10;
/// Entries kept in the cache before it is emptied (bounds memory over long `--all` runs).
const CACHE_LIMIT: usize = 8192;

/// One place to attach a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    /// Which traced function (index into `llmdd_common::funcs::FUNCS`).
    pub func: FuncId,
    /// The exported name found there (the canonical one when several aliases share it).
    pub symbol: String,
    /// Absolute offset in the file: what the uprobe attaches to.
    pub file_offset: u64,
    /// Virtual address of the symbol in the object (for diagnostics).
    pub vaddr: u64,
}

/// Probe points of one library family within a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyPoints {
    pub family: Family,
    /// One per distinct file offset, sorted by function id then offset.
    pub points: Vec<ProbePoint>,
}

/// The analysis of one object file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibraryInfo {
    /// GNU build id, lower-case hex.
    pub build_id: Option<String>,
    /// Families with at least one probe point, in `Family` order.
    pub families: Vec<FamilyPoints>,
    /// NCCL version decoded from `ncclGetVersion`, when the object exports it.
    pub nccl_version: Option<String>,
    /// Communicator field offsets, for objects exporting NCCL functions.
    pub comm_offsets: Option<Result<CommOffsets, String>>,
    /// Where a `gloo::Context` keeps its rank and size, for objects exporting Gloo
    /// functions (decoded from its constructor).
    pub gloo_offsets: Option<Result<CommOffsets, String>>,
    /// Where this MPI library keeps `MPI_COMM_WORLD`, for objects exporting MPI functions.
    pub mpi_world: Option<MpiWorld>,
}

/// How an MPI library names its world communicator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MpiWorld {
    /// Open MPI: `MPI_COMM_WORLD` is the address of the global `ompi_mpi_comm_world`, which
    /// an application built as a position-independent executable copies into its own data
    /// (a copy relocation). The library's `ompi_mpi_comm_world_addr` holds the address the
    /// dynamic linker settled on: a pointer `rel` bytes past the start of the mapping of file
    /// offset `file_offset` (the object's first loadable segment).
    Pointer { rel: u64, file_offset: u64 },
    /// MPICH and its ABI (Intel MPI, MVAPICH): `MPI_COMM_WORLD` is the integer handle
    /// 0x44000000.
    Handle(u64),
}

/// Open MPI's pointer to its world communicator object.
const OMPI_COMM_WORLD_ADDR: &str = "ompi_mpi_comm_world_addr";
/// A global every MPICH-derived library defines.
const MPICH_MARKER: &str = "MPIR_Process";
/// MPICH's `MPI_COMM_WORLD` handle (mpi.h: `#define MPI_COMM_WORLD ((MPI_Comm)0x44000000)`).
const MPICH_COMM_WORLD: u64 = 0x4400_0000;

impl MpiWorld {
    /// `MPI_COMM_WORLD` in process `pid`, which maps the object as `mappings`.
    pub fn handle(&self, pid: u32, mappings: &[super::maps::Mapping]) -> Option<u64> {
        match *self {
            MpiWorld::Handle(h) => Some(h),
            MpiWorld::Pointer { rel, file_offset } => {
                let m = mappings.iter().find(|m| m.offset == file_offset)?;
                super::procfs::read_word(pid, m.start.checked_add(rel)?)
                    .ok()
                    .filter(|&h| h != 0)
            }
        }
    }
}

impl LibraryInfo {
    /// Probe points of one family, if the object has any.
    pub fn family(&self, family: Family) -> Option<&FamilyPoints> {
        self.families.iter().find(|f| f.family == family)
    }
}

/// Symbol name → traced function.
fn func_by_symbol() -> &'static HashMap<&'static str, FuncId> {
    static MAP: OnceLock<HashMap<&'static str, FuncId>> = OnceLock::new();
    MAP.get_or_init(|| {
        FUNCS
            .iter()
            .flat_map(|f| f.symbols.iter().map(move |s| (*s, f.id)))
            .collect()
    })
}

/// Mangled-name prefixes of the C++ families (Gloo's namespace, vLLM's custom all-reduce
/// class): only these symbols are demangled while scanning a library.
const CXX_PREFIXES: [&str; 2] = ["_ZN4gloo", "_ZN4vllm15CustomAllreduce"];

/// The traced function a symbol is: by its exported name, or for the C++ families (Gloo,
/// vLLM) by the demangled name without parameters (`gloo::allreduce(gloo::AllreduceOptions
/// const&)` is `gloo::allreduce`, whatever the parameters' const-ness in this build; a
/// template instance keeps its arguments: `vllm::CustomAllreduce::allreduce<float>`).
pub fn func_of_symbol(name: &str) -> Option<FuncId> {
    if let Some(&f) = func_by_symbol().get(name) {
        return Some(f);
    }
    if CXX_PREFIXES.iter().any(|p| name.starts_with(p)) {
        let demangled = super::symbols::demangle(name);
        return func_by_symbol()
            .get(super::symbols::without_params(&demangled))
            .copied();
    }
    None
}

fn wanted(name: &str) -> bool {
    func_of_symbol(name).is_some()
        || name == OMPI_COMM_WORLD_ADDR
        || name == MPICH_MARKER
        || USER_RANK.contains(&name)
        || COUNT.contains(&name)
        || GET_VERSION.contains(&name)
        || GLOO_CONTEXT_CTOR.contains(&name)
}

/// Turns the traced symbols of a scan into probe points: one per (family, file offset).
/// Aliases at one address (NCCL's weak `ncclX` and strong `pncclX`) become one point named
/// by the canonical name. Should two different functions share an address (identical code
/// folded by the linker), the lower function id keeps it: one probe per address.
pub fn probe_points(symbols: &[ElfSymbol]) -> Vec<FamilyPoints> {
    let mut by_offset: HashMap<u64, ProbePoint> = HashMap::new();
    for s in symbols {
        let Some(func) = func_of_symbol(&s.name) else {
            continue;
        };
        let canonical = funcs::spec(func).is_some_and(|f| f.name == s.name);
        let candidate = ProbePoint {
            func,
            symbol: s.name.clone(),
            file_offset: s.file_offset,
            vaddr: s.vaddr,
        };
        match by_offset.get_mut(&s.file_offset) {
            None => {
                by_offset.insert(s.file_offset, candidate);
            }
            Some(p) if func < p.func || (func == p.func && canonical) => *p = candidate,
            Some(_) => {}
        }
    }
    let mut points: Vec<ProbePoint> = by_offset.into_values().collect();
    points.sort_by_key(|p| (p.func, p.file_offset));
    let mut families: Vec<FamilyPoints> = Vec::new();
    for p in points {
        let Some(family) = funcs::spec(p.func).map(|f| f.family) else {
            continue;
        };
        match families.iter_mut().find(|f| f.family == family) {
            Some(f) => f.points.push(p),
            None => families.push(FamilyPoints {
                family,
                points: vec![p],
            }),
        }
    }
    families.sort_by_key(|f| f.family);
    families
}

/// The first exported symbol among `names` (in preference order).
fn find<'a>(scan: &'a ElfScan, names: &[&str]) -> Option<&'a ElfSymbol> {
    names
        .iter()
        .find_map(|n| scan.symbols.iter().find(|s| s.name == *n))
}

/// Reads the machine code of `sym`.
fn code_of(path: &Path, sym: &ElfSymbol) -> Result<Vec<u8>, ElfError> {
    let len = if sym.size == 0 {
        DEFAULT_CODE_BYTES
    } else {
        sym.size.min(MAX_CODE_BYTES)
    };
    elf::read_at(path, sym.file_offset, len as usize)
}

/// The first function exported under `names` and its machine code, for decoding (x86-64
/// only); `shown` names it in the error when none is exported.
fn function_code<'a>(
    path: &Path,
    scan: &'a ElfScan,
    names: &[&str],
    shown: &str,
) -> Result<(&'a ElfSymbol, Vec<u8>), String> {
    if scan.machine != object::elf::EM_X86_64 {
        return Err(DecodeError::UnsupportedMachine {
            machine: scan.machine,
        }
        .to_string());
    }
    let sym = find(scan, names).ok_or_else(|| {
        DecodeError::MissingFunction {
            function: shown.to_string(),
        }
        .to_string()
    })?;
    let code = code_of(path, sym).map_err(|e| e.to_string())?;
    Ok((sym, code))
}

/// Decodes one communicator field offset from the function exported under `names`.
fn field_offset(path: &Path, scan: &ElfScan, names: &[&str]) -> Result<u32, String> {
    let (sym, code) = function_code(path, scan, names, &names.join("/"))?;
    nccl_offsets::decode_field_offset(&sym.name, &code, sym.vaddr).map_err(|e| e.to_string())
}

/// Decodes the rank and rank-count offsets of an NCCL object.
pub fn comm_offsets(path: &Path, scan: &ElfScan) -> Result<CommOffsets, String> {
    let rank_off = field_offset(path, scan, &USER_RANK)?;
    let nranks_off = field_offset(path, scan, &COUNT)?;
    if rank_off == nranks_off {
        return Err(format!(
            "ncclCommUserRank and ncclCommCount both decode to offset {rank_off:#x}: refusing an ambiguous result"
        ));
    }
    Ok(CommOffsets {
        rank_off,
        nranks_off,
    })
}

/// Where this build's `gloo::Context` keeps its rank and size, from its constructor.
pub fn gloo_offsets(path: &Path, scan: &ElfScan) -> Result<CommOffsets, String> {
    const CTOR: &str = "gloo::Context::Context(int, int, int)";
    let (sym, code) = function_code(path, scan, &GLOO_CONTEXT_CTOR, CTOR)?;
    gloo_offsets::decode_context(CTOR, &code, sym.vaddr)
}

/// The NCCL version stored by `ncclGetVersion`, when it decodes.
fn nccl_version(path: &Path, scan: &ElfScan) -> Option<String> {
    let (sym, code) = function_code(path, scan, &GET_VERSION, "ncclGetVersion").ok()?;
    nccl_offsets::decode_version_code(&code, sym.vaddr).and_then(nccl_offsets::version_string)
}

/// Analyses the object file at `path` (no caching).
pub fn analyze(path: &Path) -> Result<LibraryInfo, ElfError> {
    let scan = elf::scan(path, wanted)?;
    let families = probe_points(&scan.symbols);
    let has_nccl = families.iter().any(|f| f.family == Family::Nccl);
    Ok(LibraryInfo {
        build_id: scan.build_id.as_deref().map(elf::hex),
        nccl_version: if has_nccl {
            nccl_version(path, &scan)
        } else {
            None
        },
        comm_offsets: has_nccl.then(|| comm_offsets(path, &scan)),
        gloo_offsets: families
            .iter()
            .any(|f| f.family == Family::Gloo)
            .then(|| gloo_offsets(path, &scan)),
        mpi_world: families
            .iter()
            .any(|f| f.family == Family::Mpi)
            .then(|| mpi_world(&scan))
            .flatten(),
        families,
    })
}

/// Where the MPI library of `scan` keeps its world communicator.
fn mpi_world(scan: &ElfScan) -> Option<MpiWorld> {
    if let Some(s) = scan.data.iter().find(|s| s.name == OMPI_COMM_WORLD_ADDR) {
        const PAGE: u64 = !0xfff;
        let first = scan.loads.iter().min_by_key(|l| l.vaddr)?;
        return Some(MpiWorld::Pointer {
            rel: s.vaddr.checked_sub(first.vaddr & PAGE)?,
            file_offset: first.offset & PAGE,
        });
    }
    scan.data
        .iter()
        .any(|s| s.name == MPICH_MARKER)
        .then_some(MpiWorld::Handle(MPICH_COMM_WORLD))
}

/// The version in a file name such as `libnccl.so.2.21.5` (`2.21.5`) or `libcudart.so.12`.
pub fn version_from_file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let (_, version) = name.split_once(".so.")?;
    (!version.is_empty()
        && version
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit())))
    .then(|| version.to_string())
}

/// Identity of a file's content: device, inode, size and modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileKey {
    pub fn of(meta: &std::fs::Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// A cached analysis: the library, or why the file is not one llmdd can probe.
pub type Cached = Result<Arc<LibraryInfo>, Arc<ElfError>>;

/// Analyses of files already seen, by [`FileKey`].
#[derive(Default)]
pub struct LibraryCache {
    entries: Mutex<HashMap<FileKey, Cached>>,
}

impl LibraryCache {
    /// The process-wide cache.
    pub fn global() -> &'static LibraryCache {
        static CACHE: OnceLock<LibraryCache> = OnceLock::new();
        CACHE.get_or_init(LibraryCache::default)
    }

    /// The analysis of the file at `path`, whose metadata is `meta`: from the cache, or
    /// computed (outside the lock) and remembered.
    pub fn get(&self, path: &Path, meta: &std::fs::Metadata) -> Cached {
        let key = FileKey::of(meta);
        if let Some(hit) = self.lock().get(&key) {
            return hit.clone();
        }
        let result = analyze(path).map(Arc::new).map_err(Arc::new);
        let mut entries = self.lock();
        if entries.len() >= CACHE_LIMIT {
            entries.clear();
        }
        entries.insert(key, result.clone());
        result
    }

    /// Number of cached files.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileKey, Cached>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts).
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(name: &str, off: u64) -> ElfSymbol {
        ElfSymbol {
            name: name.into(),
            vaddr: off,
            size: 16,
            file_offset: off,
            weak: name.starts_with("nccl"),
        }
    }

    #[test]
    fn aliases_at_one_offset_make_one_point() {
        let syms = [
            sym("pncclAllReduce", 0x100),
            sym("ncclAllReduce", 0x100),
            sym("ncclSend", 0x200),
            sym("pncclSend", 0x200),
            sym("cudaLaunchKernel", 0x300),
            sym("cudaLaunchKernel_ptsz", 0x400),
            sym("malloc", 0x500),
        ];
        let fams = probe_points(&syms);
        assert_eq!(fams.len(), 2);
        let nccl = &fams[0];
        assert_eq!(nccl.family, Family::Nccl);
        assert_eq!(nccl.points.len(), 2);
        assert_eq!(
            nccl.points[0].symbol, "ncclAllReduce",
            "canonical name wins"
        );
        assert_eq!(nccl.points[0].file_offset, 0x100);
        assert_eq!(nccl.points[1].symbol, "ncclSend");
        let cudart = &fams[1];
        assert_eq!(cudart.family, Family::CudaRuntime);
        assert_eq!(
            cudart.points.len(),
            2,
            "the _ptsz twin is its own function body"
        );
        assert!(cudart.points.iter().all(|p| p.func == 19));
    }

    #[test]
    fn folded_functions_keep_one_probe() {
        let syms = [sym("ncclCommAbort", 0x100), sym("ncclCommDestroy", 0x100)];
        let fams = probe_points(&syms);
        assert_eq!(fams[0].points.len(), 1);
        assert_eq!(fams[0].points[0].symbol, "ncclCommDestroy");
    }

    #[test]
    fn versions_from_file_names() {
        assert_eq!(
            version_from_file_name(Path::new("/x/libnccl.so.2.21.5")).as_deref(),
            Some("2.21.5")
        );
        assert_eq!(
            version_from_file_name(Path::new("libcudart.so.12")).as_deref(),
            Some("12")
        );
        assert_eq!(version_from_file_name(Path::new("libtorch_cuda.so")), None);
        assert_eq!(version_from_file_name(Path::new("libfoo.so.1.x")), None);
    }
}
