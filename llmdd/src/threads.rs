//! Where each thread of a traced process is now: host context for a job that is already
//! stuck when llmdd attaches (its calls began before the probes existed, so no record of
//! them will ever come).
//!
//! For each thread: its state and current system call from `/proc/PID/task/TID/{stat,
//! syscall}`, which give the stack and instruction pointers of a thread blocked in a system
//! call. A thread that is running (Open MPI busy-polls while it waits) is stopped for a few
//! microseconds with `PTRACE_SEIZE` + `PTRACE_INTERRUPT` to read its registers, then let go.
//! Its stack is then read from `/proc/PID/mem` and scanned for return addresses: words that
//! point into executable mappings just after a call instruction (checked in the code bytes,
//! which keeps stale words out), innermost first. Frames are named from the mapped objects'
//! symbol tables (`stacks::Symbolizer`). Code built without frame pointers is covered the
//! same way: the scan does not follow frame pointers.
//!
//! A thread is then placed: inside a traced library's call (a collective, a sync), inside
//! such a library without a named entry point, or elsewhere (its innermost frame outside
//! the C library). The engine decides what the places of a job's ranks mean.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use llmdd_common::funcs::{self, CallKind, Family, FuncSpec};

pub use crate::engine::{Place, ThreadPlace as ThreadNow};
use crate::{stacks::Symbolizer, tracee::procfs};

/// Bytes of stack scanned above the stack pointer.
const STACK_BYTES: usize = 64 << 10;
/// Return addresses kept per thread.
const MAX_FRAMES: usize = 64;
/// Frames kept for the views.
const SHOWN_FRAMES: usize = 12;
/// Threads looked at per process at most.
const MAX_THREADS: usize = 512;

/// A traced object of a process: its path as the process sees it, and its family.
pub type TracedPath = (PathBuf, Family);

/// Every thread of `pid`, placed. `traced`: the process's traced objects; `ptrace`:
/// whether running threads may be stopped briefly to read their registers.
pub fn snapshot(
    pid: u32,
    traced: &[TracedPath],
    sym: &mut Symbolizer,
    ptrace: bool,
) -> Vec<ThreadNow> {
    sym.refresh(pid);
    let Ok(dir) = std::fs::read_dir(procfs::proc_path(pid, "task")) else {
        return Vec::new();
    };
    let mut tids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids.truncate(MAX_THREADS);
    tids.into_iter()
        .map(|tid| thread_now(pid, tid, traced, sym, ptrace))
        .collect()
}

fn task_file(pid: u32, tid: u32, file: &str) -> Option<String> {
    std::fs::read_to_string(procfs::proc_path(pid, &format!("task/{tid}/{file}"))).ok()
}

/// `/proc/.../syscall`: `running`, or the call number, six arguments, stack and
/// instruction pointers (`-1 sp pc` when blocked outside a system call).
fn parse_syscall(text: &str) -> Option<(i64, u64, u64)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let hex = |w: &str| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok();
    match words.as_slice() {
        [nr, sp, pc] => Some((nr.parse().ok()?, hex(sp)?, hex(pc)?)),
        [nr, _, _, _, _, _, _, sp, pc] => Some((nr.parse().ok()?, hex(sp)?, hex(pc)?)),
        _ => None,
    }
}

fn thread_now(
    pid: u32,
    tid: u32,
    traced: &[TracedPath],
    sym: &mut Symbolizer,
    ptrace: bool,
) -> ThreadNow {
    let name = task_file(pid, tid, "comm")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    // The state follows the parenthesised name in `stat`.
    let state = task_file(pid, tid, "stat")
        .and_then(|s| s.rsplit(')').next()?.trim().chars().next())
        .unwrap_or('?');
    let blocked = task_file(pid, tid, "syscall").and_then(|s| parse_syscall(&s));
    let (syscall, regs, regs_from) = match blocked {
        Some((nr, sp, pc)) => ((nr >= 0).then_some(nr), Some((pc, sp)), "syscall"),
        None if ptrace => match ptrace_regs(tid) {
            Some(r) => (None, Some(r), "ptrace"),
            None => (None, None, "none"),
        },
        None => (None, None, "none"),
    };
    let mut t = ThreadNow {
        tid,
        name,
        state,
        syscall,
        regs_from,
        place: Place::Unknown {
            why: "registers not readable (running, and ptrace off or refused)".into(),
        },
        frames: Vec::new(),
        site: String::new(),
    };
    if let Some((pc, sp)) = regs {
        let addrs = return_addresses(pid, sp, sym);
        let named: Vec<(String, Option<PathBuf>)> = std::iter::once((pc, false))
            .chain(addrs.into_iter().map(|a| (a, true)))
            .map(|(a, ret)| {
                let look = if ret { a.saturating_sub(1) } else { a };
                let path = sym
                    .mapping(pid, look)
                    .and_then(|m| m.path())
                    .map(Path::to_path_buf);
                (sym.name(pid, a, ret), path)
            })
            .collect();
        t.place = place_of(&named, traced);
        t.frames = named
            .iter()
            .take(SHOWN_FRAMES)
            .map(|(n, _)| n.clone())
            .collect();
        t.site = named
            .iter()
            .filter(|(_, p)| !p.as_deref().is_some_and(system_object))
            .take(3)
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" <- ");
    }
    t
}

