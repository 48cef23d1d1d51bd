use super::*;
use llmdd_common::call::{CallRecord, F_RETURNED};
use proptest::prelude::*;

fn call_bytes(pid: u32, entry: u64) -> Vec<u8> {
    let rec = CallRecord {
        kind: llmdd_common::RecordKind::Call as u32,
        func: 0,
        pid,
        tid: pid,
        entry_ns: entry,
        exit_ns: entry + 500,
        flags: F_RETURNED,
        rank: -1,
        nranks: -1,
        ..CallRecord::default()
    };
    // SAFETY: a plain `repr(C)` struct of integers, read as bytes.
    unsafe {
        std::slice::from_raw_parts(
            &rec as *const CallRecord as *const u8,
            std::mem::size_of::<CallRecord>(),
        )
    }
    .to_vec()
}

fn meta() -> Meta {
    Meta {
        tool_version: "test".into(),
        host: Some("node-a".into()),
        boot_id: Some("b00t".into()),
        realtime_offset_ns: 42,
        start_ns: 1000,
        processes: vec![RecProc {
            pid: 7,
            comm: "rank0".into(),
            rank: Some(0),
            world_size: Some(2),
            libraries: vec![RecLib {
                family: "nccl".into(),
                label: "nccl".into(),
                path: "/x/libnccl.so.2".into(),
                slot: Some(0),
                ..RecLib::default()
            }],
            ..RecProc::default()
        }],
        ..Meta::default()
    }
}

