//! `--flamegraph FILE.svg`: time spent inside traced calls, folded by
//! `process;thread;library;function;op` and drawn with inferno. User stacks are not walked
//! (yet), so a frame's width is the time its calls took, not where they were called from; the
//! SVG's title says which folding was used. The `op` frame is present where a call has one:
//! reduction and data type of a collective, peer of a send/receive, size of a copy.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufWriter, Write},
};

use anyhow::{Context, Result};
use llmdd_common::funcs::CallKind;

use crate::events::CallEvent;

use super::run::RunInfo;

/// Distinct stacks kept; time of further ones is folded into one `[other]` frame.
const MAX_STACKS: usize = 100_000;

/// The folding named in the SVG title.
pub const FOLDING: &str = "process;thread;library;function;op";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum OpFrame {
    None,
    Reduce { op: u64, dtype: u64 },
    Dtype(u64),
    Peer(i64),
    Size(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    pid: u32,
    tid: u32,
    slot: u16,
    func: u16,
    op: OpFrame,
}

/// Folded time per stack.
#[derive(Debug, Default)]
pub struct Folder {
    stacks: HashMap<Key, u64>,
    other_ns: u64,
}

fn redop(op: u64) -> String {
    match op {
        0 => "sum".into(),
        1 => "prod".into(),
        2 => "max".into(),
        3 => "min".into(),
        4 => "avg".into(),
        x => format!("redop {x}"),
    }
}

fn dtype(d: u64) -> String {
    match d {
        0 => "int8".into(),
        1 => "uint8".into(),
        2 => "int32".into(),
        3 => "uint32".into(),
        4 => "int64".into(),
        5 => "uint64".into(),
        6 => "float16".into(),
        7 => "float32".into(),
        8 => "float64".into(),
        9 => "bfloat16".into(),
        10 => "fp8e4m3".into(),
        11 => "fp8e5m2".into(),
        x => format!("dtype {x}"),
    }
}

fn size_label(log2: u32) -> String {
    let b = 1u64 << log2.min(63);
    match b {
        b if b >= 1 << 30 => format!("<={} GiB", b >> 30),
        b if b >= 1 << 20 => format!("<={} MiB", b >> 20),
        b if b >= 1 << 10 => format!("<={} KiB", b >> 10),
        b => format!("<={b} B"),
    }
}

/// Frames may not contain `;` (the separator); names come from our own tables and paths.
fn clean(s: &str) -> String {
    s.replace(';', ":")
}

impl Folder {
    pub fn add(&mut self, c: &CallEvent) {
        let Some(d) = c.duration_ns() else {
            return;
        };
        let op = match c.spec().kind {
            CallKind::Collective => match (c.op, c.dtype) {
                (Some(op), Some(dt)) => OpFrame::Reduce { op, dtype: dt },
                (None, Some(dt)) => OpFrame::Dtype(dt),
                _ => OpFrame::None,
            },
            CallKind::P2p => c.peer.map(OpFrame::Peer).unwrap_or(OpFrame::None),
            CallKind::Memcpy | CallKind::Alloc => c
                .bytes
                .map(|b| OpFrame::Size(64 - b.saturating_sub(1).leading_zeros()))
                .unwrap_or(OpFrame::None),
            _ => OpFrame::None,
        };
        let key = Key {
            pid: c.pid,
            tid: c.tid,
            slot: c.lib_slot,
            func: c.func,
            op,
        };
        let n = self.stacks.len();
        match self.stacks.get_mut(&key) {
            Some(v) => *v += d,
            None if n < MAX_STACKS => {
                self.stacks.insert(key, d);
            }
            None => self.other_ns += d,
        }
    }

    /// The folded lines (`frame;frame;... value`), sorted.
    pub fn folded(&self, run: &RunInfo) -> Vec<String> {
        let mut lines: Vec<String> = self
            .stacks
            .iter()
            .map(|(k, ns)| {
                let lib = run
                    .library(k.slot)
                    .map(|l| l.file_name().to_string())
                    .or_else(|| {
                        llmdd_common::funcs::spec(k.func).map(|s| s.family.name().to_string())
                    })
                    .unwrap_or_else(|| "unknown".into());
                let func = llmdd_common::funcs::spec(k.func)
                    .map(|s| s.name)
                    .unwrap_or("unknown");
                let mut line = format!(
                    "{};tid {};{};{}",
                    clean(&format!(
                        "{} {}",
                        run.proc_label(k.pid),
                        run.procs.get(&k.pid).map(|p| p.comm.as_str()).unwrap_or("")
                    ))
                    .trim_end(),
                    k.tid,
                    clean(&lib),
                    func
                );
                match k.op {
                    OpFrame::None => {}
                    OpFrame::Reduce { op, dtype: dt } => {
                        line.push_str(&format!(";{} {}", redop(op), dtype(dt)))
                    }
                    OpFrame::Dtype(dt) => line.push_str(&format!(";{}", dtype(dt))),
                    OpFrame::Peer(p) => line.push_str(&format!(";peer {p}")),
                    OpFrame::Size(s) => line.push_str(&format!(";{}", size_label(s))),
                }
                format!("{line} {ns}")
            })
            .collect();
        if self.other_ns > 0 {
            lines.push(format!(
                "[other stacks beyond {MAX_STACKS}] {}",
                self.other_ns
            ));
        }
        lines.sort();
        lines
    }

    /// Writes the SVG. With no traced time at all, writes inferno's "no samples" image.
    pub fn write(&self, run: &RunInfo, out: BufWriter<File>) -> Result<()> {
        let lines = self.folded(run);
        let mut opts = inferno::flamegraph::Options::default();
        opts.title =
            format!("llmdd: time inside traced calls, folded by {FOLDING} (no user stacks)");
        opts.subtitle = Some(format!(
            "{} process(es) on {}; widths are nanoseconds inside the calls",
            run.procs.len(),
            run.host.as_deref().unwrap_or("this host")
        ));
        opts.count_name = "ns".into();
        opts.name_type = "Frame:".into();
        opts.deterministic = true;
        let mut out = out;
        inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut out)
            .context("drawing the flame graph")?;
        out.flush().context("writing the flame graph")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{events::Event, views::fixture};

    #[test]
    fn folds_by_process_thread_library_function_op_and_draws_an_svg() {
        let (run, _s, _e) = fixture::sample();
        let mut f = Folder::default();
        for ev in fixture::events() {
            if let Event::Call(c) = ev {
                f.add(&c);
            }
        }
        let lines = f.folded(&run);
        assert!(
            lines.iter().any(|l| l.starts_with(
                "pid 103 (rank 3) python3;tid 103;libnccl.so.2;ncclAllReduce;sum float32 "
            )),
            "{lines:#?}"
        );
        let dir = std::env::temp_dir().join(format!("llmdd-flame-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("f.svg");
        f.write(&run, crate::session::create_output(&path).expect("open"))
            .expect("svg");
        let svg = std::fs::read_to_string(&path).expect("read");
        assert!(svg.contains("<svg"));
        assert!(svg.contains("ncclAllReduce") && svg.contains("cudaStreamSynchronize"));
        // Frames too narrow to draw are still in the folded input.
        assert!(
            lines.iter().any(|l| l.contains(";cudaMalloc;<=1 GiB ")),
            "{lines:#?}"
        );
        assert!(svg.contains(FOLDING));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
