#!/usr/bin/env bash
# Dispatch throughput of plateflow: N tasks through an embedded coordinator and 2 local workers
# over real loopback gRPC (`plateflow run --workers 2`), then the same pipeline again, when
# every task is a cache hit (the no-op re-run).
#
#   bench/dispatch.sh N [KIND] [CPUS]
#     N     number of tasks (a multiple of 100): one task per (plate, well) image, 100 wells a plate
#     KIND  noop (default: the built-in kind that does nothing) or true (`uses: command`,
#           `run: "true"`: one real process per task)
#     CPUS  task slots each of the 2 workers offers (default: 64 for noop, 1 for true)
#
# Prints one line per run: tasks, wall time of the whole command (planning, hashing, dispatch,
# lock file), the run's own elapsed_s (from the start of dispatch, after planning), tasks/s of
# each, and peak RSS. Inputs live in a temporary directory that is removed at the end
# (KEEP=1 keeps it).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_n_kind_cpus "$@"
need_plateflow

TMP="$(mktemp -d "${TMPDIR:-/tmp}/plateflow-dispatch.XXXXXX")"
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$TMP"' EXIT
make_images "$TMP/images" "$N"

write_pipeline "$TMP/bench.yaml" bench-dispatch "$KIND"

echo "# plateflow dispatch: N=$N kind=$KIND workers=2 cpus/worker=$CPUS machine: $(nproc) cores, $(uname -sr)"
echo "# dir: $TMP"
printf '%-8s %8s %6s %6s %10s %12s %10s %12s %10s\n' run tasks ran cached wall_s tasks/s_wall elapsed_s tasks/s_run maxrss_MB
for run in first rerun; do
    t0=$(now)
    /usr/bin/time -f '%M' -o "$TMP/rss.$run" \
        "$PLATEFLOW" run "$TMP/bench.yaml" --workers 2 --cpus "$CPUS" --json --quiet \
        >"$TMP/$run.json" 2>"$TMP/$run.err" || { echo "plateflow run failed:" >&2; tail -20 "$TMP/$run.err" >&2; exit 1; }
    t1=$(now)
    wall=$(elapsed "$t0" "$t1")
    read -r state el total ran cached < <(jq -r '[.state, .elapsed_s, (.steps | map(.total) | add), (.steps | map(.ran) | add), (.steps | map(.cached) | add)] | @tsv' "$TMP/$run.json")
    [[ "$state" == succeeded ]] || { echo "run state: $state" >&2; exit 1; }
    rss=$(awk '{ printf "%.0f", $1 / 1024 }' "$TMP/rss.$run")
    printf '%-8s %8d %6d %6d %10s %12s %10.3f %12s %10s\n' "$run" "$total" "$ran" "$cached" "$wall" \
        "$(rate "$total" "$wall")" "$el" "$(rate "$total" "$el")" "$rss"
done
