#!/usr/bin/env bash
# Assemble a build-time CUDA 13 toolkit from NVIDIA's PyPI wheels, without a GPU, a driver or
# root: DIR/{bin,include,lib64,nvvm} laid out like /usr/local/cuda, enough for candle's kernels
# (nvcc -> PTX and a static library) and for linking the `cuda` build of plateflow.
#
#   deploy/cuda/toolkit.sh DIR            # download + assemble + self-test, then print the env
#   source DIR/env.sh                     # the exports (also printed at the end)
#
# Environment:
#   CUDA_COMPUTE_CAP   GPU architecture written into DIR/env.sh (default 80; see README.md)
#   WHEELHOUSE         a folder of already downloaded wheels: install from it, offline
#   PYTHON             the Python whose pip is used (default python3)
#   NVCC_VERSION ...   each pin below can be overridden from the environment
#
# Needs: python3 with pip, a host C++ compiler for nvcc (g++; Debian: apt-get install g++),
# about 1.3 GB of disk in DIR (cuBLASLt alone is 540 MB).
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[ $# -eq 1 ] || usage 2
case "$1" in -h|--help) usage 0 ;; esac

# CUDA 13.0 (update 2) everywhere: the oldest CUDA 13 keeps the binary loadable on any CUDA 13
# node (the driver must be at least as new as the nvcc that wrote the PTX, >= 580 for 13.0),
# and cudarc 0.19 knows 13.0-13.4 (it refuses the 13.5 nvcc). All wheels install into the
# same nvidia/cu13/ tree.
NVCC_VERSION=${NVCC_VERSION:-13.0.88}          # nvidia-cuda-nvcc: nvcc, ptxas, fatbinary, nvlink
CRT_VERSION=${CRT_VERSION:-13.0.88}            # nvidia-cuda-crt: include/crt (nvcc's host headers)
NVVM_VERSION=${NVVM_VERSION:-13.0.88}          # nvidia-nvvm: cicc, libdevice
RUNTIME_VERSION=${RUNTIME_VERSION:-13.0.96}    # nvidia-cuda-runtime: cuda_runtime.h, cuda.h, libcudart.so.13
CCCL_VERSION=${CCCL_VERSION:-13.0.85}          # nvidia-cuda-cccl: include/cccl (cub, thrust, libcu++)
NVRTC_VERSION=${NVRTC_VERSION:-13.0.88}        # nvidia-cuda-nvrtc: libnvrtc.so.13
CUBLAS_VERSION=${CUBLAS_VERSION:-13.0.2.14}    # nvidia-cublas: libcublas.so.13, libcublasLt.so.13
CURAND_VERSION=${CURAND_VERSION:-10.4.0.35}    # nvidia-curand: libcurand.so.10 (CUDA 13.0)
COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
PYTHON=${PYTHON:-python3}

PACKAGES=(
  "nvidia-cuda-nvcc==$NVCC_VERSION"
  "nvidia-cuda-crt==$CRT_VERSION"
  "nvidia-nvvm==$NVVM_VERSION"
  "nvidia-cuda-runtime==$RUNTIME_VERSION"
  "nvidia-cuda-cccl==$CCCL_VERSION"
  "nvidia-cuda-nvrtc==$NVRTC_VERSION"
  "nvidia-cublas==$CUBLAS_VERSION"
  "nvidia-curand==$CURAND_VERSION"
)

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'toolkit.sh: %s\n' "$*" >&2; exit 1; }

mkdir -p "$1"
DIR=$(cd "$1" && pwd)
WHEELS="$DIR/wheels"
ROOT="$WHEELS/nvidia/cu13"

# --- host compiler --------------------------------------------------------------------------
CXX_HOST=${NVCC_CCBIN:-$(command -v g++ || command -v c++ || true)}
[ -n "$CXX_HOST" ] || die "nvcc needs a host C++ compiler: apt-get install g++ (or set NVCC_CCBIN)"
command -v cc >/dev/null || die "no C compiler (cc) for the libcuda stub: apt-get install gcc"

# --- 1. the wheels ----------------------------------------------------------------------------
STAMP="$WHEELS/.pins"
PINS=$(printf '%s\n' "${PACKAGES[@]}")
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PINS" ] && [ -x "$ROOT/bin/nvcc" ]; then
  say "wheels already in $WHEELS"
else
  "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (apt-get install python3-pip)"
  rm -rf "$WHEELS"
  src=()
  [ -n "${WHEELHOUSE:-}" ] && src=(--no-index --find-links "$WHEELHOUSE")
  say "pip install --target $WHEELS ${PACKAGES[*]}"
  # --no-deps: the pins above are the whole closure; nvcc's own requirements are unpinned.
  "$PYTHON" -m pip install --disable-pip-version-check --no-deps --no-compile \
    --only-binary=:all: \
    "${src[@]}" --target "$WHEELS" "${PACKAGES[@]}"
  [ -x "$ROOT/bin/nvcc" ] || die "no $ROOT/bin/nvcc after pip install"
  printf '%s\n' "$PINS" >"$STAMP"
fi

# --- 2. a CUDA_HOME-like tree ------------------------------------------------------------------
say "assembling $DIR/{bin,include,nvvm,lib64}"
for d in bin include nvvm; do
  rm -rf "${DIR:?}/$d"
  ln -s "wheels/nvidia/cu13/$d" "$DIR/$d"
