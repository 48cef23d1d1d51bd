//! Uprobe-multi links: one BPF link carries every probe point of one object (entry or
//! return) for one process, with a cookie per point.
//!
//! Why: a uprobe attached through a perf event costs the kernel a grace-period wait when it
//! is removed (about 0.1 s each on this machine kind, serialised by a kernel mutex), so the
//! few hundred probes of a 4-rank job took most of a minute to detach. A multi link removes
//! all its points with one wait. aya 0.14 has no uprobe-multi attach, and the kernel only
//! accepts programs loaded with the `BPF_TRACE_UPROBE_MULTI` attach type for it, so this
//! module loads the same programs from the embedded object a second way: parsed and
//! relocated by `aya-obj` against the maps aya already created (so both share the ring buffer
//! and every other map), then `BPF_PROG_LOAD` and `BPF_LINK_CREATE` directly. Kernels
//! without uprobe-multi (before 6.6) fall back to aya's per-point attach.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use aya::{maps::Map, Ebpf};
use aya_obj::generated::{
    bpf_attach_type::BPF_TRACE_UPROBE_MULTI, bpf_cmd, bpf_insn,
    bpf_prog_type::BPF_PROG_TYPE_KPROBE, BPF_F_UPROBE_MULTI_RETURN,
};

/// Why the multi path is unavailable or failed.
#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    #[error("parsing the embedded object: {0}")]
    Parse(String),
    #[error("relocating the embedded object: {0}")]
    Relocate(String),
    #[error("map {0} not found among the loaded maps")]
    Map(String),
    #[error("program {0} not found in the object")]
    Program(&'static str),
    #[error("the kernel refused program {name} for uprobe-multi: {source}{log}")]
    Load {
        name: &'static str,
        source: std::io::Error,
        log: String,
    },
    #[error("uprobe-multi attach to {path} failed: {source}")]
    Attach {
        path: String,
        source: std::io::Error,
    },
    #[error("path {0} contains a NUL byte")]
    Path(String),
}

fn raw_fd_of(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::StackTraceMap(d)
        | Map::BloomFilter(d)
        | Map::LpmTrie(d)
        | Map::Queue(d)
        | Map::Stack(d)
        | Map::RingBuf(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// The uprobe programs, loaded for uprobe-multi.
pub struct MultiPrograms {
    fds: HashMap<&'static str, OwnedFd>,
}

impl MultiPrograms {
    /// Loads `names` from `object`, relocated against the maps of `bpf` (which must still
    /// hold every map the programs use).
    pub fn load(
        object: &[u8],
        bpf: &Ebpf,
        names: &[&'static str],
    ) -> Result<MultiPrograms, MultiError> {
        let mut obj =
            aya_obj::Object::parse(object).map_err(|e| MultiError::Parse(e.to_string()))?;
        let defs = obj.maps.clone();
        let mut maps = Vec::new();
        for (name, def) in &defs {
            let fd = bpf
                .map(name)
                .and_then(raw_fd_of)
                .ok_or_else(|| MultiError::Map(name.clone()))?;
            maps.push((name.as_str(), fd, def));
        }
        let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(maps.into_iter(), &text)
            .map_err(|e| MultiError::Relocate(e.to_string()))?;
        obj.relocate_calls(&text)
            .map_err(|e| MultiError::Relocate(e.to_string()))?;

        let mut fds = HashMap::new();
        for &name in names {
            let prog = obj.programs.get(name).ok_or(MultiError::Program(name))?;
            let func = obj
                .functions
                .get(&prog.function_key())
                .ok_or(MultiError::Program(name))?;
            fds.insert(name, prog_load(name, &func.instructions)?);
        }
        Ok(MultiPrograms { fds })
    }

    /// Attaches program `name` at every `(offset, cookie)` of the file at `path`, for process
    /// `pid` (0: every process). Dropping the returned fd detaches all of them.
    pub fn attach(
        &self,
        name: &'static str,
        path: &Path,
        points: &[(u64, u64)],
        ret: bool,
        pid: u32,
    ) -> Result<OwnedFd, MultiError> {
        let prog = self.fds.get(name).ok_or(MultiError::Program(name))?;
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| MultiError::Path(path.display().to_string()))?;
        let offsets: Vec<u64> = points.iter().map(|p| p.0).collect();
        let cookies: Vec<u64> = points.iter().map(|p| p.1).collect();
        // union bpf_attr, link_create member (include/uapi/linux/bpf.h):
        //   u32 prog_fd @0, u32 target_fd @4, u32 attach_type @8, u32 flags @12,
        //   uprobe_multi { u64 path @16, u64 offsets @24, u64 ref_ctr_offsets @32,
        //                  u64 cookies @40, u32 cnt @48, u32 flags @52, u32 pid @56 }
        let mut attr = [0u8; 64];
        put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
        put_u32(&mut attr, 8, BPF_TRACE_UPROBE_MULTI as u32);
        put_u64(&mut attr, 16, c_path.as_ptr() as u64);
        put_u64(&mut attr, 24, offsets.as_ptr() as u64);
        put_u64(&mut attr, 40, cookies.as_ptr() as u64);
        put_u32(&mut attr, 48, points.len() as u32);
        put_u32(
            &mut attr,
            52,
            if ret { BPF_F_UPROBE_MULTI_RETURN } else { 0 },
        );
        put_u32(&mut attr, 56, pid);
        sys_bpf(bpf_cmd::BPF_LINK_CREATE as u32, &mut attr).map_err(|source| MultiError::Attach {
            path: path.display().to_string(),
            source,
        })
    }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// bpf(2); returns the new fd.
fn sys_bpf(cmd: u32, attr: &mut [u8]) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: `attr` is a zero-padded bpf_attr of the size passed; every pointer inside it
    // refers to memory that outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success BPF_PROG_LOAD and BPF_LINK_CREATE return a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

fn prog_load(name: &'static str, insns: &[bpf_insn]) -> Result<OwnedFd, MultiError> {
    let license = c"GPL";
    let mut log = vec![0u8; 256 * 1024];
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    // union bpf_attr, prog load member: u32 prog_type @0, u32 insn_cnt @4, u64 insns @8,
    // u64 license @16, u32 log_level @24, u32 log_size @28, u64 log_buf @32,
    // u32 kern_version @40, u32 prog_flags @44, char prog_name[16] @48,
    // u32 prog_ifindex @64, u32 expected_attach_type @68.
    let attempt = |with_log: bool, log: &mut [u8]| {
        let mut attr = [0u8; 72];
        put_u32(&mut attr, 0, BPF_PROG_TYPE_KPROBE as u32);
        put_u32(&mut attr, 4, insns.len() as u32);
        put_u64(&mut attr, 8, insns.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        if with_log {
            put_u32(&mut attr, 24, 1);
            put_u32(&mut attr, 28, log.len() as u32);
            put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
        }
        attr[48..64].copy_from_slice(&prog_name);
        put_u32(&mut attr, 68, BPF_TRACE_UPROBE_MULTI as u32);
        sys_bpf(bpf_cmd::BPF_PROG_LOAD as u32, &mut attr)
    };
    match attempt(false, &mut log) {
        Ok(fd) => Ok(fd),
        Err(_) => {
            // Again with the verifier log, to say why.
            let source = match attempt(true, &mut log) {
                Ok(fd) => return Ok(fd),
                Err(e) => e,
            };
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            let tail: String = text
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            Err(MultiError::Load {
                name,
                source,
                log: if tail.is_empty() {
                    String::new()
                } else {
                    format!("\n{tail}")
                },
            })
        }
    }
}
