//! The live terminal view (ratatui + crossterm): the default of `attach` when stdout is a
//! terminal, and of `llmdd top`.
//!
//! The run loop rebuilds a [`Model`] from the engine's snapshot at a bounded rate (every
//! `--interval`) and the screen is redrawn from the model only (at most 20 times a second,
//! on a new model, a key or a resize), so drawing never touches the engine. Panes:
//! communicators × ops, per-rank lateness, findings, where each rank is now (its threads,
//! as last read), requests, and a status bar.
//!
//! Keys: Tab / Shift-Tab / ← → move between panes, ↑ ↓ select, Enter details, `p` pause
//! (the model stops updating; tracing goes on), `/` filter rows, Esc close, `q` quit, `?`
//! help. The terminal is restored on every way out: `q`, Ctrl-C, SIGTERM, errors and panics
//! (see `live`).

pub mod live;
pub mod render;

use std::collections::BTreeMap;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::engine::{Severity, Snapshot};

use super::{report, run::RunInfo};

/// One row of the communicators × ops pane.
#[derive(Clone, Debug, PartialEq)]
pub struct OpRow {
    pub comm: String,
    /// nccl, rccl, mpi, gloo or user.
    pub backend: &'static str,
    pub nranks: Option<u32>,
    pub op: &'static str,
    pub size: String,
    pub calls: u64,
    pub rate: f64,
    /// Host call time (entry to return): with asynchronous NCCL the enqueue, not the
    /// collective's latency.
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// Completion bound after the last rank's entry (from the syncs that follow), median;
    /// None without sync evidence.
    pub done_p50_ns: Option<u64>,
    pub skew_p50_ns: u64,
    pub skew_p99_ns: u64,
    pub busbw_gbps: Option<f64>,
    /// For graph-launch steps whose graph capture was seen: what each replay runs.
    pub holds: Option<String>,
    /// Arrival skew p50 at each of the last refreshes, oldest first (at most [`TREND`]).
    pub trend: Vec<u64>,
}

/// Refreshes a row's trend remembers.
pub const TREND: usize = 12;

/// `prev`'s trend with `now` appended, the oldest dropped past [`TREND`].
fn extend_trend(prev: Option<&[u64]>, now: u64) -> Vec<u64> {
    let mut t: Vec<u64> = prev.unwrap_or_default().to_vec();
    t.push(now);
    if t.len() > TREND {
        t.drain(..t.len() - TREND);
    }
    t
}

