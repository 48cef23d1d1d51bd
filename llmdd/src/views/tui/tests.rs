//! Snapshot tests: each pane drawn from a fixed engine state (`views::fixture`, built with
//! `engine::synth`) into ratatui's TestBackend and compared with `snapshots/NAME.txt`.
//! `UPDATE_SNAPSHOTS=1 cargo test -p llmdd views::tui` rewrites the files (review the diff).
//! Findings' evidence and suggestion texts are replaced by fixed ones: their wording belongs
//! to the engine.

use std::path::PathBuf;

use ratatui::{
    backend::TestBackend,
    buffer::Buffer,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
    layout::Rect,
    Frame, Terminal,
};

use super::{render, Action, Model, Pane, Status, Ui};
use crate::views::fixture;

fn model() -> Model {
    let (run, _summary, e) = fixture::sample();
    let snap = e.snapshot();
    let status = Status {
        elapsed_s: 12.0,
        events: 209,
        event_rate: 17.4,
        lost: 0,
        live_pids: vec![100, 101, 102, 103],
        total_pids: 4,
        note: None,
        sampled: None,
    };
    // A previous model one second earlier with 30 calls fewer gives a rate of 30/s.
    let mut prev = Model::build(&snap, &run, status.clone(), None, 0.0);
    for o in &mut prev.ops {
        o.calls = o.calls.saturating_sub(30);
    }
    let mut m = Model::build(&snap, &run, status, Some(&prev), 1.0);
    // The engine's wording is its own (and changes); the panes' layout is what is tested.
    for f in &mut m.findings {
        f.evidence = format!("evidence of the {} finding, with its numbers", f.kind);
        f.suggestion = format!("what to do about the {}", f.kind);
    }
    m
}

fn text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in 0..area.height {
        let mut line = String::new();
        for x in 0..area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn draw_with(w: u16, h: u16, f: impl FnOnce(&mut Frame, Rect)) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    t.draw(|fr| {
        let a = fr.area();
        f(fr, a)
    })
    .expect("draws");
    text(t.backend().buffer())
}

fn check(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/views/tui/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("snapshot dir");
        std::fs::write(&path, got).expect("writing the snapshot");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_SNAPSHOTS=1 to create it. Got:\n{got}",
            path.display()
        )
    });
    assert_eq!(
        got,
        want,
        "{name} differs from {} (UPDATE_SNAPSHOTS=1 to accept)",
        path.display()
    );
}

#[test]
fn comms_pane() {
    let m = model();
    let ui = Ui::default();
    let got = draw_with(110, 6, |f, a| render::comms_pane(f, a, &m, &ui));
    assert!(got.contains("all-reduce") && got.contains("30.0"), "{got}");
    check("comms", &got);
}

#[test]
fn ranks_pane() {
    let m = model();
    let ui = Ui {
        focus: Pane::Ranks,
        ..Ui::default()
    };
    let got = draw_with(100, 8, |f, a| render::ranks_pane(f, a, &m, &ui));
    assert!(got.contains("STRAGGLER"), "{got}");
    check("ranks", &got);
}

#[test]
fn findings_pane() {
    let m = model();
    let ui = Ui {
        focus: Pane::Findings,
        ..Ui::default()
    };
    let got = draw_with(120, 6, |f, a| render::findings_pane(f, a, &m, &ui));
    assert!(got.contains("straggler") && got.contains("rank 3"), "{got}");
    assert!(got.contains("memory_pressure"), "{got}");
    check("findings", &got);
}

#[test]
fn now_pane() {
    let m = model();
    let ui = Ui {
        focus: Pane::Now,
        ..Ui::default()
    };
    let got = draw_with(110, 7, |f, a| render::now_pane(f, a, &m, &ui));
    assert!(got.contains("inside ncclAllReduce"), "{got}");
    assert!(got.contains("in _PyEval_EvalFrameDefault"), "{got}");
    check("now", &got);
}

#[test]
fn requests_pane() {
    let m = model();
    let ui = Ui::default();
    let got = draw_with(120, 8, |f, a| render::requests_pane(f, a, &m, &ui));
    assert!(got.contains(":8000"), "{got}");
    check("requests", &got);
}

