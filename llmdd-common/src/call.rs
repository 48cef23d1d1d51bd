//! Call records produced by the generic uprobe/uretprobe pair, and the attach-cookie layout
//! that tells the generic programs which function fired and what to capture.

/// Number of argument words captured at entry: the six x86-64 integer argument registers
/// (rdi, rsi, rdx, rcx, r8, r9) followed by the first three stack words above the return
/// address (sp+8, sp+16, sp+24), which hold the 7th, 8th and 9th integer arguments.
pub const ARG_WORDS: usize = 9;
/// An argument slot value meaning "none".
pub const NO_SLOT: u8 = 0xf;

/// Record flag: `exit_ns` and `ret` are valid (the return probe fired).
pub const F_RETURNED: u32 = 1 << 0;
/// Record flag: `rank` and `nranks` were read through the communicator handle.
pub const F_RANK: u32 = 1 << 1;
/// Record flag: `out_val` holds the value written through the out-pointer argument.
pub const F_OUT: u32 = 1 << 2;
/// Record flag: `deref_val` holds the word read through the deref argument.
pub const F_DEREF: u32 = 1 << 3;
/// Record flag: `uid_hash` holds the hash of a by-value `ncclUniqueId`.
pub const F_UID: u32 = 1 << 4;
/// Record flag: `stack_id` names the caller's user stack in the `STACKS` map.
pub const F_USTACK: u32 = 1 << 5;
/// Record flag: the deref argument was a `std::string`: `uid_hash` holds the hash of its
/// length and (up to [`STR_WORDS`] words of) characters, `deref_val` its first 8 bytes
/// (zero-padded).
pub const F_STR: u32 = 1 << 6;
/// Words of a `std::string`'s characters hashed (longer strings: their first 64 bytes and
/// their length).
pub const STR_WORDS: usize = 8;

/// One traced call: entry and (when it returned) exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CallRecord {
    /// Always `RecordKind::Call`.
    pub kind: u32,
    /// `funcs::FuncId` of the function.
    pub func: u16,
    /// Library slot (index into the `LIB_CFG` map) of the probed object.
    pub lib_slot: u16,
    /// Process id (tgid) and thread id as the kernel sees them (host namespace).
    pub pid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds at entry and at return (0 when it has not returned).
    pub entry_ns: u64,
    pub exit_ns: u64,
    /// Raw integer arguments, see [`ARG_WORDS`].
    pub args: [u64; ARG_WORDS],
    /// Raw return register.
    pub ret: u64,
    /// Value read through the out-pointer argument on return (new communicator, allocation).
    pub out_val: u64,
    /// Word read at entry through a pointer argument plus an offset (e.g. a launch config's
    /// stream).
    pub deref_val: u64,
    /// Hash of the 128-byte `ncclUniqueId` passed by value (see [`uid_hash_step`]).
    pub uid_hash: u64,
    /// Rank and rank count read through the communicator handle (see `LibCfg`).
    pub rank: i32,
    pub nranks: i32,
    /// `F_*` flags.
    pub flags: u32,
    /// CPU the record was submitted from (for ordering diagnostics).
    pub cpu: u32,
    /// Id of the user stack at entry in the `STACKS` map (valid with `F_USTACK`).
    pub stack_id: u32,
    pub _pad: u32,
    /// The return address at the top of the stack at entry (valid with `F_USTACK`): the
    /// immediate caller, which a frame-pointer walk from a function's first instruction
    /// skips (the callee has not pushed its frame yet).
    pub caller: u64,
}

const _: () = assert!(core::mem::size_of::<CallRecord>() == 168);

/// Per-library configuration, indexed by library slot: where a communicator struct of this
/// exact NCCL build keeps its rank and rank count (decoded from `ncclCommUserRank` and
/// `ncclCommCount` at attach time).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LibCfg {
    /// 1 when the offsets below are valid.
    pub comm_offsets_valid: u32,
    pub rank_off: u32,
    pub nranks_off: u32,
    pub _reserved: u32,
}

const _: () = assert!(core::mem::size_of::<LibCfg>() == 16);

/// Attach-cookie layout. Every uprobe attachment carries a 64-bit cookie that the generic
/// programs read with `bpf_get_attach_cookie`:
///
/// | bits  | field                                                          |
/// |-------|----------------------------------------------------------------|
/// | 0-15  | function id                                                    |
/// | 16-27 | library slot                                                   |
/// | 28-31 | communicator argument slot (`NO_SLOT` = none)                  |
/// | 32-35 | out-pointer argument slot, read on return                      |
/// | 36-39 | deref argument slot, read at entry                             |
/// | 40-47 | deref offset in 8-byte words                                   |
/// | 48-55 | `C_*` capture flags                                            |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie(pub u64);

