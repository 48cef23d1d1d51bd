//! Ring-buffer reading: wait for data (a wakeup or the drain timer), then drain every
//! record, decoding it into typed [`Event`]s in batches.
//!
//! The BPF side asks for a wakeup only when a large backlog waits (see
//! `llmdd_common::RING_WAKEUP_BYTES`); otherwise the reader drains on its own timer. That
//! keeps a wakeup off the per-call path and makes each read a batch.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::events::Event;

/// Default interval between timer drains.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// The ring-buffer reader.
pub struct Reader {
    fd: AsyncFd<RingBuf<MapData>>,
    /// Records that could not be decoded (counted, never silently dropped).
    pub decode_errors: u64,
    /// Records read.
    pub records: u64,
    /// Processes that mapped a file executable since the last `take_new_mappings`.
    new_mappings: Vec<u32>,
    /// When recording: every event record's bytes, as delivered (see [`Reader::capture`]).
    raw: Option<Vec<Vec<u8>>>,
}

impl Reader {
    pub fn new(rb: RingBuf<MapData>) -> std::io::Result<Reader> {
        // SAFETY: the ring buffer owns its map fd, which stays open for as long as the
        // AsyncFd holds it (the RingBuf is moved in and dropped with it).
        let fd = unsafe { AsyncFd::register(rb) }.map_err(std::io::Error::from)?;
        Ok(Reader {
            fd,
            decode_errors: 0,
            records: 0,
            new_mappings: Vec::new(),
            raw: None,
        })
    }

    /// Waits until the kernel signals a backlog or `timeout` passes, whichever is first.
    pub async fn wait(&mut self, timeout: Duration) {
        if let Ok(Ok(mut guard)) = tokio::time::timeout(timeout, self.fd.readable_mut()).await {
            guard.clear_ready();
        }
    }

    /// Drains every waiting record into `out`.
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        let rb = self.fd.get_mut();
        while let Some(item) = rb.next() {
            self.records += 1;
            if let Some(pid) = exec_map_pid(&item) {
                if !self.new_mappings.contains(&pid) {
                    self.new_mappings.push(pid);
                }
                continue;
            }
            match Event::decode(&item) {
                Ok(ev) => {
                    if let Some(raw) = self.raw.as_mut() {
                        raw.push(item.to_vec());
                    }
                    out.push(ev)
                }
                Err(e) => {
                    self.decode_errors += 1;
                    if self.decode_errors == 1 {
                        tracing::warn!("undecodable record ({e}); further ones are only counted");
                    }
                }
            }
        }
    }
}

impl Reader {
    /// Keeps a copy of every event record's bytes from now on, for a record file.
    pub fn capture(&mut self) {
        self.raw.get_or_insert_with(Vec::new);
    }

    /// The records captured since the last call.
    pub fn take_raw(&mut self) -> Vec<Vec<u8>> {
        self.raw.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Processes that mapped a file executable (possibly a newly loaded library) since the
    /// last call: look at their mappings again and probe what is new.
    pub fn take_new_mappings(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.new_mappings)
    }
}

/// The pid of an `ExecMap` notice (a control record, not an analysis event).
fn exec_map_pid(bytes: &[u8]) -> Option<u32> {
    use llmdd_common::{proc::ExecMapRecord, RecordKind};
    let kind = u32::from_ne_bytes(bytes.get(0..4)?.try_into().ok()?);
    if RecordKind::from_u32(kind) != Some(RecordKind::ExecMap)
        || bytes.len() < std::mem::size_of::<ExecMapRecord>()
    {
        return None;
    }
    Some(u32::from_ne_bytes(bytes.get(4..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn exec_map_notices_are_recognised() {
        let mut rec = [0u8; 24];
        rec[0..4].copy_from_slice(&4u32.to_ne_bytes());
        rec[4..8].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(super::exec_map_pid(&rec), Some(77));
        rec[0..4].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(super::exec_map_pid(&rec), None);
        assert_eq!(super::exec_map_pid(&[4, 0, 0]), None);
    }
}
