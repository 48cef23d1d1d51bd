//! The per-process files of `/proc` other than `maps`: `status` (name, thread group,
//! namespace pid), `cmdline`, `environ` (rank hints) and the `exe` link.

use std::{
    ffi::OsStr,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use super::TargetError;

/// `/proc/PID/<file>`.
pub fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

/// Reads `/proc/PID/<file>` whole, with the error classified (vanished process, privileges).
pub fn read(pid: u32, file: &str) -> Result<Vec<u8>, TargetError> {
    let path = proc_path(pid, file);
    std::fs::read(&path).map_err(|e| TargetError::from_io(pid, path, e))
}

/// The facts of `/proc/PID/status` that discovery uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// `Name:` (the command name, at most 15 bytes, as `comm`).
    pub name: String,
    /// `Tgid:` (the process that this task belongs to).
    pub tgid: Option<u32>,
    /// `NSpid:`: the pid in each pid namespace, outermost first. The last one is the pid as
    /// the process sees itself (inside its container).
    pub ns_pids: Vec<u32>,
    /// `PPid:` (the parent, in llmdd's pid namespace).
    pub ppid: Option<u32>,
}

impl Status {
    /// The pid as seen inside the process's own (innermost) pid namespace.
    pub fn ns_pid(&self) -> Option<u32> {
        self.ns_pids.last().copied()
    }
}

/// Parses the content of `/proc/PID/status`.
pub fn parse_status(text: &str) -> Status {
    let mut st = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Name" => st.name = value.to_string(),
            "Tgid" => st.tgid = value.parse().ok(),
            "PPid" => st.ppid = value.parse().ok().filter(|&p| p != 0),
            "NSpid" => {
                st.ns_pids = value
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            }
            _ => {}
        }
    }
    st
}

/// Splits a NUL-separated `/proc` file (`cmdline`, `environ`) into its strings.
pub fn split_nul(raw: &[u8]) -> Vec<String> {
    raw.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// What a process's environment says about its place in a distributed job. Read from
/// `/proc/PID/environ`, which holds the environment the process started with (later
/// `setenv` calls are not visible there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RankHints {
    /// `RANK` (torchrun), else `OMPI_COMM_WORLD_RANK` (Open MPI).
    pub rank: Option<u32>,
    /// `LOCAL_RANK`, else `OMPI_COMM_WORLD_LOCAL_RANK`.
    pub local_rank: Option<u32>,
    /// `WORLD_SIZE`, else `OMPI_COMM_WORLD_SIZE`.
    pub world_size: Option<u32>,
    /// `CUDA_VISIBLE_DEVICES` (else `HIP_VISIBLE_DEVICES`, `ROCR_VISIBLE_DEVICES`), verbatim.
    pub cuda_visible_devices: Option<String>,
    /// What names the job the process belongs to, from its launcher's variables (see
    /// [`crate::launcher::job_key`]).
    pub job: Option<String>,
}

impl RankHints {
    /// Whether any hint is present.
    pub fn is_empty(&self) -> bool {
        *self == RankHints::default()
    }
}

/// Extracts the rank hints from the strings of `/proc/PID/environ` (`KEY=value`).
pub fn rank_hints<S: AsRef<str>>(environ: &[S]) -> RankHints {
    let get = |key: &str| {
        environ.iter().find_map(|kv| {
            let (k, v) = kv.as_ref().split_once('=')?;
            (k == key).then(|| v.to_string())
        })
    };
    // The first of `keys` that holds a number: torchrun's, then Open MPI's, then MPICH's
    // (Hydra's PMI), then Slurm's.
    let num = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| get(k).and_then(|v| v.trim().parse().ok()))
    };
    RankHints {
        rank: num(&["RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"]),
        local_rank: num(&[
            "LOCAL_RANK",
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "MPI_LOCALRANKID",
            "SLURM_LOCALID",
        ]),
        world_size: num(&[
            "WORLD_SIZE",
            "OMPI_COMM_WORLD_SIZE",
            "PMI_SIZE",
            "SLURM_NTASKS",
        ]),
        // AMD's runtimes read their own variables; the device mapping treats them alike.
        cuda_visible_devices: get("CUDA_VISIBLE_DEVICES")
            .or_else(|| get("HIP_VISIBLE_DEVICES"))
            .or_else(|| get("ROCR_VISIBLE_DEVICES")),
        job: crate::launcher::job_key(&get),
    }
}

