//! Where a Gloo build keeps a context's rank and size, read from its own machine code.
//!
//! `gloo::Context::Context(int rank, int size, int base)` stores its `rank` and `size`
//! arguments into the object it builds. Following those two argument registers (`esi`,
//! `edx` in the System V ABI; `rdi` is `this`) through register copies and vector packing
//! to their stores through `this` gives the field offsets of this exact build, whatever the
//! compiler made of the class: PyTorch 2.5.1 keeps a vtable pointer first (`mov
//! [rdi+8], eax` after `mov eax, esi`; `mov [rdi+0xc], edx`), 2.15 has none and packs both
//! into one 8-byte store (`movd xmm0, esi; movd xmm1, edx; punpckldq xmm0, xmm1; movq
//! [rdi], xmm0`). A constructor the walk cannot follow gives an error, never a guess.

use std::collections::HashMap;

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};

use super::nccl_offsets::CommOffsets;

/// Instructions followed before giving up (the stores come in a constructor's first block).
const MAX_INSTRUCTIONS: usize = 256;
/// Largest plausible field offset in a `gloo::Context` (a few hundred bytes in practice).
const MAX_FIELD_OFFSET: u64 = 4096;

/// What a register holds, as far as the walk knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    /// The object under construction (`this`).
    This,
    /// The `rank` argument (32 bits).
    Rank,
    /// The `size` argument (32 bits).
    Size,
    /// A vector register's 32-bit lanes, where known.
    Lanes([Option<Arg>; 4]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arg {
    Rank,
    Size,
}

impl Val {
    fn arg(self) -> Option<Arg> {
        match self {
            Val::Rank => Some(Arg::Rank),
            Val::Size => Some(Arg::Size),
            _ => None,
        }
    }
    fn lanes(self) -> [Option<Arg>; 4] {
        match self {
            Val::Lanes(l) => l,
            v => [v.arg(), None, None, None],
        }
    }
}

/// The walk's state: register values and the stores found so far.
#[derive(Default)]
struct Walk {
    regs: HashMap<Register, Val>,
    rank_off: Option<u64>,
    size_off: Option<u64>,
}

fn key(r: Register) -> Register {
    r.full_register()
}

impl Walk {
    fn get(&self, r: Register) -> Option<Val> {
        self.regs.get(&key(r)).copied()
    }
    fn set(&mut self, r: Register, v: Option<Val>) {
        match v {
            Some(v) => self.regs.insert(key(r), v),
            None => self.regs.remove(&key(r)),
        };
    }
    /// A store of `lanes` to `[this + disp]`.
    fn store(&mut self, disp: u64, lanes: &[Option<Arg>]) {
        for (i, a) in lanes.iter().enumerate() {
            let off = disp + 4 * i as u64;
            match a {
                Some(Arg::Rank) if self.rank_off.is_none() => self.rank_off = Some(off),
                Some(Arg::Size) if self.size_off.is_none() => self.size_off = Some(off),
                _ => {}
            }
        }
    }
    /// The displacement of a memory operand based on `this` alone.
    fn this_disp(&self, i: &Instruction) -> Option<u64> {
        (i.memory_index() == Register::None
            && i.memory_base().is_gpr64()
            && self.get(i.memory_base()) == Some(Val::This))
        .then(|| i.memory_displacement64())
    }
    /// A call: the caller-saved registers hold nothing known afterwards.
    fn clobber_caller_saved(&mut self) {
        const CALLEE_SAVED: [Register; 6] = [
            Register::RBX,
            Register::RBP,
            Register::R12,
            Register::R13,
            Register::R14,
            Register::R15,
        ];
        self.regs.retain(|r, _| CALLEE_SAVED.contains(r));
    }
}

/// Applies the instructions the walk understands; `false` for any other.
fn step(w: &mut Walk, i: &Instruction) -> bool {
    let reg = |n: u32| (i.op_kind(n) == OpKind::Register).then(|| i.op_register(n));
    match i.mnemonic() {
        Mnemonic::Mov => match (reg(0), reg(1)) {
            (Some(d), Some(s)) if d.is_gpr64() => w.set(d, w.get(s).filter(|v| *v == Val::This)),
            (Some(d), Some(s)) if d.is_gpr32() => w.set(d, w.get(s).filter(|v| v.arg().is_some())),
            (None, Some(s)) if i.op0_kind() == OpKind::Memory && s.is_gpr32() => {
                if let (Some(d), Some(a)) = (w.this_disp(i), w.get(s).and_then(Val::arg)) {
                    w.store(d, &[Some(a)]);
                }
            }
            _ => return false,
        },
        Mnemonic::Movd | Mnemonic::Vmovd => match (reg(0), reg(1)) {
            (Some(d), Some(s)) if d.is_xmm() && s.is_gpr32() => {
                let a = w.get(s).and_then(Val::arg);
                w.set(d, Some(Val::Lanes([a, None, None, None])));
            }
            (None, Some(s)) if i.op0_kind() == OpKind::Memory && s.is_xmm() => {
                if let (Some(d), Some(v)) = (w.this_disp(i), w.get(s)) {
                    w.store(d, &v.lanes()[..1]);
                }
            }
            _ => return false,
        },
        Mnemonic::Movq | Mnemonic::Vmovq => match (reg(0), reg(1)) {
            (None, Some(s)) if i.op0_kind() == OpKind::Memory && s.is_xmm() => {
                if let (Some(d), Some(v)) = (w.this_disp(i), w.get(s)) {
                    w.store(d, &v.lanes()[..2]);
                }
            }
            (Some(d), Some(s)) if d.is_xmm() && s.is_xmm() => {
                let l = w.get(s).map(Val::lanes).unwrap_or_default();
                w.set(d, Some(Val::Lanes([l[0], l[1], None, None])));
            }
            _ => return false,
        },
        // dst = [a0, b0, a1, b1]
        Mnemonic::Punpckldq | Mnemonic::Vpunpckldq => {
            let n = i.op_count();
            let (Some(d), Some(a), Some(b)) = (reg(0), reg(n - 2), reg(n - 1)) else {
                return false;
            };
            let (a, b) = (
                w.get(a).map(Val::lanes).unwrap_or_default(),
                w.get(b).map(Val::lanes).unwrap_or_default(),
            );
            w.set(d, Some(Val::Lanes([a[0], b[0], a[1], b[1]])));
        }
        Mnemonic::Pinsrd | Mnemonic::Vpinsrd => {
            let n = i.op_count();
            let (Some(d), Some(a), Some(s)) = (reg(0), reg(n - 3), reg(n - 2)) else {
                return false;
            };
            let mut l = w.get(a).map(Val::lanes).unwrap_or_default();
            l[(i.immediate(n - 1) & 3) as usize] = w.get(s).and_then(Val::arg);
            w.set(d, Some(Val::Lanes(l)));
        }
        Mnemonic::Movups
        | Mnemonic::Movaps
        | Mnemonic::Movdqu
        | Mnemonic::Movdqa
        | Mnemonic::Vmovups
        | Mnemonic::Vmovaps
        | Mnemonic::Vmovdqu
        | Mnemonic::Vmovdqa => match (reg(0), reg(1)) {
            (None, Some(s)) if i.op0_kind() == OpKind::Memory && s.is_xmm() => {
                if let (Some(d), Some(v)) = (w.this_disp(i), w.get(s)) {
                    w.store(d, &v.lanes());
                }
            }
            (Some(d), Some(s)) if d.is_xmm() && s.is_xmm() => w.set(d, w.get(s)),
            _ => return false,
        },
        _ => return false,
    }
    true
}

/// Forgets every register `i` writes.
fn forget_written(w: &mut Walk, info: &mut InstructionInfoFactory, i: &Instruction) {
    for u in info.info(i).used_registers() {
        if matches!(
            u.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        ) {
            w.set(u.register(), None);
        }
    }
}

/// Decodes where `gloo::Context::Context(int rank, int size, int base)` stores `rank` and
/// `size`, from its machine code `code` at address `ip`.
pub fn decode_context(function: &str, code: &[u8], ip: u64) -> Result<CommOffsets, String> {
    let mut w = Walk::default();
    w.set(Register::RDI, Some(Val::This));
    w.set(Register::ESI, Some(Val::Rank));
    w.set(Register::EDX, Some(Val::Size));
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut i = Instruction::default();
    for _ in 0..MAX_INSTRUCTIONS {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut i);
        if i.is_invalid() {
            break;
        }
        if !step(&mut w, &i) {
            forget_written(&mut w, &mut info, &i);
        }
        if let (Some(rank_off), Some(nranks_off)) = (w.rank_off, w.size_off) {
            return checked(function, rank_off, nranks_off);
        }
        match i.flow_control() {
            FlowControl::Return | FlowControl::UnconditionalBranch => break,
            FlowControl::Call | FlowControl::IndirectCall => w.clobber_caller_saved(),
            _ => {}
        }
    }
    Err(format!(
        "{function}: its code does not store both its rank and size arguments through `this` \
         where llmdd can follow them (found rank at {}, size at {})",
        w.rank_off.map_or("none".into(), |o| format!("{o:#x}")),
        w.size_off.map_or("none".into(), |o| format!("{o:#x}")),
    ))
}

