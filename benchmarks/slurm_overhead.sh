#!/usr/bin/env bash
# make bench-slurm: what SLURM costs on this machine. Starts the test cluster
# of tests/slurm (root on Debian), then times the same runs locally and through
# profiles/slurm with the test cluster's site profile, each in a fresh copy of
# the project: one training job alone, eight (locally on 2 cores and on 1, and
# through SLURM in one bundle and unbundled), and the default experiment.
# Prints a Markdown table of wall times.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/slurm/cluster.sh
. tests/slurm/cluster.sh
repo=$PWD

if ! reason=$(slurm_supported); then
	echo "SKIPPED the SLURM benchmark: it $reason."
	exit 0
fi
slurm_install
state=$(mktemp -d "/tmp/${SLURM_STATE_PREFIX}XXXXXX")
work=$(mktemp -d /tmp/conjugacy-bench.XXXXXX)
trap 'cluster_stop "$state"; rm -rf "$state" "$work"' EXIT
trap 'exit 130' INT TERM
cluster_start "$state"

printf 'experiment: one\nseeds: [0]\nconditions:\n  omd: {system: omd}\n' >"$work/one.yaml"
printf 'experiment: eight\nseeds: [0, 1, 2, 3, 4, 5, 6, 7]\nconditions:\n  omd: {system: omd}\n' \
	>"$work/eight.yaml"
cp config/config.yaml "$work/default.yaml"

# time_run NAME ARGS...: wall seconds of `snakemake ARGS` in a fresh copy.
time_run() {
	local name=$1 dir start end submitted
	shift
	dir="$work/$name"
	mkdir -p "$dir"
	cp -r "$repo"/{Snakefile,workflow,src,config,envs,profiles} "$dir"
	start=$(date +%s.%N)
	(cd "$dir" && snakemake "$@" >"$work/$name.log" 2>&1) || {
		tail -n 30 "$work/$name.log"
		return 1
	}
	end=$(date +%s.%N)
	submitted=$(grep -c "has been submitted with SLURM jobid" "$work/$name.log" || true)
	awk -v n="$name" -v j="$submitted" -v s="$start" -v e="$end" \
		'BEGIN { printf "| %s | %s | %.0f |\n", n, j, e - s }'
}

slurm=(--workflow-profile profiles/slurm --profile "$repo/tests/slurm/site")
echo "| run | SLURM jobs | wall s |"
echo "|---|---|---|"
time_run one-local --cores 1 --configfile "$work/one.yaml" --until train
time_run one-slurm "${slurm[@]}" --configfile "$work/one.yaml" --until train
time_run eight-local --cores 2 --configfile "$work/eight.yaml" --until train
time_run eight-local-serial --cores 1 --configfile "$work/eight.yaml" --until train
time_run eight-slurm-bundled "${slurm[@]}" --configfile "$work/eight.yaml" --until train
time_run eight-slurm-unbundled "${slurm[@]}" --configfile "$work/eight.yaml" --until train \
	--group-components train=1
time_run default-local --cores 2 --configfile "$work/default.yaml"
time_run default-slurm "${slurm[@]}" --configfile "$work/default.yaml"
