"""Callbacks that record trajectories from other training loops, over `conjugacy.record`.

- `conjugacy.integrations.lightning.TrajectoryCallback`: Lightning (`pip install
  conjugacy[lightning]`).
- `conjugacy.integrations.hf.TrajectoryCallback`: the transformers `Trainer`
  (`pip install conjugacy[hf]`).

Each submodule imports its framework when it is imported, not before.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SUBMODULES = ("lightning", "hf")

__all__ = list(_SUBMODULES)


def __getattr__(name: str) -> ModuleType:
    if name not in _SUBMODULES:
        raise AttributeError(f"module 'conjugacy.integrations' has no attribute {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
