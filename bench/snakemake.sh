#!/usr/bin/env bash
# Snakemake running N jobs of `true` (one shell process each) with the local executor and
# --cores CORES, beside plateflow running the same N tasks (`uses: command`, `run: "true"`,
# 2 local workers of CORES/2 slots). Snakemake comes from PyPI into target/bench-venv.
#
#   bench/snakemake.sh [N] [CORES]      (defaults: 1000, 2)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${1:-1000}"
CORES="${2:-2}"
bench_venv snakemake
SNAKEMAKE="$BENCH_VENV/bin/snakemake"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/snakemake-bench.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
cat > "$TMP/Snakefile" <<'SMK'
N = int(config["jobs"])

rule all:
    input: expand("out/{i}.done", i=range(N))

rule work:
    output: touch("out/{i}.done")
    shell: "true"
SMK
echo "# snakemake $("$SNAKEMAKE" --version): N=$N --cores $CORES, machine: $(nproc) cores"
t0=$(now)
(cd "$TMP" && "$SNAKEMAKE" --cores "$CORES" --config jobs="$N" >"$TMP/log" 2>&1) \
    || { tail -20 "$TMP/log" >&2; exit 1; }
t1=$(now)
wall=$(elapsed "$t0" "$t1")
echo "snakemake  jobs=$N wall_s=$wall jobs/s=$(rate "$N" "$wall")"
t0=$(now)
(cd "$TMP" && "$SNAKEMAKE" --cores "$CORES" --config jobs="$N" >"$TMP/log2" 2>&1)
t1=$(now)
echo "snakemake  re-run (nothing to do) wall_s=$(elapsed "$t0" "$t1")"

echo "# plateflow, same $N jobs of \`true\`"
"$(dirname "${BASH_SOURCE[0]}")/dispatch.sh" "$N" true $(( CORES / 2 > 0 ? CORES / 2 : 1 ))
