//! Process lifecycle: sched:sched_process_exit for traced processes (last thread only).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use llmdd_common::{proc::ProcExitRecord, RecordKind};

use crate::{emit::send, maps::is_traced};

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