/// One row of the per-rank lateness pane.
#[derive(Clone, Debug, PartialEq)]
pub struct RankRow {
    pub comm: String,
    pub rank: Option<u32>,
    pub pid: u32,
    pub host: Option<String>,
    pub state: &'static str,
    pub calls: u64,
    pub lag_p50_ns: u64,
    pub lag_p99_ns: u64,
    pub lag_max_ns: u64,
    pub latency_p50_ns: u64,
    /// Named in an active straggler finding.
    pub straggler: bool,
    /// What the process is on a vLLM / llm-d node ("vllm worker TP1").
    pub role: Option<String>,
    /// Lag p50 at each of the last refreshes, oldest first (at most [`TREND`]).
    pub trend: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FindingRow {
    pub severity: Severity,
    pub kind: &'static str,
    pub active: bool,
    pub culprit: String,
    pub evidence: String,
    pub suggestion: String,
    pub source: &'static str,
    pub window_s: (f64, f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct RequestRow {
    pub pid: u32,
    pub remote: String,
    pub ttft_ms: Option<f64>,
    pub tokens: u32,
    pub duration_ms: f64,
    pub max_gap_ms: f64,
    pub end: &'static str,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestsPane {
    pub port: Option<u16>,
    pub source: &'static str,
    pub finished: u64,
    pub in_flight: u32,
    pub peak: u32,
    pub ttft_ms: (f64, f64),
    pub itl_ms: (f64, f64),
    pub recent: Vec<RequestRow>,
}

/// One row of the "where each rank is now" pane: a traced process's most telling thread.
#[derive(Clone, Debug, PartialEq)]
pub struct NowRow {
    pub pid: u32,
    /// Its rank by its environment.
    pub rank: Option<u32>,
    /// "inside ncclAllReduce", "waiting in cudaStreamSynchronize", "in time.sleep".
    pub place: String,
    /// Waiting on other ranks or the device.
    pub waiting: bool,
    pub thread: String,
    pub site: String,
    /// Seconds since it was read.
    pub age_s: f64,
}

/// What the status bar shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub elapsed_s: f64,
    pub events: u64,
    pub event_rate: f64,
    pub lost: u64,
    pub live_pids: Vec<u32>,
    pub total_pids: usize,
    /// The latest message (a process exited, ...).
    pub note: Option<String>,
    /// What the overhead budget samples rather than traces in full, when anything.
    pub sampled: Option<String>,
}

/// Aggregated state the screen is drawn from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub ops: Vec<OpRow>,
    pub ranks: Vec<RankRow>,
    pub findings: Vec<FindingRow>,
    pub requests: RequestsPane,
    pub now: Vec<NowRow>,
    pub status: Status,
    /// KV-cache transfers (NIXL) in one line, when any were seen.
    pub kv: Option<String>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Model {
    /// Builds the model; `prev` and `dt_s` (time since it) give the call rates.
    pub fn build(
        snap: &Snapshot,
        run: &RunInfo,
        status: Status,
        prev: Option<&Model>,
        dt_s: f64,
    ) -> Model {
        let prev_calls: BTreeMap<(&str, &str, &str), u64> = prev
            .map(|p| {
                p.ops
                    .iter()
                    .map(|o| ((o.comm.as_str(), o.op, o.size.as_str()), o.calls))
                    .collect()
            })
            .unwrap_or_default();
        let prev_op_trend: BTreeMap<(&str, &str, &str), &[u64]> = prev
            .map(|p| {
                p.ops
                    .iter()
                    .map(|o| ((o.comm.as_str(), o.op, o.size.as_str()), o.trend.as_slice()))
                    .collect()
            })
            .unwrap_or_default();
        let prev_rank_trend: BTreeMap<(&str, u32), &[u64]> = prev
            .map(|p| {
                p.ranks
                    .iter()
                    .map(|r| ((r.comm.as_str(), r.pid), r.trend.as_slice()))
                    .collect()
            })
            .unwrap_or_default();
        let mut ops = Vec::new();
        let mut ranks = Vec::new();
        let stragglers: Vec<(Option<u32>, Option<String>)> = snap
            .findings
            .iter()
            .filter(|f| f.active && f.kind.name() == "straggler")
            .map(|f| (f.culprit.pid, f.culprit.comm.map(report::id_hex)))
            .collect();
        let lanes = snap
            .communicators
            .iter()
            .map(|c| (&c.lane, c.nranks, Some(c.family)))
            .chain(snap.graph_groups.iter().map(|g| (&g.lane, None, None)));
        for (lane, nranks, family) in lanes {
            let first = lane.members.first().map(|m| m.pid).unwrap_or(0);
            let holds = family.is_none().then(|| {
                lane.members.iter().find_map(|m| {
                    snap.captured_graphs
                        .iter()
                        .find(|g| g.pid == m.pid)
                        .map(|g| g.holds())
                })
            });
            let backend = match family {
                Some(f) => run.family_backend(first, f),
                None => run.comm_backend(
                    &lane.ops.iter().map(|o| o.op).collect::<Vec<_>>(),
                    &lane.members.iter().map(|m| m.pid).collect::<Vec<_>>(),
                ),
            };
            for o in &lane.ops {
                let before = prev_calls
                    .get(&(lane.id.as_str(), o.op, o.size.as_str()))
                    .copied();
                let rate = match before {
                    Some(b) if dt_s > 0.0 => o.calls.saturating_sub(b) as f64 / dt_s,
                    _ => 0.0,
                };
                ops.push(OpRow {
                    comm: lane.id.clone(),
                    backend,
                    nranks,
                    op: o.op,
                    size: o.size.clone(),
                    calls: o.calls,
                    rate,
                    p50_ns: o.latency.p50,
                    p99_ns: o.latency.p99,
                    max_ns: o.latency.max,
                    done_p50_ns: (o.completion.count > 0).then_some(o.completion.p50),
                    skew_p50_ns: o.skew.p50,
                    skew_p99_ns: o.skew.p99,
                    busbw_gbps: o.busbw_gbps_p50,
                    holds: holds.clone().flatten(),
                    trend: extend_trend(
                        prev_op_trend
                            .get(&(lane.id.as_str(), o.op, o.size.as_str()))
                            .copied(),
                        o.skew.p50,
                    ),
                });
            }
            for m in &lane.members {
                ranks.push(RankRow {
                    comm: lane.id.clone(),
                    rank: m.rank,
                    pid: m.pid,
                    host: m.host.clone(),
                    state: m.state,
                    calls: m.calls,
                    lag_p50_ns: m.lag.p50,
                    lag_p99_ns: m.lag.p99,
                    lag_max_ns: m.lag.max,
                    latency_p50_ns: m.latency.p50,
                    straggler: stragglers.iter().any(|(p, c)| {
                        *p == Some(m.pid) && c.as_deref().is_none_or(|c| c == lane.id)
                    }),
                    role: run.procs.get(&m.pid).and_then(|p| p.role.clone()),
                    trend: extend_trend(
                        prev_rank_trend.get(&(lane.id.as_str(), m.pid)).copied(),
                        m.lag.p50,
                    ),
                });
            }
        }
        ranks.sort_by(|a, b| (&a.comm, a.rank, a.pid).cmp(&(&b.comm, b.rank, b.pid)));
        // Latest first within each severity, worst first.
        let mut fs: Vec<&crate::engine::Finding> = snap.findings.iter().collect();
        fs.sort_by(|a, b| {
            (b.active, b.severity, b.updated_ns).cmp(&(a.active, a.severity, a.updated_ns))
        });
        let findings = fs
            .into_iter()
            .map(|f| {
                let rf = report::finding(f);
                let c = &rf.culprit;
                let mut who = Vec::new();
                if let Some(r) = c.rank {
                    who.push(format!("rank {r}"));
                }
                if let Some(p) = c.pid {
                    who.push(format!("pid {p}"));
                }
                if let Some(h) = &c.host {
                    who.push(h.clone());
                }
                if let Some(comm) = &c.comm {
                    who.push(format!("comm {}", &comm[..8.min(comm.len())]));
                }
                if let Some(conn) = &c.connection {
                    who.push(conn.clone());
                }
                FindingRow {
                    severity: f.severity,
                    kind: rf.kind,
                    active: f.active,
                    culprit: if who.is_empty() {
                        "-".into()
                    } else {
                        who.join(" ")
                    },
                    evidence: rf.evidence,
                    suggestion: rf.suggestion,
                    source: rf.source,
                    window_s: (f.window_start_ns as f64 / 1e9, f.window_end_ns as f64 / 1e9),
                }
            })
            .collect();
        let r = &snap.requests;
        let requests = RequestsPane {
            port: r.serving_port,
            source: r.port_source,
            finished: r.finished,
            in_flight: r.in_flight,
            peak: r.peak_concurrency,
            ttft_ms: (ms(r.ttft.p50), ms(r.ttft.p99)),
            itl_ms: (ms(r.inter_token.p50), ms(r.inter_token.p99)),
            recent: r
                .recent
                .iter()
                .map(|q| RequestRow {
                    pid: q.pid,
                    remote: q.remote.clone().unwrap_or_else(|| "-".into()),
                    ttft_ms: q.ttft_ns.map(ms),
                    tokens: q.tokens,
                    duration_ms: ms(q.end_ns.saturating_sub(q.start_ns)),
                    max_gap_ms: ms(q.max_gap_ns),
                    end: q.end,
                })
                .collect(),
        };
        let now = now_rows(snap, run, &ranks);
        Model {
            ops,
            ranks,
            findings,
            requests,
            now,
            status,
            kv: kv_line(&snap.kv_transfers),
        }
    }
}

/// "kv pulls: 80 from 2 agents, 0 failed, 0 in flight; slowest median 7.8 ms (agent p2-prefi…)".
fn kv_line(kv: &[crate::engine::KvAgentView]) -> Option<String> {
    if kv.is_empty() {
        return None;
    }
    let total: u64 = kv.iter().map(|k| k.transfers).sum();
    let failed: u64 = kv.iter().map(|k| k.failed).sum();
    let flying: u64 = kv.iter().map(|k| k.in_flight).sum();
    let slowest = kv
        .iter()
        .filter(|k| k.duration.count > 0)
        .max_by_key(|k| k.duration.p50)
        .map(|k| {
            format!(
                "; slowest median {:.1} ms (agent {}…)",
                ms(k.duration.p50),
                k.agent.as_deref().unwrap_or("?")
            )
        })
        .unwrap_or_default();
    Some(format!(
        "kv pulls: {total} from {} agent(s), {failed} failed, {flying} in flight{slowest} \
         (post to final status)",
        kv.len()
    ))
}

/// Each traced process's most telling thread, as last read; its rank from its environment,
/// else from its first communicator.
fn now_rows(snap: &Snapshot, run: &RunInfo, ranks: &[RankRow]) -> Vec<NowRow> {
    let mut rows: Vec<NowRow> = snap
        .threads
        .iter()
        .filter_map(|p| {
            let t = crate::engine::telling(&p.threads, p.pid)?;
            Some(NowRow {
                pid: p.pid,
                rank: run
                    .procs
                    .get(&p.pid)
                    .and_then(|i| i.env_rank)
                    .or_else(|| ranks.iter().find(|r| r.pid == p.pid).and_then(|r| r.rank)),
                place: t.place.describe(),
                waiting: t.place.waiting(),
                thread: format!("{} '{}'", t.tid, t.name),
                site: t.site.clone(),
                age_s: snap.now_ns.saturating_sub(p.at_ns) as f64 / 1e9,
            })
        })
        .collect();
    rows.sort_by_key(|r| (r.rank, r.pid));
    rows
}

/// The panes, in Tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    Comms,
    Ranks,
    Findings,
    Now,
    Requests,
}

/// How many panes there are.
pub const PANES: usize = 5;

impl Pane {
    const ALL: [Pane; PANES] = [
        Pane::Comms,
        Pane::Ranks,
        Pane::Findings,
        Pane::Now,
        Pane::Requests,
    ];

