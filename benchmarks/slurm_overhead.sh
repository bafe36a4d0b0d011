#!/usr/bin/env bash
# make bench-slurm: what SLURM costs on this machine. Starts the test cluster
# of tests/slurm (root on Debian), then times the same runs locally and through
# profiles/slurm with the test cluster's site profile, each in a fresh copy of
# the project (wall time of the whole `snakemake` command):
#   - one training job alone (condition omd, seed 0);
#   - eight training jobs (seeds 0-7, seeds_per_job 1): locally on 2 cores and
#     on 1, through SLURM in one bundle and unbundled (one SLURM job each);
#   - the same eight seeds in the default blocks of 5 seeds (two jobs);
#   - the default experiment (config/config.yaml), whole.
# The training rows ask for the trajectory stores as targets (training jobs
# only: one rule per block of seeds, train_<condition>_block<k>).
# Prints a Markdown table with the 1-minute load average after each run.
#   bash benchmarks/slurm_overhead.sh
#   bash benchmarks/slurm_overhead.sh --workflow-overhead [ARGS...]
# The second form runs `benchmarks/workflow_overhead.py --slurm ARGS` on the
# test cluster instead (fcn_width_quick through SLURM against its compute floor).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/slurm/cluster.sh
. tests/slurm/cluster.sh
repo=$PWD

overhead=()
if [ "${1:-}" = --workflow-overhead ]; then
	shift
	overhead=(--slurm "$@")
fi
if ! command -v snakemake >/dev/null; then
	echo "snakemake is not on PATH: run \`make bench-slurm\` or activate the venv" >&2
	exit 1
fi
if ! reason=$(slurm_supported); then
	echo "SKIPPED the SLURM benchmark: it $reason."
	exit 0
fi
# One test cluster per machine (fixed ports, /etc/slurm/slurm.conf): cluster_start
# would stop one that another run (make test-slurm) is using. Refuse instead.
if _ours "$SLURM_ETC_CONF"; then
	other=$(dirname "$(readlink "$SLURM_ETC_CONF")")
	if [ -f "$other/pids" ] && xargs -r kill -0 <"$other/pids" 2>/dev/null; then
		echo "a test SLURM cluster of another run is up ($other): try again when it ends" >&2
		exit 1
	fi
fi
slurm_install
state=$(mktemp -d "/tmp/${SLURM_STATE_PREFIX}XXXXXX")
work=$(mktemp -d /tmp/conjugacy-bench.XXXXXX)
# BENCH_KEEP=1 keeps the runs' copies and logs (their folder is printed).
if [ "${BENCH_KEEP:-0}" = 1 ]; then
	echo "runs and logs kept in $work" >&2
	trap 'cluster_stop "$state"; rm -rf "$state"' EXIT
else
	trap 'cluster_stop "$state"; rm -rf "$state" "$work"' EXIT
fi
trap 'exit 130' INT TERM
cluster_start "$state"
if [ ${#overhead[@]} -gt 0 ]; then
	python benchmarks/workflow_overhead.py "${overhead[@]}"
	exit 0
fi

# experiment NAME SEEDS SEEDS_PER_JOB: a config of the omd condition alone.
experiment() {
	printf 'experiment: %s\nseeds: [%s]\nseeds_per_job: %s\nconditions:\n  omd: {system: omd}\n' \
		"$1" "$2" "$3" >"$work/$1.yaml"
}
experiment one 0 1
experiment eight "0, 1, 2, 3, 4, 5, 6, 7" 1
experiment blocks "0, 1, 2, 3, 4, 5, 6, 7" 5
cp config/config.yaml "$work/default.yaml"
one=(results/one/trajectories/omd/seed0.zarr)
eight=(results/eight/trajectories/omd/seed{0..7}.zarr)
blocks=(results/blocks/trajectories/omd/seed{0..7}.zarr)

# time_run NAME ARGS...: wall seconds of `snakemake ARGS` in a fresh copy, its
# training jobs, SLURM jobs and the 1-minute load average when it ended.
time_run() {
	local name=$1 dir start end submitted trainings load
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
	load=$(cut -d' ' -f1 /proc/loadavg)
	submitted=$(grep -c "has been submitted with SLURM jobid" "$work/$name.log" || true)
	# Training jobs: the train_* rows of the first "Job stats" table.
	trainings=$(awk '/^train_[^ ]+ +[0-9]+$/ { n += $2 } /^total / { print n + 0; exit }' \
		"$work/$name.log")
	awk -v n="$name" -v t="$trainings" -v j="$submitted" -v s="$start" -v e="$end" -v l="$load" \
		'BEGIN { printf "| %s | %s | %s | %.0f | %s |\n", n, t, j, e - s, l }'
}

slurm=(--workflow-profile profiles/slurm --profile "$repo/tests/slurm/site")
# The profile's whole group-components key is replaced: repeat the other groups.
unbundled=(--group-components train=1 train_gpu=1 koopman=8)
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| run | training jobs | SLURM jobs | wall s | load after |"
echo "|---|---|---|---|---|"
# Targets first: --configfile takes every word after it.
time_run one-local "${one[@]}" --cores 1 --configfile "$work/one.yaml"
time_run one-slurm "${one[@]}" "${slurm[@]}" --configfile "$work/one.yaml"
time_run eight-local "${eight[@]}" --cores 2 --configfile "$work/eight.yaml"
time_run eight-local-serial "${eight[@]}" --cores 1 --configfile "$work/eight.yaml"
time_run eight-slurm-bundled "${eight[@]}" "${slurm[@]}" --configfile "$work/eight.yaml"
time_run eight-slurm-unbundled "${eight[@]}" "${slurm[@]}" "${unbundled[@]}" \
	--configfile "$work/eight.yaml"
time_run eight-blocks-local "${blocks[@]}" --cores 2 --configfile "$work/blocks.yaml"
time_run eight-blocks-slurm "${blocks[@]}" "${slurm[@]}" --configfile "$work/blocks.yaml"
time_run default-local --cores 2 --configfile "$work/default.yaml"
time_run default-slurm "${slurm[@]}" --configfile "$work/default.yaml"
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
