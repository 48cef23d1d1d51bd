//! Drawing the model: one function per pane, all pure functions of ([`Model`], [`Ui`]).

use ratatui::{
    layout::{Constraint, Direction, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap},
    Frame,
};

use crate::engine::Severity;

use super::{FindingRow, Model, NowRow, OpRow, Pane, RankRow, RequestRow, Ui, PANES};

/// `850ns`, `12.3us`, `4.50ms`, `1.20s`.
pub fn dur(ns: u64) -> String {
    match ns {
        0 => "-".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{:.1}us", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.2}ms", n as f64 / 1e6),
        n => format!("{:.2}s", n as f64 / 1e9),
    }
}

/// A sparkline of `values` in block characters, scaled from 0 to the largest of them (so a
/// flat row reads flat and one that climbs reads as climbing), the latest on the right.
pub fn spark(values: &[u64]) -> String {
    spark_to(values, values.iter().copied().max().unwrap_or(0))
}

/// A sparkline of `values` scaled from 0 to `top` (values above it show full).
pub fn spark_to(values: &[u64], top: u64) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    values
        .iter()
        .map(|&v| match top {
            0 => BARS[0],
            t => BARS[((v.min(t) as u128 * 7 + t as u128 / 2) / t as u128) as usize],
        })
        .collect()
}

/// The latest values of `trend` that fit what `widths` (the other columns) leave of `area`
/// (borders and one space between columns taken off), as a sparkline; none when nothing is
/// left (a narrow terminal keeps the figures).
fn trend_cell(trend: &[u64], top: Option<u64>, area: Rect, widths: &[u16]) -> (String, u16) {
    let used: u16 = widths.iter().sum::<u16>() + widths.len() as u16 + 2;
    let w = area.width.saturating_sub(used).min(super::TREND as u16);
    let shown = &trend[trend.len().saturating_sub(w as usize)..];
    let line = match top {
        Some(t) => spark_to(shown, t),
        None => spark(shown),
    };
    (line, w)
}

/// The fixed columns' widths, then the trend column's.
fn columns(widths: &[u16], trend_w: u16) -> Vec<Constraint> {
    widths
        .iter()
        .chain(std::iter::once(&trend_w))
        .map(|&w| Constraint::Length(w))
        .collect()
}

fn short(id: &str) -> &str {
    &id[..8.min(id.len())]
}

pub fn ops<'a>(m: &'a Model, ui: &Ui) -> Vec<&'a OpRow> {
    m.ops
        .iter()
        .filter(|o| {
            ui.passes(&format!(
                "{} {} {} {}",
                o.comm,
                o.op,
                o.size,
                o.holds.as_deref().unwrap_or("")
            ))
        })
        .collect()
}

pub fn ranks<'a>(m: &'a Model, ui: &Ui) -> Vec<&'a RankRow> {
    m.ranks
        .iter()
        .filter(|r| {
            ui.passes(&format!(
                "{} rank {} pid {} {} {} {}",
                r.comm,
                r.rank.map(|r| r.to_string()).unwrap_or_default(),
                r.pid,
                r.host.as_deref().unwrap_or(""),
                r.state,
                r.role.as_deref().unwrap_or("")
            ))
        })
        .collect()
}

pub fn findings<'a>(m: &'a Model, ui: &Ui) -> Vec<&'a FindingRow> {
    m.findings
        .iter()
        .filter(|f| ui.passes(&format!("{} {} {}", f.kind, f.culprit, f.evidence)))
        .collect()
}

pub fn requests<'a>(m: &'a Model, ui: &Ui) -> Vec<&'a RequestRow> {
    m.requests
        .recent
        .iter()
        .filter(|r| ui.passes(&format!("pid {} {} {}", r.pid, r.remote, r.end)))
        .collect()
}

pub fn now<'a>(m: &'a Model, ui: &Ui) -> Vec<&'a NowRow> {
    m.now
        .iter()
        .filter(|r| {
            ui.passes(&format!(
                "rank {} pid {} {} {}",
                r.rank.map(|r| r.to_string()).unwrap_or_default(),
                r.pid,
                r.place,
                r.site
            ))
        })
        .collect()
}

