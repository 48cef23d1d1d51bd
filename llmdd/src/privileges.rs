//! Whether this process may load BPF programs and attach uprobes.

use std::fs;

/// Linux capability numbers that matter here.
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Effective capability mask of this process (from /proc/self/status).
pub fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Whether the mask holds `cap`.
pub fn has(mask: u64, cap: u32) -> bool {
    mask & (1u64 << cap) != 0
}

/// `Ok` when tracing is allowed, else a one-line reason with the remedy.
pub fn check() -> Result<(), String> {
    let caps = effective_caps().unwrap_or(0);
    let admin = has(caps, CAP_SYS_ADMIN);
    let bpf = admin || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON));
    if bpf {
        Ok(())
    } else {
        Err(
            "insufficient privileges: loading BPF programs needs root, or CAP_BPF and \
             CAP_PERFMON (plus CAP_SYS_PTRACE to read other users' /proc/PID); rerun with sudo"
                .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_bits() {
        assert!(has(1 << CAP_BPF, CAP_BPF));
        assert!(!has(1 << CAP_BPF, CAP_PERFMON));
    }
}
