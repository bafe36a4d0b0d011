"""Convolutional nets (LeNet-5, ResNet-20), N inits of a seed as one computation.

The N nets are laid side by side along the channel axis: activations are
(batch, N * channels, height, width) and every convolution is a grouped
convolution with N groups, each group one net's kernels. Pooling, ReLU and
batch norm act per channel, so they never mix nets; the dense layers are
batched matrix products as in systems/fcn.py. The summed loss has
independent per-init gradients, so one optimizer over the stacked tensors is
exactly N separate optimizers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from conjugacy.config.shapes import (
    DATASET_IMAGES,
    RESNET_BLOCKS,
    RESNET_STAGES,
    lenet_geometry,
    tensor_shapes,
)
from conjugacy.systems.data import load_dataset
from conjugacy.systems.fcn import FCN, stack_inits


def base_init(shapes: dict[str, tuple[int, ...]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """PyTorch's default init: conv and linear U(+-1/sqrt(fan_in)), batch norm weight 1, bias 0."""
    out = {}
    for name, shape in shapes.items():
        layer, kind = name.rsplit(".", 1)
        if layer.rsplit(".", 1)[-1].startswith("bn"):
            out[name] = torch.full(shape, 1.0 if kind == "weight" else 0.0)
            continue
        fan_in = math.prod(shapes[f"{layer}.weight"][1:])
        bound = 1.0 / math.sqrt(fan_in)
        u = torch.rand(shape, generator=gen, dtype=torch.float64)
        out[name] = ((2 * u - 1) * bound).to(torch.float32)
    return out


def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, **kw: Any) -> torch.Tensor:
    """N convolutions as one grouped one: x (B, N*Cin, H, W), w (N, Cout, Cin, k, k)."""
    n = w.shape[0]
    bias = None if b is None else b.reshape(-1)
    return F.conv2d(x, w.reshape(-1, *w.shape[2:]), bias, groups=n, **kw)


def batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Training-mode batch norm over each net's channels (batch statistics, no running ones)."""
    return F.batch_norm(x, None, None, weight.reshape(-1), bias.reshape(-1), training=True)


def dense(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """N linear layers: x (N, B, in), w (N, out, in), b (N, out)."""
    return torch.einsum("nbi,noi->nbo", x, w) + b[:, None, :]


def shortcut(x: torch.Tensor, n: int, planes: int) -> torch.Tensor:
    """ResNet 'option A' for CIFAR: subsample by 2 and zero-pad the new channels (no weights)."""
    b, _, h, w = x.shape
    sub = x[:, :, ::2, ::2].reshape(b, n, -1, (h + 1) // 2, (w + 1) // 2)
    pad = (planes - sub.shape[2]) // 2
    return F.pad(sub, (0, 0, 0, 0, pad, pad)).reshape(b, n * planes, *sub.shape[3:])


class CNN(FCN):
    """N nets of one seed (LeNet-5 or ResNet-20): init 0 the base init, 1..N-1 perturbed copies.

    Shares the batching, data order, checkpoint state and step of FCN; only
    the parameters and the forward pass differ.
    """

    def __init__(self, cond: dict[str, Any], seed: int, device: str = "cpu") -> None:
        self.cond = cond
        self.inits = cond["inits"]
        self.device = torch.device(device)
        self.image = DATASET_IMAGES[cond["dataset"]]
        shapes = tensor_shapes(cond)
        gen = torch.Generator().manual_seed(seed)
        base = base_init(shapes, gen)
        eps = cond["init_perturbation"]
        self.params = stack_inits(base, self.inits, eps, gen, self.device)
        params = list(self.params.values())
        if cond["optimizer"] == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=cond["lr"], momentum=cond["momentum"], weight_decay=cond["weight_decay"]
            )
        else:
            self.optimizer = torch.optim.Adam(
                params, lr=cond["lr"], weight_decay=cond["weight_decay"]
            )
        x, y = load_dataset(cond["dataset"], cond.get("data_dir"))
        self.x = torch.from_numpy(x.reshape(len(x), *self.image)).to(self.device)
        self.y = torch.from_numpy(y).to(self.device)
        self.rng = np.random.default_rng([seed, 1])
        self.order = np.empty(0, dtype=np.int64)
        self._forward = {"lenet": self._lenet, "resnet20": self._resnet}[cond["arch"]]

    def _lenet(self, x: torch.Tensor) -> torch.Tensor:
        p, n = self.params, self.inits
        g = lenet_geometry(self.image)
        h = F.max_pool2d(
            torch.relu(conv(x, p["conv1.weight"], p["conv1.bias"], padding=g["pad1"])), 2
        )
        h = F.max_pool2d(
            torch.relu(conv(h, p["conv2.weight"], p["conv2.bias"], padding=g["pad2"])), 2
        )
        h = h.reshape(len(x), n, -1).transpose(0, 1)  # (N, B, C*H*W), each net's flatten order
        h = torch.relu(dense(h, p["fc1.weight"], p["fc1.bias"]))
        h = torch.relu(dense(h, p["fc2.weight"], p["fc2.bias"]))
        return dense(h, p["fc3.weight"], p["fc3.bias"])

    def _resnet(self, x: torch.Tensor) -> torch.Tensor:
        p, n = self.params, self.inits
        h = torch.relu(
            batch_norm(conv(x, p["conv1.weight"], None, padding=1), p["bn1.weight"], p["bn1.bias"])
        )
        planes_in = RESNET_STAGES[0]
        for stage, planes in enumerate(RESNET_STAGES, start=1):
            for block in range(RESNET_BLOCKS):
                pre = f"layer{stage}.{block}"
                stride = 2 if planes != planes_in else 1
                out = conv(h, p[f"{pre}.conv1.weight"], None, stride=stride, padding=1)
                out = torch.relu(batch_norm(out, p[f"{pre}.bn1.weight"], p[f"{pre}.bn1.bias"]))
                out = conv(out, p[f"{pre}.conv2.weight"], None, padding=1)
                out = batch_norm(out, p[f"{pre}.bn2.weight"], p[f"{pre}.bn2.bias"])
                skip = h if stride == 1 else shortcut(h, n, planes)
                h = torch.relu(out + skip)
                planes_in = planes
        h = h.mean(dim=(2, 3)).reshape(len(x), n, -1).transpose(0, 1)  # global average pool
        return dense(h, p["fc.weight"], p["fc.bias"])

    def _losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean NLL of each net on the batch: x (B, C, H, W) is shown to all N nets."""
        logits = self._forward(x.repeat(1, self.inits, 1, 1))
        logp = torch.log_softmax(logits, dim=-1)
        return -logp[:, torch.arange(len(y), device=self.device), y].mean(dim=1)
