//! The generic call path shared by the NCCL, CUDA runtime and CUDA driver probe families.
//!
//! Entry: capture arguments (registers and the first stack words), read the communicator's
//! rank/nranks through the handle when the function takes one, hash a by-value
//! `ncclUniqueId`, and park the half-filled record in `INFLIGHT`. Return: take the record
//! back, add the exit time, the return value and whatever the out-pointer now holds, and
//! submit it.

use aya_ebpf::{
    bindings::{pt_regs, BPF_F_USER_STACK},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_ktime_get_ns, bpf_probe_read_user,
    },
    programs::tracing::StackIdContext,
    EbpfContext,
};
use llmdd_common::{
    call::{
        uid_hash_step, CallRecord, Cookie, InflightKey, ARG_WORDS, C_AGG, C_COMM_DEREF,
        C_ENTRY_ONLY, C_SKIP_RET1, C_STACK, C_STR, C_UID, C_USTACK, F_DEREF, F_OUT, F_RANK,
        F_RETURNED,
        F_STR, F_UID, F_USTACK, NO_SLOT, STR_WORDS, UID_BYTES, UID_HASH_INIT,
    },
    counters, RecordKind,
};

use crate::{
    agg::{agg_entry, agg_return},
    emit::{send, wakeup_flags},
    maps::{count, EVENTS, INFLIGHT, LIB_CFG, STACKS},
};

/// Reads one word of user memory; counts a failure and gives `None`.
#[inline(always)]
fn read_user_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user validates the address and fails cleanly.
    match unsafe { bpf_probe_read_user(addr as *const u64) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(counters::USER_READ_FAILED);
            None
        }
    }
}

#[inline(always)]
fn read_user_i32(addr: u64) -> Option<i32> {
    // SAFETY: as above.
    match unsafe { bpf_probe_read_user(addr as *const i32) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(counters::USER_READ_FAILED);
            None
        }
    }
}

/// The argument in `slot`, with a bound the verifier can see.
#[inline(always)]
fn arg_at(args: &[u64; ARG_WORDS], slot: u8) -> Option<u64> {
    if (slot as usize) < ARG_WORDS {
        Some(args[slot as usize])
    } else {
        None
    }
}

#[inline(always)]
fn key_of(pid_tgid: u64, func: u16) -> InflightKey {
    InflightKey {
        pid_tgid,
        func: func as u32,
        _pad: 0,
    }
}

/// Hashes a string of `len` bytes at `rec.deref_val` (its character pointer) into
/// `rec.uid_hash`, keeping its first word in `rec.deref_val`.
#[inline(always)]
fn hash_str(rec: &mut CallRecord, len: u64) {
    let data = rec.deref_val;
    let mut h = uid_hash_step(UID_HASH_INIT, len);
    let mut first = 0u64;
    let mut w = 0usize;
    while w < STR_WORDS {
        let at = 8 * w as u64;
        if at < len {
            // SAFETY: validated user read; a string's buffer holds at least `len` bytes.
            let v = match unsafe { bpf_probe_read_user((data + at) as *const u64) } {
                Ok(v) => v,
                Err(_) => {
                    count(counters::USER_READ_FAILED);
                    return;
                }
            };
            let keep = len - at;
            let v = if keep >= 8 {
                v
            } else {
                v & ((1u64 << (8 * keep)) - 1)
            };
            if w == 0 {
                first = v;
            }
            h = uid_hash_step(h, v);
        }
        w += 1;
    }
    rec.uid_hash = h;
    rec.deref_val = first;
    rec.flags |= F_STR;
}

