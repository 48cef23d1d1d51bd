#!/usr/bin/env bash
# The overhead benchmark's two vLLM-shaped steps on a real GPU, in PyTorch (about 4 minutes;
# nothing fetched, nothing built), one process on GPU 0 with the nccl backend:
#   prefill: eager and host-bound, 80 layers of 12 kernel launches (5 x matmul+gelu, a
#            multiply and an add) and 2 all-reduces each: about 1,000 launches and 160
#            all-reduces per step;
#   decode:  the same layers captured once in a CUDA graph, then per step one graph replay,
#            a device-to-host copy and 10 ms of host time.
# Each shape runs untraced and under llmdd in each mode: the default (1% budget held),
# full (--enforce-budget=false), launches entry-only, launches aggregated. Prints, per
# shape and mode, the mean step time, the slowdown against the untraced run, and llmdd's
# estimate for the job's busiest thread (its report's `overhead`: calibrated estimate and
# range up to the thread's kernel time; calls counted in the kernel added).
#
# Usage: scripts/gpu-overhead.sh [LLMDD_BINARY]   (default target/release/llmdd; OUT= sets
# the folder for logs and outputs; STEPS= measured steps per run, default 200). Exit 0 when
# every run completed. Leaves the GPU's settings alone. Written without a GPU to run it on:
# its first run on one is its test.
set -u
BIN=${1:-target/release/llmdd}
OUT=${OUT:-/tmp/llmdd-gpu-overhead}
STEPS=${STEPS:-200}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidiactl ]; then
    echo "gpu-overhead: no NVIDIA GPU on this machine: nothing to measure"
    exit 0
fi
if [ ! -x "$BIN" ]; then
    echo "gpu-overhead: $BIN is not an executable llmdd (build it: cargo build --release -p llmdd)"
    exit 2
fi

cat >"$OUT/step.py" <<'PY'
import json, os, sys, time
import torch
import torch.distributed as dist

shape, steps, warmup, out, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", str(29600 + os.getpid() % 300))
torch.cuda.set_device(0)
dist.init_process_group("nccl", rank=0, world_size=1)
dev = torch.device("cuda:0")
w = torch.randn(512, 512, device=dev) * 0.01
x0 = torch.randn(8, 512, device=dev)

def layers(x, reduce):
    for _ in range(80):
        for _ in range(5):
            x = torch.nn.functional.gelu(x @ w)
        x = x * 0.5 + 0.1
        if reduce:
            dist.all_reduce(x)
            dist.all_reduce(x)
    return x

if shape == "prefill":
    def step():
        layers(x0, True)
        torch.cuda.synchronize()
else:
    static_in = x0.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        layers(static_in, False)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out = layers(static_in, False)
    def step():
        g.replay()
        static_out.cpu()
        time.sleep(0.010)

step()
torch.cuda.synchronize()
print("READY", flush=True)
while not os.path.exists(go):
    time.sleep(0.02)
times = []
for i in range(warmup + steps):
    t0 = time.perf_counter()
    step()
    if i >= warmup:
        times.append(time.perf_counter() - t0)
json.dump({"mean_step_s": sum(times) / len(times), "steps": len(times)}, open(out, "w"))
dist.destroy_process_group()
PY

MODES=("untraced" "default" "full" "entry" "aggregate")
mode_args() {
    case "$1" in
        default) echo "" ;;
        full) echo "--enforce-budget=false" ;;
        entry) echo "--enforce-budget=false --mode cudart=entry --mode cuda=entry" ;;
        aggregate) echo "--enforce-budget=false --mode cudart=aggregate --mode cuda=aggregate" ;;
    esac
}

# One run: the job, llmdd attached (unless untraced) before the measured steps, both
# ended. Prints "mean_step_s estimate low high" (estimate fields "-" when untraced).
run_one() { # shape mode
    local tag="$1-$2" go="$OUT/go-$1-$2"
    rm -f "$go" "$OUT/result-$tag.json" "$OUT/report-$tag.json"
    # Warm-up steps of about 4 s for the duty cycle to settle (prefill steps are a few ms
    # on a GPU, decode steps about 12 ms).
    local warm=400
    [ "$1" = decode ] && warm=300
    $PY "$OUT/step.py" "$1" "$STEPS" "$warm" "$OUT/result-$tag.json" "$go" \
        >"$OUT/job-$tag.log" 2>&1 &
    local jpid=$!
    for ((i = 0; i < 600; i++)); do
        grep -q '^READY' "$OUT/job-$tag.log" 2>/dev/null && break
        kill -0 $jpid 2>/dev/null || break
        sleep 0.1
    done
    local apid=""
    if [ "$2" != untraced ]; then
        # shellcheck disable=SC2046
        "$BIN" attach --pid "$jpid" --no-tui --quiet --report "$OUT/report-$tag.json" \
            $(mode_args "$2") >"$OUT/attach-$tag.log" 2>&1 &
        apid=$!
        for ((i = 0; i < 120; i++)); do
            grep -q '^llmdd: tracing' "$OUT/attach-$tag.log" 2>/dev/null && break
            kill -0 $apid 2>/dev/null || break
            sleep 0.25
        done
    fi
    touch "$go"
    wait $jpid
    [ -n "$apid" ] && { kill -INT $apid 2>/dev/null; wait $apid; }
    $PY - "$OUT/result-$tag.json" "$OUT/report-$tag.json" "$jpid" <<'PY'
import json, sys
res, rep, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    step = json.load(open(res))["mean_step_s"]
except Exception:
    print("- - - -"); sys.exit(0)
try:
    o = json.load(open(rep))["overhead"]
except Exception:
    print(step, "- - -"); sys.exit(0)
ts = [t for t in o["threads"] if t["pid"] == pid]
agg = sum(a["calibrated_share"] for a in o["aggregated"] if a["pid"] == pid)
if not ts:
    print(step, "- - -"); sys.exit(0)
t = max(ts, key=lambda t: t["calls"])
def plus(d):
    p = d / (1 + d) + agg
    p = min(p, 0.95)
    return p / (1 - p)
print(step, plus(t["estimated_slowdown"]), plus(t["slowdown_low"]), max(t["slowdown_high"], plus(t["estimated_slowdown"])))
PY
}

FAILED=0
printf '%-8s %-10s %12s %10s %12s %16s\n' shape mode "step ms" slowdown "llmdd est." "est. range"
for shape in prefill decode; do
    base=""
    for mode in "${MODES[@]}"; do
        read -r step est lo hi < <(run_one "$shape" "$mode")
        if [ "$step" = "-" ]; then
            FAILED=1
            printf '%-8s %-10s %12s   (failed: see %s)\n' "$shape" "$mode" - "$OUT/job-$shape-$mode.log"
            continue
        fi
        [ "$mode" = untraced ] && base=$step
        $PY - "$shape" "$mode" "$step" "${base:-$step}" "$est" "$lo" "$hi" <<'PY'
import sys
shape, mode, step, base, est, lo, hi = sys.argv[1:]
step, base = float(step), float(base)
pct = lambda v: "-" if v == "-" else "%.1f%%" % (float(v) * 100)
slow = "-" if mode == "untraced" else "%.1f%%" % ((step / base - 1) * 100)
rng = "-" if est == "-" else "%s-%s" % (pct(lo), pct(hi))
print("%-8s %-10s %12.3f %10s %12s %16s" % (shape, mode, step * 1e3, slow, pct(est), rng))
PY
    done
done
exit $FAILED
