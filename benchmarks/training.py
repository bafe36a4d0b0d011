"""Training throughput and recording overhead, side by side in one run.

1. Steps/s of the batched FCN (systems/fcn.py: the 10 inits of a seed as one
   computation, SGD with the gradients written out) against a plain
   per-model loop over the same 10 models (ordinary nn.Module +
   torch.optim.SGD each, the same mini-batches), at the fcn_width
   experiment's sizes: 64 -> h -> 10, no bias, batch 60, SGD lr 0.1. Also the
   batched FCN through autograd + torch.optim (closed_form off), to show what
   batching alone gives. The loop's weights are checked against the batched
   ones after the run.
2. Recording overhead: `conjugacy.training.train.train` of an h=40 condition
   recording fc2.weight every step (background writer, and the synchronous
   writer for comparison) against the same updates with no recording, for
   1000 and 10000 steps: the difference splits the cost into a fixed part per
   store and a part per recorded step.
3. Each experiment's batched training step (all inits of a seed) on the CPU
   and, with `--device cuda`, on the GPU: steps/s of the fcn_width FCN
   (h = 40), cnn_early's ResNet-20 and grokking's Transformer, and the
   GPU's speed-up over the CPU.

Medians of interleaved repeats. Prints Markdown tables.

    python benchmarks/training.py [--steps 1000 10000] [--throughput-steps 300] [--repeats 3]
        [--device cuda] [--only throughput recording systems] [--systems-scale 1]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from conjugacy.config import load
from conjugacy.training.recorder import Recorder
from conjugacy.training.train import make_system, train

EXPERIMENTS = Path(__file__).resolve().parents[1] / "config" / "experiments"
CONFIG = EXPERIMENTS / "fcn_width.yaml"
WIDTHS = (5, 10, 40)
# Section 3: (experiment, condition, steps timed at --systems-scale 1), about 0.1-4 s
# of steps each on one CPU core.
SYSTEMS = (
    ("fcn_width", "fcn_h40", 300),
    ("cnn_early", "resnet20", 20),
    ("grokking", "grokking", 10),
)
SECTIONS = ("throughput", "recording", "systems")


def condition(hidden: int, steps: int, device: str) -> dict:
    cond = dict(load(CONFIG)["conditions"][f"fcn_h{hidden}"])
    return {**cond, "steps": steps, "device": device}


def clock() -> tuple[float, float]:
    """(wall, CPU of this process) seconds: CPU depends less on what else runs here."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def batched(
    cond: dict, steps: int, closed_form: bool | None = True
) -> tuple[tuple[float, float], object]:
    """(wall, CPU) seconds for `steps` updates of the batched system (after 5 warm-up steps);
    `closed_form` sets an FCN's written-out SGD on or off (None: the system's own)."""
    system, _ = make_system(cond, seed=0)
    if closed_form is not None:
        system.closed_form = closed_form
    for _ in range(5):
        system.step()
    sync(cond)
    start = clock()
    for _ in range(steps):
        system.step()
    sync(cond)
    return since(start), system


def per_model(cond: dict, steps: int) -> tuple[tuple[float, float], list, object]:
    """The same models and batches, each an nn.Module with its own torch.optim.SGD."""
    system, _ = make_system(cond, seed=0)  # its initial weights and its batch sequence
    bias = cond["bias"]
    models, optims = [], []
    for i in range(system.inits):
        d_in, h = system.params["fc1.weight"].shape[2], system.params["fc1.weight"].shape[1]
        net = torch.nn.Sequential(
            torch.nn.Linear(d_in, h, bias=bias),
            torch.nn.ReLU(),
            torch.nn.Linear(h, system.params["fc2.weight"].shape[1], bias=bias),
        ).to(system.device)
        with torch.no_grad():
            for layer, name in ((net[0], "fc1"), (net[2], "fc2")):
                layer.weight.copy_(system.params[f"{name}.weight"][i])
                if bias:
                    layer.bias.copy_(system.params[f"{name}.bias"][i])
        models.append(net)
        optims.append(torch.optim.SGD(net.parameters(), lr=cond["lr"]))

    def step() -> None:
        x, y = system._next_batch()
        for net, opt in zip(models, optims, strict=True):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    for _ in range(5):
        step()
    sync(cond)
    start = clock()
    for _ in range(steps):
        step()
    sync(cond)
    return since(start), models, system


def sync(cond: dict) -> None:
    if cond["device"] == "cuda":
        torch.cuda.synchronize()


def max_weight_gap(system, models: list[torch.nn.Module]) -> float:
    """Largest relative difference of fc2.weight between the batched and the loop's models."""
    got = torch.stack([m[2].weight.detach() for m in models])
    ref = system.params["fc2.weight"].detach()
    return float((got - ref).abs().max() / ref.abs().max())


