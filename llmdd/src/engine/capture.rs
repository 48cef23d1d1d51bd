//! CUDA-graph capture: which collectives, launches and copies each graph holds.
//!
//! Between `cudaStreamBeginCapture(stream)` and `cudaStreamEndCapture(stream, &graph)`, work
//! submitted to the stream is recorded into the graph, not run: a collective called then is
//! not an instance of that collective (no rank waits on another in it), so it is kept out of
//! matching and remembered as part of the graph instead. Streams join a capture the way CUDA
//! makes them: waiting (`cudaStreamWaitEvent`) on an event recorded on a capturing stream.
//! `cudaGraphInstantiate(&exec, graph)` turns the graph into what `cudaGraphLaunch(exec)`
//! runs; each launch of that executable is then a step holding those collectives, with the
//! op, size and communicator of each.
//!
//! What a host tracer cannot see: graphs captured before llmdd attached (their launches stay
//! anonymous steps), work added to a graph by the graph API rather than by capture, and
//! capture inside libraries that call the driver API (`cuStreamBeginCapture`).
//!
//! Bounded: [`MAX_OPS`] recorded per graph (the rest counted), [`MAX_GRAPHS`] graphs and
//! executables in all. A process's open captures and uninstantiated graphs go with it; its
//! replayed executables stay for the report until room is needed (then the ones of exited
//! processes go first, and only when none is left are new ones counted, not kept).

use std::sync::Arc;

use llmdd_common::funcs::{CallKind, FuncId};

use super::{procs::ProcId, util::FastMap};
use crate::events::CallEvent;

/// Collectives remembered per graph (vLLM's piecewise graphs hold a few per layer piece).
pub const MAX_OPS: usize = 4096;
/// Graphs and executables remembered in all (vLLM captures tens of batch sizes, each in
/// as many pieces as the model has attention layers).
pub const MAX_GRAPHS: usize = 65_536;

/// One collective or point-to-point call recorded into a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapturedOp {
    pub func: FuncId,
    pub bytes: u64,
    /// The id of the communicator its handle was placed in, when it was.
    pub comm: Option<u64>,
}

/// What a graph holds, as far as its capture showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    pub ops: Vec<CapturedOp>,
    pub launches: u64,
    pub copies: u64,
    /// Collectives beyond [`MAX_OPS`], counted only.
    pub ops_dropped: u64,
}

/// An executable graph and how often it ran.
#[derive(Clone, Debug)]
pub struct Exec {
    pub proc: ProcId,
    pub pid: u32,
    pub handle: u64,
    pub contents: Arc<Contents>,
    pub replays: u64,
    pub exited: bool,
}

#[derive(Default)]
pub struct Captures {
    /// Capturing streams: (proc, stream) -> capture.
    streams: FastMap<(ProcId, u64), u32>,
    /// Open captures by id.
    open: FastMap<u32, Contents>,
    /// Events recorded on a capturing stream: (proc, event) -> capture.
    events: FastMap<(ProcId, u64), u32>,
    /// Ended captures: (proc, cudaGraph_t) -> contents.
    graphs: FastMap<(ProcId, u64), Arc<Contents>>,
    /// Executables: (proc, cudaGraphExec_t) -> index in `execs`.
    by_exec: FastMap<(ProcId, u64), usize>,
    pub execs: Vec<Exec>,
    next: u32,
    /// Graphs or executables not remembered (over [`MAX_GRAPHS`]).
    pub refused: u64,
    /// Calls recorded into graphs (kept out of matching).
    pub captured_calls: u64,
}

impl Captures {
    /// `cudaStreamBeginCapture(stream)` returned successfully.
    pub fn begin(&mut self, proc: ProcId, stream: u64) {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        self.streams.insert((proc, stream), id);
        self.open.insert(id, Contents::default());
    }

    /// `cudaStreamEndCapture(stream, &graph)`: the capture (and every stream in it) ends.
    pub fn end(&mut self, proc: ProcId, stream: u64, graph: Option<u64>) {
        let Some(id) = self.streams.get(&(proc, stream)).copied() else {
            return;
        };
        self.streams.retain(|_, c| *c != id);
        self.events.retain(|_, c| *c != id);
        let Some(contents) = self.open.remove(&id) else {
            return;
        };
        if let Some(g) = graph.filter(|g| *g != 0) {
            if !self.room() {
                self.refused += 1;
            } else {
                self.graphs.insert((proc, g), Arc::new(contents));
            }
        }
    }

