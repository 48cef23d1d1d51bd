//! A small reader for BTF (the kernel's BPF Type Format, `Documentation/bpf/btf.rst`): just
//! enough to find a struct by name and the byte offset and size of a field, looking through
//! anonymous unions and structs.
//!
//! Layout of a BTF blob: a header (magic `0xeB9F`, version, flags, header length, then the
//! offset and length of the type section and of the string section, both relative to the end
//! of the header). The type section is a sequence of `btf_type` records (name offset, info
//! word with kind, vlen and kind flag, size-or-type word), each followed by kind-specific
//! data. Type ids are implicit: the first record is id 1 (id 0 is `void`).

use std::fmt;

/// `BTF_MAGIC`.
const MAGIC: u16 = 0xeb9f;
/// Length of the fixed header fields this reader knows (`struct btf_header`).
const HEADER_LEN: usize = 24;
/// Depth limit when descending through anonymous members or type modifiers.
const MAX_DEPTH: usize = 32;

/// BTF kinds (`BTF_KIND_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_raw(raw: u32) -> Option<Kind> {
        Some(match raw {
            0 => Kind::Void,
            1 => Kind::Int,
            2 => Kind::Ptr,
            3 => Kind::Array,
            4 => Kind::Struct,
            5 => Kind::Union,
            6 => Kind::Enum,
            7 => Kind::Fwd,
            8 => Kind::Typedef,
            9 => Kind::Volatile,
            10 => Kind::Const,
            11 => Kind::Restrict,
            12 => Kind::Func,
            13 => Kind::FuncProto,
            14 => Kind::Var,
            15 => Kind::Datasec,
            16 => Kind::Float,
            17 => Kind::DeclTag,
            18 => Kind::TypeTag,
            19 => Kind::Enum64,
            _ => return None,
        })
    }

    /// Whether the size-or-type word is a type id that this kind qualifies or renames.
    fn is_modifier(self) -> bool {
        matches!(
            self,
            Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag
        )
    }
}

/// A struct or union member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub name_off: u32,
    pub type_id: u32,
    /// Offset from the start of the enclosing struct, in bits.
    pub bit_offset: u32,
    /// Bitfield width in bits, 0 for a plain member.
    pub bitfield_size: u32,
}

/// One type record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Type {
    pub kind: Kind,
    pub name_off: u32,
    /// `size` for ints, structs, unions, enums and floats; the referenced type id for
    /// pointers, modifiers, functions and variables.
    pub size_or_type: u32,
    /// Members of structs and unions.
    pub members: Vec<Member>,
    /// Element type and count of arrays.
    pub array: Option<(u32, u32)>,
}

/// Why a BTF blob could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(why: impl Into<String>) -> FormatError {
    FormatError(why.into())
}

/// A parsed BTF blob.
#[derive(Clone, Debug)]
pub struct Btf {
    /// Index = type id; index 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
}

/// A little reader over bytes of either endianness.
struct Reader<'a> {
    data: &'a [u8],
    big_endian: bool,
}

impl Reader<'_> {
    fn u32_at(&self, off: usize) -> Result<u32, FormatError> {
        let b: [u8; 4] = self
            .data
            .get(off..off + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad(format!("truncated at byte {off}")))?;
        Ok(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }
}

