#!/usr/bin/env bash
# The nucleus U-Net on a GPU node, in one call sized for a short lease: candidate networks
# trained side by side on the DSB training images for a fixed wall-clock budget, then the
# CPU/CUDA parity and speed checks (gpu_check) and the shipped model's inference on the GPU
# over the DSB validation fifth. Weights come back to be chosen on the tuning sets elsewhere.
#
#   bench/gpu_nuclei.sh BIN_DIR DATA_DIR OUT_DIR [SECONDS]
#
# BIN_DIR   the cuda builds of the examples `nuclei` and `gpu_check`
#           (CARGO_TARGET_DIR=target/cuda cargo build --release -p plateflow-learn
#           --features cuda --example nuclei --example gpu_check, against deploy/cuda/toolkit.sh)
# DATA_DIR  a folder holding dsb2018-nuclei/ (a copy of ../shared/data's) and the starting
#           weights the candidates name (w16-gpu.safetensors: width 16 after 804 steps on an
#           H200, BENCHMARKS.md "the nucleus U-Net on a GPU", SHA-256 dce59bc4…; w14-cpu.safetensors:
#           width 14 after an hour on 2 CPU cores, BENCHMARKS.md "why the network stays small",
#           /work/exp/s38/w14.safetensors in the session that made it); a candidate whose
#           file is absent is skipped
# OUT_DIR   where the candidates' weights, their logs, gpu_check.json and score.txt go
# SECONDS   training budget per candidate (default 400); all candidates share the GPU
set -uo pipefail
BIN=$(realpath "$1")
export PLATEFLOW_SHARED_DATA=$(realpath "$2")
OUT=$(mkdir -p "$3" && realpath "$3")
SECS=${4:-400}
LOGS=$(mktemp -d)

# The CUDA 13 libraries: the toolkit's, else PyTorch's wheels.
for d in /usr/local/cuda-13.0/lib64 /usr/local/cuda/lib64 \
  "$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)/nvidia/cu13/lib"; do
  [ -e "$d/libcublas.so.13" ] && { export LD_LIBRARY_PATH=$d:${LD_LIBRARY_PATH:-}; break; }
done
nvidia-smi -L
if ldd "$BIN/nuclei" | grep 'not found'; then echo "libraries missing (above)"; exit 1; fi

# name width init lr: each trains on cuda:0 with 3 of the node's cores making its crops; an
# init that is a file in DATA_DIR starts from it. The lease of 2026-12-04 (BENCHMARKS.md)
# found widths 8-12 trained on from the shipped weights stuck at the shipped level, width 16
# from scratch at it within 804 steps, and the GPU's step, not crop making, setting the pace:
# so wider networks, larger batches (NUCLEI_BATCH, default 128), and width 16 continued from
# that lease's weights (w16-gpu.safetensors, the `w16-scratch` it returned). The networks
# score no better on their training images than held out (F1 0.895 against 0.88-0.91), so
# the question is whether capacity trained long enough helps: width 14, which fits the CPU
# speed target since the up-convolution by phases, continued from its CPU hour, beside widths
# 16-32 that show how far width goes (above 16 they are too slow to ship). At most five: a
# lease returns at most 8 files (the weights, train.log, gpu_check.json, score.txt), and
# 5 x 3 crop threads fit the node's 16 cores.
candidates=(
  "w16-gpu 16 w16-gpu.safetensors 1e-3"
  "w14-cpu 14 w14-cpu.safetensors 5e-4"
  "w16-scratch 16 - 2e-3"
  "w24-scratch 24 - 2e-3"
  "w32-scratch 32 - 2e-3"
)
BATCH=${NUCLEI_BATCH:-128}
pids=()
for c in "${candidates[@]}"; do
  read -r name width init lr <<<"$c"
  [ -e "$PLATEFLOW_SHARED_DATA/$init" ] && init=$PLATEFLOW_SHARED_DATA/$init
  if [[ $init == *.safetensors && ! -e $init ]]; then echo "skipped $name: no $init"; continue; fi
  args=(train 100000000 "$OUT/$name.safetensors" "$width" 0 "$init" "$lr")
  RAYON_NUM_THREADS=3 NUCLEI_DEVICE=cuda NUCLEI_SECONDS=$SECS NUCLEI_BATCH=$BATCH NUCLEI_NOISE=0.3 \
    "$BIN/nuclei" "${args[@]}" >"$LOGS/$name.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
for c in "${candidates[@]}"; do
  read -r name _ <<<"$c"
  { echo "== $name"; cat "$LOGS/$name.log"; } >>"$OUT/train.log"
  echo "== $name"; grep -v checkpoint "$LOGS/$name.log" | tail -n 4
done

echo "== gpu_check"
timeout 120 "$BIN/gpu_check" "$OUT/gpu_check.json" 2>&1 | tee "$OUT/score.txt"
echo "== shipped model, network on the GPU, DSB validation (images side by side, 16 cores)"
NUCLEI_DEVICE=cuda timeout 40 "$BIN/nuclei" score shipped validation 2>&1 | tee -a "$OUT/score.txt"
echo "== the same on the node's CPU"
timeout 40 "$BIN/nuclei" score shipped validation 2>&1 | tee -a "$OUT/score.txt"
