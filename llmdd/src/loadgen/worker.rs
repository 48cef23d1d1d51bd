//! One rank of the load generator: a process on one GPU, in one NCCL communicator with the
//! other ranks (`ncclCommInitRank` with the parent's unique id), running the sweep and
//! printing one JSON line per measured point. Everything CUDA goes through cudarc with the
//! libraries opened at run time.

use std::{io::Write, sync::Arc, time::Instant};

use anyhow::{bail, Context, Result};
use cudarc::{
    driver::{CudaContext, CudaSlice, CudaStream},
    nccl::{Comm, Id, ReduceOp},
};
use serde::{Deserialize, Serialize};

use super::sweep::Op;

/// What a worker is told (JSON in `LLMDD_LOADGEN_PLAN`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub rank: usize,
    pub world: usize,
    pub device: usize,
    /// The unique id, as 128 bytes in hex.
    pub uid: String,
    pub ops: Vec<Op>,
    pub sizes: Vec<u64>,
    pub warmup: u32,
    pub iters: u32,
    /// (rank, microseconds): that rank sleeps this long before each collective.
    pub delay: Option<(usize, u64)>,
    /// Seconds to wait after the communicator is up, before the sweep (time to attach).
    pub start_delay_s: f64,
}

/// One line of a worker's output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measured {
    pub rank: usize,
    pub op: Op,
    pub bytes: u64,
    pub times_ns: Vec<u64>,
}

pub fn uid_to_hex(id: &Id) -> String {
    id.internal()
        .iter()
        .map(|b| format!("{:02x}", *b as u8))
        .collect()
}

fn uid_from_hex(s: &str) -> Result<Id> {
    if s.len() != 256 {
        bail!("a unique id is 128 bytes in hex");
    }
    let mut raw = [0 as std::ffi::c_char; 128];
    for (i, r) in raw.iter_mut().enumerate() {
        *r = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).context("unique id hex")?
            as std::ffi::c_char;
    }
    Ok(Id::uninit(raw))
}

fn nccl<T>(r: Result<T, cudarc::nccl::result::NcclError>, what: &str) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("{what}: {e:?}"))
}

struct Buffers {
    send: CudaSlice<f32>,
    recv: CudaSlice<f32>,
}

fn run_once(comm: &Comm, op: Op, b: &mut Buffers, elems: usize, world: usize) -> Result<()> {
    match op {
        Op::AllReduce => {
            let (s, r) = (b.send.slice(..elems), &mut b.recv.slice_mut(..elems));
            nccl(comm.all_reduce(&s, r, &ReduceOp::Sum), "ncclAllReduce")?;
        }
        Op::AllGather => {
            let per = elems / world;
            let (s, r) = (b.send.slice(..per), &mut b.recv.slice_mut(..per * world));
            nccl(comm.all_gather(&s, r), "ncclAllGather")?;
        }
        Op::ReduceScatter => {
            let per = elems / world;
            let (s, r) = (b.send.slice(..per * world), &mut b.recv.slice_mut(..per));
            nccl(
                comm.reduce_scatter(&s, r, &ReduceOp::Sum),
                "ncclReduceScatter",
            )?;
        }
        Op::Broadcast => {
            let s = b.send.slice(..elems);
            let r = &mut b.recv.slice_mut(..elems);
            nccl(comm.broadcast(Some(&s), r, 0), "ncclBroadcast")?;
        }
    }
    Ok(())
}

fn sync(stream: &Arc<CudaStream>) -> Result<()> {
    stream
        .synchronize()
        .map_err(|e| anyhow::anyhow!("cuStreamSynchronize: {e:?}"))
}

/// Runs the plan; results go to stdout as JSON lines, then `DONE`.
pub fn run(plan: &Plan) -> Result<()> {
    let ctx = CudaContext::new(plan.device)
        .map_err(|e| anyhow::anyhow!("opening GPU {}: {e:?}", plan.device))?;
    let stream = ctx.default_stream();
    let id = uid_from_hex(&plan.uid)?;
    let comm = nccl(
        Comm::from_rank(stream.clone(), plan.rank, plan.world, id),
        "ncclCommInitRank",
    )?;
    let max_elems = plan.sizes.iter().copied().max().unwrap_or(4) as usize / 4;
    let alloc = |n: usize| -> Result<CudaSlice<f32>> {
        stream.alloc_zeros::<f32>(n.max(1)).map_err(|e| {
            anyhow::anyhow!(
                "allocating {} MiB on GPU {}: {e:?}",
                (n * 4) >> 20,
                plan.device
            )
        })
    };
    let mut bufs = Buffers {
        send: alloc(max_elems)?,
        recv: alloc(max_elems)?,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {}", std::process::id())?;
    out.flush()?;
    if plan.start_delay_s > 0.0 {
        std::thread::sleep(std::time::Duration::from_secs_f64(plan.start_delay_s));
    }
    let delay = plan
        .delay
        .filter(|(r, _)| *r == plan.rank)
        .map(|(_, us)| std::time::Duration::from_micros(us));
    for &op in &plan.ops {
        for &bytes in &plan.sizes {
            let elems = (bytes / 4) as usize;
            let elems = match op {
                Op::AllGather | Op::ReduceScatter => elems / plan.world * plan.world,
                _ => elems,
            };
            if elems == 0 {
                continue;
            }
            // Line the ranks up: one small all-reduce, waited for.
            run_once(&comm, Op::AllReduce, &mut bufs, 1, plan.world)?;
            sync(&stream)?;
            for _ in 0..plan.warmup {
                run_once(&comm, op, &mut bufs, elems, plan.world)?;
            }
            sync(&stream)?;
            let mut times = Vec::with_capacity(plan.iters as usize);
            for _ in 0..plan.iters {
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                let t0 = Instant::now();
                run_once(&comm, op, &mut bufs, elems, plan.world)?;
                sync(&stream)?;
                times.push(t0.elapsed().as_nanos() as u64);
            }
            let m = Measured {
                rank: plan.rank,
                op,
                bytes: elems as u64 * 4,
                times_ns: times,
            };
            writeln!(out, "{}", serde_json::to_string(&m)?)?;
            out.flush()?;
        }
    }
    writeln!(out, "DONE")?;
    out.flush()?;
    drop(comm);
    Ok(())
}
