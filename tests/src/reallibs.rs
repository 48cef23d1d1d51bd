//! The genuine NCCL and CUDA runtime libraries, from NVIDIA's PyPI wheels, for tests that
//! check llmdd against real binaries rather than the fake stand-ins.
//!
//! [`real_libs`] downloads the pinned wheels once with pip (hash-checked), extracts
//! `libnccl.so.2` and `libcudart.so.12`, and keeps them under `<workspace>/.cache/reallibs`
//! (or `$LLMDD_REALLIBS_DIR`). Concurrent callers, in threads or processes, serialise on a
//! lock file; files appear by atomic rename, so a present file is always complete.

use std::{
    fs::{self, File},
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::harness::{built, workspace_root, Proc, Stream};

/// One library inside one pinned wheel.
#[derive(Clone, Copy, Debug)]
pub struct WheelLib {
    pub package: &'static str,
    pub version: &'static str,
    /// sha256 of the x86-64 wheel on PyPI (pip refuses anything else).
    pub sha256: &'static str,
    /// Path of the library inside the wheel (a zip file).
    pub member: &'static str,
}

impl WheelLib {
    /// The library's file name.
    pub fn file_name(&self) -> &'static str {
        self.member.rsplit('/').next().unwrap_or(self.member)
    }
}

/// NCCL 2.32.3 for CUDA 12.
pub const NCCL: WheelLib = WheelLib {
    package: "nvidia-nccl-cu12",
    version: "2.32.3",
    sha256: "bb94b2348e4861d5e8aa00b36c3d12d9bdf9c6369b82cbb723de0b582280a21c",
    member: "nvidia/nccl/lib/libnccl.so.2",
};

/// The CUDA 12.9 runtime.
pub const CUDART: WheelLib = WheelLib {
    package: "nvidia-cuda-runtime-cu12",
    version: "12.9.79",
    sha256: "25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3",
    member: "nvidia/cuda_runtime/lib/libcudart.so.12",
};

/// vLLM 0.34.0's compiled extension, for its symbol table (vLLM's custom all-reduce is
/// exported from it; nothing in it runs here without a GPU).
pub const VLLM: WheelLib = WheelLib {
    package: "vllm",
    version: "0.34.0",
    sha256: "79ca4b3cd74aec08c4bf476bdf0cb15735b605ae5368526a2faae1e30f044ca2",
    member: "vllm/_C_stable_libtorch.abi3.so",
};

/// vLLM's extension (`_C_stable_libtorch.abi3.so`), downloading the wheel (about 240 MB)
/// and extracting it on first use.
pub fn vllm_extension() -> Result<PathBuf> {
    ensure(&cache_dir(), &VLLM)
}

/// Offsets of `comm->rank` and `comm->nRanks` in NCCL 2.32.3, read by hand from the
/// disassembly of `pncclCommUserRank` (`mov 0x1206e8(%r13),%eax; ...; mov %eax,(%r14)`) and
/// `pncclCommCount`.
pub const NCCL_RANK_OFF: u32 = 0x1206e8;
pub const NCCL_NRANKS_OFF: u32 = 0x1206ec;
/// `NCCL_VERSION_CODE` of 2.32.3.
pub const NCCL_VERSION_CODE: u32 = 23203;

/// Paths of the extracted libraries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealLibs {
    pub nccl: PathBuf,
    pub cudart: PathBuf,
}

/// Where the libraries are kept.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LLMDD_REALLIBS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache").join("reallibs"))
}

/// The real libraries, downloading and extracting them on first use.
pub fn real_libs() -> Result<RealLibs> {
    let dir = cache_dir();
    Ok(RealLibs {
        nccl: ensure(&dir, &NCCL)?,
        cudart: ensure(&dir, &CUDART)?,
    })
}

/// An exclusive lock on a file, released on drop (when the file closes).
struct Lock {
    _file: File,
}

impl Lock {
    fn take(path: &Path) -> Result<Lock> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Lock { _file: f });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

/// The extracted library `lib` under `dir`, fetched if absent.
fn ensure(dir: &Path, lib: &WheelLib) -> Result<PathBuf> {
    let home = dir.join(format!("{}-{}", lib.package, lib.version));
    let dest = home.join(lib.file_name());
    if dest.is_file() {
        return Ok(dest);
    }
    fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let _lock = Lock::take(&dir.join(".lock"))?;
    if dest.is_file() {
        return Ok(dest); // another caller finished while we waited
    }

    let work = home.join(format!(".work-{}", std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = download_and_extract(lib, &work, &dest);
    let _ = fs::remove_dir_all(&work);
    result.map(|()| dest)
}

/// Runs a command, returning stdout, or an error with its stderr.
fn run(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!("{what} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn download_and_extract(lib: &WheelLib, work: &Path, dest: &Path) -> Result<()> {
    run(
        "checking for python3 with pip (needed to download the real libraries; apt-get install python3-pip)",
        Command::new("python3").args(["-m", "pip", "--version"]),
    )?;

    let req = work.join("requirements.txt");
    fs::write(
        &req,
        format!(
            "{}=={} --hash=sha256:{}\n",
            lib.package, lib.version, lib.sha256
        ),
    )
    .with_context(|| format!("writing {}", req.display()))?;
    let wheels = work.join("wheels");
    run(
        &format!(
            "downloading {}=={} from PyPI with pip (this test needs the network, or a pip index \
             or find-links that has the wheel)",
            lib.package, lib.version
        ),
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--no-input",
            ])
            .args([
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
                "--retries",
                "2",
                "--timeout",
                "60",
            ])
            .args([
                "--platform",
                "manylinux_2_28_x86_64",
                "--platform",
                "manylinux_2_27_x86_64",
                "--platform",
                "manylinux_2_17_x86_64",
            ])
            .args([
                "--platform",
                "manylinux2014_x86_64",
                "--python-version",
                "3.12",
            ])
            .arg("--dest")
            .arg(&wheels)
            .arg("-r")
            .arg(&req),
    )?;
    let wheel = fs::read_dir(&wheels)
        .with_context(|| format!("listing {}", wheels.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| {
            format!(
                "pip reported success but left no wheel in {}",
                wheels.display()
            )
        })?;

    // A wheel is a zip file; extract the one member, streaming.
    let tmp = work.join(lib.file_name());
    run(
        &format!("extracting {} from {}", lib.member, wheel.display()),
        Command::new("python3")
            .args([
                "-c",
                "import shutil, sys, zipfile\n\
                 with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
                 \x20   shutil.copyfileobj(src, dst, 1 << 20)\n",
            ])
            .arg(&wheel)
            .arg(lib.member)
            .arg(&tmp),
    )?;
    fs::rename(&tmp, dest)
        .with_context(|| format!("moving {} to {}", tmp.display(), dest.display()))?;
    Ok(())
}

/// Starts `reallib-caller` on the real libraries (`--iters ITERS`) and waits until it has
/// loaded them; it calls into them when it is sent a line.
pub fn start_caller(libs: &RealLibs, iters: u64) -> Result<Proc> {
    let mut cmd = Command::new(built("reallib-caller"));
    cmd.args(["--iters", &iters.to_string(), "--nccl"])
        .arg(&libs.nccl)
        .arg("--cudart")
        .arg(&libs.cudart);
    let mut caller = Proc::spawn("reallib-caller", cmd)?;
    caller.wait_line("READY", std::time::Duration::from_secs(60), |s, l| {
        s == Stream::Stdout && l == "READY"
    })?;
    Ok(caller)
}
