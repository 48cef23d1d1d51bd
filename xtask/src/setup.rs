//! The idempotent bootstrap. Each step checks first and acts only when something is missing,
//! so running it on a ready machine costs a few stat calls.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Debian packages: a rustc with a prebuilt `core` for bpfel-unknown-none, and the LLVM that
/// bpf-linker links against.
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
];
/// The bpf-linker release that builds with this machine's compilers and LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd.status().with_context(|| format!("starting: {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

fn apt_packages_missing() -> bool {
    !Path::new("/usr/bin/rustc").exists()
        || !Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib").exists()
        || !Path::new(LLVM_BIN).join("llvm-config").exists()
}

/// Brings the machine to a state where `cargo build` and the tests work.
pub fn ensure() -> Result<()> {
    if apt_packages_missing() {
        if !is_root() {
            bail!("the BPF toolchain is missing and installing it needs root: rerun as root");
        }
        run(
            Command::new("apt-get").arg("update").arg("-qq"),
            "apt-get update (the BPF toolchain is missing)",
        )?;
        run(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(APT_PACKAGES)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &format!("apt-get install {}", APT_PACKAGES.join(" ")),
        )?;
    }

    let linker = cargo_home().join("bin").join("bpf-linker");
    if !linker.exists() {
        let path = format!("{LLVM_BIN}:{}", env::var("PATH").unwrap_or_default());
        run(
            Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("PATH", path),
            &format!("cargo install bpf-linker {BPF_LINKER_VERSION} (built against LLVM 22; takes a few minutes once)"),
        )?;
    }

    // tmux drives the live terminal view in tests/tests/views_tui.rs.
    if is_root() && Command::new("tmux").arg("-V").output().is_err() {
        apt_install(&["tmux"], "the live view's end-to-end test")?;
    }

    ensure_netns_tools()?;
    ensure_open_mpi()?;
    ensure_speedscope()?;
    ensure_serving_stack()?;
    ensure_nixl()?;

    if is_root() && !Path::new(TRACEFS).join("events").exists() {
        run(
            Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]),
            &format!("mount tracefs at {TRACEFS}"),
        )?;
    }
    Ok(())
}

/// `apt-get install` of Debian packages, saying what they are for.
fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("apt-get install {} ({why})", packages.join(" ")),
    )
}

/// `ip` (iproute2) and `nsenter` (util-linux): tests/tests/multinode_merge.rs makes two
/// network namespaces act as two hosts.
fn ensure_netns_tools() -> Result<()> {
    let missing = ["ip", "nsenter"]
        .iter()
        .any(|t| Command::new(t).arg("-V").output().is_err());
    if is_root() && missing {
        apt_install(&["iproute2", "util-linux"], "the multi-host merge test")?;
    }
    Ok(())
}

/// Open MPI (mpirun, mpicc, libmpi): tests/tests/mpi_straggler.rs runs a real MPI job.
fn ensure_open_mpi() -> Result<()> {
    let missing = ["mpicc", "mpirun"]
        .iter()
        .any(|t| Command::new(t).arg("--version").output().is_err());
    if is_root() && missing {
        apt_install(&["openmpi-bin", "libopenmpi-dev"], "the Open MPI test")?;
    }
    Ok(())
}

/// The speedscope release the timeline render check loads `--trace` files into.
pub const SPEEDSCOPE_VERSION: &str = "1.25.0";

/// Where the speedscope web app is installed (inside the target directory, so a clean
/// checkout installs it once and later runs reuse it).
pub fn speedscope_dir() -> PathBuf {
    workspace_root().join("target/tools/speedscope")
}

/// Debian's chromium (headless) and the speedscope web app from npm:
/// tests/tests/views_speedscope.rs renders a `--trace` file offline and reads what it drew.
fn ensure_speedscope() -> Result<()> {
    if is_root() && !Path::new("/usr/bin/chromium").exists() {
        apt_install(&["chromium"], "the timeline render check")?;
    }
    let dir = speedscope_dir();
    if !dir
        .join("node_modules/speedscope/dist/release/index.html")
        .exists()
    {
        std::fs::create_dir_all(&dir)?;
        run(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .arg(format!("speedscope@{SPEEDSCOPE_VERSION}")),
            &format!("npm install speedscope@{SPEEDSCOPE_VERSION} (the timeline render check)"),
        )?;
    }
    Ok(())
}