/// The return addresses on the stack above `sp`, innermost first.
fn return_addresses(pid: u32, sp: u64, sym: &mut Symbolizer) -> Vec<u64> {
    let end = sym
        .mapping(pid, sp)
        .map(|m| m.end)
        .unwrap_or(sp + STACK_BYTES as u64);
    let len = (end.saturating_sub(sp) as usize).min(STACK_BYTES);
    let Ok(stack) = procfs::read_mem(pid, sp, len) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for w in stack.chunks_exact(8) {
        let a = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        let exec = sym
            .mapping(pid, a.saturating_sub(1))
            .is_some_and(|m| m.perms.exec);
        if exec && after_call(pid, a) {
            out.push(a);
            if out.len() >= MAX_FRAMES {
                break;
            }
        }
    }
    out
}

/// Whether the bytes just before `ret` are a call instruction that returns there: a direct
/// `call rel32` (E8) or an indirect `call` (FF /2) through a register or memory operand.
fn after_call(pid: u32, ret: u64) -> bool {
    let Ok(b) = procfs::read_mem(pid, ret.saturating_sub(7), 7) else {
        return false;
    };
    if b.len() != 7 {
        return false;
    }
    let modrm_call = |m: u8| (m >> 3) & 7 == 2;
    // call rel32
    b[2] == 0xe8
        // call reg (FF D0+r), call [reg] (FF 10+r)
        || (b[5] == 0xff && modrm_call(b[6]) && (b[6] >> 6 == 3 || b[6] >> 6 == 0))
        // call [reg+disp8] (FF 50+r d8)
        || (b[4] == 0xff && modrm_call(b[5]) && b[5] >> 6 == 1)
        // call [reg+sib+disp8]
        || (b[3] == 0xff && modrm_call(b[4]) && b[4] >> 6 == 1 && b[4] & 7 == 4)
        // call [rip+disp32] (FF 15), call [reg+disp32] (FF 90+r)
        || (b[1] == 0xff && modrm_call(b[2]) && (b[2] == 0x15 || b[2] >> 6 == 2))
        // call [reg+sib+disp32]
        || (b[0] == 0xff && modrm_call(b[1]) && b[1] >> 6 == 2 && b[1] & 7 == 4)
}

/// The traced function a frame is, by its (demangled, parameterless) name.
fn traced_function(name: &str) -> Option<&'static FuncSpec> {
    funcs::by_symbol(name).or_else(|| funcs::FUNCS.iter().find(|f| f.name == name))
}

/// Places a thread from its named frames, innermost first (the first is its instruction
/// pointer), with the file each lies in.
pub fn place_of(frames: &[(String, Option<PathBuf>)], traced: &[TracedPath]) -> Place {
    // A traced entry point among the frames says what the thread is in.
    for (name, _) in frames {
        if let Some(f) = traced_function(name) {
            let func = f.name.to_string();
            let family = f.family.name();
            return match f.kind {
                CallKind::Sync | CallKind::EventQuery => Place::DeviceWait { family, func },
                CallKind::Memcpy if f.waits_for_device() => Place::DeviceWait { family, func },
                CallKind::Collective | CallKind::P2p | CallKind::GroupEnd => {
                    Place::Collective { family, func }
                }
                _ => Place::Elsewhere { frame: func },
            };
        }
    }
    // Else inside a traced library (code of its own, or an entry point without symbols).
    for (_, path) in frames {
        let Some(path) = path else { continue };
        if let Some((_, family)) = traced.iter().find(|(p, _)| p == path) {
            let family_name = family.name();
            return match family {
                Family::Nccl | Family::Mpi | Family::Gloo | Family::Vllm => Place::Collective {
                    family: family_name,
                    func: String::new(),
                },
                Family::CudaRuntime | Family::CudaDriver | Family::Hip => Place::DeviceWait {
                    family: family_name,
                    func: String::new(),
                },
                Family::User | Family::Nixl => continue,
            };
        }
    }
    let frame = frames
        .iter()
        .find(|(_, p)| !p.as_deref().is_some_and(system_object))
        .or(frames.first())
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| "?".into());
    Place::Elsewhere { frame }
}