/// Rows per pane after filtering, in [`Pane`] order.
pub fn row_counts(m: &Model, ui: &Ui) -> [usize; PANES] {
    [
        ops(m, ui).len(),
        ranks(m, ui).len(),
        findings(m, ui).len(),
        now(m, ui).len(),
        requests(m, ui).len(),
    ]
}

fn block(title: String, focused: bool) -> Block<'static> {
    let style = if focused {
        Style::default()
            .fg(Color::Cyan)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    Block::default()
        .borders(Borders::ALL)
        .border_style(style)
        .title(Span::styled(title, style))
}

fn state(ui: &Ui, pane: Pane, rows: usize) -> TableState {
    let mut s = TableState::default();
    if ui.focus == pane && rows > 0 {
        s.select(Some(ui.selected[pane as usize].min(rows - 1)));
    }
    s
}

const HIGHLIGHT: Style = Style::new().add_modifier(Modifier::REVERSED);

fn header(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.iter().map(|c| Cell::from(*c)))
        .style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED))
}

/// Communicators × ops: calls/s, host call time p50/p99, completion bound p50, arrival skew,
/// bus bandwidth.
pub fn comms_pane(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    const WIDTHS: [u16; 11] = [11, 7, 12, 8, 7, 7, 8, 8, 8, 15, 6];
    let rows = ops(m, ui);
    let trend_w = trend_cell(&[], None, area, &WIDTHS).1;
    let body: Vec<Row> = rows
        .iter()
        .map(|o| {
            Row::new(vec![
                format!(
                    "{}{}",
                    short(&o.comm),
                    o.nranks.map(|n| format!("/{n}")).unwrap_or_default()
                ),
                o.backend.to_string(),
                o.op.to_string(),
                o.size.clone(),
                o.calls.to_string(),
                format!("{:.1}", o.rate),
                dur(o.p50_ns),
                dur(o.p99_ns),
                o.done_p50_ns.map(dur).unwrap_or_else(|| "-".into()),
                format!("{}/{}", dur(o.skew_p50_ns), dur(o.skew_p99_ns)),
                o.busbw_gbps
                    .map(|g| format!("{g:.2}"))
                    .unwrap_or_else(|| "-".into()),
                trend_cell(&o.trend, None, area, &WIDTHS).0,
            ])
        })
        .collect();
    let n = body.len();
    let t = Table::new(body, columns(&WIDTHS, trend_w))
        .header(header(&[
            "comm/n",
            "backend",
            "op",
            "size",
            "calls",
            "calls/s",
            "call p50",
            "call p99",
            "done p50",
            "skew p50/p99",
            "GB/s",
            "skew trend",
        ]))
        .row_highlight_style(HIGHLIGHT)
        .block(block(
            format!(" {} ({n}) ", Pane::Comms.title()),
            ui.focus == Pane::Comms,
        ));
    f.render_stateful_widget(t, area, &mut state(ui, Pane::Comms, n));
}

/// Per-rank lateness: arrival lag behind the first rank, per communicator.
pub fn ranks_pane(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    const WIDTHS: [u16; 10] = [8, 4, 7, 7, 6, 8, 8, 8, 8, 9];
    let rows = ranks(m, ui);
    let trend_w = trend_cell(&[], None, area, &WIDTHS).1;
    // Every rank of a communicator on one scale: the late one's bars stand out.
    let mut tops: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in &rows {
        let t = tops.entry(r.comm.as_str()).or_default();
        *t = (*t).max(r.trend.iter().copied().max().unwrap_or(0));
    }
    let body: Vec<Row> = rows
        .iter()
        .map(|r| {
            let row = Row::new(vec![
                short(&r.comm).to_string(),
                r.rank.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
                r.pid.to_string(),
                r.state.to_string(),
                r.calls.to_string(),
                dur(r.lag_p50_ns),
                dur(r.lag_p99_ns),
                dur(r.lag_max_ns),
                dur(r.latency_p50_ns),
                if r.straggler {
                    "STRAGGLER".into()
                } else {
                    String::new()
                },
                trend_cell(&r.trend, tops.get(r.comm.as_str()).copied(), area, &WIDTHS).0,
            ]);
            if r.straggler {
                row.style(Style::default().fg(Color::Yellow))
            } else {
                row
            }
        })
        .collect();
    let n = body.len();
    let t = Table::new(body, columns(&WIDTHS, trend_w))
        .header(header(&[
            "comm",
            "rank",
            "pid",
            "state",
            "calls",
            "lag p50",
            "lag p99",
            "lag max",
            "lat p50",
            "",
            "lag trend",
        ]))
        .row_highlight_style(HIGHLIGHT)
        .block(block(
            format!(" {} ({n}) ", Pane::Ranks.title()),
            ui.focus == Pane::Ranks,
        ));
    f.render_stateful_widget(t, area, &mut state(ui, Pane::Ranks, n));
}

