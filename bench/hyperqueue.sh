#!/usr/bin/env bash
# HyperQueue running N tasks of `true` (one process each) on this machine, with 2 workers of
# CORES cores each, beside plateflow running the same N tasks (`uses: command`, `run: "true"`,
# 2 local workers of CORES slots each).
#
#   bench/hyperqueue.sh [N] [CORES]      (defaults: 10000, 1)
#
# With an `hq` binary on PATH (HyperQueue is not on crates.io: build it from its GitHub
# repository with `cargo build --release --locked -p hyperqueue --bin hq`) it runs
# `hq server start`, two `hq worker start --cpus CORES`, and `hq submit --array 1-N --wait true`.
# Otherwise it uses the HyperQueue server and worker that PyPI's `hyperqueue` package embeds
# (LocalCluster, started in-process by bench/hq_local.py) from target/bench-venv.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${1:-10000}"
CORES="${2:-1}"
HERE="$(dirname "${BASH_SOURCE[0]}")"

if command -v hq >/dev/null; then
    TMP="$(mktemp -d "${TMPDIR:-/tmp}/hq-bench.XXXXXX")"
    export HQ_SERVER_DIR="$TMP/server"
    cleanup() { hq server stop >/dev/null 2>&1 || true; sleep 0.5; rm -rf "$TMP"; }
    trap cleanup EXIT
    echo "# $(hq --version): N=$N, 2 workers x $CORES cores, machine: $(nproc) cores"
    (cd "$TMP" && hq server start >"$TMP/server.log" 2>&1 &)
    for _ in $(seq 50); do hq server info >/dev/null 2>&1 && break; sleep 0.1; done
    for w in 1 2; do (cd "$TMP" && hq worker start --cpus "$CORES" >"$TMP/worker$w.log" 2>&1 &); done
    for _ in $(seq 100); do
        [[ "$(hq worker list --output-mode quiet 2>/dev/null | wc -l)" -ge 2 ]] && break; sleep 0.1
    done
    t0=$(now)
    (cd "$TMP" && hq submit --array "1-$N" --stdout none --stderr none --wait -- true >"$TMP/submit.log" 2>&1)
    t1=$(now)
    wall=$(elapsed "$t0" "$t1")
    echo "hq (binary, no log files)  tasks=$N submit+run_s=$wall tasks/s=$(rate "$N" "$wall")"
    t0=$(now)
    (cd "$TMP" && hq submit --array "1-$N" --wait -- true >"$TMP/submit2.log" 2>&1)
    t1=$(now)
    wall=$(elapsed "$t0" "$t1")
    echo "hq (binary, log files)     tasks=$N submit+run_s=$wall tasks/s=$(rate "$N" "$wall")"
else
    bench_venv hyperqueue
    echo "# HyperQueue $("$BENCH_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("hyperqueue"))') (PyPI package, embedded server + workers): N=$N, 2 workers x $CORES cores, machine: $(nproc) cores"
    "$BENCH_VENV/bin/python" "$HERE/hq_local.py" "$N" 2 "$CORES" 2>/dev/null | grep '^tasks='
fi

echo "# plateflow, same $N tasks of \`true\`"
"$HERE/dispatch.sh" "$N" true "$CORES"
