//! The C/C++ probe target (`tests/fixtures/hooks`): `libllmddhooks.so` with a C function and
//! a C++ method, and `hooks_app`, which calls them (and, optionally, a CUDA runtime's
//! `cudaStreamSynchronize`) under `main -> outer_step -> middle_step`, built with frame
//! pointers. Compiled with g++ once per build directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::harness::{build_dir, workspace_root, Proc, Stream};

/// Where the built fixture lives: `hooks_app` and `libllmddhooks.so`.
pub struct Hooks {
    pub dir: PathBuf,
    pub app: PathBuf,
    pub lib: PathBuf,
}

/// Builds the fixture (once per test process; g++ is part of this machine kind).
pub fn build() -> Result<&'static Hooks> {
    static BUILT: OnceLock<Result<Hooks, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| compile().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("building the hooks fixture: {e}"))
}

fn compile() -> Result<Hooks> {
    let src = workspace_root().join("tests/fixtures/hooks");
    let dir = build_dir()
        .join("hooks")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lib = dir.join("libllmddhooks.so");
    let app = dir.join("hooks_app");
    let flags = [
        "-O1",
        "-g",
        "-fno-omit-frame-pointer",
        "-fno-optimize-sibling-calls",
    ];
    let run = |args: &[&str]| -> Result<()> {
        let status = Command::new("g++")
            .args(flags)
            .args(args)
            .status()
            .context("running g++ (install it with `apt-get install g++`)")?;
        if !status.success() {
            bail!("g++ {args:?} failed: {status}");
        }
        Ok(())
    };
    let s = |p: &Path| p.to_string_lossy().into_owned();
    run(&[
        "-fPIC",
        "-shared",
        "-o",
        &s(&lib),
        &s(&src.join("hooks_lib.cpp")),
    ])?;
    run(&[
        "-o",
        &s(&app),
        &s(&src.join("hooks_app.cpp")),
        &format!("-L{}", dir.display()),
        "-lllmddhooks",
        &format!("-Wl,-rpath,{}", dir.display()),
        "-ldl",
    ])?;
    Ok(Hooks { dir, app, lib })
}

/// The ground truth `hooks_app` prints when it is done.
#[derive(Debug, PartialEq, Eq)]
pub struct Done {
    pub iters: u64,
    pub c_sum: i64,
    pub m_sum: i64,
}

impl Hooks {
    /// Starts `hooks_app ITERS [CUDART]` and waits for READY; returns it with its pid.
    pub fn start(&self, iters: u64, cudart: Option<&Path>) -> Result<Proc> {
        self.start_with_env(iters, cudart, &[])
    }

    /// [`Hooks::start`] with environment variables (RANK, WORLD_SIZE, HOOKS_STEP_US,
    /// HOOKS_SLOW_US).
    pub fn start_with_env(
        &self,
        iters: u64,
        cudart: Option<&Path>,
        env: &[(&str, String)],
    ) -> Result<Proc> {
        self.start_program(&self.app, iters, cudart, env)
    }

    /// `hooks_app` under another command name (a copy next to it), for a test that finds
    /// it by name while other tests run theirs.
    pub fn start_named(&self, name: &str, iters: u64) -> Result<Proc> {
        let copy = self.dir.join(name);
        if !copy.exists() {
            std::fs::copy(&self.app, &copy)
                .with_context(|| format!("copying hooks_app to {}", copy.display()))?;
        }
        self.start_program(&copy, iters, None, &[])
    }

    fn start_program(
        &self,
        program: &Path,
        iters: u64,
        cudart: Option<&Path>,
        env: &[(&str, String)],
    ) -> Result<Proc> {
        let mut cmd = Command::new(program);
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        cmd.arg(iters.to_string());
        if let Some(c) = cudart {
            cmd.arg(c);
        }
        let mut p = Proc::spawn("hooks_app", cmd)?;
        p.wait_line("READY", Duration::from_secs(30), |s, l| {
            s == Stream::Stdout && l == "READY"
        })?;
        Ok(p)
    }
}

/// Releases a started `hooks_app` and waits for its DONE line.
pub fn finish(p: &mut Proc) -> Result<Done> {
    p.send_line("go")?;
    let line = p.wait_line("DONE", Duration::from_secs(300), |s, l| {
        s == Stream::Stdout && l.starts_with("DONE ")
    })?;
    let field = |k: &str| -> Result<i64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{k} in {line}"))
    };
    Ok(Done {
        iters: field("iters")? as u64,
        c_sum: field("c_sum")?,
        m_sum: field("m_sum")?,
    })
}
