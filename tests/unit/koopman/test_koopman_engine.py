"""The decomposition engine: memory-tight Gram route, read-ahead, rank rules, variants,
modes, the torch backend and the QR fallback, against systems with known eigenvalues."""

import logging

import numpy as np
import pytest
import xarray as xr
from scipy.optimize import linear_sum_assignment

from conjugacy.cli import main
from conjugacy.config import ConfigError
from conjugacy.koopman.backend import NumpyBackend, TorchBackend, backend
from conjugacy.koopman.dmd import dmd_dense, gavish_donoho, select_rank
from conjugacy.koopman.observables import Observable, lift, lift_gram_inplace, lifted_gram
from conjugacy.koopman.spectrum import (
    KoopmanOptions,
    accumulate_gram,
    decompose,
    pairs_of,
    write_spectrum,
)
from conjugacy.stores.contract import TrajectoryWriter, open_spectrum
from conjugacy.stores.readahead import prefetch

THETA = 0.3
TRUE = np.array([0.95 * np.exp(1j * THETA), 0.95 * np.exp(-1j * THETA), 0.9, 0.7])


def system(rng: np.random.Generator) -> np.ndarray:
    """Real non-normal 4 x 4 matrix with eigenvalues TRUE."""
    c, s = np.cos(THETA), np.sin(THETA)
    block = np.zeros((4, 4))
    block[0, 0], block[1, 1] = 0.9, 0.7
    block[2:, 2:] = 0.95 * np.array([[c, -s], [s, c]])
    basis = rng.standard_normal((4, 4))
    return basis @ block @ np.linalg.inv(basis)


def observations(
    seed: int, p: int, inits: int, steps: int, offset: float = 0.0, make=system
) -> np.ndarray:
    """y_t = C x_t (+ a static offset) of x_{t+1} = A x_t, A = make(rng): (inits, steps, p)."""
    rng = np.random.default_rng(seed)
    a = make(rng)
    c = 2 * rng.standard_normal((p, 4)) / np.sqrt(p)
    x = rng.standard_normal((inits, 4))
    out = np.empty((inits, steps, p))
    for t in range(steps):
        out[:, t] = x @ c.T
        x = x @ a.T
    return out + offset * rng.standard_normal(p)


def dataset(arr: np.ndarray) -> xr.Dataset:
    return xr.Dataset(
        {"x": (("init", "step", "x_dim0"), arr)}, coords={"step": np.arange(arr.shape[1])}
    )


def match_err(a, b) -> float:
    cost = np.abs(np.asarray(a)[:, None] - np.asarray(b)[None, :])
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].max())


def store(tmp_path, y: np.ndarray, name: str = "traj", step_block: int = 16):
    """A checksummed trajectory store (float64) written by the pipeline's writer."""
    path = tmp_path / f"{name}.zarr"
    writer = TrajectoryWriter(
        path, {"x": y.shape[2:]}, list(range(y.shape[1])), y.shape[0], "float64", {}, step_block
    )
    writer.write(0, {"x": y}, np.zeros(y.shape[:2]))
    writer.close()
    return path


# --- memory: the Gram route holds one (inits*T)^2 matrix --------------------------------------


@pytest.mark.parametrize("delays", [0, 1, 5])
def test_lift_gram_inplace_is_lifted_gram_bitwise(delays):
    rng = np.random.default_rng(0)
    inits, steps = 3, 17
    z = rng.standard_normal((inits * steps, 9))
    gram = z @ z.T
    ref = lifted_gram(gram, inits, steps, delays)
    # a tiny budget forces many row groups: each must read rows not yet overwritten
    got = lift_gram_inplace(gram.copy(), inits, steps, delays, budget=inits * inits * steps * 2)
    np.testing.assert_array_equal(got, ref)
    inplace = gram.copy()
    view = lift_gram_inplace(inplace, inits, steps, delays)
    assert np.shares_memory(view, inplace)  # no second matrix


