//! The overhead floor: an empty uprobe/uretprobe pair. `cargo xtask bench` attaches it where
//! the real probes go, so the cost of the kernel's trap alone is measured in the same run as
//! llmdd's own probes.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

#[uprobe]
pub fn floor_entry(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn floor_return(_ctx: RetProbeContext) -> u32 {
    0
}
