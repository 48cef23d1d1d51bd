//! Offsets of the address and port fields of `struct sock` (its leading
//! `struct sock_common`), from the kernel's BTF.

use llmdd_common::sock::SockCfg;

use super::{
    btf::{Btf, Kind},
    KernelError,
};

/// The `sock_common` fields the socket probes read, with their expected sizes in bytes.
const FIELDS: [(&str, u64); 7] = [
    ("skc_daddr", 4),
    ("skc_rcv_saddr", 4),
    ("skc_dport", 2),
    ("skc_num", 2),
    ("skc_family", 2),
    ("skc_v6_daddr", 16),
    ("skc_v6_rcv_saddr", 16),
];

/// Byte offset and size of `field` in struct `ty` (looking through anonymous members).
fn field(
    btf: &Btf,
    ty: u32,
    ty_name: &'static str,
    field: &'static str,
) -> Result<(u32, u64), KernelError> {
    let (member, bits) = btf
        .member(ty, field)
        .ok_or(KernelError::MissingField { ty: ty_name, field })?;
    if member.bitfield_size != 0 || bits % 8 != 0 {
        return Err(KernelError::Layout(format!(
            "{ty_name}.{field} is a bitfield (bit offset {bits})"
        )));
    }
    let size = btf.size_of(member.type_id).ok_or_else(|| {
        KernelError::Layout(format!("{ty_name}.{field} has a type of unknown size"))
    })?;
    Ok((bits / 8, size))
}

/// Derives the socket field offsets from a parsed BTF.
pub fn offsets_from(btf: &Btf) -> Result<SockCfg, KernelError> {
    let common = btf
        .find(Kind::Struct, "sock_common")
        .ok_or(KernelError::MissingType("sock_common"))?;
    let sock = btf
        .find(Kind::Struct, "sock")
        .ok_or(KernelError::MissingType("sock"))?;

    // struct sock { struct sock_common __sk_common; ... }: offsets in sock_common are
    // offsets in sock only if it sits at the start.
    let (head, head_bits) = btf
        .member(sock, "__sk_common")
        .ok_or(KernelError::MissingField {
            ty: "sock",
            field: "__sk_common",
        })?;
    if head_bits != 0 || btf.resolve(head.type_id) != Some(common) {
        return Err(KernelError::Layout(format!(
            "struct sock does not start with struct sock_common (__sk_common at bit {head_bits})"
        )));
    }

    let mut off = [0u32; FIELDS.len()];
    for (slot, (name, want)) in off.iter_mut().zip(FIELDS) {
        let (o, size) = field(btf, common, "sock_common", name)?;
        if size != want {
            return Err(KernelError::Layout(format!(
                "sock_common.{name} is {size} bytes, expected {want}"
            )));
        }
        *slot = o;
    }
    let [daddr_off, rcv_saddr_off, dport_off, num_off, family_off, v6_daddr_off, v6_rcv_saddr_off] =
        off;
    Ok(SockCfg {
        valid: 1,
        daddr_off,
        rcv_saddr_off,
        dport_off,
        num_off,
        family_off,
        v6_daddr_off,
        v6_rcv_saddr_off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{btf::build::Builder, sock_offsets, VMLINUX_BTF};

    /// The x86-64 layout of the start of `struct sock_common`, built by hand.
    fn synthetic(sock_starts_with_common: bool) -> Vec<u8> {
        let mut b = Builder::new();
        let u32_t = b.int("unsigned int", 4);
        let u16_t = b.int("short unsigned int", 2);
        let u64_t = b.int("long long unsigned int", 8);
        let u8_t = b.int("unsigned char", 1);
        let be32 = b.typedef("__be32", u32_t);
        let be16 = b.typedef("__be16", u16_t);
        let addrs = b.record(
            "",
            false,
            8,
            &[("skc_daddr", be32, 0), ("skc_rcv_saddr", be32, 4)],
        );
        let addr_u = b.record("", true, 8, &[("skc_addrpair", u64_t, 0), ("", addrs, 0)]);
        let ports = b.record(
            "",
            false,
            4,
            &[("skc_dport", be16, 0), ("skc_num", u16_t, 2)],
        );
        let port_u = b.record("", true, 4, &[("skc_portpair", u32_t, 0), ("", ports, 0)]);
        let bytes16 = b.array(u8_t, u32_t, 16);
        let in6 = b.record("in6_addr", false, 16, &[("s6_addr", bytes16, 0)]);
        let common = b.record(
            "sock_common",
            false,
            136,
            &[
                ("", addr_u, 0),
                ("skc_hash", u32_t, 8),
                ("", port_u, 12),
                ("skc_family", u16_t, 16),
                ("skc_v6_daddr", in6, 56),
                ("skc_v6_rcv_saddr", in6, 72),
            ],
        );
        let first = if sock_starts_with_common { 0 } else { 8 };
        b.record("sock", false, 760, &[("__sk_common", common, first)]);
        b.finish()
    }

    #[test]
    fn derives_offsets_from_synthetic_btf() {
        let btf = Btf::parse(&synthetic(true)).expect("parses");
        let cfg = offsets_from(&btf).expect("offsets");
        assert_eq!(
            cfg,
            SockCfg {
                valid: 1,
                daddr_off: 0,
                rcv_saddr_off: 4,
                dport_off: 12,
                num_off: 14,
                family_off: 16,
                v6_daddr_off: 56,
                v6_rcv_saddr_off: 72,
            }
        );
    }

    #[test]
    fn refuses_a_sock_not_starting_with_sock_common() {
        let btf = Btf::parse(&synthetic(false)).expect("parses");
        assert!(matches!(offsets_from(&btf), Err(KernelError::Layout(_))));
    }

    #[test]
    fn derives_offsets_from_this_kernel() {
        assert!(
            std::path::Path::new(VMLINUX_BTF).exists(),
            "{VMLINUX_BTF} is missing: this test needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        );
        let cfg = sock_offsets().expect("this kernel's BTF describes struct sock");
        assert_eq!(cfg.valid, 1);
        // Pairs that sit together inside one anonymous struct.
        assert_eq!(cfg.rcv_saddr_off, cfg.daddr_off + 4);
        assert_eq!(cfg.num_off, cfg.dport_off + 2);
        assert_eq!(cfg.v6_rcv_saddr_off, cfg.v6_daddr_off + 16);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                (
                    cfg.daddr_off,
                    cfg.rcv_saddr_off,
                    cfg.dport_off,
                    cfg.num_off,
                    cfg.family_off
                ),
                (0, 4, 12, 14, 16)
            );
        }
    }
}