    fn index(self) -> usize {
        Pane::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }

    fn next(self) -> Pane {
        Pane::ALL[(self.index() + 1) % Pane::ALL.len()]
    }

    fn prev(self) -> Pane {
        Pane::ALL[(self.index() + Pane::ALL.len() - 1) % Pane::ALL.len()]
    }

    pub fn title(self) -> &'static str {
        match self {
            Pane::Comms => "communicators x ops",
            Pane::Ranks => "per-rank lateness",
            Pane::Findings => "findings",
            Pane::Now => "where each rank is now",
            Pane::Requests => "requests",
        }
    }
}

/// Interaction state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ui {
    pub focus: Pane,
    pub selected: [usize; PANES],
    pub paused: bool,
    pub filter: String,
    /// The filter is being typed.
    pub editing: bool,
    pub help: bool,
    pub detail: bool,
}

impl Default for Ui {
    fn default() -> Ui {
        Ui {
            focus: Pane::Comms,
            selected: [0; PANES],
            paused: false,
            filter: String::new(),
            editing: false,
            help: false,
            detail: false,
        }
    }
}

/// What a key asks of the run loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Redraw,
    Quit,
}

impl Ui {
    pub fn selected(&self) -> usize {
        self.selected[self.focus.index()]
    }

    /// Whether a row's text passes the filter (case-insensitive substring).
    pub fn passes(&self, text: &str) -> bool {
        self.filter.is_empty() || text.to_lowercase().contains(&self.filter.to_lowercase())
    }