/// vLLM's API server stack, pinned: Starlette on uvicorn with its standard extras (the
/// httptools parser and the uvloop event loop besides h11 and asyncio), as vLLM installs it.
const SERVING_STACK: &[&str] = &["uvicorn[standard]==0.55.0", "starlette==1.10.0"];

/// Where the serving stack's virtual environment lives (tests/tests/serving_uvicorn.rs).
pub fn serving_venv() -> PathBuf {
    workspace_root().join("target/tools/serving-venv")
}

/// A Python virtual environment with the pinned serving stack from PyPI (once).
fn ensure_serving_stack() -> Result<()> {
    ensure_venv(Venv {
        dir: serving_venv(),
        check: "import uvicorn, starlette, httptools, uvloop",
        what: "the real serving stack's test",
        pip_args: &[],
        packages: SERVING_STACK,
        size: "about 10 MB",
    })
}

/// A virtual environment under target/tools with pinned packages from PyPI.
struct Venv {
    dir: PathBuf,
    /// Python that must run in it for it to count as installed.
    check: &'static str,
    /// Who needs it (said while installing).
    what: &'static str,
    pip_args: &'static [&'static str],
    packages: &'static [&'static str],
    size: &'static str,
}

/// Makes the environment and installs its packages, unless its check already passes.
fn ensure_venv(v: Venv) -> Result<()> {
    let python = v.dir.join("bin/python");
    let ok = python.exists()
        && Command::new(&python)
            .args(["-c", v.check])
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    let rel = v
        .dir
        .strip_prefix(workspace_root())
        .unwrap_or(&v.dir)
        .display()
        .to_string();
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&v.dir),
        &format!("python3 -m venv {rel} ({})", v.what),
    )?;
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(v.pip_args)
            .args(v.packages),
        &format!(
            "pip install {}{} ({}, once)",
            v.pip_args
                .iter()
                .map(|a| format!("{a} "))
                .collect::<String>(),
            v.packages.join(" "),
            v.size
        ),
    )
}

/// NIXL from PyPI (llm-d's KV-cache transfer library, with UCX bundled), pinned, without its
/// dependencies (it needs only numpy for DRAM transfers; no GPU).
const NIXL: &[&str] = &["nixl-cu12==1.5.1", "numpy==2.4.6"];

/// Where NIXL's virtual environment lives (tests/tests/nixl_kv.rs).
pub fn nixl_venv() -> PathBuf {
    workspace_root().join("target/tools/nixl-venv")
}

/// A Python virtual environment with the pinned NIXL (once; about 340 MB).
fn ensure_nixl() -> Result<()> {
    ensure_venv(Venv {
        dir: nixl_venv(),
        check: "import nixl_cu12, numpy",
        what: "the real NIXL's test",
        pip_args: &["--no-deps"],
        packages: NIXL,
        size: "about 340 MB",
    })
}

/// A PyTorch release the Gloo tests run on (tests/tests/gloo_straggler.rs): its wheel and
/// the exact dependencies it names for Linux x86-64, pinned (it will not import without its
/// CUDA libraries, even on CPU).
pub struct TorchRelease {
    pub version: &'static str,
    wheels: &'static [&'static str],
    size: &'static str,
}

/// The pinned older release, whose Gloo context layout was first read by hand.
const TORCH_2_5_1: TorchRelease = TorchRelease {
    version: "2.5.1",
    wheels: &[
        "torch==2.5.1",
        "filelock==3.16.1",
        "typing-extensions==4.12.2",
        "networkx==3.4.2",
        "jinja2==3.1.4",
        "markupsafe==3.0.2",
        "fsspec==2024.10.0",
        "sympy==1.13.1",
        "mpmath==1.3.0",
        "nvidia-cuda-nvrtc-cu12==12.4.127",
        "nvidia-cuda-runtime-cu12==12.4.127",
        "nvidia-cuda-cupti-cu12==12.4.127",
        "nvidia-cudnn-cu12==9.1.0.70",
        "nvidia-cublas-cu12==12.4.5.8",
        "nvidia-cufft-cu12==11.2.1.3",
        "nvidia-curand-cu12==10.3.5.147",
        "nvidia-cusolver-cu12==11.6.1.9",
        "nvidia-cusparse-cu12==12.3.1.170",
        "nvidia-nccl-cu12==2.21.5",
        "nvidia-nvtx-cu12==12.4.127",
        "nvidia-nvjitlink-cu12==12.4.127",
    ],
    size: "about 3.3 GB to download, 4.5 GB installed",
};