/// Where each rank is now: each traced process's most telling thread, as last read (at
/// attach, and while a job looks stuck).
pub fn now_pane(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    let rows = now(m, ui);
    let body: Vec<Row> = rows
        .iter()
        .map(|r| {
            let row = Row::new(vec![
                r.rank.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
                r.pid.to_string(),
                r.place.clone(),
                format!("{:.0}s ago", r.age_s),
                r.site.clone(),
            ]);
            if r.waiting {
                row
            } else {
                row.style(Style::default().fg(Color::Yellow))
            }
        })
        .collect();
    let n = body.len();
    let t = Table::new(
        body,
        [
            Constraint::Length(4),
            Constraint::Length(7),
            Constraint::Length(30),
            Constraint::Length(8),
            Constraint::Min(10),
        ],
    )
    .header(header(&["rank", "pid", "where", "read", "frames"]))
    .row_highlight_style(HIGHLIGHT)
    .block(block(
        format!(" {} ({n}) ", Pane::Now.title()),
        ui.focus == Pane::Now,
    ));
    f.render_stateful_widget(t, area, &mut state(ui, Pane::Now, n));
}

fn severity_style(s: Severity) -> Style {
    match s {
        Severity::Critical => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        Severity::Warning => Style::default().fg(Color::Yellow),
        Severity::Info => Style::default(),
    }
}

fn severity_tag(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "CRIT",
        Severity::Warning => "WARN",
        Severity::Info => "info",
    }
}

/// Findings, worst and latest first, with the start of their evidence.
pub fn findings_pane(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    let rows = findings(m, ui);
    let body: Vec<Row> = rows
        .iter()
        .map(|x| {
            Row::new(vec![
                Cell::from(severity_tag(x.severity)).style(severity_style(x.severity)),
                Cell::from(format!(
                    "{}{}",
                    x.kind,
                    if x.active { "" } else { " (resolved)" }
                )),
                Cell::from(x.culprit.clone()),
                Cell::from(x.evidence.clone()),
            ])
        })
        .collect();
    let n = body.len();
    let t = Table::new(
        body,
        [
            Constraint::Length(4),
            Constraint::Length(15),
            Constraint::Length(20),
            Constraint::Min(10),
        ],
    )
    .header(header(&["sev", "kind", "culprit", "evidence (Enter: all)"]))
    .row_highlight_style(HIGHLIGHT)
    .block(block(
        format!(" {} ({n}) ", Pane::Findings.title()),
        ui.focus == Pane::Findings,
    ));
    f.render_stateful_widget(t, area, &mut state(ui, Pane::Findings, n));
}

/// Requests on the serving port: TTFT and inter-token percentiles, recent requests.
pub fn requests_pane(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    let r = &m.requests;
    let title = match r.port {
        Some(p) => format!(" {} on :{p} ({}) ", Pane::Requests.title(), r.source),
        None => format!(" {} (no serving port detected) ", Pane::Requests.title()),
    };
    let outer = block(title, ui.focus == Pane::Requests);
    let inner = outer.inner(area);
    f.render_widget(outer, area);
    let head = 1 + u16::from(m.kv.is_some());
    let parts = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Length(head), Constraint::Min(1)])
        .split(inner);
    let mut summary = format!(
        "done {}  in flight {}  peak {}  ttft p50/p99 {:.1}/{:.1} ms  gap p50/p99 {:.1}/{:.1} ms",
        r.finished, r.in_flight, r.peak, r.ttft_ms.0, r.ttft_ms.1, r.itl_ms.0, r.itl_ms.1
    );
    if let Some(kv) = &m.kv {
        summary.push('\n');
        summary.push_str(kv);
    }
    f.render_widget(Paragraph::new(summary), parts[0]);
    let rows = requests(m, ui);
    let body: Vec<Row> = rows
        .iter()
        .map(|q| {
            Row::new(vec![
                q.pid.to_string(),
                q.remote.clone(),
                q.ttft_ms
                    .map(|t| format!("{t:.1}"))
                    .unwrap_or_else(|| "-".into()),
                q.tokens.to_string(),
                format!("{:.1}", q.max_gap_ms),
                format!("{:.1}", q.duration_ms),
                q.end.to_string(),
            ])
        })
        .collect();
    let n = body.len();
    let t = Table::new(
        body,
        [
            Constraint::Length(7),
            Constraint::Length(17),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(12),
        ],
    )
    .header(header(&[
        "pid", "remote", "ttft ms", "tokens", "gap ms", "dur ms", "end",
    ]))
    .row_highlight_style(HIGHLIGHT);
    f.render_stateful_widget(t, parts[1], &mut state(ui, Pane::Requests, n));
}

