//! Every function symbol of an ELF object (`.symtab` and `.dynsym`, local ones included),
//! demangled, by file offset: what turns an address in a user stack into a name, and a
//! demangled C++ name (`gloo::allreduce`, `Scheduler::step`) into the file offset a uprobe
//! attaches to.
//!
//! Addresses are handled as file offsets throughout: a runtime address maps to one through
//! the `/proc/PID/maps` line that contains it (`addr - start + offset`), whatever the load
//! base, and a uprobe takes one directly.

use std::{fs::File, path::Path};

use object::{read::ReadCache, Object, ObjectSegment, ObjectSymbol, SymbolKind, SymbolSection};

use super::elf::{bare_name, vaddr_to_offset, ElfError, LoadSegment};

/// One function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuncSymbol {
    /// Offset in the file of the first byte of the function.
    pub file_offset: u64,
    /// Size in bytes (0 when the symbol table does not say).
    pub size: u64,
    /// The name as the symbol table has it (mangled, version suffix removed).
    pub raw: String,
    /// The demangled name (the raw name for C symbols), made when first asked for: a
    /// PyTorch library has hundreds of thousands of symbols, and a stack needs a few.
    name: std::sync::OnceLock<String>,
}

impl FuncSymbol {
    /// A function at `file_offset` of `size` bytes named `raw` in the symbol table.
    pub fn new(file_offset: u64, size: u64, raw: &str) -> FuncSymbol {
        FuncSymbol {
            file_offset,
            size,
            raw: raw.to_string(),
            name: std::sync::OnceLock::new(),
        }
    }

    /// The demangled name (the raw name for C symbols).
    pub fn name(&self) -> &str {
        self.name.get_or_init(|| demangle(&self.raw))
    }
}

/// The functions of one object, sorted by file offset.
#[derive(Clone, Debug, Default)]
pub struct SymbolTable {
    funcs: Vec<FuncSymbol>,
}

/// A C++ or Rust (legacy mangling) name, demangled; other names as they are.
pub fn demangle(raw: &str) -> String {
    if raw.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(raw.as_bytes()) {
            let opts = cpp_demangle::DemangleOptions::new().no_return_type();
            if let Ok(s) = sym.demangle(&opts) {
                return strip_rust_hash(s);
            }
        }
    }
    raw.to_string()
}

/// Rust's legacy mangling ends each path with `::h` and 16 hex digits: noise in a frame.
fn strip_rust_hash(mut s: String) -> String {
    if let Some(i) = s.rfind("::h") {
        let tail = &s[i + 3..];
        if tail.len() == 16 && tail.bytes().all(|b| b.is_ascii_hexdigit()) {
            s.truncate(i);
        }
    }
    s
}

/// A demangled name without its parameter list, template arguments kept
/// (`ns::Cls<int>::run(int) const` gives `ns::Cls<int>::run`).
pub fn without_params(name: &str) -> &str {
    // The parameter list is the last balanced `( ... )` group at depth 0 of `<>`.
    let bytes = name.as_bytes();
    let mut angle = 0i32;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'<' => angle += 1,
            b'>' => angle -= 1,
            b'(' if angle == 0 && i > 0 => {
                // `operator()` is a name, not a parameter list.
                if name[..i].ends_with("operator") {
                    continue;
                }
                return &name[..i];
            }
            _ => {}
        }
    }
    name
}