done
# lib64: the wheels ship only the run-time names (libcublas.so.13); the linker wants the
# development names (libcublas.so) too.
rm -rf "$DIR/lib64" "$DIR/lib"
mkdir -p "$DIR/lib64/stubs"
ln -s lib64 "$DIR/lib"
for f in "$ROOT"/lib/*; do
  base=$(basename "$f")
  ln -s "../wheels/nvidia/cu13/lib/$base" "$DIR/lib64/$base"
  case "$base" in
    *.alt.so*) ;;                                    # nvrtc's alternative build: no dev name
    lib*.so.*) dev=${base%%.so.*}.so
               [ -e "$DIR/lib64/$dev" ] || ln -s "$base" "$DIR/lib64/$dev" ;;
  esac
done

# libcuda.so belongs to the driver, which a build machine does not have. Like the toolkit's
# lib64/stubs/libcuda.so, build a stub exporting every driver entry point of this cuda.h
# (names after cuda.h's _v2/_v3 renaming, i.e. the link names), SONAME libcuda.so.1, so that
# the binary links here and binds to the real driver on the GPU node. Never put stubs/ on
# LD_LIBRARY_PATH: every call in it returns CUDA_ERROR_STUB_LIBRARY (34).
say "libcuda stub"
names=$(printf '#include <cuda.h>\n' |
  cc -E -P -x c -I"$DIR/include" - |
  grep -oE '\bCUresult[[:space:]]+cu[A-Za-z0-9_]+[[:space:]]*\(' |
  sed -E 's/^CUresult[[:space:]]+//; s/[[:space:]]*\($//' | sort -u)
# Entry points cudarc binds that this cuda.h may spell differently (older _v names kept by
# the driver's ABI): add them if a cudarc source is at hand, a stub symbol too many is harmless.
extra=""
for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs; do
  [ -f "$f" ] || continue
  extra="$extra"$'\n'$(grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$f" | sed 's/^pub unsafe fn //')
done
all=$(printf '%s\n%s\n' "$names" "$extra" | grep -E '^cu[A-Za-z0-9_]+$' | sort -u)
[ "$(printf '%s\n' "$names" | wc -l)" -gt 300 ] || die "found too few driver functions in cuda.h"
{
  echo '/* generated by deploy/cuda/toolkit.sh: link-time stand-in for the driver library */'
  printf '%s\n' "$all" | sed 's/.*/int &(void) { return 34; }/'
} >"$DIR/lib64/stubs/libcuda_stub.c"
cc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$DIR/lib64/stubs/libcuda.so" \
  "$DIR/lib64/stubs/libcuda_stub.c" -w
printf '%s\n' "$NVCC_VERSION" >"$DIR/version.txt"

# --- 3. self-test -------------------------------------------------------------------------------
say "self-test: nvcc"
NVCC="$DIR/bin/nvcc"
"$NVCC" --version
vline=$("$NVCC" --version | grep -oE 'release [0-9]+\.[0-9]+' | head -1)
CUDA_MM=${vline#release }
CUDARC_VER="${CUDA_MM%%.*}0${CUDA_MM#*.}0"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cat >"$T/axpy.cu" <<'EOF'
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cub/cub.cuh>
extern "C" __global__ void axpy(float a, const float *x, float *y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}
int main() { float *d; return cudaMalloc(&d, 4) == cudaSuccess ? 0 : 1; }
EOF
arch="sm_${COMPUTE_CAP}"
ccbin=(-ccbin "$CXX_HOST")
"$NVCC" "${ccbin[@]}" -std=c++17 -arch="$arch" -ptx "$T/axpy.cu" -o "$T/axpy.ptx"
grep -q '.entry axpy' "$T/axpy.ptx" || die "no axpy entry in the PTX"
"$NVCC" "${ccbin[@]}" -std=c++17 -gencode="arch=compute_${COMPUTE_CAP},code=sm_${COMPUTE_CAP}" \
  -Xcompiler -fPIC -c "$T/axpy.cu" -o "$T/axpy.o"
"$NVCC" "${ccbin[@]}" -std=c++17 -arch="$arch" "$T/axpy.cu" -o "$T/axpy" -L"$DIR/lib64" -lcudart
printf 'int cuInit(unsigned); int main(void){ return cuInit(0) == 34 ? 0 : 1; }\n' >"$T/drv.c"
cc "$T/drv.c" -o "$T/drv" -L"$DIR/lib64/stubs" -lcuda
ln -s "$DIR/lib64/stubs/libcuda.so" "$T/libcuda.so.1"
LD_LIBRARY_PATH="$T" "$T/drv" || die "the libcuda stub does not answer"
say "ok: PTX ($(wc -l <"$T/axpy.ptx") lines), object, a linked executable, libcuda stub ($(printf '%s\n' "$all" | wc -l) symbols)"

# --- 4. the environment ------------------------------------------------------------------------
cat >"$DIR/env.sh" <<EOF
# generated by deploy/cuda/toolkit.sh: CUDA $CUDA_MM from PyPI wheels, for building only
export CUDA_HOME="$DIR"
export CUDA_ROOT="$DIR"
export CUDA_PATH="$DIR"
export CUDA_TOOLKIT_ROOT_DIR="$DIR"
export NVCC="$DIR/bin/nvcc"
export NVCC_CCBIN="\${NVCC_CCBIN:-$CXX_HOST}"
export CUDARC_CUDA_VERSION="\${CUDARC_CUDA_VERSION:-$CUDARC_VER}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-$COMPUTE_CAP}"
export PATH="$DIR/bin:\$PATH"
export LD_LIBRARY_PATH="$DIR/lib64\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF
say "environment (also in $DIR/env.sh):"
cat "$DIR/env.sh"
