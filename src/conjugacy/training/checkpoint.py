"""Training checkpoints in a format that cannot run code: arrays in .npz, the rest JSON.

A results folder can be shared or copied, so nothing read from it may be
unpickled. The training state (nested dicts, lists and tuples of arrays,
torch tensors, numbers and strings: weights, optimizer state, RNG state,
data order) is split into its arrays, saved with `np.savez` and read with
`allow_pickle=False`, and a JSON tree that refers to them by name. Tensors
come back bit for bit, with their dtype.

The working folder of a training is marked by a file of its own, so that
only a folder this project made is ever cleaned.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from conjugacy.stores.contract import StoreError, store_role

log = logging.getLogger(__name__)

STORE = "trajectory.zarr"  # the store being built, moved to the output when finished
STATE = "state.json"
MARKER = ".conjugacy-checkpoint"
ARRAYS = re.compile(r"state-\d+\.npz")
TEMPORARY = re.compile(r"state-\d+\.npz\.tmp")
LEGACY = ("state.pkl", "state.pkl.tmp")  # pickled checkpoints of older versions: never read
OURS = (STORE, STATE, STATE + ".tmp", MARKER, *LEGACY)


def _is_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def encode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """A JSON tree for obj; its arrays and tensors go into `arrays` under fresh names."""
    if isinstance(obj, np.ndarray | np.generic):
        name = f"a{len(arrays)}"
        arrays[name] = np.asarray(obj)
        return {"__array__": name, "scalar": isinstance(obj, np.generic)}
    if _is_tensor(obj):
        import torch

        tensor = obj.detach().cpu()
        plain = tensor.dtype in (torch.bfloat16,)  # numpy has no bfloat16: keep its bits
        name = f"a{len(arrays)}"
        arrays[name] = (tensor.view(torch.int16) if plain else tensor).numpy()
        return {"__tensor__": name, "dtype": str(tensor.dtype).removeprefix("torch.")}
    if isinstance(obj, dict):
        return {"__dict__": [[encode(k, arrays), encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, arrays) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"a checkpoint cannot hold a {type(obj).__name__}")


def decode(tree: Any, arrays: Any) -> Any:
    """The object `encode` made the tree of, with arrays from the opened .npz."""
    if isinstance(tree, list):
        return [decode(v, arrays) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__array__" in tree:
        value = arrays[tree["__array__"]]
        return value[()] if tree.get("scalar") else value
    if "__tensor__" in tree:
        import torch

        dtype = getattr(torch, tree["dtype"])
        value = torch.from_numpy(np.array(arrays[tree["__tensor__"]]))
        return value.view(dtype) if value.dtype != dtype else value
    if "__tuple__" in tree:
        return tuple(decode(v, arrays) for v in tree["__tuple__"])
    return {decode(k, arrays): decode(v, arrays) for k, v in tree["__dict__"]}


def _write_synced(path: Path, write) -> None:
    """Write through `write(fh)` to a temporary file, flushed to disk, then rename it."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save(work: Path, key: str, next_step: int, state: Any) -> None:
    """The training state after `next_step` updates; the JSON, replaced last, makes it current."""
    arrays: dict[str, np.ndarray] = {}
    tree = encode(state, arrays)
    name = f"state-{next_step}.npz"
    _write_synced(work / name, lambda fh: np.savez(fh, **arrays))
    doc = {"key": key, "next_step": next_step, "arrays": name, "state": tree}
    _write_synced(work / STATE, lambda fh: fh.write(json.dumps(doc).encode()))
    for old in work.iterdir():
        if ARRAYS.fullmatch(old.name) and old.name != name:
            old.unlink()


def load(work: Path, key: str) -> dict[str, Any] | None:
    """The last checkpoint of this exact training (config and seed) in `work`, if any."""
    for legacy in LEGACY:
        if (work / legacy).exists():
            log.warning(
                "ignoring %s: pickled checkpoints of older versions are never read "
                "(they could run code); training starts over",
                work / legacy,
            )
    path = work / STATE
    if not (path.is_file() and (work / STORE).is_dir()):
        return None
    try:
        doc = json.loads(path.read_text())
        if doc.get("key") != key:
            return None
        if not ARRAYS.fullmatch(str(doc["arrays"])):
            raise ValueError(f"unexpected arrays file {doc['arrays']!r}")
        with np.load(work / doc["arrays"], allow_pickle=False) as arrays:
            state = decode(doc["state"], arrays)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    return {"next_step": int(doc["next_step"]), "system": state}


def _recognised(work: Path) -> bool:
    """A folder this project made: marked, or holding only the files of an older version."""
    if (work / MARKER).is_file():
        return True
    names = {p.name for p in work.iterdir()}
    legacy_store = STORE not in names or store_role(work / STORE) in (None, "trajectory")
    return names <= set(OURS) and legacy_store and bool(names & set(LEGACY))


def claim(work: Path) -> None:
    """Make `work` the training's working folder, or refuse a folder that is not ours.

    A new or empty folder is marked; one with other content stops the run
    before any work, naming it: nothing of the user's is ever cleaned.
    """
    if work.exists() and not work.is_dir():
        raise StoreError(f"checkpoint folder {work} is a file; choose another --checkpoint-dir")
    if work.is_dir() and any(work.iterdir()) and not _recognised(work):
        raise StoreError(
            f"checkpoint folder {work} holds files that conjugacy did not write; "
            "choose an empty or new folder (nothing was touched)"
        )
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text('{"role": "checkpoint"}\n')


def clear(work: Path) -> None:
    """Remove the store and checkpoints this project wrote in its working folder, nothing else."""
    for entry in work.iterdir():
        if entry.name == STORE and entry.is_dir():
            shutil.rmtree(entry)
        elif entry.name in (STATE, STATE + ".tmp", *LEGACY) or ARRAYS.fullmatch(entry.name):
            entry.unlink()
        elif TEMPORARY.fullmatch(entry.name):
            entry.unlink()


def release(work: Path) -> None:
    """After the store has moved out: clear the folder and remove it if nothing else is in it."""
    clear(work)
    (work / MARKER).unlink(missing_ok=True)
    try:
        work.rmdir()
    except OSError:
        log.warning("left %s in place: it holds files conjugacy did not write", work)
