"""Deterministic torch for every training of the project: one seed, the same bits."""

from __future__ import annotations

import os
import sys


def deterministic_torch() -> None:
    """Deterministic kernels, a fixed cuBLAS workspace and no TF32, set before any training.

    torch.use_deterministic_algorithms(True) also sets the flag of torch's
    compiler (inductor) by importing it: 0.9 s of every training process
    here, although nothing in the project compiles. So torch's own flag is
    set directly and inductor's through TORCHINDUCTOR_DETERMINISTIC, which it
    reads when it is first imported; when it is already loaded (a user's
    torch.compile), the public call sets both.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when CUDA starts
    os.environ.setdefault("TORCHINDUCTOR_DETERMINISTIC", "1")
    import torch

    direct = getattr(torch._C, "_set_deterministic_algorithms", None)
    if "torch._inductor.config" in sys.modules or direct is None:
        torch.use_deterministic_algorithms(True)
    else:
        direct(True, warn_only=False)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
