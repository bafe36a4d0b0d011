"""Stores with chunks larger than a parameter block (as other programs write them): each
chunk is decoded once, and the spectrum is bitwise that of the same data in small chunks."""

from collections import Counter

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.storage import LocalStore

from conjugacy.koopman.observables import SPAN_BLOCKS, Observable
from conjugacy.koopman.spectrum import KoopmanOptions, accumulate_gram, decompose
from conjugacy.stores.contract import CHECKSUM

INITS, STEPS, ROWS = 2, 30, 100  # a parameter block: every init and step of ROWS parameters
BUDGET = INITS * STEPS * ROWS
PARAMS = 4800


class CountingStore(LocalStore):
    """A local store that counts the reads of every key."""

    def __init__(self, root) -> None:
        super().__init__(root, read_only=True)
        self.reads: Counter[str] = Counter()

    async def get(self, key, prototype, byte_range=None):
        self.reads[key] += 1
        return await super().get(key, prototype, byte_range)


def values() -> np.ndarray:
    """(inits, steps, params) float32 observations of a damped rotation and a decay, + offset."""
    rng = np.random.default_rng(7)
    lam = np.array([0.97 * np.exp(0.2j), 0.97 * np.exp(-0.2j), 0.9])
    t = np.arange(STEPS)
    modes = rng.standard_normal((3, PARAMS)) + 1j * rng.standard_normal((3, PARAMS))
    modes[1] = modes[0].conj()
    modes[2] = modes[2].real
    out = np.empty((INITS, STEPS, PARAMS))
    for i in range(INITS):
        amp = rng.uniform(0.5, 1.0, 3) * np.exp(1j * rng.uniform(0, 1, 3))
        amp[1] = amp[0].conj()
        amp[2] = amp[2].real
        out[i] = ((amp[None, :] * lam[None, :] ** t[:, None]) @ modes).real
    return (out + 5.0 * rng.standard_normal(PARAMS)).astype(np.float32)


def write(path, data: np.ndarray, chunks: tuple[int, int, int], zstd: bool) -> None:
    ds = xr.Dataset(
        {"x": (("init", "step", "x_dim0"), data)},
        coords={"init": np.arange(data.shape[0]), "step": np.arange(data.shape[1])},
    )
    encoding = {"chunks": chunks} | ({} if zstd else {"compressors": CHECKSUM})
    ds.to_zarr(path, zarr_format=3, consolidated=False, encoding={"x": encoding})


def opened(path) -> tuple[xr.Dataset, CountingStore]:
    store = CountingStore(path)
    ds = xr.open_zarr(store, consolidated=False, chunks=None)
    store.reads.clear()  # metadata and coordinates read on opening
    return ds, store


