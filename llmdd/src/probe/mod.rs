//! Loading the embedded BPF object, attaching it to targets, and reading its counters.
//!
//! One [`Tracer`] per run. The uprobe programs are generic (see `llmdd-ebpf/src/calls.rs`):
//! each attachment carries a cookie that names the function and the library slot, so a
//! target's probe points become `(program, file offset, cookie)` triples here.

mod multi;
mod object;
mod tracepoints;

use std::{collections::HashMap, num::NonZeroU32, os::fd::OwnedFd, path::PathBuf};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf, EbpfLoader, VerifierLogLevel,
};
use llmdd_common::{
    agg::{AggKey, AggVal},
    call::{
        Cookie, LibCfg, C_AGG, C_COMM_DEREF, C_ENTRY_ONLY, C_SKIP_RET1, C_STACK, C_STR, C_UID,
        C_USTACK, NO_SLOT,
    },
    counters,
    funcs::{self, Family, FuncId},
    sock::SockCfg,
    MAX_LIBS,
};

pub use multi::MultiError;
pub use tracepoints::KernelProbe;

/// Errors of loading and attaching.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the BPF object into the kernel failed: {0} (run `llmdd doctor` to see which kernel feature is missing)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("BPF program {name} failed to load: {source} (run `llmdd doctor`)")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
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
        source: Box<aya::programs::ProgramError>,
    },
    #[error("more than {MAX_LIBS} probed libraries in one run")]
    TooManyLibraries,
    #[error("attaching to pid {pid}: {source}")]
    Multi {
        pid: u32,
        #[source]
        source: MultiError,
    },
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

/// Which uprobe programs go on the probe points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProbeSet {
    /// llmdd's probes: every call recorded.
    #[default]
    Full,
    /// Empty programs: the cost of the uprobe trap alone (the overhead benchmark's floor).
    Floor,
}

/// How the calls of one probe family are traced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One record per call with entry and return: durations, return codes, out-values.
    #[default]
    Full,
    /// One record per call sent at entry; no return probe (no duration or return value).
    EntryOnly,
    /// No record: counts and latency histograms per (pid, function, size bucket) kept in a
    /// BPF map and read periodically.
    Aggregate,
}

impl Mode {
    pub const NAMES: [&'static str; 3] = ["full", "entry", "aggregate"];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::EntryOnly => "entry",
            Mode::Aggregate => "aggregate",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "full" => Some(Mode::Full),
            "entry" | "entry-only" => Some(Mode::EntryOnly),
            "aggregate" | "agg" => Some(Mode::Aggregate),
            _ => None,
        }
    }

    /// The cookie of `func` in this mode.
    pub fn cookie(self, func: FuncId, slot: u16) -> Cookie {
        let c = cookie_for(func, slot);
        match self {
            Mode::Full => c,
            Mode::EntryOnly => c.with_mode(C_ENTRY_ONLY, NO_SLOT),
            Mode::Aggregate => c.with_mode(
                C_AGG,
                funcs::spec(func).map(|f| f.roles.count).unwrap_or(NO_SLOT),
            ),
        }
    }
}

/// The programs serving each family: (entry, return).
const fn programs(set: ProbeSet, family: Family) -> (&'static str, &'static str) {
    match (set, family) {
        (ProbeSet::Floor, _) => ("floor_entry", "floor_return"),
        (ProbeSet::Full, Family::Nccl) => ("nccl_entry", "nccl_return"),
        (ProbeSet::Full, Family::CudaRuntime) => ("cudart_entry", "cudart_return"),
        (ProbeSet::Full, Family::CudaDriver) => ("cuda_entry", "cuda_return"),
        (ProbeSet::Full, Family::Hip) => ("hip_entry", "hip_return"),
        (ProbeSet::Full, Family::Mpi) => ("mpi_entry", "mpi_return"),
        (ProbeSet::Full, Family::User) => ("user_entry", "user_return"),
        (ProbeSet::Full, Family::Gloo) => ("gloo_entry", "gloo_return"),
        (ProbeSet::Full, Family::Vllm) => ("vllm_entry", "vllm_return"),
        (ProbeSet::Full, Family::Nixl) => ("nixl_entry", "nixl_return"),
    }
}

