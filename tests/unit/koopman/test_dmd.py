"""Exact DMD (dmd.py), delay embedding (observables.py) and the Koopman routes (koopman.py)."""

import numpy as np
import pytest
import scipy.linalg
import xarray as xr
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA

from conjugacy.koopman.dmd import (
    dmd_dense,
    dmd_from_covariance,
    dmd_from_gram,
    needs_qr,
    select_rank,
    tsqr_update,
)
from conjugacy.koopman.observables import Observable, lift, lifted_gram
from conjugacy.koopman.spectrum import (
    KoopmanOptions,
    covariance_route,
    decompose,
    gram_route,
    lag_products,
    pairs_of,
    qr_tall_route,
    qr_wide_route,
    write_spectrum,
)

THETA = 0.3
TRUE = np.array([0.9, 0.5, 0.8 * np.exp(1j * THETA), 0.8 * np.exp(-1j * THETA)])


def system(rng: np.random.Generator) -> np.ndarray:
    """Real non-normal 4 x 4 matrix with eigenvalues TRUE (a rotation-scaling block)."""
    c, s = np.cos(THETA), np.sin(THETA)
    block = np.zeros((4, 4))
    block[0, 0], block[1, 1] = 0.9, 0.5
    block[2:, 2:] = 0.8 * np.array([[c, -s], [s, c]])
    basis = rng.standard_normal((4, 4))
    return basis @ block @ np.linalg.inv(basis)


def simulate(a, c, state0):
    """Observations y_t = C x_t of x_{t+1} = A x_t: (inits, T, P) for T given by state0."""
    states, steps = state0
    out = np.empty((states.shape[0], steps, c.shape[0]))
    x = states
    for t in range(steps):
        out[:, t] = x @ c.T
        x = x @ a.T
    return out


def observations(seed, p, inits, steps):
    rng = np.random.default_rng(seed)
    a = system(rng)
    c = rng.standard_normal((p, 4))
    x0 = rng.standard_normal((inits, 4))
    return a, x0, simulate(a, c, (x0, steps))


def dataset(arr, steps=None, **extra):
    steps = np.arange(arr.shape[1]) if steps is None else steps
    data = {"x": (("init", "step", "x_dim0"), arr)}
    data.update({k: (("init", "step", f"{k}_dim0"), v) for k, v in extra.items()})
    return xr.Dataset(data, coords={"step": steps})


def match_err(a, b):
    """Largest distance between two equal-size eigenvalue sets under the best matching."""
    assert len(a) == len(b)
    cost = np.abs(np.asarray(a)[:, None] - np.asarray(b)[None, :])
    rows, cols = linear_sum_assignment(cost)
    return cost[rows, cols].max()


def miss(found, true):
    """Largest distance from a true eigenvalue to the nearest found one (any sizes)."""
    return max(np.abs(found - t).min() for t in true)


def dense(y, delays, rank, size=None):
    lifted = lift(y, delays)
    x, yy = pairs_of(lifted)
    return dmd_dense(x.T, yy.T, lifted[:, 0].T, rank, size)


# --- known spectrum --------------------------------------------------------------------------


def test_dense_and_squared_matrices_recover_known_eigenvalues():
    _, _, y = observations(0, p=200, inits=5, steps=30)
    x = np.concatenate([y[i, :-1] for i in range(5)]).T  # D x M, per-init pairs
    yy = np.concatenate([y[i, 1:] for i in range(5)]).T
    x0 = y[:, 0].T
    d, m = x.shape
    results = [
        dmd_dense(x, yy, x0, 4),
        dmd_from_gram(x.T @ x, x.T @ yy, x.T @ x0, 4, d),
        dmd_from_covariance(x @ x.T, yy @ x.T, x0, 4, m),
    ]
    for res in results:
        assert res.rank == 4 and res.eigenvalues.shape == (4,)
        assert match_err(res.eigenvalues, TRUE) < 1e-8
        assert np.all(np.diff(np.abs(res.eigenvalues)) <= 1e-12)  # descending modulus


@pytest.mark.parametrize(("p", "steps", "route"), [(200, 30, "gram"), (6, 60, "covariance")])
def test_decompose_recovers_known_eigenvalues(p, steps, route):
    _, _, y = observations(1, p=p, inits=5, steps=steps)
    obs = Observable(dataset(y), ["x"])
    res, facts = decompose(obs, KoopmanOptions(rank=4))
    assert facts["route"] == route
    assert facts["lifted_dim"] == p and facts["n_pairs"] == 5 * (steps - 1)
    assert match_err(res.eigenvalues, TRUE) < 1e-8
    if route == "gram":
        direct = gram_route(obs, 0, 4, p)
        assert match_err(direct.eigenvalues, TRUE) < 1e-8


@pytest.mark.parametrize("delays", [3, 6])
def test_delays_recover_eigenvalues_from_a_scalar(delays):
    rng = np.random.default_rng(2)
    a = system(rng)
    y = simulate(a, rng.standard_normal((1, 4)), (rng.standard_normal((4, 4)), 40))
    res, facts = decompose(Observable(dataset(y), ["x"]), KoopmanOptions(delays=delays, rank=4))
    assert facts["route"] == "covariance"
    assert facts["lifted_dim"] == delays + 1 and facts["n_pairs"] == 4 * (40 - delays - 1)
    assert match_err(res.eigenvalues, TRUE) < 1e-8
    # Without delays a scalar carries one direction only: the spectrum cannot be recovered.
    flat, _ = decompose(Observable(dataset(y), ["x"]), KoopmanOptions(rank=4))
    assert flat.rank == 1


