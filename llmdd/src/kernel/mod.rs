//! Facts about the running kernel that the probes need (BTF-derived struct offsets) and the
//! feature checks behind `llmdd doctor`.
//!
//! - [`sock_offsets`]: where `struct sock` keeps addresses and ports, from
//!   `/sys/kernel/btf/vmlinux` (parsed by the small reader in [`btf`]).
//! - [`btf_available`], [`uprobes_supported`], [`tracefs_root`], [`mount_tracefs`],
//!   [`ringbuf_supported`], [`kernel_release`]: one kernel feature each.

pub mod btf;
mod features;
mod sock;

use std::{io, path::PathBuf};

use llmdd_common::sock::SockCfg;

pub use features::{
    btf_available, kernel_release, kernel_version, mount_tracefs, parse_release, preflight,
    ringbuf_supported, sys_path, tracefs_root, uprobes_supported, SYSFS_ROOT_ENV, TRACEFS,
    TRACEFS_LEGACY, UPROBE_PMU,
};
pub use sock::offsets_from as sock_offsets_from;

/// The kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why a kernel fact could not be established.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read {}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)", path.display())]
    BtfUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not valid BTF: {why}", path.display())]
    BtfFormat { path: PathBuf, why: String },
    #[error("the kernel BTF has no struct {0}")]
    MissingType(&'static str),
    #[error("the kernel BTF has no field {field} in struct {ty}")]
    MissingField {
        ty: &'static str,
        field: &'static str,
    },
    #[error("unexpected kernel struct layout: {0}")]
    Layout(String),
    #[error("tracefs is not mounted at /sys/kernel/tracing or /sys/kernel/debug/tracing")]
    TracefsNotMounted,
    #[error("mounting tracefs at {}: {source} (needs root)", target.display())]
    Mount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("uname: {0}")]
    Uname(#[source] io::Error),
}

/// Offsets of the address, port and family fields of `struct sock`, derived from the running
/// kernel's BTF (`valid` = 1).
pub fn sock_offsets() -> Result<SockCfg, KernelError> {
    let path = features::sys_path(VMLINUX_BTF);
    let data = std::fs::read(&path).map_err(|source| KernelError::BtfUnreadable {
        path: path.clone(),
        source,
    })?;
    let btf = btf::Btf::parse(&data).map_err(|e| KernelError::BtfFormat { path, why: e.0 })?;
    sock::offsets_from(&btf)
}
