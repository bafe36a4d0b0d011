"""Koopman-accelerated training: k optimizer steps, one node-Koopman jump, repeated.

After every k optimizer steps, node Koopman operators (predict.py) are fitted
on the last `window` snapshots and the weights jump `jump` steps ahead; the
optimizer then goes on from the predicted weights with its state as it was
(Adam's moment estimates are not reset). A plain run of the same optimizer
trains for the same number of effective steps (an optimizer step counts 1, a
jump of T counts T). The clocks (wall and CPU time of the process) run only
while training (steps, snapshots, fits, guards and jumps); loss evaluations
on the whole dataset are not timed, so the curves compare what each run
costs. The figure uses CPU time: on a shared machine wall time mostly
measures the other jobs.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np
import xarray as xr

from conjugacy.beyond.predict import EPS32, Evaluator, node_predict
from conjugacy.stores.contract import claim_output, write_dataset

log = logging.getLogger(__name__)


def set_params(system: Any, params: dict[str, np.ndarray]) -> None:
    """Overwrite a batched net's weights in place (the optimizer keeps its state)."""
    import torch

    with torch.no_grad():
        for name, value in params.items():
            tensor = system.params[name]
            tensor.copy_(torch.as_tensor(value, dtype=tensor.dtype, device=tensor.device))


def jump_ahead(buffer: list[dict[str, np.ndarray]], jump: int) -> dict[str, np.ndarray] | None:
    """Node-Koopman prediction `jump` steps after the last buffered snapshot; None if it fails."""
    snaps = {n: np.stack([b[n] for b in buffer]).astype(np.float64) for n in buffer[0]}
    if not all(np.isfinite(v).all() for v in snaps.values()):
        return None
    try:
        pred = node_predict(snaps, [jump], EPS32)[0][jump]
    except np.linalg.LinAlgError:
        return None
    return pred if all(np.isfinite(v).all() for v in pred.values()) else None


def better(evaluate: Evaluator, system: Any, pred: dict[str, np.ndarray]) -> bool:
    """Guard: does the jump lower every init's loss on the next mini-batch (two forward passes)?"""
    batch = system.next_batch()
    now, _ = evaluate(system.snapshot(), batch)
    after, _ = evaluate(pred, batch)
    return bool(np.isfinite(after).all() and (after <= now).all())


def train_curve(
    cond: dict[str, Any],
    seed: int,
    optimizer: str,
    lr: float,
    acc: dict[str, Any],
    koopman: bool,
) -> dict[str, np.ndarray]:
    """Loss and score (means over inits) against effective step and training time."""
    from conjugacy.training.train import make_system

    system, _ = make_system({**cond, "optimizer": optimizer, "lr": lr}, seed)
    evaluate = Evaluator(system)
    steps, k, window, jump = acc["steps"], acc["k"], acc["window"], acc["jump"]
    every = acc["eval_every"]
    points: list[tuple[int, float, float, float, float]] = []

    def note(eff: int, wall: float, cpu: float) -> None:
        loss, score = evaluate(system.snapshot())
        points.append((eff, wall, cpu, float(np.mean(loss)), float(np.mean(score))))

    eff, wall, cpu, since, jumps, rejected = 0, 0.0, 0.0, 0, 0, 0
    buffer: list[dict[str, np.ndarray]] = []
    note(0, 0.0, 0.0)
    while eff < steps:
        t0, c0 = time.perf_counter(), time.process_time()
        if koopman and since == 0 and window > k:  # the window reaches back to the cycle start
            buffer.append(system.snapshot())
        system.step()
        eff += 1
        since += 1
        if koopman and since > k - window:
            buffer.append(system.snapshot())
        jumped = False
        if koopman and since == k and eff + jump <= steps:
            pred = jump_ahead(buffer, jump)
            if pred is not None and (not acc["guard"] or better(evaluate, system, pred)):
                set_params(system, pred)
                eff += jump
                jumps += 1
                jumped = True
            else:
                rejected += 1
            since, buffer = 0, []
        elif koopman and since == k:
            since, buffer = 0, []
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        if jumped or eff % every == 0 or eff >= steps:
            note(eff, wall, cpu)
            if not np.isfinite(points[-1][3]):
                log.warning("%s: the loss is not finite at step %d; run stopped", optimizer, eff)
                break
    arr = np.asarray(points, dtype=np.float64)
    log.info(
        "%s%s: loss %.4g after %d effective steps (%d jumps, %d rejected) in %.2f s (%.2f s CPU)",
        optimizer,
        "+koopman" if koopman else "",
        arr[-1, 3],
        eff,
        jumps,
        rejected,
        wall,
        cpu,
    )
    return {
        "effective_step": arr[:, 0],
        "wall_s": arr[:, 1],
        "cpu_s": arr[:, 2],
        "loss": arr[:, 3],
        "score": arr[:, 4],
        "score_name": evaluate.score_name,
        "jumps": jumps,
        "rejected": rejected,
    }


def write_accelerated(
    cond: dict[str, Any], seed: int, acc: dict[str, Any], out: str, condition: str = ""
) -> xr.Dataset:
    """Plain and accelerated runs of every configured optimizer, as one store (run, point)."""
    claim_output(out, "accelerate")
    curves = {}
    for optimizer, lr in acc["optimizers"].items():
        for koopman in (False, True):
            name = f"{optimizer}+koopman" if koopman else optimizer
            curves[name] = train_curve(cond, seed, optimizer, lr, acc, koopman)
    n = max(len(c["loss"]) for c in curves.values())

    def padded(key: str) -> np.ndarray:
        out = np.full((len(curves), n), np.nan)
        for i, c in enumerate(curves.values()):
            out[i, : len(c[key])] = c[key]
        return out

    score_name = next(iter(curves.values()))["score_name"]
    ds = xr.Dataset(
        {
            key: (("run", "point"), padded(key))
            for key in ("effective_step", "wall_s", "cpu_s", "loss")
        }
        | {"score": (("run", "point"), padded("score"))},
        coords={"run": list(curves), "point": np.arange(n)},
        attrs={
            "condition": condition,
            "seed": seed,
            "score": score_name,
            **{k: acc[k] for k in ("steps", "k", "window", "jump", "eval_every", "guard")},
            "jumps": [c["jumps"] for c in curves.values()],
            "rejected": [c["rejected"] for c in curves.values()],
            "optimizers": {k: float(v) for k, v in acc["optimizers"].items()},
        },
    )
    with warnings.catch_warnings():  # string coordinates: zarr warns, xarray reads them
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        write_dataset(ds, out, role="accelerate")
    return ds
