//! CUDA-graph decode: each step is one cudaGraphLaunch whose graph holds the collective, so
//! no NCCL call is visible on the host. A rank that is late every step is still named, from
//! the graph-launch steps matched across ranks, and the finding says so.

#[path = "findings_common.rs"]
mod common;

use common::{assert_within, nothing, run, run_from_init, serial};

#[test]
fn straggler_under_cuda_graphs_is_named_from_graph_launches() {
    let _one = serial();
    let r = run(
        "findings_graph",
        &[
            "--graph",
            "--steps",
            "100",
            "--compute-us",
            "2000",
            "--collective",
            "allreduce:16K",
            "--straggler",
            "2:20:1",
        ],
        &["--quiet"],
        &mut nothing(),
    );
    // No NCCL call reached the host during the measured steps: only graph launches.
    for rt in &r.truth.ranks {
        assert!(
            rt.call_counts
                .keys()
                .all(|f| !f.starts_with("nccl") || f == "ncclCommDestroy"),
            "{:?}",
            rt.call_counts
        );
        assert!(rt.call_counts.get("cudaGraphLaunch").copied().unwrap_or(0) >= 100);
    }
    let f = r.only_finding("straggler");
    assert_eq!(f["culprit"]["pid"], r.pid_of(2), "{}", r.describe());
    assert_eq!(f["source"], "graph-launch steps", "{}", r.describe());
    let lag = f["magnitude"]["value"].as_f64().expect("magnitude");
    assert_within("graph-step lag", lag, 20e6, 0.2);
    eprintln!("graph straggler 2:20:1: lag {:.2} ms", lag / 1e6);
}

/// Graphs made as PyTorch and vLLM make them, by stream capture, with llmdd attached before:
/// each replay is a step named with what its graph holds (the all-reduce, its size and its
/// communicator, for NCCL and for vLLM's custom all-reduce), the captured calls are not
/// taken for collective instances, and the late rank is named from the replays.
#[test]
fn captured_graphs_say_what_each_replay_runs() {
    let _one = serial();
    for (name, extra) in [("nccl", None), ("vllm", Some("--custom-ar"))] {
        let mut args = vec![
            "--capture",
            "--steps",
            "100",
            "--compute-us",
            "2000",
            "--launches",
            "3",
            "--collective",
            "allreduce:64K",
            "--straggler",
            "1:20:1",
        ];
        args.extend(extra);
        let trace =
            std::env::temp_dir().join(format!("llmdd-capture-{name}-{}.json", std::process::id()));
        let trace_arg = trace.to_string_lossy().into_owned();
        let r = run_from_init(
            &format!("findings_graph_capture_{name}"),
            &args,
            &["--quiet", "--trace", &trace_arg],
        );
        let f = r.only_finding("straggler");
        r.assert_culprit(f, 1);
        let graphs = r.report["captured_graphs"]
            .as_array()
            .expect("captured_graphs");
        assert_eq!(graphs.len(), 4, "one executable per rank: {graphs:#?}");
        let comms = r.report["communicators"].as_array().expect("communicators");
        for g in graphs {
            assert!(g["replays"].as_u64().unwrap_or(0) >= 100, "{g:#}");
            assert_eq!(g["launches"], 3, "{g:#}");
            let c = &g["collectives"];
            assert_eq!(c.as_array().map(Vec::len), Some(1), "{g:#}");
            assert_eq!(c[0]["op"], "all-reduce", "{g:#}");
            assert_eq!(c[0]["family"], name, "{g:#}");
            assert_eq!(c[0]["bytes"], 65536, "{g:#}");
            assert_eq!(c[0]["count"], 1, "{g:#}");
            // The communicator it names is one of the report's, of that backend, with no
            // instance from the capture (the captured calls ran nowhere).
            let comm = comms
                .iter()
                .find(|x| x["id"] == c[0]["comm"])
                .unwrap_or_else(|| panic!("communicator {} in the report", c[0]["comm"]));
            assert_eq!(comm["backend"], name, "{comm:#}");
            assert_eq!(comm["instances_finished"], 0, "{comm:#}");
        }
        assert!(r.report["engine_counts"]["captured_calls"].as_u64() >= Some(4 * 4));
        // The timeline's graph launches say what they run: on every rank, every launch from
        // the first labelled one on (those traced before the engine's first look at the
        // graph's replays stay unlabelled).
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&trace).expect("the trace"))
                .expect("the trace is JSON");
        let _ = std::fs::remove_file(&trace);
        let launches: Vec<&serde_json::Value> = doc["traceEvents"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["name"] == "cudaGraphLaunch")
            .collect();
        for rt in &r.truth.ranks {
            let mut mine: Vec<&&serde_json::Value> =
                launches.iter().filter(|e| e["pid"] == rt.pid).collect();
            mine.sort_by(|a, b| a["ts"].as_f64().partial_cmp(&b["ts"].as_f64()).expect("ts"));
            let says = |e: &serde_json::Value| {
                e["args"]["runs"]
                    .as_str()
                    .is_some_and(|s| s.contains("1x all-reduce 64.0 KiB") && s.contains(name))
            };
            let first = mine
                .iter()
                .position(|e| says(e))
                .expect("a labelled launch");
            assert!(
                mine[first..].iter().all(|e| says(e)),
                "rank {}: {mine:#?}",
                rt.rank
            );
            eprintln!(
                "capture {name}: rank {} launches labelled from {first} of {}",
                rt.rank,
                mine.len()
            );
        }
        eprintln!("capture {name}: straggler {}", f["evidence"]);
    }
}
