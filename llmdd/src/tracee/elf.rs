//! Reading ELF objects from disk: the exported function symbols, their absolute file
//! offsets (what a uprobe attaches to), the GNU build id, and raw bytes at an offset.
//!
//! Libraries can be large (libnccl is ~470 MB, libtorch_cuda over 1 GB), so nothing is read
//! whole: headers, the dynamic symbol table and its strings are read on demand through
//! `object`'s `ReadCache`, and code bytes with positioned reads.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use object::{
    elf::{self, FileHeader64},
    read::{
        elf::{FileHeader, ProgramHeader, SectionHeader, Sym},
        ReadCache, StringTable,
    },
    Endianness, FileKind,
};

/// Why an object file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not an ELF file", path.display())]
    NotElf { path: PathBuf },
    #[error("{} is a {what}, which llmdd does not probe", path.display())]
    Unsupported { path: PathBuf, what: &'static str },
    #[error("{} is a malformed ELF file: {source}", path.display())]
    Malformed {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
    #[error("{}: symbol {symbol} at {vaddr:#x} lies in no loadable segment or section", path.display())]
    UnmappedAddress {
        path: PathBuf,
        symbol: String,
        vaddr: u64,
    },
    #[error("reading {len} bytes at offset {offset:#x} of {}: {source}", path.display())]
    Read {
        path: PathBuf,
        offset: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
}

/// One exported function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfSymbol {
    /// Bare name (any `@VERSION` / `@@VERSION` suffix removed).
    pub name: String,
    /// Virtual address (`st_value`), relative to the object's load base.
    pub vaddr: u64,
    /// Size in bytes (`st_size`, 0 when unknown).
    pub size: u64,
    /// Absolute offset of the first byte of the function in the file.
    pub file_offset: u64,
    /// Weak binding (e.g. NCCL's `ncclX` aliases of `pncclX`).
    pub weak: bool,
}

/// What [`scan`] found in one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfScan {
    /// `e_machine` (62 = x86-64).
    pub machine: u16,
    /// GNU build id (`NT_GNU_BUILD_ID`), raw bytes.
    pub build_id: Option<Vec<u8>>,
    /// The exported functions accepted by the filter, in symbol-table order.
    pub symbols: Vec<ElfSymbol>,
    /// The exported data objects accepted by the filter (`file_offset` 0: they may live in
    /// `.bss`, with no file contents).
    pub data: Vec<ElfSymbol>,
    /// The loadable segments (to turn a symbol's address into a process address).
    pub loads: Vec<LoadSegment>,
}

/// A loadable segment, as needed to turn addresses into file offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
}

/// A section with file contents, the fallback for addresses outside every segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSection {
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
}

/// The file offset of virtual address `vaddr`: through the `PT_LOAD` segment containing it
/// (as the loader maps it), else through a section with contents containing it.
pub fn vaddr_to_offset(vaddr: u64, loads: &[LoadSegment], sections: &[FileSection]) -> Option<u64> {
    let within = |start: u64, len: u64| vaddr >= start && vaddr - start < len;
    loads
        .iter()
        .find(|s| within(s.vaddr, s.filesz))
        .and_then(|s| (vaddr - s.vaddr).checked_add(s.offset))
        .or_else(|| {
            sections
                .iter()
                .find(|s| within(s.addr, s.size))
                .and_then(|s| (vaddr - s.addr).checked_add(s.offset))
        })
}

/// Strips a GNU symbol version (`name@VER` or `name@@VER`).
pub fn bare_name(name: &str) -> &str {
    name.split_once('@').map_or(name, |(bare, _)| bare)
}

/// Whether the file at `path` starts with the ELF magic (a cheap test before parsing).
pub fn is_elf(path: &Path) -> Result<bool, ElfError> {
    let mut file = File::open(path).map_err(|source| ElfError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(magic == elf::ELFMAG),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(source) => Err(ElfError::Read {
            path: path.to_path_buf(),
            offset: 0,
            len: 4,
            source,
        }),
    }
}

