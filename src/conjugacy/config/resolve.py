"""Load and resolve an experiment config: defaults filled, every condition self-contained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conjugacy.config.checks import (
    check_condition,
    check_monitor_section,
    check_predict_section,
    check_prune_section,
    check_verdict_options,
)
from conjugacy.config.shapes import CNN_LAST_LAYER, DATASET_DIRS
from conjugacy.config.validation import (
    cached_schema,
    check_values,
    config_label,
    fill_defaults,
    plain,
    read_yaml,
    validate,
)


def load(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (bounded: size, nodes after alias expansion) and resolve it."""
    return resolve(read_yaml(path))


def resolve(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a raw config and return it with defaults and per-condition settings resolved.

    Every condition in the result carries its own `seeds` and full `koopman`
    block, so a stage needs nothing but its condition's entry.
    """
    check_values(raw)  # before anything copies, dumps or quotes it
    root = cached_schema()
    cfg = plain(raw)
    validate(cfg, root, root, [])
    fill_defaults(cfg, root, root)
    for name, cond in cfg["conditions"].items():
        sch = root["$defs"][cond["system"]]
        validate(cond, sch, root, ["conditions", name])
        own_koopman = cond.pop("koopman", {})  # its keys override the experiment's, not defaults
        fill_defaults(cond, sch, root)
        if cond["system"] == "cnn":  # the default observable: the architecture's last layer
            cond.setdefault("record", [CNN_LAST_LAYER[cond["arch"]]])
        if cond.get("dataset") in DATASET_DIRS and not cond.get("data_dir"):
            cond["data_dir"] = DATASET_DIRS[cond["dataset"]]  # where a system package puts it
        cond.setdefault("seeds", list(cfg["seeds"]))
        cond["koopman"] = {**cfg["koopman"], **own_koopman}
        check_condition(name, cond)
    check_verdict_options(
        cfg["compare"],
        lambda k: config_label(f"compare.{k}" if k else "compare"),
        cfg["conditions"],
    )
    if "predict" in cfg:
        check_predict_section(cfg)
    if "prune" in cfg:
        check_prune_section(cfg)
    if "monitor" in cfg:
        check_monitor_section(cfg)
    return cfg


NOT_TRAINING = ("koopman", "seeds", "gpus", "companion", "seeds_per_job")  # how jobs run


def training_config(cond: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved condition that decides its trajectories."""
    return {k: v for k, v in cond.items() if k not in NOT_TRAINING}


def training_json(cond: dict[str, Any]) -> str:
    """Canonical JSON of a condition's training settings: the train stage's cache key."""
    return json.dumps(training_config(cond), sort_keys=True, separators=(",", ":"))
