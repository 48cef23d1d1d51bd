//! Process lifecycle records (sched:sched_process_exit) and notices of new executable file
//! mappings (a library loaded with dlopen after attach).

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

/// A traced process mapped a file executable (syscalls:sys_enter_mmap with PROT_EXEC and a
/// file descriptor, then a successful sys_exit_mmap): a library may have been loaded, so
/// userspace looks at the process's mappings again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecMapRecord {
    /// Always `RecordKind::ExecMap`.
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub _pad: u32,
    pub ts_ns: u64,
}

const _: () = assert!(core::mem::size_of::<ExecMapRecord>() == 24);
