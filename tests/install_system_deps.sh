#!/usr/bin/env bash
# Installs the Debian packages the tests need, only when one is missing (needs root or sudo).
set -euo pipefail
packages=(chromium slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# On a throwaway CI machine dpkg need not fsync every file it unpacks (much faster; not on a laptop).
fast=()
[ -n "${CI:-}" ] && fast=(-o Dpkg::Options::=--force-unsafe-io)
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${fast[@]}" "${missing[@]}" >/dev/null
