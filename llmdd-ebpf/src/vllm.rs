//! vLLM's own collectives (`vllm::CustomAllreduce` member functions, found by demangled
//! name), on the generic call path like every other family.
crate::calls::call_probe_pair!(vllm_entry, vllm_return);