def chunk_reads(store: CountingStore, name: str = "x") -> Counter:
    return Counter({k: n for k, n in store.reads.items() if k.startswith(f"{name}/c/")})


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same values in small chunks (one block each, 16-step chunks, checksums only) and in
    large ones (1 init x every step x 8 blocks, zarr's default zstd, as to_zarr writes)."""
    tmp = tmp_path_factory.mktemp("chunks")
    data = values()
    small, large = tmp / "small.zarr", tmp / "large.zarr"
    write(small, data, (INITS, 16, ROWS), zstd=False)
    write(large, data, (1, STEPS, 8 * ROWS), zstd=True)
    return small, large


@pytest.mark.parametrize("readahead", [0, 1])
def test_large_chunks_give_the_spectrum_of_small_chunks_bitwise(stores, readahead):
    small, large = stores
    results, grams = [], []
    for path in (small, large):
        ds, _ = opened(path)
        obs = Observable(ds, ["x"], readahead=readahead, budget=BUDGET)
        grams.append(accumulate_gram(obs))
        results.append(decompose(obs, KoopmanOptions(rank=4))[0])
    ranges = [Observable(opened(p)[0], ["x"], budget=BUDGET).param_ranges() for p in stores]
    assert len(ranges[0]) == PARAMS // ROWS and ranges[0] == ranges[1]  # the same blocks
    np.testing.assert_array_equal(grams[0], grams[1])
    a, b = results
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    np.testing.assert_array_equal(a.amplitudes, b.amplitudes)
    np.testing.assert_array_equal(a.singular_values, b.singular_values)
    truth = np.array([0.97 * np.exp(0.2j), 0.97 * np.exp(-0.2j), 0.9, 1.0])
    err = np.abs(a.eigenvalues[:, None] - truth[None, :]).min(axis=1).max()
    assert a.eigenvalues.size == 4 and err < 1e-2  # float32 data: a sanity check only


@pytest.mark.parametrize("readahead", [0, 1])
def test_each_chunk_is_read_once(stores, readahead):
    for path, chunks in zip(
        stores, [PARAMS // ROWS * 2, PARAMS // (8 * ROWS) * INITS], strict=True
    ):
        ds, store = opened(path)
        obs = Observable(ds, ["x"], readahead=readahead, budget=BUDGET)
        blocks = [b.shape for b in obs.param_blocks()]
        assert blocks == [(INITS, STEPS, ROWS)] * (PARAMS // ROWS)
        reads = chunk_reads(store)
        assert len(reads) == chunks and set(reads.values()) == {1}, reads


def test_pooled_stores_of_other_chunks_read_each_chunk_once(stores):
    """Blocks follow the first store's chunks; a second store's larger chunks are read whole."""
    small, large = stores
    (ds_small, s_small), (ds_large, s_large) = opened(small), opened(large)
    pooled = Observable([ds_small, ds_large], ["x"], budget=2 * BUDGET)  # 4 inits: ROWS a block
    again = Observable([opened(small)[0], opened(small)[0]], ["x"], budget=2 * BUDGET)
    got, ref = accumulate_gram(pooled), accumulate_gram(again)
    np.testing.assert_array_equal(got, ref)
    for store in (s_small, s_large):
        assert set(chunk_reads(store).values()) == {1}


def test_a_chunk_column_larger_than_the_span_limit_is_read_in_pieces(tmp_path):
    """Memory stays bounded: one read spans at most SPAN_BLOCKS blocks' worth of values."""
    data = values()
    path = tmp_path / "huge.zarr"
    write(path, data, (INITS, STEPS, PARAMS), zstd=False)  # one chunk: 48 blocks
    ds, store = opened(path)
    obs = Observable(ds, ["x"], budget=BUDGET)
    spans = obs.param_spans()
    assert max(INITS * STEPS * (s.stop - s.start) for _, s, _ in spans) <= SPAN_BLOCKS * BUDGET
    assert len(spans) == -(-PARAMS // (SPAN_BLOCKS * ROWS))
    for block in obs.param_blocks():
        assert block.shape == (INITS, STEPS, ROWS)
    assert chunk_reads(store) == Counter({"x/c/0/0/0": len(spans)})
    np.testing.assert_array_equal(
        np.concatenate(list(obs.param_blocks()), axis=2), zarr.open_array(path / "x")[:]
    )


def test_read_bytes_counts_the_spans_large_chunks_make(stores):
    """The memory check counts what the reads hold: with large chunks a read is a span of
    SPAN_BLOCKS blocks in the stored dtype (float32 here), four times a float64 block."""
    from conjugacy.koopman.spectrum import peak_bytes

    small, large = (Observable(opened(p)[0], ["x"], budget=BUDGET) for p in stores)
    depth = small.readahead + 2
    assert small.read_bytes() == depth * 8 * BUDGET  # a block of steps, float64
    span = SPAN_BLOCKS * BUDGET * 4  # 8 blocks of float32 values
    assert large.read_bytes() == depth * span
    # ... and that is what a read of the large store really holds: the blocks are views of it
    block = next(large.param_blocks())
    assert block.base is not None and block.base.nbytes == span
    sizes = (INITS, STEPS, PARAMS, 0, None)
    grown = peak_bytes(*sizes, large.read_bytes()) - peak_bytes(*sizes, small.read_bytes())
    assert grown == depth * (span - 8 * BUDGET)
