//! The overhead benchmark's target: loads a libnccl, then on each `run N` line from stdin
//! calls `ncclAllReduce` N times in a tight loop (a null communicator: the library returns at
//! once, so the loop measures call overhead, not NCCL) and prints `ns_per_call X`.
//! `quit` or end of input exits.

use std::{
    ffi::{c_int, c_void},
    io::{BufRead, Write},
    time::Instant,
};

use anyhow::{bail, Context, Result};

type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    *mut c_void,
    *mut c_void,
) -> c_int;

fn main() -> Result<()> {
    let path = std::env::args().nth(1).context("usage: callloop LIBNCCL")?;
    // SAFETY: loading a library whose initialisers are known (the fake or real NCCL).
    let lib =
        unsafe { libloading::Library::new(&path) }.with_context(|| format!("loading {path}"))?;
    // SAFETY: the symbol has the C signature above.
    let all_reduce: libloading::Symbol<AllReduce> =
        unsafe { lib.get(b"ncclAllReduce\0") }.context("ncclAllReduce not exported")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("run"), Some(n)) => {
                let n: u64 = n.parse().context("run N")?;
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
                out.flush()?;
            }
            (Some("quit"), _) => break,
            (None, _) => {}
            (Some(other), _) => bail!("unknown command {other}"),
        }
    }
    Ok(())
}
