//! Record files (`llmdd record`, read by `llmdd report` / `export`): what the probes
//! delivered, raw, plus what is needed to analyse it elsewhere and later.
//!
//! # Format (version 1)
//! ```text
//! file    = header chunk*
//! header  = "LLMDDREC" version:u32 record_layout:u32            (16 bytes, little endian)
//! chunk   = "CHNK" kind:u8 0 0 0 len:u32 raw_len:u32 crc32:u32  (20 bytes)
//!           payload[len]                                          (zstd of raw_len bytes)
//! ```
//! `crc32` covers the 12 bytes from `kind` to `raw_len` and the compressed payload. Kinds:
//! 1 = start metadata (JSON [`Meta`]), 2 = events, 3 = end metadata (JSON [`End`]). An
//! events payload is `now_ns:u64` (the recorder's CLOCK_MONOTONIC when it wrote the chunk)
//! followed by records as `len:u32 bytes[len]`, each exactly as the ring buffer delivered it
//! (decoded on reading with the same decoder as live tracing; `record_layout` is
//! `llmdd_common::FORMAT_VERSION`, and a file of another layout is refused with a clear
//! message rather than misread).
//!
//! The file is only ever appended to, one whole chunk per write, flushed as it goes (every
//! second or 4096 records): a recorder killed with SIGKILL, or stopped by a full disk, loses
//! at most the chunk it was writing, and the reader keeps everything before the first chunk
//! that is cut short or fails its checksum, saying how much it skipped.
//!
//! Why not a generic container (Arrow IPC, Parquet, SQLite): the recorder runs on a node in
//! an incident and must append in small crash-safe steps with no schema work on the hot
//! path; a checksummed frame around zstd is what that needs, and `export` turns a record
//! into JSON lines for analysis tools.

use std::{
    fs::File,
    io::{BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use llmdd_common::funcs::Family;

use crate::{
    engine::{LayoutLib, ProcessHints},
    events::Event,
    views::run::{LibInfo, ProcInfo},
};

/// File magic.
pub const MAGIC: &[u8; 8] = b"LLMDDREC";
/// Version of the container format described above.
pub const VERSION: u32 = 1;
const CHUNK_MAGIC: &[u8; 4] = b"CHNK";
const HEADER_LEN: usize = 16;
const CHUNK_HEADER_LEN: usize = 20;
/// Largest chunk payload accepted (compressed or not): a corrupted length field must not
/// make the reader allocate gigabytes.
const MAX_CHUNK: u32 = 64 << 20;

const KIND_META: u8 = 1;
const KIND_EVENTS: u8 = 2;
const KIND_END: u8 = 3;
/// Named user stacks (`--stacks`): JSON `[RecStack]`, written as they are first seen, so
/// that `report --flamegraph` folds by them. Readers before it skip the kind.
const KIND_STACKS: u8 = 4;
/// The probes' counters when new losses were seen (`LossMark`, JSON), written after the
/// events drained before them: the offline engine marks the same windows as the live one.
const KIND_LOSS: u8 = 5;

/// One named user stack of a recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecStack {
    pub pid: u32,
    pub id: u32,
    pub caller: u64,
    /// Outermost caller first.
    pub frames: Vec<String>,
}

/// Why a record file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot create {}: {source} (choose a writable path)", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not an llmdd record file (no LLMDDREC header)", path.display())]
    NotARecord { path: PathBuf },
    #[error(
        "{} is record format {found} (this llmdd reads {VERSION}): use the llmdd version that wrote it",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "{} holds probe records of layout {found} (this llmdd decodes {expected}): use the llmdd version that wrote it",
        path.display()
    )]
    Layout {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{}: no readable metadata chunk: nothing could be salvaged", path.display())]
    NoMeta { path: PathBuf },
}

/// One attached library, as recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecLib {
    pub family: String,
    pub label: String,
    pub path: String,
    pub version: Option<String>,
    pub build_id: Option<String>,
    pub functions_probed: usize,
    pub slot: Option<u16>,
}

/// One attached process, as recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecProc {
    pub pid: u32,
    pub comm: String,
    /// Rank, local rank and world size from the environment, host, job key.
    pub rank: Option<u32>,
    pub local_rank: Option<u32>,
    pub world_size: Option<u32>,
    pub job: Option<String>,
    pub libraries: Vec<RecLib>,
    /// The parent process and the MPI world communicator's handle (recorded since layout
    /// 2's first extension; absent in older files).
    #[serde(default)]
    pub parent: Option<u32>,
    #[serde(default)]
    pub world_comm: Option<u64>,
    /// What it is on a vLLM / llm-d node (absent in files recorded before roles).
    #[serde(default)]
    pub role: Option<String>,
}

