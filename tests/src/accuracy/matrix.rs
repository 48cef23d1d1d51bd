//! The scenarios of a matrix, from a seed: which rank is slow, by how much, how often, in
//! which op and shape, and when llmdd attaches, all vary with it (print the seed to rerun a
//! matrix). Magnitudes and frequencies are drawn from the ranges the issue names: stragglers
//! late in every 1st to 20th step by 2 to 200 ms, pipelines with a stage 2 to 8 ms slower
//! per micro-batch, stalls of 1.5 to 3 s.

use super::{Attach, Expect, JobKind, Scenario};

/// How much of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// The part that runs in CI (about a minute).
    Quick,
    /// Everything (`cargo xtask accuracy`), the Open MPI case `mpi_repeats` times.
    Full { mpi_repeats: u32 },
}

/// SplitMix64: small, seedable, good enough to pick parameters.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn sim(name: String, jobs: Vec<Vec<String>>, attach: Attach, expect: Expect) -> Scenario {
    Scenario {
        name,
        job: JobKind::Sim { jobs, attach },
        expect,
    }
}

fn attach_label(a: Attach) -> String {
    match a {
        Attach::BeforeInit => "before init".into(),
        Attach::BeforeFault => "before".into(),
        Attach::During { after_ms } => format!("during +{after_ms}ms"),
    }
}

/// A data-parallel straggler: `ranks` ranks, `op`, rank `slow` late by `delay_ms` every
/// `every` steps. Enough steps for 10 to 40 late instances, as long as the lateness adds
/// up to a few seconds at most.
fn straggler(
    ranks: u64,
    op: &str,
    slow: u64,
    delay_ms: u64,
    every: u64,
    attach: Attach,
) -> Scenario {
    let late = (4_000 / delay_ms).clamp(10, 40);
    // Attached during the run: as many steps more as run before llmdd is there.
    let before = match attach {
        Attach::During { after_ms } => after_ms / 3 + after_ms / (delay_ms * every).max(1),
        _ => 0,
    };
    let steps = (late * every).max(150) + before;
    let name = format!(
        "straggler {ranks}r {} r{slow} {delay_ms}ms/{every} {}",
        op.split(':').next().unwrap_or(op),
        attach_label(attach)
    );
    sim(
        name,
        vec![args(&[
            "--ranks",
            &ranks.to_string(),
            "--steps",
            &steps.to_string(),
            "--compute-us",
            "3000",
            "--collective",
            op,
            "--straggler",
            &format!("{slow}:{delay_ms}:{every}"),
        ])],
        attach,
        Expect::Straggler {
            job: 0,
            rank: slow as usize,
            may_withhold: false,
        },
    )
}

/// A pipeline of `stages` stages (one rank each, or `tp` ranks each), stage `slow` taking
/// `extra_ms` more per micro-batch; `collective`: a step-end all-reduce (fill and drain).
/// With tensor parallelism llmdd attaches before the communicators are made (a pipeline's
/// communicators are of one shape, told apart only then).
fn pipeline(stages: u64, tp: u64, slow: Option<u64>, extra_ms: u64, collective: bool) -> Scenario {
    let attach = if tp > 1 {
        Attach::BeforeInit
    } else {
        Attach::BeforeFault
    };
    let micro = 4u64;
    let base_us = 2000u64;
    let step_ms = micro * (base_us / micro / 1000).max(1) + micro * slow.map_or(0, |_| extra_ms);
    let steps = (2_500 / step_ms.max(1)).clamp(80, 400);
    let mut a = args(&[
        "--ranks",
        &(stages * tp).to_string(),
        "--pipeline",
        "--microbatches",
        &micro.to_string(),
        "--compute-us",
        &base_us.to_string(),
        "--steps",
        &steps.to_string(),
        "--tp",
        &tp.to_string(),
    ]);
    if collective {
        a.extend(args(&["--collective", "allreduce:16K"]));
    }
    let shape = if tp > 1 {
        format!("{stages}x{tp}tp")
    } else {
        format!("{stages}st")
    };
    let end = if collective { "+ar" } else { "" };
    match slow {
        Some(s) => {
            a.extend(args(&[
                "--imbalance",
                &format!("{s}:{}", extra_ms * micro * 1000),
            ]));
            let ranks: Vec<usize> = (0..tp).map(|t| (s * tp + t) as usize).collect();
            sim(
                format!("pipeline {shape}{end} stage {s} +{extra_ms}ms/mb"),
                vec![a],
                attach,
                Expect::Pipeline {
                    job: 0,
                    ranks,
                    may_withhold: false,
                },
            )
        }
        None => sim(
            format!("pipeline {shape}{end} balanced"),
            vec![a],
            attach,
            Expect::Nothing,
        ),
    }
}

