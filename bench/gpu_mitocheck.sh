#!/usr/bin/env bash
# pipelines/mitocheck.yaml on a GPU node: the same pipeline, with the CNN step asking for a
# GPU (`resources: {gpus: 1}`), run by the cuda build of plateflow (deploy/cuda/). Prints the
# cross-plate scores per fold and overall, and copies the results to OUT.
#
#   bench/gpu_mitocheck.sh PLATEFLOW_CUDA DATA_DIR OUT_DIR
#
# PLATEFLOW_CUDA  target/cuda/release/plateflow from deploy/cuda/build-worker.sh
# DATA_DIR        the mitocheck-crops folder (../shared/data/mitocheck-crops)
# OUT_DIR         where metrics.json, cv.csv, the model card and the report are copied
# The node needs the CUDA 13 libraries on LD_LIBRARY_PATH (deploy/cuda/README.md).
set -euo pipefail
BIN=$(realpath "$1")
DATA=$(realpath "$2")
OUT=$(mkdir -p "$3" && realpath "$3")
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)

# The pipeline as it is, but for where the images are and a GPU for the CNN.
sed -e "s#^  images: .*#  images: $DATA#" \
    -e '/^  cnn:/,/^  report:/ s/^    with:/    resources: {gpus: 1}\n    with:/' \
    "$REPO/pipelines/mitocheck.yaml" > "$WORK/mitocheck.yaml"
grep -q 'resources: {gpus: 1}' "$WORK/mitocheck.yaml"

export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
"$BIN" doctor 2>&1 | grep -iE 'gpu|build' || true
start=$(date +%s)
(cd "$WORK" && "$BIN" run mitocheck.yaml --workers 4) > "$OUT/run.log" 2>&1 || { tail -n 20 "$OUT/run.log"; exit 1; }
tail -n 3 "$OUT/run.log"
echo "== pipeline: $(( $(date +%s) - start )) s"

for step in cnn logistic; do
  mkdir -p "$OUT/$step"
  cp "$WORK/results/$step"/{metrics.json,cv.csv,model_card.md,model.json} "$OUT/$step/" 2>/dev/null || true
  [ -f "$WORK/results/$step/curves.csv" ] && cp "$WORK/results/$step/curves.csv" "$OUT/$step/"
  python3 - "$WORK/results/$step" <<'EOF' || cat "$WORK/results/$step/cv.csv"
import csv, json, sys
d = sys.argv[1]
m = json.load(open(f"{d}/metrics.json"))
w = m["weighted_f1"]
folds = [float(r["weighted_f1"]) for r in csv.DictReader(open(f"{d}/cv.csv"))]
print(f"{d.split('/')[-1]}: weighted F1 {w['value']:.3f} [{w['ci95_by_plate'][0]:.3f}, "
      f"{w['ci95_by_plate'][1]:.3f}], macro {m['macro_f1']['value']:.3f}, shuffled "
      f"{m['shuffled_label_weighted_f1']:.3f}; folds {' '.join(f'{f:.3f}' for f in folds)}")
EOF
done
cp "$WORK/results/report/report.html" "$OUT/" 2>/dev/null || true
