#!/bin/bash
# Runs a command (e.g. `plateflow run P.yaml`) and reports the peak resident memory (VmHWM)
# of its `plateflow worker` processes, polled every 0.1 s.
#   bench/peak_worker_memory.sh target/release/plateflow run DEMO/demo.yaml --force segment
"$@" > /dev/null 2>&1 &
pid=$!
peak=0
while kill -0 $pid 2>/dev/null; do
  for p in $(pgrep -f "plateflow worker"); do
    h=$(awk '/VmHWM/ {print $2}' /proc/$p/status 2>/dev/null)
    [ -n "$h" ] && [ "$h" -gt "$peak" ] && peak=$h
  done
  sleep 0.1
done
echo "peak worker RSS: $((peak/1024)) MiB"