/// The start metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub tool_version: String,
    pub host: Option<String>,
    pub kernel_release: String,
    pub kernel_version: String,
    pub machine: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: Option<String>,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC (ns) when recording started.
    pub realtime_offset_ns: i64,
    /// CLOCK_MONOTONIC (ns) when recording started.
    pub start_ns: u64,
    pub started_unix_s: f64,
    pub processes: Vec<RecProc>,
    /// The user-defined probes of the run (`--probe`), in function-id order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_probes: Vec<crate::userprobe::UserProbe>,
}

/// The end metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct End {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC (ns) when recording stopped.
    pub realtime_offset_ns: i64,
    pub end_ns: u64,
    /// Records the recorder read, and of them undecodable.
    pub records: u64,
    pub undecodable: u64,
    /// The probes' counters at the stop (`llmdd_common::counters` order).
    pub counters: Vec<u64>,
    pub stopped_because: String,
    /// Processes that appeared after the start (libraries loaded late are not listed).
    pub processes: Vec<RecProc>,
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC now, in ns.
pub fn realtime_offset_ns() -> i64 {
    let mono = crate::session::monotonic_ns() as i64;
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    real - mono
}

impl RecProc {
    pub fn from_info(info: &ProcInfo, hints: &ProcessHints) -> RecProc {
        RecProc {
            pid: info.pid,
            comm: info.comm.clone(),
            rank: hints.rank,
            local_rank: hints.local_rank,
            world_size: hints.world_size,
            job: hints.job.clone(),
            parent: hints.parent,
            world_comm: hints.world_comm,
            role: info.role.clone(),
            libraries: info
                .libraries
                .iter()
                .map(|l| RecLib {
                    family: l.family.to_string(),
                    label: l.label.to_string(),
                    path: l.path.clone(),
                    version: l.version.clone(),
                    build_id: l.build_id.clone(),
                    functions_probed: l.functions_probed,
                    slot: l.slot,
                })
                .collect(),
        }
    }

    /// The engine's hints for this process, on `host`.
    pub fn hints(&self, host: Option<String>) -> ProcessHints {
        ProcessHints {
            rank: self.rank,
            local_rank: self.local_rank,
            world_size: self.world_size,
            host,
            job: self.job.clone(),
            parent: self.parent,
            world_comm: self.world_comm,
            layouts: self
                .libraries
                .iter()
                .filter_map(|l| {
                    let family = [Family::Nccl, Family::Gloo, Family::Vllm]
                        .into_iter()
                        .find(|f| f.name() == l.family)?;
                    Some(LayoutLib::new(
                        family,
                        l.build_id.as_deref(),
                        &l.path,
                        l.version.as_deref(),
                    ))
                })
                .collect(),
        }
    }

    /// What the views show about this process.
    pub fn info(&self) -> ProcInfo {
        ProcInfo {
            pid: self.pid,
            comm: self.comm.clone(),
            env_rank: self.rank,
            env_world_size: self.world_size,
            role: self.role.clone(),
            libraries: self
                .libraries
                .iter()
                .map(|l| LibInfo {
                    family: static_name(&l.family),
                    label: static_name(&l.label),
                    path: l.path.clone(),
                    version: l.version.clone(),
                    build_id: l.build_id.clone(),
                    functions_probed: l.functions_probed,
                    slot: l.slot,
                })
                .collect(),
            ..ProcInfo::default()
        }
    }
}

/// The views keep family and label names as `&'static str`: a recorded name maps back to
/// the known one, anything else to "other".
fn static_name(s: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "nccl", "rccl", "cudart", "cuda", "mpi", "hip", "gloo", "vllm", "nixl", "user",
    ];
    for f in llmdd_common::funcs::FUNCS {
        if f.family.name() == s {
            return f.family.name();
        }
    }
    KNOWN.iter().find(|k| **k == s).copied().unwrap_or("other")
}

/// Appends chunks to a record file.
pub struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    /// Records waiting for the next events chunk.
    pending: Vec<u8>,
    pending_records: u32,
    last_flush: std::time::Instant,
    last_sync: std::time::Instant,
}

