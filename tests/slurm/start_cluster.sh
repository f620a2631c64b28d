#!/usr/bin/env bash
# Starts a single-node Slurm cluster (munged, MariaDB, slurmdbd, slurmctld, slurmd) from Debian's
# packages, without systemd, for the tests. Needs root. Prints the state directory on its last line;
# every daemon it started has its pid in $STATE/pids (tests/slurm/stop_cluster.sh stops them).
# Running it again while the cluster is up only prints the state directory.
#
#   PCAMFLOW_SLURM_DIR  state directory (default /tmp/pcamflow-slurm)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
export STATE="${PCAMFLOW_SLURM_DIR:-/tmp/pcamflow-slurm}"
SLURM_CONF_DEFAULT=/etc/slurm/slurm.conf

die() { echo "start_cluster: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (daemons, /etc/slurm/slurm.conf)"
for cmd in munged slurmctld slurmd slurmdbd mariadbd mariadb-install-db sinfo sacct python3; do
    command -v "$cmd" >/dev/null || die "$cmd not found: run tests/install_system_deps.sh"
done

cluster_up() {
    [ -f "$STATE/pids" ] || return 1
    while read -r pid; do kill -0 "$pid" 2>/dev/null || return 1; done <"$STATE/pids"
    SLURM_CONF="$STATE/slurm.conf" sinfo -h -o %t 2>/dev/null | grep -qx idle
}
if cluster_up; then
    echo "$STATE"
    exit 0
fi
[ -f "$STATE/pids" ] && bash "$HERE/stop_cluster.sh" >/dev/null

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "$what not ready after ${limit}s; logs in $STATE/log"
}
record_pid() { cat "$1" >>"$STATE/pids"; }

rm -rf "$STATE"
mkdir -p "$STATE"/{log,ctld,spool,dev,scratch,db}
: >"$STATE/pids"
export CTLD_PORT DBD_PORT DB_PORT SLURMD_PORT
CTLD_PORT=$(free_port) DBD_PORT=$(free_port) DB_PORT=$(free_port) SLURMD_PORT=$(free_port)
touch "$STATE"/dev/{a100,h100}-{0..3}
render() {  # fill ${STATE} and the ports into a template; other $NAMES (for the job scripts) stay
    python3 -c 'import os, string, sys; print(string.Template(sys.stdin.read()).safe_substitute(os.environ), end="")'
}
for name in slurm.conf slurmdbd.conf gres.conf task_prolog.sh epilog.sh; do
    render <"$HERE/$name.in" >"$STATE/$name"
done
chmod 600 "$STATE/slurmdbd.conf"
chmod 755 "$STATE/task_prolog.sh" "$STATE/epilog.sh"
export SLURM_CONF="$STATE/slurm.conf"

# munge: reuse a running munged (e.g. the system's), else start one as user munge, in munge's own
# directories (munged refuses paths that user munge cannot reach, such as pytest's private /tmp dirs).
if ! (munge -n | unmunge) >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged
    wait_for 10 munged sh -c 'munge -n | unmunge'
    record_pid /run/munge/munged.pid
fi

# MariaDB, private to this cluster: its own data directory, bound to 127.0.0.1 on a free port.
mariadb-install-db --no-defaults --datadir="$STATE/db" --user=root --skip-test-db \
    --auth-root-authentication-method=normal >"$STATE/log/mariadb-install.log" 2>&1
mariadbd --no-defaults --datadir="$STATE/db" --user=root --bind-address=127.0.0.1 --port="$DB_PORT" \
    --socket="$STATE/mysqld.sock" --pid-file="$STATE/mysqld.pid" --skip-grant-tables \
    --innodb-buffer-pool-size=32M --log-error="$STATE/log/mariadb.log" </dev/null >/dev/null 2>&1 &
echo $! >>"$STATE/pids"
wait_for 30 MariaDB test -S "$STATE/mysqld.sock"

slurmdbd
wait_for 30 slurmdbd test -s "$STATE/slurmdbd.pid"
record_pid "$STATE/slurmdbd.pid"
wait_for 30 slurmdbd sacctmgr -i show cluster

# The jobstep plugin drops SLURM_CONF before its inner srun: the config must be at the default path.
mkdir -p "$(dirname "$SLURM_CONF_DEFAULT")"
if [ -e "$SLURM_CONF_DEFAULT" ] && [ "$(readlink "$SLURM_CONF_DEFAULT")" != "$SLURM_CONF" ]; then
    [ -L "$SLURM_CONF_DEFAULT" ] || die "$SLURM_CONF_DEFAULT exists and is not our symlink; not touching it"
fi
ln -sfn "$SLURM_CONF" "$SLURM_CONF_DEFAULT"

slurmctld -i
wait_for 30 slurmctld test -s "$STATE/slurmctld.pid"
record_pid "$STATE/slurmctld.pid"
slurmd -N pcamnode
wait_for 30 slurmd test -s "$STATE/slurmd.pid"
record_pid "$STATE/slurmd.pid"
wait_for 60 "node pcamnode" sh -c 'sinfo -h -n pcamnode -o %t | grep -qx idle'

# An account, so the tests can check that the profile passes one from the environment.
sacctmgr -i add account pcamflow Description=tests Organization=tests >/dev/null
sacctmgr -i add user root Account=pcamflow >/dev/null
echo "$STATE"