impl Btf {
    /// Parses a BTF blob (as in `/sys/kernel/btf/vmlinux`), in either byte order.
    pub fn parse(data: &[u8]) -> Result<Btf, FormatError> {
        let magic = data
            .get(..2)
            .ok_or_else(|| bad("shorter than a BTF header"))?;
        let big_endian = match [magic[0], magic[1]] {
            m if m == MAGIC.to_le_bytes() => false,
            m if m == MAGIC.to_be_bytes() => true,
            m => return Err(bad(format!("bad magic {:02x}{:02x} (not BTF)", m[0], m[1]))),
        };
        let r = Reader { data, big_endian };
        let version = *data.get(2).ok_or_else(|| bad("truncated header"))?;
        if version != 1 {
            return Err(bad(format!("unsupported BTF version {version}")));
        }
        let hdr_len = r.u32_at(4)? as usize;
        if hdr_len < HEADER_LEN || hdr_len > data.len() {
            return Err(bad(format!("bad header length {hdr_len}")));
        }
        let section = |off_at: usize, what: &str| -> Result<&[u8], FormatError> {
            let off = r.u32_at(off_at)? as usize;
            let len = r.u32_at(off_at + 4)? as usize;
            let start = hdr_len
                .checked_add(off)
                .ok_or_else(|| bad(format!("{what} section offset overflows")))?;
            let end = start
                .checked_add(len)
                .ok_or_else(|| bad(format!("{what} section length overflows")))?;
            data.get(start..end).ok_or_else(|| {
                bad(format!(
                    "{what} section {start}..{end} lies outside the {} bytes",
                    data.len()
                ))
            })
        };
        let type_data = section(8, "type")?;
        let strings = section(16, "string")?.to_vec();

        let t = Reader {
            data: type_data,
            big_endian,
        };
        let mut types = vec![Type {
            kind: Kind::Void,
            name_off: 0,
            size_or_type: 0,
            members: Vec::new(),
            array: None,
        }];
        let mut off = 0usize;
        while off < type_data.len() {
            let id = types.len();
            let name_off = t.u32_at(off)?;
            let info = t.u32_at(off + 4)?;
            let size_or_type = t.u32_at(off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let kind = Kind::from_raw((info >> 24) & 0x1f).ok_or_else(|| {
                bad(format!(
                    "type {id} has unknown kind {}",
                    (info >> 24) & 0x1f
                ))
            })?;
            let mut ty = Type {
                kind,
                name_off,
                size_or_type,
                members: Vec::new(),
                array: None,
            };
            // Kind-specific trailing data.
            match kind {
                Kind::Int | Kind::Var | Kind::DeclTag => off += 4,
                Kind::Array => {
                    ty.array = Some((t.u32_at(off)?, t.u32_at(off + 8)?));
                    off += 12;
                }
                Kind::Struct | Kind::Union => {
                    ty.members.reserve(vlen);
                    for _ in 0..vlen {
                        let raw_offset = t.u32_at(off + 8)?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (raw_offset & 0x00ff_ffff, raw_offset >> 24)
                        } else {
                            (raw_offset, 0)
                        };
                        ty.members.push(Member {
                            name_off: t.u32_at(off)?,
                            type_id: t.u32_at(off + 4)?,
                            bit_offset,
                            bitfield_size,
                        });
                        off += 12;
                    }
                }
                Kind::Enum | Kind::FuncProto => off += 8 * vlen,
                Kind::Datasec | Kind::Enum64 => off += 12 * vlen,
                Kind::Void
                | Kind::Ptr
                | Kind::Fwd
                | Kind::Typedef
                | Kind::Volatile
                | Kind::Const
                | Kind::Restrict
                | Kind::Func
                | Kind::Float
                | Kind::TypeTag => {}
            }
            if off > type_data.len() {
                return Err(bad(format!(
                    "type {id} runs past the end of the type section"
                )));
            }
            types.push(ty);
        }
        Ok(Btf { types, strings })
    }

    /// Number of types, `void` included.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether only `void` is present.
    pub fn is_empty(&self) -> bool {
        self.types.len() <= 1
    }