@pytest.mark.parametrize(("p", "route"), [(200, "gram"), (6, "covariance")])
def test_pooled_pairs_never_cross_inits(p, route):
    _, _, y = observations(3, p=p, inits=2, steps=30)
    res, facts = decompose(Observable(dataset(y), ["x"]), KoopmanOptions(rank=4))
    assert facts["route"] == route
    x = np.hstack([y[0, :-1].T, y[1, :-1].T])
    yy = np.hstack([y[0, 1:].T, y[1, 1:].T])
    ref = dmd_dense(x, yy, y[:, 0].T, 4)
    assert match_err(res.eigenvalues, ref.eigenvalues) < 1e-9
    assert match_err(res.eigenvalues, TRUE) < 1e-8
    np.testing.assert_allclose(np.abs(res.amplitudes), np.abs(ref.amplitudes), rtol=1e-7)
    # Concatenating the inits into one series adds a bogus pair (end of 0 -> start of 1).
    z = np.hstack([y[0].T, y[1].T])
    naive = dmd_dense(z[:, :-1], z[:, 1:], y[:, 0].T, 4)
    assert match_err(naive.eigenvalues, TRUE) > 1e-3


# --- routes agree ----------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "steps", "rank"), [(12, 20, "full"), (40, 8, "full"), (12, 20, 6)])
def test_all_routes_agree_on_random_data(p, steps, rank):
    rng = np.random.default_rng(4)
    y = rng.standard_normal((3, steps, p)) * np.logspace(0, -2, p)  # condition ~ 1e2
    obs = Observable(dataset(y), ["x"])
    delays = 1
    d, m = 2 * p, 3 * (steps - 2)
    ref = dense(y, delays, rank)
    results = [
        gram_route(obs, delays, rank, d),
        covariance_route(obs, delays, rank, m),
        qr_tall_route(obs, delays, rank, max(d, m)),
        qr_wide_route(obs, delays, rank, max(d, m)),
    ]
    for res in results:
        assert res.rank == ref.rank == (min(d, m) if rank == "full" else rank)
        assert match_err(res.eigenvalues, ref.eigenvalues) < 1e-8
        np.testing.assert_allclose(res.singular_values[: ref.rank], ref.singular_values[: ref.rank])
        np.testing.assert_allclose(np.abs(res.amplitudes), np.abs(ref.amplitudes), rtol=1e-8)


@pytest.mark.parametrize("overwrite", [False, True])
def test_leading_eigh_is_dsyevr_for_the_vectors_it_keeps(overwrite):
    """every=True: all eigenvalues and the leading eigenvectors (the tridiagonal route),
    against scipy's eigh, on a PSD matrix."""
    from conjugacy.koopman.dmd import leading_eigh

    rng = np.random.default_rng(12)
    a = rng.standard_normal((150, 40)) * np.logspace(0, -3, 40)  # rank 40, spread spectrum
    m = a @ a.T
    ref_lam, ref_vec = scipy.linalg.eigh(m)
    ref_lam, ref_vec = np.clip(ref_lam[::-1], 0, None), ref_vec[:, ::-1]
    lam, vec = leading_eigh(m.copy(), lambda values: 7, most=10, overwrite=overwrite, every=True)
    assert np.abs(lam - ref_lam).max() <= 1e-13 * ref_lam[0]
    assert vec.shape == (150, 7)
    np.testing.assert_allclose(np.abs(np.sum(vec * ref_vec[:, :7], axis=0)), 1.0, atol=1e-10)
    np.testing.assert_allclose(m @ vec, vec * lam[:7], atol=1e-12 * ref_lam[0])
    with pytest.raises(ValueError, match="at most 10"):
        leading_eigh(m.copy(), lambda values: 11, most=10)
    lam_all, vec_all = leading_eigh(m.copy(), lambda values: 150)  # no bound: dsyevr
    assert vec_all.shape == (150, 150) and np.allclose(lam_all, ref_lam, atol=1e-13 * lam[0])


@pytest.mark.parametrize(("delays", "budget"), [(0, 1 << 20), (3, 1 << 20), (4, 150), (7, 60)])
def test_lag_products_are_the_lifted_covariances(delays, budget):
    """X X^T, Y X^T and Y Y^T of lifted pairs from lagged sums, against the lifted data itself.

    Small budgets split the steps into several overlapping blocks; the large
    offset makes each product mostly cancelling terms, where the head/tail
    recurrence would show a rounding problem.
    """
    rng = np.random.default_rng(11)
    y = 1e3 + rng.standard_normal((3, 40, 5))
    obs = Observable(dataset(y), ["x"])
    b, head = lag_products(obs, delays, budget=budget)
    assert budget > 1000 or len(list(obs.step_blocks(delays + 1, budget))) > 2
    lifted = lift(y, delays)
    x, yy = lifted[:, :-1].reshape(-1, lifted.shape[2]), lifted[:, 1:].reshape(-1, lifted.shape[2])
    d = lifted.shape[2]
    scale = np.abs(x.T @ x).max()
    for got, want in (
        (b[:-1, :, :-1].reshape(d, d), x.T @ x),
        (b[1:, :, :-1].reshape(d, d), yy.T @ x),
        (b[1:, :, 1:].reshape(d, d), yy.T @ yy),
    ):
        assert np.abs(got - want).max() <= 1e-13 * scale
    np.testing.assert_array_equal(head, y[:, : delays + 1])