fn clean(name: &str, a: &[&str], attach: Attach) -> Scenario {
    let mut a = args(a);
    if let Attach::During { after_ms } = attach {
        a.extend(args(&["--steps", &(200 + after_ms / 2).to_string()]));
    }
    sim(
        format!("clean {name} {}", attach_label(attach)),
        vec![a],
        attach,
        Expect::Nothing,
    )
}

fn mpi(rng: &mut Rng, i: u32) -> Scenario {
    let slow = rng.below(4) as u32;
    let delay_ms = rng.range(10, 20) as u32;
    Scenario {
        name: format!("open mpi 4r r{slow} {delay_ms}ms/1 during #{}", i + 1),
        job: JobKind::Mpi {
            steps: 300,
            compute_us: 2000,
            slow,
            delay_us: delay_ms * 1000,
            attach_after_ms: rng.range(300, 900),
            hang_step: None,
        },
        expect: Expect::Straggler {
            job: 0,
            rank: slow as usize,
            may_withhold: false,
        },
    }
}

/// The real Open MPI job hung before llmdd attaches: one rank stopped for good before a
/// step's all-reduce, the others busy-polling inside it.
fn mpi_hang(rng: &mut Rng) -> Scenario {
    let slow = rng.below(4) as u32;
    let step = rng.range(3, 30) as u32;
    Scenario {
        name: format!("open mpi 4r r{slow} hung at step {step}, attached after"),
        job: JobKind::Mpi {
            steps: 300,
            compute_us: 2000,
            slow,
            delay_us: 0,
            attach_after_ms: rng.range(200, 1500),
            hang_step: Some(step),
        },
        expect: Expect::StallAtAttach {
            job: 0,
            rank: slow as usize,
        },
    }
}

/// A simulated job hung before llmdd attaches (rank `r` stopped for `ms` before a step's
/// collectives, llmdd attached a second into it; the job then goes on to its end).
fn sim_hang(rng: &mut Rng, ranks: u64, op: &str) -> Scenario {
    let r = rng.below(ranks);
    let ms = rng.range(6000, 9000);
    sim(
        format!(
            "hung at attach {ranks}r {} r{r} {ms}ms",
            op.split(':').next().unwrap_or(op)
        ),
        vec![args(&[
            "--ranks",
            &ranks.to_string(),
            "--steps",
            "20",
            "--collective",
            op,
            "--stall",
            &format!("{r}:3:{ms}"),
        ])],
        Attach::During { after_ms: 1000 },
        Expect::StallAtAttach {
            job: 0,
            rank: r as usize,
        },
    )
}

/// The same scenario with asynchronous CUDA and NCCL (simjob --async): collectives enqueue
/// and return at once, ranks wait in their syncs, as with the real NCCL.
fn asynchronous(mut s: Scenario) -> Scenario {
    s.name = format!("async {}", s.name);
    if let JobKind::Sim { jobs, .. } = &mut s.job {
        for j in jobs.iter_mut() {
            j.push("--async".into());
        }
    }
    s
}

