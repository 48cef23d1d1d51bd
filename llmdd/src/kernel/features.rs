//! Checks of kernel features the probes need, for `llmdd doctor` and for attaching: uprobes,
//! tracefs, BPF ring buffers, BTF.

use std::{
    ffi::{CStr, CString},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use super::{KernelError, VMLINUX_BTF};

/// Where the uprobe PMU appears when the kernel has `CONFIG_UPROBE_EVENTS`.
pub const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe";
/// The usual tracefs mount point, and the legacy one under debugfs.
pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const TRACEFS_LEGACY: &str = "/sys/kernel/debug/tracing";
/// `TRACEFS_MAGIC` (statfs f_type).
const TRACEFS_MAGIC: i64 = 0x7472_6163;

/// Environment variable that moves the sysfs paths the feature checks read under another
/// root, so that a kernel without BTF or uprobes can be simulated (tests, and checking what
/// llmdd would say on such a node).
pub const SYSFS_ROOT_ENV: &str = "LLMDD_SYSFS_ROOT";

/// A /sys path as the feature checks read it (see [`SYSFS_ROOT_ENV`]).
pub fn sys_path(path: &str) -> PathBuf {
    match std::env::var_os(SYSFS_ROOT_ENV) {
        Some(root) if !root.is_empty() => Path::new(&root).join(path.trim_start_matches('/')),
        _ => PathBuf::from(path),
    }
}

/// Whether the kernel exposes its BTF (needed for socket addresses).
pub fn btf_available() -> bool {
    std::fs::File::open(sys_path(VMLINUX_BTF)).is_ok()
}

/// Whether the perf uprobe PMU exists (uprobes can be attached).
pub fn uprobes_supported() -> bool {
    sys_path(UPROBE_PMU).exists()
}

/// What attaching cannot do without: uprobes. `Err` is one line with the remedy.
pub fn preflight() -> Result<(), String> {
    if !uprobes_supported() {
        return Err(format!(
            "this kernel has no uprobes ({} is missing: needs CONFIG_UPROBE_EVENTS=y), so \
             llmdd cannot trace user-space calls; run llmdd on a kernel with uprobes \
             (`llmdd doctor` lists what this one has)",
            sys_path(UPROBE_PMU).display()
        ));
    }
    Ok(())
}

/// Whether a tracefs is mounted at `path`.
fn is_tracefs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == TRACEFS_MAGIC
    }
}

/// The mounted tracefs: `/sys/kernel/tracing`, else `/sys/kernel/debug/tracing`.
pub fn tracefs_root() -> Result<PathBuf, KernelError> {
    [TRACEFS, TRACEFS_LEGACY]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_tracefs(p))
        .ok_or(KernelError::TracefsNotMounted)
}

/// The mounted tracefs, mounting it at `/sys/kernel/tracing` first when it is not (needs
/// CAP_SYS_ADMIN).
pub fn mount_tracefs() -> Result<PathBuf, KernelError> {
    if let Ok(root) = tracefs_root() {
        return Ok(root);
    }
    let target = PathBuf::from(TRACEFS);
    let c_target: &CStr = c"/sys/kernel/tracing";
    let fs: &CStr = c"tracefs";
    // SAFETY: every pointer is a NUL-terminated static string; no mount data.
    let rc = unsafe {
        libc::mount(
            fs.as_ptr(),
            c_target.as_ptr(),
            fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(KernelError::Mount {
            target,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(target)
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> Result<String, KernelError> {
    // SAFETY: uname fills the zeroed struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(KernelError::Uname(std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel NUL-terminates release within its array.
    let release = unsafe { CStr::from_ptr(u.release.as_ptr()) };
    Ok(release.to_string_lossy().into_owned())
}

/// `(major, minor, patch)` of a release string such as `6.18.44-fc-v595`.
pub fn parse_release(release: &str) -> Option<(u32, u32, u32)> {
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|s| s.parse::<u32>().ok());
    let major = nums.next()??;
    let minor = nums.next()??;
    let patch = nums.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// The running kernel's version.
pub fn kernel_version() -> Option<(u32, u32, u32)> {
    kernel_release().ok().as_deref().and_then(parse_release)
}

/// Whether BPF ring buffers are available (Linux 5.8 and later).
pub fn ringbuf_supported() -> bool {
    kernel_version().is_some_and(|(major, minor, _)| (major, minor) >= (5, 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_strings() {
        assert_eq!(parse_release("6.18.44-fc-v595"), Some((6, 18, 44)));
        assert_eq!(parse_release("5.8.0"), Some((5, 8, 0)));
        assert_eq!(parse_release("4.19-rc1"), Some((4, 19, 0)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn this_kernel_answers() {
        let release = kernel_release().expect("uname works");
        assert!(parse_release(&release).is_some(), "{release}");
        // Facts of the machine the tests run on, not assumptions of the code: the call
        // just has to answer without panicking.
        let _ = (
            ringbuf_supported(),
            uprobes_supported(),
            btf_available(),
            tracefs_root(),
        );
        assert!(!is_tracefs(Path::new("/")));
    }
}
