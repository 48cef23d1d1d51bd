//! Thresholds and bounds of the engine. Every number the engine decides with is declared here,
//! once, with its documentation and default: `llmdd.toml`'s `[thresholds]` section and `--set
//! thresholds.KEY=VALUE` deserialize into this struct (durations as `250ms`, `2s`), and
//! `llmdd config show` and docs/config.md list every key from these declarations.

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

/// Engine configuration. All times are nanoseconds of event time (CLOCK_MONOTONIC); in the
/// configuration file they are durations without the `_ns` suffix in their key.
#[derive(Clone, Debug, Serialize, Deserialize, DocumentedFields)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    // ---- ordering ----
    /// How far event time may run ahead of an event before it is processed: events are held
    /// and released in time order once the newest time seen (or `advance(now)`) is this far
    /// past them. Covers records arriving in batches from several CPUs and the reader's drain
    /// interval.
    #[serde(rename = "reorder_window", with = "duration")]
    pub reorder_window_ns: u64,

    // ---- rolling window and bounds ----
    /// Length of the rolling window for distributions, straggler evidence and bubble ratios.
    #[serde(rename = "window", with = "duration")]
    pub window_ns: u64,
    /// Number of slices the rolling window is cut into (older slices are dropped whole).
    pub window_slices: usize,
    /// Matched instances kept per communicator or graph group (finished ones; for
    /// alignment, late completions and views).
    pub instance_history: usize,
    /// Unfinished instances kept per group before the oldest is evicted (counted).
    pub max_open_instances: usize,
    /// Communicators and graph groups tracked at most (new ones beyond are counted, not kept).
    pub max_communicators: usize,
    /// Distribution series per communicator at most: its op × size-bucket series (32 at
    /// most) and the members with per-rank series (arrival lag, call time; members beyond
    /// have none).
    pub max_series: usize,
    /// Socket connections tracked at most (least recently active are evicted, counted).
    pub max_connections: usize,
    /// Finished requests kept for views.
    pub max_requests_kept: usize,
    /// Live allocations tracked per process (beyond: counted as untracked).
    pub max_allocations_per_process: usize,
    /// Findings kept (the oldest inactive are evicted first).
    pub max_findings: usize,
    /// Straggler evidence entries kept per group (most recent instances).
    pub evidence_instances: usize,

    // ---- alignment of per-rank call sequences ----
    /// Calls buffered from a member that joined without an init event before its sequence is
    /// aligned with the others'.
    pub align_min_calls: usize,
    /// Align with what is buffered once a member has waited this long.
    #[serde(rename = "align_timeout", with = "duration")]
    pub align_timeout_ns: u64,
    /// Largest sequence shift tried either way when aligning.
    pub align_max_shift: usize,

    // ---- stragglers ----
    // An instance counts as *late* for the rank that arrived last when its lag (last arrival
    // minus the others' median arrival) reaches `max(straggler_min_lag_ns,
    // straggler_min_lag_period_frac x the lane's typical period)`. Smaller lags are the
    // natural spread of a healthy job (e.g. the root of a star or tree returns, and so calls
    // again, slightly after the others every time). The straggler is the rank that caused the
    // most waiting through late instances; it is named when it also passes every threshold
    // below.
    /// Fewest finished instances in the window before a straggler can be named.
    pub straggler_min_instances: u32,
    /// Fewest late instances of the rank in the window.
    pub straggler_min_late: u32,
    /// Largest chance that the rank's share of the late instances is luck. Were no rank
    /// slow, the rank arriving that late would be last as often as it is last in the
    /// instances nobody is late in; the binomial tail of its count among the instances as
    /// late as it typically is must be at most this (5 of 5 on 4 ranks in a uniform order:
    /// 0.001).
    #[serde(deserialize_with = "share")]
    pub straggler_max_chance: f64,
    /// A straggler's lateness must stand out from the job's own arrival noise: its lag must
    /// be at least this many times the 95th percentile of the lags of the instances other
    /// ranks were last in. On a loaded host every rank is late by a millisecond or more now
    /// and then, most often the one most exposed to the contention; that is noise, not a
    /// rank to page about.
    pub straggler_noise_factor: f64,
    /// Instances other ranks were last in needed before their lags set the noise floor.
    pub straggler_noise_min_instances: u32,
    /// Share of the waiting caused by all late instances in the window that must be the
    /// rank's (one rank dominates; random scheduling noise spreads over every rank).
    #[serde(deserialize_with = "share")]
    pub straggler_min_blame: f64,
    /// Smallest share of the other ranks' time its late instances must cost them (the
    /// waiting they caused over the window, per other rank): lateness that costs less is
    /// within the step-to-step variation of a shared host and not worth a page.
    #[serde(deserialize_with = "share")]
    pub straggler_min_cost: f64,
    /// Smallest lag that makes an instance late.
    #[serde(rename = "straggler_min_lag", with = "duration")]
    pub straggler_min_lag_ns: u64,
    /// Smallest lag that makes an instance late, as a share of the lane's typical period
    /// (median time between consecutive instances).
    #[serde(deserialize_with = "share")]
    pub straggler_min_lag_period_frac: f64,
    /// Median lag (over its late instances) from which a straggler is critical rather than a
    /// warning.
    #[serde(rename = "straggler_critical_lag", with = "duration")]
    pub straggler_critical_lag_ns: u64,
    /// Straggler and bubble evidence is re-evaluated at most this often per group.
    #[serde(rename = "eval_interval", with = "duration")]
    pub eval_interval_ns: u64,

    // ---- stalls ----
    /// Longest an instance that some ranks entered may wait for the others before it is a
    /// stall. A lane whose typical period (median time between consecutive instances) is
    /// known uses `stall_period_factor` periods instead, within `[stall_min,
    /// stall_threshold]`.
    #[serde(rename = "stall_threshold", with = "duration")]
    pub stall_threshold_ns: u64,
    /// Shortest stall threshold, however fast a lane's period.
    #[serde(rename = "stall_min", with = "duration")]
    pub stall_min_ns: u64,
    /// Periods of its lane an instance may wait before it is a stall.
    pub stall_period_factor: u64,
    /// How long the ranks of a job must stay where their threads were found (some waiting
    /// in a collective or on the device, none making a collective call) before that is a
    /// stall found at attach.
    #[serde(rename = "stall_at_attach_confirm", with = "duration")]
    pub stall_at_attach_confirm_ns: u64,

    // ---- requests ----
    /// Serving ports to build request timelines for; empty = detect automatically.
    pub serving_ports: Vec<u16>,
    /// Connections that received first and then sent back needed on a local port before it
    /// is taken as the serving port.
    pub serving_port_min_connections: u32,
    /// A request whose connection has been quiet this long after sending is over.
    #[serde(rename = "request_idle", with = "duration")]
    pub request_idle_ns: u64,
    /// Sends closer than this to the previous one are one token (chunk framing).
    #[serde(rename = "token_coalesce", with = "duration")]
    pub token_coalesce_ns: u64,

    // ---- bubbles ----
    /// Gap between GPU submissions on a stream, while the process keeps making other calls,
    /// from which it counts.
    #[serde(rename = "submission_gap", with = "duration")]
    pub submission_gap_ns: u64,
    /// Gaps needed in the window before a submission-gap bubble is raised.
    pub submission_gap_min_count: u32,
    /// Share of the window a stage or rank must idle before a bubble is raised.
    #[serde(deserialize_with = "share")]
    pub bubble_min_ratio: f64,
    /// Fewest matched transfers or instances behind a bubble finding.
    pub bubble_min_events: u32,
    /// Shortest span of instances or transfers behind a data-parallel idle or pipeline
    /// bubble finding (a share of a shorter span is a burst of noise, or a pipeline filling).
    #[serde(rename = "bubble_min_span", with = "duration")]
    pub bubble_min_span_ns: u64,

    // ---- links ----
    /// Fewest retransmits on one connection in the window behind a link finding.
    pub link_retransmits: u32,
    /// Retransmits per segment sent in the window from which a link finding is raised.
    /// Segments are estimated from the sends as `ceil(bytes / link_assumed_mss)` each, an
    /// upper bound for any path whose MSS is at least that (loopback's is 64 KiB), so the
    /// rate is a lower bound of the true one: a few spurious retransmits (tail-loss probes
    /// on a busy host) over a bulk transfer stay far below it.
    #[serde(deserialize_with = "share")]
    pub link_retransmit_rate: f64,
    /// Bytes per segment assumed when sends are counted as segments (see
    /// `link_retransmit_rate`).
    pub link_assumed_mss: u64,
    /// A retransmit this long after the connection's last send, and sooner than
    /// `link_tail_probe_max_ns` (the shortest retransmission timeout, 200 ms on Linux), is a
    /// tail-loss probe (the probe timeout is twice the smoothed RTT, at least 10 ms less
    /// timer slack on Linux), not evidence of loss.
    #[serde(rename = "link_tail_probe_min", with = "duration")]
    pub link_tail_probe_min_ns: u64,
    /// See `link_tail_probe_min`.
    #[serde(rename = "link_tail_probe_max", with = "duration")]
    pub link_tail_probe_max_ns: u64,
}

