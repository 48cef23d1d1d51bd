//! Completion estimates. NCCL (and a graph launch) returns from enqueue before the GPU has
//! finished, so when the work completed is not seen directly. The first synchronising call by
//! the same process that covers the work's stream and returns afterwards bounds it from above:
//! a stream sync on that stream, a device/context sync, or a sync or successful query of an
//! event recorded on that stream after the work was enqueued; also a sync of another stream
//! that was made to wait (`cudaStreamWaitEvent`) for an event recorded after the work, as
//! frameworks do with a communication stream. Every estimate from here is an upper bound.

use std::collections::VecDeque;

use super::{procs::ProcId, util::FastMap};

/// Work waiting for a completion bound: call `call` of member `member` of lane `lane`,
/// enqueued at `entry_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingWork {
    pub lane: u32,
    /// Id of the lane when the work was enqueued (a reused lane slot has another).
    pub lane_id: u64,
    pub member: u32,
    pub call: u64,
    pub entry_ns: u64,
}

/// Work remembered per stream before the oldest is forgotten.
const PER_STREAM: usize = 1024;
/// Cross-stream waits remembered per stream.
const MAX_DEPS: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Dep {
    src: u64,
    recorded: u64,
    waited_at: u64,
}

/// Recorded events remembered (beyond: the map starts over, counted).
const MAX_EVENTS: usize = 1 << 16;

#[derive(Default)]
pub struct SyncTracker {
    streams: FastMap<(ProcId, u64), VecDeque<PendingWork>>,
    proc_streams: FastMap<ProcId, Vec<u64>>,
    /// (process, event handle) -> (stream, time recorded).
    events: FastMap<(ProcId, u64), (u64, u64)>,
    /// (process, stream) -> streams it was made to wait for.
    deps: FastMap<(ProcId, u64), Vec<Dep>>,
    pub bounded: u64,
    pub forgotten: u64,
}

impl SyncTracker {
    /// Work enqueued on `stream`.
    #[inline]
    pub fn enqueue(&mut self, proc: ProcId, stream: u64, w: PendingWork) {
        let q = self.streams.entry((proc, stream)).or_insert_with(|| {
            self.proc_streams.entry(proc).or_default().push(stream);
            VecDeque::new()
        });
        if q.len() >= PER_STREAM {
            q.pop_front();
            self.forgotten += 1;
        }
        q.push_back(w);
    }

    fn drain(
        q: &mut VecDeque<PendingWork>,
        before: u64,
        ub: u64,
        out: &mut Vec<(PendingWork, u64)>,
    ) {
        while q.front().is_some_and(|w| w.entry_ns < before) {
            if let Some(w) = q.pop_front() {
                out.push((w, ub));
            }
        }
    }

    /// A stream synchronisation that began at `entry` and returned successfully at `exit`.
    pub fn stream_sync(
        &mut self,
        proc: ProcId,
        stream: u64,
        entry: u64,
        exit: u64,
        out: &mut Vec<(PendingWork, u64)>,
    ) {
        let n = out.len();
        if let Some(q) = self.streams.get_mut(&(proc, stream)) {
            Self::drain(q, entry, exit, out);
        }
        // Work this stream was made to wait for (cudaStreamWaitEvent) before the sync point
        // is complete too.
        if let Some(deps) = self.deps.get_mut(&(proc, stream)) {
            let mut i = 0;
            while i < deps.len() {
                let d = deps[i];
                if d.waited_at < entry {
                    deps.swap_remove(i);
                    if let Some(q) = self.streams.get_mut(&(proc, d.src)) {
                        Self::drain(q, d.recorded, exit, out);
                    }
                } else {
                    i += 1;
                }
            }
        }
        self.bounded += (out.len() - n) as u64;
    }

    /// A device/context synchronisation: every stream of the process.
    pub fn device_sync(
        &mut self,
        proc: ProcId,
        entry: u64,
        exit: u64,
        out: &mut Vec<(PendingWork, u64)>,
    ) {
        let n = out.len();
        if let Some(streams) = self.proc_streams.get(&proc) {
            for s in streams {
                if let Some(q) = self.streams.get_mut(&(proc, *s)) {
                    Self::drain(q, entry, exit, out);
                }
            }
        }
        self.bounded += (out.len() - n) as u64;
    }