/// The same scenario with the collectives through vLLM's custom all-reduce (simjob
/// --custom-ar: `vllm::CustomAllreduce` member functions, found by demangled name, the
/// object's `rank_`/`world_size_` read for the ranks) instead of NCCL's API.
fn custom_ar(mut s: Scenario) -> Scenario {
    s.name = format!("vllm custom-ar {}", s.name);
    if let JobKind::Sim { jobs, .. } = &mut s.job {
        for j in jobs.iter_mut() {
            j.push("--custom-ar".into());
        }
    }
    s
}

/// vLLM's custom all-reduce over shapes: stragglers synchronous and asynchronous, attached
/// before and during, hangs at attach, tensor-parallel groups, clean runs.
fn full_custom_ar(rng: &mut Rng, out: &mut Vec<Scenario>, during: impl Fn(&mut Rng) -> Attach) {
    for (ranks, op, delay, every, asynchronous_) in [
        (4u64, "allreduce:64K", 20u64, 1u64, false),
        (8, "reducescatter:64K", 30, 4, false),
        (2, "allgather:64K", 50, 10, true),
        (4, "allreduce:256K", 30, 5, true),
    ] {
        let slow = rng.below(ranks);
        let a = during(rng);
        let s = custom_ar(straggler(ranks, op, slow, delay, every, a));
        out.push(if asynchronous_ { asynchronous(s) } else { s });
    }
    let mut tp = custom_ar(tp_straggler(rng, Attach::BeforeInit));
    if let Expect::Straggler { may_withhold, .. } = &mut tp.expect {
        // The custom all-reduce objects are made without a call llmdd sees: the two
        // tensor-parallel groups are inferred, of one shape, and may not be told apart.
        *may_withhold = true;
    }
    out.push(tp);
    out.push(custom_ar(sim_hang(rng, 4, "allreduce:64K")));
    out.push(asynchronous(custom_ar(sim_hang(rng, 4, "allreduce:64K"))));
    // CUDA graphs made by stream capture, as vLLM's decode does: seen from the capture on
    // (attached before), or only their replays (attached during).
    out.push(custom_ar(captured(rng, Attach::BeforeInit)));
    let a = during(rng);
    out.push(asynchronous(custom_ar(captured(rng, a))));
    let a = during(rng);
    out.push(custom_ar(clean(
        "4r allreduce",
        &["--ranks", "4", "--steps", "200"],
        a,
    )));
    out.push(asynchronous(custom_ar(clean(
        "8r allreduce",
        &["--ranks", "8", "--steps", "200", "--events"],
        Attach::BeforeFault,
    ))));
}

/// The same scenario with the float32 all-reduces through a Gloo whose context layout llmdd
/// cannot read (simjob --gloo: `gloo::allreduce` in a fake libtorch_cpu.so): the process
/// groups are placed by the launcher's ranks, as on a PyTorch build whose layout does not
/// decode.
fn gloo_unreadable(mut s: Scenario) -> Scenario {
    s.name = format!("gloo unreadable-layout {}", s.name);
    if let JobKind::Sim { jobs, .. } = &mut s.job {
        for j in jobs.iter_mut() {
            j.push("--gloo".into());
        }
    }
    s
}

/// Gloo with an unreadable layout over shapes: stragglers attached before and during, a hang
/// at attach, a clean run.
fn full_gloo(rng: &mut Rng, out: &mut Vec<Scenario>, during: impl Fn(&mut Rng) -> Attach) {
    for (ranks, delay, every) in [(3u64, 30u64, 1u64), (4, 20, 4)] {
        let slow = rng.below(ranks);
        let a = during(rng);
        out.push(gloo_unreadable(straggler(
            ranks,
            "allreduce:64K",
            slow,
            delay,
            every,
            a,
        )));
    }
    out.push(gloo_unreadable(sim_hang(rng, 3, "allreduce:64K")));
    let a = during(rng);
    out.push(gloo_unreadable(clean(
        "4r allreduce",
        &["--ranks", "4", "--steps", "200"],
        a,
    )));
}