/// A file with `n` calls in chunks of 4096, closed cleanly when `end`.
fn write_file(path: &Path, n: u64, end: bool) {
    let mut w = Writer::create(path).expect("create");
    w.meta(&meta()).expect("meta");
    for i in 0..n {
        w.record(&call_bytes(7, 2000 + i), 5000 + i)
            .expect("record");
    }
    if end {
        w.finish(&End {
            end_ns: 9_000_000,
            records: n,
            stopped_because: "test".into(),
            ..End::default()
        })
        .expect("finish");
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llmdd-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join(name)
}

#[test]
fn round_trip_keeps_every_event_and_the_metadata() {
    let p = tmp("round.rec");
    write_file(&p, 10_000, true);
    let r = read(&p, |_, _| {}).expect("read");
    assert_eq!(r.event_count(), 10_000);
    assert_eq!(r.meta, meta());
    assert!(r.salvage.complete && r.salvage.stopped_early.is_none());
    assert!(r.salvage.message(&p).is_none());
    assert_eq!(r.end.as_ref().map(|e| e.records), Some(10_000));
    // 4096-record chunks: 3 event chunks, plus metadata and end.
    assert_eq!(r.chunks.len(), 3);
    let info = r.processes()[0].info();
    assert_eq!((info.pid, info.libraries[0].family), (7, "nccl"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn named_stacks_are_kept() {
    let p = tmp("stacks.rec");
    let mut w = Writer::create(&p).expect("create");
    w.meta(&meta()).expect("meta");
    let s = RecStack {
        pid: 7,
        id: 3,
        caller: 0x4010,
        frames: vec!["main".into(), "step".into()],
    };
    w.stacks(&[]).expect("nothing to write");
    w.stacks(std::slice::from_ref(&s)).expect("stacks");
    w.record(&call_bytes(7, 2000), 5000).expect("record");
    w.finish(&End::default()).expect("finish");
    let r = read(&p, |_, _| {}).expect("read");
    assert_eq!(r.stacks, vec![s]);
    assert_eq!(r.event_count(), 1);
}

#[test]
fn a_file_cut_short_keeps_the_chunks_before_the_cut() {
    let p = tmp("cut.rec");
    write_file(&p, 10_000, true);
    let data = std::fs::read(&p).expect("read");
    // Cut inside the last events chunk.
    let cut = &data[..data.len() - 200];
    let r = parse(&p, cut, &mut |_, _| {}).expect("salvaged");
    assert_eq!(r.event_count(), 8192, "two whole chunks kept");
    assert!(!r.salvage.complete);
    let msg = r.salvage.message(&p).expect("says so");
    assert!(
        msg.contains("cut short") && msg.contains("skipped"),
        "{msg}"
    );
}

#[test]
fn a_flipped_byte_fails_its_chunk_checksum() {
    let p = tmp("flip.rec");
    write_file(&p, 5000, true);
    let mut data = std::fs::read(&p).expect("read");
    let n = data.len();
    data[n / 2] ^= 0x40;
    let r = parse(&p, &data, &mut |_, _| {}).expect("salvaged");
    assert!(r.event_count() < 5000);
    let msg = r.salvage.message(&p).expect("says so");
    assert!(msg.contains("checksum") || msg.contains("chunk"), "{msg}");
}

#[test]
fn a_recorder_that_never_finished_is_read_to_its_last_chunk() {
    let p = tmp("unfinished.rec");
    // 5000 records: one chunk of 4096 written, 904 still pending when "killed".
    write_file(&p, 5000, false);
    let r = read(&p, |_, _| {}).expect("read");
    assert_eq!(r.event_count(), 4096);
    assert!(r
        .salvage
        .message(&p)
        .is_some_and(|m| m.contains("did not stop cleanly")));
}

#[test]
fn other_files_are_refused_clearly() {
    let p = tmp("notarecord.txt");
    let e = parse(&p, b"hello world, not a record at all", &mut |_, _| {}).expect_err("refused");
    assert!(e.to_string().contains("not an llmdd record file"), "{e}");
    let mut v = Vec::from(&MAGIC[..]);
    v.extend_from_slice(&99u32.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    let e = parse(&p, &v, &mut |_, _| {}).expect_err("refused");
    assert!(e.to_string().contains("record format 99"), "{e}");
    let mut v = Vec::from(&MAGIC[..]);
    v.extend_from_slice(&VERSION.to_le_bytes());
    v.extend_from_slice(&llmdd_common::FORMAT_VERSION.to_le_bytes());
    let e = parse(&p, &v, &mut |_, _| {}).expect_err("no metadata");
    assert!(e.to_string().contains("no readable metadata"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// The reader's fuzz smoke test: truncations and byte flips of a valid file, and
    /// arbitrary bytes behind a valid header, never panic, and never yield more events
    /// than were written.
    #[test]
    fn mutated_files_never_panic(cut in 0usize..4000, flips in proptest::collection::vec((0usize..4000, any::<u8>()), 0..8), tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        thread_local! {
            static GOOD: Vec<u8> = {
                let p = tmp("fuzz-base.rec");
                write_file(&p, 300, true);
                std::fs::read(&p).expect("read")
            };
        }
        let mut data = GOOD.with(|g| g.clone());
        for (at, b) in flips {
            let n = data.len();
            data[at % n] ^= b;
        }
        data.truncate(cut.min(data.len()).max(data.len().saturating_sub(cut)));
        data.extend_from_slice(&tail);
        let p = PathBuf::from("fuzz.rec");
        if let Ok(r) = parse(&p, &data, &mut |_, _| {}) {
            prop_assert!(r.event_count() <= 300);
        }
        let mut v = Vec::from(&MAGIC[..]);
        v.extend_from_slice(&VERSION.to_le_bytes());
        v.extend_from_slice(&llmdd_common::FORMAT_VERSION.to_le_bytes());
        v.extend_from_slice(&tail);
        let _ = parse(&p, &v, &mut |_, _| {});
    }
}

/// A loss mark goes after the records drained before it, and a recording without end
/// metadata (the recorder was killed) still gives the counters of its last mark.
#[test]
fn loss_marks_keep_their_place_and_count_when_the_end_is_missing() {
    let p = tmp("losses.rec");
    let mut w = Writer::create(&p).expect("create");
    w.meta(&meta()).expect("meta");
    w.record(&call_bytes(7, 2000), 5000).expect("record");
    let ring_full = llmdd_common::counters::LOSSES[0] as usize;
    let mut counters = vec![0u64; llmdd_common::counters::COUNT as usize];
    counters[ring_full] = 12;
    let mark = LossMark {
        at_ns: 6000,
        counters,
    };
    w.losses(&mark).expect("mark");
    w.record(&call_bytes(7, 7000), 8000).expect("record");
    w.tick(8000).expect("tick");
    drop(w);
    let r = read(&p, |_, _| {}).expect("read");
    assert_eq!(
        r.losses,
        vec![(1, mark.clone())],
        "after the first events chunk"
    );
    assert!(r.end.is_none());
    assert_eq!(LossMark::lost(&r.final_counters()), 12);
}

/// Streaming gives what reading the whole file gives: `scan` everything but the events (and
/// the loss marks' places), `visit` the events a chunk at a time; on a damaged file both
/// stop at the same byte.
#[test]
fn scan_and_visit_stream_what_read_reads() {
    let p = tmp("stream.rec");
    let mut w = Writer::create(&p).expect("create");
    w.meta(&meta()).expect("meta");
    for i in 0..6000u64 {
        w.record(&call_bytes(7, 2000 + i), 5000 + i)
            .expect("record");
        if i == 4500 {
            w.losses(&LossMark {
                at_ns: 7000,
                counters: vec![1; llmdd_common::counters::COUNT as usize],
            })
            .expect("mark");
        }
    }
    w.finish(&End {
        records: 6000,
        ..End::default()
    })
    .expect("finish");
    drop(w);
    let whole = read(&p, |_, _| {}).expect("read");
    let scanned = scan(&p, &mut |_, _| {}).expect("scan");
    assert!(scanned.chunks.is_empty());
    assert_eq!(scanned.event_chunks, whole.chunks.len());
    assert_eq!(scanned.losses, whole.losses);
    assert_eq!(
        (scanned.end.clone(), scanned.meta.clone()),
        (whole.end.clone(), whole.meta.clone())
    );
    let mut seen = Vec::new();
    let visited = visit(&p, &mut |_, _| {}, &mut |c| seen.push(c.events.len())).expect("visit");
    assert_eq!(
        seen,
        whole
            .chunks
            .iter()
            .map(|c| c.events.len())
            .collect::<Vec<_>>()
    );
    assert_eq!(visited.salvage, whole.salvage);
    // Cut inside the last events chunk.
    let data = std::fs::read(&p).expect("bytes");
    std::fs::write(&p, &data[..data.len() - 200]).expect("cut");
    let cut = read(&p, |_, _| {}).expect("salvaged");
    let streamed = visit(&p, &mut |_, _| {}, &mut |_| {}).expect("salvaged");
    assert_eq!(streamed.salvage, cut.salvage);
    assert!(cut.salvage.stopped_early.is_some());
}