/// Records per events chunk at most.
const CHUNK_RECORDS: u32 = 4096;
/// An events chunk is written at least this often while records arrive.
const CHUNK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Written chunks reach the disk (fsync) at least this often: what a power loss can cost.
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Writer {
    /// Creates `path` as a new file of mode 0600 (it describes other users' processes),
    /// replacing what was there without following a symlink (`outfile`).
    pub fn create(path: &Path) -> Result<Writer, RecordError> {
        let file = crate::outfile::create_private(path).map_err(|source| RecordError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        let mut w = Writer {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            pending: Vec::new(),
            pending_records: 0,
            last_flush: std::time::Instant::now(),
            last_sync: std::time::Instant::now(),
        };
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&llmdd_common::FORMAT_VERSION.to_le_bytes());
        w.write_all(&header)?;
        w.flush()?;
        Ok(w)
    }

    fn io(&self, source: std::io::Error) -> RecordError {
        RecordError::Write {
            path: self.path.clone(),
            source,
        }
    }

    fn write_all(&mut self, b: &[u8]) -> Result<(), RecordError> {
        self.out.write_all(b).map_err(|e| self.io(e))
    }

    fn flush(&mut self) -> Result<(), RecordError> {
        self.out.flush().map_err(|e| self.io(e))
    }

    fn chunk(&mut self, kind: u8, raw: &[u8]) -> Result<(), RecordError> {
        let payload = zstd::bulk::compress(raw, 3).map_err(|e| self.io(e))?;
        let mut head = Vec::with_capacity(CHUNK_HEADER_LEN);
        head.extend_from_slice(CHUNK_MAGIC);
        head.extend_from_slice(&[kind, 0, 0, 0]);
        head.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        head.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[4..16]);
        crc.update(&payload);
        head.extend_from_slice(&crc.finalize().to_le_bytes());
        self.write_all(&head)?;
        self.write_all(&payload)?;
        self.flush()?;
        if kind == KIND_END || self.last_sync.elapsed() >= SYNC_EVERY {
            self.last_sync = std::time::Instant::now();
            self.out.get_ref().sync_data().map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// The start metadata (first chunk).
    pub fn meta(&mut self, meta: &Meta) -> Result<(), RecordError> {
        let json = serde_json::to_vec(meta).map_err(|e| self.io(e.into()))?;
        self.chunk(KIND_META, &json)
    }

    /// One raw ring-buffer record; written out in chunks.
    pub fn record(&mut self, bytes: &[u8], now_ns: u64) -> Result<(), RecordError> {
        if self.pending.is_empty() {
            self.pending.extend_from_slice(&now_ns.to_le_bytes());
        }
        self.pending
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(bytes);
        self.pending_records += 1;
        if self.pending_records >= CHUNK_RECORDS {
            self.flush_events(now_ns)?;
        }
        Ok(())
    }

    /// Writes the pending records when a chunk is due (call periodically).
    pub fn tick(&mut self, now_ns: u64) -> Result<(), RecordError> {
        if self.pending_records > 0 && self.last_flush.elapsed() >= CHUNK_EVERY {
            self.flush_events(now_ns)?;
        }
        Ok(())
    }

    fn flush_events(&mut self, now_ns: u64) -> Result<(), RecordError> {
        if self.pending_records == 0 {
            return Ok(());
        }
        // The chunk's time is when it was written (the latest the records can be).
        self.pending[..8].copy_from_slice(&now_ns.to_le_bytes());
        let raw = std::mem::take(&mut self.pending);
        self.pending_records = 0;
        self.last_flush = std::time::Instant::now();
        self.chunk(KIND_EVENTS, &raw)
    }

    /// Named user stacks first seen since the last call (their chunk goes before the
    /// pending records, which may refer to them).
    pub fn stacks(&mut self, stacks: &[RecStack]) -> Result<(), RecordError> {
        if stacks.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_vec(stacks).map_err(|e| self.io(e.into()))?;
        self.chunk(KIND_STACKS, &json)
    }

    /// New losses seen at `mark.at_ns`: the events drained before them go out first, so a
    /// reader meets the mark where the live engine did.
    pub fn losses(&mut self, mark: &LossMark) -> Result<(), RecordError> {
        self.flush_events(mark.at_ns)?;
        let json = serde_json::to_vec(mark).map_err(|e| self.io(e.into()))?;
        self.chunk(KIND_LOSS, &json)
    }

    /// Writes what is pending and the end metadata.
    pub fn finish(&mut self, end: &End) -> Result<(), RecordError> {
        self.flush_events(end.end_ns)?;
        let json = serde_json::to_vec(end).map_err(|e| self.io(e.into()))?;
        self.chunk(KIND_END, &json)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One chunk of events as read back: when it was written, and its records decoded.
#[derive(Clone, Debug, Default)]
pub struct EventChunk {
    pub now_ns: u64,
    pub events: Vec<Event>,
}

/// What the reader could not use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Salvage {
    /// Chunks read and used.
    pub chunks: u64,
    /// Bytes after the last good chunk (a chunk cut short, a bad checksum, garbage).
    pub bytes_skipped: u64,
    /// Why reading stopped early, if it did.
    pub stopped_early: Option<String>,
    /// Records that could not be decoded, and exec-mapping notices (not events).
    pub undecodable: u64,
    pub notices: u64,
    /// Whether the end metadata was found (absent: the recorder did not stop cleanly).
    pub complete: bool,
}

impl Salvage {
    /// One line for the user, or `None` when the file was read whole.
    pub fn message(&self, path: &Path) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(why) = &self.stopped_early {
            parts.push(format!(
                "{why}; kept the {} chunks before it, skipped the last {} bytes",
                self.chunks, self.bytes_skipped
            ));
        } else if !self.complete {
            parts.push(
                "no end metadata: the recorder did not stop cleanly (events up to its last chunk are kept)"
                    .to_string(),
            );
        }
        if self.undecodable > 0 {
            parts.push(format!("{} undecodable records", self.undecodable));
        }
        (!parts.is_empty()).then(|| format!("{}: {}", path.display(), parts.join("; ")))
    }
}

/// The probes' counters (`llmdd_common::counters`) as read when the live run saw new
/// losses, at `at_ns` (CLOCK_MONOTONIC).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossMark {
    pub at_ns: u64,
    pub counters: Vec<u64>,
}