/// The status bar: time, event rate, lost events, attached pids, pause and filter.
pub fn status_bar(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    let s = &m.status;
    let mut pids: Vec<String> = s.live_pids.iter().take(8).map(u32::to_string).collect();
    if s.live_pids.len() > 8 {
        pids.push(format!("+{}", s.live_pids.len() - 8));
    }
    let mut spans = vec![
        Span::styled(" llmdd ", Style::default().add_modifier(Modifier::REVERSED)),
        Span::raw(format!(
            " t={:.0}s  events {} ({:.0}/s)  ",
            s.elapsed_s, s.events, s.event_rate
        )),
        Span::styled(
            format!("lost {}", s.lost),
            if s.lost > 0 {
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            },
        ),
        Span::raw(format!(
            "  pids {}/{} [{}]",
            s.live_pids.len(),
            s.total_pids,
            pids.join(" ")
        )),
    ];
    if ui.paused {
        spans.push(Span::styled(
            "  PAUSED",
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    if ui.editing || !ui.filter.is_empty() {
        spans.push(Span::raw(format!(
            "  filter: {}{}",
            ui.filter,
            if ui.editing { "_" } else { "" }
        )));
    }
    if let Some(x) = &s.sampled {
        spans.push(Span::styled(
            format!("  {x}"),
            Style::default().fg(Color::Yellow),
        ));
    }
    if let Some(n) = &s.note {
        spans.push(Span::raw(format!("  | {n}")));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn hints(f: &mut Frame, area: Rect) {
    f.render_widget(
        Paragraph::new(
            " Tab/arrows: pane  Up/Down: select  Enter: details  p: pause  /: filter  ?: help  q: quit",
        )
        .style(Style::default().add_modifier(Modifier::DIM)),
        area,
    );
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

pub const HELP: &str = "\
Tab, Shift-Tab, Left, Right   move between panes
Up, Down (j, k)               select a row
Enter                         details of the selected row
p                             pause / resume the display (tracing goes on)
/                             filter rows (type, Enter to keep, Esc to clear)
Esc                           close details, help or filter
?                             this help
q, Ctrl-C                     quit (detaches, prints the final summary)

Panes: communicators x ops (calls/s; call p50/p99: host call time, entry to return, which
with asynchronous NCCL is the enqueue, not the collective's latency; done p50: completion
bound, from the last rank's entry to the sync that saw the collective done; arrival skew;
bus bandwidth; skew trend: its p50 at each of the last 12 refreshes, scaled to the row),
per-rank lateness (arrival lag behind the first rank; lag trend likewise, every rank of a
communicator on one scale), findings (Enter shows the evidence
and the suggestion), where each rank is now (its threads as last read: at attach and while
a job looks stuck; yellow: not waiting on other ranks or its device), requests on the
serving port (TTFT, inter-token gaps).";

/// The help overlay.
pub fn help(f: &mut Frame, area: Rect) {
    let r = centered(area, 92, HELP.lines().count() as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(HELP).block(block(" help (Esc to close) ".into(), true)),
        r,
    );
}

/// The detail text of the selected row.
pub fn detail_text(m: &Model, ui: &Ui) -> Option<(String, String)> {
    let i = ui.selected();
    match ui.focus {
        Pane::Comms => ops(m, ui).get(i).map(|o| {
            (
                format!(" {} {} on {} ", o.op, o.size, o.comm),
                format!(
                    "communicator {}  ranks {}\ncalls {}  ({:.1}/s)\nhost call time p50 {}  p99 {}  max {} (entry to return: with asynchronous NCCL, the enqueue)\ncompletion bound p50 {} (last rank's entry to the sync that saw it done)\narrival skew p50 {}  p99 {}\nbus bandwidth p50 {}{}",
                    o.comm,
                    o.nranks.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
                    o.calls,
                    o.rate,
                    dur(o.p50_ns),
                    dur(o.p99_ns),
                    dur(o.max_ns),
                    o.done_p50_ns.map(dur).unwrap_or_else(|| "-".into()),
                    dur(o.skew_p50_ns),
                    dur(o.skew_p99_ns),
                    o.busbw_gbps.map(|g| format!("{g:.2} GB/s")).unwrap_or_else(|| "-".into()),
                    o.holds
                        .as_deref()
                        .map(|h| format!("\neach replay runs (from its capture): {h}"))
                        .unwrap_or_default(),
                ),
            )
        }),
        Pane::Ranks => ranks(m, ui).get(i).map(|r| {
            (
                format!(
                    " rank {} (pid {}) ",
                    r.rank.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
                    r.pid
                ),
                format!(
                    "communicator {}{}\nhost {}\nstate {}  calls {}\narrival lag p50 {}  p99 {}  max {}\ncall latency p50 {}{}",
                    r.comm,
                    r.role.as_deref().map(|x| format!("\nrole {x}")).unwrap_or_default(),
                    r.host.as_deref().unwrap_or("-"),
                    r.state,
                    r.calls,
                    dur(r.lag_p50_ns),
                    dur(r.lag_p99_ns),
                    dur(r.lag_max_ns),
                    dur(r.latency_p50_ns),
                    if r.straggler { "\nnamed straggler by an active finding" } else { "" }
                ),
            )
        }),
        Pane::Findings => findings(m, ui).get(i).map(|x| {
            (
                format!(" [{}] {} ", severity_tag(x.severity), x.kind),
                format!(
                    "culprit: {}\nwindow: t={:.3}s .. t={:.3}s ({}; from {})\n\n{}\n\n-> {}",
                    x.culprit,
                    x.window_s.0,
                    x.window_s.1,
                    if x.active { "active" } else { "resolved" },
                    x.source,
                    x.evidence,
                    x.suggestion
                ),
            )
        }),
        Pane::Now => now(m, ui).get(i).map(|r| {
            (
                format!(
                    " rank {} (pid {}) now ",
                    r.rank.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
                    r.pid
                ),
                format!(
                    "{}\nthread {}, read {:.1} s ago\nframes: {}",
                    r.place, r.thread, r.age_s, r.site
                ),
            )
        }),
        Pane::Requests => requests(m, ui).get(i).map(|q| {
            (
                format!(" request from {} ", q.remote),
                format!(
                    "pid {}\ntime to first token {}\ntokens {}  longest gap {:.1} ms\nduration {:.1} ms  ended: {}",
                    q.pid,
                    q.ttft_ms.map(|t| format!("{t:.1} ms")).unwrap_or_else(|| "-".into()),
                    q.tokens,
                    q.max_gap_ms,
                    q.duration_ms,
                    q.end
                ),
            )
        }),
    }
}

/// The detail popup (Enter).
pub fn detail(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    let Some((title, text)) = detail_text(m, ui) else {
        return;
    };
    let r = centered(area, area.width.saturating_sub(8).max(40), 14);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .block(block(title, true)),
        r,
    );
}

/// The whole screen.
pub fn draw(f: &mut Frame, m: &Model, ui: &Ui) {
    let outer = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Min(6),
            Constraint::Length(1),
        ])
        .split(f.area());
    status_bar(f, outer[0], m, ui);
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
        .split(outer[1]);
    let top = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(65), Constraint::Percentage(35)])
        .split(rows[0]);
    let bottom = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
        .split(rows[1]);
    let right = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .split(bottom[1]);
    comms_pane(f, top[0], m, ui);
    findings_pane(f, top[1], m, ui);
    ranks_pane(f, bottom[0], m, ui);
    now_pane(f, right[0], m, ui);
    requests_pane(f, right[1], m, ui);
    hints(f, outer[2]);
    if ui.detail {
        detail(f, outer[1], m, ui);
    }
    if ui.help {
        help(f, outer[1]);
    }
}