fn checked(function: &str, rank_off: u64, nranks_off: u64) -> Result<CommOffsets, String> {
    let fits = |o: u64| o < MAX_FIELD_OFFSET && o.is_multiple_of(4);
    if !fits(rank_off) || !fits(nranks_off) {
        return Err(format!(
            "{function}: decoded offsets rank {rank_off:#x}, size {nranks_off:#x} are implausible"
        ));
    }
    Ok(CommOffsets {
        rank_off: rank_off as u32,
        nranks_off: nranks_off as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch 2.5.1's libtorch_cpu (PyPI wheel), the constructor's first block: a vtable
    /// pointer first, rank at 8 through eax, size at 0xc, a spill of esi to the stack and
    /// rsi overwritten by the vtable's address before the stores finish.
    const TORCH_2_5_1: &[u8] = &[
        0x41, 0x56, // push r14
        0x89, 0xf0, // mov eax, esi
        0x66, 0x0f, 0xef, 0xc0, // pxor xmm0, xmm0
        0x41, 0x55, 0x41, 0x54, 0x55, 0x53, // push r13; push r12; push rbp; push rbx
        0x48, 0x89, 0xfb, // mov rbx, rdi
        0x48, 0x83, 0xec, 0x30, // sub rsp, 0x30
        0x89, 0x47, 0x08, // mov [rdi+8], eax
        0x89, 0x74, 0x24, 0x0c, // mov [rsp+0xc], esi
        0x48, 0x8b, 0x35, 0x3d, 0xe5, 0xbc, 0x0b, // mov rsi, [rip+...]
        0x89, 0x54, 0x24, 0x08, // mov [rsp+8], edx
        0x48, 0x83, 0xc6, 0x10, // add rsi, 0x10
        0x89, 0x57, 0x0c, // mov [rdi+0xc], edx
        0x48, 0x89, 0x37, // mov [rdi], rsi
        0xc3,
    ];

    /// PyTorch 2.15.0's: no vtable, rank and size packed into one 8-byte store at 0.
    const TORCH_2_15_0: &[u8] = &[
        0x41, 0x56, // push r14
        0x66, 0x0f, 0x6e, 0xc6, // movd xmm0, esi
        0x66, 0x0f, 0x6e, 0xca, // movd xmm1, edx
        0x41, 0x55, // push r13
        0x66, 0x0f, 0x62, 0xc1, // punpckldq xmm0, xmm1
        0x41, 0x54, 0x55, 0x53, // push r12; push rbp; push rbx
        0x48, 0x89, 0xfb, // mov rbx, rdi
        0x48, 0x83, 0xec, 0x60, // sub rsp, 0x60
        0x66, 0x0f, 0xd6, 0x07, // movq [rdi], xmm0
        0xc3,
    ];

    #[test]
    fn decodes_pytorch_2_5_1() {
        assert_eq!(
            decode_context("ctor", TORCH_2_5_1, 0x82f0900),
            Ok(CommOffsets {
                rank_off: 8,
                nranks_off: 12
            })
        );
    }

    #[test]
    fn decodes_pytorch_2_15_0() {
        assert_eq!(
            decode_context("ctor", TORCH_2_15_0, 0x90b3ea0),
            Ok(CommOffsets {
                rank_off: 0,
                nranks_off: 4
            })
        );
    }

    #[test]
    fn stores_after_the_argument_register_is_overwritten_are_not_taken() {
        let code = [
            0x31, 0xf6, // xor esi, esi
            0x89, 0x77, 0x08, // mov [rdi+8], esi   (no longer the rank)
            0x89, 0x57, 0x0c, // mov [rdi+0xc], edx
            0xc3,
        ];
        let e = decode_context("ctor", &code, 0).expect_err("not followed");
        assert!(e.contains("rank at none, size at 0xc"), "{e}");
    }

    #[test]
    fn a_call_ends_what_caller_saved_registers_held() {
        let code = [
            0x89, 0xf3, // mov ebx, esi        (callee-saved: survives)
            0xe8, 0x00, 0x00, 0x00, 0x00, // call
            0x89, 0x57, 0x0c, // mov [rdi+0xc], edx (rdi, edx clobbered)
            0xc3,
        ];
        assert!(decode_context("ctor", &code, 0).is_err());
    }

    #[test]
    fn stores_through_another_pointer_are_not_fields() {
        let code = [
            0x89, 0x74, 0x24, 0x0c, // mov [rsp+0xc], esi
            0x89, 0x56, 0x04, // mov [rsi+4], edx
            0xc3,
        ];
        assert!(decode_context("ctor", &code, 0).is_err());
    }
}
