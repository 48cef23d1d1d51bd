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

/// The capabilities llmdd keeps once its probes are attached, and why.
pub const KEPT: [(caps::Capability, &str); 5] = [
    (
        caps::Capability::CAP_BPF,
        "every bpf() call, map reads included, when unprivileged BPF is disabled",
    ),
    (
        caps::Capability::CAP_PERFMON,
        "attaching probes later: a library loaded after attach, the duty cycle",
    ),
    (
        caps::Capability::CAP_SYS_PTRACE,
        "reading /proc/PID/maps of other users' processes when they load a library, and where their threads are (a job hung before attach)",
    ),
    (
        caps::Capability::CAP_DAC_READ_SEARCH,
        "opening those libraries through /proc/PID/root to probe them",
    ),
    (
        caps::Capability::CAP_SYS_RESOURCE,
        "BPF map memory on kernels that still charge it to RLIMIT_MEMLOCK",
    ),
];

/// Drops every capability not in [`KEPT`] from the effective, permitted and inheritable
/// sets (so they cannot come back), once all probes are attached and every output is open.
/// Returns the names kept. Uses the `caps` crate rather than raw `capset(2)`: it handles
/// the kernel's capability versions and the set layout.
pub fn drop_to_tracing() -> Result<Vec<&'static str>, String> {
    use caps::{CapSet, CapsHashSet};
    let have = caps::read(None, CapSet::Permitted).map_err(|e| e.to_string())?;
    let mut keep = CapsHashSet::new();
    for (c, _) in KEPT {
        if have.contains(&c) {
            keep.insert(c);
        }
    }
    // Kernels before CAP_BPF (5.8) need CAP_SYS_ADMIN for everything BPF.
    let no_cap_bpf = !caps::runtime::procfs_all_supported(None)
        .map(|all| all.contains(&caps::Capability::CAP_BPF))
        .unwrap_or(true);
    if no_cap_bpf && have.contains(&caps::Capability::CAP_SYS_ADMIN) {
        keep.insert(caps::Capability::CAP_SYS_ADMIN);
    }
    caps::set(None, CapSet::Effective, &keep).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|e| e.to_string())?;
    let mut names: Vec<&'static str> = KEPT
        .iter()
        .filter(|(c, _)| keep.contains(c))
        .map(|(c, _)| cap_name(*c))
        .collect();
    if keep.contains(&caps::Capability::CAP_SYS_ADMIN) {
        names.push("CAP_SYS_ADMIN");
    }
    Ok(names)
}

fn cap_name(c: caps::Capability) -> &'static str {
    match c {
        caps::Capability::CAP_BPF => "CAP_BPF",
        caps::Capability::CAP_PERFMON => "CAP_PERFMON",
        caps::Capability::CAP_SYS_PTRACE => "CAP_SYS_PTRACE",
        caps::Capability::CAP_DAC_READ_SEARCH => "CAP_DAC_READ_SEARCH",
        caps::Capability::CAP_SYS_RESOURCE => "CAP_SYS_RESOURCE",
        _ => "?",
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
