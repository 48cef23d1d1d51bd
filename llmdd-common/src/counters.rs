//! Per-CPU counters (one `PerCpuArray<u64>` named `COUNTERS`) that the BPF side bumps when it
//! cannot deliver something. Userspace sums them over CPUs and reports every one: nothing is
//! lost silently.

/// A ring-buffer reservation failed (buffer full): one record lost.
pub const RING_FULL: u32 = 0;
/// The in-flight call map was full at entry: the call's record is lost.
pub const INFLIGHT_FULL: u32 = 1;
/// A return fired without its entry (entry lost, or probe attached mid-call).
pub const RETURN_WITHOUT_ENTRY: u32 = 2;
/// Reading user memory through a pointer argument failed (the field is left as unknown).
pub const USER_READ_FAILED: u32 = 3;
/// Reading a kernel socket field failed.
pub const KERNEL_READ_FAILED: u32 = 4;
/// The aggregate map was full: a call in aggregate mode was not counted.
pub const AGG_FULL: u32 = 5;
/// A user stack could not be stored in `STACKS` (map full, hash collision, or no walkable
/// stack): the call is kept, folded without its stack.
pub const STACK_LOST: u32 = 6;
/// Number of counters.
pub const COUNT: u32 = 7;

/// Human names, indexed by counter.
pub const NAMES: [&str; COUNT as usize] = [
    "ring_buffer_full",
    "inflight_map_full",
    "return_without_entry",
    "user_read_failed",
    "kernel_read_failed",
    "aggregate_map_full",
    "user_stack_lost",
];

/// The counters that mean a record was lost (the rest are diagnostics: a return seen
/// without its entry is normal for calls already in flight when the probes attach).
pub const LOSSES: [u32; 3] = [RING_FULL, INFLIGHT_FULL, AGG_FULL];

/// Whether counter `index` counts lost records.
pub fn is_loss(index: u32) -> bool {
    LOSSES.contains(&index)
}
