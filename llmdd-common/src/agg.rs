//! Aggregate mode: for hot functions (kernel launches, copies, event queries) the probes keep
//! counts and latency histograms per (process, function, size bucket) in a BPF map instead
//! of sending one record per call. Userspace reads the map periodically.
//!
//! A function is traced in aggregate mode when its attach cookie carries `call::C_AGG`; the
//! size bucket comes from the argument in the cookie's size slot (`Cookie::size_slot`).

/// Latency histogram buckets: bucket `i` counts calls whose duration `d` (ns) has
/// `floor(log2(d)) == i` (bucket 0 also takes `d == 0`); the last bucket takes everything
/// from 2^(AGG_HIST_BUCKETS-1) ns (about 1.07 s) up.
pub const AGG_HIST_BUCKETS: usize = 31;
/// Maximum number of (process, function, size bucket) entries.
pub const MAX_AGG: u32 = 8_192;

/// Key of the aggregate map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggKey {
    /// Process id (tgid).
    pub pid: u32,
    /// `funcs::FuncId`.
    pub func: u16,
    /// `floor(log2(size)) + 1` of the size argument, 0 for a size of 0 or no size argument.
    pub size_bucket: u16,
}

const _: () = assert!(core::mem::size_of::<AggKey>() == 8);

/// Value of the aggregate map (one copy per CPU; userspace sums them and takes the largest
/// `max_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggVal {
    pub calls: u64,
    /// Sum of the size argument over the calls (in the function's own unit: bytes for
    /// copies and allocations, elements for collectives).
    pub size_sum: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Calls whose return value (low 32 bits) was not 0.
    pub errors: u64,
    pub hist: [u64; AGG_HIST_BUCKETS],
}

impl Default for AggVal {
    fn default() -> Self {
        AggVal {
            calls: 0,
            size_sum: 0,
            total_ns: 0,
            max_ns: 0,
            errors: 0,
            hist: [0; AGG_HIST_BUCKETS],
        }
    }
}

const _: () = assert!(core::mem::size_of::<AggVal>() == 8 * (5 + AGG_HIST_BUCKETS));

/// What an aggregated call parks between entry and return (much smaller than a whole
/// `CallRecord`: aggregation needs only the entry time and the size).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggStart {
    pub entry_ns: u64,
    pub size: u64,
}

/// `floor(log2(v)) + 1`, 0 for 0: the size bucket of a size argument.
#[inline(always)]
pub const fn size_bucket(v: u64) -> u16 {
    (64 - v.leading_zeros()) as u16
}

/// The histogram bucket of a duration in nanoseconds.
#[inline(always)]
pub const fn hist_bucket(ns: u64) -> usize {
    let b = if ns == 0 {
        0
    } else {
        63 - ns.leading_zeros() as usize
    };
    if b >= AGG_HIST_BUCKETS {
        AGG_HIST_BUCKETS - 1
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(1), 1);
        assert_eq!(size_bucket(4096), 13);
        assert_eq!(size_bucket(4097), 13);
        assert_eq!(hist_bucket(0), 0);
        assert_eq!(hist_bucket(1), 0);
        assert_eq!(hist_bucket(1023), 9);
        assert_eq!(hist_bucket(1024), 10);
        assert_eq!(hist_bucket(u64::MAX), AGG_HIST_BUCKETS - 1);
    }
}