#[test]
fn status_bar() {
    let m = model();
    let ui = Ui {
        paused: true,
        filter: "rank".into(),
        ..Ui::default()
    };
    let got = draw_with(100, 1, |f, a| render::status_bar(f, a, &m, &ui));
    assert!(got.contains("PAUSED") && got.contains("pids 4/4"), "{got}");
    check("status", &got);
}

#[test]
fn the_status_bar_says_what_is_sampled() {
    use crate::budget::{sampled_line, Duty};
    use llmdd_common::funcs::Family;
    let mut m = model();
    assert_eq!(sampled_line(&[]), None);
    m.status.sampled = sampled_line(&[Duty {
        pid: 101,
        family: Family::CudaRuntime,
        target: 0.05,
        attached: 0.125,
        scale: 8.0,
    }]);
    let got = draw_with(160, 1, |f, a| render::status_bar(f, a, &m, &Ui::default()));
    assert!(
        got.contains("SAMPLED launches/copies/events: 101 cudart 12% (x8.0)"),
        "{got}"
    );
}

#[test]
fn whole_screen_help_and_finding_detail() {
    let m = model();
    let mut ui = Ui::default();
    check(
        "screen",
        &draw_with(160, 30, |f, _| render::draw(f, &m, &ui)),
    );
    let rows = render::row_counts(&m, &ui);
    assert_eq!(
        ui.key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE), rows),
        Action::Redraw
    );
    assert_eq!(ui.focus, Pane::Ranks);
    ui.key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE), rows);
    ui.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE), rows);
    assert!(ui.detail);
    let got = draw_with(160, 30, |f, _| render::draw(f, &m, &ui));
    assert!(got.contains("->"), "the suggestion is shown: {got}");
    check("finding_detail", &got);
    ui.key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE), rows);
    ui.key(KeyEvent::new(KeyCode::Char('?'), KeyModifiers::NONE), rows);
    check("help", &draw_with(160, 30, |f, _| render::draw(f, &m, &ui)));
}

#[test]
fn keys_filter_pause_and_quit() {
    let m = model();
    let mut ui = Ui::default();
    let key = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE);
    let rows = render::row_counts(&m, &ui);
    ui.key(key('p'), rows);
    assert!(ui.paused);
    ui.key(key('/'), rows);
    for c in "straggler".chars() {
        ui.key(key(c), rows);
    }
    ui.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE), rows);
    assert!(!ui.editing && ui.filter == "straggler");
    assert_eq!(render::findings(&m, &ui).len(), 1);
    assert!(render::ops(&m, &ui).is_empty());
    // q types into the filter while editing, and quits otherwise.
    ui.key(key('/'), rows);
    assert_eq!(ui.key(key('q'), rows), Action::Redraw);
    ui.key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE), rows);
    assert!(ui.filter.is_empty());
    assert_eq!(ui.key(key('q'), rows), Action::Quit);
    assert_eq!(
        ui.key(
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
            rows
        ),
        Action::Quit
    );
    // Selection stays within the rows.
    let mut ui = Ui::default();
    for _ in 0..10 {
        ui.key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE), rows);
    }
    assert_eq!(ui.selected(), rows[0].saturating_sub(1));
}

/// Each refresh adds the row's current figure to its trend (kept to `TREND`), and the
/// sparkline shows a climbing lag as climbing.
#[test]
fn trends_accumulate_across_refreshes() {
    let (run, _summary, e) = fixture::sample();
    let snap = e.snapshot();
    let status = Status {
        elapsed_s: 1.0,
        events: 0,
        event_rate: 0.0,
        lost: 0,
        live_pids: Vec::new(),
        total_pids: 0,
        note: None,
        sampled: None,
    };
    let mut m = Model::build(&snap, &run, status.clone(), None, 0.0);
    for _ in 0..super::TREND + 5 {
        m = Model::build(&snap, &run, status.clone(), Some(&m), 1.0);
    }
    assert!(m.ops.iter().all(|o| o.trend.len() == super::TREND));
    let late = m
        .ranks
        .iter()
        .find(|r| r.straggler)
        .expect("the straggler's row");
    assert_eq!(late.trend.len(), super::TREND);
    assert!(late.trend.iter().all(|&v| v == late.lag_p50_ns));
    assert_eq!(render::spark(&[0, 1, 2, 4, 8]), "▁▂▃▅█");
    assert_eq!(render::spark(&[5, 5, 5]), "███");
    assert_eq!(render::spark(&[0, 0]), "▁▁");
}

