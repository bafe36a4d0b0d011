"""Tensor shapes and recorded steps of a condition, known from its config alone.

Pure Python: config validation needs them before torch or any data is loaded.
"""

from __future__ import annotations

from typing import Any

# (input features, classes) of the datasets the nets train on.
DATASET_DIMS: dict[str, tuple[int, int]] = {"digits": (64, 10), "mnist": (784, 10)}
# The files of each dataset read from data_dir (each may also be gzipped).
DATASET_FILES: dict[str, tuple[str, ...]] = {
    "mnist": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
}


def tensor_shapes(cond: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Per-trajectory shape of every tensor the condition's system can record."""
    if cond["system"] in ("omd", "ogd", "bisection"):
        return {"x": (2,)}
    n_in, n_out = DATASET_DIMS[cond["dataset"]]
    h = cond["hidden"]
    shapes: dict[str, tuple[int, ...]] = {"fc1.weight": (h, n_in), "fc2.weight": (n_out, h)}
    if cond["bias"]:
        shapes["fc1.bias"] = (h,)
        shapes["fc2.bias"] = (n_out,)
    return shapes


def recorded_snapshots(cond: dict[str, Any]) -> list[int]:
    """Optimizer steps at which the trajectory holds a snapshot (step 0 is the init)."""
    return list(range(0, cond["steps"] + 1, cond["record_every"]))
