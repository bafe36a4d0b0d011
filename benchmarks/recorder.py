"""What `conjugacy.record` costs a training loop: per step and per store.

A 1.1M-parameter MLP (1000 -> 1000 -> 100, ReLU, batch 64, SGD) trained on
random batches, with and without recording its 100 000-value `2.weight`
(100 x 1000) every step. Runs alternate (plain, recorded, plain, ...) and the
medians are compared:

- overhead per step: (recorded - plain) wall time over the steps, the fixed
  cost taken out, against the plain step time (target <= 5 %);
- time inside `rec.step()` per step: what the training thread itself spends
  (the copy into the host buffer);
- fixed cost per store: `conjugacy.record(...)` (creating the store) plus
  `close()` (writing the last block and sealing), timed directly (target <= 1 s).

Prints Markdown tables and the load average (2 busy cores move the numbers).

    python benchmarks/recorder.py [--steps 1000] [--repeats 3] [--threads 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import conjugacy


def model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(1000, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 100)
    )
    return net.to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(steps: int, device: str, path: Path | None) -> dict[str, float]:
    """Train `steps` steps; with a path, record 2.weight every step. Times in seconds."""
    net = model(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(64, 1000, generator=gen).to(device)) for _ in range(8)]
    targets = [(torch.randn(64, 100, generator=gen).to(device)) for _ in range(8)]
    sync(device)
    out = {"open": 0.0, "inside": 0.0, "close": 0.0}
    c0 = time.process_time()
    t0 = time.perf_counter()
    rec = None
    if path is not None:
        rec = conjugacy.record(path, net, ["2.weight"], steps=steps)
        out["open"] = time.perf_counter() - t0
    for t in range(steps):
        x, y = batches[t % 8], targets[t % 8]
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec is not None:
            t1 = time.perf_counter()
            rec.step(loss=loss)
            out["inside"] += time.perf_counter() - t1
    if rec is not None:
        t1 = time.perf_counter()
        status = rec.close()
        out["close"] = time.perf_counter() - t1
        assert status == "complete", status
    sync(device)
    out["wall"] = time.perf_counter() - t0
    out["cpu"] = time.process_time() - c0  # every thread of the process
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tmp", default=None, help="folder for the stores (default: a temp dir)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_params = sum(p.numel() for p in model("cpu").parameters())
    plain, recorded = [], []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        run(50, args.device, Path(tmp) / "warm.zarr")  # first-call costs (imports, allocator)
        run(50, args.device, None)
        for r in range(args.repeats):
            plain.append(run(args.steps, args.device, None))
            recorded.append(run(args.steps, args.device, Path(tmp) / f"r{r}.zarr"))
            print(f"repeat {r}: plain {plain[-1]}, recorded {recorded[-1]}", file=sys.stderr)
    med = {k: statistics.median(x[k] for x in recorded) for k in recorded[0]}
    plain_wall = statistics.median(x["wall"] for x in plain)
    fixed = med["open"] + med["close"]
    step = plain_wall / args.steps
    per_step = (med["wall"] - fixed - plain_wall) / args.steps
    plain_cpu = statistics.median(x["cpu"] for x in plain)
    cpu_per_step = (med["cpu"] - plain_cpu) / args.steps  # fixed part included: an upper bound
    print(
        f"{n_params / 1e6:.2f}M parameters, recording 100 000 values every step, "
        f"{args.steps} steps, {args.repeats} repeats, device {args.device}, "
        f"{torch.get_num_threads()} torch threads, load average "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}\n"
    )
    print("| run | wall s (median) | each run | CPU s (median) |")
    print("|---|---|---|---|")
    for name, runs in (("plain", plain), ("recorded", recorded)):
        each = " ".join(f"{x['wall']:.2f}" for x in runs)
        wall = statistics.median(x["wall"] for x in runs)
        cpu = statistics.median(x["cpu"] for x in runs)
        print(f"| {name} | {wall:.3f} | {each} | {cpu:.3f} |")
    print()
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| plain step | {step * 1e3:.2f} ms | |")
    print(
        f"| overhead per recorded step (wall) | {per_step * 1e6:.0f} us = "
        f"{100 * per_step / step:+.1f} % | <= 5 % |"
    )
    print(
        f"| CPU per recorded step (all threads, fixed cost included) | "
        f"{cpu_per_step * 1e6:.0f} us = {100 * cpu_per_step * args.steps / plain_cpu:+.1f} % "
        "of the plain CPU time | |"
    )
    print(
        f"| inside rec.step() per step | {med['inside'] / args.steps * 1e6:.0f} us = "
        f"{100 * med['inside'] / args.steps / step:.1f} % | |"
    )
    print(
        f"| fixed cost per store | {fixed * 1e3:.0f} ms (record() {med['open'] * 1e3:.0f} ms, "
        f"close() {med['close'] * 1e3:.0f} ms) | <= 1 s |"
    )


if __name__ == "__main__":
    main()
