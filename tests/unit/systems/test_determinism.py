"""deterministic_torch: torch's deterministic mode without importing torch's compiler."""

import subprocess
import sys

import pytest

pytest.importorskip("torch")


def run(code: str) -> str:
    """`code` in a fresh interpreter (the flags and imports of this one are shared by tests)."""
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_sets_deterministic_mode_without_loading_inductor():
    out = run(
        "import sys, torch\n"
        "from conjugacy.systems.determinism import deterministic_torch\n"
        "deterministic_torch()\n"
        "print(torch.are_deterministic_algorithms_enabled(),"
        " torch.is_deterministic_algorithms_warn_only_enabled(),"
        " 'torch._inductor.config' in sys.modules, torch.backends.cuda.matmul.allow_tf32)\n"
        "import torch._inductor.config as c\n"
        "print(c.deterministic)\n"
    )
    assert out.splitlines() == ["True False False False", "True"]


def test_sets_inductor_flag_when_inductor_is_loaded():
    out = run(
        "import torch, torch._inductor.config as c\n"
        "from conjugacy.systems.determinism import deterministic_torch\n"
        "deterministic_torch()\n"
        "print(torch.are_deterministic_algorithms_enabled(), c.deterministic)\n"
    )
    assert out == "True True"
