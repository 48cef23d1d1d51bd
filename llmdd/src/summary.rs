//! The plain live summary printed by `attach` (calls per function per process, bytes,
//! errors, socket traffic, lost events). Pure aggregation over events; rendering is text.

use std::{collections::BTreeMap, fmt::Write as _};

use llmdd_common::counters;

use crate::events::{Event, SockKind};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FuncStats {
    pub calls: u64,
    pub bytes: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Non-success return codes and how often each was seen.
    pub errors: BTreeMap<i64, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SockStats {
    pub sent: u64,
    pub received: u64,
    pub sends: u64,
    pub recvs: u64,
    pub retransmits: u64,
    pub state_changes: u64,
}

/// Aggregates since the start of the run, plus the counts at the last render (for rates).
#[derive(Debug, Default)]
pub struct Summary {
    pub funcs: BTreeMap<(u32, &'static str), FuncStats>,
    pub socks: BTreeMap<u32, SockStats>,
    pub exited: Vec<u32>,
    pub events: u64,
    /// Probe families under the overhead budget's duty cycle (set by the caller before a
    /// render): counts of their cycled functions are shown extrapolated.
    pub duties: Vec<crate::budget::Duty>,
    /// The overhead budget and the threads over it in the last window (pid, tid, share).
    pub over_budget: (f64, Vec<(u32, u32, f64)>),
    /// Whether the budget duty-cycles hot probes (`--enforce-budget`).
    pub budget_enforced: bool,
    /// The calibrated cost of one traced call, and what the probes cost each traced thread
    /// (with the overhead budget on).
    pub call_cost_ns: Option<f64>,
    pub thread_costs: Vec<crate::cost::ThreadCost>,
    /// Calls counted in the kernel (aggregate mode) per process: no record says which
    /// thread made them.
    pub aggregated_calls: BTreeMap<u32, u64>,
    last_calls: BTreeMap<(u32, &'static str), u64>,
}

impl Summary {
    pub fn add(&mut self, ev: &Event) {
        self.events += 1;
        match ev {
            Event::Call(c) => {
                let s = self.funcs.entry((c.pid, c.name())).or_default();
                s.calls += 1;
                s.bytes += c.bytes.unwrap_or(0);
                if let Some(d) = c.duration_ns() {
                    s.total_ns += d;
                    s.max_ns = s.max_ns.max(d);
                }
                if let Some(r) = c.ret.filter(|r| *r != 0) {
                    *s.errors.entry(r).or_default() += 1;
                }
            }
            Event::Sock(s) => {
                let st = self.socks.entry(s.pid).or_default();
                match s.kind {
                    SockKind::Send if s.bytes > 0 => {
                        st.sent += s.bytes as u64;
                        st.sends += 1;
                    }
                    SockKind::Recv if s.bytes > 0 => {
                        st.received += s.bytes as u64;
                        st.recvs += 1;
                    }
                    SockKind::Retransmit => st.retransmits += 1,
                    SockKind::State => st.state_changes += 1,
                    _ => {}
                }
            }
            Event::ProcExit(p) => self.exited.push(p.pid),
        }
    }

    /// Replaces the figures of the functions traced in aggregate mode with the kernel's
    /// running totals (`Tracer::aggregates`); sizes are summed in bytes only where the size
    /// argument is a byte count.
    pub fn set_aggregates(
        &mut self,
        aggs: &[(llmdd_common::agg::AggKey, llmdd_common::agg::AggVal)],
    ) {
        let mut totals: BTreeMap<(u32, &'static str), FuncStats> = BTreeMap::new();
        self.aggregated_calls.clear();
        for (k, v) in aggs {
            *self.aggregated_calls.entry(k.pid).or_default() += v.calls;
            let Some(spec) = llmdd_common::funcs::spec(k.func) else {
                continue;
            };
            let s = totals.entry((k.pid, spec.name)).or_default();
            s.calls += v.calls;
            if spec.family != llmdd_common::funcs::Family::Nccl {
                s.bytes += v.size_sum;
            }
            s.total_ns += v.total_ns;
            s.max_ns = s.max_ns.max(v.max_ns);
            if v.errors > 0 {
                // The kernel keeps how many calls failed, not which codes: -1 stands for
                // "some non-zero code".
                *s.errors.entry(-1).or_default() += v.errors;
            }
        }
        self.funcs.extend(totals);
    }

    /// Renders one block; `interval_s` is the time since the previous render (for rates).
    pub fn render(&mut self, elapsed_s: f64, interval_s: f64, lost: &[u64]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "--- llmdd  t={elapsed_s:.1}s  events={} ---",
            self.events
        );
        let _ = writeln!(
            out,
            "{:>8}  {:<24} {:>10} {:>9} {:>12} {:>10} {:>10}  errors",
            "pid", "function", "calls", "calls/s", "bytes", "avg_us", "max_us"
        );
        for ((pid, name), s) in &self.funcs {
            // Observed calls of a duty-cycled function, scaled by the time it was probed.
            let scale = llmdd_common::funcs::FUNCS
                .iter()
                .find(|f| f.name == *name)
                .filter(|f| crate::budget::cyclable(f.id))
                .and_then(|f| {
                    self.duties
                        .iter()
                        .find(|d| d.pid == *pid && d.family == f.family)
                })
                .map(|d| d.scale)
                .filter(|k| *k > 1.0);
            let calls_col = match scale {
                Some(k) => format!("~{:.0}", s.calls as f64 * k),
                None => s.calls.to_string(),
            };
            let prev = self.last_calls.insert((*pid, name), s.calls).unwrap_or(0);
            let rate = if interval_s > 0.0 {
                (s.calls - prev) as f64 / interval_s
            } else {
                0.0
            };
            let avg = if s.calls > 0 {
                s.total_ns as f64 / s.calls as f64 / 1e3
            } else {
                0.0
            };
            let errors = s
                .errors
                .iter()
                .map(|(code, n)| format!("{code}x{n}"))
                .collect::<Vec<_>>()
                .join(",");
            let _ = writeln!(
                out,
                "{pid:>8}  {name:<24} {calls_col:>10} {rate:>9.1} {:>12} {avg:>10.1} {:>10.1}  {errors}",
                s.bytes,
                s.max_ns as f64 / 1e3
            );
        }
        for &(pid, tid, share) in &self.over_budget.1 {
            let _ = writeln!(
                out,
                "{pid:>8}  probe cost: thread {tid} spends about {:.1}% of its time in probes \
                 (budget {}%)",
                share * 100.0,
                self.over_budget.0 * 100.0
            );
        }
        let mut costly: Vec<&crate::cost::ThreadCost> = self
            .thread_costs
            .iter()
            .filter(|t| t.estimated_slowdown >= 0.001)
            .collect();
        costly.sort_by(|a, b| b.estimated_slowdown.total_cmp(&a.estimated_slowdown));
        for t in costly.iter().take(8) {
            let _ = writeln!(out, "{:>8}  {}", t.pid, cost_line(t));
        }
        for d in &self.duties {
            let _ = writeln!(
                out,
                "{:>8}  overhead budget: {} launches/copies/event calls probed {:.1}% of the time \
                 (duty cycle now {:.1}%); counts marked ~ are extrapolated (observed x {:.2})",
                d.pid,
                d.family.name(),
                d.attached * 100.0,
                d.target * 100.0,
                d.scale
            );
        }
        for (pid, s) in &self.socks {
            let _ = writeln!(
                out,
                "{pid:>8}  tcp: sent {} B in {} sends, received {} B in {} recvs, {} retransmits, {} state changes",
                s.sent, s.sends, s.received, s.recvs, s.retransmits, s.state_changes
            );
        }
        let part = |want_loss: bool| -> Vec<String> {
            lost.iter()
                .enumerate()
                .filter(|(i, n)| **n > 0 && counters::is_loss(*i as u32) == want_loss)
                .map(|(i, n)| format!("{}={n}", counters::NAMES.get(i).copied().unwrap_or("?")))
                .collect()
        };
        let losses = part(true);
        let total: u64 = counters::LOSSES
            .iter()
            .filter_map(|&i| lost.get(i as usize))
            .sum();
        if losses.is_empty() {
            let _ = writeln!(out, "lost events: 0");
        } else {
            let _ = writeln!(out, "lost events: {total} ({})", losses.join(" "));
        }
        let notes = part(false);
        if !notes.is_empty() {
            let _ = writeln!(
                out,
                "probe notes: {} (returns without entry are calls already in flight at attach)",
                notes.join(" ")
            );
        }
        out
    }
}

/// One thread's probe cost in words: the estimate, what it rests on, and the other figure.
fn cost_line(t: &crate::cost::ThreadCost) -> String {
    let pct = |x: f64| x * 100.0;
    match (t.kernel_share, t.kernel_share_error) {
        (Some(k), Some(e)) => format!(
            "probe cost: thread {} about {:.1}% slower ({:.1}-{:.1}%): kernel time {:.1}% ±{:.1}% \
             of its time over {:.0} s (probes and its own system calls); the calibrated cost \
             says {:.1}%",
            t.tid,
            pct(t.estimated_slowdown),
            pct(t.slowdown_low),
            pct(t.slowdown_high),
            pct(k),
            pct(e),
            t.measured_seconds,
            pct(t.calibrated_share)
        ),
        _ => format!(
            "probe cost: thread {} about {:.1}% slower from the calibrated cost ({:.0} calls/s; \
             not yet measured on the thread)",
            t.tid,
            pct(t.estimated_slowdown),
            t.calls_per_s
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CallEvent, ProcExitEvent};

    #[test]
    fn aggregates_calls_errors_and_separates_losses_from_notes() {
        let mut s = Summary::default();
        let mut rec = llmdd_common::call::CallRecord {
            func: 0,
            pid: 7,
            entry_ns: 10,
            exit_ns: 30,
            flags: llmdd_common::call::F_RETURNED,
            ..Default::default()
        };
        rec.args[2] = 256;
        rec.args[3] = 7;
        let ok = CallEvent::from_record(&rec).expect("valid");
        rec.ret = 4;
        let failed = CallEvent::from_record(&rec).expect("valid");
        s.add(&Event::Call(ok));
        s.add(&Event::Call(failed));
        s.add(&Event::ProcExit(ProcExitEvent { pid: 7, ts_ns: 40 }));
        let st = &s.funcs[&(7, "ncclAllReduce")];
        assert_eq!((st.calls, st.bytes, st.max_ns), (2, 2048, 20));
        assert_eq!(st.errors.get(&4), Some(&1));
        assert_eq!(s.exited, vec![7]);

        let mut lost = [0u64; counters::COUNT as usize];
        lost[counters::RETURN_WITHOUT_ENTRY as usize] = 3;
        let text = s.render(1.0, 1.0, &lost);
        assert!(text.contains("lost events: 0"), "{text}");
        assert!(text.contains("return_without_entry=3"), "{text}");
        lost[counters::RING_FULL as usize] = 5;
        let text = s.render(2.0, 1.0, &lost);
        assert!(
            text.contains("lost events: 5 (ring_buffer_full=5)"),
            "{text}"
        );
        assert!(text.contains("4x1"), "error codes shown: {text}");
    }

    #[test]
    fn each_costly_thread_gets_its_estimate_and_what_it_rests_on() {
        let mut c = crate::cost::Costs::new(1000.0);
        c.note_call(7, 8, 0);
        c.read(7, 8, 0, 0);
        for i in 1..=20_000u64 {
            c.note_call(7, 8, i * 100_000);
        }
        c.read(7, 8, 2_000_000_000, 100_000_000);
        c.note_call(7, 9, 0);
        let mut s = Summary {
            thread_costs: c.report(),
            ..Summary::default()
        };
        let text = s.render(2.0, 1.0, &[0u64; counters::COUNT as usize]);
        // 20 000 calls x 1 us over 2 s: 1%; 5% of the time in the kernel.
        assert!(
            text.contains(
                "probe cost: thread 8 about 1.0% slower (1.0-7.5%): kernel time 5.0% ±2.0%"
            ),
            "{text}"
        );
        assert!(!text.contains("thread 9"), "a thread with one call: {text}");
    }
}