const UPROBE_PROGRAMS: [&str; 20] = [
    "nixl_entry",
    "nixl_return",
    "vllm_entry",
    "vllm_return",
    "gloo_entry",
    "gloo_return",
    "user_entry",
    "user_return",
    "mpi_entry",
    "mpi_return",
    "hip_entry",
    "hip_return",
    "nccl_entry",
    "nccl_return",
    "cudart_entry",
    "cudart_return",
    "cuda_entry",
    "cuda_return",
    "floor_entry",
    "floor_return",
];

/// The cookie for one probe point.
pub fn cookie_for(func: FuncId, slot: u16) -> Cookie {
    let Some(r) = funcs::spec(func).map(|f| f.roles) else {
        return Cookie::new(func, slot, NO_SLOT, NO_SLOT, NO_SLOT, 0, 0);
    };
    let slots = [
        r.count,
        r.dtype,
        r.op,
        r.peer,
        r.comm,
        r.stream,
        r.event,
        r.out,
        r.deref,
        r.nranks_arg,
        r.rank_arg,
    ];
    let on_stack = slots.iter().any(|s| *s != NO_SLOT && *s >= 6);
    let mut flags = 0;
    if r.unique_id {
        flags |= C_UID;
    }
    if on_stack {
        flags |= C_STACK;
    }
    if r.comm_is_deref {
        flags |= C_COMM_DEREF;
    }
    if r.deref_is_str {
        flags |= C_STR;
    }
    if r.skip_in_progress {
        flags |= C_SKIP_RET1;
    }
    Cookie::new(func, slot, r.comm, r.out, r.deref, r.deref_word, flags)
}

/// What a link probes: the family of its object, and whether it holds the object's hot
/// (duty-cyclable) points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Group {
    family: Family,
    hot: bool,
}

/// One attachment held for a target.
enum Link {
    /// A uprobe-multi link: every point of one object, entry or return.
    Multi(OwnedFd),
    /// One aya perf-event uprobe (the fallback on kernels without uprobe-multi).
    Single(&'static str, UProbeLinkId),
}

/// The loaded object and everything attached from it.
pub struct Tracer {
    bpf: Ebpf,
    /// The uprobe programs loaded for uprobe-multi, when the kernel has it.
    multi: Option<std::sync::Arc<multi::MultiPrograms>>,
    set: ProbeSet,
    /// Families traced in another mode than `Mode::Full`.
    modes: HashMap<Family, Mode>,
    /// Library slots handed out so far (a slot indexes `LIB_CFG` and is carried in cookies).
    next_slot: u16,
    /// Every link held, per pid, with the family of the object it probes.
    links: HashMap<u32, Vec<(Group, Link)>>,
    /// Whether hot points get links of their own (see [`Tracer::split_hot_points`]).
    split_hot: bool,
    /// Whether entry probes walk the user stack into `STACKS` (`--stacks`).
    stacks: bool,
    /// What was attached per (pid, family), with its library slot: re-attached as it was
    /// after a pause.
    plans: HashMap<(u32, Family), Vec<(u16, ObjectPlan)>>,
    /// What is probed in each process: (file, family).
    probed: HashMap<u32, Vec<(PathBuf, Family)>>,
    kernel: Vec<KernelProbe>,
}

impl Tracer {
    /// Loads the embedded object, verifies every program, configures socket offsets, and
    /// attaches the kernel tracepoints (each degrades on its own with a message).
    pub fn load(sock_cfg: Option<SockCfg>) -> Result<Tracer, ProbeError> {
        Self::load_with(sock_cfg, ProbeSet::Full)
    }

