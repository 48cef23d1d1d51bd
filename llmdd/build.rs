//! Builds the eBPF object (`llmdd-ebpf`) for `bpfel-unknown-none` and leaves it in OUT_DIR,
//! where `src/probe/object.rs` embeds it. This is the one build path: `cargo build`,
//! `cargo xtask build|demo|test` all come through here.
//!
//! The object is compiled with Debian's `rustc-web` (`/usr/bin/rustc`), whose
//! `libstd-rust-web-dev-bpf` package ships a prebuilt `core` for the BPF target, and linked by
//! `bpf-linker`. `cargo xtask setup` installs both. `LLMDD_BPF_RUSTC` points at another rustc
//! with a BPF sysroot; `LLMDD_BPF_OBJECT` supplies a prebuilt object instead.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest
        .parent()
        .context("llmdd has no parent directory")?
        .to_path_buf();
    let ebpf = root.join("llmdd-ebpf");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("llmdd.bpf.o");

    for p in [
        ebpf.join("src"),
        ebpf.join("Cargo.toml"),
        ebpf.join("Cargo.lock"),
        root.join("llmdd-common/src"),
        root.join("llmdd-common/Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-env-changed=LLMDD_BPF_OBJECT");
    println!("cargo:rerun-if-env-changed=LLMDD_BPF_RUSTC");

    if let Some(prebuilt) = env::var_os("LLMDD_BPF_OBJECT") {
        fs::copy(&prebuilt, &out).with_context(|| {
            format!(
                "copying LLMDD_BPF_OBJECT={}",
                Path::new(&prebuilt).display()
            )
        })?;
        return Ok(());
    }

    let rustc = env::var_os("LLMDD_BPF_RUSTC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/rustc"));
    const REMEDY: &str = "run `cargo xtask setup` (it installs Debian's rustc-web, \
        libstd-rust-web-dev-bpf and bpf-linker), or set LLMDD_BPF_OBJECT to a prebuilt object";
    if !rustc.exists() {
        bail!("the BPF compiler {} is missing: {REMEDY}", rustc.display());
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let mut path = env::var_os("PATH").unwrap_or_default();
    path = env::join_paths(std::iter::once(cargo_home.join("bin")).chain(env::split_paths(&path)))?;
    if which(&path, "bpf-linker").is_none() {
        bail!(
            "bpf-linker is not on PATH nor in {}/bin: {REMEDY}",
            cargo_home.display()
        );
    }

    let target_dir = root.join("target").join("bpf");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // A clean environment: nothing of the host build (target, rustflags, wrappers, cfgs) may
    // leak into the BPF build.
    cmd.env_clear()
        .env("PATH", &path)
        .env("CARGO_HOME", &cargo_home)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--manifest-path",
        ])
        .arg(ebpf.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for var in [
        "HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "TMPDIR",
        "CARGO_NET_OFFLINE",
    ] {
        if let Some(v) = env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let output = cmd.output().context("running cargo for the eBPF crate")?;
    if !output.status.success() {
        bail!(
            "building llmdd-ebpf failed ({}):\n{}\n{REMEDY}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/llmdd");
    fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

fn which(path: &std::ffi::OsStr, name: &str) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
