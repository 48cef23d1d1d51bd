//! Facts about an NCCL build read from its own machine code: where a communicator struct
//! keeps its rank and rank count, and the library version.
//!
//! `ncclCommUserRank(comm, int* rank)` and `ncclCommCount(comm, int* count)` end with
//! `*rank = comm->rank;` / `*count = comm->nRanks;`: a 32-bit load from the communicator at a
//! fixed displacement, then a store of that register through the out pointer. Decoding that
//! pair gives the field offsets of this exact build, so the probes can read the rank of any
//! communicator, including ones created before llmdd attached.

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};

/// How far after the load the store may come (NCCL 2.x has one instruction in between).
const STORE_WINDOW: usize = 6;
/// Largest plausible communicator field offset (the struct is ~1.2 MB in 2.2x).
const MAX_FIELD_OFFSET: u64 = 64 << 20;

/// Rank and rank-count field offsets inside an NCCL communicator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommOffsets {
    /// Offset of `comm->rank` (from `ncclCommUserRank`).
    pub rank_off: u32,
    /// Offset of `comm->nRanks` (from `ncclCommCount`).
    pub nranks_off: u32,
}

/// Why a communicator field offset could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{function}: no `mov r32, [comm+disp]` followed by `mov [out], r32` in its {bytes} bytes of code (unknown compiler output; rank and rank count will not be read)")]
    PatternNotFound { function: String, bytes: usize },
    #[error("{function}: decoded field offset {offset:#x} is implausible")]
    Implausible { function: String, offset: u64 },
    #[error("{function} is not exported by this object")]
    MissingFunction { function: String },
    #[error("decoding {machine} machine code is not supported (x86-64 only)")]
    UnsupportedMachine { machine: u16 },
}

/// A candidate `mov r32, dword [base + disp]`.
struct Load {
    reg: Register,
    base: Register,
    disp: u64,
    /// Instructions seen since the load.
    age: usize,
    /// The base register was overwritten since the load (so a store through the same
    /// register number goes elsewhere).
    base_rewritten: bool,
}

/// Whether `instr` writes (any part of) a register of the same full register as `reg`.
fn writes(info: &mut InstructionInfoFactory, instr: &Instruction, reg: Register) -> bool {
    info.info(instr).used_registers().iter().any(|u| {
        same_gpr(u.register(), reg)
            && matches!(
                u.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
    })
}

fn same_gpr(a: Register, b: Register) -> bool {
    a != Register::None && a.full_register() == b.full_register()
}

/// Finds the displacement of the first `mov r32, dword [base + disp]` whose register is
/// stored, a few instructions later and unchanged, by `mov dword [other], r32` with no
/// displacement through a different base register. `code` is the function's machine code
/// and `ip` its address (only used to follow the decoder). Stack slots (`rsp`, and `rbp`
/// when the function sets up a frame pointer) are not communicator fields.
pub fn decode_field_offset(function: &str, code: &[u8], ip: u64) -> Result<u32, DecodeError> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut info = InstructionInfoFactory::new();
    let mut frame_pointer = false;
    let mut pending: Vec<Load> = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            // Padding or data between functions: candidates cannot span it.
            pending.clear();
            continue;
        }
        if instr.mnemonic() == Mnemonic::Mov
            && instr.op0_kind() == OpKind::Register
            && instr.op1_kind() == OpKind::Register
            && instr.op0_register() == Register::RBP
            && instr.op1_register() == Register::RSP
        {
            frame_pointer = true;
        }

        // The store completing a pending load?
        if instr.mnemonic() == Mnemonic::Mov
            && instr.op0_kind() == OpKind::Memory
            && instr.op1_kind() == OpKind::Register
            && instr.memory_index() == Register::None
            && instr.memory_displacement64() == 0
            && instr.memory_base().is_gpr64()
        {
            let store_base = instr.memory_base();
            let src = instr.op1_register();
            if let Some(l) = pending
                .iter()
                .find(|l| l.reg == src && (store_base != l.base || l.base_rewritten))
            {
                if l.disp > MAX_FIELD_OFFSET {
                    return Err(DecodeError::Implausible {
                        function: function.to_string(),
                        offset: l.disp,
                    });
                }
                return u32::try_from(l.disp).map_err(|_| DecodeError::Implausible {
                    function: function.to_string(),
                    offset: l.disp,
                });
            }
        }

        // Age and invalidate pending loads: control flow ends them, so does a write to
        // their register; a write to their base register is remembered.
        let branches = instr.flow_control() != FlowControl::Next;
        pending.retain_mut(|l| {
            l.age += 1;
            if branches || l.age > STORE_WINDOW || writes(&mut info, &instr, l.reg) {
                return false;
            }
            if writes(&mut info, &instr, l.base) {
                l.base_rewritten = true;
            }
            true
        });

        // A new candidate load?
        if instr.mnemonic() == Mnemonic::Mov
            && instr.op0_kind() == OpKind::Register
            && instr.op0_register().is_gpr32()
            && instr.op1_kind() == OpKind::Memory
            && instr.memory_index() == Register::None
            && instr.memory_base().is_gpr64()
            && instr.memory_base() != Register::RSP
            && !(frame_pointer && instr.memory_base() == Register::RBP)
            && instr.memory_segment() == Register::DS
        {
            let reg = instr.op0_register();
            let base = instr.memory_base();
            pending.retain(|l| !same_gpr(l.reg, reg));
            pending.push(Load {
                reg,
                base,
                disp: instr.memory_displacement64(),
                age: 0,
                // `mov eax, [rax+d]` replaces its own base.
                base_rewritten: same_gpr(reg, base),
            });
        }
    }
    Err(DecodeError::PatternNotFound {
        function: function.to_string(),
        bytes: code.len(),
    })
}