/// Steps captured into a CUDA graph at start (3 launches and an all-reduce) and replayed,
/// rank `r` launching 10 to 30 ms late every other step.
fn captured(rng: &mut Rng, attach: Attach) -> Scenario {
    let r = rng.below(4);
    let delay = rng.range(10, 30);
    sim(
        format!(
            "captured graph 4r r{r} {delay}ms/2 {}",
            attach_label(attach)
        ),
        vec![args(&[
            "--ranks",
            "4",
            "--capture",
            "--launches",
            "3",
            "--steps",
            "200",
            "--collective",
            "allreduce:64K",
            "--straggler",
            &format!("{r}:{delay}:2"),
        ])],
        attach,
        Expect::Straggler {
            job: 0,
            rank: r as usize,
            may_withhold: false,
        },
    )
}

/// KV-cache transfers over the real NIXL (llm-d's prefill/decode path): 2 or 3 prefill
/// agents, healthy; one stopped most of the time (slow to serve); one killed mid-run.
fn full_nixl(rng: &mut Rng, out: &mut Vec<Scenario>) {
    use crate::nixl::Fault;
    let nixl = |name: String, agents: usize, iters: u32, fault: Fault, expect: Expect| Scenario {
        name,
        job: JobKind::Nixl {
            agents,
            iters,
            fault,
        },
        expect,
    };
    for agents in [2usize, 3] {
        out.push(nixl(
            format!("nixl kv {agents} agents healthy"),
            agents,
            40,
            Fault::None,
            Expect::Nothing,
        ));
        let slow = rng.below(agents as u64) as usize;
        let stop_ms = rng.range(30, 60);
        out.push(nixl(
            format!(
                "nixl kv {agents} agents, p{} stopped {stop_ms} of every {} ms",
                slow + 1,
                stop_ms + 10
            ),
            agents,
            30,
            Fault::Slow {
                agent: slow,
                stop_ms,
            },
            Expect::KvAgent {
                agent: slow,
                magnitude: &["slow_ratio"],
            },
        ));
        let killed = rng.below(agents as u64) as usize;
        out.push(nixl(
            format!("nixl kv {agents} agents, p{} killed mid-run", killed + 1),
            agents,
            200,
            Fault::Kill {
                agent: killed,
                after_ms: 1500,
            },
            Expect::KvAgent {
                agent: killed,
                magnitude: &["failed_transfers", "stuck_ns"],
            },
        ));
    }
}

/// Asynchronous, rank `slow` enqueueing `delay_ms` late every `every` steps while the
/// devices still work `gpu_ms` on what was queued before (4 kernels a step, launched before
/// the lateness): hidden when the GPU work outlasts the lateness (nothing to name), named
/// otherwise (with its enqueue-time lag: partly absorbed lateness is not split).
fn hidden_straggler(rng: &mut Rng, delay_ms: u64, gpu_ms: u64) -> Scenario {
    let slow = rng.below(4);
    let expect = if gpu_ms >= delay_ms {
        Expect::Nothing
    } else {
        Expect::Straggler {
            job: 0,
            rank: slow as usize,
            may_withhold: false,
        }
    };
    asynchronous(sim(
        format!("straggler 4r r{slow} {delay_ms}ms/5 behind {gpu_ms}ms of GPU work"),
        vec![args(&[
            "--ranks",
            "4",
            "--steps",
            "250",
            "--compute-us",
            "2000",
            "--launches",
            "4",
            "--kernel-us",
            &(gpu_ms * 250).to_string(),
            "--collective",
            "allreduce:64K",
            "--straggler",
            &format!("{slow}:{delay_ms}:5"),
        ])],
        Attach::BeforeFault,
        expect,
    ))
}

