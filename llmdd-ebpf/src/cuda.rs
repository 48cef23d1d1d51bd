//! CUDA driver (libcuda) probes: launches (also those reached through cuGetProcAddress,
//! since uprobes fire on the code address), graph launches, syncs, allocations.
crate::calls::call_probe_pair!(cuda_entry, cuda_return);