def throughput(steps: int, repeats: int, device: str) -> str:
    rows = [
        "| h | batched steps/s | per-model loop steps/s | speed-up | speed-up in CPU time "
        "| batched via autograd steps/s | its speed-up | max rel. weight gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h in WIDTHS:
        cond = condition(h, steps, device)
        t_b, t_l, t_a, gap = [], [], [], 0.0
        for _ in range(repeats):
            seconds, system = batched(cond, steps)
            t_b.append(seconds)
            seconds, models, _ = per_model(cond, steps)
            t_l.append(seconds)
            gap = max(gap, max_weight_gap(system, models))
            t_a.append(batched(cond, steps, closed_form=False)[0])
        b, loop, auto = (steps / statistics.median(t[0] for t in ts) for ts in (t_b, t_l, t_a))
        cpu = statistics.median(t[1] for t in t_l) / statistics.median(t[1] for t in t_b)
        rows.append(
            f"| {h} | {b:.0f} | {loop:.0f} | {b / loop:.1f}x | {cpu:.1f}x | {auto:.0f} "
            f"| {auto / loop:.1f}x | {gap:.1e} |"
        )
    return "\n".join(rows)


def plain(cond: dict) -> tuple[float, float]:
    """`steps` updates and the final loss, as train() does, without recording."""
    start = clock()
    system, _ = make_system(cond, seed=0)
    for _ in range(cond["steps"]):
        system.step()
    system.loss()
    return since(start)


def recorded(cond: dict, tmp: Path, background: bool) -> tuple[float, float]:
    """train() end to end (store created, every step recorded, sealed, moved)."""
    rec = functools.partial(Recorder, background=background)
    start = clock()
    with mock.patch("conjugacy.training.train.Recorder", rec):
        train(cond, 0, tmp / "t.zarr", progress=False, checkpoint_dir=tmp / "work")
    return since(start)


def overhead(lengths: list[int], repeats: int, device: str) -> str:
    """Recording off / background / synchronous for trainings of each length.

    Two lengths separate the fixed cost of a store (creation, sealing, the
    move into place) from the cost per recorded step: the extra seconds grow
    with the steps only through the latter.
    """
    rows = [
        "| steps | recording | wall s | overhead | CPU s | CPU overhead |",
        "|---|---|---|---|---|---|",
    ]
    extra: dict[str, list[tuple[int, float]]] = {"background": [], "synchronous": []}
    for steps in lengths:
        cond = {**condition(40, steps, device), "record_every": 1, "checkpoint_every": 0}
        times: dict[str, list[tuple[float, float]]] = {
            "off": [],
            "background": [],
            "synchronous": [],
        }
        with tempfile.TemporaryDirectory(prefix="conjugacy-bench-") as tmp:
            for _ in range(repeats):
                times["off"].append(plain(cond))
                times["background"].append(recorded(cond, Path(tmp), True))
                times["synchronous"].append(recorded(cond, Path(tmp), False))
        med = {k: [statistics.median(t[i] for t in v) for i in (0, 1)] for k, v in times.items()}
        off = med["off"]
        for k, (wall, cpu) in med.items():
            rows.append(
                f"| {steps} | {k} | {wall:.3f} | {100 * (wall / off[0] - 1):+.1f}% | {cpu:.3f} "
                f"| {100 * (cpu / off[1] - 1):+.1f}% |"
            )
            if k in extra:
                extra[k].append((steps, wall - off[0]))
    if len(lengths) > 1:
        rows.append("")
        rows.append("| recording | fixed cost per store, ms | cost per recorded step, us |")
        rows.append("|---|---|---|")
        for k, points in extra.items():
            (s0, e0), (s1, e1) = points[0], points[-1]
            per_step = (e1 - e0) / (s1 - s0)
            rows.append(f"| {k} | {1e3 * (e0 - per_step * s0):.0f} | {1e6 * per_step:.1f} |")
    return "\n".join(rows)


def systems(repeats: int, devices: list[str], scale: float) -> str:
    """Seconds per batched training step of each experiment's system on each device, and
    each device's speed-up over the CPU (the same steps, medians of `repeats`)."""
    rows = [
        "| experiment | condition | system | inits | device | steps timed | ms/step | steps/s "
        "| speed-up over cpu |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for experiment, name, steps in SYSTEMS:
        n = max(2, round(steps * scale))
        base = load(EXPERIMENTS / f"{experiment}.yaml")["conditions"][name]
        per_step, inits = {}, 0
        for device in devices:
            cond = {**base, "device": device}
            walls = []
            for _ in range(repeats):
                (wall, _), system = batched(cond, n, closed_form=None)
                walls.append(wall)
                inits = system.inits
            per_step[device] = statistics.median(walls) / n
        for device, seconds in per_step.items():
            rows.append(
                f"| {experiment} | {name} | {base['system']} | {inits} | {device} | {n} "
                f"| {1e3 * seconds:.2f} | {1 / seconds:.1f} | {per_step['cpu'] / seconds:.1f}x |"
            )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--steps", type=int, nargs="+", default=[1000, 10000], help="of the recording runs"
    )
    ap.add_argument("--throughput-steps", type=int, default=300, help="timed per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument(
        "--systems-scale", type=float, default=1.0, help="times the steps timed in `systems`"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    if "throughput" in args.only:
        print("\n" + throughput(args.throughput_steps, args.repeats, args.device), flush=True)
    if "recording" in args.only:
        print("\n" + overhead(args.steps, args.repeats, args.device), flush=True)
    if "systems" in args.only:
        devices = ["cpu"] if args.device == "cpu" else ["cpu", args.device]
        print("\n" + systems(args.repeats, devices, args.systems_scale), flush=True)


if __name__ == "__main__":
    main()