/// Asynchronous, rank `slow`'s GPU three times slower, its host on time: the host cannot
/// tell which device is slow; llmdd must name nobody and say the time is on the device side.
fn slow_gpu(rng: &mut Rng) -> Scenario {
    let slow = rng.below(4);
    asynchronous(sim(
        format!("4r r{slow} GPU 3x slower, host on time"),
        vec![args(&[
            "--ranks",
            "4",
            "--steps",
            "300",
            "--compute-us",
            "2000",
            "--launches",
            "4",
            "--kernel-us",
            "1000",
            "--collective",
            "allreduce:64K",
            "--slow-gpu",
            &format!("{slow}:300"),
        ])],
        Attach::BeforeFault,
        Expect::DeviceSide,
    ))
}

/// The scenarios of one matrix.
pub fn matrix(seed: u64, size: Size) -> Vec<Scenario> {
    let mut rng = Rng(seed);
    let during = |rng: &mut Rng| Attach::During {
        after_ms: rng.range(300, 800),
    };
    let mut out = Vec::new();
    match size {
        Size::Quick => {
            let r = rng.below(4);
            let a = during(&mut rng);
            out.push(straggler(4, "allreduce:64K", r, rng.range(20, 60), 10, a));
            let r = rng.below(8);
            out.push(straggler(8, "allgather:16K", r, 20, 1, Attach::BeforeFault));
            let s = rng.below(3);
            out.push(pipeline(3, 1, Some(s), rng.range(3, 6), false));
            out.push(pipeline(3, 1, None, 0, true));
            out.push(tp_straggler(&mut rng, Attach::BeforeInit));
            out.push(job_end());
            out.push(two_replicas(&mut rng));
            let a = during(&mut rng);
            out.push(clean(
                "4r allreduce",
                &["--ranks", "4", "--steps", "200"],
                a,
            ));
            out.push(mpi(&mut rng, 0));
            out.push(sim_hang(&mut rng, 4, "allreduce:64K"));
            out.push(mpi_hang(&mut rng));
            let r = rng.below(4);
            let a = during(&mut rng);
            out.push(asynchronous(straggler(4, "allreduce:64K", r, 30, 5, a)));
            out.push(asynchronous(sim_hang(&mut rng, 4, "allreduce:64K")));
            out.push(hidden_straggler(&mut rng, 10, 20));
            let r = rng.below(4);
            let a = during(&mut rng);
            out.push(asynchronous(custom_ar(straggler(
                4,
                "allreduce:64K",
                r,
                30,
                5,
                a,
            ))));
        }
        Size::Full { mpi_repeats } => {
            full(&mut rng, &mut out, during);
            for i in 0..mpi_repeats {
                out.push(mpi(&mut rng, i));
                out.push(mpi_hang(&mut rng));
            }
            for (http, event_loop) in [("h11", "asyncio"), ("httptools", "uvloop")] {
                out.push(Scenario {
                    name: format!("serving uvicorn {http}/{event_loop}"),
                    job: JobKind::Serving {
                        http,
                        event_loop,
                        ttft_ms: rng.range(60, 200),
                        itl_ms: rng.range(10, 30),
                    },
                    expect: Expect::Serving,
                });
            }
            full_custom_ar(&mut rng, &mut out, during);
            full_gloo(&mut rng, &mut out, during);
            full_nixl(&mut rng, &mut out);
        }
    }
    out
}

