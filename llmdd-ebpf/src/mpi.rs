//! The MPI family (libmpi): collectives and point-to-point calls, through the generic call
//! path like NCCL's.

crate::calls::call_probe_pair!(mpi_entry, mpi_return);