    /// `cudaGraphInstantiate(&exec, graph)`: `exec` runs what `graph` holds.
    pub fn instantiate(&mut self, proc: ProcId, pid: u32, graph: u64, exec: u64) {
        let Some(contents) = self.graphs.get(&(proc, graph)).cloned() else {
            return;
        };
        if let Some(&i) = self.by_exec.get(&(proc, exec)) {
            self.execs[i].contents = contents;
            self.execs[i].replays = 0;
            return;
        }
        if !self.room() {
            self.refused += 1;
            return;
        }
        self.by_exec.insert((proc, exec), self.execs.len());
        self.execs.push(Exec {
            proc,
            pid,
            handle: exec,
            contents,
            replays: 0,
            exited: false,
        });
    }

    /// Whether one more graph or executable fits, evicting an exited process's executable
    /// when that makes room.
    fn room(&mut self) -> bool {
        if self.graphs.len() + self.execs.len() < MAX_GRAPHS {
            return true;
        }
        let Some(i) = self.execs.iter().position(|e| e.exited) else {
            return false;
        };
        self.execs.swap_remove(i);
        self.reindex();
        true
    }

    fn reindex(&mut self) {
        self.by_exec = self
            .execs
            .iter()
            .enumerate()
            .map(|(i, e)| ((e.proc, e.handle), i))
            .collect();
    }

    /// Whether `stream` of `proc` is being captured.
    pub fn capturing(&self, proc: ProcId, stream: u64) -> bool {
        // Asked for every call on a stream: no hashing while nothing is being captured.
        !self.streams.is_empty() && self.streams.contains_key(&(proc, stream))
    }

    /// Records `c` (of communicator `comm`) into the graph its stream is being captured
    /// into; false when the stream is not capturing or the call is not work on it.
    pub fn record(&mut self, proc: ProcId, c: &CallEvent, comm: Option<u64>) -> bool {
        let Some(stream) = c.stream else {
            return false;
        };
        let Some(id) = self.streams.get(&(proc, stream)).copied() else {
            return false;
        };
        let Some(g) = self.open.get_mut(&id) else {
            return false;
        };
        match c.spec().kind {
            CallKind::Collective | CallKind::P2p => {
                if g.ops.len() < MAX_OPS {
                    g.ops.push(CapturedOp {
                        func: c.func,
                        bytes: c.bytes.unwrap_or(0),
                        comm,
                    });
                } else {
                    g.ops_dropped += 1;
                }
            }
            CallKind::Launch | CallKind::GraphLaunch => g.launches += 1,
            CallKind::Memcpy => g.copies += 1,
            _ => return false,
        }
        self.captured_calls += 1;
        true
    }

    /// `cudaEventRecord(event, stream)`: a recording on a capturing stream lets other
    /// streams join its capture.
    pub fn event_record(&mut self, proc: ProcId, event: u64, stream: u64) {
        match self.streams.get(&(proc, stream)).copied() {
            Some(id) => {
                self.events.insert((proc, event), id);
            }
            None => {
                self.events.remove(&(proc, event));
            }
        }
    }

    /// `cudaStreamWaitEvent(stream, event)`: waiting on a captured event joins the capture.
    pub fn stream_wait(&mut self, proc: ProcId, stream: u64, event: u64) {
        if let Some(id) = self.events.get(&(proc, event)).copied() {
            self.streams.insert((proc, stream), id);
        }
    }

    /// A launch of `exec`: what it holds, when its capture was seen.
    pub fn replay(&mut self, proc: ProcId, exec: u64) -> Option<&Exec> {
        let &i = self.by_exec.get(&(proc, exec))?;
        let e = &mut self.execs[i];
        e.replays += 1;
        Some(e)
    }

    /// Forgets what a process that exited was capturing; its executables stay (replayed
    /// ones for the report; never-replayed ones go).
    pub fn proc_exit(&mut self, proc: ProcId) {
        let open: Vec<u32> = self
            .streams
            .iter()
            .filter(|((p, _), _)| *p == proc)
            .map(|(_, id)| *id)
            .collect();
        for id in open {
            self.open.remove(&id);
        }
        self.streams.retain(|(p, _), _| *p != proc);
        self.events.retain(|(p, _), _| *p != proc);
        self.graphs.retain(|(p, _), _| *p != proc);
        if self.execs.iter().any(|e| e.proc == proc) {
            self.execs.retain(|e| e.proc != proc || e.replays > 0);
            for e in self.execs.iter_mut().filter(|e| e.proc == proc) {
                e.exited = true;
            }
            self.reindex();
        }
    }
}
