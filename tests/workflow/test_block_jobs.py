"""Blocks of seeds per job: fixed groups of the sorted seeds, one rule per block.

A training or Koopman job runs `seeds_per_job` seeds one after another in one
process; block k is sorted_seeds[k*B:(k+1)*B], so a new seed reruns only the
block that holds it. seeds_per_job 1 is the old structure, one job per seed.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from conftest import assert_stores_identical, copy_project, dry_run, snakemake, write_config

from conjugacy.config import resolve
from conjugacy.training.train import train

TOY = {
    "system": "omd",
    "steps": 12,
    "checkpoint_every": 5,
    "checkpoint_seconds": 0,
    "koopman": {"delays": 1},
}


def experiment(seeds, **extra) -> dict:
    return {
        "experiment": "blocks",
        "seeds": seeds,
        "compare": {"permutations": 99},
        "conditions": {"a": dict(TOY), "b": {**TOY, "system": "ogd"}},
        **extra,
    }


def planned(root: Path, cfg: dict, name: str = "c.yaml") -> collections.Counter:
    return collections.Counter(
        (job["rule"], job["condition"]) for job in dry_run(root, write_config(root / name, cfg))
    )


def test_blocks_are_fixed_groups_of_the_sorted_seeds(tmp_path):
    root = copy_project(tmp_path / "p")
    cfg = experiment([6, 0, 5, 1, 4, 2, 3], seeds_per_job=3)
    cfg["conditions"]["b"]["seeds_per_job"] = 7  # a condition's own block size
    jobs = planned(root, cfg)
    assert jobs == {
        **{(f"{stage}_a_block{k}", "a"): 1 for stage in ("train", "koopman") for k in range(3)},
        ("train_b_block0", "b"): 1,
        ("koopman_b_block0", "b"): 1,
        ("compare", None): 1,
        ("figures_runs", None): 1,
        ("figures_verdicts", None): 1,
        ("summary", None): 1,
        ("all", None): 1,
    }


def test_jobs_start_spectra_first_and_the_most_spectrum_work_first(tmp_path):
    """Priorities: a finished block's spectra before more training; big blocks before small."""
    root = copy_project(tmp_path / "p")
    cfg = experiment([0, 1, 2, 3, 4], seeds_per_job=3)
    cfg["conditions"]["b"]["koopman"] = {"delays": 4}  # lifted dimension 10 against 4
    jobs = {
        job["rule"]: job["priority"]
        for job in dry_run(root, write_config(root / "c.yaml", cfg))
        if job["rule"].startswith(("train", "koopman"))
    }
    spectra = [p for rule, p in jobs.items() if rule.startswith("koopman")]
    assert min(spectra) > max(p for rule, p in jobs.items() if rule.startswith("train"))
    for stage in ("train", "koopman"):
        # b's 3-seed block, b's 2-seed block, a's 3-seed block, a's 2-seed block
        order = [f"{stage}_b_block0", f"{stage}_b_block1", f"{stage}_a_block0", f"{stage}_a_block1"]
        assert sorted(order, key=jobs.get, reverse=True) == order


def test_seeds_per_job_1_is_one_job_per_seed(tmp_path):
    root = copy_project(tmp_path / "p")
    jobs = planned(root, experiment([0, 1, 2], seeds_per_job=1))
    stages = collections.Counter(rule.split("_")[0] for rule, _ in jobs.elements())
    assert stages == {"train": 6, "koopman": 6, "compare": 1, "figures": 2, "summary": 1, "all": 1}


@pytest.mark.slow
def test_a_per_condition_seeds_per_job_does_not_change_what_is_trained(tmp_path):
    """It says how jobs run, not what they compute: not in the training settings (--spec)."""
    root = copy_project(tmp_path / "p")
    cfg = experiment([0, 1], seeds_per_job=2)
    snakemake(root, "--cores", "2", "--configfile", str(write_config(root / "c.yaml", cfg)),
              "--quiet", "rules", "--until", "train_a_block0")  # fmt: skip
    own = experiment([0, 1], seeds_per_job=2)
    own["conditions"]["a"]["seeds_per_job"] = 2
    assert ("train_a_block0", "a") not in planned(root, own, "own.yaml")


@pytest.mark.slow
def test_a_new_seed_reruns_only_its_block_and_stores_match_training_alone(tmp_path):
    root = copy_project(tmp_path / "p")
    cfg = experiment([0, 1, 2, 3, 4], seeds_per_job=3)
    config = write_config(root / "c.yaml", cfg)
    snakemake(root, "--cores", "2", "--configfile", str(config), "--quiet", "rules")
    assert planned(root, cfg) == collections.Counter()
    logs = sorted(p.name for p in (root / "results/blocks/logs/train/a").iterdir())
    assert logs == ["seed0-2.log", "seed3-4.log"]

    # Seed 5 joins the last block [3, 4]: that block reruns, block 0 does not.
    jobs = planned(root, experiment([0, 1, 2, 3, 4, 5], seeds_per_job=3), "more.yaml")
    assert {rule for rule, _ in jobs} == {
        "train_a_block1", "train_b_block1", "koopman_a_block1", "koopman_b_block1",
        "compare", "figures_runs", "figures_verdicts", "summary", "all",
    }  # fmt: skip
    # With a full last block, a new seed is a new block: nothing else reruns.
    snakemake(root, "--cores", "2", "--configfile", str(root / "more.yaml"), "--quiet", "rules")
    jobs = planned(root, experiment([0, 1, 2, 3, 4, 5, 6], seeds_per_job=3), "new.yaml")
    assert {rule for rule, _ in jobs if rule.startswith(("train", "koopman"))} == {
        "train_a_block2", "train_b_block2", "koopman_a_block2", "koopman_b_block2",
    }  # fmt: skip

    # Each store of a block job is bitwise the store of that seed trained alone.
    cond = resolve(cfg)["conditions"]["a"]
    alone = train(cond, 4, tmp_path / "alone4.zarr", "blocks", "a", progress=False)
    assert_stores_identical(root / "results/blocks/trajectories/a/seed4.zarr", alone)
