//! llmdd's target discovery against the genuine NCCL and CUDA runtime binaries from NVIDIA's
//! PyPI wheels: the communicator offsets decoded from NCCL's machine code, one probe point
//! per `ncclX`/`pncclX` pair, and a live process holding both libraries found by pid.
//!
//! The wheels are downloaded once (see `llmdd_tests::reallibs`). Without network access the
//! tests fail and say so: passing without having looked at the real libraries would claim a
//! coverage they do not have.

use std::{path::PathBuf, time::Duration};

use llmdd::tracee::{self, library};
use llmdd_common::funcs::{Family, FUNCS};
use llmdd_tests::{
    harness::Stream,
    reallibs::{
        real_libs, start_caller, RealLibs, NCCL_NRANKS_OFF, NCCL_RANK_OFF, NCCL_VERSION_CODE,
    },
};

fn libs() -> RealLibs {
    real_libs().unwrap_or_else(|e| {
        panic!("the real NCCL/CUDA runtime libraries are needed and could not be fetched: {e:#}")
    })
}

fn canonical(p: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|e| panic!("canonicalizing {}: {e}", p.display()))
}

#[test]
fn decodes_nccl_communicator_offsets_and_version() {
    let libs = libs();
    let info = library::analyze(&libs.nccl).expect("libnccl.so.2 analyses");
    let offs = info
        .comm_offsets
        .clone()
        .expect("libnccl is an NCCL object")
        .unwrap_or_else(|e| panic!("comm offsets did not decode: {e}"));
    assert_eq!(
        offs.rank_off, NCCL_RANK_OFF,
        "rank offset {:#x}",
        offs.rank_off
    );
    assert_eq!(
        offs.nranks_off, NCCL_NRANKS_OFF,
        "nranks offset {:#x}",
        offs.nranks_off
    );
    assert_eq!(info.nccl_version.as_deref(), Some("2.32.3"));
    assert!(info.build_id.is_some());
}

#[test]
fn one_probe_point_per_nccl_alias_pair() {
    let libs = libs();
    let info = library::analyze(&libs.nccl).expect("libnccl.so.2 analyses");
    let nccl = info.family(Family::Nccl).expect("NCCL functions found");
    assert!(
        info.family(Family::CudaRuntime).is_none(),
        "static cudart in libnccl is not exported"
    );

    // Both names of each pair are exported, at the same address.
    let scan = tracee::elf::scan(&libs.nccl, |n| n.contains("ncc")).expect("scan");
    for f in FUNCS.iter().filter(|f| f.family == Family::Nccl) {
        let points: Vec<_> = nccl.points.iter().filter(|p| p.func == f.id).collect();
        assert_eq!(
            points.len(),
            1,
            "{}: expected exactly one probe point, got {points:?}",
            f.name
        );
        let offsets: Vec<u64> = f
            .symbols
            .iter()
            .map(|s| {
                scan.symbols
                    .iter()
                    .find(|e| e.name == *s)
                    .unwrap_or_else(|| panic!("{s} is not exported by NCCL 2.32.3"))
                    .file_offset
            })
            .collect();
        assert!(
            offsets.iter().all(|&o| o == points[0].file_offset),
            "{}: {offsets:x?}",
            f.name
        );
    }
    // No two points share an offset.
    let mut offs: Vec<u64> = nccl.points.iter().map(|p| p.file_offset).collect();
    offs.sort_unstable();
    offs.dedup();
    assert_eq!(offs.len(), nccl.points.len());
}

#[test]
fn cuda_runtime_exports_and_ptsz_twins() {
    let libs = libs();
    let info = library::analyze(&libs.cudart).expect("libcudart.so.12 analyses");
    assert!(info.family(Family::Nccl).is_none());
    assert!(info.comm_offsets.is_none());
    let cudart = info
        .family(Family::CudaRuntime)
        .expect("cudart functions found");
    let mut launch: Vec<&str> = cudart
        .points
        .iter()
        .filter(|p| FUNCS[p.func as usize].name == "cudaLaunchKernel")
        .map(|p| p.symbol.as_str())
        .collect();
    launch.sort_unstable();
    assert_eq!(
        launch,
        ["cudaLaunchKernel", "cudaLaunchKernel_ptsz"],
        "two bodies, two points"
    );
    for name in [
        "cudaStreamSynchronize",
        "cudaMemcpyAsync",
        "cudaGraphLaunch",
        "cudaMalloc",
    ] {
        assert!(
            cudart.points.iter().any(|p| p.symbol == name),
            "{name} missing"
        );
    }
}

#[test]
fn live_process_with_both_libraries_is_inspected() {
    let libs = libs();
    let mut caller = start_caller(&libs, 3).expect("caller loads the libraries");

    let t = tracee::inspect(caller.pid()).unwrap_or_else(|e| panic!("inspect: {e}"));
    assert_eq!(t.pid, caller.pid());
    assert_eq!(t.comm, "reallib-caller");
    assert!(t.cmdline.iter().any(|a| a == "--iters"));

    let nccl_path = canonical(&libs.nccl);
    let nccl: Vec<_> = t.objects_of(Family::Nccl).collect();
    assert_eq!(nccl.len(), 1, "one NCCL object: {nccl:#?}");
    assert_eq!(nccl[0].path, nccl_path);
    assert_eq!(nccl[0].label, "nccl");
    assert_eq!(nccl[0].version.as_deref(), Some("2.32.3"));
    let offs = nccl[0]
        .comm_offsets
        .clone()
        .expect("NCCL object")
        .expect("decoded");
    assert_eq!(
        (offs.rank_off, offs.nranks_off),
        (NCCL_RANK_OFF, NCCL_NRANKS_OFF)
    );
    let from_file = library::analyze(&libs.nccl).expect("analyses");
    assert_eq!(
        nccl[0].points,
        from_file.family(Family::Nccl).expect("nccl").points
    );

    let cudart: Vec<_> = t.objects_of(Family::CudaRuntime).collect();
    assert_eq!(cudart.len(), 1, "one CUDA runtime object: {cudart:#?}");
    assert_eq!(cudart[0].path, canonical(&libs.cudart));
    assert_eq!(cudart[0].label, "cudart");
    assert!(cudart[0].comm_offsets.is_none());

    caller.send_line("go").expect("start the calls");
    let done = caller
        .wait_line("DONE", Duration::from_secs(60), |s, l| {
            s == Stream::Stdout && l.starts_with("DONE")
        })
        .expect("caller finishes");
    assert!(
        done.contains(&format!("nccl_version={NCCL_VERSION_CODE}")),
        "{done}"
    );
    assert!(
        done.contains("allreduce=4"),
        "ncclInvalidArgument for a null comm: {done}"
    );
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        assert!(
            done.contains("launch=35 sync=35"),
            "cudaErrorInsufficientDriver: {done}"
        );
    }
    let status = caller
        .wait_exit(Duration::from_secs(30))
        .expect("caller exits");
    assert!(status.success(), "{status:?}: {}", caller.transcript());
}
