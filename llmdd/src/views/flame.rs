//! `--flamegraph FILE.svg`: time spent inside traced calls, drawn with inferno. With user
//! stacks (`--stacks`, on by default with `--flamegraph`) a call is folded by
//! `process;caller frames...;library function;op`, so a frame's width is the time spent in
//! traced calls made from under it; a call without a walkable stack (a stack-map miss, an
//! exited process) and every call without `--stacks` is folded by
//! `process;thread;library;function;op`. The SVG's title says which folding was used and how
//! many calls had a stack. The `op` frame is present where a call has one: reduction and
//! data type of a collective, peer of a send/receive, size of a copy.

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

/// The folding named in the SVG title when no call had a user stack.
pub const FOLDING: &str = "process;thread;library;function;op";
/// The folding named in the SVG title when calls had user stacks.
pub const STACK_FOLDING: &str = "process;user stack;library function;op";

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
    /// The thread, for calls folded without a stack.
    tid: u32,
    /// The user stack's id and immediate caller, for calls folded by their stack.
    stack: Option<(u32, u64)>,
    slot: u16,
    func: u16,
    op: OpFrame,
}

/// Folded time per stack.
#[derive(Debug, Default)]
pub struct Folder {
    stacks: HashMap<Key, u64>,
    other_ns: u64,
    /// Named user stacks by (process, stack id) (see `stacks::StackWalker`).
    frames: HashMap<crate::stacks::StackKey, crate::stacks::Frames>,
    /// Calls folded by a user stack, and all calls folded.
    calls_with_stack: u64,
    calls: u64,
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
    /// The frames of stack `id` of process `pid`, outermost first (from the stack walker).
    pub fn learn_stack(&mut self, key: crate::stacks::StackKey, frames: crate::stacks::Frames) {
        self.frames.insert(key, frames);
    }

    pub fn add(&mut self, c: &CallEvent) {
        let Some(d) = c.duration_ns() else {
            return;
        };
        // A stack folds the call only when it was named (not empty).
        let stack = c.stack_id.map(|id| (id, c.caller)).filter(|(id, caller)| {
            self.frames
                .get(&(c.pid, *id, *caller))
                .is_some_and(|f| !f.is_empty())
        });
        self.calls += 1;
        if stack.is_some() {
            self.calls_with_stack += 1;
        }
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
            tid: if stack.is_some() { 0 } else { c.tid },
            stack,
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
                let process = clean(&format!(
                    "{} {}",
                    run.proc_label(k.pid),
                    run.procs.get(&k.pid).map(|p| p.comm.as_str()).unwrap_or("")
                ))
                .trim_end()
                .to_string();
                let frames = k
                    .stack
                    .and_then(|(id, caller)| self.frames.get(&(k.pid, id, caller)));
                let mut line = match frames {
                    Some(frames) => {
                        format!("{process};{};{} {func}", frames.join(";"), clean(&lib))
                    }
                    None => format!("{process};tid {};{};{func}", k.tid, clean(&lib)),
                };
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

    /// The SVG's title: which folding was used, and for how many calls.
    pub fn title(&self) -> String {
        if self.calls_with_stack == 0 {
            format!("llmdd: time inside traced calls, folded by {FOLDING} (no user stacks)")
        } else if self.calls_with_stack == self.calls {
            format!("llmdd: time inside traced calls, folded by {STACK_FOLDING}")
        } else {
            format!(
                "llmdd: time inside traced calls, folded by {STACK_FOLDING} ({} of {} calls; \
                 the rest by {FOLDING})",
                self.calls_with_stack, self.calls
            )
        }
    }

    /// Writes the SVG. With no traced time at all, writes inferno's "no samples" image.
    pub fn write(&self, run: &RunInfo, out: BufWriter<File>) -> Result<()> {
        self.write_as(run, out, false)
    }

    /// Writes the SVG, or with `folded` the folded lines themselves (`frame;frame;... ns`
    /// per line, the input format of flamegraph.pl, inferno and speedscope).
    pub fn write_as(&self, run: &RunInfo, out: BufWriter<File>, folded: bool) -> Result<()> {
        let lines = self.folded(run);
        if folded {
            let mut out = out;
            for l in &lines {
                writeln!(out, "{l}").context("writing the folded stacks")?;
            }
            return out.flush().context("writing the folded stacks");
        }
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = self.title();
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

    #[test]
    fn calls_with_a_named_stack_fold_by_it_and_the_title_says_how_many() {
        let (run, _s, _e) = fixture::sample();
        let mut f = Folder::default();
        let mut calls: Vec<CallEvent> = fixture::events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Call(c) if c.duration_ns().is_some() => Some(c),
                _ => None,
            })
            .collect();
        let first = calls[0].clone();
        f.learn_stack(
            (first.pid, 5, 0),
            vec!["main".to_string(), "Engine::step".to_string()].into(),
        );
        // A stack the walker could not name folds like a call without one.
        f.learn_stack((first.pid, 6, 0), Vec::<String>::new().into());
        calls[0].stack_id = Some(5);
        calls[1].stack_id = Some(6);
        for c in &calls {
            f.add(c);
        }
        let lines = f.folded(&run);
        let func = llmdd_common::funcs::spec(first.func)
            .map(|s| s.name)
            .unwrap_or("?");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(";main;Engine::step;") && l.contains(func)),
            "{lines:#?}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.contains("Engine::step")).count(),
            1
        );
        let title = f.title();
        assert!(title.contains(STACK_FOLDING), "{title}");
        assert!(
            title.contains(&format!("1 of {} calls", calls.len())),
            "{title}"
        );
        assert!(Folder::default().title().contains("no user stacks"));
    }
}
