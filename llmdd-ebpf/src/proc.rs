//! Process lifecycle: sched:sched_process_exit for traced processes (last thread only), and
//! executable file mappings (syscalls:sys_enter_mmap / sys_exit_mmap), so that a library
//! loaded after attach (NCCL opened lazily, as PyTorch does) is probed too.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use llmdd_common::{
    proc::{ExecMapRecord, ProcExitRecord},
    RecordKind,
};

use crate::{
    emit::send,
    maps::{is_traced, PENDING_MMAPS},
};

/// Offset of `group_dead` in the tracepoint's format (checked by userspace at load).
const GROUP_DEAD_OFF: usize = 32;

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_traced(tgid) {
        return 0;
    }
    // SAFETY: reading a field of the tracepoint record at its documented offset.
    let group_dead: u8 = unsafe { ctx.read_at(GROUP_DEAD_OFF) }.unwrap_or(0);
    if group_dead == 0 {
        return 0;
    }
    let rec = ProcExitRecord {
        kind: RecordKind::ProcExit as u32,
        pid: tgid,
        tid: pid_tgid as u32,
        group_dead: 1,
        // SAFETY: ktime is always readable.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    send(&rec);
    0
}

/// sys_enter_mmap: `prot` and `fd` offsets in the format (checked by userspace).
const MMAP_PROT_OFF: usize = 32;
const MMAP_FD_OFF: usize = 48;
/// sys_exit_mmap: `ret`.
const MMAP_RET_OFF: usize = 16;
const PROT_EXEC: u64 = 4;

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return 0;
    }
    // SAFETY: reads of the tracepoint record at its format offsets.
    let (prot, fd) = unsafe {
        (
            ctx.read_at::<u64>(MMAP_PROT_OFF).unwrap_or(0),
            ctx.read_at::<u64>(MMAP_FD_OFF).unwrap_or(u64::MAX),
        )
    };
    // A file (fd >= 0 as a signed int) mapped executable.
    if prot & PROT_EXEC != 0 && (fd as i64) >= 0 {
        let _ = PENDING_MMAPS.insert(&(pid_tgid as u32), &1, 0);
    }
    0
}

#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: read-only lookup.
    if unsafe { PENDING_MMAPS.get(&tid) }.is_none() {
        return 0;
    }
    let _ = PENDING_MMAPS.remove(&tid);
    // SAFETY: read of the tracepoint record at its format offset.
    let ret: i64 = unsafe { ctx.read_at(MMAP_RET_OFF) }.unwrap_or(-1);
    // Errors come back as -4095..-1.
    if (-4095..0).contains(&ret) {
        return 0;
    }
    let rec = ExecMapRecord {
        kind: RecordKind::ExecMap as u32,
        pid: (pid_tgid >> 32) as u32,
        tid,
        _pad: 0,
        // SAFETY: ktime is always readable.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    send(&rec);
    0
}
