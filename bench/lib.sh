# Shared helpers for the benchmark drivers in bench/. Sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PLATEFLOW="${PLATEFLOW:-$ROOT/target/release/plateflow}"

need_plateflow() {
    if [[ ! -x "$PLATEFLOW" ]]; then
        echo "building $PLATEFLOW (cargo build --release -p plateflow)" >&2
        (cd "$ROOT" && cargo build --release -p plateflow >&2)
    fi
}

# Seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }

# elapsed START END -> seconds, 3 decimals
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# rate COUNT SECONDS -> per second, integer
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "inf" }'; }

# make_images DIR N: N empty images DIR/Pxxxx/Wyyy.tif, 100 wells a plate (N a multiple of 100,
# or less than 100 for a single plate). Their modification time is an hour ago, as for images
# that came off a microscope earlier: plateflow does not trust the stat cache for files modified
# in the last 2 s (they are hashed on every run), so fresh files would hide the stat cache.
make_images() {
    local dir="$1" n="$2" wells=100 plates
    if (( n < 100 )); then wells=$n; plates=1; else
        (( n % 100 == 0 )) || { echo "N must be a multiple of 100" >&2; exit 2; }
        plates=$(( n / 100 ))
    fi
    mkdir -p "$dir"
    local p
    for (( p = 0; p < plates; p++ )); do
        local pd
        pd="$dir/$(printf 'P%05d' "$p")"
        mkdir -p "$pd"
        if (( wells == 100 )); then
            (cd "$pd" && touch -d '1 hour ago' W{000..099}.tif)
        else
            local w
            for (( w = 0; w < wells; w++ )); do touch -d '1 hour ago' "$pd/$(printf 'W%03d' "$w").tif"; done
        fi
    done
    # Flush the new files now, so that their writeback does not slow the run being measured.
    sync
}

# parse_n_kind_cpus [N] [KIND] [CPUS]: sets N (default 10000), KIND (noop or true) and CPUS
# (task slots per worker: 64 for noop, 1 for true, unless given).
parse_n_kind_cpus() {
    N="${1:-10000}"
    KIND="${2:-noop}"
    case "$KIND" in
        noop) CPUS="${3:-64}" ;;
        true) CPUS="${3:-1}" ;;
        *) echo "KIND is noop or true" >&2; exit 2 ;;
    esac
}

# write_pipeline FILE NAME KIND: a one-step pipeline, one task per image (`for_each: well`),
# of KIND noop (labelled with the directory's name, so every benchmark starts uncached) or
# true (`uses: command`, `run: "true"`: one real process per task).
write_pipeline() {
    local file="$1" name="$2" kind="$3" step
    if [[ "$kind" == noop ]]; then
        step="    uses: noop
    with: {label: \"$(basename "$(dirname "$file")")\"}"
    else
        step="    uses: command
    with: {run: \"true\"}"
    fi
    cat > "$file" <<YAML
pipeline: $name
data:
  images: images
  pattern: "{plate}/{well}.tif"
steps:
  work:
$step
    for_each: well
YAML
}

# Peak resident memory (KiB) of a command, from GNU time when present.
have_gnu_time() { [[ -x /usr/bin/time ]] && /usr/bin/time -f %M true >/dev/null 2>&1; }

# A Python virtual environment for the tools compared against (HyperQueue's Python package,
# Snakemake), made on first use under target/ (ignored by git).
BENCH_VENV="${BENCH_VENV:-$ROOT/target/bench-venv}"
bench_venv() {
    if [[ ! -x "$BENCH_VENV/bin/python" ]]; then
        echo "creating $BENCH_VENV" >&2
        python3 -m venv "$BENCH_VENV" >&2
    fi
    local pkg
    for pkg in "$@"; do
        "$BENCH_VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)" 2>/dev/null \
            || "$BENCH_VENV/bin/pip" install -q "$pkg" >&2
    done
}