    /// Handles one key; `rows` is the number of rows (after filtering) of each pane.
    pub fn key(&mut self, k: KeyEvent, rows: [usize; PANES]) -> Action {
        if k.kind == KeyEventKind::Release {
            return Action::None;
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if self.editing {
            match k.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if self.filter.len() < 64 => self.filter.push(c),
                _ => return Action::None,
            }
            self.selected = [0; PANES];
            return Action::Redraw;
        }
        let i = self.focus.index();
        match k.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') => self.help = !self.help,
            KeyCode::Esc => {
                self.help = false;
                self.detail = false;
            }
            KeyCode::Char('p') => self.paused = !self.paused,
            KeyCode::Char('/') => {
                self.editing = true;
                self.help = false;
            }
            KeyCode::Tab | KeyCode::Right => {
                self.focus = self.focus.next();
                self.detail = false;
            }
            KeyCode::BackTab | KeyCode::Left => {
                self.focus = self.focus.prev();
                self.detail = false;
            }
            KeyCode::Down | KeyCode::Char('j') => {
                if self.selected[i] + 1 < rows[i] {
                    self.selected[i] += 1;
                }
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected[i] = self.selected[i].saturating_sub(1);
            }
            KeyCode::Enter => self.detail = !self.detail && rows[i] > 0,
            _ => return Action::None,
        }
        Action::Redraw
    }
}

#[cfg(test)]
mod tests;
