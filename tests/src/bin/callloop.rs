//! A target for the overhead benchmark and the lazy-loading test. Loads the libraries named
//! on the command line, prints `READY`, then obeys lines on stdin:
//! - `load PATH`: dlopen another library (as PyTorch opens NCCL lazily); prints `LOADED`.
//! - `run N`: call `ncclAllReduce` N times in a tight loop (a null communicator: the library
//!   returns at once, so the loop measures call overhead, not NCCL); prints `ns_per_call X`.
//! - `query N`: call `cudaEventQuery` (a null event) N times in a tight loop, the hot polling
//!   call that the overhead budget duty-cycles; prints `ns_per_call X`.
//! - `pace N RATE`: call `ncclAllReduce` N times at RATE calls per second (spinning between
//!   calls, no sleeps: the pacing must hold at rates above the timer's resolution); prints
//!   `ns_per_call X` (the mean time per call including the pacing).
//! - `hip N`: call `hipLaunchKernel` N times, then `hipMalloc` once (the fake HIP runtime);
//!   prints `ns_per_call X`.
//! - `quit` (or end of input): exit.

use std::{
    ffi::{c_int, c_void},
    io::{BufRead, Write},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use libloading::Library;

type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    *mut c_void,
    *mut c_void,
) -> c_int;

fn load(path: &str) -> Result<Library> {
    // SAFETY: loading a library whose initialisers are known (the fake or real NCCL/CUDA).
    unsafe { Library::new(path) }.with_context(|| format!("loading {path}"))
}

fn main() -> Result<()> {
    let mut libs: Vec<Library> = std::env::args()
        .skip(1)
        .map(|p| load(&p))
        .collect::<Result<_>>()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("load"), Some(path)) => {
                libs.push(load(path)?);
                writeln!(out, "LOADED")?;
            }
            (Some("run"), Some(n)) => {
                let n: u64 = n.parse().context("run N")?;
                // SAFETY: the symbol has the C signature above.
                let all_reduce = libs
                    .iter()
                    .find_map(|l| unsafe { l.get::<AllReduce>(b"ncclAllReduce\0") }.ok())
                    .context("no loaded library exports ncclAllReduce")?;
                let start = Instant::now();
                let mut sink = 0;
                for _ in 0..n {
                    // SAFETY: null buffers and communicator are valid arguments (rejected).
                    sink ^= unsafe {
                        all_reduce(
                            std::ptr::null(),
                            std::ptr::null_mut(),
                            1024,
                            7,
                            0,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                        )
                    };
                }
                let ns = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
                writeln!(out, "ns_per_call {ns:.2} rc {sink}")?;
            }
            (Some("pace"), Some(n)) => {
                let n: u64 = n.parse().context("pace N RATE")?;
                let rate: f64 = words
                    .next()
                    .context("pace N RATE")?
                    .parse()
                    .context("pace N RATE")?;
                // SAFETY: the symbol has the C signature above.
                let all_reduce = libs
                    .iter()
                    .find_map(|l| unsafe { l.get::<AllReduce>(b"ncclAllReduce\0") }.ok())
                    .context("no loaded library exports ncclAllReduce")?;
                let rate = rate.max(1.0);
                let start = Instant::now();
                let mut sink = 0;
                for i in 0..n {
                    let due = std::time::Duration::from_secs_f64(i as f64 / rate);
                    while start.elapsed() < due {
                        std::hint::spin_loop();
                    }
                    // SAFETY: as in `run`.
                    sink ^= unsafe {
                        all_reduce(
                            std::ptr::null(),
                            std::ptr::null_mut(),
                            1024,
                            7,
                            0,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                        )
                    };
                }
                let ns = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
                writeln!(out, "ns_per_call {ns:.2} rc {sink}")?;
            }
            (Some("query"), Some(n)) => {
                let n: u64 = n.parse().context("query N")?;
                type Query = unsafe extern "C" fn(*mut c_void) -> c_int;
                // SAFETY: the symbol has the C signature above.
                let query = libs
                    .iter()
                    .find_map(|l| unsafe { l.get::<Query>(b"cudaEventQuery\0") }.ok())
                    .context("no loaded library exports cudaEventQuery")?;
                let start = Instant::now();
                let mut sink = 0;
                for _ in 0..n {
                    // SAFETY: a null event is a valid argument (an unknown event).
                    sink ^= unsafe { query(std::ptr::null_mut()) };
                }
                let ns = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
                writeln!(out, "ns_per_call {ns:.2} rc {sink}")?;
            }
            (Some("hip"), Some(n)) => {
                let n: u64 = n.parse().context("hip N")?;
                #[repr(C)]
                #[derive(Clone, Copy)]
                struct Dim3 {
                    x: u32,
                    y: u32,
                    z: u32,
                }
                type Launch = unsafe extern "C" fn(
                    *const c_void,
                    Dim3,
                    Dim3,
                    *mut *mut c_void,
                    usize,
                    *mut c_void,
                ) -> c_int;
                type Malloc = unsafe extern "C" fn(*mut *mut c_void, usize) -> c_int;
                // SAFETY: the symbols have the C signatures above.
                let launch = libs
                    .iter()
                    .find_map(|l| unsafe { l.get::<Launch>(b"hipLaunchKernel\0") }.ok())
                    .context("no loaded library exports hipLaunchKernel")?;
                let malloc = libs
                    .iter()
                    .find_map(|l| unsafe { l.get::<Malloc>(b"hipMalloc\0") }.ok())
                    .context("no loaded library exports hipMalloc")?;
                let d = Dim3 { x: 1, y: 1, z: 1 };
                let start = Instant::now();
                let mut sink = 0;
                for _ in 0..n {
                    // SAFETY: the fake runtime ignores the kernel and its arguments.
                    sink ^= unsafe {
                        launch(
                            std::ptr::null(),
                            d,
                            d,
                            std::ptr::null_mut(),
                            0,
                            std::ptr::null_mut(),
                        )
                    };
                }
                let ns = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
                let mut ptr = std::ptr::null_mut();
                // SAFETY: a valid out-pointer.
                sink ^= unsafe { malloc(&mut ptr, 1 << 20) };
                writeln!(out, "ns_per_call {ns:.2} rc {sink}")?;
            }
            (Some("quit"), _) => break,
            (None, _) => {}
            (Some(other), _) => bail!("unknown command {other}"),
        }
        out.flush()?;
    }
    Ok(())
}