    /// As [`Tracer::load`], choosing which programs go on the probe points.
    pub fn load_with(sock_cfg: Option<SockCfg>, set: ProbeSet) -> Result<Tracer, ProbeError> {
        Self::load_sized(sock_cfg, set, None)
    }

    /// As [`Tracer::load_with`], with the event ring buffer's size in bytes (a power of two,
    /// a multiple of the page size) instead of `RING_BYTES`.
    pub fn load_sized(
        sock_cfg: Option<SockCfg>,
        set: ProbeSet,
        ring_bytes: Option<u32>,
    ) -> Result<Tracer, ProbeError> {
        let mut loader = EbpfLoader::new();
        loader.verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS);
        if let Some(bytes) = ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        let mut bpf = loader
            .load(object::BYTES)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;
        let multi = match multi::MultiPrograms::load(object::BYTES, &bpf, &UPROBE_PROGRAMS) {
            Ok(m) => Some(std::sync::Arc::new(m)),
            Err(e) => {
                tracing::info!(
                    "uprobe-multi unavailable ({e}); attaching one perf-event uprobe per point"
                );
                for name in UPROBE_PROGRAMS {
                    let prog: &mut UProbe = program_mut(&mut bpf, name)?;
                    prog.load().map_err(|source| ProbeError::Program {
                        name,
                        source: Box::new(source),
                    })?;
                }
                None
            }
        };
        if let Some(cfg) = sock_cfg {
            let mut map: Array<_, SockCfg> = map_mut(&mut bpf, "SOCK_CFG")?;
            map.set(0, cfg, 0).map_err(|source| ProbeError::Map {
                name: "SOCK_CFG",
                source,
            })?;
        }
        let kernel = tracepoints::attach_all(&mut bpf);
        Ok(Tracer {
            bpf,
            multi,
            set,
            modes: HashMap::new(),
            next_slot: 0,
            links: HashMap::new(),
            split_hot: false,
            stacks: false,
            plans: HashMap::new(),
            probed: HashMap::new(),
            kernel,
        })
    }

    /// Traces the calls of `family` attached from now on in `mode`.
    pub fn set_mode(&mut self, family: Family, mode: Mode) {
        self.modes.insert(family, mode);
    }

    /// Walks the caller's user stack at every call attached from now on (not in aggregate
    /// mode, which sends no records).
    pub fn set_stacks(&mut self, on: bool) {
        self.stacks = on;
    }

    /// The user-stack map, taken out of the tracer for a `stacks::StackWalker`.
    pub fn take_stacks(&mut self) -> Result<aya::maps::StackTraceMap<MapData>, ProbeError> {
        let map = self
            .bpf
            .take_map("STACKS")
            .ok_or(ProbeError::MissingMap("STACKS"))?;
        aya::maps::StackTraceMap::try_from(map).map_err(|source| ProbeError::Map {
            name: "STACKS",
            source,
        })
    }

    /// The mode of `family`.
    pub fn mode(&self, family: Family) -> Mode {
        self.modes.get(&family).copied().unwrap_or_default()
    }

