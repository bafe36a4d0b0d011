#!/usr/bin/env bash
# make test-slurm: the workflow through a real single-node SLURM cluster.
# As root on Debian: installs SLURM and munge when missing, starts a cluster
# with two fake GPUs in a temporary directory, runs tests/slurm/test_slurm.py
# against it, and stops every daemon it started, also on failure or Ctrl-C.
# Anywhere else it says why it skips and exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/slurm/cluster.sh
. tests/slurm/cluster.sh

if ! reason=$(slurm_supported); then
	echo "SKIPPED the SLURM test: it $reason."
	exit 0
fi
slurm_install
state=$(mktemp -d "/tmp/${SLURM_STATE_PREFIX}XXXXXX")
trap 'cluster_stop "$state"; rm -rf "$state"' EXIT
trap 'exit 130' INT TERM
cluster_start "$state"
sinfo
CONJUGACY_SLURM=1 python -m pytest tests/slurm -v -p no:cacheprovider "$@"
