"""Where the one-pass accumulation runs: numpy (BLAS on the CPU) or torch on a device.

Only the accumulation of the small float64 matrix moves to the device; the
eigen-decompositions after it are of matrices of side at most T and run in
numpy. Both backends sum the same float64 products block by block, so their
eigenvalues agree to rounding (tested through torch on the CPU, since CI has
no GPU). TF32 is never used: the accumulation is float64 throughout.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg.blas as blas

from conjugacy.config import ConfigError

DEVICES = ("cpu", "cuda", "torch-cpu")
PIECE = 1 << 18  # float64 values converted at a time by add_gram (2 MiB)
TILE = 256  # rows finish_gram mirrors at a time


class NumpyBackend:
    """float64 accumulation with BLAS in place: no product-sized temporaries."""

    name = "cpu"

    def zeros(self, shape: tuple[int, int]) -> np.ndarray:
        return np.zeros(shape, dtype=np.float64)

    def add_gram(self, acc: np.ndarray, block: np.ndarray) -> None:
        """acc += block @ block.T (lower triangle only; `finish_gram` mirrors it).

        The block (any float dtype) is converted to float64 about PIECE values
        at a time, so a float32 block never exists whole in float64. dsyrk on the
        transposed (Fortran-ordered) views writes into acc itself and does half
        the flops of a general product.
        """
        width = max(1, PIECE // max(1, block.shape[0]))
        for c0 in range(0, block.shape[1], width):
            b = np.ascontiguousarray(block[:, c0 : c0 + width], dtype=np.float64)
            out = blas.dsyrk(1.0, b.T, beta=1.0, c=acc.T, trans=1, lower=0, overwrite_c=1)
            if not np.shares_memory(out, acc):  # never expected; keep the result right anyway
                acc[...] = out.T

    def add_product(self, acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """acc += a.T @ b (covariance-type accumulation over rows of snapshot pairs)."""
        acc += a.T @ b

    def finish_gram(self, acc: Any) -> np.ndarray:
        """The accumulated Gram as a symmetric numpy array (lower triangle mirrored).

        Copied a band of TILE rows at a time: index arrays of the whole upper
        triangle would take as much memory as the Gram and 12x the time
        (n = 10^4: 3.2 s and 1.2 GB against 0.26 s and nothing).
        """
        n = acc.shape[0]
        for r0 in range(0, n, TILE):
            r1 = min(r0 + TILE, n)
            acc[r0:r1, r1:] = acc[r1:, r0:r1].T
            tile = acc[r0:r1, r0:r1]
            upper = np.triu_indices(r1 - r0, 1)
            tile[upper] = tile.T[upper]
        return acc

    def numpy(self, acc: Any) -> np.ndarray:
        return acc


class TorchBackend:
    """The same accumulation with torch in float64 on `device` ("cuda", or "cpu" for tests)."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = f"torch-{self.device.type}"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def _to(self, block: np.ndarray):
        """float64 on the device; converted there (a float32 block crosses the bus as is)."""
        host = self.torch.from_numpy(np.ascontiguousarray(block))
        return host.to(self.device, non_blocking=False).to(self.torch.float64)

    def zeros(self, shape: tuple[int, int]):
        return self.torch.zeros(shape, dtype=self.torch.float64, device=self.device)

    def add_gram(self, acc, block: np.ndarray) -> None:
        b = self._to(block)
        acc.addmm_(b, b.T)

    def add_product(self, acc, a: np.ndarray, b: np.ndarray) -> None:
        acc.addmm_(self._to(a).T, self._to(b))

    def finish_gram(self, acc) -> np.ndarray:
        return self.numpy(acc)

    def numpy(self, acc) -> np.ndarray:
        return acc.cpu().numpy()


def backend(device: str = "cpu", label: str = "option --device") -> NumpyBackend | TorchBackend:
    """The backend of a device name: "cpu" (numpy), "cuda" (torch), "torch-cpu" (torch, tests).

    "cuda" without a usable GPU is a ConfigError naming the option, raised
    before any data is read.
    """
    if device == "cpu":
        return NumpyBackend()
    if device == "torch-cpu":
        return TorchBackend("cpu")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"{label}: device cuda, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); expected cpu"
            )
        return TorchBackend("cuda")
    raise ConfigError(f"{label}: unknown device {device!r}; expected one of {list(DEVICES)}")