/// Everything but the real libraries' scenarios.
fn full(rng: &mut Rng, out: &mut Vec<Scenario>, during: impl Fn(&mut Rng) -> Attach) {
    const OPS: [&str; 3] = ["allreduce:256K", "allgather:64K", "reducescatter:64K"];
    // Stragglers: every frequency and magnitude, over rank counts, ops and attach times.
    for (every, delay) in [
        (1, 20),
        (2, 5),
        (5, 200),
        (5, 2),
        (10, 50),
        (20, 20),
        (20, 100),
        (3, 10),
    ] {
        for ranks in [2u64, 4, 8] {
            if (every + ranks) % 3 == 0 {
                continue; // a third of the grid, by a rule that keeps every row and column
            }
            let slow = rng.below(ranks);
            let attach = if rng.below(2) == 0 {
                Attach::BeforeFault
            } else {
                during(rng)
            };
            out.push(straggler(ranks, rng.pick(&OPS), slow, delay, every, attach));
        }
    }
    out.push(tp_straggler(rng, Attach::BeforeInit));
    out.push(tp_straggler(rng, Attach::BeforeFault));
    let a = during(rng);
    out.push(tp_straggler(rng, a));
    // Graph-launch steps (decode under CUDA graphs).
    let r = rng.below(4);
    out.push(sim(
        format!("graph 4r r{r} 20ms/2"),
        vec![args(&[
            "--ranks",
            "4",
            "--graph",
            "--steps",
            "200",
            "--straggler",
            &format!("{r}:20:2"),
        ])],
        Attach::BeforeFault,
        Expect::Straggler {
            job: 0,
            rank: r as usize,
            may_withhold: false,
        },
    ));
    // Pipelines with bounded buffers, and balanced ones.
    for stages in [2u64, 3, 4] {
        let slow = rng.below(stages);
        let collective = rng.below(2) == 0;
        out.push(pipeline(stages, 1, Some(slow), rng.range(2, 8), collective));
        out.push(pipeline(stages, 1, None, 0, stages != 3));
    }
    out.push(pipeline(2, 2, Some(rng.below(2)), rng.range(3, 8), false));
    out.push(pipeline(2, 2, None, 0, false));
    // Stalls.
    for ranks in [2u64, 4] {
        let r = rng.below(ranks);
        let ms = rng.range(1500, 3000);
        out.push(sim(
            format!("stall {ranks}r r{r} {ms}ms"),
            vec![args(&[
                "--ranks",
                &ranks.to_string(),
                "--steps",
                "120",
                "--collective",
                "allreduce:64K",
                "--stall",
                &format!("{r}:40:{ms}"),
            ])],
            Attach::BeforeFault,
            Expect::Stall {
                job: 0,
                rank: r as usize,
            },
        ));
    }
    // Hung before llmdd attached.
    for (ranks, op) in [
        (2u64, "allgather:64K"),
        (4, "allreduce:256K"),
        (8, "reducescatter:64K"),
    ] {
        out.push(sim_hang(rng, ranks, op));
    }
    // Clean runs of every shape.
    for ranks in ["2", "4", "8"] {
        let op = rng.pick(&OPS);
        let a = during(rng);
        out.push(clean(
            &format!("{ranks}r {}", op.split(':').next().unwrap_or(op)),
            &["--ranks", ranks, "--steps", "200", "--collective", op],
            a,
        ));
    }
    out.push(clean(
        "4r graph",
        &["--ranks", "4", "--graph", "--steps", "200"],
        Attach::BeforeFault,
    ));
    out.push(clean(
        "4r dp x tp",
        &["--ranks", "4", "--tp", "2", "--steps", "200"],
        Attach::BeforeFault,
    ));
    out.push(job_end());
    out.push(two_replicas(rng));
    full_async(rng, out, &during);
    out.push(sim(
        "two 1-rank graph replicas, one slow".into(),
        vec![
            args(&[
                "--ranks",
                "1",
                "--graph",
                "--steps",
                "200",
                "--straggler",
                "0:20:3",
            ]),
            args(&["--ranks", "1", "--graph", "--steps", "200"]),
        ],
        Attach::BeforeFault,
        Expect::Nothing,
    ));
}

