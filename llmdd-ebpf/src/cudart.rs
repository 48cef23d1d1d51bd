//! CUDA runtime (libcudart) probes: launches, graph launches, copies, syncs, events,
//! allocations.
crate::calls::call_probe_pair!(cudart_entry, cudart_return);
