//! The chunk frames of a record file, from bytes in memory or streamed from the file, so
//! that a recording of any size can be read chunk by chunk (`record::scan`, `record::visit`)
//! with one chunk in memory at a time. Both sources check every frame the same way and stop
//! at the first that is cut short, fails its checksum or does not decompress.

use std::{
    fs::File,
    io::{BufReader, Read},
};

use super::{CHUNK_HEADER_LEN, CHUNK_MAGIC, KIND_EVENTS, MAX_CHUNK};

/// What the next frame is.
pub(super) enum Next {
    /// A checked frame: its kind, and its decompressed payload (`None`: an events chunk
    /// skipped unread).
    Frame { kind: u8, raw: Option<Vec<u8>> },
    /// The frame at the current position is unusable, and why.
    Stop(&'static str),
    /// The end of the file.
    Done,
}

/// A sequence of frames after the file header.
pub(super) trait Frames {
    /// Byte offset of the next frame.
    fn at(&self) -> u64;
    /// The file's length.
    fn total(&self) -> u64;
    /// The next frame (events chunks skipped unread when `skip_events`).
    fn next(&mut self, skip_events: bool) -> Next;
}

/// The fields of a chunk header: kind, payload length, raw length, checksum.
fn fields(head: &[u8]) -> Result<(u8, u32, u32, u32), &'static str> {
    if head.get(..4) != Some(CHUNK_MAGIC.as_slice()) {
        return Err("no chunk starts");
    }
    let field = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let (kind, len, raw_len, crc) = (head[4], field(8), field(12), field(16));
    if len > MAX_CHUNK || raw_len > MAX_CHUNK {
        return Err("a chunk with an impossible length");
    }
    Ok((kind, len, raw_len, crc))
}

/// Checks a frame's payload and decompresses it.
fn open(head: &[u8], payload: &[u8], raw_len: u32, crc: u32) -> Result<Vec<u8>, &'static str> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head[4..16]);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Err("a chunk failing its checksum");
    }
    match zstd::bulk::decompress(payload, raw_len as usize) {
        Ok(r) if r.len() == raw_len as usize => Ok(r),
        _ => Err("a chunk that does not decompress"),
    }
}

/// Frames of a file held in memory, from `at` on.
pub(super) struct Slice<'a> {
    pub data: &'a [u8],
    pub at: usize,
}

impl Frames for Slice<'_> {
    fn at(&self) -> u64 {
        self.at as u64
    }

    fn total(&self) -> u64 {
        self.data.len() as u64
    }

    fn next(&mut self, skip_events: bool) -> Next {
        if self.at >= self.data.len() {
            return Next::Done;
        }
        let Some(head) = self.data.get(self.at..self.at + CHUNK_HEADER_LEN) else {
            return Next::Stop("a chunk header cut short");
        };
        let (kind, len, raw_len, crc) = match fields(head) {
            Ok(f) => f,
            Err(why) => return Next::Stop(why),
        };
        let body = self.at + CHUNK_HEADER_LEN;
        let Some(payload) = self.data.get(body..body + len as usize) else {
            return Next::Stop("a chunk cut short");
        };
        let raw = if skip_events && kind == KIND_EVENTS {
            None
        } else {
            match open(head, payload, raw_len, crc) {
                Ok(r) => Some(r),
                Err(why) => return Next::Stop(why),
            }
        };
        self.at = body + len as usize;
        Next::Frame { kind, raw }
    }
}

/// Frames read from the file as they are needed.
pub(super) struct Stream {
    file: BufReader<File>,
    at: u64,
    total: u64,
}

impl Stream {
    /// `file` positioned after its header, at byte `at` of `total`.
    pub fn new(file: File, at: u64, total: u64) -> Stream {
        Stream {
            file: BufReader::with_capacity(1 << 20, file),
            at,
            total,
        }
    }
}

impl Frames for Stream {
    fn at(&self) -> u64 {
        self.at
    }

    fn total(&self) -> u64 {
        self.total
    }

    fn next(&mut self, skip_events: bool) -> Next {
        if self.at >= self.total {
            return Next::Done;
        }
        let mut head = [0u8; CHUNK_HEADER_LEN];
        if self.file.read_exact(&mut head).is_err() {
            return Next::Stop("a chunk header cut short");
        }
        let (kind, len, raw_len, crc) = match fields(&head) {
            Ok(f) => f,
            Err(why) => return Next::Stop(why),
        };
        let end = self.at + (CHUNK_HEADER_LEN as u64) + u64::from(len);
        if end > self.total {
            return Next::Stop("a chunk cut short");
        }
        let raw = if skip_events && kind == KIND_EVENTS {
            if self.file.seek_relative(i64::from(len)).is_err() {
                return Next::Stop("a chunk cut short");
            }
            None
        } else {
            let mut payload = vec![0u8; len as usize];
            if self.file.read_exact(&mut payload).is_err() {
                return Next::Stop("a chunk cut short");
            }
            match open(&head, &payload, raw_len, crc) {
                Ok(r) => Some(r),
                Err(why) => return Next::Stop(why),
            }
        };
        self.at = end;
        Next::Frame { kind, raw }
    }
}
