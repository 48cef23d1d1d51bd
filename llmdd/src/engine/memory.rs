//! Memory pressure: allocation failures (`cudaMalloc*`/`cuMemAlloc` returning 2, out of
//! memory) and device bytes outstanding per process from allocation/free pairs seen since
//! tracing began (allocations made before attach are not known).

use serde::Serialize;

use super::{procs::ProcId, util::FastMap};
use crate::events::CallEvent;

/// cudaErrorMemoryAllocation and CUDA_ERROR_OUT_OF_MEMORY are both 2.
pub const OOM: i64 = 2;

#[derive(Clone, Debug, Default)]
pub struct ProcMem {
    /// Device bytes allocated and not yet freed (traced calls only).
    pub outstanding: u64,
    pub peak: u64,
    /// Pinned host bytes (`cudaMallocHost`).
    pub host_outstanding: u64,
    allocs: FastMap<u64, (u64, bool)>,
    pub untracked_allocs: u64,
    pub unmatched_frees: u64,
    pub failures: u64,
    pub failed_bytes_last: u64,
    pub failed_func_last: &'static str,
    pub first_failure_ns: u64,
    pub last_failure_ns: u64,
}

/// An allocation failure worth a finding.
#[derive(Clone, Debug, PartialEq)]
pub struct AllocFailure {
    pub bytes: u64,
    pub func: &'static str,
}

#[derive(Default)]
pub struct Memory {
    pub procs: FastMap<ProcId, ProcMem>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryView {
    pub pid: u32,
    pub outstanding_bytes: u64,
    pub peak_bytes: u64,
    pub host_outstanding_bytes: u64,
    pub failures: u64,
    pub unmatched_frees: u64,
}

impl Memory {
    /// An allocation (`is_alloc`) or free call.
    pub fn on_call(
        &mut self,
        proc: ProcId,
        c: &CallEvent,
        is_alloc: bool,
        max_allocs: usize,
    ) -> Option<AllocFailure> {
        let m = self.procs.entry(proc).or_default();
        let host = c.func == llmdd_common::funcs::id::CUDA_MALLOC_HOST;
        if is_alloc {
            let bytes = c.bytes.unwrap_or(0);
            match c.ret {
                Some(0) => {
                    let addr = c.out.filter(|&a| a != 0)?;
                    if m.allocs.len() >= max_allocs {
                        m.untracked_allocs += 1;
                        return None;
                    }
                    if let Some((old, h)) = m.allocs.insert(addr, (bytes, host)) {
                        // The same address again without a free seen: replace.
                        if h {
                            m.host_outstanding = m.host_outstanding.saturating_sub(old);
                        } else {
                            m.outstanding = m.outstanding.saturating_sub(old);
                        }
                    }
                    if host {
                        m.host_outstanding += bytes;
                    } else {
                        m.outstanding += bytes;
                        m.peak = m.peak.max(m.outstanding);
                    }
                    None
                }
                Some(OOM) => {
                    m.failures += 1;
                    m.failed_bytes_last = bytes;
                    m.failed_func_last = c.name();
                    if m.first_failure_ns == 0 {
                        m.first_failure_ns = c.entry_ns;
                    }
                    m.last_failure_ns = c.entry_ns;
                    Some(AllocFailure {
                        bytes,
                        func: c.name(),
                    })
                }
                _ => None,
            }
        } else {
            if c.ret != Some(0) {
                return None;
            }
            let addr = c.args[0];
            if addr == 0 {
                return None;
            }
            match m.allocs.remove(&addr) {
                Some((b, true)) => m.host_outstanding = m.host_outstanding.saturating_sub(b),
                Some((b, false)) => m.outstanding = m.outstanding.saturating_sub(b),
                None => m.unmatched_frees += 1,
            }
            None
        }
    }

    pub fn get(&self, proc: ProcId) -> Option<&ProcMem> {
        self.procs.get(&proc)
    }

    /// The process is gone: its allocations with it (its record stays for views).
    pub fn proc_exit(&mut self, proc: ProcId) {
        if let Some(m) = self.procs.get_mut(&proc) {
            m.allocs = FastMap::default();
            m.outstanding = 0;
            m.host_outstanding = 0;
        }
    }
}
