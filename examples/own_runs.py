"""Compare your own training runs: SGD against Adam on a small MLP, a few seeds each.

1. Train: each (optimizer, seed) is a few runs from nearby initialisations,
   recorded with `conjugacy.record` into runs/<optimizer>/seed<N>.zarr
   (one store per seed, one `init` per run).
2. Compare in Python: `conjugacy.spectrum` per store, `conjugacy.compare`
   over the seeds: the verdict table of conjugacy.csv.
3. Compare through the workflow: own.yaml declares both conditions as
   `system: external`; `snakemake --cores all --configfile own.yaml` computes
   the spectra, verdicts, figures and summary without training anything.

Run: python examples/own_runs.py --out my_runs   (then the snakemake command it prints)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.datasets import load_digits

import conjugacy

OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (offline), standardised."""
    x, y = load_digits(return_X_y=True)
    x = (x - x.mean()) / x.std()
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def model(seed: int, run: int) -> torch.nn.Sequential:
    """A 64 -> 16 -> 10 MLP: the seed's initialisation, nudged by 0.1 % for runs after the first."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    if run:
        gen = torch.Generator().manual_seed(1000 * seed + run)
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(1 + 1e-3 * (2 * torch.rand(p.shape, generator=gen) - 1))
    return net


def train(out: Path, optimizer: str, seed: int, runs: int, steps: int) -> Path:
    """Train `runs` runs of one seed and record the output layer's weights after every step."""
    x, y = data()
    store = out / optimizer / f"seed{seed}.zarr"
    for run in range(runs):
        net = model(seed, run)
        opt = OPTIMIZERS[optimizer](net.parameters())
        batches = torch.Generator().manual_seed(seed)
        attrs = {"optimizer": optimizer, "seed": seed}
        with conjugacy.record(store, net, tensors=["2.weight"], init=run, attrs=attrs) as rec:
            for _ in range(steps):
                batch = torch.randint(len(y), (64,), generator=batches)
                loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                rec.step(loss=loss)
    return store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("my_runs"))
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--runs", type=int, default=4, help="runs (inits) per seed")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--delays", type=int, default=4)
    p.add_argument("--rank", type=int, default=10)
    args = p.parse_args()

    seeds = list(range(args.seeds))
    for optimizer in OPTIMIZERS:
        for seed in seeds:
            train(args.out, optimizer, seed, args.runs, args.steps)

    # 2. In Python: one spectrum per seed, then the verdict.
    spectra = {
        optimizer: [
            conjugacy.spectrum(
                args.out / optimizer / f"seed{seed}.zarr", delays=args.delays, rank=args.rank
            )  # fmt: skip
            for seed in seeds
        ]
        for optimizer in OPTIMIZERS
    }
    table = conjugacy.compare(spectra)
    print(table[["condition_a", "condition_b", "ratio", "p_value", "verdict"]].to_string())

    # 3. Through the workflow: the same stores as external conditions.
    koopman = {"delays": args.delays, "rank": args.rank}
    config = {
        "experiment": "own_runs",
        "seeds": seeds,
        "conditions": {
            optimizer: {
                "system": "external",
                "trajectories": str(args.out / optimizer / "seed{seed}.zarr"),
                "koopman": koopman,
            }
            for optimizer in OPTIMIZERS
        },
    }
    path = args.out / "own.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"\nnext: snakemake --cores all --configfile {path}   (results in results/own_runs/)")
    np.save(args.out / "ratio.npy", table["ratio"].to_numpy())


if __name__ == "__main__":
    main()