#[test]
fn a_graph_launch_row_says_what_each_replay_runs() {
    use crate::engine::{synth::*, Config, Engine};
    use crate::events::Event;
    use llmdd_common::funcs::id;
    const MS: u64 = 1_000_000;
    let (s, graph, exec, handle) = (0x51u64, 0x6000u64, 0x7000u64, 0xc0u64);
    let mut evs = Vec::new();
    for r in 0..2u32 {
        let (pid, t) = (100 + r, 1_000 * MS + u64::from(r) * 1000);
        evs.push(init(pid, 0xab, r as i32, 2, handle, t - 2 * MS, t - MS));
        evs.push(on_stream(id::CUDA_STREAM_BEGIN_CAPTURE, pid, s, t, t + 100));
        evs.push(coll(
            ALL_REDUCE,
            pid,
            handle,
            Some(r as i32),
            2,
            4096,
            s,
            t + 200,
            t + 300,
        ));
        let mut end = call(
            id::CUDA_STREAM_END_CAPTURE,
            pid,
            pid,
            t + 400,
            Some(t + 500),
        );
        (end.stream, end.out) = (Some(s), Some(graph));
        evs.push(Event::Call(end));
        let mut inst = call(id::CUDA_GRAPH_INSTANTIATE, pid, pid, t + 600, Some(t + 700));
        (inst.out, inst.args[1]) = (Some(exec), graph);
        evs.push(Event::Call(inst));
        for k in 0..20u64 {
            let at = t + MS + k * 10 * MS;
            let mut l = call(GRAPH_LAUNCH, pid, pid, at, Some(at + 1000));
            (l.stream, l.args[0]) = (Some(s), exec);
            evs.push(Event::Call(l));
        }
    }
    evs.sort_by_key(|e| match e {
        Event::Call(c) => c.exit_ns.unwrap_or(c.entry_ns),
        _ => 0,
    });
    let mut e = Engine::new(Config::default());
    for ev in evs {
        e.ingest(ev);
    }
    e.flush();
    let (run, _, _) = fixture::sample();
    let m = Model::build(&e.snapshot(), &run, model().status.clone(), None, 0.0);
    let row = m
        .ops
        .iter()
        .find(|o| o.op == "graph-launch")
        .expect("a graph row");
    let holds = row
        .holds
        .as_deref()
        .expect("the row knows what its graph holds");
    assert!(
        holds.starts_with("1x all-reduce 4.0 KiB (nccl, comm "),
        "{holds}"
    );
    let mut ui = Ui {
        detail: true,
        ..Default::default()
    };
    let i = render::ops(&m, &ui)
        .iter()
        .position(|o| o.op == "graph-launch");
    ui.selected[Pane::Comms.index()] = i.unwrap_or(0);
    let (_, text) = render::detail_text(&m, &ui).expect("detail");
    assert!(
        text.contains("each replay runs (from its capture): 1x all-reduce"),
        "{text}"
    );
}

#[test]
fn kv_transfers_are_summed_under_the_requests() {
    use crate::engine::{KvAgentView, Pctl};
    let agent = |name: &str, p50: u64, failed: u64| KvAgentView {
        pid: 7,
        agent: Some(name.into()),
        agent_hash: Some("00000000000000aa".into()),
        transfers: 40,
        failed,
        errors: Default::default(),
        duration: Pctl {
            count: 40 - failed,
            p50,
            p90: p50,
            p99: p50,
            max: p50,
        },
        reads: 40,
        writes: 0,
        descriptors: 640,
        abandoned: 0,
        handshake_max_ns: 0,
        in_flight: 1,
        oldest_in_flight_ns: 0,
    };
    let line = super::kv_line(&[
        agent("p1-prefi", 8_000_000, 0),
        agent("p2-prefi", 36_600_000, 2),
    ]);
    assert_eq!(
        line.as_deref(),
        Some(
            "kv pulls: 80 from 2 agent(s), 2 failed, 2 in flight; slowest median 36.6 ms \
             (agent p2-prefi…) (post to final status)"
        )
    );
    assert_eq!(super::kv_line(&[]), None);
    let mut m = model();
    m.kv = line;
    let got = draw_with(120, 6, |f, a| {
        render::requests_pane(f, a, &m, &Ui::default())
    });
    assert!(got.contains("kv pulls: 80 from 2 agent(s)"), "{got}");
}
