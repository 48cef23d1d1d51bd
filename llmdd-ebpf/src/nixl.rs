//! NIXL (libnixl's `nixlAgent` members: KV-cache transfers), on the generic call path like
//! every other family.
crate::calls::call_probe_pair!(nixl_entry, nixl_return);