/// Reads `len` bytes of process `pid`'s memory at `addr` (`/proc/PID/mem`, which needs the
/// same right as ptrace: root, or CAP_SYS_PTRACE). Fewer bytes come back when the range runs
/// into unmapped memory.
pub fn read_mem(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(proc_path(pid, "mem"))?;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], addr.saturating_add(got as u64)) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if got == 0 => return Err(e),
            Err(_) => break,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Reads one little-endian word of process `pid`'s memory.
pub fn read_word(pid: u32, addr: u64) -> io::Result<u64> {
    let b = read_mem(pid, addr, 8)?;
    let arr: [u8; 8] = b
        .as_slice()
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::UnexpectedEof, "short read"))?;
    Ok(u64::from_le_bytes(arr))
}

/// The executable of a process (as a path inside its mount namespace), when readable.
pub fn exe(pid: u32) -> Option<PathBuf> {
    let link = std::fs::read_link(proc_path(pid, "exe")).ok()?;
    let bytes = link.as_os_str().as_bytes();
    let bytes = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
    Some(PathBuf::from(OsStr::from_bytes(bytes)))
}

/// Where the host can open `path` as the target process sees it: through the process's
/// root directory, so files inside containers (other mount namespaces) resolve.
pub fn host_path(pid: u32, path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    proc_path(pid, "root").join(rel)
}

/// Process ids currently listed in `/proc`.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let text = "Name:\tpt_main_thread\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n\
                    Ngid:\t0\nPid:\t4242\nPPid:\t1\nNSpid:\t4242\t17\nNSpgid:\t4242\t17\n";
        let st = parse_status(text);
        assert_eq!(st.name, "pt_main_thread");
        assert_eq!(st.tgid, Some(4242));
        assert_eq!(st.ns_pids, [4242, 17]);
        assert_eq!(st.ns_pid(), Some(17));
    }

    #[test]
    fn status_of_this_process() {
        let raw = read(std::process::id(), "status").expect("own status");
        let st = parse_status(&String::from_utf8_lossy(&raw));
        assert_eq!(st.tgid, Some(std::process::id()));
        assert!(!st.name.is_empty());
        assert!(!st.ns_pids.is_empty());
    }

    #[test]
    fn rank_hints_prefer_torchrun_then_open_mpi() {
        let env = [
            "PATH=/usr/bin",
            "OMPI_COMM_WORLD_RANK=5",
            "OMPI_COMM_WORLD_SIZE=8",
            "OMPI_COMM_WORLD_LOCAL_RANK=1",
            "RANK=3",
            "CUDA_VISIBLE_DEVICES=2,3",
        ];
        let h = rank_hints(&env);
        assert_eq!(h.rank, Some(3));
        assert_eq!(h.world_size, Some(8));
        assert_eq!(h.local_rank, Some(1));
        assert_eq!(h.cuda_visible_devices.as_deref(), Some("2,3"));
        let none: [&str; 1] = ["RANK=not-a-number"];
        assert!(rank_hints(&none).is_empty());
        // MPICH (Hydra's PMI) and Slurm.
        let h = rank_hints(&["PMI_RANK=2", "PMI_SIZE=4", "MPI_LOCALRANKID=0"]);
        assert_eq!(
            (h.rank, h.world_size, h.local_rank),
            (Some(2), Some(4), Some(0))
        );
        let h = rank_hints(&["SLURM_PROCID=7", "SLURM_NTASKS=16", "SLURM_LOCALID=3"]);
        assert_eq!(
            (h.rank, h.world_size, h.local_rank),
            (Some(7), Some(16), Some(3))
        );
        let h = rank_hints(&["HIP_VISIBLE_DEVICES=1"]);
        assert_eq!(h.cuda_visible_devices.as_deref(), Some("1"));
    }

    #[test]
    fn splits_nul_separated_files() {
        assert_eq!(split_nul(b"python3\0-m\0vllm\0"), ["python3", "-m", "vllm"]);
        assert!(split_nul(b"").is_empty());
    }

    #[test]
    fn host_paths_go_through_the_process_root() {
        assert_eq!(
            host_path(42, Path::new("/usr/lib/libnccl.so.2")),
            Path::new("/proc/42/root/usr/lib/libnccl.so.2")
        );
    }

    #[test]
    fn missing_process_is_no_such_process() {
        // Above the largest possible pid_max, so never a live process.
        match read(i32::MAX as u32 - 1, "status") {
            Err(TargetError::NoSuchProcess { pid }) => assert_eq!(pid, i32::MAX as u32 - 1),
            other => panic!("expected NoSuchProcess, got {other:?}"),
        }
    }
}
