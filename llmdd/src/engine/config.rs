//! Thresholds and bounds of the engine. Every number the engine decides with lives here, with a
//! default; callers (CLI flags, a config file) override fields.

use serde::Serialize;

/// Engine configuration. All times are nanoseconds of event time (CLOCK_MONOTONIC).
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    // ---- ordering ----
    /// How far event time may run ahead of an event before it is processed: events are held
    /// and released in time order once the newest time seen (or `advance(now)`) is this far
    /// past them. Covers records arriving in batches from several CPUs and the reader's drain
    /// interval.
    pub reorder_window_ns: u64,

    // ---- rolling window and bounds ----
    /// Length of the rolling window for distributions, straggler evidence and bubble ratios.
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
    /// Distribution series (communicator × op × size bucket, and per rank) at most.
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
    pub align_timeout_ns: u64,
    /// Largest sequence shift tried either way when aligning.
    pub align_max_shift: usize,

    // ---- stragglers ----
    /// Fewest finished instances in the window before a straggler can be named.
    pub straggler_min_instances: u32,
    /// Share of the window's instances a rank must have arrived last in.
    pub straggler_min_share: f64,
    /// Smallest median lag (last arrival minus the others' median) that counts.
    pub straggler_min_lag_ns: u64,
    /// Median lag from which a straggler is critical rather than a warning.
    pub straggler_critical_lag_ns: u64,
    /// Straggler and bubble evidence is re-evaluated at most this often per group.
    pub eval_interval_ns: u64,

    // ---- stalls ----
    /// An instance that some ranks entered and others have not for this long is a stall.
    pub stall_threshold_ns: u64,

    // ---- requests ----
    /// Serving ports to build request timelines for; empty = detect automatically.
    pub serving_ports: Vec<u16>,
    /// Connections that received first and then sent back needed on a local port before it
    /// is taken as the serving port.
    pub serving_port_min_connections: u32,
    /// A request whose connection has been quiet this long after sending is over.
    pub request_idle_ns: u64,
    /// Sends closer than this to the previous one are one token (chunk framing).
    pub token_coalesce_ns: u64,

    // ---- bubbles ----
    /// Gap between GPU submissions on a stream, while the process keeps making other calls,
    /// from which it counts.
    pub submission_gap_ns: u64,
    /// Gaps needed in the window before a submission-gap bubble is raised.
    pub submission_gap_min_count: u32,
    /// Share of the window a stage or rank must idle before a bubble is raised.
    pub bubble_min_ratio: f64,
    /// Fewest matched transfers or instances behind a bubble finding.
    pub bubble_min_events: u32,

    // ---- links ----
    /// Retransmits on one connection in the window from which a link finding is raised.
    pub link_retransmits: u32,
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
            align_timeout_ns: 1_000_000_000,
            align_max_shift: 64,
            straggler_min_instances: 8,
            straggler_min_share: 0.5,
            straggler_min_lag_ns: 1_000_000,
            straggler_critical_lag_ns: 20_000_000,
            eval_interval_ns: 100_000_000,
            stall_threshold_ns: 2_000_000_000,
            serving_ports: Vec::new(),
            serving_port_min_connections: 3,
            request_idle_ns: 5_000_000_000,
            token_coalesce_ns: 200_000,
            submission_gap_ns: 20_000_000,
            submission_gap_min_count: 3,
            bubble_min_ratio: 0.2,
            bubble_min_events: 8,
            link_retransmits: 10,
        }
    }
}

impl Config {
    /// Length of one rolling-window slice.
    pub fn slice_ns(&self) -> u64 {
        (self.window_ns / self.window_slices.max(1) as u64).max(1)
    }
}