/// Reads the exported (defined, global or weak) functions of the 64-bit ELF object at
/// `path` whose bare name `wanted` accepts, with their file offsets, and its build id.
pub fn scan(path: &Path, wanted: impl Fn(&str) -> bool) -> Result<ElfScan, ElfError> {
    let file = File::open(path).map_err(|source| ElfError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let cache = ReadCache::new(file);
    let data = &cache;
    let malformed = |source| ElfError::Malformed {
        path: path.to_path_buf(),
        source,
    };
    match FileKind::parse(data) {
        Ok(FileKind::Elf64) => {}
        Ok(FileKind::Elf32) => {
            return Err(ElfError::Unsupported {
                path: path.to_path_buf(),
                what: "32-bit ELF object",
            })
        }
        _ => {
            return Err(ElfError::NotElf {
                path: path.to_path_buf(),
            })
        }
    }
    let header = FileHeader64::<Endianness>::parse(data).map_err(malformed)?;
    let endian = header.endian().map_err(malformed)?;
    let phdrs = header.program_headers(endian, data).map_err(malformed)?;
    let sections = header.sections(endian, data).map_err(malformed)?;

    let loads: Vec<LoadSegment> = phdrs
        .iter()
        .filter(|p| p.p_type(endian) == elf::PT_LOAD)
        .map(|p| LoadSegment {
            vaddr: p.p_vaddr(endian),
            offset: p.p_offset(endian),
            filesz: p.p_filesz(endian),
        })
        .collect();
    let file_sections: Vec<FileSection> = sections
        .iter()
        .filter(|s| s.sh_type(endian) != elf::SHT_NOBITS && s.sh_addr(endian) != 0)
        .map(|s| FileSection {
            addr: s.sh_addr(endian),
            offset: s.sh_offset(endian),
            size: s.sh_size(endian),
        })
        .collect();

    let mut out = ElfScan {
        machine: header.e_machine(endian),
        build_id: build_id(header, endian, data, &sections).map_err(malformed)?,
        symbols: Vec::new(),
        data: Vec::new(),
        loads: loads.clone(),
    };

    // The dynamic symbol table and its strings, each read in one piece.
    let Some((_, dynsym)) = sections
        .enumerate()
        .find(|(_, s)| s.sh_type(endian) == elf::SHT_DYNSYM)
    else {
        return Ok(out);
    };
    let strtab = sections
        .section(object::SectionIndex(dynsym.sh_link(endian) as usize))
        .map_err(malformed)?;
    let syms: &[elf::Sym64<Endianness>] = dynsym.data_as_array(endian, data).map_err(malformed)?;
    let str_bytes = strtab.data(endian, data).map_err(malformed)?;
    let strings = StringTable::new(str_bytes, 0, str_bytes.len() as u64);

    for sym in syms {
        let object = sym.st_type() == elf::STT_OBJECT;
        if !(sym.st_type() == elf::STT_FUNC || object)
            || sym.st_shndx(endian) == elf::SHN_UNDEF
            || !matches!(sym.st_bind(), elf::STB_GLOBAL | elf::STB_WEAK)
        {
            continue;
        }
        let Ok(raw) = sym.name(endian, strings) else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(raw) else {
            continue;
        };
        let name = bare_name(name);
        if !wanted(name) {
            continue;
        }
        let vaddr = sym.st_value(endian);
        if object {
            out.data.push(ElfSymbol {
                name: name.to_string(),
                vaddr,
                size: sym.st_size(endian),
                file_offset: 0,
                weak: sym.st_bind() == elf::STB_WEAK,
            });
            continue;
        }
        let file_offset = vaddr_to_offset(vaddr, &loads, &file_sections).ok_or_else(|| {
            ElfError::UnmappedAddress {
                path: path.to_path_buf(),
                symbol: name.to_string(),
                vaddr,
            }
        })?;
        out.symbols.push(ElfSymbol {
            name: name.to_string(),
            vaddr,
            size: sym.st_size(endian),
            file_offset,
            weak: sym.st_bind() == elf::STB_WEAK,
        });
    }
    Ok(out)
}

/// The GNU build id, from note sections, else from note segments.
fn build_id<'data>(
    header: &FileHeader64<Endianness>,
    endian: Endianness,
    data: &'data ReadCache<File>,
    sections: &object::read::elf::SectionTable<
        'data,
        FileHeader64<Endianness>,
        &'data ReadCache<File>,
    >,
) -> object::Result<Option<Vec<u8>>> {
    for section in sections.iter() {
        if let Some(mut notes) = section.notes(endian, data)? {
            while let Some(note) = notes.next()? {
                if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                    return Ok(Some(note.desc().to_vec()));
                }
            }
        }
    }
    for segment in header.program_headers(endian, data)? {
        if let Some(mut notes) = segment.notes(endian, data)? {
            while let Some(note) = notes.next()? {
                if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                    return Ok(Some(note.desc().to_vec()));
                }
            }
        }
    }
    Ok(None)
}

/// Reads up to `len` bytes at `offset` of the file (fewer at the end of the file).
pub fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, ElfError> {
    let err = |source| ElfError::Read {
        path: path.to_path_buf(),
        offset,
        len,
        source,
    };
    let file = File::open(path).map_err(|source| ElfError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset.saturating_add(got as u64)) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(e)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Lower-case hex of a build id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_gnu_versions() {
        assert_eq!(
            bare_name("cudaLaunchKernel@@libcudart.so.12"),
            "cudaLaunchKernel"
        );
        assert_eq!(bare_name("memcpy@GLIBC_2.2.5"), "memcpy");
        assert_eq!(bare_name("ncclAllReduce"), "ncclAllReduce");
    }

    #[test]
    fn offsets_go_through_the_containing_segment() {
        let loads = [
            LoadSegment {
                vaddr: 0,
                offset: 0,
                filesz: 0x1000,
            },
            LoadSegment {
                vaddr: 0x201000,
                offset: 0x1000,
                filesz: 0x500,
            },
        ];
        assert_eq!(vaddr_to_offset(0x10, &loads, &[]), Some(0x10));
        assert_eq!(vaddr_to_offset(0x201010, &loads, &[]), Some(0x1010));
        assert_eq!(vaddr_to_offset(0x201500, &loads, &[]), None, "past filesz");
        let sections = [FileSection {
            addr: 0x300000,
            offset: 0x2000,
            size: 0x100,
        }];
        assert_eq!(vaddr_to_offset(0x300004, &loads, &sections), Some(0x2004));
    }

    #[test]
    fn non_elf_files_are_told_apart() {
        let dir = std::env::temp_dir().join(format!("llmdd-elf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let text = dir.join("not-elf.txt");
        std::fs::write(&text, b"hello world").expect("write");
        assert!(!is_elf(&text).expect("readable"));
        assert!(matches!(
            scan(&text, |_| true),
            Err(ElfError::NotElf { .. })
        ));
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").expect("write");
        assert!(!is_elf(&empty).expect("readable"));
        assert!(matches!(
            scan(Path::new("/nonexistent/libnccl.so.2"), |_| true),
            Err(ElfError::Open { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
