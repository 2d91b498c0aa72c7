#!/bin/bash
# Start the plateflow coordinator on a login (head) node, in the background, with its state
# on a filesystem the compute nodes mount. It writes the cluster token to STATE/token
# (owner-only) and, with TLS, prints the certificate fingerprint workers pin.
#
#   deploy/slurm/plateflow-coordinator.sh /shared/lab/plateflow-state /shared/lab/projects
#   deploy/slurm/plateflow-coordinator.sh STATE ROOT --slurm-partition cpu --slurm-cpus 16
#
# Arguments after ROOT go to `plateflow coordinator` (e.g. automatic allocation:
# --slurm-partition, --slurm-time, --slurm-max-allocations, --slurm-arg=--gres=gpu:1).
# Environment: PLATEFLOW (binary), PLATEFLOW_PORT (7700), PLATEFLOW_HTTP (127.0.0.1:7701).
set -euo pipefail
STATE=${1:?usage: plateflow-coordinator.sh STATE_DIR PROJECTS_ROOT [coordinator options]}
ROOT=${2:?usage: plateflow-coordinator.sh STATE_DIR PROJECTS_ROOT [coordinator options]}
shift 2
PLATEFLOW=${PLATEFLOW:-plateflow}
PORT=${PLATEFLOW_PORT:-7700}
mkdir -p "$STATE"
chmod 700 "$STATE"
nohup "$PLATEFLOW" coordinator \
  --listen "0.0.0.0:$PORT" --advertise "$(hostname -f):$PORT" \
  --state "$STATE" --allow-root "$ROOT" --tls-self-signed \
  --http "${PLATEFLOW_HTTP:-127.0.0.1:7701}" "$@" \
  > "$STATE/coordinator.log" 2>&1 &
echo $! > "$STATE/coordinator.pid"
# Wait for it to announce itself, then show how workers and clients connect.
for _ in $(seq 50); do
  grep -q "listening on" "$STATE/coordinator.log" 2>/dev/null && break
  sleep 0.2
done
cat "$STATE/coordinator.log"
echo "workers: PLATEFLOW_TOKEN_FILE=$STATE/token PLATEFLOW_TLS_FINGERPRINT=<printed above> \\"
echo "         sbatch deploy/slurm/plateflow-workers.sbatch $(hostname -f):$PORT"
echo "stop:    kill \$(cat $STATE/coordinator.pid)"
