//! Loading the embedded BPF object, attaching it to targets, and reading its counters.
//!
//! One [`Tracer`] per run. The uprobe programs are generic (see `llmdd-ebpf/src/calls.rs`):
//! each attachment carries a cookie that names the function and the library slot, so a
//! target's probe points become `(program, file offset, cookie)` triples here.

mod object;
mod tracepoints;

use std::{collections::HashMap, num::NonZeroU32, path::PathBuf};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf, EbpfLoader, VerifierLogLevel,
};
use llmdd_common::{
    call::{Cookie, LibCfg, C_UID, NO_SLOT},
    counters,
    funcs::{self, Family, FuncId},
    sock::SockCfg,
    MAX_LIBS,
};

pub use tracepoints::KernelProbe;

/// Errors of loading and attaching.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the BPF object into the kernel failed: {0} (run `llmdd doctor` to see which kernel feature is missing)")]
    Load(#[source] aya::EbpfError),
    #[error("BPF program {name} failed to load: {source} (run `llmdd doctor`)")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {0} is missing from the embedded object (build mismatch)")]
    MissingMap(&'static str),
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("attaching {func} at {path}+{offset:#x} in pid {pid} failed: {source}")]
    Attach {
        func: &'static str,
        path: PathBuf,
        offset: u64,
        pid: u32,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("more than {MAX_LIBS} probed libraries in one run")]
    TooManyLibraries,
}

/// One object (shared library or executable) of a target to probe.
#[derive(Clone, Debug)]
pub struct ObjectPlan {
    pub family: Family,
    /// Path to open from the host (through /proc/PID/root for containers).
    pub path: PathBuf,
    /// Communicator field offsets (rank, nranks) for NCCL objects, when decoded.
    pub comm_offsets: Option<(u32, u32)>,
    /// Probe points: function and absolute file offset, one per distinct address.
    pub points: Vec<(FuncId, u64)>,
}

/// What was attached for one object.
#[derive(Clone, Debug)]
pub struct AttachedObject {
    pub slot: u16,
    pub family: Family,
    pub path: PathBuf,
    pub probes: usize,
}

/// The programs serving each family: (entry, return).
const fn programs(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::Nccl => ("nccl_entry", "nccl_return"),
        Family::CudaRuntime => ("cudart_entry", "cudart_return"),
        Family::CudaDriver => ("cuda_entry", "cuda_return"),
    }
}

const UPROBE_PROGRAMS: [&str; 6] =
    ["nccl_entry", "nccl_return", "cudart_entry", "cudart_return", "cuda_entry", "cuda_return"];

/// The cookie for one probe point.
pub fn cookie_for(func: FuncId, slot: u16) -> Cookie {
    let roles = funcs::spec(func).map(|f| f.roles);
    let Some(r) = roles else {
        return Cookie::new(func, slot, NO_SLOT, NO_SLOT, NO_SLOT, 0, 0);
    };
    Cookie::new(func, slot, r.comm, r.out, r.deref, r.deref_word, if r.unique_id { C_UID } else { 0 })
}

/// The loaded object and everything attached from it.
pub struct Tracer {
    bpf: Ebpf,
    libs: Vec<AttachedObject>,
    links: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    kernel: Vec<KernelProbe>,
}