impl SymbolTable {
    /// Reads the function symbols of the object at `path`. A stripped object gives the
    /// exported (`.dynsym`) ones only.
    pub fn load(path: &Path) -> Result<SymbolTable, ElfError> {
        let file = File::open(path).map_err(|source| ElfError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let cache = ReadCache::new(file);
        let obj = object::File::parse(&cache).map_err(|source| {
            match object::FileKind::parse(&cache) {
                Ok(object::FileKind::Elf64) | Ok(object::FileKind::Elf32) => ElfError::Malformed {
                    path: path.to_path_buf(),
                    source,
                },
                _ => ElfError::NotElf {
                    path: path.to_path_buf(),
                },
            }
        })?;
        // Virtual address -> file offset through the loadable segments, as the uprobe
        // points are computed (`elf::vaddr_to_offset`).
        let loads: Vec<LoadSegment> = obj
            .segments()
            .map(|s| {
                let (offset, filesz) = s.file_range();
                LoadSegment {
                    vaddr: s.address(),
                    offset,
                    filesz,
                }
            })
            .collect();
        let to_offset = |vaddr: u64| vaddr_to_offset(vaddr, &loads, &[]);
        let mut funcs: Vec<FuncSymbol> = Vec::new();
        for sym in obj.symbols().chain(obj.dynamic_symbols()) {
            if sym.kind() != SymbolKind::Text || !matches!(sym.section(), SymbolSection::Section(_))
            {
                continue;
            }
            let Ok(raw) = sym.name() else { continue };
            let raw = bare_name(raw);
            if raw.is_empty() {
                continue;
            }
            let Some(file_offset) = to_offset(sym.address()) else {
                continue;
            };
            funcs.push(FuncSymbol::new(file_offset, sym.size(), raw));
        }
        // One entry per (offset, raw name): .symtab repeats .dynsym's entries.
        funcs.sort_by(|a, b| a.file_offset.cmp(&b.file_offset).then(a.raw.cmp(&b.raw)));
        funcs.dedup_by(|a, b| a.file_offset == b.file_offset && a.raw == b.raw);
        Ok(SymbolTable { funcs })
    }

    /// A table from symbols already at hand (tests).
    pub fn from_symbols(mut funcs: Vec<FuncSymbol>) -> SymbolTable {
        funcs.sort_by_key(|f| f.file_offset);
        SymbolTable { funcs }
    }

    pub fn len(&self) -> usize {
        self.funcs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.funcs.is_empty()
    }

    /// The function containing file offset `off`: the last symbol at or below it, if `off`
    /// lies within its size (or the symbol has no size and is the nearest one below).
    pub fn lookup(&self, off: u64) -> Option<&FuncSymbol> {
        let i = self.funcs.partition_point(|f| f.file_offset <= off);
        let f = self.funcs.get(i.checked_sub(1)?)?;
        (f.size == 0 || off - f.file_offset < f.size).then_some(f)
    }

    /// Functions whose name matches `wanted`: the raw (C or mangled) name, the full
    /// demangled name, or the demangled name without its parameter list. One entry per file
    /// offset (aliases share one).
    pub fn find(&self, wanted: &str) -> Vec<&FuncSymbol> {
        let wanted = wanted.trim();
        let mut out: Vec<&FuncSymbol> = self
            .funcs
            .iter()
            .filter(|f| f.raw == wanted || f.name() == wanted || without_params(f.name()) == wanted)
            .collect();
        out.dedup_by_key(|f| f.file_offset);
        out
    }

    /// Names close to `wanted` (for "did you mean" in errors), best first, at most `max`:
    /// the last name component (`step` of `sched::Scheduler::step(int)`) contains the one
    /// asked for, or is within a Jaro-Winkler similarity of 0.9 of it.
    pub fn similar(&self, wanted: &str, max: usize) -> Vec<&str> {
        let last = |s: &str| -> String {
            let bare = without_params(s.trim());
            bare.rsplit("::").next().unwrap_or(bare).to_lowercase()
        };
        let key = last(wanted);
        if key.is_empty() {
            return Vec::new();
        }
        let mut scored: Vec<(f64, &str)> = self
            .funcs
            .iter()
            .filter_map(|f| {
                let name = last(f.name());
                let score = if name.contains(&key) {
                    1.0
                } else {
                    strsim::jaro_winkler(&name, &key)
                };
                (score >= 0.9).then_some((score, f.name()))
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        let mut out: Vec<&str> = Vec::new();
        for (_, n) in scored {
            if !out.contains(&n) {
                out.push(n);
            }
            if out.len() == max {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(off: u64, size: u64, raw: &str) -> FuncSymbol {
        FuncSymbol::new(off, size, raw)
    }

    #[test]
    fn demangles_cpp_and_keeps_c_names() {
        assert_eq!(demangle("ncclAllReduce"), "ncclAllReduce");
        assert_eq!(
            demangle("_ZN4gloo9allreduceERKNS_16AllreduceOptionsE"),
            "gloo::allreduce(gloo::AllreduceOptions const&)"
        );
        assert_eq!(
            without_params("gloo::allreduce(gloo::AllreduceOptions const&)"),
            "gloo::allreduce"
        );
        assert_eq!(
            without_params("ns::Cls<int (*)(int)>::run(int) const"),
            "ns::Cls<int (*)(int)>::run"
        );
        assert_eq!(without_params("Foo::operator()(int)"), "Foo::operator()");
        assert_eq!(without_params("plain"), "plain");
        // Not a mangled name after all: kept as it is.
        assert_eq!(demangle("_Zgarbage"), "_Zgarbage");
    }

    #[test]
    fn looks_up_by_offset_within_size_and_finds_by_any_name() {
        let t = SymbolTable::from_symbols(vec![
            sym(0x2000, 0x40, "_ZN4gloo9allreduceERKNS_16AllreduceOptionsE"),
            sym(0x1000, 0x10, "first"),
            sym(0x3000, 0, "unsized"),
        ]);
        assert_eq!(t.lookup(0x1000).map(|f| f.raw.as_str()), Some("first"));
        assert_eq!(t.lookup(0x100f).map(|f| f.raw.as_str()), Some("first"));
        assert!(t.lookup(0x1010).is_none(), "past the end of a sized symbol");
        assert!(t.lookup(0xfff).is_none());
        assert_eq!(t.lookup(0x3123).map(|f| f.raw.as_str()), Some("unsized"));
        for name in [
            "gloo::allreduce",
            "gloo::allreduce(gloo::AllreduceOptions const&)",
            "_ZN4gloo9allreduceERKNS_16AllreduceOptionsE",
        ] {
            let found = t.find(name);
            assert_eq!(found.len(), 1, "{name}");
            assert_eq!(found[0].file_offset, 0x2000);
        }
        assert!(t.find("gloo::allgather").is_empty());
        assert_eq!(
            t.similar("gloo::AllReduce", 5),
            vec!["gloo::allreduce(gloo::AllreduceOptions const&)"]
        );
    }

    #[test]
    fn reads_this_test_binary_and_finds_a_function_by_offset() {
        let exe = std::env::current_exe().expect("test binary");
        let t = SymbolTable::load(&exe).expect("symbols");
        assert!(t.len() > 100, "{}", t.len());
        let main = t.find("main");
        assert_eq!(main.len(), 1);
        let hit = t.lookup(main[0].file_offset + 1).expect("inside main");
        assert_eq!(hit.raw, "main");
    }

    #[test]
    fn a_file_that_is_not_elf_is_named() {
        let path = std::env::temp_dir().join(format!("llmdd-notelf-{}", std::process::id()));
        std::fs::write(&path, b"#!/bin/sh\necho hi\n").expect("write");
        let err = SymbolTable::load(&path).expect_err("not ELF");
        assert!(err.to_string().contains("not an ELF file"), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