/// The `NCCL_VERSION_CODE` stored by `ncclGetVersion(int* version)`: the first
/// `mov dword [reg], imm32` of the function (scanning past early error returns).
pub fn decode_version_code(code: &[u8], ip: u64) -> Option<u32> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            return None;
        }
        if instr.mnemonic() == Mnemonic::Mov
            && instr.op0_kind() == OpKind::Memory
            && instr.memory_base().is_gpr64()
            && instr.memory_displacement64() == 0
            && instr.memory_index() == Register::None
            && instr.op1_kind() == OpKind::Immediate32
        {
            return Some(instr.immediate32());
        }
    }
    None
}

/// `major.minor.patch` of an `NCCL_VERSION_CODE` (X*10000+Y*100+Z since 2.9; X*1000+Y*100+Z
/// before).
pub fn version_string(code: u32) -> Option<String> {
    let (major, minor, patch) = if code >= 10_000 {
        (code / 10_000, code % 10_000 / 100, code % 100)
    } else if code >= 1_000 {
        (code / 1_000, code % 1_000 / 100, code % 100)
    } else {
        return None;
    };
    (1..=9)
        .contains(&major)
        .then(|| format!("{major}.{minor}.{patch}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pncclCommUserRank of NCCL 2.32.3 (PyPI wheel), the tail that stores the rank:
    /// `mov eax, [r13+0x1206e8]; xor ebx, ebx; mov [r14], eax; jmp ...`.
    const NCCL_2_32_TAIL: &[u8] = &[
        0x41, 0x8b, 0x85, 0xe8, 0x06, 0x12, 0x00, // mov eax, dword [r13+0x1206e8]
        0x31, 0xdb, // xor ebx, ebx
        0x41, 0x89, 0x06, // mov dword [r14], eax
        0xe9, 0xb2, 0xfd, 0xff, 0xff, // jmp
    ];

    #[test]
    fn decodes_the_nccl_2_32_pattern() {
        assert_eq!(
            decode_field_offset("pncclCommUserRank", NCCL_2_32_TAIL, 0xe1272),
            Ok(0x1206e8)
        );
    }

    #[test]
    fn decodes_after_a_prologue_and_unrelated_loads() {
        let code = [
            0x55, // push rbp
            0x48, 0x89, 0xe5, // mov rbp, rsp
            0x8b, 0x45, 0xfc, // mov eax, [rbp-4]     (stack slot: ignored)
            0x89, 0x06, // mov [rsi], eax
            0x8b, 0x08, // mov ecx, [rax]         (not stored)
            0x85, 0xc9, // test ecx, ecx
            0x8b, 0x87, 0xec, 0x06, 0x12, 0x00, // mov eax, [rdi+0x1206ec]
            0x89, 0x06, // mov [rsi], eax
            0x5d, // pop rbp
            0xc3, // ret
        ];
        assert_eq!(
            decode_field_offset("ncclCommCount", &code, 0x1000),
            Ok(0x1206ec)
        );
    }

    #[test]
    fn unoptimised_code_reloading_the_same_register_matches() {
        // gcc -O0: mov rax,[rbp-8]; mov edx,[rax+0x40]; mov rax,[rbp-16]; mov [rax],edx
        let code = [
            0x55, 0x48, 0x89, 0xe5, // push rbp; mov rbp, rsp
            0x48, 0x8b, 0x45, 0xf8, // mov rax, [rbp-8]
            0x8b, 0x50, 0x40, // mov edx, [rax+0x40]
            0x48, 0x8b, 0x45, 0xf0, // mov rax, [rbp-16]
            0x89, 0x10, // mov [rax], edx
            0x5d, 0xc3,
        ];
        assert_eq!(decode_field_offset("f", &code, 0), Ok(0x40));
    }

    #[test]
    fn rejects_code_without_the_pattern() {
        let code = [
            0x8b, 0x87, 0xe8, 0x06, 0x12, 0x00, // mov eax, [rdi+0x1206e8]
            0x31, 0xc0, // xor eax, eax            (clobbers the loaded value)
            0x89, 0x06, // mov [rsi], eax
            0x8b, 0x47, 0x10, // mov eax, [rdi+0x10]
            0x89, 0x47, 0x04, // mov [rdi+4], eax        (same base, displacement)
            0x8b, 0x4f, 0x20, // mov ecx, [rdi+0x20]
            0xc3, // ret                     (control flow ends the window)
            0x89, 0x0e, // mov [rsi], ecx
        ];
        assert!(matches!(
            decode_field_offset("ncclCommUserRank", &code, 0),
            Err(DecodeError::PatternNotFound { bytes: 22, .. })
        ));
        assert!(decode_field_offset("x", &[], 0).is_err());
        assert!(decode_field_offset("x", &[0xff, 0xff, 0xff], 0).is_err());
    }

    #[test]
    fn rejects_a_store_too_far_from_its_load() {
        let mut code = vec![0x8b, 0x87, 0x10, 0x00, 0x00, 0x00]; // mov eax, [rdi+0x10]
        code.extend(std::iter::repeat_n(0x90, STORE_WINDOW + 1)); // nops
        code.extend([0x89, 0x06]); // mov [rsi], eax
        assert!(decode_field_offset("f", &code, 0).is_err());
    }

    #[test]
    fn decodes_nccl_get_version() {
        // pncclGetVersion of 2.32.3: test rdi,rdi; je; mov dword [rdi], 0x5aa3; xor eax,eax; ret
        let code = [
            0x48, 0x85, 0xff, 0x74, 0x09, 0xc7, 0x07, 0xa3, 0x5a, 0x00, 0x00, 0x31, 0xc0, 0xc3,
            0xb8, 0x04, 0x00, 0x00, 0x00, 0xc3,
        ];
        let v = decode_version_code(&code, 0xe3896);
        assert_eq!(v, Some(23203));
        assert_eq!(version_string(23203).as_deref(), Some("2.32.3"));
        assert_eq!(version_string(2708).as_deref(), Some("2.7.8"));
        assert_eq!(version_string(21805).as_deref(), Some("2.18.5"));
        assert_eq!(version_string(7), None);
        assert_eq!(decode_version_code(&[0xc3], 0), None);
    }
}
