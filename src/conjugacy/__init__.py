"""conjugacy: are two ways of training a model dynamically equivalent?

Record parameter trajectories, estimate Koopman eigenvalues by DMD, and compare
eigenvalue sets with Wasserstein distances. Submodules import their heavy
dependencies themselves, so `import conjugacy.config` stays light.

The public API is loaded on first use (`conjugacy.record` imports torch and
zarr then), so `import conjugacy` imports neither torch nor xarray.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute in it; None: the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "record": ("conjugacy.training.record", "record"),
    "spectrum": ("conjugacy.api", "spectrum"),
    "wasserstein": ("conjugacy.api", "wasserstein"),
    "compare": ("conjugacy.api", "compare"),
    "open_trajectory": ("conjugacy.api", "open_trajectory"),
    "open_spectrum": ("conjugacy.api", "open_spectrum"),
    "integrations": ("conjugacy.integrations", None),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'conjugacy' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
