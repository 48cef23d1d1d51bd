//! Raw probe records for tests that write recordings themselves (`llmdd::record::Writer`):
//! the bytes the BPF side submits for one returned call.

use llmdd_common::call::{CallRecord, F_RETURNED};

/// One returned call of `func` by `pid` (its own thread), from `entry` to `exit`.
pub fn call(pid: u32, func: u16, entry: u64, exit: u64) -> Vec<u8> {
    let rec = CallRecord {
        kind: llmdd_common::RecordKind::Call as u32,
        func,
        pid,
        tid: pid,
        entry_ns: entry,
        exit_ns: exit,
        flags: F_RETURNED,
        rank: -1,
        nranks: -1,
        ..CallRecord::default()
    };
    // SAFETY: a plain `repr(C)` struct of integers, read as bytes.
    unsafe {
        std::slice::from_raw_parts(
            &rec as *const CallRecord as *const u8,
            std::mem::size_of::<CallRecord>(),
        )
    }
    .to_vec()
}
