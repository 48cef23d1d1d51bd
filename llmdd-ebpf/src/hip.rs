//! The HIP runtime (libamdhip64) family: launches, graph launches, copies, syncs and
//! allocations on AMD GPUs, through the generic call path like the CUDA runtime.

crate::calls::call_probe_pair!(hip_entry, hip_return);
