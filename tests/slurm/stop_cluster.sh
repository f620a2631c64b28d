#!/usr/bin/env bash
# Cancels the cluster's jobs, then stops the daemons start_cluster.sh started, by the pids it recorded
# (last started, first stopped), and removes the /etc/slurm/slurm.conf symlink into its state directory.
set -uo pipefail
STATE="${PCAMFLOW_SLURM_DIR:-/tmp/pcamflow-slurm}"
[ -f "$STATE/pids" ] || exit 0

alive() { kill -0 "$1" 2>/dev/null; }
# Jobs still running (a test that failed half-way) are cancelled first, in this cluster only.
export SLURM_CONF="$STATE/slurm.conf"
if timeout 10 scancel --user="$(id -un)" 2>/dev/null; then
    for _ in $(seq 30); do [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
fi
for pid in $(tac "$STATE/pids"); do
    alive "$pid" || continue
    kill -TERM "$pid"
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.2; done
    alive "$pid" && kill -KILL "$pid"
done
rm -f "$STATE/pids"
[ "$(readlink /etc/slurm/slurm.conf)" = "$STATE/slurm.conf" ] && rm -f /etc/slurm/slurm.conf
echo "stopped the cluster in $STATE"
