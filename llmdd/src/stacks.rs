//! User stacks of traced calls (`--stacks`). The probes have the kernel walk the caller's
//! user stack at entry (frame pointers) and store each distinct stack once in the `STACKS`
//! map; a record carries the stack's id. Here a stack is read the first time a (process, id)
//! pair is seen and each frame is named from the process's mappings and the mapped objects'
//! symbol tables, while the process still lives, so that the flame graph can fold by it
//! after the targets have exited.
//!
//! Naming is plain data work ([`Symbolizer`] over `/proc/PID/maps` lines and
//! [`SymbolTable`]s) and is tested without BPF; [`StackWalker`] adds the map.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::maps::{MapData, StackTraceMap};

use crate::{
    events::Event,
    tracee::{
        maps::{parse_maps, Mapping, MappingName},
        procfs,
        symbols::{without_params, SymbolTable},
    },
};

/// The names of one stack's frames, outermost caller first, without the traced function
/// itself (the flame graph adds it with its library).
pub type Frames = Arc<[String]>;

/// A mapped file: device, inode, and path as the process sees it.
type FileId = ((u32, u32), u64, PathBuf);

/// Names addresses of one machine's processes.
#[derive(Default)]
pub struct Symbolizer {
    /// The mappings of each process, as last read.
    maps: HashMap<u32, Vec<Mapping>>,
    /// Symbol tables by (device, inode, path as the process sees it); `None` when the file
    /// could not be read (named by offset instead).
    tables: HashMap<FileId, Option<Arc<SymbolTable>>>,
}

impl Symbolizer {
    pub fn new() -> Symbolizer {
        Symbolizer::default()
    }

    /// Reads (again) the mappings of `pid`; false when the process is gone.
    pub fn refresh(&mut self, pid: u32) -> bool {
        match procfs::read(pid, "maps")
            .ok()
            .and_then(|b| parse_maps(&b).ok())
        {
            Some(m) => {
                self.maps.insert(pid, m);
                true
            }
            None => false,
        }
    }

    /// Mappings given directly (tests, or a process read elsewhere).
    pub fn set_maps(&mut self, pid: u32, maps: Vec<Mapping>) {
        self.maps.insert(pid, maps);
    }

    /// The mapping of `pid` holding `addr` (as last read).
    pub fn mapping(&self, pid: u32, addr: u64) -> Option<&Mapping> {
        self.maps
            .get(&pid)?
            .iter()
            .find(|m| addr >= m.start && addr < m.end)
    }

    fn table(&mut self, pid: u32, m: &Mapping) -> Option<Arc<SymbolTable>> {
        let path = m.path()?.to_path_buf();
        let key = (m.dev, m.inode, path.clone());
        if let Some(t) = self.tables.get(&key) {
            return t.clone();
        }
        // Through the process's root first (containers), then the mapped file itself
        // (deleted or replaced on disk), then the path as this process sees it.
        let candidates = [
            procfs::host_path(pid, &path),
            procfs::proc_path(pid, "map_files").join(m.map_files_name()),
            path.clone(),
        ];
        let table = candidates
            .iter()
            .find_map(|p| SymbolTable::load(p).ok())
            .map(Arc::new);
        if table.is_none() {
            tracing::debug!("no symbols for {}", path.display());
        }
        self.tables.insert(key, table.clone());
        table
    }

    /// The name of the code at `addr` in `pid`: the function (demangled, without its
    /// parameters), else `file+0xOFFSET`, else the address. `ret` says that `addr` is a return
    /// address (the call is the byte before it).
    pub fn name(&mut self, pid: u32, addr: u64, ret: bool) -> String {
        let look = if ret { addr.saturating_sub(1) } else { addr };
        if self.mapping(pid, look).is_none() {
            // A library mapped since the last read.
            self.refresh(pid);
        }
        let Some(m) = self.mapping(pid, look).cloned() else {
            return format!("{addr:#x}");
        };
        let MappingName::File { path, .. } = &m.name else {
            return match &m.name {
                MappingName::Pseudo(p) => format!("{p}+{:#x}", look - m.start),
                _ => format!("{addr:#x}"),
            };
        };
        let off = look - m.start + m.offset;
        if let Some(t) = self.table(pid, &m) {
            if let Some(f) = t.lookup(off) {
                return without_params(f.name()).to_string();
            }
        }
        format!("{}+{off:#x}", file_name(path))
    }