/// The current PyPI release (what `pip install torch` gives), whose `gloo::Context` has no
/// vtable and packs rank and size at its start. Triton is left out: importing torch and
/// running Gloo do not load it.
const TORCH_2_15_0: TorchRelease = TorchRelease {
    version: "2.15.0",
    wheels: &[
        "torch==2.15.0",
        "filelock==4.3.2",
        "fsspec==2026.9.0",
        "jinja2==3.1.6",
        "markupsafe==3.0.4",
        "mpmath==1.3.0",
        "networkx==3.6.1",
        "setuptools==84.2.1",
        "sympy==1.14.0",
        "typing-extensions==4.16.0",
        "cuda-bindings==13.5.0",
        "cuda-pathfinder==1.9.1",
        "cuda-toolkit==13.2.2",
        "nvidia-cublas==13.4.1.3",
        "nvidia-cuda-cccl==13.3.5.0.6",
        "nvidia-cuda-cupti==13.2.86",
        "nvidia-cuda-nvrtc==13.2.86",
        "nvidia-cuda-runtime==13.2.86",
        "nvidia-cudnn-cu13==9.26.0.51",
        "nvidia-cufft==12.2.0.57",
        "nvidia-cufile==1.17.1.22",
        "nvidia-cusolver==12.2.0.11",
        "nvidia-cusparse==12.7.10.12",
        "nvidia-cusparselt-cu13==0.8.1",
        "nvidia-nccl-cu13==2.30.7",
        "nvidia-nvjitlink==13.5.37",
        "nvidia-nvshmem-cu13==3.7.2",
        "nvidia-nvtx==13.2.86",
    ],
    size: "about 2.6 GB to download, 4.3 GB installed",
};

/// Every PyTorch release the Gloo tests run on.
pub const TORCH_RELEASES: [&TorchRelease; 2] = [&TORCH_2_5_1, &TORCH_2_15_0];

/// Marks a PyTorch install as complete (an interrupted one is started over).
const TORCH_DONE: &str = ".llmdd-complete";

/// Where a release is installed: the directory to put on PYTHONPATH.
pub fn torch_site(version: &str) -> PathBuf {
    workspace_root()
        .join("target/tools")
        .join(format!("torch-{version}"))
        .join("site")
}

/// Installs a pinned PyTorch release under target/tools (once) and returns its site
/// directory. The wheels are removed once installed.
pub fn ensure_torch(r: &TorchRelease) -> Result<PathBuf> {
    let site = torch_site(r.version);
    if site.join(TORCH_DONE).exists() {
        return Ok(site);
    }
    let root = site
        .parent()
        .context("torch site has a parent")?
        .to_path_buf();
    let wheels = root.join("wheels");
    if site.exists() {
        std::fs::remove_dir_all(&site).context("removing an unfinished PyTorch install")?;
    }
    std::fs::create_dir_all(&wheels)?;
    let v = r.version;
    run(
        Command::new("python3")
            .args(["-m", "pip", "download", "-q", "--no-deps"])
            .args(["--only-binary=:all:", "-d"])
            .arg(&wheels)
            .args(r.wheels),
        &format!(
            "pip download torch {v} and its dependencies ({}, once)",
            r.size
        ),
    )?;
    let files: Vec<PathBuf> = std::fs::read_dir(&wheels)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .filter(|p| {
            // Only the pinned set (the directory may hold an earlier download's extras).
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                r.wheels.iter().any(|w| {
                    let (name, version) = w.split_once("==").unwrap_or((w, ""));
                    let name = name.replace('-', "_");
                    n.to_ascii_lowercase()
                        .starts_with(&format!("{}-{version}-", name.to_ascii_lowercase()))
                })
            })
        })
        .collect();
    run(
        Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--no-deps", "--no-index"])
            .arg("--target")
            .arg(&site)
            .args(&files),
        &format!("pip install torch {v} under target/tools"),
    )?;
    std::fs::write(site.join(TORCH_DONE), v)?;
    std::fs::remove_dir_all(&wheels).context("removing the downloaded wheels")?;
    Ok(site)
}

/// Every PyTorch release the Gloo tests need.
pub fn ensure_torches() -> Result<()> {
    for r in TORCH_RELEASES {
        ensure_torch(r)?;
    }
    Ok(())
}

/// bpftrace, the baseline of the overhead benchmark (Debian's package).
pub fn ensure_bpftrace() -> Result<()> {
    let found = Command::new("bpftrace").arg("--version").output().is_ok();
    if !found {
        apt_install(&["bpftrace"], "the benchmark's baseline")?;
    }
    Ok(())
}
