//! Errors of target discovery. Each names the process and the file involved and, where
//! there is one, the remedy.

use std::{io, path::PathBuf};

use super::maps::MapsFormatError;

/// Why a process cannot be inspected.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(
        "pid {pid}: no such process (it does not exist or has exited); check it with `ps -p {pid}`"
    )]
    NoSuchProcess { pid: u32 },

    #[error("pid {pid} is a thread of process {tgid}: pass the process id {tgid} instead")]
    NotAProcess { pid: u32, tgid: u32 },

    #[error("permission denied reading {} of pid {pid}: run llmdd as root (sudo), or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH", path.display())]
    PermissionDenied { pid: u32, path: PathBuf },

    #[error("reading {} of pid {pid}: {source}", path.display())]
    Io {
        pid: u32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("pid {pid}: /proc/{pid}/maps {source}")]
    MapsFormat {
        pid: u32,
        #[source]
        source: MapsFormatError,
    },

    #[error("pid {pid} maps no NCCL/RCCL, CUDA runtime, CUDA driver or HIP library (looked at {looked_at} mapped objects for the ncclAllReduce/cudaLaunchKernel/cuLaunchKernel/hipLaunchKernel family of symbols): check the pid; if the process loads them later (dlopen on first use), retry once it has started working")]
    NoSupportedLibrary { pid: u32, looked_at: usize },
}

impl TargetError {
    /// Classifies an I/O error on a `/proc/PID/...` file: a vanished process, missing
    /// privileges, or something else.
    pub(crate) fn from_io(pid: u32, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            io::ErrorKind::NotFound => TargetError::NoSuchProcess { pid },
            io::ErrorKind::PermissionDenied => TargetError::PermissionDenied { pid, path },
            _ if source.raw_os_error() == Some(libc::ESRCH) => TargetError::NoSuchProcess { pid },
            _ => TargetError::Io { pid, path, source },
        }
    }
}