@pytest.mark.parametrize(("p", "steps", "route"), [(200, 30, "qr-tall"), (6, 60, "qr-wide")])
def test_ill_conditioned_data_take_the_qr_route(p, steps, route):
    rng = np.random.default_rng(5)
    _, _, dyn = observations(6, p=p, inits=5, steps=steps)
    y = 1e-4 * dyn + 1e4 * rng.standard_normal(p)  # constant offset: eigenvalue 1
    true = np.append(TRUE, 1.0)
    obs = Observable(dataset(y), ["x"])
    res, facts = decompose(obs, KoopmanOptions(rank=5))
    ref = dense(y, 0, 5)
    assert ref.singular_values[0] / ref.singular_values[4] > 1e8
    assert facts["route"] == route and res.rank == 5
    assert match_err(res.eigenvalues, ref.eigenvalues) < 1e-6
    qr_err = match_err(res.eigenvalues, true)
    n_pairs = 5 * (steps - 1)
    squared = gram_route(obs, 0, 5, p) if p > n_pairs else covariance_route(obs, 0, 5, n_pairs)
    assert qr_err < 1e-6
    assert qr_err < 1e-3 * miss(squared.eigenvalues, true)


# --- embedded block systems: known eigenvalues, chosen conditioning -------------------------

BLOCKS = [(0.95, 0.3), (0.9, 0.0), (0.8, 1.1), (0.6, 0.0)]  # (radius, angle): 6 eigenvalues


def block_system(blocks=BLOCKS) -> tuple[np.ndarray, np.ndarray]:
    """Block-diagonal real matrix (2 x 2 rotation-scalings, 1 x 1 decays) and its eigenvalues."""
    k = sum(1 if angle == 0 else 2 for _, angle in blocks)
    a, eig, i = np.zeros((k, k)), [], 0
    for radius, angle in blocks:
        if angle == 0:
            a[i, i] = radius
            eig.append(radius)
            i += 1
        else:
            c, s = radius * np.cos(angle), radius * np.sin(angle)
            a[i : i + 2, i : i + 2] = [[c, -s], [s, c]]
            eig += [radius * np.exp(1j * angle), radius * np.exp(-1j * angle)]
            i += 2
    return a, np.array(eig)


