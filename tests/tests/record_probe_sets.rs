//! Recordings made with different `--probe` sets, read back together: each recorder numbered
//! its user probes from the same first id, so without care one file's calls would carry the
//! other's names. Read as one job (`record::read_all`, what `llmdd report A B` does), every
//! call keeps its own recording's function name, and a label both sets use for different
//! functions names both. (Its own process: user probes are registered once per process.)

use llmdd::record::{self, End, Meta, Writer};
use llmdd_common::funcs::USER_BASE;
use llmdd_tests::records::call;

fn probe(spec: &str) -> llmdd::userprobe::UserProbe {
    llmdd::userprobe::parse(spec).expect("a valid probe")
}

/// A recording on `host` with `probes`, one call of each (pid 7 on a, 8 on b).
fn write(path: &std::path::Path, host: &str, pid: u32, probes: &[&str]) {
    let mut w = Writer::create(path).expect("create");
    w.meta(&Meta {
        host: Some(host.into()),
        user_probes: probes.iter().map(|p| probe(p)).collect(),
        ..Meta::default()
    })
    .expect("meta");
    for i in 0..probes.len() {
        w.record(
            &call(
                pid,
                USER_BASE + i as u16,
                1_000 + i as u64 * 10,
                1_500 + i as u64 * 10,
            ),
            2_000,
        )
        .expect("record");
    }
    w.finish(&End::default()).expect("finish");
}

#[test]
fn each_recording_keeps_its_own_probe_names() {
    let dir = std::env::temp_dir().join(format!("llmdd-probe-sets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (a, b) = (dir.join("a.rec"), dir.join("b.rec"));
    write(
        &a,
        "a",
        7,
        &["libsched.so:plan,label=plan", "libsched.so:step,label=step"],
    );
    write(
        &b,
        "b",
        8,
        &["libio.so:fetch,label=fetch", "libio.so:step2,label=step"],
    );
    let recs = record::read_all(&[a, b], |_, _, _| {}).expect("reads both");
    let names = |r: &record::Recording| -> Vec<String> {
        r.events()
            .filter_map(|e| match e {
                llmdd::events::Event::Call(c) => Some(c.name().to_string()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(names(&recs[0]), ["plan", "step"]);
    assert_eq!(names(&recs[1]), ["fetch", "step#2"]);
    let _ = std::fs::remove_dir_all(&dir);
}
