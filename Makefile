# Quick start: `make run` (set up and run the default experiment), `make test`.
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
PYTHON ?= python3
# Jobs call `python -m conjugacy`: the venv's python must come first.
export PATH := $(BIN):$(PATH)

.PHONY: install run test test-unit test-slurm lint docs format bench bench-slurm clean

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The pinned CPU build of torch first: an unpinned torch pulls GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

run: install
	snakemake --cores all
	@echo
	@echo "Verdicts:  results/default/conjugacy.csv"
	@echo "Figures:   results/default/figures/"
	@echo "Spectra:   results/default/spectra/<condition>/seed<N>.zarr"
	@echo
	@python -c "import pandas as pd; print(pd.read_csv('results/default/conjugacy.csv').to_string(index=False))"

lint: install
	ruff check .
	ruff format --check .
	snakefmt --check Snakefile workflow
	snakemake --lint

# The documentation site (mkdocs.yml, docs/): fails on any warning (broken link or anchor,
# a page left out of the nav).
docs: install
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir build/site

test: install lint docs
	pytest

# The library's unit tests without the slow ones (a minute or two): no Snakemake runs.
test-unit: install
	pytest tests/unit -m "not slow and not workflow"

# The workflow through a real single-node SLURM cluster that it starts (root on
# Debian; elsewhere it says why it skips).
test-slurm: install
	bash tests/slurm/run.sh

# The tables of benchmarks/RESULTS.md (about an hour on 2 cores; 20 GB of scratch disk under
# BENCH_TMP for the P = 2e7 store).
BENCH_TMP ?= /tmp
bench: install
	$(BIN)/pip install -q -r benchmarks/requirements.txt
	python benchmarks/koopman_vs_pydmd.py --params 200000 2000000 --repeats 3 --tmp $(BENCH_TMP)
	python benchmarks/koopman_vs_pydmd.py --params 20000000 --only ours floor --repeats 1 \
		--tmp $(BENCH_TMP)
	python benchmarks/koopman_vs_dsa.py --tmp $(BENCH_TMP) --out $(BENCH_TMP)/koopman_vs_dsa.json
	python benchmarks/training.py --steps 1000 10000 --repeats 3
	python benchmarks/dmd_engine.py
	python benchmarks/workflow_overhead.py --config config/experiments/fcn_width.yaml \
		--seeds-per-job 5 13 config --repeat 2
	python benchmarks/calibration.py --experiments 200 --seeds 5 10 25 \
		--out $(BENCH_TMP)/calibration

bench-slurm: install
	bash benchmarks/slurm_overhead.sh

format: install
	ruff format .
	ruff check --fix .
	snakefmt Snakefile workflow

clean:
	rm -rf results .snakemake
