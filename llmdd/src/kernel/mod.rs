//! Facts about the running kernel that the probes need (BTF-derived struct offsets).