/// Durations as humantime text (`250ms`, `2s`, `1h 30m`) or plain seconds (`5`, `0.5`).
mod duration {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ns: &u64, s: S) -> Result<S::Ok, S::Error> {
        let d = std::time::Duration::from_nanos(*ns);
        s.serialize_str(&humantime::format_duration(d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Secs(f64),
            Text(String),
        }
        let secs = match Text::deserialize(d)? {
            Text::Secs(s) => s,
            Text::Text(t) => match t.trim().parse::<f64>() {
                Ok(s) => s,
                Err(_) => {
                    let d = humantime::parse_duration(t.trim()).map_err(|e| {
                        D::Error::custom(format!(
                            "`{t}` is not a duration ({e}): use e.g. 250ms, 2s, 1m"
                        ))
                    })?;
                    d.as_secs_f64()
                }
            },
        };
        if !(0.0..1e9).contains(&secs) {
            return Err(D::Error::custom(format!(
                "{secs} is not a duration in seconds between 0 and 1e9"
            )));
        }
        Ok((secs * 1e9).round() as u64)
    }
}

/// A share between 0 and 1.
fn share<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "{v} is not a share between 0 and 1"
        )))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            reorder_window_ns: 100_000_000,
            window_ns: 60_000_000_000,
            window_slices: 6,
            instance_history: 512,
            max_open_instances: 4096,
            max_communicators: 1024,
            max_series: 512,
            max_connections: 16_384,
            max_requests_kept: 1024,
            max_allocations_per_process: 1 << 20,
            max_findings: 1024,
            evidence_instances: 1024,
            align_min_calls: 16,
            align_timeout_ns: 500_000_000,
            align_max_shift: 64,
            straggler_min_instances: 8,
            straggler_min_late: 3,
            straggler_max_chance: 0.001,
            straggler_noise_factor: 3.0,
            straggler_min_cost: 0.02,
            straggler_noise_min_instances: 20,
            straggler_min_blame: 0.5,
            straggler_min_lag_ns: 1_000_000,
            straggler_min_lag_period_frac: 0.05,
            straggler_critical_lag_ns: 20_000_000,
            eval_interval_ns: 100_000_000,
            stall_threshold_ns: 2_000_000_000,
            stall_min_ns: 500_000_000,
            stall_period_factor: 50,
            stall_at_attach_confirm_ns: 1_000_000_000,
            serving_ports: Vec::new(),
            serving_port_min_connections: 3,
            request_idle_ns: 5_000_000_000,
            token_coalesce_ns: 200_000,
            submission_gap_ns: 20_000_000,
            submission_gap_min_count: 3,
            bubble_min_ratio: 0.2,
            bubble_min_events: 8,
            bubble_min_span_ns: 1_000_000_000,
            link_retransmits: 10,
            link_retransmit_rate: 0.005,
            link_assumed_mss: 1448,
            link_tail_probe_min_ns: 5_000_000,
            link_tail_probe_max_ns: 200_000_000,
        }
    }
}

impl Config {
    /// Length of one rolling-window slice.
    pub fn slice_ns(&self) -> u64 {
        (self.window_ns / self.window_slices.max(1) as u64).max(1)
    }

    /// The stall threshold of a lane whose typical period is `period_ns` (0 = not known).
    pub fn stall_threshold(&self, period_ns: u64) -> u64 {
        if period_ns == 0 {
            return self.stall_threshold_ns;
        }
        period_ns.saturating_mul(self.stall_period_factor).clamp(
            self.stall_min_ns.min(self.stall_threshold_ns),
            self.stall_threshold_ns,
        )
    }

    /// The lag from which an instance counts as late on a lane of typical period `period_ns`.
    pub fn straggler_lag_threshold(&self, period_ns: u64) -> u64 {
        self.straggler_min_lag_ns
            .max((period_ns as f64 * self.straggler_min_lag_period_frac) as u64)
    }
}