def embedded(seed, dim, inits, steps, small=1.0, paired=False):
    """Observations y = Q D z (inits, steps, dim) of z_{t+1} = A z_t (A: BLOCKS), A's eigenvalues.

    Q: orthonormal columns (dim >= 6; else the first dim rows of an orthogonal
    matrix), D = diag(1, 1, 1, small, small, small): the data's condition number
    is about 1 / small. `paired` gives inits in +- pairs, so the pooled mean is 0.
    """
    rng = np.random.default_rng(seed)
    a, eig = block_system()
    k = a.shape[0]
    q = np.linalg.qr(rng.standard_normal((max(dim, k), k)))[0][:dim]
    c = q * np.array([1.0] * (k // 2) + [small] * (k - k // 2))[None, :]
    z = rng.standard_normal((inits // 2 if paired else inits, k))
    z = np.concatenate([z, -z]) if paired else z
    out = np.empty((len(z), steps, dim))
    for t in range(steps):
        out[:, t] = z @ c.T
        z = z @ a.T
    return out, eig


@pytest.mark.parametrize("small", [3e-5, 1e-5, 1e-6])
@pytest.mark.parametrize(
    ("p", "steps", "squared_route"), [(200, 30, "gram"), (6, 60, "covariance")]
)
def test_eigenvalues_stay_accurate_for_condition_numbers_1e4_to_1e7(p, steps, squared_route, small):
    """Through decompose, known eigenvalues to 1e-9 where the data's condition number is 1e5..3e6.

    A squared (Gram or covariance) matrix has condition number 1e10..1e13 here
    and gives eigenvalues wrong by 1e-7..1e-3: the switch to QR must happen.
    """
    y, eig = embedded(20, p, inits=4, steps=steps, small=small)
    s = np.linalg.svd(y[:, :-1].reshape(-1, p), compute_uv=False)
    assert 1e4 < s[0] / s[5] < 1e7
    obs = Observable(dataset(y), ["x"])
    res, _ = decompose(obs, KoopmanOptions(rank=6))
    assert match_err(res.eigenvalues, eig) < 1e-9
    n_pairs = 4 * (steps - 1)
    squared = gram_route(obs, 0, 6, p) if p > n_pairs else covariance_route(obs, 0, 6, n_pairs)
    assert match_err(squared.eigenvalues, eig) > 1e-7  # what the test guards against


@pytest.mark.parametrize(
    ("p", "steps", "delays", "route"),
    [(200, 30, 2, "qr-tall"), (6, 60, 2, "qr-wide"), (3, 60, 3, "qr-wide")],
)
@pytest.mark.parametrize("seed", [21, 22, 23])
def test_qr_routes_with_delays_recover_known_eigenvalues(p, steps, delays, route, seed):
    """Ill-conditioned delay-embedded data: the QR routes give the 6 true eigenvalues to 1e-9."""
    y, eig = embedded(seed, p, inits=4, steps=steps, small=1e-5)
    res, facts = decompose(Observable(dataset(y), ["x"]), KoopmanOptions(rank=6, delays=delays))
    assert facts["route"] == route and facts["lifted_dim"] == p * (delays + 1)
    assert res.rank == 6
    assert match_err(res.eigenvalues, eig) < 1e-9


@pytest.mark.parametrize("small", [1e-5, 1e-6])
@pytest.mark.parametrize(("p", "steps", "route"), [(200, 30, "qr-tall"), (6, 60, "qr-wide")])
def test_fb_on_qr_routes_recovers_known_eigenvalues(p, steps, route, small):
    """Forward-backward DMD keeps the QR routes' accuracy on noise-free ill-conditioned data."""
    y, eig = embedded(24, p, inits=4, steps=steps, small=small)
    for delays in (0, 2):
        opts = KoopmanOptions(rank=6, delays=delays, variant="fb")
        res, facts = decompose(Observable(dataset(y), ["x"]), opts)
        assert facts["route"] == route
        assert match_err(res.eigenvalues, eig) < 1e-9


@pytest.mark.parametrize(("p", "steps", "route"), [(200, 30, "qr-tall"), (6, 60, "qr-wide")])
def test_tls_on_qr_routes_recovers_known_eigenvalues(p, steps, route):
    """TLS DMD on the QR routes, just past the switch (condition ~3e4): the true eigenvalues."""
    y, eig = embedded(25, p, inits=4, steps=steps, small=1e-4)
    for delays in (0, 2):
        opts = KoopmanOptions(rank=6, delays=delays, variant="tls")
        res, facts = decompose(Observable(dataset(y), ["x"]), opts)
        assert facts["route"] == route
        assert match_err(res.eigenvalues, eig) < 1e-6


@pytest.mark.xfail(
    strict=True,
    reason="reduced_dmd's tls takes eigh of the squared [X~; Y~] Gram, so on the QR routes "
    "it is no more accurate than a squared route (error ~1e-4 at condition 3e6)",
)
@pytest.mark.parametrize(("p", "steps"), [(200, 30), (6, 60)])
def test_tls_on_qr_routes_keeps_qr_accuracy(p, steps):
    """TLS on the QR routes as accurate as exact DMD there (1e-9) at condition number ~3e6."""
    y, eig = embedded(25, p, inits=4, steps=steps, small=1e-6)
    res, _ = decompose(Observable(dataset(y), ["x"]), KoopmanOptions(rank=6, variant="tls"))
    assert match_err(res.eigenvalues, eig) < 1e-9


# --- rank ------------------------------------------------------------------------------------


def test_rank_full_is_numerical_rank_and_integer_rank_is_capped():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((10, 3)) @ rng.standard_normal((3, 40))  # exact rank 3
    y = rng.standard_normal((10, 40))
    x0 = x[:, :2]
    for rank, expect in [("full", 3), (2, 2), (3, 3), (7, 3)]:
        for res in [
            dmd_dense(x, y, x0, rank),
            dmd_from_gram(x.T @ x, x.T @ y, x.T @ x0, rank, 10),
            dmd_from_covariance(x @ x.T, y @ x.T, x0, rank, 40),
        ]:
            assert res.rank == expect
            assert res.eigenvalues.shape == (expect,) and res.amplitudes.shape == (expect, 2)
    assert dmd_dense(x, y, x0, "full").singular_values.shape == (10,)


def test_select_rank_and_needs_qr():
    s = np.array([10.0, 1.0, 2e-3, 1e-9])
    assert select_rank(s, "full", 1e-6) == 3
    assert select_rank(s, 2, 1e-6) == 2
    assert select_rank(s, 4, 1e-6) == 3
    assert select_rank(s, "full", 1e-12) == 4
    with pytest.raises(ValueError, match="zero"):
        select_rank(np.zeros(3), "full", 1e-6)
    assert not needs_qr(s, 2)
    assert not needs_qr(s, 3)  # 2e-4 * s_max: resolved
    assert needs_qr(s, 4) and needs_qr(s, "full")  # 1e-10 * s_max: not resolved
    assert not needs_qr(np.array([1.0, 2e-4]), "full")


def test_tsqr_update_streams_the_r_factor():
    """R of blocks streamed in is the R of the whole, and stays N x N as rows come in."""
    rng = np.random.default_rng(8)
    z = rng.standard_normal((50, 6))
    r = None
    for block in np.split(z, [7, 20, 33]):
        r = tsqr_update(r, block.copy())
        assert r.shape == (6, 6)  # memory does not grow with the rows seen
    np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=1e-14)
    np.testing.assert_allclose(r.T @ r, z.T @ z, rtol=1e-12, atol=1e-12)
    ref = scipy.linalg.qr(z, mode="economic")[1]
    np.testing.assert_allclose(np.abs(r), np.abs(ref), atol=1e-12)


# --- delay embedding -------------------------------------------------------------------------


def test_lift_layout_is_delay_major():
    block = np.arange(2 * 4 * 2, dtype=float).reshape(2, 4, 2)  # (inits, L, P)
    out = lift(block, 2)
    assert out.shape == (2, 2, 6)
    np.testing.assert_array_equal(out[0, 0], [0, 1, 2, 3, 4, 5])  # x0, x1, x2
    np.testing.assert_array_equal(out[0, 1], [2, 3, 4, 5, 6, 7])  # x1, x2, x3
    np.testing.assert_array_equal(out[1, 1], [10, 11, 12, 13, 14, 15])
    assert lift(block, 0) is block


def test_lifted_gram_is_gram_of_lifted_data():
    rng = np.random.default_rng(9)
    inits, steps, p, delays = 3, 9, 4, 2
    block = rng.standard_normal((inits, steps, p))
    flat = block.reshape(inits * steps, p)
    got = lifted_gram(flat @ flat.T, inits, steps, delays)
    lifted = lift(block, delays).reshape(inits * (steps - delays), -1)
    m = steps - delays
    np.testing.assert_allclose(got.reshape(inits * m, inits * m), lifted @ lifted.T, rtol=1e-12)


# --- PCA -------------------------------------------------------------------------------------


def test_pca_route_matches_sklearn_pca():
    rng = np.random.default_rng(10)
    _, _, y = observations(11, p=20, inits=4, steps=25)
    y = y + 0.05 * rng.standard_normal(y.shape) + 3.0  # offset: PCA must centre
    k, delays, rank = 5, 2, 5
    opts = KoopmanOptions(delays=delays, rank=rank, pca=k)
    res, facts = decompose(Observable(dataset(y), ["x"]), opts)
    assert facts["route"] == "pca" and facts["lifted_dim"] == k * (delays + 1)
    scores = PCA(k, svd_solver="full").fit_transform(y.reshape(-1, 20)).reshape(4, 25, k)
    ref = dense(scores, delays, rank)
    assert res.rank == rank
    assert match_err(res.eigenvalues, ref.eigenvalues) < 1e-8
    # Without centring the eigenvalues would differ: the route does centre.
    uncentred = y.reshape(-1, 20) @ np.linalg.svd(y.reshape(-1, 20) - y.mean((0, 1)))[2][:k].T
    wrong = dense(uncentred.reshape(4, 25, k), delays, rank)
    assert match_err(wrong.eigenvalues, ref.eigenvalues) > 1e-4


@pytest.mark.parametrize("variant", ["exact", "tls", "fb"])
@pytest.mark.parametrize("seed", [26, 27, 28])
def test_pca_route_recovers_known_eigenvalues(seed, variant):
    """PCA scores of an embedded linear system (plus an offset) give its eigenvalues.

    Inits in +- pairs have pooled mean 0, so the centred scores are linear: the
    6 eigenvalues. Unpaired, centring leaves an affine system: with one delay
    and rank 7 its eigenvalues and 1. Without centring, the offset would enter.
    """
    offset = 5.0 * np.random.default_rng(seed).standard_normal(30)
    y, eig = embedded(seed, 30, inits=6, steps=40, paired=True)
    opts = KoopmanOptions(rank=6, pca=6, variant=variant)
    res, facts = decompose(Observable(dataset(y + offset), ["x"]), opts)
    assert facts["route"] == "pca" and res.rank == 6
    assert match_err(res.eigenvalues, eig) < 1e-10
    y, eig = embedded(seed, 30, inits=3, steps=40)
    opts = KoopmanOptions(rank=7, delays=1, pca=6, variant=variant)
    res, facts = decompose(Observable(dataset(y + offset), ["x"]), opts)
    assert facts["lifted_dim"] == 12 and res.rank == 7
    assert match_err(res.eigenvalues, np.append(eig, 1.0)) < 1e-10


# --- amplitudes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "steps"), [(200, 30), (6, 60)])
def test_amplitudes_reconstruct_the_trajectories(p, steps):
    a, x0, y = observations(12, p=p, inits=5, steps=steps)
    res, _ = decompose(Observable(dataset(y), ["x"]), KoopmanOptions(rank=4))
    b, mu = res.amplitudes, res.eigenvalues
    # Modes are defined up to scale: fit them to the first snapshots, then predict the rest.
    modes = y[:, 0].T @ np.linalg.pinv(b)
    for t in range(steps):
        pred = (modes * mu[None, :] ** t) @ b
        np.testing.assert_allclose(pred.real, y[:, t].T, atol=1e-8 * np.abs(y).max())
    # Ratios across inits are scale free: they equal those of the true modal coordinates.
    lam, vec = np.linalg.eig(a)
    z = np.linalg.solve(vec, x0.T)  # (modes, inits)
    order = [int(np.argmin(np.abs(lam - m))) for m in mu]
    np.testing.assert_allclose(b / b[:, :1], z[order] / z[order, :1], rtol=1e-7)
    ref = dense(y, 0, 4)
    np.testing.assert_allclose(np.abs(b), np.abs(ref.amplitudes), rtol=1e-7)


# --- run -------------------------------------------------------------------------------------


def test_run_writes_spectrum_of_selected_window_and_observables(tmp_path):
    rng = np.random.default_rng(13)
    _, _, y = observations(14, p=8, inits=3, steps=40)
    steps = 10 * np.arange(40)
    ds = dataset(y, steps=steps, noise=rng.standard_normal((3, 40, 5)))
    ds.to_zarr(tmp_path / "traj", zarr_format=3, consolidated=False)
    opts = KoopmanOptions(observables=["x"], rank=4, window=(50, 250))
    spec = write_spectrum(tmp_path / "traj", tmp_path / "spec", opts)
    ref = dense(y[:, 5:25], 0, 4)
    assert spec.attrs["n_snapshots"] == 20 and spec.attrs["route"] == "covariance"
    assert spec.attrs["rank"] == 4 and spec.attrs["observables"] == ["x"]
    stored = xr.open_zarr(tmp_path / "spec", consolidated=False)
    assert match_err(stored["eigenvalues"].values, TRUE) < 1e-8
    np.testing.assert_allclose(stored["eigenvalues"].values, ref.eigenvalues, atol=1e-9)
    np.testing.assert_allclose(np.abs(stored["amplitudes"].values), np.abs(ref.amplitudes))


# --- leading eigenpairs by block Lanczos (leading_eigh with an integer rank) ------------------


def covariance_like(n, seed, decay=3.0, pairs=None):
    """X X^T of data (n x pairs) with a large static part, 40 modes whose singular values fall
    by 10^-decay, and noise: the spectrum of the stage's covariance (or Gram) matrices."""
    rng = np.random.default_rng(seed)
    pairs = pairs or n + 30
    s = np.logspace(0, -decay, 40)
    x = rng.standard_normal((n, 40)) @ (s[:, None] * rng.standard_normal((40, pairs)))
    x += 1e-4 * rng.standard_normal((n, pairs)) + 30.0 * rng.standard_normal((n, 1))
    return x @ x.T


def dense_leading(m, k):
    n = m.shape[0]
    lam, vec = scipy.linalg.eigh(m, subset_by_index=(n - k, n - 1))
    return lam[::-1], vec[:, ::-1]


@pytest.mark.parametrize("route", ["dense", "krylov", "tridiagonal"])
def test_leading_eigenvectors_have_a_fixed_sign(route):
    """Each eigenvector's largest entry is positive on every route, so the same matrix gives
    the same vectors (and DMD amplitudes) whichever solver found them: a rounding-level
    change of the matrix leaves them equal to rounding, not flipped."""
    from conjugacy.koopman.dmd import leading_eigh

    n, rank = 400, 10
    m = covariance_like(n, seed=7, decay=3.0)
    most, every = {"dense": (None, False), "krylov": (rank, False), "tridiagonal": (rank, True)}[
        route
    ]
    pick = lambda values: rank  # noqa: E731
    _, vec = leading_eigh(m, pick, most=most, every=every)
    peaks = vec[np.abs(vec).argmax(axis=0), np.arange(rank)]
    assert (peaks > 0).all()
    ref = dense_leading(m, rank)[1]
    assert (np.sign(ref[np.abs(ref).argmax(axis=0), np.arange(rank)]) < 0).any()  # LAPACK's flip
    nudged = m * (1 + 1e-14 * np.random.default_rng(1).standard_normal(m.shape))
    _, again = leading_eigh((nudged + nudged.T) / 2, pick, most=most, every=every)
    assert np.abs(again - vec).max() < 1e-6


def test_reduced_eigenvectors_have_a_fixed_phase():
    """W's columns come back with their largest entry real and positive (a sign for real
    eigenvalues, a phase for complex ones; conjugate pairs stay conjugate), so a
    rounding-level change of A~ moves the amplitudes by rounding instead of flipping
    them; LAPACK's own vectors on this A~ have peaks that are not."""
    import scipy.linalg

    from conjugacy.koopman.dmd import reduced_dmd

    rng = np.random.default_rng(3)
    r, inits = 8, 4
    s = np.sort(rng.uniform(1.0, 5.0, r))[::-1]
    atilde = rng.standard_normal((r, r)) / np.sqrt(r)
    syx = atilde * s[None, :] ** 2  # reduced_dmd's exact A~ is syx / s^2
    coords0 = rng.standard_normal((r, inits))
    mu, w, amplitudes = reduced_dmd(s, syx, None, coords0, "exact")
    peaks = w[np.abs(w).argmax(axis=0), np.arange(r)]
    assert (np.abs(peaks.imag) <= 1e-15 * np.abs(peaks)).all() and (peaks.real > 0).all()
    raw = scipy.linalg.eig(atilde)[1]
    raw_peaks = raw[np.abs(raw).argmax(axis=0), np.arange(r)]
    assert ((raw_peaks.imag != 0) | (raw_peaks.real < 0)).any()  # LAPACK leaves some
    assert (np.abs(mu.imag) > 1e-3).sum() >= 2  # complex pairs are covered
    np.testing.assert_allclose(atilde @ w, w * mu[None, :], atol=1e-12)
    np.testing.assert_allclose(w @ amplitudes, coords0, atol=1e-12)
    pair = np.flatnonzero(mu.imag > 1e-3)[0]
    partner = np.flatnonzero(np.isclose(mu, mu[pair].conj()))[0]
    np.testing.assert_allclose(w[:, partner], w[:, pair].conj(), atol=1e-14)
    nudged = syx * (1 + 1e-13 * rng.standard_normal(syx.shape))
    again = reduced_dmd(s, nudged, None, coords0, "exact")[2]
    assert np.abs(again - amplitudes).max() < 1e-9 * np.abs(amplitudes).max()


def projector_gap(u, v):
    """|U U^T - V V^T|_2 = |(I - U U^T) V|_2 for orthonormal U, V of equal width: the sine of
    the largest angle between their spans (not sqrt(1 - cos^2), which cancels below 1e-8)."""
    return float(np.linalg.norm(v - u @ (u.T @ v), ord=2))


@pytest.mark.parametrize(
    ("n", "rank", "decay"),
    [
        (300, 1, 3.0),
        (300, 10, 3.0),
        (1000, 3, 3.0),
        (1000, 10, 6.0),
        (1000, 30, 3.0),
        (2000, 10, 3.0),
    ],
)
def test_krylov_leading_eigh_matches_the_dense_solve(n, rank, decay):
    """Block Lanczos: the leading eigenvalues within 1e-10 of dense eigh (relative to the
    largest; in practice 1e-15), the same eigenvector subspace, residuals under the check."""
    from conjugacy.koopman.dmd import KRYLOV_CHECK, krylov_eigh, leading_eigh, signed

    m = covariance_like(n, seed=n + rank, decay=decay)
    ref_lam, ref_vec = dense_leading(m, rank + 1)
    found = krylov_eigh(m, rank)
    assert found is not None  # converged: not the dense fallback
    lam, vec = leading_eigh(m, lambda values: rank, most=rank)
    assert np.array_equal(lam, found[0]) and np.array_equal(vec, signed(found[1]))
    assert lam.shape == (rank,) and vec.shape == (n, rank)
    assert np.abs(lam - ref_lam[:rank]).max() <= 1e-10 * ref_lam[0]
    assert np.abs(lam - ref_lam[:rank]).max() <= 1e-14 * ref_lam[0]  # what it does in practice
    np.testing.assert_allclose(vec.T @ vec, np.eye(rank), atol=1e-13)
    residual = np.linalg.norm(m @ vec - vec * lam, axis=0)
    assert residual.max() <= KRYLOV_CHECK * lam[0]
    # Each basis is within (its residual) / gap of the exact one (Davis-Kahan): as close to
    # dense eigh's as dense eigh is to the truth (1e-12 here, 1e-8 for rank 30's small gap).
    ref_residual = np.linalg.norm(
        m @ ref_vec[:, :rank] - ref_vec[:, :rank] * ref_lam[:rank], axis=0
    )
    gap = ref_lam[rank - 1] - ref_lam[rank]
    bound = 2 * (residual.max() + ref_residual.max()) / gap
    assert projector_gap(vec, ref_vec[:, :rank]) <= bound
    assert residual.max() <= 100 * ref_residual.max()  # about dense eigh's, ~1e-15 relative


def test_krylov_leading_eigh_finds_every_copy_of_a_repeated_eigenvalue():
    """A 6-fold eigenvalue at positions 3-8 and a tight cluster at 9-11: a rank that stops
    inside either gets the right eigenvalues and eigenvectors inside the cluster's space."""
    from conjugacy.koopman.dmd import krylov_eigh, leading_eigh

    rng = np.random.default_rng(5)
    n = 600
    tight = 4.0 * (1 + 1e-9 * np.array([2.0, 1.0, 0.0]))
    lam_true = np.concatenate([[100.0, 50.0], [10.0] * 6, tight, np.logspace(0, -8, n - 11)])
    u = np.linalg.qr(rng.standard_normal((n, n)))[0]
    m = (u * lam_true) @ u.T
    m = (m + m.T) / 2
    for rank, whole in [(5, 8), (8, 8), (10, 11), (11, 11), (2, 2)]:
        assert krylov_eigh(m, rank) is not None
        lam, vec = leading_eigh(m, lambda values, r=rank: r, most=rank)
        np.testing.assert_allclose(lam, lam_true[:rank], rtol=0, atol=1e-12 * lam_true[0])
        # inside the span of the eigenvectors up to the end of the cluster the rank cuts
        inside = u[:, :whole].T @ vec
        np.testing.assert_allclose(np.linalg.norm(inside, axis=0), 1.0, atol=1e-12)
        np.testing.assert_allclose(vec.T @ vec, np.eye(rank), atol=1e-13)


def test_krylov_leading_eigh_is_bitwise_reproducible():
    from conjugacy.koopman.dmd import leading_eigh

    m = covariance_like(500, seed=3)
    first = leading_eigh(m, lambda values: 10, most=10)
    again = leading_eigh(m.copy(), lambda values: 10, most=10)
    fortran = leading_eigh(np.asfortranarray(m), lambda values: 10, most=10)
    # a block of a larger array, as the lifted covariance is of the lag products: BLAS
    # reads it with its row stride, no copy, the same bits
    big = np.zeros((520, 530))
    big[:500, :500] = m
    block = big[:500, :500]
    assert not block.flags.c_contiguous and not block.flags.f_contiguous
    strided = leading_eigh(block, lambda values: 10, most=10)
    spaced = np.zeros((1000, 1000))  # no unit stride along either axis: copied first
    spaced[::2, ::2] = m
    copied = leading_eigh(spaced[::2, ::2], lambda values: 10, most=10)
    for a, b in [(first, again), (first, fortran), (first, strided), (first, copied)]:
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_leading_eigh_keeps_the_dense_route_for_small_or_unbounded_problems():
    """n < 64, a bound above n / 4, or no bound: every eigenvalue (dsyevr)."""
    from conjugacy.koopman.dmd import leading_eigh

    for n, most in [(50, 5), (300, 80), (300, None)]:
        m = covariance_like(n, seed=n)
        ref = np.clip(np.linalg.eigvalsh(m)[::-1], 0, None)
        lam, vec = leading_eigh(m, lambda values: 4, most=most)
        assert lam.shape == (n,) and vec.shape == (n, 4)
        assert np.abs(lam - ref).max() <= 1e-13 * ref[0]


def test_leading_eigh_falls_back_to_the_tridiagonal_route(monkeypatch):
    """When block Lanczos gives up (here forced; or its residual check fails) the dense
    tridiagonal route answers, with the same leading `most` eigenvalues."""
    import conjugacy.koopman.dmd as dmd

    m = covariance_like(400, seed=1)
    assert dmd.krylov_eigh(m, 10, check=0.0) is None  # residuals above 0: not accepted
    assert dmd.krylov_eigh(m, 10, max_basis=40) is None  # a basis over 40 columns needed
    ref_lam, ref_vec = dense_leading(m, 10)
    monkeypatch.setattr(dmd, "krylov_eigh", lambda *args, **kwargs: None)
    lam, vec = dmd.leading_eigh(m, lambda values: 6, most=10)
    assert lam.shape == (10,) and vec.shape == (400, 6)
    assert np.abs(lam - ref_lam).max() <= 1e-13 * ref_lam[0]
    assert projector_gap(vec, ref_vec[:, :6]) <= 1e-10


def test_leading_singular_values_give_the_same_rank_qr_switch_and_condition():
    """select_rank's numerical-rank cap, needs_qr and condition_number need only the leading
    `rank` singular values; with a matrix of rank 3 an integer rank 10 is capped at 3."""
    from conjugacy.koopman.dmd import DMDError, condition_number, leading_eigh, squared_tol

    rng = np.random.default_rng(9)
    low = rng.standard_normal((400, 3)) * [30.0, 1.0, 1e-3]
    tol = squared_tol(430)
    for m in (covariance_like(400, seed=2), low @ low.T):
        for rank in (1, 4, 10):
            s_all = np.sqrt(np.clip(np.linalg.eigvalsh(m)[::-1], 0, None))
            lam, vec = leading_eigh(
                m, lambda values, r=rank: select_rank(np.sqrt(values), r, tol), most=rank
            )
            s = np.sqrt(lam)
            assert s.shape == (rank,)
            assert vec.shape[1] == select_rank(s_all, rank, tol)
            assert needs_qr(s, rank) == needs_qr(s_all, rank)
            if s_all[rank - 1] > tol * s_all[0]:  # else both are rounding noise, needs_qr
                np.testing.assert_allclose(
                    condition_number(s, rank), condition_number(s_all, rank), rtol=1e-6
                )
    assert leading_eigh(low @ low.T, lambda values: 3, most=10)[1].shape == (400, 3)
    with pytest.raises(DMDError, match="zero"):
        leading_eigh(np.zeros((200, 200)), lambda values: select_rank(values, 5, 1e-8), most=5)


def test_every_keeps_all_singular_values_for_an_integer_rank():
    """dmd_from_covariance: the leading `rank` singular values by default, all with every."""
    rng = np.random.default_rng(4)
    y = observations(4, 40, 3, 80)[2] + 1e-3 * rng.standard_normal((3, 80, 40))
    lifted = lift(y, 4)  # 200 lifted values, 3 x 75 = 225 snapshots
    x, yy = pairs_of(lifted)
    xs, ys = x.T, yy.T
    args = (xs @ xs.T, ys @ xs.T, lifted[:, 0].T, 6, xs.shape[1])
    short = dmd_from_covariance(*args)
    full = dmd_from_covariance(*args, every=True)
    assert short.singular_values.shape == (6,) and full.singular_values.shape == (200,)
    np.testing.assert_allclose(
        short.singular_values,
        full.singular_values[:6],
        rtol=0,
        atol=1e-12 * full.singular_values[0],
    )
    assert match_err(short.eigenvalues, full.eigenvalues) <= 1e-10
