//! Tests of the whole module against real ELF objects: libc as loaded in this very process,
//! and small libraries built here with gcc (weak aliases, a communicator struct, deleted
//! files), loaded into this process and found again through `/proc/self`.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Command,
};

use llmdd_common::funcs::{self, Family};

use super::{elf, inspect, library, maps, TargetError};

/// A fresh directory for this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llmdd-target-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Compiles `source` (C) into the shared object `dir/name` with gcc -O2.
fn build_so(dir: &Path, name: &str, source: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    let so = dir.join(name);
    std::fs::write(&c, source).unwrap_or_else(|e| panic!("writing {}: {e}", c.display()));
    let out = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-fno-stack-protector", "-o"])
        .arg(&so)
        .arg(&c)
        .output()
        .unwrap_or_else(|e| {
            panic!("running gcc (needed to build test libraries; apt-get install gcc): {e}")
        });
    assert!(
        out.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

/// dlopens `path` into this process for the rest of the test run.
fn dlopen(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: loading a library built by this test; its constructors are trivial.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!h.is_null(), "dlopen {} failed", path.display());
}

const FAKE_NCCL: &str = r#"
struct comm { char pad[0x1234]; int rank; int nranks; };
int pncclAllReduce(const void* s, void* r, unsigned long n, int t, int op, void* comm, void* st) {
    return comm ? 0 : 4;
}
int ncclAllReduce(const void*, void*, unsigned long, int, int, void*, void*)
    __attribute__((weak, alias("pncclAllReduce")));
int pncclSend(const void* s, unsigned long n, int t, int peer, void* comm, void* st) { return 5; }
int ncclSend(const void*, unsigned long, int, int, void*, void*) __attribute__((weak, alias("pncclSend")));
int pncclCommUserRank(const struct comm* c, int* rank) { *rank = c->rank; return 0; }
int ncclCommUserRank(const struct comm*, int*) __attribute__((weak, alias("pncclCommUserRank")));
int pncclCommCount(const struct comm* c, int* count) { *count = c->nranks; return 0; }
int ncclCommCount(const struct comm*, int*) __attribute__((weak, alias("pncclCommCount")));
int pncclGetVersion(int* v) { if (!v) return 4; *v = 22105; return 0; }
int ncclGetVersion(int*) __attribute__((weak, alias("pncclGetVersion")));
int cudaStreamSynchronize(void* s) { return 35; }
"#;

#[test]
fn file_offset_of_malloc_matches_this_process_memory() {
    let name = CString::new("malloc").expect("no NUL");
    // SAFETY: dlsym with a valid C string; the result is only compared and read below.
    let addr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as u64;
    assert_ne!(addr, 0, "dlsym(malloc)");
    let raw = std::fs::read("/proc/self/maps").expect("own maps");
    let mappings = maps::parse_maps(&raw).expect("own maps parse");
    let m = mappings
        .iter()
        .find(|m| m.start <= addr && addr < m.end)
        .expect("malloc is mapped");
    let path = m.path().expect("malloc comes from a file");

    let scan = elf::scan(path, |n| n == "malloc").expect("libc scans");
    let sym = scan.symbols.first().expect("libc exports malloc");
    // What the loader did: mapping offset plus distance into the mapping.
    assert_eq!(
        sym.file_offset,
        m.offset + (addr - m.start),
        "file offset of malloc in {}",
        path.display()
    );
    // And the bytes there are the bytes this process runs.
    let on_disk = elf::read_at(path, sym.file_offset, 32).expect("read libc");
    // SAFETY: addr..addr+32 lies in an executable, readable mapping of libc (checked above
    // for addr; a function body of malloc is longer than 32 bytes).
    let in_memory = unsafe { std::slice::from_raw_parts(addr as *const u8, 32) };
    assert_eq!(on_disk, in_memory);
    assert!(
        scan.build_id.as_ref().is_some_and(|b| !b.is_empty()),
        "libc has a build id"
    );
}

#[test]
fn weak_and_strong_aliases_give_one_probe_point() {
    let dir = scratch("alias");
    let so = build_so(&dir, "libnccl.so.2.21.5", FAKE_NCCL);
    let info = library::analyze(&so).expect("analyses");
    let nccl = info.family(Family::Nccl).expect("NCCL functions found");
    let names: Vec<&str> = nccl.points.iter().map(|p| p.symbol.as_str()).collect();
    assert_eq!(
        names,
        ["ncclAllReduce", "ncclSend"],
        "one point per ncclX/pncclX pair"
    );
    let ar = &nccl.points[0];
    assert_eq!(funcs::spec(ar.func).map(|f| f.name), Some("ncclAllReduce"));
    // The offset is where the code is: scanning for either name gives the same one.
    let strong = elf::scan(&so, |n| n == "pncclAllReduce").expect("scan");
    assert_eq!(strong.symbols[0].file_offset, ar.file_offset);
    // gcc -O2: mov eax, [rdi+0x1234]; mov [rsi], eax.
    let offs = info
        .comm_offsets
        .clone()
        .expect("NCCL object")
        .expect("offsets decode");
    assert_eq!((offs.rank_off, offs.nranks_off), (0x1234, 0x1238));
    assert_eq!(info.nccl_version.as_deref(), Some("2.21.5"));
    let cudart = info
        .family(Family::CudaRuntime)
        .expect("cudart function found");
    assert_eq!(cudart.points.len(), 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn inspect_finds_libraries_loaded_in_a_process_including_deleted_ones() {
    let dir = scratch("inspect");
    let kept = build_so(&dir, "librccl.so.1", FAKE_NCCL);
    let gone = build_so(
        &dir,
        "libcudart.so.12",
        "int cudaLaunchKernel(void) { return 35; }\n",
    );
    dlopen(&kept);
    dlopen(&gone);
    std::fs::remove_file(&gone).expect("delete the loaded library");

    let t = inspect(std::process::id()).expect("this process maps traced libraries");
    assert_eq!(t.pid, std::process::id());
    assert!(!t.comm.is_empty());
    assert!(!t.cmdline.is_empty());
    assert!(t.exe.is_some());

    let rccl = t
        .objects
        .iter()
        .find(|o| o.path == kept)
        .unwrap_or_else(|| panic!("librccl not found in {:#?}", t.objects));
    assert_eq!(rccl.family, Family::Nccl);
    assert_eq!(rccl.label, "rccl");
    assert!(rccl.host_path.starts_with(format!("/proc/{}/root", t.pid)));
    assert_eq!(rccl.points.len(), 2);
    assert_eq!(
        rccl.version.as_deref(),
        Some("2.21.5"),
        "decoded, not from the file name"
    );
    assert!(matches!(rccl.comm_offsets, Some(Ok(_))));
    assert!(rccl.build_id.is_some());
    // The same file also exports a CUDA runtime function: its own object.
    assert!(t
        .objects
        .iter()
        .any(|o| o.path == kept && o.family == Family::CudaRuntime && o.label == "cudart"));

    let cudart = t
        .objects
        .iter()
        .find(|o| o.path == gone)
        .unwrap_or_else(|| panic!("deleted libcudart not found in {:#?}", t.objects));
    assert!(cudart.deleted);
    assert!(cudart
        .host_path
        .starts_with(format!("/proc/{}/map_files", t.pid)));
    assert_eq!(cudart.version.as_deref(), Some("12"));
    assert_eq!(cudart.points.len(), 1);
    assert!(cudart.comm_offsets.is_none());
    // The host path opens the very file: the offset lands on the function's code.
    let code = elf::read_at(&cudart.host_path, cudart.points[0].file_offset, 6).expect("readable");
    assert_eq!(code, [0xb8, 35, 0, 0, 0, 0xc3], "mov eax, 35; ret");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn processes_without_libraries_and_missing_ones_are_clear_errors() {
    let mut child = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawning sleep");
    let pid = child.id();
    // Wait until the child has exec'd sleep (its maps then name the sleep binary).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Started means exec'd and mapped: the name changes at exec, the mappings a moment later.
    let started = || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
            && std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|m| m.lines().any(|l| l.contains("/sleep")))
    };
    while !started() {
        assert!(std::time::Instant::now() < deadline, "sleep did not start");
        std::thread::yield_now();
    }
    let err = inspect(pid).expect_err("sleep maps no NCCL");
    let _ = child.kill();
    let _ = child.wait();
    match &err {
        TargetError::NoSupportedLibrary { pid: p, looked_at } => {
            assert_eq!(*p, pid);
            assert!(*looked_at >= 1, "the sleep binary at least: {looked_at}");
        }
        other => panic!("expected NoSupportedLibrary, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&pid.to_string()) && msg.contains("NCCL"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));

    let missing = inspect(i32::MAX as u32 - 1).expect_err("no such pid");
    assert!(matches!(missing, TargetError::NoSuchProcess { .. }));
    assert!(missing.to_string().contains("no such process"));
}

#[test]
fn threads_are_not_processes() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let _ = tx.send(tid);
        let _ = done_rx.recv();
    });
    let tid = rx.recv().expect("thread id");
    let err = inspect(tid).expect_err("a thread id");
    let _ = done_tx.send(());
    let _ = handle.join();
    assert!(
        matches!(err, TargetError::NotAProcess { pid, tgid } if pid == tid && tgid == std::process::id()),
        "{err:?}"
    );
}

/// A small real shared object to mutate: the smallest of a few every glibc system has.
fn small_elf() -> Vec<u8> {
    ["libdl.so.2", "libutil.so.1", "libc.so.6"]
        .iter()
        .flat_map(|n| {
            [
                "/lib/x86_64-linux-gnu/",
                "/usr/lib/x86_64-linux-gnu/",
                "/lib64/",
            ]
            .map(|d| format!("{d}{n}"))
        })
        .find_map(|p| std::fs::read(p).ok())
        .expect("a glibc shared object on this system")
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 400, failure_persistence: None, ..Default::default() })]

    /// The ELF reader never panics on a damaged object: bytes flipped in its headers (the
    /// file's start) and its section table (its end), and the file cut short. Each symbol it
    /// still returns can be read back.
    #[test]
    fn damaged_objects_never_panic(
        head in proptest::collection::vec((0usize..512, proptest::prelude::any::<u8>()), 0..6),
        tail in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 0..6),
        cut in proptest::option::of(0usize..16384),
    ) {
        let mut bytes = small_elf();
        let len = bytes.len();
        for (at, b) in head {
            bytes[at % len] = b;
        }
        for (back, b) in tail {
            bytes[len - 1 - back % len] = b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.min(len));
        }
        let dir = scratch("damaged");
        let path = dir.join("lib.so");
        std::fs::write(&path, &bytes).expect("writing the damaged object");
        if let Ok(scan) = elf::scan(&path, |_| true) {
            for s in scan.symbols.iter().take(8) {
                let _ = elf::read_at(&path, s.file_offset, 16);
            }
        }
    }
}