    /// The type with id `id`.
    pub fn get(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize)
    }

    /// The string at `off` in the string section ("" when out of range or not UTF-8).
    pub fn name(&self, off: u32) -> &str {
        let Some(rest) = self.strings.get(off as usize..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// The id of the first type of `kind` named `name`.
    pub fn find(&self, kind: Kind, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == kind && self.name(t.name_off) == name)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    pub fn resolve(&self, mut id: u32) -> Option<u32> {
        for _ in 0..MAX_DEPTH {
            let t = self.get(id)?;
            if !t.kind.is_modifier() {
                return Some(id);
            }
            id = t.size_or_type;
        }
        None
    }

    /// Size in bytes of a type (through typedefs and qualifiers).
    pub fn size_of(&self, id: u32) -> Option<u64> {
        self.size_of_depth(id, 0)
    }

    fn size_of_depth(&self, id: u32, depth: usize) -> Option<u64> {
        if depth > MAX_DEPTH {
            return None;
        }
        let t = self.get(self.resolve(id)?)?;
        match t.kind {
            Kind::Int | Kind::Struct | Kind::Union | Kind::Enum | Kind::Enum64 | Kind::Float => {
                Some(u64::from(t.size_or_type))
            }
            Kind::Ptr => Some(8),
            Kind::Array => {
                let (elem, n) = t.array?;
                self.size_of_depth(elem, depth + 1)?
                    .checked_mul(u64::from(n))
            }
            _ => None,
        }
    }

    /// Finds member `field` of the struct or union `id`, also inside its anonymous struct
    /// and union members. Returns the member and its bit offset from the start of `id`.
    pub fn member(&self, id: u32, field: &str) -> Option<(Member, u32)> {
        self.member_depth(id, field, 0)
    }

    fn member_depth(&self, id: u32, field: &str, depth: usize) -> Option<(Member, u32)> {
        if depth > MAX_DEPTH {
            return None;
        }
        let t = self.get(self.resolve(id)?)?;
        if !matches!(t.kind, Kind::Struct | Kind::Union) {
            return None;
        }
        for m in &t.members {
            let name = self.name(m.name_off);
            if name == field {
                return Some((*m, m.bit_offset));
            }
            if name.is_empty() {
                if let Some((found, inner)) = self.member_depth(m.type_id, field, depth + 1) {
                    return Some((found, m.bit_offset.checked_add(inner)?));
                }
            }
        }
        None
    }
}

/// Builds BTF blobs for tests.
#[cfg(test)]
pub mod build {
    /// Accumulates types (ids from 1) and strings.
    #[derive(Default)]
    pub struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub fn new() -> Builder {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        pub fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn head(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
            let name_off = self.string(name);
            for w in [name_off, (kind << 24) | vlen, size_or_type] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, 1, 0, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }

        pub fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.head(name, 8, 0, target)
        }

        pub fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            let id = self.head("", 3, 0, 0);
            for w in [elem, index, n] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            id
        }

        /// A struct (`union` false) or union with members (name, type, byte offset).
        pub fn record(
            &mut self,
            name: &str,
            union: bool,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.head(name, if union { 5 } else { 4 }, members.len() as u32, size);
            for (n, ty, byte_off) in members {
                let name_off = self.string(n);
                for w in [name_off, *ty, byte_off * 8] {
                    self.types.extend_from_slice(&w.to_le_bytes());
                }
            }
            id
        }

        /// Adds a function prototype with `params` (to exercise skipping vlen data).
        pub fn func_proto(&mut self, ret: u32, params: &[u32]) -> u32 {
            let id = self.head("", 13, params.len() as u32, ret);
            for p in params {
                self.types.extend_from_slice(&0u32.to_le_bytes());
                self.types.extend_from_slice(&p.to_le_bytes());
            }
            id
        }

        pub fn finish(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9fu16.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            let fields = [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ];
            for w in fields {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{build::Builder, *};

    #[test]
    fn finds_members_through_anonymous_unions_and_typedefs() {
        let mut b = Builder::new();
        let u32_t = b.int("unsigned int", 4);
        let u16_t = b.int("short unsigned int", 2);
        let be32 = b.typedef("__be32", u32_t);
        let _proto = b.func_proto(u32_t, &[u32_t, u16_t]);
        let inner = b.record("", false, 8, &[("a", be32, 0), ("b", be32, 4)]);
        let un = b.record("", true, 8, &[("ab", u32_t, 0), ("", inner, 0)]);
        let arr = b.array(u16_t, u32_t, 8);
        let outer = b.record(
            "outer",
            false,
            40,
            &[("x", u32_t, 0), ("", un, 8), ("c", arr, 16)],
        );
        let btf = Btf::parse(&b.finish()).expect("parses");

        assert_eq!(btf.find(Kind::Struct, "outer"), Some(outer));
        assert_eq!(btf.find(Kind::Union, "outer"), None);
        let (m, bits) = btf.member(outer, "b").expect("b found inside the union");
        assert_eq!(bits, (8 + 4) * 8);
        assert_eq!(btf.size_of(m.type_id), Some(4));
        assert_eq!(btf.member(outer, "x").map(|(_, b)| b), Some(0));
        let (c, _) = btf.member(outer, "c").expect("c");
        assert_eq!(btf.size_of(c.type_id), Some(16));
        assert!(btf.member(outer, "missing").is_none());
    }

    #[test]
    fn rejects_bad_blobs() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(b"\x00\x00\x01\x00").is_err(), "bad magic");
        let mut b = Builder::new();
        b.int("int", 4);
        let mut blob = b.finish();
        blob[2] = 2;
        assert!(Btf::parse(&blob).is_err(), "version 2");
        let mut blob = b.finish();
        blob.truncate(blob.len() - 3);
        assert!(Btf::parse(&blob).is_err(), "truncated strings");
        let mut blob = b.finish();
        blob[24 + 7] = 0x1f; // kind 31
        assert!(Btf::parse(&blob).is_err(), "unknown kind");
    }
}
