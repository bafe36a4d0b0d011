"""Fully connected nets in -> h -> out (ReLU, log-softmax + NLL), N inits as one batch.

The N initial conditions of a seed are stacked along a leading axis of every
weight tensor and trained by one computation: the summed loss has
independent per-init gradients, so one optimizer over the stacked tensors is
exactly N separate optimizers, without a Python loop over models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from conjugacy.config.shapes import tensor_shapes
from conjugacy.systems.data import load_dataset, split_holdout


def two_layer(
    params: dict[str, torch.Tensor], x: torch.Tensor, activation=torch.relu
) -> torch.Tensor:
    """Outputs (inits, batch, out) of stacked in -> h -> out nets (biases when present)."""
    hidden = torch.einsum("bi,nhi->nbh", x, params["fc1.weight"])
    if "fc1.bias" in params:
        hidden = hidden + params["fc1.bias"][:, None, :]
    out = torch.einsum("nbh,noh->nbo", activation(hidden), params["fc2.weight"])
    if "fc2.bias" in params:
        out = out + params["fc2.bias"][:, None, :]
    return out


def relu64(h: np.ndarray) -> np.ndarray:
    return np.maximum(h, 0.0)


def outputs64(params: dict[str, np.ndarray], x: np.ndarray, activation=relu64) -> np.ndarray:
    """two_layer in float64 numpy: outputs (..., batch, out) of nets in -> h -> out.

    params hold fc1.weight (..., h, in), fc2.weight (..., out, h) and the
    biases if any, with the same leading axes (inits, or inits and steps).
    """
    p = {n: np.asarray(v, np.float64) for n, v in params.items()}
    hidden = np.asarray(x, np.float64) @ np.swapaxes(p["fc1.weight"], -1, -2)
    if "fc1.bias" in p:
        hidden += p["fc1.bias"][..., None, :]
    out = activation(hidden) @ np.swapaxes(p["fc2.weight"], -1, -2)
    if "fc2.bias" in p:
        out += p["fc2.bias"][..., None, :]
    return out


def evaluate(
    params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(NLL loss, accuracy) of stacked classifier nets on (x, y), in float64.

    The loss the nets train on (log-softmax + NLL, mean over samples), without
    an update: the forward pass and the log-softmax in float64 whatever the
    weights' dtype, so losses of recorded, predicted and pruned weights
    compare to rounding. Results have the parameters' leading axes.
    """
    logits = outputs64(params, x)
    top = logits.max(axis=-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
    y = np.asarray(y)
    target = np.broadcast_to(y[:, None], logp.shape[:-1] + (1,))
    loss = -np.take_along_axis(logp, target, axis=-1)[..., 0].mean(axis=-1)
    return loss, (logits.argmax(axis=-1) == y).mean(axis=-1)


def evaluation_data(cond: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
    """(x, y, what) to evaluate a condition's nets on: its held-out part, else its training set."""
    x, y = load_dataset(cond["dataset"], cond.get("data_dir"))
    train, held = split_holdout(x, y, cond.get("holdout"))
    if len(held[1]):
        return held[0], held[1], "validation"
    return train[0], train[1], "training set"


def snapshot_of(
    params: dict[str, torch.Tensor], names: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Copies of the stacked tensors `names` (default all), (inits, *shape) each, on the host."""
    return {n: params[n].detach().cpu().numpy().copy() for n in names or params}


def saved_params(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Host copies of the stacked parameters, for a checkpoint."""
    return {n: t.detach().cpu().clone() for n, t in params.items()}


def restore_params(params: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    """Write checkpointed values into the stacked parameters in place (optimizers keep them)."""
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)


def stack_inits(
    base: dict[str, torch.Tensor],
    inits: int,
    eps: float,
    gen: torch.Generator,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """The inits of one seed (METHOD.md): init 0 the base, the others base * (1 + eps U(-1,1)).

    Noise is drawn tensor by tensor in `base` order from `gen`, so every system
    that stacks its inits here perturbs them the same way.
    """
    params = {}
    for name, tensor in base.items():
        stacked = tensor.expand(inits, *tensor.shape).clone()
        noise = 2 * torch.rand(stacked[1:].shape, generator=gen, dtype=torch.float32) - 1
        stacked[1:] *= 1 + eps * noise
        params[name] = stacked.to(device).requires_grad_(True)
    return params


def base_init(shapes: dict[str, tuple[int, ...]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """PyTorch's default nn.Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    out = {}
    for layer in ("fc1", "fc2"):
        fan_in = shapes[f"{layer}.weight"][1]
        bound = 1.0 / math.sqrt(fan_in)
        for kind in ("weight", "bias"):
            name = f"{layer}.{kind}"
            if name in shapes:
                u = torch.rand(shapes[name], generator=gen, dtype=torch.float64)
                out[name] = ((2 * u - 1) * bound).to(torch.float32)
    return out


class FCN:
    """N nets of one seed: init 0 the base init, inits 1..N-1 perturbed copies."""

    closed_form = False  # SGD with the gradients written out (set for plain FCNs with SGD)
    _optimizer = None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer, made when first used: plain SGD's written-out steps never use
        it, and the first torch.optim optimizer of a process imports torch's compiler (about
        1 s of every training job here)."""
        if self._optimizer is None:
            opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[self.cond["optimizer"]]
            self._optimizer = opt_cls(list(self.params.values()), lr=self.cond["lr"])
        return self._optimizer

    @optimizer.setter
    def optimizer(self, value: torch.optim.Optimizer) -> None:  # systems with their own
        self._optimizer = value

    def __init__(self, cond: dict[str, Any], seed: int, device: str = "cpu") -> None:
        self.cond = cond
        self.inits = cond["inits"]
        self.device = torch.device(device)
        shapes = tensor_shapes(cond)
        gen = torch.Generator().manual_seed(seed)
        base = base_init(shapes, gen)
        eps = cond["init_perturbation"]
        self.params = stack_inits(base, self.inits, eps, gen, self.device)
        self.closed_form = cond["optimizer"] == "sgd"
        x, y = load_dataset(cond["dataset"], cond.get("data_dir"))
        (x, y), _ = split_holdout(x, y, cond.get("holdout"))  # train on the rest
        self.x = torch.from_numpy(x).to(self.device)
        self.y = torch.from_numpy(y).to(self.device)
        self.rng = np.random.default_rng([seed, 1])
        self.order = np.empty(0, dtype=np.int64)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next mini-batch (x, y), drawn as a step draws it (the step after gets the next).

        Epoch-wise reshuffled mini-batches, the same for every init of the seed.
        """
        index = torch.from_numpy(self.batch_indices()).to(self.device)
        return self.x[index], self.y[index]

    def batch_indices(self) -> np.ndarray:
        """The samples of the next mini-batch (next_batch without the gather)."""
        b = self.cond["batch_size"]
        if len(self.order) < b:
            self.order = self.rng.permutation(len(self.y))
        idx, self.order = self.order[:b], self.order[b:]
        return idx

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """next_batch, by the name the training step (and benchmarks/training.py) call."""
        return self.next_batch()

    def _losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = two_layer(self.params, x)
        logp = torch.log_softmax(logits, dim=-1)
        return -logp[:, torch.arange(len(y), device=self.device), y].mean(dim=1)

    def snapshot(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        return snapshot_of(self.params, names)

    def state(self) -> dict[str, Any]:
        """Weights, optimizer state and data order: what the next steps depend on."""
        state = {
            "params": saved_params(self.params),
            "rng": self.rng.bit_generator.state,
            "order": self.order.copy(),
        }
        if not self.closed_form:  # plain SGD has no optimizer state
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        restore_params(self.params, state["params"])
        if not self.closed_form:
            self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.order = state["order"].copy()

    def loss(self) -> np.ndarray:
        """Loss of every init on the next mini-batch, without an update."""
        with torch.no_grad():
            return self._losses(*self._next_batch()).double().cpu().numpy()

    def step(self) -> np.ndarray:
        """One optimizer step of every init; returns the mini-batch loss before it."""
        if self.closed_form:
            return self._sgd_step(*self._next_batch())
        losses = self._losses(*self._next_batch())
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach().double().cpu().numpy()

    def _sgd_step(self, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """One written-out SGD step of this seed (`sgd_steps`); the loss before it."""
        params = {name: tensor[None] for name, tensor in self.params.items()}
        return sgd_steps(params, x[None], y[None], self.cond["lr"])[0]


@torch.no_grad()
def sgd_steps(
    p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, lr: float
) -> np.ndarray:
    """One SGD step of S seeds' stacked two-layer nets, in place; the losses (S, N) before it.

    p holds (S, N, ...) tensors (seeds x inits), x is (S, B, in) and y (S, B):
    each seed's own mini-batch. The backward pass of this net is three matrix
    products. At the experiments' sizes, recording autograd's graph, walking
    it and running torch.optim cost more than that arithmetic
    (benchmarks/training.py); the result equals autograd's to float32
    rounding (tests/unit/training/test_train.py). Every product and
    reduction is batched over (seed, init) with the same per-net kernel
    whatever S is, so a seed's result is bitwise the same alone (S = 1) or
    stacked with others (tests/unit/training/test_blocks.py).
    """
    seeds, rows = y.shape
    inits = p["fc1.weight"].shape[1]
    device = x.device
    pick = (  # (seed, init, sample, its label): the logit of each sample's label
        torch.arange(seeds, device=device)[:, None, None],
        torch.arange(inits, device=device)[None, :, None],
        torch.arange(rows, device=device),
        y[:, None, :],
    )
    x = x[:, None]  # (S, 1, B, in): the same samples for every init of a seed
    hidden = torch.matmul(x, p["fc1.weight"].transpose(2, 3))  # (S, N, B, H)
    if "fc1.bias" in p:
        hidden += p["fc1.bias"][:, :, None, :]
    active = torch.relu(hidden)
    logits = torch.matmul(active, p["fc2.weight"].transpose(2, 3))  # (S, N, B, O)
    if "fc2.bias" in p:
        logits += p["fc2.bias"][:, :, None, :]
    # log-softmax by hand: torch's kernel is ~3x slower over 10 classes on CPU
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    d_logits = shifted.exp()
    total = d_logits.sum(dim=-1, keepdim=True)
    losses = (total.log()[..., 0] - shifted[pick]).mean(dim=2)
    d_logits /= total  # d(mean NLL)/d(logits) = (softmax - one-hot) / B
    d_logits[pick] -= 1
    d_logits /= rows
    d_hidden = torch.matmul(d_logits, p["fc2.weight"]).mul_(hidden > 0)  # (S, N, B, H)
    p["fc2.weight"].sub_(torch.matmul(d_logits.transpose(2, 3), active), alpha=lr)
    p["fc1.weight"].sub_(torch.matmul(d_hidden.transpose(2, 3), x), alpha=lr)
    if "fc2.bias" in p:
        p["fc2.bias"].sub_(d_logits.sum(dim=2), alpha=lr)
    if "fc1.bias" in p:
        p["fc1.bias"].sub_(d_hidden.sum(dim=2), alpha=lr)
    return losses.double().cpu().numpy()


def stackable(systems: list[Any]) -> bool:
    """Whether these seeds can train as one computation: plain FCNs with written-out SGD on
    the same samples, on the CPU. On CPU a stacked seed is bitwise the seed alone (tested);
    on CUDA, cuBLAS may pick another kernel for another batch count, and no GPU has
    checked it, so CUDA blocks train one seed after another."""
    if len(systems) < 2:
        return False
    first = systems[0]
    return all(
        type(s) is FCN
        and s.closed_form
        and s.device.type == "cpu"
        and s.cond == first.cond
        and torch.equal(s.x, first.x)
        and torch.equal(s.y, first.y)
        for s in systems
    )


class SeedStack:
    """Seeds of one FCN condition trained as one computation (`sgd_steps` over seeds x inits).

    The seeds' parameters are stacked into (S, N, ...) tensors and each
    system's `params` become views of its slice, so every per-seed method
    (snapshot, state, load_state, loss) still works on one seed; each seed
    still draws its own mini-batches from its own generator. At fcn_width's
    sizes one step of 5 stacked seeds costs about what 2-3 steps of one seed
    cost (the step is bound by torch's per-operation overhead, not arithmetic).
    """

    def __init__(self, systems: list[FCN]) -> None:
        self.systems = systems
        self.lr = systems[0].cond["lr"]
        self.params = {
            name: torch.stack([s.params[name].detach() for s in systems])
            for name in systems[0].params
        }
        for i, system in enumerate(systems):
            system.params = {name: tensor[i] for name, tensor in self.params.items()}

    def step(self) -> list[np.ndarray]:
        """One SGD step of every seed; each seed's losses (N,) before it."""
        first = self.systems[0]  # the seeds share the samples (`stackable`), not their order
        index = np.stack([system.batch_indices() for system in self.systems])
        index = torch.from_numpy(index).to(first.device)
        return list(sgd_steps(self.params, first.x[index], first.y[index], self.lr))

    def loss(self) -> list[np.ndarray]:
        """Each seed's losses on its next mini-batch, without an update."""
        return [system.loss() for system in self.systems]

    def snapshot(self, names: Iterable[str]) -> list[dict[str, np.ndarray]]:
        """Each seed's copies of the tensors `names`: one host copy of the stack, split."""
        stacked = snapshot_of(self.params, names)
        return [{n: v[i] for n, v in stacked.items()} for i in range(len(self.systems))]