    /// Names a stack as the kernel stores it (innermost first, frame 0 the traced function's
    /// entry), outermost first and without frame 0. `caller` is the return address on top of
    /// the stack at entry: a frame-pointer walk from a function's first instruction skips
    /// it unless the kernel added it itself, so it is put back when missing.
    pub fn frames(&mut self, pid: u32, ips: &[u64], caller: u64) -> Frames {
        let mut inner_first: Vec<u64> = Vec::with_capacity(ips.len() + 1);
        if caller != 0 && ips.get(1) != Some(&caller) {
            inner_first.push(caller);
        }
        inner_first.extend(ips.iter().skip(1));
        let mut out: Vec<String> = inner_first
            .iter()
            .map(|&ip| self.name(pid, ip, true).replace(';', ":"))
            .collect();
        out.reverse();
        out.into()
    }

    /// Forgets a process that exited (its mappings; symbol tables stay cached by file).
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// One named stack: process, stack id, immediate caller.
pub type StackKey = (u32, u32, u64);

/// The probes' stack map and the names of the stacks read from it.
pub struct StackWalker {
    map: StackTraceMap<MapData>,
    pub symbolizer: Symbolizer,
    named: HashMap<StackKey, Frames>,
    /// Stack ids the map no longer had when read (counted, folded without a stack).
    pub unreadable: u64,
}

impl StackWalker {
    pub fn new(map: StackTraceMap<MapData>) -> StackWalker {
        StackWalker {
            map,
            symbolizer: Symbolizer::new(),
            named: HashMap::new(),
            unreadable: 0,
        }
    }

    /// Names every stack of `batch` not named yet and hands the new ones to `learn`. Call
    /// before the batch is ingested: a process whose exit is in the batch may still be
    /// readable.
    pub fn annotate(&mut self, batch: &[Event], mut learn: impl FnMut(StackKey, Frames)) {
        for ev in batch {
            let Event::Call(c) = ev else { continue };
            let Some(id) = c.stack_id else { continue };
            let key = (c.pid, id, c.caller);
            if self.named.contains_key(&key) {
                continue;
            }
            let frames = match self.map.get(&id, 0) {
                Ok(trace) => {
                    let ips: Vec<u64> = trace.frames().iter().map(|f| f.ip).collect();
                    self.symbolizer.frames(c.pid, &ips, c.caller)
                }
                Err(e) => {
                    tracing::debug!("stack {id} of pid {}: {e}", c.pid);
                    self.unreadable += 1;
                    Arc::from(Vec::new())
                }
            };
            self.named.insert(key, frames.clone());
            learn(key, frames);
        }
        for ev in batch {
            if let Event::ProcExit(p) = ev {
                self.symbolizer.forget(p.pid);
            }
        }
    }

    /// Distinct (process, stack) pairs named so far.
    pub fn named(&self) -> usize {
        self.named.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_frames_of_this_process_outermost_first() {
        // This test's own process: its mappings and its own functions.
        let pid = std::process::id();
        let mut s = Symbolizer::new();
        assert!(s.refresh(pid));
        let f = names_frames_of_this_process_outermost_first as *const () as u64;
        let g = Symbolizer::name as *const () as u64;
        // Frame 0 (the traced function) is dropped; return addresses point one past a call.
        let frames = s.frames(pid, &[0x1, g + 1, f + 1], g + 1);
        assert_eq!(frames.len(), 2);
        // The immediate caller, when the walk skipped it, is put back innermost.
        let put_back = s.frames(pid, &[0x1, f + 1], g + 1);
        assert_eq!(put_back, frames);
        assert!(
            frames[0].ends_with("names_frames_of_this_process_outermost_first"),
            "{frames:?}"
        );
        assert!(frames[1].contains("Symbolizer::name"), "{frames:?}");
    }

    #[test]
    fn unknown_addresses_and_anonymous_memory_are_named_by_address() {
        // A pid no process has: nothing is read from /proc for it.
        const GONE: u32 = u32::MAX;
        let mut s = Symbolizer::new();
        let maps = parse_maps(
            b"7f0000000000-7f0000001000 r-xp 00000000 00:00 0 \n\
              7f0000002000-7f0000003000 r-xp 00001000 fd:01 42 /nonexistent/libgone.so\n\
              7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]\n",
        )
        .expect("maps");
        s.set_maps(GONE, maps);
        assert_eq!(s.name(GONE, 0x7f00_0000_0010, false), "0x7f0000000010");
        assert_eq!(s.name(GONE, 0x7f00_0000_2010, false), "libgone.so+0x1010");
        assert_eq!(s.name(GONE, 0x7ffd_0000_0011, true), "[vdso]+0x10");
        assert_eq!(s.name(GONE, 0x1234, false), "0x1234");
    }
}
