//! A fixed engine state for the views' tests: a 4-rank job whose rank 3 straggles, a failed
//! allocation, and four streamed requests on a serving port.

use crate::{
    engine::{synth, Config, Engine},
    events::{Event, SockKind},
    summary::Summary,
    views::run::{LibInfo, ProcInfo, RunInfo},
};

/// Run info, summary and engine after [`events`].
pub fn sample() -> (RunInfo, Summary, Engine) {
    let mut run = RunInfo::start(Some("node-a".into()));
    let mut summary = Summary::default();
    let mut e = Engine::new(Config::default());
    for r in 0..4u32 {
        run.add_process(ProcInfo {
            pid: 100 + r,
            comm: "python3".into(),
            libraries: vec![LibInfo {
                family: "nccl",
                label: "nccl",
                path: "/usr/lib/libnccl.so.2".into(),
                version: Some("2.21.5".into()),
                build_id: Some("abcd".into()),
                functions_probed: 24,
                slot: Some(r as u16),
            }],
            ..ProcInfo::default()
        });
    }
    for ev in events() {
        summary.add(&ev);
        run.observe(&ev);
        e.ingest(ev);
    }
    e.flush();
    threads_now(&mut e);
    (run, summary, e)
}

/// One look at the ranks' threads: ranks 0-2 inside the all-reduce, rank 3 in Python.
fn threads_now(e: &mut Engine) {
    use crate::engine::{Place, ThreadPlace};
    let at = e.snapshot().now_ns;
    for r in 0..4u32 {
        let pid = 100 + r;
        let (place, site) = if r == 3 {
            (
                Place::Elsewhere {
                    frame: "_PyEval_EvalFrameDefault".into(),
                },
                "_PyEval_EvalFrameDefault <- PyEval_EvalCode".to_string(),
            )
        } else {
            (
                Place::Collective {
                    family: "nccl",
                    func: "ncclAllReduce".into(),
                },
                "ncclAllReduce <- c10d::ProcessGroupNCCL::allreduce".to_string(),
            )
        };
        let t = ThreadPlace {
            tid: pid,
            name: "python3".into(),
            state: 'S',
            syscall: Some(7),
            regs_from: "syscall",
            place,
            frames: vec!["poll".into()],
            site,
        };
        e.threads_now(pid, at, vec![t]);
    }
    e.threads_round_done(at);
}

/// The events of [`sample`], in time order.
pub fn events() -> Vec<Event> {
    let mut evs = Vec::new();
    for i in 0..40u64 {
        let t = 1_000_000_000 + i * 10_000_000;
        for r in 0..4u32 {
            let late = if r == 3 { 4_000_000 } else { r as u64 * 10_000 };
            evs.push(synth::coll(
                synth::ALL_REDUCE,
                100 + r,
                0x1000 + r as u64,
                Some(r as i32),
                4,
                1 << 20,
                7,
                t + late,
                t + 4_500_000,
            ));
            evs.push(synth::on_stream(
                synth::STREAM_SYNC,
                100 + r,
                7,
                t + 4_600_000,
                t + 6_000_000,
            ));
        }
    }
    evs.push(synth::alloc(
        synth::MALLOC,
        101,
        1 << 30,
        0,
        2,
        1_500_000_000,
        1_500_000_100,
    ));
    for k in 0..4u64 {
        let sk = 0x50 + k;
        let t = 1_100_000_000 + k * 50_000_000;
        evs.push(synth::sock(
            SockKind::Recv,
            200,
            sk,
            t,
            300,
            8000,
            40000 + k as u16,
        ));
        for tok in 0..5u64 {
            evs.push(synth::sock(
                SockKind::Send,
                200,
                sk,
                t + 20_000_000 + tok * 5_000_000,
                50,
                8000,
                40000 + k as u16,
            ));
        }
        evs.push(synth::state(
            200,
            sk,
            t + 45_000_000,
            1,
            7,
            8000,
            40000 + k as u16,
        ));
    }
    evs.sort_by_key(crate::views::event_time);
    evs
}
