#!/bin/bash
# Peak memory of an `illumination` step over one plate of N 16-bit images of SIZE² pixels
# (vignetted noise), and its run time: the estimate reads 64 images at a time, so the peak
# should not grow with N. The images are written with numpy (target/bench-venv).
#   bench/illumination_memory.sh [N=256] [SIZE=1024]
source "$(dirname "$0")/lib.sh"
n="${1:-256}"; size="${2:-1024}"
need_plateflow
bench_venv numpy
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/in"
"$BENCH_VENV/bin/python" - "$dir/in" "$n" "$size" <<'PY'
import struct, sys
import numpy as np
out, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:size, 0:size]
c = size / 2
vignette = 1 - 0.4 * ((xx - c) ** 2 + (yy - c) ** 2) / c**2
for i in range(n):
    a = (300 * vignette + rng.normal(0, 10, (size, size))).clip(0, 65535).astype("<u2")
    data = a.tobytes()
    tags = [(256, 3, 1, size), (257, 3, 1, size), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, 8), (277, 3, 1, 1), (278, 3, 1, size), (279, 4, 1, len(data))]
    b = b"II*\0" + struct.pack("<I", 8 + len(data)) + data + struct.pack("<H", len(tags))
    b += b"".join(struct.pack("<HHII", *t) for t in tags) + struct.pack("<I", 0)
    with open(f"{out}/P1_W{i:04d}_DNA.tif", "wb") as f:
        f.write(b)
PY
sync
cat > "$dir/illum.yaml" <<'YAML'
pipeline: illumination-memory
data:
  images: in
  pattern: "{plate}_{well}_{channel}.tif"
steps:
  flat: {uses: illumination, for_each: plate, inputs: [images]}
YAML
# Peak resident memory of the run and its worker processes, polled every 0.05 s.
"$PLATEFLOW" run "$dir/illum.yaml" > "$dir/out.log" 2>&1 &
pid=$!
peak=0
while kill -0 $pid 2>/dev/null; do
  for p in $pid $(pgrep -f " worker"); do
    h=$(awk '/VmHWM/ {print $2}' /proc/$p/status 2>/dev/null || true)
    [ -n "$h" ] && [ "$h" -gt "$peak" ] && peak=$h
  done
  sleep 0.05
done
wait $pid || { cat "$dir/out.log"; exit 1; }
echo "$n images of ${size}² ($((n * size * size * 2 / 1048576)) MiB): peak RSS $((peak / 1024)) MiB, $(grep -o 'succeeded in [0-9.]*s' "$dir/out.log")"