    /// The aggregate-mode counts so far, per (pid, function, size bucket), summed over CPUs
    /// (`max_ns` is the largest of the CPUs').
    pub fn aggregates(&self) -> Result<Vec<(AggKey, AggVal)>, ProbeError> {
        let map = self.bpf.map("AGG").ok_or(ProbeError::MissingMap("AGG"))?;
        let agg: aya::maps::PerCpuHashMap<_, AggKey, AggVal> =
            aya::maps::PerCpuHashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: "AGG",
                source,
            })?;
        let mut out = Vec::new();
        for item in agg.iter() {
            let (key, per_cpu) = item.map_err(|source| ProbeError::Map {
                name: "AGG",
                source,
            })?;
            let mut sum = AggVal::default();
            for v in per_cpu.iter() {
                sum.calls += v.calls;
                sum.size_sum += v.size_sum;
                sum.total_ns += v.total_ns;
                sum.errors += v.errors;
                sum.max_ns = sum.max_ns.max(v.max_ns);
                for (s, h) in sum.hist.iter_mut().zip(v.hist.iter()) {
                    *s += h;
                }
            }
            out.push((key, sum));
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// Every pid with probes attached.
    pub fn attached_pids(&self) -> Vec<u32> {
        self.links.keys().copied().collect()
    }

    /// Status of each kernel-side probe (attached, or why not).
    pub fn kernel_probes(&self) -> &[KernelProbe] {
        &self.kernel
    }

    /// Takes the event ring buffer (once) for the reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .bpf
            .take_map("EVENTS")
            .ok_or(ProbeError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: "EVENTS",
            source,
        })
    }

    /// Marks traced process `pid` as a serving front: the first send of each response on its
    /// connections is checked for an HTTP/1 status line and header block (see
    /// `llmdd_common::sock`). The programs that remember what fronts send are attached with
    /// the first front; their status joins the kernel probes'.
    pub fn mark_front(&mut self, pid: u32) -> Result<(), ProbeError> {
        if !self.kernel.iter().any(|k| k.name == "sys_enter_write") {
            let more = tracepoints::attach_front(&mut self.bpf);
            self.kernel.extend(more);
        }
        let mut traced: BpfHashMap<_, u32, u32> = map_mut(&mut self.bpf, "TRACED")?;
        let was = traced.get(&pid, 0).unwrap_or(0);
        let bits = llmdd_common::sock::TRACED_ON | llmdd_common::sock::TRACED_FRONT;
        traced
            .insert(pid, was | bits, 0)
            .map_err(|source| ProbeError::Map {
                name: "TRACED",
                source,
            })
    }

    /// Attaches every probe point of `objects` in process `pid` and marks it traced for the
    /// kernel-side probes. On error, what was attached for this pid is detached again.
    pub fn attach(
        &mut self,
        pid: u32,
        objects: &[ObjectPlan],
    ) -> Result<Vec<AttachedObject>, ProbeError> {
        let result = self.attach_inner(pid, objects);
        if result.is_err() {
            self.detach(pid).release();
        }
        result
    }

    fn attach_inner(
        &mut self,
        pid: u32,
        objects: &[ObjectPlan],
    ) -> Result<Vec<AttachedObject>, ProbeError> {
        let scope = match NonZeroU32::new(pid) {
            Some(p) => UProbeScope::OneProcess(p),
            None => UProbeScope::AllProcesses,
        };
        let mut traced: BpfHashMap<_, u32, u32> = map_mut(&mut self.bpf, "TRACED")?;
        let was = traced.get(&pid, 0).unwrap_or(0);
        traced
            .insert(pid, was | llmdd_common::sock::TRACED_ON, 0)
            .map_err(|source| ProbeError::Map {
                name: "TRACED",
                source,
            })?;
        let mut done = Vec::new();
        for obj in objects {
            let slot = self.next_slot;
            if u32::from(slot) >= MAX_LIBS {
                return Err(ProbeError::TooManyLibraries);
            }
            self.next_slot += 1;
            if let Some((rank_off, nranks_off)) = obj.comm_offsets {
                let mut cfg: Array<_, LibCfg> = map_mut(&mut self.bpf, "LIB_CFG")?;
                let value = LibCfg {
                    comm_offsets_valid: 1,
                    rank_off,
                    nranks_off,
                    _reserved: 0,
                };
                cfg.set(u32::from(slot), value, 0)
                    .map_err(|source| ProbeError::Map {
                        name: "LIB_CFG",
                        source,
                    })?;
            }
            self.attach_object(pid, slot, obj, scope)?;
            self.plans
                .entry((pid, obj.family))
                .or_default()
                .push((slot, obj.clone()));
            let attached = AttachedObject {
                slot,
                family: obj.family,
                path: obj.path.clone(),
                probes: obj.points.len(),
            };
            self.probed
                .entry(pid)
                .or_default()
                .push((obj.path.clone(), obj.family));
            done.push(attached);
        }
        Ok(done)
    }

    /// Attaches the entry (and, but in entry-only mode, return) probes of one object whose
    /// library slot is configured. With a duty cycle possible (`split_hot`), the object's
    /// hot (cyclable) points get links of their own, so that the cycle can take them out
    /// and put them back without touching the others.
    fn attach_object(
        &mut self,
        pid: u32,
        slot: u16,
        obj: &ObjectPlan,
        scope: UProbeScope,
    ) -> Result<(), ProbeError> {
        if self.split_hot {
            let (hot, kept): (Vec<_>, Vec<_>) =
                obj.points.iter().copied().partition(|(f, _)| cyclable(*f));
            for (points, is_hot) in [(kept, false), (hot, true)] {
                if !points.is_empty() {
                    let part = ObjectPlan {
                        points,
                        ..obj.clone()
                    };
                    self.attach_points(pid, slot, &part, scope, is_hot)?;
                }
            }
            Ok(())
        } else {
            self.attach_points(pid, slot, obj, scope, false)
        }
    }

    fn attach_points(
        &mut self,
        pid: u32,
        slot: u16,
        obj: &ObjectPlan,
        scope: UProbeScope,
        hot: bool,
    ) -> Result<(), ProbeError> {
        let group = Group {
            family: obj.family,
            hot,
        };
        if let Some(m) = self.multi.clone() {
            for (name, points, is_ret) in self.link_specs(slot, obj) {
                let fd = m
                    .attach(name, &obj.path, &points, is_ret, pid)
                    .map_err(|source| ProbeError::Multi { pid, source })?;
                self.links
                    .entry(pid)
                    .or_default()
                    .push((group, Link::Multi(fd)));
            }
        } else {
            for (name, points, _) in self.link_specs(slot, obj) {
                for (offset, cookie) in points {
                    let prog: &mut UProbe = program_mut(&mut self.bpf, name)?;
                    let point = UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(offset),
                        cookie: Some(cookie),
                    };
                    let link = prog.attach(point, &obj.path, scope).map_err(|source| {
                        ProbeError::Attach {
                            func: funcs::spec(Cookie(cookie).func())
                                .map(|f| f.name)
                                .unwrap_or("?"),
                            path: obj.path.clone(),
                            offset,
                            pid,
                            source: Box::new(source),
                        }
                    })?;
                    self.links
                        .entry(pid)
                        .or_default()
                        .push((group, Link::Single(name, link)));
                }
            }
        }
        Ok(())
    }

    /// The uprobe-multi links of one object: (program, points with cookies, is return).
    fn link_specs(&self, slot: u16, obj: &ObjectPlan) -> Vec<LinkSpec> {
        let (entry, ret) = programs(self.set, obj.family);
        let mode = match self.set {
            ProbeSet::Full => self.mode(obj.family),
            ProbeSet::Floor => Mode::Full,
        };
        // A function probed inside its body takes no return probe whatever the mode.
        let entry_only = |func: FuncId| {
            mode == Mode::EntryOnly || funcs::spec(func).is_some_and(|f| f.entry_only)
        };
        let points: Vec<(u64, u64, bool)> = obj
            .points
            .iter()
            .map(|&(func, offset)| {
                let mut cookie = mode.cookie(func, slot);
                if mode == Mode::Full && entry_only(func) {
                    cookie = cookie.with_mode(C_ENTRY_ONLY, NO_SLOT);
                }
                if self.stacks && self.set == ProbeSet::Full && mode != Mode::Aggregate {
                    cookie = cookie.with_mode(C_USTACK, NO_SLOT);
                }
                (offset, cookie.0, entry_only(func))
            })
            .collect();
        let all: Vec<(u64, u64)> = points.iter().map(|&(o, c, _)| (o, c)).collect();
        let returning: Vec<(u64, u64)> = points
            .iter()
            .filter(|p| !p.2)
            .map(|&(o, c, _)| (o, c))
            .collect();
        let mut out = vec![(entry, all, false)];
        // Entry-only mode attaches no return probe at all: that is its saving.
        if !returning.is_empty() {
            out.push((ret, returning, true));
        }
        out
    }

    /// Gives the hot (cyclable) points of every object their own links from now on, so that
    /// the overhead budget can duty-cycle them. Call before attaching.
    pub fn split_hot_points(&mut self) {
        self.split_hot = true;
    }

    /// Duty cycle, off half: the links of the hot points of `family` in `pid` come out (to
    /// be released by the caller; the kernel removes their breakpoints first, then waits).
    pub fn pause_hot(&mut self, pid: u32, family: Family) -> Detached {
        let taken = match self.links.remove(&pid) {
            Some(all) => {
                let (taken, kept): (Vec<_>, Vec<_>) = all
                    .into_iter()
                    .partition(|(g, _)| g.family == family && g.hot);
                self.links.insert(pid, kept);
                taken
            }
            None => Vec::new(),
        };
        self.take_links(taken)
    }

    /// Duty cycle, on half, as a job that can run on another thread: attaching can wait
    /// seconds behind the kernel's release of links taken out earlier, and the reading loop
    /// must not. `None` without uprobe-multi (then use [`Tracer::resume_hot`]).
    pub fn resume_hot_job(&self, pid: u32, family: Family) -> Option<SwapJob> {
        let multi = self.multi.clone()?;
        let mut links = Vec::new();
        for (slot, obj) in self.hot_plans(pid, family) {
            for spec in self.link_specs(slot, &obj) {
                links.push((obj.path.clone(), spec));
            }
        }
        Some(SwapJob {
            multi,
            pid,
            family,
            links,
        })
    }

    /// Duty cycle, on half, here and now (the perf-event fallback).
    pub fn resume_hot(&mut self, pid: u32, family: Family) -> Result<(), ProbeError> {
        let scope = match NonZeroU32::new(pid) {
            Some(p) => UProbeScope::OneProcess(p),
            None => UProbeScope::AllProcesses,
        };
        for (slot, obj) in self.hot_plans(pid, family) {
            self.attach_points(pid, slot, &obj, scope, true)?;
        }
        Ok(())
    }

    /// The hot points of each object of `family` in `pid`.
    fn hot_plans(&self, pid: u32, family: Family) -> Vec<(u16, ObjectPlan)> {
        let mut out = Vec::new();
        for (slot, obj) in self.plans.get(&(pid, family)).into_iter().flatten() {
            let points: Vec<(FuncId, u64)> = obj
                .points
                .iter()
                .copied()
                .filter(|(f, _)| cyclable(*f))
                .collect();
            if !points.is_empty() {
                out.push((
                    *slot,
                    ObjectPlan {
                        points,
                        ..obj.clone()
                    },
                ));
            }
        }
        out
    }

    /// Installs the hot links a [`SwapJob`] attached.
    pub fn finish_resume(&mut self, done: SwapDone) -> Result<(), ProbeError> {
        let fds = done.result?;
        let group = Group {
            family: done.family,
            hot: true,
        };
        self.links
            .entry(done.pid)
            .or_default()
            .extend(fds.into_iter().map(|fd| (group, Link::Multi(fd))));
        Ok(())
    }

    /// Attaches the objects of `objects` not yet probed in `pid` (a library loaded after the
    /// first attach); returns what was newly attached.
    pub fn attach_new(
        &mut self,
        pid: u32,
        objects: &[ObjectPlan],
    ) -> Result<Vec<AttachedObject>, ProbeError> {
        let done = self.probed.get(&pid).cloned().unwrap_or_default();
        let new: Vec<ObjectPlan> = objects
            .iter()
            .filter(|o| !done.iter().any(|(p, f)| *p == o.path && *f == o.family))
            .cloned()
            .collect();
        if new.is_empty() {
            return Ok(Vec::new());
        }
        self.attach_inner(pid, &new)
    }

    /// Stops tracing `pid`: its kernel-side filter entry is removed at once, and its uprobe
    /// links are handed back for [`Detached::release`], which is slow (see there) and so is
    /// left to the caller to run where it does not block event reading.
    pub fn detach(&mut self, pid: u32) -> Detached {
        self.probed.remove(&pid);
        self.plans.retain(|(p, _), _| *p != pid);
        let links = self.links.remove(&pid).unwrap_or_default();
        let detached = self.take_links(links);
        if let Ok(mut traced) = map_mut::<BpfHashMap<_, u32, u32>>(&mut self.bpf, "TRACED") {
            let _ = traced.remove(&pid);
        }
        detached
    }

    /// Takes links out of the programs that own them, for release.
    fn take_links(&mut self, held: Vec<(Group, Link)>) -> Detached {
        let mut links = Vec::new();
        for (_, link) in held {
            match link {
                Link::Multi(fd) => links.push(DetachedLink::Multi(fd)),
                Link::Single(name, id) => {
                    if let Ok(prog) = program_mut::<UProbe>(&mut self.bpf, name) {
                        // A link the kernel already dropped (process gone) is not returned.
                        if let Ok(link) = prog.take_link(id) {
                            links.push(DetachedLink::Single(link));
                        }
                    }
                }
            }
        }
        Detached(links)
    }

    /// The calls entered and not yet returned (the in-flight map), each as the bytes of a
    /// `CallRecord` (without an exit time), for `Event::decode`.
    pub fn in_flight(&self) -> Result<Vec<Vec<u8>>, ProbeError> {
        const N: usize = std::mem::size_of::<llmdd_common::call::CallRecord>();
        const K: usize = std::mem::size_of::<llmdd_common::call::InflightKey>();
        let map = self
            .bpf
            .map("INFLIGHT")
            .ok_or(ProbeError::MissingMap("INFLIGHT"))?;
        let h: BpfHashMap<_, [u8; K], [u8; N]> =
            BpfHashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: "INFLIGHT",
                source,
            })?;
        Ok(h.iter()
            .filter_map(Result::ok)
            .map(|(_, v)| v.to_vec())
            .collect())
    }

    /// The drop and diagnostic counters, summed over CPUs.
    pub fn counters(&self) -> Result<[u64; counters::COUNT as usize], ProbeError> {
        let map = self
            .bpf
            .map("COUNTERS")
            .ok_or(ProbeError::MissingMap("COUNTERS"))?;
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map {
                name: "COUNTERS",
                source,
            })?;
        let mut out = [0u64; counters::COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            let values = arr.get(&(i as u32), 0).map_err(|source| ProbeError::Map {
                name: "COUNTERS",
                source,
            })?;
            *o = values.iter().sum();
        }
        Ok(out)
    }
}