    /// `cudaEventRecord(event, stream)` at `t`.
    pub fn event_record(&mut self, proc: ProcId, event: u64, stream: u64, t: u64) {
        if self.events.len() >= MAX_EVENTS && !self.events.contains_key(&(proc, event)) {
            self.forgotten += self.events.len() as u64;
            self.events.clear();
        }
        self.events.insert((proc, event), (stream, t));
    }

    /// `cudaStreamWaitEvent(stream, event)` at `t`: later work on `stream` waits for what was
    /// enqueued on the event's stream before it was recorded.
    pub fn stream_wait(&mut self, proc: ProcId, stream: u64, event: u64, t: u64) {
        let Some(&(src, recorded)) = self.events.get(&(proc, event)) else {
            return;
        };
        if src == stream {
            return;
        }
        let deps = self.deps.entry((proc, stream)).or_default();
        if deps.len() >= MAX_DEPS {
            deps.remove(0);
            self.forgotten += 1;
        }
        deps.push(Dep {
            src,
            recorded,
            waited_at: t,
        });
    }

    /// An event sync, or a query that reported the event complete, returning at `exit`: work
    /// enqueued on the event's stream before it was recorded is complete.
    pub fn event_done(
        &mut self,
        proc: ProcId,
        event: u64,
        exit: u64,
        out: &mut Vec<(PendingWork, u64)>,
    ) {
        if let Some(&(stream, recorded)) = self.events.get(&(proc, event)) {
            self.stream_sync(proc, stream, recorded, exit, out);
        }
    }

    /// The process is gone.
    pub fn forget_proc(&mut self, proc: ProcId) {
        if let Some(streams) = self.proc_streams.remove(&proc) {
            for s in streams {
                self.streams.remove(&(proc, s));
            }
        }
        self.events.retain(|(p, _), _| *p != proc);
        self.deps.retain(|(p, _), _| *p != proc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(call: u64, t: u64) -> PendingWork {
        PendingWork {
            lane: 0,
            lane_id: 0,
            member: 0,
            call,
            entry_ns: t,
        }
    }

    #[test]
    fn sync_bounds_earlier_work_on_its_stream_only() {
        let mut s = SyncTracker::default();
        s.enqueue(1, 0xa, w(0, 10));
        s.enqueue(1, 0xa, w(1, 20));
        s.enqueue(1, 0xb, w(2, 15));
        let mut out = vec![];
        s.stream_sync(1, 0xa, 18, 40, &mut out);
        assert_eq!(out, vec![(w(0, 10), 40)]);
        out.clear();
        // Event recorded on 0xb at 16 and queried complete at 50.
        s.event_record(1, 0xe, 0xb, 16);
        s.event_done(1, 0xe, 50, &mut out);
        assert_eq!(out, vec![(w(2, 15), 50)]);
        out.clear();
        s.device_sync(1, 60, 70, &mut out);
        assert_eq!(out, vec![(w(1, 20), 70)]);
        // Another process's sync bounds nothing.
        s.enqueue(1, 0xa, w(3, 80));
        out.clear();
        s.device_sync(2, 90, 95, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_sync_covers_streams_it_was_made_to_wait_for() {
        // A collective on the NCCL stream 0xc, an event recorded after it, the compute stream
        // 0xa made to wait for that event, then the compute stream synchronised.
        let mut s = SyncTracker::default();
        s.enqueue(1, 0xc, w(0, 10));
        s.event_record(1, 0xe, 0xc, 12);
        s.enqueue(1, 0xc, w(1, 14));
        s.stream_wait(1, 0xa, 0xe, 13);
        let mut out = vec![];
        s.stream_sync(1, 0xa, 20, 30, &mut out);
        assert_eq!(out, vec![(w(0, 10), 30)]);
    }
}
