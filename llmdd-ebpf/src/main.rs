//! llmdd's eBPF programs. One file per probe family; the shared call path lives in `calls`,
//! the maps in `maps`, and "reserve, fill, submit or count a drop" in `emit`.
//!
//! The uprobe programs are generic: every attachment carries a cookie (see
//! `llmdd_common::call::Cookie`) that says which function fired and what to capture, so one
//! small, verifier-friendly program pair serves every function of a family.
#![no_std]
#![no_main]

mod agg;
mod bench;
#[macro_use]
mod calls;
mod cuda;
mod cudart;
mod emit;
mod gloo;
mod hip;
mod maps;
mod mpi;
mod nccl;
mod nixl;
mod proc;
mod sock;
mod user;
mod vllm;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The license the kernel needs to allow the GPL-only helpers (probe_read_user, ring buffer).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
