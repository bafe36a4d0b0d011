"""How much work a condition's jobs are, from its config alone: the order jobs start in.

Two cores finish an experiment soonest when its longest chains (a training
block, then that block's spectra) start first and the run ends on the
smallest jobs; the workflow's job priorities come from these estimates.
"""

from __future__ import annotations

import math
from typing import Any

from conjugacy.config.checks import cond_inits
from conjugacy.config.shapes import recorded_snapshots, tensor_shapes

# Seconds of the lifted covariance's eigensolve per squared lifted dimension,
# in units of the lag products' multiply-adds: fitted to fcn_width's three
# conditions on one core (0.65 / 0.72 / 1.3 s a spectrum for h5 / h10 / h40).
EIGENSOLVE_PER_SQUARE = 1000.0


def spectrum_work(cond: dict[str, Any]) -> float:
    """Relative work of one seed's spectrum: lag products plus the covariance's eigensolve.

    The pooled DMD streams every snapshot pair once, multiplying each
    (values,) row into the lifted dimension, then solves for the leading
    eigenvectors of the lifted covariance. Your own stores (system external)
    are 0: only the stores know their shapes.
    """
    if cond["system"] == "external":
        return 0.0
    koopman = cond["koopman"]
    shapes = tensor_shapes(cond)
    observed = koopman.get("observables") or cond.get("record") or sorted(shapes)
    values = koopman.get("pca") or sum(math.prod(shapes[name]) for name in observed)
    steps = recorded_snapshots(cond)
    if koopman.get("window"):
        start, stop = koopman["window"]
        steps = [step for step in steps if start <= step < stop]
    delays = koopman.get("delays", 0)
    lifted = values * (delays + 1)
    pairs = cond_inits(cond) * max(len(steps) - delays - 1, 0)
    return float(pairs * values * lifted + EIGENSOLVE_PER_SQUARE * lifted**2)
