"""stored_chunks counts what zarr's nchunks_initialized counts, from the files on disk."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from conjugacy.stores.contract import stored_chunks


@pytest.mark.parametrize(
    ("shape", "chunks", "filled"),
    [
        ((), (), ()),  # a 0-d array: one chunk, the file <name>/c
        ((10,), (4,), (slice(0, 10),)),
        ((10,), (4,), (slice(0, 3),)),  # one of three chunks written
        ((6, 9, 5), (2, 4, 5), (slice(0, 6), slice(0, 4), slice(0, 5))),
        ((6, 9), (2, 4), (slice(2, 3), slice(8, 9))),  # a lone corner chunk
    ],
)
@pytest.mark.parametrize(
    "keys",
    [
        None,  # zarr's default: c/i/j
        {"name": "default", "separator": "."},  # c.i.j beside zarr.json: zarr counts
        {"name": "v2", "separator": "."},
    ],
)
def test_stored_chunks_is_zarrs_count(tmp_path, shape, chunks, filled, keys):
    group = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    extra = {"chunk_key_encoding": keys} if keys else {}
    arr = group.create_array("v", shape=shape, chunks=chunks, dtype="f8", **extra)
    arr[filled] = 1.0
    assert stored_chunks(tmp_path / "s.zarr", "v") == arr.nchunks_initialized


def test_a_deleted_chunk_is_counted_out(tmp_path):
    group = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    arr = group.create_array("v", shape=(8, 8), chunks=(2, 8), dtype="f8")
    arr[...] = np.ones((8, 8))
    assert stored_chunks(tmp_path / "s.zarr", "v") == 4
    (tmp_path / "s.zarr/v/c/3/0").unlink()
    assert stored_chunks(tmp_path / "s.zarr", "v") == 3 == arr.nchunks_initialized


@pytest.mark.parametrize("name", ["v", "..", ".", "", "../s.zarr", "w/v"])
def test_a_missing_array_or_a_path_for_a_name_is_an_error(tmp_path, name):
    """Names come from a store's attributes: one that leads out of the store is never walked."""
    group = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    group.create_group("w").create_array("v", shape=(2,), chunks=(1,), dtype="f8")[...] = 1.0
    with pytest.raises(FileNotFoundError):
        stored_chunks(tmp_path / "s.zarr", name)