/// Capture flag: the function takes an `ncclUniqueId` (128 bytes) by value on the stack at
/// sp+8; hash it at entry.
pub const C_UID: u8 = 1 << 0;
/// Capture flag: some argument of interest is passed on the stack (slots 6-8); read the
/// three stack words at entry. Functions whose arguments all fit in registers skip the read.
pub const C_STACK: u8 = 1 << 1;
/// Capture flag: walk the user stack at entry into `STACKS` (`--stacks`; the flame graph
/// folds by it).
pub const C_USTACK: u8 = 1 << 2;
/// Capture flag: the communicator (for the rank and rank-count read) is the word read
/// through the deref argument, not an argument itself (Gloo).
pub const C_COMM_DEREF: u8 = 1 << 3;
/// Capture flag: the deref argument is a `std::string const&` (libstdc++'s layout: the
/// character pointer, then the length): hash it and keep its first 8 bytes (see [`F_STR`]).
pub const C_STR: u8 = 1 << 4;
/// Capture flag: a return of 1 is not sent (NIXL's "in progress" from a status poll: a poll
/// that changed nothing, which a tight polling loop makes by the ten thousand a second).
pub const C_SKIP_RET1: u8 = 1 << 5;
/// Mode flag: entry-only. The entry probe sends the record at once (no duration, return
/// value or out-pointer value); no return probe is attached.
pub const C_ENTRY_ONLY: u8 = 1 << 6;
/// Mode flag: aggregate. Calls are counted into `AGG` (see `agg`), no record is sent.
pub const C_AGG: u8 = 1 << 7;

impl Cookie {
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        func: u16,
        lib_slot: u16,
        comm_slot: u8,
        out_slot: u8,
        deref_slot: u8,
        deref_word: u8,
        flags: u8,
    ) -> Self {
        Cookie(
            (func as u64)
                | (((lib_slot & 0xfff) as u64) << 16)
                | (((comm_slot & 0xf) as u64) << 28)
                | (((out_slot & 0xf) as u64) << 32)
                | (((deref_slot & 0xf) as u64) << 36)
                | ((deref_word as u64) << 40)
                | ((flags as u64) << 48),
        )
    }
    #[inline(always)]
    pub const fn func(self) -> u16 {
        self.0 as u16
    }
    #[inline(always)]
    pub const fn lib_slot(self) -> u16 {
        ((self.0 >> 16) & 0xfff) as u16
    }
    #[inline(always)]
    pub const fn comm_slot(self) -> u8 {
        ((self.0 >> 28) & 0xf) as u8
    }
    #[inline(always)]
    pub const fn out_slot(self) -> u8 {
        ((self.0 >> 32) & 0xf) as u8
    }
    #[inline(always)]
    pub const fn deref_slot(self) -> u8 {
        ((self.0 >> 36) & 0xf) as u8
    }
    #[inline(always)]
    pub const fn deref_word(self) -> u8 {
        (self.0 >> 40) as u8
    }
    #[inline(always)]
    pub const fn flags(self) -> u8 {
        (self.0 >> 48) as u8
    }
    /// The cookie with mode flags (`C_ENTRY_ONLY`, `C_AGG`) added and, for aggregate mode,
    /// the argument slot whose value picks the size bucket.
    pub const fn with_mode(self, mode_flags: u8, size_slot: u8) -> Self {
        Cookie(self.0 | ((mode_flags as u64) << 48) | (((size_slot & 0xf) as u64) << 56))
    }
    #[inline(always)]
    pub const fn size_slot(self) -> u8 {
        ((self.0 >> 56) & 0xf) as u8
    }
}

/// Key of the in-flight map: one entry per (thread, function) between entry and return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InflightKey {
    pub pid_tgid: u64,
    pub func: u32,
    pub _pad: u32,
}

/// Start value of the unique-id hash.
pub const UID_HASH_INIT: u64 = 0xcbf2_9ce4_8422_2325;
/// Size of an `ncclUniqueId` in bytes.
pub const UID_BYTES: usize = 128;

/// One step of the unique-id hash, over one little-endian 8-byte word of the id. The BPF side
/// and userspace (and tests) use this same function, so a communicator's hash is the same
/// wherever it is computed.
#[inline(always)]
pub const fn uid_hash_step(h: u64, word: u64) -> u64 {
    (h ^ word)
        .wrapping_mul(0x0000_0100_0000_01b3)
        .rotate_left(29)
}

/// Hash of a whole unique id (userspace/test convenience).
pub fn uid_hash(id: &[u8; UID_BYTES]) -> u64 {
    let mut h = UID_HASH_INIT;
    let mut i = 0;
    while i < UID_BYTES / 8 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&id[i * 8..i * 8 + 8]);
        h = uid_hash_step(h, u64::from_le_bytes(w));
        i += 1;
    }
    h
}