/// Every finding kind again with asynchronous CUDA and NCCL, and what only it has: lateness
/// the devices hide, and a slower GPU the host cannot attribute.
fn full_async(rng: &mut Rng, out: &mut Vec<Scenario>, during: impl Fn(&mut Rng) -> Attach) {
    for (ranks, op, delay, every) in [
        (2u64, "allreduce:256K", 20u64, 1u64),
        (4, "allgather:64K", 50, 10),
        (8, "reducescatter:64K", 20, 3),
    ] {
        let slow = rng.below(ranks);
        let a = during(rng);
        out.push(asynchronous(straggler(ranks, op, slow, delay, every, a)));
    }
    out.push(asynchronous(tp_straggler(rng, Attach::BeforeInit)));
    out.push(hidden_straggler(rng, 10, 20));
    out.push(hidden_straggler(rng, 20, 8));
    out.push(slow_gpu(rng));
    let r = rng.below(4);
    out.push(asynchronous(sim(
        format!("graph 4r r{r} 20ms/2"),
        vec![args(&[
            "--ranks",
            "4",
            "--graph",
            "--steps",
            "200",
            "--straggler",
            &format!("{r}:20:2"),
        ])],
        Attach::BeforeFault,
        Expect::Straggler {
            job: 0,
            rank: r as usize,
            may_withhold: false,
        },
    )));
    out.push(asynchronous(pipeline(
        3,
        1,
        Some(rng.below(3)),
        rng.range(3, 6),
        true,
    )));
    out.push(asynchronous(pipeline(3, 1, None, 0, true)));
    let r = rng.below(4);
    let ms = rng.range(1500, 3000);
    out.push(asynchronous(sim(
        format!("stall 4r r{r} {ms}ms"),
        vec![args(&[
            "--ranks",
            "4",
            "--steps",
            "120",
            "--collective",
            "allreduce:64K",
            "--stall",
            &format!("{r}:40:{ms}"),
        ])],
        Attach::BeforeFault,
        Expect::Stall {
            job: 0,
            rank: r as usize,
        },
    )));
    out.push(asynchronous(sim_hang(rng, 2, "allgather:64K")));
    out.push(asynchronous(sim_hang(rng, 8, "allreduce:256K")));
    let a = during(rng);
    out.push(asynchronous(clean(
        "4r allreduce",
        &["--ranks", "4", "--steps", "200", "--events"],
        a,
    )));
    out.push(asynchronous(clean(
        "4r graph",
        &["--ranks", "4", "--graph", "--steps", "200"],
        Attach::BeforeFault,
    )));
}

/// A straggler in a 2x2 DP x TP job: named on its communicators when llmdd saw them made;
/// attached after, communicators of the same shape cannot be told apart and withholding
/// the verdict (saying so) is right too.
fn tp_straggler(rng: &mut Rng, attach: Attach) -> Scenario {
    let r = rng.below(4);
    let delay = rng.range(10, 30);
    sim(
        format!("dp x tp 4r r{r} {delay}ms/3 {}", attach_label(attach)),
        vec![args(&[
            "--ranks",
            "4",
            "--tp",
            "2",
            "--steps",
            "200",
            "--straggler",
            &format!("{r}:{delay}:3"),
        ])],
        attach,
        Expect::Straggler {
            job: 0,
            rank: r as usize,
            may_withhold: attach != Attach::BeforeInit,
        },
    )
}

/// Ranks that end without destroying their communicator, 40 ms apart: how jobs end.
fn job_end() -> Scenario {
    clean(
        "4r job end, no destroy, exits 40ms apart",
        &[
            "--ranks",
            "4",
            "--steps",
            "150",
            "--no-destroy",
            "--exit-stagger-ms",
            "40",
        ],
        Attach::BeforeFault,
    )
}

/// Two TP=2 replicas on one node, one with a straggler, the other shorter (it ends first).
fn two_replicas(rng: &mut Rng) -> Scenario {
    let r = rng.below(2);
    sim(
        format!("two 2r replicas, r{r} of the first slow"),
        vec![
            args(&[
                "--ranks",
                "2",
                "--steps",
                "250",
                "--straggler",
                &format!("{r}:20:3"),
            ]),
            args(&["--ranks", "2", "--steps", "120"]),
        ],
        Attach::BeforeFault,
        Expect::Straggler {
            job: 0,
            rank: r as usize,
            may_withhold: false,
        },
    )
}
