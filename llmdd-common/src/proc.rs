//! Process lifecycle records (sched:sched_process_exit).

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcExitRecord {
    /// Always `RecordKind::ProcExit`.
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    /// 1 when this was the last thread of the process.
    pub group_dead: u32,
    pub ts_ns: u64,
}

const _: () = assert!(core::mem::size_of::<ProcExitRecord>() == 24);