impl Tracer {
    /// Loads the embedded object, verifies every program, configures socket offsets, and
    /// attaches the kernel tracepoints (each degrades on its own with a message).
    pub fn load(sock_cfg: Option<SockCfg>) -> Result<Tracer, ProbeError> {
        let mut bpf = EbpfLoader::new()
            .verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS)
            .load(object::BYTES)
            .map_err(ProbeError::Load)?;
        for name in UPROBE_PROGRAMS {
            let prog: &mut UProbe = program_mut(&mut bpf, name)?;
            prog.load().map_err(|source| ProbeError::Program { name, source })?;
        }
        if let Some(cfg) = sock_cfg {
            let mut map: Array<_, SockCfg> = map_mut(&mut bpf, "SOCK_CFG")?;
            map.set(0, cfg, 0).map_err(|source| ProbeError::Map { name: "SOCK_CFG", source })?;
        }
        let kernel = tracepoints::attach_all(&mut bpf);
        Ok(Tracer { bpf, libs: Vec::new(), links: HashMap::new(), kernel })
    }

    /// Status of each kernel-side probe (attached, or why not).
    pub fn kernel_probes(&self) -> &[KernelProbe] {
        &self.kernel
    }

    /// Takes the event ring buffer (once) for the reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self.bpf.take_map("EVENTS").ok_or(ProbeError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map { name: "EVENTS", source })
    }

    /// The probed object behind a library slot.
    pub fn library(&self, slot: u16) -> Option<&AttachedObject> {
        self.libs.get(slot as usize)
    }

    /// Attaches every probe point of `objects` in process `pid` and marks it traced for the
    /// kernel-side probes. On error, what was attached for this pid is detached again.
    pub fn attach(&mut self, pid: u32, objects: &[ObjectPlan]) -> Result<Vec<AttachedObject>, ProbeError> {
        let result = self.attach_inner(pid, objects);
        if result.is_err() {
            self.detach(pid);
        }
        result
    }

    fn attach_inner(&mut self, pid: u32, objects: &[ObjectPlan]) -> Result<Vec<AttachedObject>, ProbeError> {
        let scope = match NonZeroU32::new(pid) {
            Some(p) => UProbeScope::OneProcess(p),
            None => UProbeScope::AllProcesses,
        };
        let mut traced: BpfHashMap<_, u32, u32> = map_mut(&mut self.bpf, "TRACED")?;
        traced.insert(pid, 1, 0).map_err(|source| ProbeError::Map { name: "TRACED", source })?;
        let mut done = Vec::new();
        for obj in objects {
            let slot = u16::try_from(self.libs.len())
                .ok()
                .filter(|s| u32::from(*s) < MAX_LIBS)
                .ok_or(ProbeError::TooManyLibraries)?;
            if let Some((rank_off, nranks_off)) = obj.comm_offsets {
                let mut cfg: Array<_, LibCfg> = map_mut(&mut self.bpf, "LIB_CFG")?;
                let value = LibCfg { comm_offsets_valid: 1, rank_off, nranks_off, _reserved: 0 };
                cfg.set(u32::from(slot), value, 0)
                    .map_err(|source| ProbeError::Map { name: "LIB_CFG", source })?;
            }
            let (entry, ret) = programs(obj.family);
            for &(func, offset) in &obj.points {
                let cookie = cookie_for(func, slot).0;
                for name in [entry, ret] {
                    let prog: &mut UProbe = program_mut(&mut self.bpf, name)?;
                    let point = UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(offset),
                        cookie: Some(cookie),
                    };
                    let link = prog.attach(point, &obj.path, scope).map_err(|source| ProbeError::Attach {
                        func: funcs::spec(func).map(|f| f.name).unwrap_or("?"),
                        path: obj.path.clone(),
                        offset,
                        pid,
                        source,
                    })?;
                    self.links.entry(pid).or_default().push((name, link));
                }
            }
            let attached =
                AttachedObject { slot, family: obj.family, path: obj.path.clone(), probes: obj.points.len() };
            self.libs.push(attached.clone());
            done.push(attached);
        }
        Ok(done)
    }

    /// Detaches every probe of `pid` and stops its kernel-side tracing.
    pub fn detach(&mut self, pid: u32) {
        for (name, link) in self.links.remove(&pid).unwrap_or_default() {
            if let Ok(prog) = program_mut::<UProbe>(&mut self.bpf, name) {
                // The process may be gone, in which case the kernel dropped the probe already.
                let _ = prog.detach(link);
            }
        }
        if let Ok(mut traced) = map_mut::<BpfHashMap<_, u32, u32>>(&mut self.bpf, "TRACED") {
            let _ = traced.remove(&pid);
        }
    }

    /// Number of uprobe attachments currently held for `pid`.
    pub fn probe_count(&self, pid: u32) -> usize {
        self.links.get(&pid).map_or(0, Vec::len)
    }

    /// The drop and diagnostic counters, summed over CPUs.
    pub fn counters(&self) -> Result<[u64; counters::COUNT as usize], ProbeError> {
        let map = self.bpf.map("COUNTERS").ok_or(ProbeError::MissingMap("COUNTERS"))?;
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map { name: "COUNTERS", source })?;
        let mut out = [0u64; counters::COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            let values = arr
                .get(&(i as u32), 0)
                .map_err(|source| ProbeError::Map { name: "COUNTERS", source })?;
            *o = values.iter().sum();
        }
        Ok(out)
    }
}

fn program_mut<'a, T>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = bpf.program_mut(name).ok_or(ProbeError::MissingMap(name))?;
    prog.try_into().map_err(|source| ProbeError::Program { name, source })
}

fn map_mut<'a, T>(bpf: &'a mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = bpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}
