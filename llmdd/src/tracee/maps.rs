//! `/proc/PID/maps`: the memory mappings of a process, and the file-backed objects (shared
//! libraries, the executable) they come from.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

/// Suffix the kernel appends to the path of a mapping whose file was unlinked.
const DELETED: &[u8] = b" (deleted)";

/// Access bits of a mapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` (shared) rather than `p` (private, copy-on-write).
    pub shared: bool,
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: Perms,
    /// Offset in the file of the first mapped byte.
    pub offset: u64,
    /// Device (major, minor) and inode of the file; inode 0 for anonymous mappings.
    pub dev: (u32, u32),
    pub inode: u64,
    pub name: MappingName,
}

/// What a mapping is backed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MappingName {
    /// Anonymous memory without a name.
    Anonymous,
    /// A kernel-named region such as `[heap]`, `[stack]`, `[vdso]`, or `[anon:...]`.
    Pseudo(String),
    /// A file, by its path as the target process sees it (inside its mount namespace).
    File {
        path: PathBuf,
        /// The file was unlinked after it was mapped (the kernel's ` (deleted)` marker,
        /// removed from `path`).
        deleted: bool,
    },
}

impl Mapping {
    /// The file path of a file-backed mapping.
    pub fn path(&self) -> Option<&Path> {
        match &self.name {
            MappingName::File { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The name of this mapping under `/proc/PID/map_files/`, which opens the mapped file
    /// even when it was deleted or replaced on disk.
    pub fn map_files_name(&self) -> String {
        format!("{:x}-{:x}", self.start, self.end)
    }
}

/// A line of `/proc/PID/maps` that does not have the kernel's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line_no} is not in the /proc/PID/maps format ({why}): {line:?}")]
pub struct MapsFormatError {
    pub line_no: usize,
    pub line: String,
    pub why: &'static str,
}

/// Parses the whole content of a `/proc/PID/maps` file.
pub fn parse_maps(content: &[u8]) -> Result<Vec<Mapping>, MapsFormatError> {
    content
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            parse_line(l).map_err(|why| MapsFormatError {
                line_no: i + 1,
                line: String::from_utf8_lossy(l).into_owned(),
                why,
            })
        })
        .collect()
}

/// Splits off the next space-separated field (skipping leading spaces).
fn take_field<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    let s = trim_start(rest);
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    if end == 0 {
        return Err("too few fields");
    }
    let (field, tail) = s.split_at(end);
    *rest = tail;
    Ok(field)
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

fn hex(field: &[u8], what: &'static str) -> Result<u64, &'static str> {
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or(what)
}

fn parse_line(line: &[u8]) -> Result<Mapping, &'static str> {
    let mut rest = line;
    let range = take_field(&mut rest)?;
    let dash = range
        .iter()
        .position(|&b| b == b'-')
        .ok_or("address range without '-'")?;
    let start = hex(&range[..dash], "bad start address")?;
    let end = hex(&range[dash + 1..], "bad end address")?;

    let perms = take_field(&mut rest)?;
    if perms.len() != 4 {
        return Err("permissions are not 4 characters");
    }
    let perms = Perms {
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
    };
    let offset = hex(take_field(&mut rest)?, "bad offset")?;

    let dev = take_field(&mut rest)?;
    let colon = dev
        .iter()
        .position(|&b| b == b':')
        .ok_or("device without ':'")?;
    let major = hex(&dev[..colon], "bad device major")?;
    let minor = hex(&dev[colon + 1..], "bad device minor")?;
    let dev = (
        u32::try_from(major).map_err(|_| "device major out of range")?,
        u32::try_from(minor).map_err(|_| "device minor out of range")?,
    );

    let inode = std::str::from_utf8(take_field(&mut rest)?)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or("bad inode")?;

    // Everything after the inode and its padding is the name, spaces included.
    let name = trim_start(rest);
    let name = if name.is_empty() {
        MappingName::Anonymous
    } else if name[0] == b'/' {
        let (raw, deleted) = match name.strip_suffix(DELETED) {
            Some(p) => (p, true),
            None => (name, false),
        };
        MappingName::File {
            path: PathBuf::from(OsStr::from_bytes(&unescape(raw))),
            deleted,
        }
    } else {
        MappingName::Pseudo(String::from_utf8_lossy(name).into_owned())
    };
    Ok(Mapping {
        start,
        end,
        perms,
        offset,
        dev,
        inode,
        name,
    })
}

/// The kernel escapes a newline in a mapped path as `\012` (octal); undo that.
fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && raw[i + 1..].starts_with(b"012") {
            out.push(b'\n');
            i += 4;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

/// One file mapped by a process, with all of its mappings (a shared library usually has four
/// or five: headers, code, read-only data, relro, data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    /// Path as the target sees it, without the ` (deleted)` marker.
    pub path: PathBuf,
    pub deleted: bool,
    pub dev: (u32, u32),
    pub inode: u64,
    /// Mappings of this file in address order.
    pub mappings: Vec<Mapping>,
}

impl MappedFile {
    /// Whether any mapping of the file is executable: code from it can run, so a probe on it
    /// can fire.
    pub fn executable(&self) -> bool {
        self.mappings.iter().any(|m| m.perms.exec)
    }
}

/// Groups file-backed mappings by file (device, inode and path), in order of first mapping.
pub fn mapped_files(mappings: &[Mapping]) -> Vec<MappedFile> {
    let mut files: Vec<MappedFile> = Vec::new();
    for m in mappings {
        let MappingName::File { path, deleted } = &m.name else {
            continue;
        };
        match files
            .iter_mut()
            .find(|f| f.dev == m.dev && f.inode == m.inode && &f.path == path)
        {
            Some(f) => f.mappings.push(m.clone()),
            None => files.push(MappedFile {
                path: path.clone(),
                deleted: *deleted,
                dev: m.dev,
                inode: m.inode,
                mappings: vec![m.clone()],
            }),
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d4c2a00000-55d4c2a28000 r--p 00000000 fd:01 1835018                    /usr/bin/python3.11
55d4c2a28000-55d4c2c5e000 r-xp 00028000 fd:01 1835018                    /usr/bin/python3.11
55d4c3f1e000-55d4c40a4000 rw-p 00000000 00:00 0                          [heap]
7f1e3c000000-7f1e3c021000 rw-p 00000000 00:00 0 
7f1e40000000-7f1e40200000 r--p 00000000 00:2a 99                         /opt/my libs/libnccl.so.2.21.5
7f1e40200000-7f1e48000000 r-xp 00200000 00:2a 99                         /opt/my libs/libnccl.so.2.21.5
7f1e50000000-7f1e50010000 r-xp 00000000 08:02 1234                       /tmp/libcudart.so.12 (deleted)
7f1e50020000-7f1e50030000 rw-s 00000000 00:01 77                         /memfd:pool (deleted)
7ffd1a5f2000-7ffd1a613000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_every_kind_of_line() {
        let maps = parse_maps(SAMPLE.as_bytes()).expect("sample parses");
        assert_eq!(maps.len(), 10);
        let first = &maps[0];
        assert_eq!(first.start, 0x55d4c2a00000);
        assert_eq!(first.end, 0x55d4c2a28000);
        assert_eq!(first.offset, 0);
        assert_eq!(first.dev, (0xfd, 1));
        assert_eq!(first.inode, 1835018);
        assert!(first.perms.read && !first.perms.write && !first.perms.exec && !first.perms.shared);
        assert_eq!(first.path(), Some(Path::new("/usr/bin/python3.11")));
        assert!(maps[1].perms.exec);
        assert_eq!(maps[1].offset, 0x28000);
        assert_eq!(maps[2].name, MappingName::Pseudo("[heap]".into()));
        assert_eq!(maps[3].name, MappingName::Anonymous);
        assert_eq!(maps[9].name, MappingName::Pseudo("[vsyscall]".into()));
        assert_eq!(maps[9].start, 0xffffffffff600000);
        assert!(maps[7].perms.shared);
    }

    #[test]
    fn keeps_spaces_and_strips_deleted_marker() {
        let maps = parse_maps(SAMPLE.as_bytes()).expect("sample parses");
        assert_eq!(
            maps[4].name,
            MappingName::File {
                path: "/opt/my libs/libnccl.so.2.21.5".into(),
                deleted: false
            }
        );
        assert_eq!(
            maps[6].name,
            MappingName::File {
                path: "/tmp/libcudart.so.12".into(),
                deleted: true
            }
        );
        assert_eq!(maps[6].map_files_name(), "7f1e50000000-7f1e50010000");
    }

    #[test]
    fn unescapes_newlines_in_paths() {
        let line = b"7f0000000000-7f0000001000 r-xp 00000000 08:02 5 /tmp/odd\\012name.so";
        let maps = parse_maps(line).expect("parses");
        assert_eq!(maps[0].path(), Some(Path::new("/tmp/odd\nname.so")));
    }

    #[test]
    fn groups_mappings_by_file() {
        let maps = parse_maps(SAMPLE.as_bytes()).expect("sample parses");
        let files = mapped_files(&maps);
        let names: Vec<_> = files.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "/usr/bin/python3.11",
                "/opt/my libs/libnccl.so.2.21.5",
                "/tmp/libcudart.so.12",
                "/memfd:pool"
            ]
        );
        assert_eq!(files[1].mappings.len(), 2);
        assert!(files[1].executable());
        assert!(files[2].deleted);
        assert!(!files[3].executable());
    }

    #[test]
    fn rejects_malformed_lines() {
        let err = parse_maps(b"00400000 r-xp 0 08:02 5 /x\n").expect_err("no range dash");
        assert_eq!(err.line_no, 1);
        assert!(parse_maps(b"0-1 r-x 0 08:02 5 /x").is_err());
        assert!(parse_maps(b"0-1 r-xp 0 0802 5 /x").is_err());
        assert!(parse_maps(b"0-1 r-xp 0 08:02 five /x").is_err());
        assert!(parse_maps(b"0-1 r-xp 0 08:02").is_err());
    }
}
