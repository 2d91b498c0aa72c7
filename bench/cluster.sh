#!/usr/bin/env bash
# The cluster path on one machine: `plateflow coordinator` and two `plateflow worker` processes
# over loopback gRPC (shared store and file system), N tasks submitted with
# `plateflow submit --wait --json`, then submitted again (every task cached). Besides each
# client's wall time, the coordinator's own log gives when each run was prepared ("run
# started") and when it was completely finished ("run finished": journal, lock file, results).
#
#   bench/cluster.sh N [KIND] [CPUS]     (KIND noop or true; CPUS slots per worker, default 64/1)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_n_kind_cpus "$@"
need_plateflow

TMP="$(mktemp -d "${TMPDIR:-/tmp}/plateflow-cluster.XXXXXX")"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ "${KEEP:-0}" == 1 ]] || rm -rf "$TMP"
}
trap cleanup EXIT
make_images "$TMP/images" "$N"
write_pipeline "$TMP/bench.yaml" bench-cluster "$KIND"

PORT=$(( 20000 + RANDOM % 20000 ))
ADDR="127.0.0.1:$PORT"
PLATEFLOW_LOG=info "$PLATEFLOW" coordinator --listen "$ADDR" --state "$TMP/state" >"$TMP/coordinator.log" 2>&1 &
COORD=$!
PIDS+=($COORD)
for _ in $(seq 100); do grep -q listening "$TMP/coordinator.log" && break; sleep 0.05; done
for w in 1 2; do
    "$PLATEFLOW" worker --coordinator "http://$ADDR" --cpus "$CPUS" --shared-store --store "$TMP/state/store" \
        --shared-fs --scratch "$TMP/scratch$w" --name "w$w" >"$TMP/worker$w.log" 2>&1 &
    PIDS+=($!)
done
for _ in $(seq 100); do [[ $(grep -c "worker connected" "$TMP/coordinator.log") -ge 2 ]] && break; sleep 0.05; done

echo "# plateflow cluster (coordinator + 2 worker processes, loopback): N=$N kind=$KIND cpus/worker=$CPUS, machine: $(nproc) cores"
printf '%-8s %8s %6s %6s %10s %12s %10s %12s %12s\n' run tasks ran cached submit_s tasks/s elapsed_s prepare_s finished_s
for run in first rerun; do
    t0=$(now)
    "$PLATEFLOW" submit "$TMP/bench.yaml" --coordinator "$ADDR" --wait --json >"$TMP/$run.json" 2>"$TMP/$run.err" \
        || { echo "submit failed:" >&2; tail -20 "$TMP/$run.err" >&2; exit 1; }
    t1=$(now)
    wall=$(elapsed "$t0" "$t1")
    read -r id state el total ran cached < <(jq -r '[.run_id, .state, .elapsed_s, (.steps | map(.total) | add), (.steps | map(.ran) | add), (.steps | map(.cached) | add)] | @tsv' "$TMP/$run.json")
    [[ "$state" == succeeded ]] || { echo "run state: $state" >&2; exit 1; }
    # Wait for the coordinator to log the end of the run (it may come after the client's exit).
    for _ in $(seq 600); do grep -q "run finished.*run=$id " <(sed 's/\x1b\[[0-9;]*m//g' "$TMP/coordinator.log") && break; sleep 0.05; done
    ts() { sed 's/\x1b\[[0-9;]*m//g' "$TMP/coordinator.log" | grep "$1" | grep "run=$id " | head -1 | awk '{ print $1 }' \
        | { read -r t; date -d "$t" +%s.%N; }; }
    prep=$(elapsed "$t0" "$(ts 'run started')")
    fin=$(elapsed "$t0" "$(ts 'run finished')")
    printf '%-8s %8d %6d %6d %10s %12s %10.3f %12s %12s\n' "$run" "$total" "$ran" "$cached" "$wall" \
        "$(rate "$total" "$wall")" "$el" "$prep" "$fin"
done
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$COORD/status")
rss=$(awk '/VmRSS/ { print $2 }' "/proc/$COORD/status")
echo "coordinator process: peak RSS $(( hwm / 1024 )) MiB ($(( hwm * 1024 / N )) B/task), RSS now $(( rss / 1024 )) MiB"
echo "# submit_s: the client's wall time; prepare_s / finished_s: from submit to the coordinator's"
echo "# 'run started' (validated, listed, hashed, planned) and 'run finished' (lock file and journal written)"