impl LossMark {
    /// Records lost in all, by the counters that count losses.
    pub fn lost(counters: &[u64]) -> u64 {
        llmdd_common::counters::LOSSES
            .iter()
            .filter_map(|&i| counters.get(i as usize))
            .sum()
    }
}

/// A record file read back.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    pub path: PathBuf,
    pub meta: Meta,
    pub end: Option<End>,
    pub chunks: Vec<EventChunk>,
    /// Named user stacks recorded with `--stacks`.
    pub stacks: Vec<RecStack>,
    /// Loss marks, each with the number of events chunks read before it.
    pub losses: Vec<(usize, LossMark)>,
    /// Events chunks read (or skipped, by [`scan`]).
    pub event_chunks: usize,
    pub salvage: Salvage,
}

impl Recording {
    /// Every event, in file order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.chunks.iter().flat_map(|c| c.events.iter())
    }

    /// The probes' counters at the end: the end metadata's, else (the recorder did not stop
    /// cleanly) the last loss mark's, else none.
    pub fn final_counters(&self) -> Vec<u64> {
        match (&self.end, self.losses.last()) {
            (Some(e), _) => e.counters.clone(),
            (None, Some((_, m))) => m.counters.clone(),
            (None, None) => Vec::new(),
        }
    }

    pub fn event_count(&self) -> usize {
        self.chunks.iter().map(|c| c.events.len()).sum()
    }

    /// Every process recorded (at the start, and those the end metadata adds).
    pub fn processes(&self) -> Vec<RecProc> {
        let mut out = self.meta.processes.clone();
        if let Some(end) = &self.end {
            for p in &end.processes {
                if !out.iter().any(|q| q.pid == p.pid) {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    /// The recording as the multi-host merge takes it.
    pub fn to_host(&self) -> crate::merge::HostRecording {
        let host = self
            .meta
            .host
            .clone()
            .unwrap_or_else(|| self.path.display().to_string());
        crate::merge::HostRecording {
            host: host.clone(),
            boot_id: self.meta.boot_id.clone(),
            realtime_offset_ns: Some((
                self.meta.realtime_offset_ns,
                self.end
                    .as_ref()
                    .map(|e| e.realtime_offset_ns)
                    .unwrap_or(self.meta.realtime_offset_ns),
            )),
            processes: self
                .processes()
                .iter()
                .map(|p| (p.pid, p.hints(Some(host.clone()))))
                .collect(),
            events: self.events().cloned().collect(),
            span_ns: self.end.as_ref().map(|e| (self.meta.start_ns, e.end_ns)),
        }
    }

    /// [`Recording::to_host`], moving the events out instead of copying them (the
    /// recording keeps everything else).
    pub fn take_host(&mut self) -> crate::merge::HostRecording {
        let chunks = std::mem::take(&mut self.chunks);
        let mut h = self.to_host();
        h.events = chunks.into_iter().flat_map(|c| c.events).collect();
        h
    }
}

/// Reads a whole record file, salvaging what precedes any damage. `progress` is called
/// with the bytes read so far and the file's size.
pub fn read(path: &Path, mut progress: impl FnMut(u64, u64)) -> Result<Recording, RecordError> {
    let data = read_bytes(path)?;
    let size = data.len() as u64;
    parse(path, &data, &mut progress).map(|mut r| {
        progress(size, size);
        r.path = path.to_path_buf();
        r
    })
}

/// A whole record file's bytes.
fn read_bytes(path: &Path) -> Result<Vec<u8>, RecordError> {
    std::fs::read(path).map_err(|source| RecordError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses the bytes of a record file (see [`read`]). Never panics, whatever the input.
pub fn parse(
    path: &Path,
    data: &[u8],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Recording, RecordError> {
    parse_with(path, data, progress, Probes::Register)
}

/// What the parser does with the user probes in a recording's metadata.
#[derive(Clone, Copy)]
pub(super) enum Probes<'a> {
    /// Registers them as the run's (one recording).
    Register,
    /// Renumbers the recording's user function ids into a table registered for several
    /// recordings (`probes::read_all`).
    Renumber(&'a [llmdd_common::funcs::FuncId]),
    /// Leaves them: already registered by an earlier pass over the same file.
    AsRegistered,
}

/// What the parser does with events chunks.
pub(super) enum Events<'a> {
    /// Decodes them into `Recording::chunks`.
    Keep,
    /// Skips them unread (counted, for the loss marks' places).
    Skip,
    /// Decodes each and hands it over, keeping none.
    Visit(&'a mut dyn FnMut(EventChunk)),
}

/// [`parse`], the recording's user probes handled as `probes` says.
fn parse_with(
    path: &Path,
    data: &[u8],
    progress: &mut dyn FnMut(u64, u64),
    probes: Probes<'_>,
) -> Result<Recording, RecordError> {
    check_header(path, data.get(..HEADER_LEN))?;
    let mut frames = frames::Slice {
        data,
        at: HEADER_LEN,
    };
    parse_frames(path, &mut frames, progress, probes, Events::Keep)
}

/// Checks the file header: magic, version and record layout.
fn check_header(path: &Path, head: Option<&[u8]>) -> Result<(), RecordError> {
    let Some(head) = head.filter(|h| h.len() >= HEADER_LEN && &h[..8] == MAGIC) else {
        return Err(RecordError::NotARecord {
            path: path.to_path_buf(),
        });
    };
    let word = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let version = word(8);
    if version != VERSION {
        return Err(RecordError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let layout = word(12);
    if layout != llmdd_common::FORMAT_VERSION {
        return Err(RecordError::Layout {
            path: path.to_path_buf(),
            found: layout,
            expected: llmdd_common::FORMAT_VERSION,
        });
    }
    Ok(())
}

/// Reads every frame of `frames`: the metadata, stacks and loss marks into the recording,
/// events as `events` says, stopping at the first damaged frame (said in the salvage).
fn parse_frames(
    path: &Path,
    frames: &mut dyn frames::Frames,
    progress: &mut dyn FnMut(u64, u64),
    probes: Probes<'_>,
    mut events: Events<'_>,
) -> Result<Recording, RecordError> {
    let mut rec = Recording::default();
    let mut meta: Option<Meta> = None;
    let total = frames.total();
    let mut event_chunks = 0usize;
    let mut last_progress = 0u64;
    let remap = match probes {
        Probes::Renumber(m) => Some(m),
        _ => None,
    };
    loop {
        let at = frames.at();
        let (kind, raw) = match frames.next(matches!(events, Events::Skip)) {
            frames::Next::Done => break,
            frames::Next::Stop(why) => {
                rec.salvage.stopped_early = Some(format!("{why} at byte {at}"));
                rec.salvage.bytes_skipped = total.saturating_sub(at);
                break;
            }
            frames::Next::Frame { kind, raw } => (kind, raw),
        };
        let raw = raw.unwrap_or_default();
        let bad = match kind {
            KIND_META => match serde_json::from_slice::<Meta>(&raw) {
                Ok(m) if meta.is_none() => {
                    // The recording's user probes give meaning to its user function ids.
                    if matches!(probes, Probes::Register) {
                        if let Err(e) = crate::userprobe::register(&m.user_probes) {
                            tracing::warn!("{}: {e}", path.display());
                        }
                    }
                    meta = Some(m);
                    None
                }
                Ok(_) => None,
                Err(_) => Some("unreadable metadata"),
            },
            KIND_END => match serde_json::from_slice::<End>(&raw) {
                Ok(e) => {
                    rec.end = Some(e);
                    rec.salvage.complete = true;
                    None
                }
                Err(_) => Some("unreadable end metadata"),
            },
            KIND_STACKS => match serde_json::from_slice::<Vec<RecStack>>(&raw) {
                Ok(s) => {
                    rec.stacks.extend(s);
                    None
                }
                Err(_) => Some("unreadable stack names"),
            },
            KIND_LOSS => match serde_json::from_slice::<LossMark>(&raw) {
                Ok(m) => {
                    rec.losses.push((event_chunks, m));
                    None
                }
                Err(_) => Some("an unreadable loss mark"),
            },
            KIND_EVENTS => {
                event_chunks += 1;
                match &mut events {
                    Events::Skip => {}
                    Events::Keep => rec
                        .chunks
                        .push(decode_events(&raw, &mut rec.salvage, remap)),
                    Events::Visit(f) => f(decode_events(&raw, &mut rec.salvage, remap)),
                }
                None
            }
            // A chunk kind from a later writer: skipped, its frame is intact.
            _ => None,
        };
        if let Some(why) = bad {
            rec.salvage.stopped_early = Some(format!("{why} at byte {at}"));
            rec.salvage.bytes_skipped = total.saturating_sub(at);
            break;
        }
        rec.salvage.chunks += 1;
        if frames.at() - last_progress >= 8 << 20 {
            last_progress = frames.at();
            progress(last_progress, total);
        }
    }
    rec.event_chunks = event_chunks;
    rec.meta = meta.ok_or_else(|| RecordError::NoMeta {
        path: path.to_path_buf(),
    })?;
    Ok(rec)
}

/// Opens a record file for streaming: its frames after a checked header.
fn stream(path: &Path) -> Result<frames::Stream, RecordError> {
    let open_err = |source| RecordError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let total = file.metadata().map(|m| m.len()).map_err(open_err)?;
    let mut head = [0u8; HEADER_LEN];
    let got = file.read(&mut head).map_err(open_err)?;
    check_header(path, head.get(..got))?;
    Ok(frames::Stream::new(file, HEADER_LEN as u64, total))
}

/// Reads a record file without its events, streaming it (one chunk in memory at a time):
/// metadata, end, stacks, loss marks (placed by events chunk), the salvage, and
/// `event_chunks`. The recording's user probes are registered. Events come with [`visit`].
pub fn scan(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Recording, RecordError> {
    let mut frames = stream(path)?;
    let mut r = parse_frames(path, &mut frames, progress, Probes::Register, Events::Skip)?;
    r.path = path.to_path_buf();
    Ok(r)
}

/// Streams the events of a record file [`scan`]ned before, one chunk at a time, to `f`;
/// returns the recording without its events (its salvage counts undecodable records).
pub fn visit(
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
    f: &mut dyn FnMut(EventChunk),
) -> Result<Recording, RecordError> {
    let mut frames = stream(path)?;
    let mut r = parse_frames(
        path,
        &mut frames,
        progress,
        Probes::AsRegistered,
        Events::Visit(f),
    )?;
    r.path = path.to_path_buf();
    Ok(r)
}

fn decode_events(
    raw: &[u8],
    salvage: &mut Salvage,
    remap: Option<&[llmdd_common::funcs::FuncId]>,
) -> EventChunk {
    let mut chunk = EventChunk::default();
    let Some(now) = raw.get(..8) else {
        return chunk;
    };
    let mut b = [0u8; 8];
    b.copy_from_slice(now);
    chunk.now_ns = u64::from_le_bytes(b);
    let mut at = 8;
    while let Some(len) = raw.get(at..at + 4) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(bytes) = raw.get(at + 4..at + 4 + len) else {
            salvage.undecodable += 1;
            break;
        };
        let renumbered = remap.and_then(|m| probes::renumber(bytes, m));
        match Event::decode(renumbered.as_deref().unwrap_or(bytes)) {
            Ok(ev) => chunk.events.push(ev),
            Err(crate::events::DecodeError::NotAnEvent(_)) => salvage.notices += 1,
            Err(_) => salvage.undecodable += 1,
        }
        at += 4 + len;
    }
    chunk
}

mod frames;
mod probes;
pub use probes::{read_all, union_of};

#[cfg(test)]
mod tests;