/// Entry half of the pair.
#[inline(always)]
pub fn on_entry<C: EbpfContext + StackIdContext>(ctx: &C) -> u32 {
    let regs = ctx.as_ptr() as *const pt_regs;
    // SAFETY: the helper only reads the attachment's cookie.
    let cookie = Cookie(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) });
    let pid_tgid = bpf_get_current_pid_tgid();
    if cookie.flags() & C_AGG != 0 {
        agg_entry(regs, cookie, &key_of(pid_tgid, cookie.func()));
        return 0;
    }

    let mut rec = CallRecord {
        kind: RecordKind::Call as u32,
        func: cookie.func(),
        lib_slot: cookie.lib_slot(),
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        rank: -1,
        nranks: -1,
        ..CallRecord::default()
    };
    // SAFETY: `regs` is the program context (pt_regs) for a uprobe; direct reads are allowed.
    let sp = unsafe {
        rec.args[0] = (*regs).rdi;
        rec.args[1] = (*regs).rsi;
        rec.args[2] = (*regs).rdx;
        rec.args[3] = (*regs).rcx;
        rec.args[4] = (*regs).r8;
        rec.args[5] = (*regs).r9;
        (*regs).rsp
    };
    // Stack arguments 7-9 sit above the return address; read them in one go, and only
    // for functions that have an argument of interest there. A failed read (stack page not
    // present) leaves the slots 0.
    if cookie.flags() & C_STACK != 0 {
        // SAFETY: validated user read.
        if let Ok(words) = unsafe { bpf_probe_read_user((sp + 8) as *const [u64; 3]) } {
            rec.args[6] = words[0];
            rec.args[7] = words[1];
            rec.args[8] = words[2];
        }
    }

    // A word behind a pointer argument (a launch config's stream, Gloo's context).
    if let Some(p) = arg_at(&rec.args, cookie.deref_slot()) {
        if p != 0 {
            if let Some(v) = read_user_u64(p + 8 * cookie.deref_word() as u64) {
                rec.deref_val = v;
                rec.flags |= F_DEREF;
            }
        }
    }

    // A `std::string const&` argument (NIXL's agent names): its length and characters hashed
    // (bytes past the length masked off), its first 8 bytes kept.
    if cookie.flags() & C_STR != 0 && rec.flags & F_DEREF != 0 {
        if let Some(p) = arg_at(&rec.args, cookie.deref_slot()) {
            if let Some(len) = read_user_u64(p + 8) {
                hash_str(&mut rec, len);
            }
        }
    }

    // Rank and rank count through the communicator handle, at offsets decoded per library.
    // The handle is an argument, or for Gloo the word just read through the options object.
    let comm = if cookie.flags() & C_COMM_DEREF != 0 {
        if rec.flags & F_DEREF != 0 {
            Some(rec.deref_val)
        } else {
            None
        }
    } else {
        arg_at(&rec.args, cookie.comm_slot())
    };
    if let Some(comm) = comm {
        if comm != 0 {
            if let Some(cfg) = LIB_CFG.get(cookie.lib_slot() as u32) {
                if cfg.comm_offsets_valid == 1 {
                    if let (Some(r), Some(n)) = (
                        read_user_i32(comm + cfg.rank_off as u64),
                        read_user_i32(comm + cfg.nranks_off as u64),
                    ) {
                        rec.rank = r;
                        rec.nranks = n;
                        rec.flags |= F_RANK;
                    }
                }
            }
        }
    }

    // ncclUniqueId passed by value: 128 bytes at sp+8.
    if cookie.flags() & C_UID != 0 {
        let mut h = UID_HASH_INIT;
        let mut ok = true;
        let mut w = 0;
        while w < UID_BYTES / 8 {
            // SAFETY: validated user read.
            match unsafe { bpf_probe_read_user((sp + 8 + 8 * w as u64) as *const u64) } {
                Ok(v) => h = uid_hash_step(h, v),
                Err(_) => ok = false,
            }
            w += 1;
        }
        if ok {
            rec.uid_hash = h;
            rec.flags |= F_UID;
        } else {
            count(counters::USER_READ_FAILED);
        }
    }

    // The caller's user stack (frame-pointer walk by the kernel), deduplicated in STACKS.
    if cookie.flags() & C_USTACK != 0 {
        match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
            Ok(id) => {
                rec.stack_id = id as u32;
                rec.flags |= F_USTACK;
                // SAFETY: validated user read of the return address the call pushed.
                if let Ok(ra) = unsafe { bpf_probe_read_user(sp as *const u64) } {
                    rec.caller = ra;
                }
            }
            Err(_) => count(counters::STACK_LOST),
        }
    }

    // SAFETY: ktime is always readable.
    rec.entry_ns = unsafe { bpf_ktime_get_ns() };
    if cookie.flags() & C_ENTRY_ONLY != 0 {
        send(&rec);
        return 0;
    }
    let key = key_of(pid_tgid, rec.func);
    if INFLIGHT.insert(&key, &rec, 0).is_err() {
        count(counters::INFLIGHT_FULL);
    }
    0
}

/// Return half of the pair.
#[inline(always)]
pub fn on_return<C: EbpfContext>(ctx: &C) -> u32 {
    // SAFETY: ktime is always readable.
    let now = unsafe { bpf_ktime_get_ns() };
    let regs = ctx.as_ptr() as *const pt_regs;
    // SAFETY: the helper only reads the attachment's cookie.
    let cookie = Cookie(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) });
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = key_of(pid_tgid, cookie.func());
    if cookie.flags() & C_AGG != 0 {
        agg_return(regs, now, (pid_tgid >> 32) as u32, cookie.func(), &key);
        return 0;
    }

    let Some(parked) = INFLIGHT.get_ptr(&key) else {
        count(counters::RETURN_WITHOUT_ENTRY);
        return 0;
    };
    // A status poll that found the work still in progress: nothing to send.
    // SAFETY: pt_regs context read.
    if cookie.flags() & C_SKIP_RET1 != 0 && unsafe { (*regs).rax } as u32 == 1 {
        let _ = INFLIGHT.remove(&key);
        return 0;
    }
    match EVENTS.reserve::<CallRecord>(0) {
        Some(mut entry) => {
            // SAFETY: `parked` points at a live map value; the copy is a fixed-size struct.
            let mut rec = unsafe { *parked };
            rec.exit_ns = now;
            // SAFETY: pt_regs context read.
            rec.ret = unsafe { (*regs).rax };
            rec.flags |= F_RETURNED;
            rec.cpu = unsafe { bpf_get_smp_processor_id() };
            if cookie.out_slot() != NO_SLOT {
                if let Some(p) = arg_at(&rec.args, cookie.out_slot()) {
                    if p != 0 {
                        if let Some(v) = read_user_u64(p) {
                            rec.out_val = v;
                            rec.flags |= F_OUT;
                        }
                    }
                }
            }
            entry.write(rec);
            entry.submit(wakeup_flags(core::mem::size_of::<CallRecord>() as u64));
        }
        None => count(counters::RING_FULL),
    }
    let _ = INFLIGHT.remove(&key);
    0
}

/// Defines one family's uprobe/uretprobe program pair over the generic call path. Separate
/// programs per family let userspace attach, detach or duty-cycle a family on its own.
macro_rules! call_probe_pair {
    ($entry:ident, $ret:ident) => {
        #[aya_ebpf::macros::uprobe]
        pub fn $entry(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
            $crate::calls::on_entry(&ctx)
        }

        #[aya_ebpf::macros::uretprobe]
        pub fn $ret(ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
            $crate::calls::on_return(&ctx)
        }
    };
}
pub(crate) use call_probe_pair;
