//! Restores time order. Records reach userspace in batches that are not strictly ordered
//! across CPUs; the engine holds each event until event time (or the caller's `advance`) has
//! moved `reorder_window_ns` past it, then releases events in order of their key.
//!
//! The key of a call is its exit time (a call's record is emitted when it returns, so exit
//! order is emission order and, on one thread, also entry order); entry time when it has not
//! returned. Socket and exit events use their timestamp.

use std::{cmp::Reverse, collections::BinaryHeap};

use crate::events::Event;

/// Ordering key of an event.
pub fn key_of(ev: &Event) -> u64 {
    match ev {
        Event::Call(c) => c.exit_ns.unwrap_or(c.entry_ns),
        Event::Sock(s) => s.ts_ns,
        Event::ProcExit(p) => p.ts_ns,
    }
}

pub struct Reorder {
    /// (key, arrival number, slab slot): the arrival number keeps equal keys in arrival order.
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    slab: Vec<Option<Event>>,
    free: Vec<u32>,
    arrivals: u64,
    window_ns: u64,
    /// Newest key seen.
    pub max_key: u64,
    /// Everything at or below this has been released.
    pub released_upto: u64,
    /// Events that came in behind what had already been released (processed at once).
    pub late: u64,
    /// Events that came in with a key older than the newest seen (put back in order).
    pub reordered: u64,
}

impl Reorder {
    pub fn new(window_ns: u64) -> Reorder {
        Reorder {
            heap: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            arrivals: 0,
            window_ns,
            max_key: 0,
            released_upto: 0,
            late: 0,
            reordered: 0,
        }
    }

    /// Takes an event in. Returns it back when it is already behind the release point (the
    /// caller processes it at once).
    pub fn push(&mut self, ev: Event) -> Option<Event> {
        let key = key_of(&ev);
        if key < self.released_upto {
            self.late += 1;
            return Some(ev);
        }
        if key < self.max_key {
            self.reordered += 1;
        } else {
            self.max_key = key;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(ev);
                s
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        self.heap.push(Reverse((key, self.arrivals, slot)));
        self.arrivals += 1;
        None
    }

    /// The release point for a given "now": everything at or before it is safe to process.
    pub fn watermark(&self, now_ns: u64) -> u64 {
        self.max_key.max(now_ns).saturating_sub(self.window_ns)
    }

    /// Next event at or below `upto`, in key order.
    pub fn pop_upto(&mut self, upto: u64) -> Option<Event> {
        let &Reverse((key, _, slot)) = self.heap.peek()?;
        if key > upto {
            return None;
        }
        self.heap.pop();
        self.released_upto = self.released_upto.max(key);
        self.free.push(slot);
        self.slab[slot as usize].take()
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ProcExitEvent;

    fn ev(ts: u64) -> Event {
        Event::ProcExit(ProcExitEvent {
            pid: ts as u32,
            ts_ns: ts,
        })
    }

    #[test]
    fn releases_in_key_order_after_the_window() {
        let mut r = Reorder::new(10);
        for t in [100, 95, 103, 99, 120] {
            assert!(r.push(ev(t)).is_none());
        }
        let wm = r.watermark(0);
        assert_eq!(wm, 110);
        let mut out = vec![];
        while let Some(e) = r.pop_upto(wm) {
            out.push(key_of(&e));
        }
        assert_eq!(out, vec![95, 99, 100, 103]);
        assert_eq!(r.len(), 1);
        assert_eq!(r.reordered, 2);
        // Behind the release point: handed back.
        assert!(r.push(ev(90)).is_some());
        assert_eq!(r.late, 1);
    }
}
