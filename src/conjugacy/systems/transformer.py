"""One-layer Transformer on modular addition (Nanda et al. 2023), N inits as one batch.

Token and position embeddings, one attention block (n_heads heads of
d_model / n_heads, causal), an MLP with ReLU, the unembedding; no LayerNorm.
Tensor names and initial scales are those of Nanda et al.'s grokking code
(`blocks.0.mlp.W_out` is (d_model, d_mlp)). Every parameter carries a leading
init axis and the forward pass is batched einsums, so the summed loss has
independent per-init gradients and one AdamW over the stacked tensors is
exactly N separate ones.

The loss reads the logits at the last position ('=') only. With one layer,
that output depends on the other positions only through their keys and
values, so the query, MLP and unembedding are evaluated at the last
position alone, and keys and values per vocabulary token: the same loss and
gradients as the full causal model, at a fraction of the cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from conjugacy.config.shapes import tensor_shapes
from conjugacy.memory import keep_freed_memory
from conjugacy.systems.fcn import restore_params, saved_params, snapshot_of, stack_inits
from conjugacy.systems.modular import split


def init_std(name: str, cond: dict[str, Any]) -> float:
    """Gaussian init scale as Nanda et al.: 1/sqrt(d_model), the unembedding 1/sqrt(vocabulary)."""
    if name.startswith("blocks.0.mlp.b_"):
        return 0.0
    if name == "unembed.W_U":
        return 1.0 / math.sqrt(cond["p"] + 1)
    return 1.0 / math.sqrt(cond["d_model"])


def base_init(cond: dict[str, Any], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The seed's base init (float32), times init_scale, drawn in float64 in name order."""
    out = {}
    for name, shape in sorted(tensor_shapes(cond).items()):
        std = init_std(name, cond)
        values = torch.randn(shape, generator=gen, dtype=torch.float64) * std
        out[name] = (values * cond["init_scale"]).to(torch.float32)
    return out