def test_numpy_gram_accumulation_is_exact_and_in_place():
    rng = np.random.default_rng(1)
    be = NumpyBackend()
    acc = be.zeros((6, 6))
    blocks = [rng.standard_normal((6, k)) for k in (3, 10, 1)]
    for b in blocks:
        be.add_gram(acc, b)
    full = np.hstack(blocks)
    out = be.finish_gram(acc)
    assert out is acc
    np.testing.assert_allclose(out, full @ full.T, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(out, out.T)


@pytest.mark.parametrize(("n", "tile"), [(30, 7), (28, 7), (5, 7), (600, 256)])
def test_finish_gram_mirrors_the_lower_triangle_band_by_band(monkeypatch, n, tile):
    """Bands of `tile` rows (the last one short, or one band for a small matrix): every
    entry above the diagonal becomes its mirror's, bit for bit; the lower triangle is kept."""
    import conjugacy.koopman.backend

    monkeypatch.setattr(conjugacy.koopman.backend, "TILE", tile)
    lower = np.tril(np.random.default_rng(n).standard_normal((n, n)))
    acc = lower + np.triu(np.full((n, n), np.nan), 1)  # dsyrk leaves the upper triangle alone
    out = NumpyBackend().finish_gram(acc)
    assert out is acc
    np.testing.assert_array_equal(out, lower + np.tril(lower, -1).T)


def test_float32_blocks_are_accumulated_in_float64_piece_by_piece(monkeypatch):
    """A float32 block converted a few columns at a time gives the float64 Gram of its values."""
    import conjugacy.koopman.backend

    monkeypatch.setattr(conjugacy.koopman.backend, "PIECE", 6 * 4)  # 4 columns per piece of 6 rows
    rng = np.random.default_rng(2)
    block = (1e3 + rng.standard_normal((6, 11))).astype(np.float32)  # offset: float32 sums lose
    be = NumpyBackend()
    acc = be.zeros((6, 6))
    be.add_gram(acc, block)
    exact = block.astype(np.float64) @ block.astype(np.float64).T
    np.testing.assert_allclose(be.finish_gram(acc), exact, rtol=1e-14)
    single = block @ block.T  # float32 accumulation would be visibly off
    assert np.abs(single - exact).max() > 1e-9 * np.abs(exact).max()


ARENAS = """
import ctypes, ctypes.util, re, sys, threading
if sys.argv[1] == "share":
    from conjugacy.memory import share_one_arena
    assert share_one_arena()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
barrier, kept = threading.Barrier(4), []
def work():
    barrier.wait()  # all four alive at once: none can inherit an arena a finished one freed
    kept.append(libc.malloc(4096))  # a thread's first malloc picks its arena
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
f = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, f)
libc.fclose(f)
print(len(re.findall(r'<heap nr="[0-9]+">', open(sys.argv[2]).read())))
"""


def test_share_one_arena_makes_threads_allocate_from_one_arena(tmp_path):
    """After share_one_arena, threads that malloc at once share glibc's one arena (malloc_info)."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt and malloc_info are glibc's")

    def arenas(mode: str) -> int:
        out = tmp_path / f"{mode}.xml"
        run = subprocess.run(
            [sys.executable, "-c", ARENAS, mode, str(out)], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    assert arenas("default") > 1  # each allocating thread gets an arena of its own
    assert arenas("share") == 1


@pytest.mark.parametrize(("p", "delays"), [(200, 0), (200, 3)])
def test_gram_route_matches_dense_dmd(p, delays):
    y = observations(2, p, inits=4, steps=30, offset=0.5)
    res, facts = decompose(Observable(dataset(y), ["x"]), KoopmanOptions(delays=delays, rank=5))
    assert facts["route"] == "gram"
    lifted = lift(y, delays)
    x, yy = pairs_of(lifted)
    ref = dmd_dense(x.T, yy.T, lifted[:, 0].T, 5)
    assert match_err(res.eigenvalues, ref.eigenvalues) < 1e-9
    assert match_err(res.eigenvalues, [*TRUE, 1.0]) < 1e-8  # the offset adds eigenvalue 1
    np.testing.assert_allclose(np.abs(res.amplitudes), np.abs(ref.amplitudes), rtol=1e-6)


# --- read ahead ------------------------------------------------------------------------------


def test_prefetch_keeps_order_and_raises_in_place():
    assert list(prefetch([lambda i=i: i * i for i in range(7)], depth=3)) == [
        i * i for i in range(7)
    ]
    assert list(prefetch([lambda i=i: i for i in range(3)], depth=0)) == [0, 1, 2]

    def boom():
        raise OSError("chunk 3 unreadable")

    got = prefetch([lambda: 1, boom, lambda: 3], depth=2)
    assert next(got) == 1
    with pytest.raises(OSError, match="chunk 3"):
        next(got)


@pytest.mark.parametrize("p", [200, 6])
def test_readahead_gives_bitwise_the_same_spectrum(tmp_path, p):
    y = observations(3, p, inits=3, steps=40)
    path = store(tmp_path, y)
    eig = []
    for depth in (0, 1, 3):
        ds = xr.open_zarr(path, consolidated=False, chunks=None)
        res, _ = decompose(Observable(ds, ["x"], readahead=depth), KoopmanOptions(rank=4))
        eig.append(res.eigenvalues)
    np.testing.assert_array_equal(eig[0], eig[1])
    np.testing.assert_array_equal(eig[0], eig[2])
    assert match_err(eig[0], TRUE) < 1e-8


def test_param_ranges_cover_every_value_once(tmp_path):
    rng = np.random.default_rng(4)
    y = rng.standard_normal((2, 5, 7, 3))
    ds = xr.Dataset(
        {"a": (("init", "step", "a0", "a1"), y), "b": (("init", "step", "b0"), y[..., 0])},
        coords={"step": np.arange(5)},
    )
    obs = Observable(ds, ["a", "b"])
    ranges = obs.param_ranges(budget=2 * 5 * 3 * 2)  # two rows of `a` per block
    firsts = [(first, count) for _, _, first, count in ranges]
    assert firsts[0] == (0, 6) and sum(c for _, c in firsts) == 21 + 7
    assert all(a + c == b for (a, c), (b, _) in zip(firsts, firsts[1:], strict=False))
    blocks = list(obs.param_blocks(budget=2 * 5 * 3 * 2))
    assert [b.shape[2] for b in blocks] == [c for _, c in firsts]
    # a budget below one chunk's rows: each chunk split in equal pieces, none straddling two
    ds["a"].encoding["chunks"] = (2, 5, 4, 3)
    rows = [r for name, r, _, _ in Observable(ds, ["a"]).param_ranges(budget=2 * 5 * 3 * 3)]
    assert [(r.start, r.stop) for r in rows] == [(0, 2), (2, 4), (4, 5), (5, 7)]


# --- rank rules ------------------------------------------------------------------------------


def test_energy_fraction_and_gavish_donoho_by_hand():
    s = np.array([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14
    assert select_rank(s, 0.6, 1e-12) == 1  # 9/14 = 0.64
    assert select_rank(s, 0.9, 1e-12) == 2  # 13/14 = 0.93
    assert select_rank(s, 0.95, 1e-12) == 3
    # square matrix: omega(1) = 0.56 - 0.95 + 1.82 + 1.43 = 2.86 times the median
    s = np.array([100.0, 50.0, 2.0, 1.0, 0.9, 0.8, 0.7])
    assert gavish_donoho(s, (7, 7)) == pytest.approx(2.86)  # median 1.0
    assert select_rank(s, "gd", 1e-12, (7, 7)) == 2  # 2.0 < 2.86
    beta = 7 / 70  # a wide matrix: omega(0.1) = 1.603
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    assert gavish_donoho(s, (70, 7)) == pytest.approx(omega)
    assert select_rank(s, "gd", 1e-12, (70, 7)) == 3
    with pytest.raises(ValueError, match="energy fraction"):
        select_rank(s, 1.5, 1e-12)


@pytest.mark.parametrize("p", [300, 10])
def test_gavish_donoho_finds_the_signal_rank_in_noise(p):
    rng = np.random.default_rng(5)
    y = observations(6, p, inits=5, steps=60) + 0.02 * rng.standard_normal((5, 60, p))
    res, facts = decompose(Observable(dataset(y), ["x"]), KoopmanOptions(rank="gd"))
    assert res.rank == 4, (facts["route"], res.singular_values[:8])
    full, _ = decompose(Observable(dataset(y), ["x"]), KoopmanOptions(rank="full"))
    assert full.rank > 4


def test_rank_rule_and_rank_used_are_recorded(tmp_path):
    y = observations(7, 200, inits=3, steps=30)
    path = store(tmp_path, y)
    spec = write_spectrum(path, tmp_path / "s.zarr", KoopmanOptions(rank=0.999999))
    assert spec.attrs["rank_requested"] == "0.999999"
    stored = open_spectrum(tmp_path / "s.zarr")
    assert stored.attrs["rank"] == 4 == stored.sizes["mode"]
    assert match_err(stored.eigenvalues.values, TRUE) < 1e-8


# --- variants --------------------------------------------------------------------------------


OSC = np.array(
    [0.99 * np.exp(0.25j), 0.99 * np.exp(-0.25j), 0.97 * np.exp(0.7j), 0.97 * np.exp(-0.7j)]
)


def oscillator_system(rng: np.random.Generator) -> np.ndarray:
    """Real non-normal 4 x 4 matrix with eigenvalues OSC."""
    block = np.zeros((4, 4))
    for i, (radius, angle) in enumerate([(0.99, 0.25), (0.97, 0.7)]):
        c, s = np.cos(angle), np.sin(angle)
        block[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = radius * np.array([[c, -s], [s, c]])
    basis = rng.standard_normal((4, 4))
    return basis @ block @ np.linalg.inv(basis)


def oscillators(seed: int, p: int, inits: int, steps: int) -> np.ndarray:
    """Two lightly damped oscillators (eigenvalues OSC), observed in p dims: (inits, steps, p)."""
    return observations(seed, p, inits, steps, make=oscillator_system)


@pytest.mark.parametrize(("p", "inits", "route"), [(10, 5, "covariance"), (200, 3, "gram")])
def test_tls_and_fb_debias_noisy_eigenvalues(p, inits, route):
    """Exact DMD is biased by noise toward the interior; tls and fb are not (on average).

    fb assumes the same signal-to-noise forward and backward, which holds for
    sustained modes like these (a fast-decaying mode is over-corrected).
    """
    rng = np.random.default_rng(8)
    clean = oscillators(9, p, inits=inits, steps=60)
    found = {v: [] for v in ("exact", "tls", "fb")}
    for _ in range(10):
        y = clean + 0.1 * rng.standard_normal(clean.shape)
        obs = Observable(dataset(y), ["x"])
        for variant, out in found.items():
            res, facts = decompose(obs, KoopmanOptions(rank=4, variant=variant))
            assert facts["route"] == route
            out.append([res.eigenvalues[np.argmin(np.abs(res.eigenvalues - t))] for t in OSC])
    mean = {v: np.mean(e, axis=0) for v, e in found.items()}
    bias = {v: np.abs(m - OSC).max() for v, m in mean.items()}
    assert np.all(np.abs(mean["exact"]) < np.abs(OSC))  # shrunk toward the origin
    assert bias["exact"] > 5e-3
    assert bias["tls"] < 0.25 * bias["exact"], bias
    assert bias["fb"] < 0.25 * bias["exact"], bias


@pytest.mark.parametrize("variant", ["tls", "fb"])
@pytest.mark.parametrize("p", [200, 6])
def test_variants_are_exact_on_noise_free_data(variant, p):
    y = observations(10, p, inits=3, steps=40)
    res, _ = decompose(Observable(dataset(y), ["x"]), KoopmanOptions(rank=4, variant=variant))
    assert match_err(res.eigenvalues, TRUE) < 1e-8


# --- modes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "delays", "offset", "route"),
    [
        (200, 0, 0.0, "gram"),
        (200, 2, 0.0, "gram"),
        (6, 0, 0.0, "covariance"),
        (6, 3, 0.0, "covariance"),
        (200, 0, 1e4, "qr-tall"),
    ],
)
def test_modes_reconstruct_a_linear_system(tmp_path, p, delays, offset, route):
    y = observations(11, p, inits=3, steps=40)
    if offset:
        y = 1e-4 * y + offset * np.random.default_rng(12).standard_normal(p)  # eigenvalue 1 too
    path = store(tmp_path, y)
    rank = 5 if offset else 4
    write_spectrum(path, tmp_path / "s.zarr", KoopmanOptions(rank=rank, delays=delays, modes=True))
    spec = open_spectrum(tmp_path / "s.zarr")
    assert spec.attrs["route"] == route and spec.attrs["status"] == "complete"
    assert spec["modes"].dims == ("mode", "value") and spec["modes"].shape == (rank, p)
    assert spec.attrs["integrity"]["modes"] >= 1
    phi, mu, b = spec.modes.values, spec.eigenvalues.values, spec.amplitudes.values
    for t in range(40 - delays):
        pred = (phi * mu[:, None] ** t).T @ b  # (values, inits)
        np.testing.assert_allclose(pred.real.T, y[:, t], atol=1e-7 * np.abs(y).max())


def test_modes_second_pass_is_chunked(tmp_path, monkeypatch):
    import conjugacy.koopman.spectrum as koopman

    monkeypatch.setattr(koopman, "MODE_CHUNK", 64)
    y = observations(13, 300, inits=2, steps=30)
    path = store(tmp_path, y)
    write_spectrum(path, tmp_path / "s.zarr", KoopmanOptions(rank=4, modes=True))
    spec = open_spectrum(tmp_path / "s.zarr")
    assert spec.attrs["integrity"]["modes"] == 5  # 300 values in chunks of 64
    phi = spec.modes.values
    pred = (phi * spec.eigenvalues.values[:, None] ** 7).T @ spec.amplitudes.values
    np.testing.assert_allclose(pred.real.T, y[:, 7], atol=1e-9)


def test_modes_with_pca_is_refused_before_reading(tmp_path):
    path = store(tmp_path, observations(14, 20, inits=2, steps=20))
    with pytest.raises(ConfigError, match="--modes"):
        write_spectrum(path, tmp_path / "s.zarr", KoopmanOptions(pca=3, modes=True))
    assert not (tmp_path / "s.zarr").exists()


# --- torch backend ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("p", "delays", "variant"), [(200, 0, "exact"), (200, 2, "fb"), (6, 2, "tls"), (8, 0, "exact")]
)
def test_torch_backend_equals_numpy(p, delays, variant):
    rng = np.random.default_rng(15)
    y = observations(16, p, inits=3, steps=40, offset=0.3) + 1e-3 * rng.standard_normal((3, 40, p))
    opts = dict(rank=5, delays=delays, variant=variant)
    ref, facts = decompose(Observable(dataset(y), ["x"]), KoopmanOptions(**opts))
    got, facts_t = decompose(
        Observable(dataset(y), ["x"]), KoopmanOptions(device="torch-cpu", **opts)
    )
    assert facts["route"] == facts_t["route"] in ("gram", "covariance")
    rel = np.abs(got.eigenvalues - ref.eigenvalues) / np.abs(ref.eigenvalues)
    assert rel.max() < 1e-10


@pytest.mark.gpu
def test_torch_gram_accumulation_is_float64():
    be = TorchBackend("cpu")
    acc = be.zeros((3, 3))
    b = np.array([[1.0, 1e-9], [1e8, 1.0], [0.5, 0.25]])
    be.add_gram(acc, b)
    out = be.finish_gram(acc)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, b @ b.T)


@pytest.mark.gpu
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="device cuda.*no CUDA GPU"):
        backend("cuda", label="option --device")
    path = store(tmp_path, observations(17, 6, inits=2, steps=20))
    assert main(["koopman", str(path), "-o", str(tmp_path / "s"), "--device", "cuda"]) == 2
    assert not (tmp_path / "s").exists()


# --- QR fallback, command line ---------------------------------------------------------------


@pytest.mark.parametrize(("p", "route"), [(300, "qr-tall"), (6, "qr-wide")])
def test_ill_conditioned_gram_falls_back_to_qr_and_says_so(p, route, caplog):
    y = 1e-4 * observations(18, p, inits=4, steps=60) + 1e4 * np.random.default_rng(
        19
    ).standard_normal(p)
    with caplog.at_level(logging.WARNING, logger="conjugacy.koopman.spectrum"):
        res, facts = decompose(Observable(dataset(y), ["x"]), KoopmanOptions(rank=5))
    assert facts["route"] == route
    assert match_err(res.eigenvalues, [*TRUE, 1.0]) < 1e-6
    assert "condition number" in caplog.text and "QR route" in caplog.text
    cond = float(caplog.text.split("condition number ")[1].split()[0])
    assert cond > 1e14  # rounding-level eigenvalue: its exact size depends on the eigensolver


def test_cli_variant_rank_rule_and_modes(tmp_path):
    path = store(tmp_path, observations(20, 200, inits=3, steps=30))
    out = tmp_path / "s.zarr"
    args = ["koopman", str(path), "-o", str(out), "--variant", "tls", "--rank", "0.999999"]
    assert main([*args, "--modes", "--readahead", "0"]) == 0
    spec = open_spectrum(out)
    assert spec.attrs["variant"] == "tls" and spec.attrs["rank"] == 4 and "modes" in spec
    assert match_err(spec.eigenvalues.values, TRUE) < 1e-8
    with pytest.raises(SystemExit):
        main(["koopman", str(path), "-o", str(out), "--rank", "1.5"])


def test_accumulated_gram_is_the_same_on_both_backends(tmp_path):
    y = observations(21, 300, inits=2, steps=25, offset=3.0)
    ds = xr.open_zarr(store(tmp_path, y), consolidated=False, chunks=None)
    flat = y.reshape(50, -1)
    ref = flat @ flat.T
    for be in (NumpyBackend(), TorchBackend("cpu")):
        got = accumulate_gram(Observable(ds, ["x"]), be)
        np.testing.assert_allclose(got, ref, rtol=1e-13)


@pytest.mark.parametrize(
    ("koopman", "error"),
    [
        ({"rank": "gd", "variant": "tls", "modes": True}, None),
        ({"rank": 0.99, "variant": "fb", "device": "cuda"}, None),
        ({"rank": 1.5}, "koopman.rank"),
        ({"rank": "most"}, "koopman.rank"),
        ({"variant": "dense"}, "koopman.variant"),
        ({"device": "tpu"}, "koopman.device"),
    ],
)
def test_config_koopman_options(koopman, error):
    from conjugacy.config import resolve

    raw = {"experiment": "t", "conditions": {"omd": {"system": "omd", "koopman": koopman}}}
    if error is None:
        cfg = resolve(raw)
        assert {k: cfg["conditions"]["omd"]["koopman"][k] for k in koopman} == koopman
    else:
        with pytest.raises(ConfigError, match=error):
            resolve(raw)
