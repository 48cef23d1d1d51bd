//! Gloo (PyTorch's CPU collectives in libtorch_cpu): C++ functions found by demangled name,
//! on the generic call path like every other family.
crate::calls::call_probe_pair!(gloo_entry, gloo_return);