impl Drop for Tracer {
    /// Releases every remaining probe in parallel: left to aya, they would go one by one.
    fn drop(&mut self) {
        let pids: Vec<u32> = self.links.keys().copied().collect();
        let mut all = Detached::default();
        for pid in pids {
            all.extend(self.detach(pid));
        }
        all.release();
    }
}

fn program_mut<'a, T>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = bpf.program_mut(name).ok_or(ProbeError::MissingMap(name))?;
    prog.try_into().map_err(|source| ProbeError::Program {
        name,
        source: Box::new(source),
    })
}

fn map_mut<'a, T>(bpf: &'a mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = bpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

/// A link taken out of the tracer; dropping it detaches it.
/// One uprobe-multi link to make: program, (file offset, cookie) per point, return probe.
type LinkSpec = (&'static str, Vec<(u64, u64)>, bool);

/// Attaching a family's hot links, off the reading loop (see [`Tracer::resume_hot_job`]).
pub struct SwapJob {
    multi: std::sync::Arc<multi::MultiPrograms>,
    pub pid: u32,
    pub family: Family,
    links: Vec<(PathBuf, LinkSpec)>,
}

/// What a [`SwapJob`] attached, for [`Tracer::finish_swap`].
pub struct SwapDone {
    pub pid: u32,
    pub family: Family,
    result: Result<Vec<OwnedFd>, ProbeError>,
}

impl SwapJob {
    /// Attaches the job's links (on any thread). On failure, what it attached is dropped.
    pub fn run(self) -> SwapDone {
        let mut fds = Vec::new();
        let mut result = Ok(());
        for (path, (name, points, is_ret)) in &self.links {
            match self.multi.attach(name, path, points, *is_ret, self.pid) {
                Ok(fd) => fds.push(fd),
                Err(source) => {
                    result = Err(ProbeError::Multi {
                        pid: self.pid,
                        source,
                    });
                    break;
                }
            }
        }
        SwapDone {
            pid: self.pid,
            family: self.family,
            result: result.map(|()| fds),
        }
    }
}

enum DetachedLink {
    Multi(#[allow(dead_code)] OwnedFd),
    Single(#[allow(dead_code)] UProbeLink),
}

/// Uprobe links taken out of the tracer, not yet released.
///
/// Releasing a link costs the kernel a grace-period wait (about 0.1 s measured on this
/// machine kind). Released from several threads at once, the waits of multi links overlap.
#[must_use = "links stay attached until released"]
#[derive(Default)]
pub struct Detached(Vec<DetachedLink>);

impl Detached {
    /// Adds another set.
    pub fn extend(&mut self, other: Detached) {
        self.0.extend(other.0);
    }

    /// Detaches every link, in parallel; returns when all are gone from the kernel.
    pub fn release(self) {
        const MAX_THREADS: usize = 128;
        let links = self.0;
        if links.is_empty() {
            return;
        }
        let per_thread = links.len().div_ceil(MAX_THREADS);
        let mut chunks: Vec<Vec<DetachedLink>> = Vec::new();
        let mut it = links.into_iter().peekable();
        while it.peek().is_some() {
            chunks.push(it.by_ref().take(per_thread).collect());
        }
        std::thread::scope(|scope| {
            for chunk in chunks {
                // Dropping a link closes its perf event and BPF link, which detaches it.
                if std::thread::Builder::new()
                    .name("llmdd-detach".into())
                    .spawn_scoped(scope, move || drop(chunk))
                    .is_err()
                {
                    // Could not start a thread: the chunk was moved into the failed closure and
                    // dropped right here, serially, which is slower but still correct.
                }
            }
        });
    }
}

/// Whether calls of `func` may be duty-cycled (their probes given links of their own, to be
/// detached and attached again by the overhead budget): hot calls that findings do not
/// depend on.
pub fn cyclable(func: llmdd_common::funcs::FuncId) -> bool {
    use llmdd_common::funcs::CallKind;
    llmdd_common::funcs::spec(func).is_some_and(|f| {
        matches!(
            f.kind,
            CallKind::Launch
                | CallKind::Memcpy
                | CallKind::EventQuery
                | CallKind::EventRecord
                | CallKind::StreamWait
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmdd_common::funcs::FUNCS;

    fn id(name: &str) -> FuncId {
        FUNCS
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.id)
            .expect("known function")
    }

    #[test]
    fn cookies_ask_for_stack_words_only_when_an_argument_lives_there() {
        let c = cookie_for(id("ncclAllReduce"), 3);
        assert_eq!(
            (c.func(), c.lib_slot(), c.comm_slot()),
            (id("ncclAllReduce"), 3, 5)
        );
        assert_ne!(c.flags() & C_STACK, 0, "stream is the 7th argument");
        assert_eq!(
            cookie_for(id("ncclSend"), 0).flags() & C_STACK,
            0,
            "all in registers"
        );
        assert_ne!(
            cookie_for(id("cuLaunchKernel"), 0).flags() & C_STACK,
            0,
            "stream is the 9th"
        );
        let init = cookie_for(id("ncclCommInitRank"), 0);
        assert_eq!(
            init.flags(),
            C_UID,
            "the unique id is hashed, no other stack word needed"
        );
        assert_eq!(init.out_slot(), 0);
    }
}
