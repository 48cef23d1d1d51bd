#!/usr/bin/env bash
# llmdd on a real GPU node, in one go (about 2-3 minutes; nothing fetched, nothing built):
#   1. a PyTorch job (one process per GPU, torch.distributed with the nccl backend) does
#      NCCL all-reduces of 4 MiB, kernel launches and CUDA-graph replays in a loop;
#   2. llmdd attaches to it by pid for 15 s, before its communicator is created, with NVML
#      context and NCCL's RAS service asked;
#   3. checks: collectives, launches, synchronisations and graph launches from the real
#      libnccl/libcudart/libcuda seen with sane sizes, the communicator mapped by its unique
#      id, no lost events, GPU context, RAS agreeing with llmdd;
#   4. the job's own loop rate while traced and after llmdd left (the tracer's overhead);
#   5. `llmdd loadgen` briefly, with a baseline that `llmdd diff` accepts.
# Prints a table of what was seen. Leaves the GPU's settings alone.
#
# Usage: scripts/gpu-check.sh [LLMDD_BINARY]   (default target/release/llmdd; OUT= sets the
# folder for logs and outputs; LLMDD_ATTACH_ARGS= adds options to the attach, e.g.
# "--mode cudart=aggregate" to compare the loop's overhead). Exit 0 when every check that
# could run passed.
set -u
BIN=${1:-target/release/llmdd}
OUT=${OUT:-/tmp/llmdd-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
declare -a ROWS=()
FAILED=0
row() { # status check detail
    ROWS+=("$(printf '%-5s %-34s %s' "$1" "$2" "$3")")
    [ "$1" = FAIL ] && FAILED=1
    return 0
}
finish() {
    echo
    echo "=== llmdd GPU check ==="
    for r in "${ROWS[@]}"; do echo "$r"; done
    exit $FAILED
}

if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidiactl ]; then
    echo "gpu-check: no NVIDIA GPU on this machine (no nvidia-smi, no /dev/nvidiactl): nothing to check"
    exit 0
fi
if [ ! -x "$BIN" ]; then
    echo "gpu-check: $BIN is not an executable llmdd (build it: cargo build --release -p llmdd)"
    exit 2
fi
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ "$GPUS" -ge 1 ] || GPUS=1
row info "GPUs" "$(nvidia-smi -L 2>/dev/null | head -2 | tr '\n' ' ')"

# NCCL and CUDA runtime of the PyTorch install, for loadgen's run-time loading too.
NCCL_LIB=$($PY - <<'PY' 2>/dev/null
import os
try:
    import nvidia.nccl as n
    print(os.path.join(list(n.__path__)[0], "lib"))
except Exception:
    pass
PY
)
TORCH=$($PY -c 'import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.nccl.version())' 2>&1 | tail -1)
row info "torch, cuda, nccl" "$TORCH"

"$BIN" doctor >"$OUT/doctor.log" 2>&1
DOCTOR=$?
if [ $DOCTOR -ne 0 ]; then
    row FAIL "llmdd doctor" "$(grep -m2 -iE 'error|fail|missing|not' "$OUT/doctor.log" | tr '\n' ' ')"
fi

