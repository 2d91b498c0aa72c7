#!/usr/bin/env bash
# Build `plateflow --features cuda` on a machine without a GPU, against the toolkit that
# deploy/cuda/toolkit.sh assembled, into its own target directory (target/cuda) so the CPU
# build is left alone. Then report the binary and the CUDA libraries it needs on the GPU node.
#
#   deploy/cuda/build-worker.sh [DIR] [-- extra cargo args]
#
# DIR is toolkit.sh's folder (or set CUDA_TOOLKIT_DIR). Environment:
#   CUDA_COMPUTE_CAP     the GPU architecture candle's kernels are built for (DIR/env.sh: 80)
#   CARGO_TARGET_DIR     default <repo>/target/cuda
#   PLATEFLOW_CUDA_RPATH colon-separated run-time search path baked into the binary, e.g.
#                        /usr/local/cuda/lib64 (default: none; use LD_LIBRARY_PATH on the node)
#   CUDAFORGE_THREADS    parallel nvcc jobs for candle's kernels (default: most cores)
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
DIR=${CUDA_TOOLKIT_DIR:-}
case "${1:-}" in
  -h|--help) usage 0 ;;
  --|"") ;;
  *) DIR=$1; shift ;;
esac
[ "${1:-}" = "--" ] && shift
[ -n "$DIR" ] || { echo "build-worker.sh: which toolkit? give DIR or set CUDA_TOOLKIT_DIR (deploy/cuda/toolkit.sh DIR makes one)" >&2; usage 2; }
[ -f "$DIR/env.sh" ] || { echo "build-worker.sh: no $DIR/env.sh: run deploy/cuda/toolkit.sh $DIR first" >&2; exit 1; }
DIR=$(cd "$DIR" && pwd)

REPO=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck disable=SC1091
. "$DIR/env.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target/cuda}
if [ -n "${PLATEFLOW_CUDA_RPATH:-}" ]; then
  export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,-rpath,$PLATEFLOW_CUDA_RPATH"
fi

echo "== nvcc: $("$NVCC" --version | grep -o 'release [0-9.]*, V[0-9.]*')," \
     "CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
echo "== cargo build --release -p plateflow --features cuda (target dir $CARGO_TARGET_DIR)"
start=$(date +%s)
(cd "$REPO" && cargo build --release --locked -p plateflow --features cuda "$@")
secs=$(( $(date +%s) - start ))

BIN="$CARGO_TARGET_DIR/release/plateflow"
[ -x "$BIN" ] || { echo "build-worker.sh: no $BIN" >&2; exit 1; }
echo
echo "== built in ${secs}s: $BIN ($(du -h "$BIN" | cut -f1))"
echo "== libraries it needs (readelf NEEDED):"
readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p'
echo "== ldd here (libcuda.so.1 is the driver's: 'not found' is expected on a machine without a GPU):"
ldd "$BIN" | sed 's/^/  /' || true

# Start it once against the stub driver: proves every CUDA library resolves and the binary runs.
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
ln -s "$DIR/lib64/stubs/libcuda.so" "$T/libcuda.so.1"
echo "== smoke test with the stub driver: $(LD_LIBRARY_PATH="$T:$LD_LIBRARY_PATH" "$BIN" --version)"

cat <<EOF

On the GPU node (CUDA 13 libraries + a driver >= 580):
  export LD_LIBRARY_PATH=/usr/local/cuda-13.0/lib64:\$LD_LIBRARY_PATH   # libcudart.so.13, libcublas(Lt).so.13, libcurand.so.10
  ldd ./plateflow | grep 'not found'     # should print nothing
  ./plateflow doctor                     # the gpus line should say the build is "cuda"
EOF