/// The C library, the dynamic loader, the vDSO: where every thread's innermost frames are,
/// saying nothing about what it is doing.
fn system_object(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    ["libc.so", "libc-", "ld-linux", "libpthread", "[vdso]"]
        .iter()
        .any(|s| name.starts_with(s))
}

/// Stops a running thread for as long as it takes to read its instruction and stack
/// pointers, and lets it go (never leaves it stopped: the seize is undone on every path).
fn ptrace_regs(tid: u32) -> Option<(u64, u64)> {
    let tid = tid as libc::pid_t;
    // SAFETY: ptrace(2) and waitpid(2) on a thread id; every path below detaches.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) != 0 {
            return None;
        }
        let mut regs = None;
        if libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) == 0 {
            let mut status = 0;
            let deadline = std::time::Instant::now() + Duration::from_millis(100);
            loop {
                let r = libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG);
                if r == tid || r < 0 || std::time::Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            let mut r: libc::user_regs_struct = std::mem::zeroed();
            if libc::ptrace(
                libc::PTRACE_GETREGS,
                tid,
                0,
                &mut r as *mut _ as *mut libc::c_void,
            ) == 0
            {
                regs = Some((r.rip, r.rsp));
            }
        }
        libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
        regs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_syscall_file() {
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(
            parse_syscall("7 0x1 0x2 0x3 0x4 0x5 0x6 0x7ffd1000 0x7f0012\n"),
            Some((7, 0x7ffd_1000, 0x7f_0012))
        );
        assert_eq!(
            parse_syscall("-1 0x7ffd1000 0x401000"),
            Some((-1, 0x7ffd_1000, 0x40_1000))
        );
    }

    #[test]
    fn places_by_entry_point_then_library_then_frame() {
        let lib = PathBuf::from("/usr/lib/libnccl.so.2");
        let traced = vec![(lib.clone(), Family::Nccl)];
        let f = |n: &str, p: Option<&PathBuf>| (n.to_string(), p.cloned());
        let libc = PathBuf::from("/lib/libc.so.6");
        let p = place_of(
            &[
                f("recv", Some(&libc)),
                f("ncclAllReduce", Some(&lib)),
                f("main", None),
            ],
            &traced,
        );
        assert_eq!(
            p,
            Place::Collective {
                family: "nccl",
                func: "ncclAllReduce".into()
            }
        );
        let p = place_of(
            &[
                f("poll", Some(&libc)),
                f("nccl::net::Link::recv", Some(&lib)),
            ],
            &traced,
        );
        assert_eq!(
            p,
            Place::Collective {
                family: "nccl",
                func: String::new()
            }
        );
        let p = place_of(&[f("cudaStreamSynchronize", None)], &traced);
        assert!(matches!(p, Place::DeviceWait { .. }));
        let p = place_of(
            &[
                f("libc.so.6+0x1234", Some(&libc)),
                f("simjob::rank::Rank::before_comm", None),
            ],
            &traced,
        );
        assert_eq!(
            p,
            Place::Elsewhere {
                frame: "simjob::rank::Rank::before_comm".into()
            }
        );
    }

    /// This test's own threads: one sleeping in a system call is placed from its stack.
    #[test]
    fn snapshots_this_process() {
        let pid = std::process::id();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::Builder::new()
            .name("llmdd-sleeper".into())
            .spawn(move || {
                let _ = rx.recv_timeout(Duration::from_secs(10));
            })
            .expect("thread");
        std::thread::sleep(Duration::from_millis(50));
        let mut sym = Symbolizer::new();
        let threads = snapshot(pid, &[], &mut sym, false);
        let _ = tx.send(());
        let _ = h.join();
        let t = threads
            .iter()
            .find(|t| t.name == "llmdd-sleeper")
            .expect("the sleeping thread");
        assert_eq!((t.state, t.regs_from), ('S', "syscall"));
        assert!(t.syscall.is_some(), "{t:?}");
        assert!(!t.frames.is_empty(), "{t:?}");
    }
}