# ---- 1. the PyTorch job ----
cat >"$OUT/job.py" <<'PY'
import os, sys, time
import torch, torch.distributed as dist
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
torch.cuda.set_device(rank % torch.cuda.device_count())
# llmdd attaches before the communicator exists, so that it sees ncclCommInitRank.
print("READY", os.getpid(), flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
dist.init_process_group("nccl", init_method="file://" + sys.argv[1], rank=rank, world_size=world)
x = torch.ones(1 << 20, device="cuda")            # 4 MiB all-reduce
a = torch.randn(1024, 1024, device="cuda")
dist.all_reduce(x); torch.cuda.synchronize()
s = torch.cuda.Stream()
with torch.cuda.stream(s):
    for _ in range(3):
        b = a @ a
torch.cuda.current_stream().wait_stream(s)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    c = a @ a
    c.mul_(0.5)
torch.cuda.synchronize()
end = time.time() + float(sys.argv[2])
it, t0, n0 = 0, time.time(), 0
while time.time() < end:
    dist.all_reduce(x)
    x.mul_(0.5)
    g.replay()
    torch.cuda.synchronize()
    it += 1
    now = time.time()
    if now - t0 >= 0.5:
        print("RATE %.3f %.1f" % (now, (it - n0) / (now - t0)), flush=True)
        t0, n0 = now, it
dist.destroy_process_group()
print("DONE", it, flush=True)
PY
rm -f "$OUT/rendezvous" "$OUT/go"
PIDS=()
for ((r = 0; r < GPUS; r++)); do
    RANK=$r WORLD_SIZE=$GPUS LOCAL_RANK=$r PYTHONUNBUFFERED=1 \
        timeout 150 $PY "$OUT/job.py" "$OUT/rendezvous" 30 "$OUT/go" >"$OUT/job.$r.log" 2>&1 &
    PIDS+=($!)
done
for ((i = 0; i < 90; i++)); do
    n=$(cat "$OUT"/job.*.log 2>/dev/null | grep -c '^READY' || true)
    [ "$n" -ge "$GPUS" ] && break
    sleep 1
done
JOBPIDS=$(grep -h '^READY' "$OUT"/job.*.log 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
if [ -z "$JOBPIDS" ]; then
    row FAIL "PyTorch job" "did not start: $(tail -3 "$OUT/job.0.log" | tr '\n' ' ')"
else
    row ok "PyTorch job" "pids $JOBPIDS(nccl backend, world $GPUS)"
fi

# ---- 2. llmdd attached to it (before its communicator exists) ----
if [ -n "$JOBPIDS" ]; then
    ARGS=()
    for p in $JOBPIDS; do ARGS+=(--pid "$p"); done
    timeout 90 "$BIN" attach "${ARGS[@]}" --no-tui --duration 15s --report "$OUT/report.json" \
        --dump-events "$OUT/events.jsonl" --trace "$OUT/trace.json" --ras auto \
        ${LLMDD_ATTACH_ARGS:-} \
        >"$OUT/attach.log" 2>&1 &
    APID=$!
    for ((i = 0; i < 60; i++)); do
        grep -q '^llmdd: tracing' "$OUT/attach.log" 2>/dev/null && break
        kill -0 $APID 2>/dev/null || break
        sleep 0.5
    done
    date +%s.%N >"$OUT/attach.start"
    touch "$OUT/go"
    sleep 8
    "$BIN" ras --json >"$OUT/ras.json" 2>"$OUT/ras.err"
    RAS_RC=$?
    wait $APID
    ATTACH_RC=$?
    date +%s.%N >"$OUT/attach.end"
    touch "$OUT/go"
    if [ $ATTACH_RC -ne 0 ]; then
        row FAIL "llmdd attach" "exit $ATTACH_RC: $(grep -m2 'error' "$OUT/attach.log" | tr '\n' ' ')"
    fi
fi
wait "${PIDS[@]}" 2>/dev/null

# ---- 3./4. what was seen, and the overhead ----
if [ -s "$OUT/report.json" ]; then
    $PY - "$OUT" "${RAS_RC:-1}" <<'PY' >"$OUT/checks.txt" 2>&1
import glob, json, statistics, sys
out, ras_rc = sys.argv[1], int(sys.argv[2])
rep = json.load(open(out + "/report.json"))
calls = {}
for p in rep["processes"]:
    for f in p["functions"]:
        calls[f["name"]] = calls.get(f["name"], 0) + f["calls"]
def show(names):
    return ", ".join(f"{n} {calls[n]}" for n in names if calls.get(n))
def check(ok, name, detail):
    print(("ok   " if ok else "FAIL ") + "\t" + name + "\t" + detail)
nccl = ["ncclAllReduce"]
launch = ["cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"]
sync = ["cudaDeviceSynchronize", "cudaStreamSynchronize", "cuCtxSynchronize", "cuStreamSynchronize", "cudaEventSynchronize"]
graph = ["cudaGraphLaunch", "cuGraphLaunch"]
check(calls.get("ncclAllReduce", 0) > 0, "collectives (libnccl)", show(nccl) or "none")
check(any(calls.get(n) for n in launch), "kernel launches", show(launch) or "none")
check(any(calls.get(n) for n in sync), "synchronisations", show(sync) or "none")
check(any(calls.get(n) for n in graph), "CUDA-graph launches", show(graph) or "none")
sizes = set()
for line in open(out + "/events.jsonl"):
    e = json.loads(line)
    if e.get("func") == "ncclAllReduce" and e.get("bytes") is not None:
        sizes.add(e["bytes"])
check(sizes == {4 << 20}, "all-reduce size (4 MiB sent)", f"bytes seen {sorted(sizes)}")
comms = rep["communicators"]
ids = [c["identity"] for c in comms]
check(any(i.get("by") == "unique_id" for i in ids) and all(c["nranks"] for c in comms),
      "communicator by unique id", json.dumps(ids)[:120])
check(rep["events"]["lost"] == 0, "no lost events", f"received {rep['events']['received']}, lost {rep['events']['lost']}")
gpu = [p.get("gpu") for p in rep["processes"] if p.get("gpu")]
check(bool(gpu), "GPU context (NVML)", (f"device {gpu[0]['index']} {gpu[0]['name']}, SM {gpu[0].get('sm_clock_mhz')} MHz, mapped by {gpu[0]['mapped_by']}") if gpu else "none")
log = open(out + "/attach.log").read()
ras_lines = [l for l in log.splitlines() if l.startswith("nccl ras") or l.startswith("  llmdd: communicator")]
if ras_rc == 0:
    ras = json.load(open(out + "/ras.json"))
    agree = any("missing ranks agree" in l for l in ras_lines)
    check(agree, "RAS agrees with llmdd", f"RAS: {len(ras.get('communicators', []))} communicator(s), NCCL {ras.get('nccl_version')}; " + " / ".join(ras_lines)[:160])
else:
    print("info \tNCCL RAS\t" + open(out + "/ras.err").read().strip()[:160])
t0, t1 = float(open(out + "/attach.start").read()), float(open(out + "/attach.end").read())
before, during = [], []
for f in glob.glob(out + "/job.*.log"):
    for l in open(f):
        if l.startswith("RATE"):
            _, t, r = l.split()
            t, r = float(t), float(r)
            # Traced: from 3 s after the start (set-up done) to the stop; untraced: after.
            if t0 + 3 < t < t1 - 1:
                during.append(r)
            elif t > t1 + 1:
                before.append(r)
if before and during:
    b, d = statistics.median(before), statistics.median(during)
    print(f"info \tloop rate untraced / traced\t{b:.1f} / {d:.1f} it/s (medians of 0.5 s windows, after / while attached): {100 * (b - d) / b:+.1f}% slower traced")
else:
    print("info \tloop rate\tnot enough samples")
PY
    while IFS=$'\t' read -r st name detail; do
        row "$(echo "$st" | tr -d ' ')" "$name" "$detail"
    done <"$OUT/checks.txt"
fi

# ---- 5. loadgen ----
export LD_LIBRARY_PATH="${NCCL_LIB:+$NCCL_LIB:}${LD_LIBRARY_PATH:-}"
timeout 150 "$BIN" loadgen --max-bytes 256M --iters 20 --baseline "$OUT/baseline.json" >"$OUT/loadgen.log" 2>&1
LG=$?
if [ $LG -eq 0 ]; then
    PEAK=$(grep -m1 'ncclAllReduce:' "$OUT/loadgen.log")
    row ok "llmdd loadgen" "$(grep -c '^nccl' "$OUT/loadgen.log") sizes; $PEAK"
    "$BIN" diff "$OUT/baseline.json" "$OUT/baseline.json" >"$OUT/diff.log" 2>&1
    DR=$?
    if [ $DR -eq 0 ]; then row ok "diff of the baseline with itself" "exit 0"; else row FAIL "diff of the baseline" "exit $DR"; fi
else
    row FAIL "llmdd loadgen" "exit $LG: $(tail -2 "$OUT/loadgen.log" | tr '\n' ' ')"
fi
finish
