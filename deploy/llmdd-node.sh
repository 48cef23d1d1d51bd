#!/bin/sh
# Node entrypoint of the llmdd image: keeps `llmdd ARGS...` running on a node.
#
# `llmdd attach --all` traces the NCCL/CUDA processes present when it starts and those that
# start later, and keeps running when none is left; should it exit (an error, a crash), it is
# started again after LLMDD_RETRY_S seconds (default 10). SIGTERM/SIGINT are passed on to
# llmdd, which detaches every probe before exiting. LLMDD_BIN names another binary.
set -u
retry="${LLMDD_RETRY_S:-10}"
bin="${LLMDD_BIN:-/usr/local/bin/llmdd}"
child=
stop() {
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null
        wait "$child"
    fi
    exit 0
}
trap stop TERM INT
while :; do
    "$bin" "$@" &
    child=$!
    wait "$child"
    status=$?
    child=
    echo "llmdd-node: llmdd exited with status $status; starting again in ${retry}s" >&2
    sleep "$retry" &
    wait $!
done