def global_norms(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2 norm over all parameters of each init, accumulated in float64: (inits,)."""
    sq = sum(t.detach().double().pow(2).flatten(1).sum(dim=1) for t in params.values())
    return sq.sqrt()


def forward(p: dict[str, torch.Tensor], x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Logits (inits, batch, p) at the last position for token sequences x (batch, 3).

    Every sequence ends with '=' (the last vocabulary row), so the last
    position's query, key and value are one vector per init, and the keys and
    values of positions 0 and 1 are tables over the vocabulary, gathered by
    token: the attention costs O(vocabulary), not O(batch), matrix products.
    """
    emb = p["embed.W_E"].transpose(1, 2)  # n v d
    pos = p["pos_embed.W_pos"]  # n t d
    w_q, w_k, w_v = (p[f"blocks.0.attn.W_{c}"] for c in "QKV")
    d_head = w_q.shape[2]
    last = emb[:, -1] + pos[:, 2]  # n d: the '=' token at position 2
    q = torch.einsum("nd,nhed->nhe", last, w_q) / math.sqrt(d_head)
    scores, values = [], []
    for t in (0, 1):
        resid = emb + pos[:, t, None]  # n v d: every token at position t
        key_score = torch.einsum("nvd,nhed,nhe->nvh", resid, w_k, q)
        scores.append(key_score[:, x[:, t]])  # n b h
        values.append(torch.einsum("nvd,nhed->nvhe", resid, w_v)[:, x[:, t]])  # n b h e
    batch = x.shape[0]
    last_score = torch.einsum("nd,nhed,nhe->nh", last, w_k, q)
    scores.append(last_score[:, None].expand(-1, batch, -1))
    values.append(torch.einsum("nd,nhed->nhe", last, w_v)[:, None].expand(-1, batch, -1, -1))
    # The last query sees every position: the causal mask removes nothing here.
    attn = torch.softmax(torch.stack(scores, dim=-1), dim=-1)  # n b h t
    z = sum(attn[..., t, None] * values[t] for t in range(3))  # n b h e
    z = z.reshape(*z.shape[:2], n_heads * d_head)
    last = last[:, None] + torch.einsum("nbf,ndf->nbd", z, p["blocks.0.attn.W_O"])
    pre = torch.einsum("nbd,nmd->nbm", last, p["blocks.0.mlp.W_in"])
    post = torch.relu(pre + p["blocks.0.mlp.b_in"][:, None])
    out = torch.einsum("nbm,ndm->nbd", post, p["blocks.0.mlp.W_out"])
    last = last + out + p["blocks.0.mlp.b_out"][:, None]
    return torch.einsum("nbd,ndv->nbv", last, p["unembed.W_U"])


def losses_and_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (log-softmax in float64, as Nanda et al.) and accuracy per init."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    nll = -logp.gather(-1, y.expand(logp.shape[0], -1)[..., None])[..., 0]
    acc = (logits.argmax(dim=-1) == y).double().mean(dim=1)
    return nll.mean(dim=1), acc


class Transformer:
    """N transformers of one seed: init 0 the base init, inits 1..N-1 perturbed copies.

    Full-batch AdamW (lr warmed up linearly over `warmup` steps). With
    `constrain_norm`, every init's parameters are rescaled after each step to
    its initial global L2 norm (Liu et al.'s constrained-norm run, no grokking).
    """

    def __init__(self, cond: dict[str, Any], seed: int, device: str = "cpu") -> None:
        keep_freed_memory()
        self.cond = cond
        self.inits = cond["inits"]
        self.n_heads = cond["n_heads"]
        self.device = torch.device(device)
        gen = torch.Generator().manual_seed(seed)
        base = base_init(cond, gen)
        eps = cond["init_perturbation"]
        self.params = stack_inits(base, self.inits, eps, gen, self.device)
        self.norms = global_norms(self.params) if cond["constrain_norm"] else None
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()),
            lr=cond["lr"],
            betas=tuple(cond["betas"]),
            weight_decay=cond["weight_decay"],
        )
        warmup = cond["warmup"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda t: min((t + 1) / warmup, 1.0) if warmup else 1.0
        )
        (x, y), (xt, yt) = split(cond["p"], cond["train_fraction"], cond["data_seed"])
        self.x, self.y = (torch.from_numpy(a).to(self.device) for a in (x, y))
        self.x_test, self.y_test = (torch.from_numpy(a).to(self.device) for a in (xt, yt))

    def _losses(self) -> torch.Tensor:
        return losses_and_accuracy(forward(self.params, self.x, self.n_heads), self.y)[0]

    def evaluate(self) -> dict[str, np.ndarray]:
        """Train and test loss and accuracy of every init, without an update."""
        out = {}
        with torch.no_grad():
            for split_name, x, y in (("train", self.x, self.y), ("test", self.x_test, self.y_test)):
                loss, acc = losses_and_accuracy(forward(self.params, x, self.n_heads), y)
                out[f"{split_name}_loss"] = loss.cpu().numpy()
                out[f"{split_name}_accuracy"] = acc.cpu().numpy()
        return out

    def snapshot(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        return snapshot_of(self.params, names)

    def state(self) -> dict[str, Any]:
        """Weights, optimizer and schedule state: what the next steps depend on."""
        return {
            "params": saved_params(self.params),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        restore_params(self.params, state["params"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def loss(self) -> np.ndarray:
        """Full-batch training loss of every init, without an update."""
        with torch.no_grad():
            return self._losses().cpu().numpy()

    def rescale(self) -> None:
        """Scale each init's parameters back to its initial global norm."""
        with torch.no_grad():
            factor = self.norms / global_norms(self.params)
            for tensor in self.params.values():
                shape = (-1,) + (1,) * (tensor.dim() - 1)
                tensor.copy_((tensor.double() * factor.view(shape)).to(tensor.dtype))

    def step(self) -> np.ndarray:
        """One full-batch AdamW step of every init; returns the loss before it."""
        losses = self._losses()
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.norms is not None:
            self.rescale()
        return losses.detach().cpu().numpy()
