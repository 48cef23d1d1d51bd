//! NCCL (and RCCL, which exports the same names) probes: collectives, point-to-point,
//! groups, communicator lifecycle. Attached once per (file, offset): `ncclX` and `pncclX`
//! share an address.
crate::calls::call_probe_pair!(nccl_entry, nccl_return);
