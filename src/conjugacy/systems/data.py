"""Datasets the nets train on: digits (offline), MNIST and Fashion-MNIST (IDX), CIFAR-10.

Data files are input from outside: every problem with one raises DatasetError (a
ConfigError, so the command line reports it in one line and exits 2), naming the
file and what is wrong, before any expensive work. A file is never read whole on
trust: an IDX file's header is checked against its size before its data is read,
a gzip stream is read in bounded pieces, and a CIFAR-10 batch is unpickled by a
restricted unpickler that builds only what a batch holds, within a byte and an
operation budget.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import math
import os
import pickle
import pickletools
import stat
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from conjugacy.config import ConfigError
from conjugacy.config.shapes import DATASET_DIRS, DATASET_FILES

# IDX type codes (the third byte of the magic number) and their big-endian dtypes.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_MAX_DIMS = 16
IDX_MAX_BYTES = 2 << 30  # the data an IDX file may declare (MNIST's training images: 47 MB)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the usual normalisation, as the reference
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # Fashion-MNIST's training set, pixel / 255
# The normalisation (mean, std of pixel / 255) of each dataset read from IDX files.
IDX_NORMALISATION = {"mnist": (MNIST_MEAN, MNIST_STD), "fashion_mnist": (FASHION_MEAN, FASHION_STD)}
MNIST_SIDE = 28
# The usual per-channel normalisation of CIFAR-10 (training-set mean and std).
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR_TEST = "test_batch"
CIFAR_PIXELS = 3 * 32 * 32
# A batch of 10000 images is 30 MB as the CIFAR site ships it, up to 61 MB when
# re-pickled by Python 3 at protocol 2 (the pixels as UTF-8 text).
CIFAR_MAX_BYTES = 64 << 20
CIFAR_MAX_OPS = 300_000  # pickle operations; a batch of 10000 images takes 30000 to 90000
N_CLASSES = 10
_PIECE = 1 << 20  # bytes read from a gzip stream at a time


class DatasetError(ConfigError):
    """A data file is missing, unreadable or not what it should be; the message names it."""


def _brief(exc: BaseException, width: int = 200) -> str:
    """An exception's message, on one line and short."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= width else text[: width - 3] + "..."


def _clip(text: str | bytes, width: int = 40) -> str:
    return repr(text[:width]) + ("..." if len(text) > width else "")


class _DataFile:
    """A data file opened for reading: its bytes, decompressed if it is gzipped.

    Reads stop at `limit` bytes (decompressed), and every failure to read (a
    cut or corrupt gzip stream, an I/O error) raises DatasetError naming the file.
    `size` is the file's size, or None when it is gzipped (the decompressed size
    is known only by reading).
    """

    def __init__(self, path: Path, limit: int = sys.maxsize, what: str = "a data file"):
        self.path, self.limit, self.what = path, limit, what
        self.left, self.pos = limit, 0
        try:
            self._file = open(path, "rb")  # closed by close()
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror or _brief(exc)}") from exc
        try:
            if not stat.S_ISREG(os.fstat(self._file.fileno()).st_mode):
                raise DatasetError(f"{path} is not a regular file")
            gzipped = self._file.read(2) == b"\x1f\x8b"
            self._file.seek(0)
            self.size = None if gzipped else os.fstat(self._file.fileno()).st_size
            self._stream = gzip.GzipFile(fileobj=self._file, mode="rb") if gzipped else self._file
        except OSError as exc:
            self._file.close()
            raise self._error(exc) from exc
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> _DataFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._stream is not self._file:
            self._stream.close()
        self._file.close()

    def _error(self, exc: BaseException) -> DatasetError:
        if isinstance(exc, EOFError):
            return DatasetError(f"{self.path} is cut short: its gzip stream ends early")
        if isinstance(exc, gzip.BadGzipFile | zlib.error):
            return DatasetError(f"{self.path} is not a valid gzip file ({_brief(exc)})")
        if isinstance(exc, OSError) and exc.strerror:
            return DatasetError(f"cannot read {self.path}: {exc.strerror}")
        return DatasetError(f"cannot read {self.path}: {_brief(exc)}")

    def _over(self, n: int) -> DatasetError:
        where = "decompressed, " if self.size is None else ""
        return DatasetError(
            f"{self.path}: data past {self.limit >> 20} MiB ({where}{n} bytes wanted at byte "
            f"{self.pos}), more than {self.what} can hold"
        )

    def read(self, n: int) -> bytes:
        """Up to n bytes (fewer at the end of the data)."""
        if n < 0:
            raise ValueError("read() needs a size")
        if self.size is not None:
            n = min(n, max(self.size - self.pos, 0))  # no buffer bigger than the file
        if n > self.left:
            raise self._over(n)
        try:
            if self.size is not None or n <= _PIECE:
                data = self._stream.read(n)
            else:  # a gzip stream may say it holds much more than it does: read in pieces
                pieces, got = [], 0
                while got < n:
                    piece = self._stream.read(min(_PIECE, n - got))
                    if not piece:
                        break
                    pieces.append(piece)
                    got += len(piece)
                data = b"".join(pieces)
        except (OSError, EOFError, zlib.error) as exc:
            raise self._error(exc) from exc
        self.pos += len(data)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        """One line, within the limit (for the text opcodes of old pickles)."""
        try:
            line = self._stream.readline(min(self.left, sys.maxsize - 1) + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise self._error(exc) from exc
        if len(line) > self.left:
            raise self._over(len(line))
        self.pos += len(line)
        self.left -= len(line)
        return line

    def readinto(self, buffer: memoryview) -> int:
        """Fill buffer from the data; the number of bytes read (fewer only at the end)."""
        if len(buffer) > self.left:
            raise self._over(len(buffer))
        got = 0
        try:
            while got < len(buffer):
                k = self._stream.readinto(buffer[got : got + (1 << 24)])
                if not k:
                    break
                got += k
        except (OSError, EOFError, zlib.error) as exc:
            raise self._error(exc) from exc
        self.pos += got
        self.left -= got
        return got


# ---------------------------------------------------------------------------- IDX (MNIST)


def _idx_header(f: _DataFile) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and dims an IDX file declares, checked against its size where that is known."""
    magic = f.read(4)
    if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in IDX_TYPES:
        raise DatasetError(f"{f.path} is not an IDX file (magic {magic.hex() or 'missing'})")
    ndim = magic[3]
    if not 1 <= ndim <= IDX_MAX_DIMS:
        raise DatasetError(
            f"{f.path}: an IDX file of {ndim} dimensions; expected 1 to {IDX_MAX_DIMS}"
        )
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise DatasetError(
            f"{f.path} is cut short in its header: {len(raw)} of the {4 * ndim} bytes "
            f"of its {ndim} dims"
        )
    dims = struct.unpack(f">{ndim}I", raw)
    dtype = np.dtype(IDX_TYPES[magic[2]])
    nbytes = math.prod(dims) * dtype.itemsize
    if nbytes > IDX_MAX_BYTES:
        raise DatasetError(
            f"{f.path}: dims {dims} of {dtype.name} declare {nbytes} bytes of data, "
            f"more than the {IDX_MAX_BYTES >> 30} GiB an IDX file may hold"
        )
    if f.size is not None and f.size - 4 - 4 * ndim != nbytes:
        raise DatasetError(
            f"{f.path}: {f.size - 4 - 4 * ndim} bytes of data for dims {dims} of "
            f"{dtype.name}, which need {nbytes}"
        )
    return dtype, dims


def _idx_data(f: _DataFile, dtype: np.dtype, dims: tuple[int, ...]) -> np.ndarray:
    """The data after an IDX header: exactly the bytes the dims declare, no more, no less."""
    nbytes = math.prod(dims) * dtype.itemsize
    if f.size is not None:  # a plain file, whose size _idx_header checked
        out = np.empty(nbytes, dtype=np.uint8)
        got = f.readinto(memoryview(out))
        extra = f.read(1)
    else:  # a gzip stream: read declared + 1 bytes in pieces, holding only what is there
        buf = bytearray()
        while len(buf) <= nbytes:
            piece = f.read(min(_PIECE, nbytes + 1 - len(buf)))
            if not piece:
                break
            buf += piece
        got, extra = min(len(buf), nbytes), len(buf) > nbytes
        out = np.frombuffer(buf, dtype=np.uint8)
    if got < nbytes:
        raise DatasetError(
            f"{f.path}: {got} bytes of data for dims {dims} of {dtype.name}, which need {nbytes}"
        )
    if extra:
        raise DatasetError(
            f"{f.path}: more bytes of data than the {nbytes} its dims {dims} of "
            f"{dtype.name} declare"
        )
    return out[:nbytes].view(dtype).reshape(dims)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (the MNIST format), plain or gzipped, as a numpy array."""
    with _DataFile(Path(path), what="an IDX file") as f:
        dtype, dims = _idx_header(f)
        return _idx_data(f, dtype, dims)


def read_mnist(data_dir: str | Path, name: str = "mnist") -> tuple[np.ndarray, np.ndarray]:
    """MNIST's training images (uint8 (n, 28, 28)) and labels (n,), both checked.

    Both headers are read and checked against each other before any data.
    Fashion-MNIST (name "fashion_mnist") has the same files in the same format.
    """
    images_path, labels_path = (_find(Path(data_dir), f) for f in DATASET_FILES[name])
    with (
        _DataFile(images_path, what="an IDX file") as fi,
        _DataFile(labels_path, what="an IDX file") as fl,
    ):
        itype, idims = _idx_header(fi)
        ltype, ldims = _idx_header(fl)
        side = (MNIST_SIDE, MNIST_SIDE)
        if len(idims) != 3 or idims[1:] != side:
            raise DatasetError(f"{images_path}: images of dims {idims}; expected (n, 28, 28)")
        if itype.kind != "u" or itype.itemsize != 1:
            raise DatasetError(
                f"{images_path}: pixels of type {itype.name}; expected unsigned bytes "
                f"(IDX type 0x08)"
            )
        if len(ldims) != 1:
            raise DatasetError(f"{labels_path}: labels of dims {ldims}; expected (n,)")
        if ltype.kind not in "iu":
            raise DatasetError(f"{labels_path}: labels of type {ltype.name}; expected integers")
        if idims[0] != ldims[0]:
            raise DatasetError(
                f"{images_path} holds {idims[0]} images but {labels_path} holds "
                f"{ldims[0]} labels; expected one label per image"
            )
        if idims[0] == 0:
            raise DatasetError(f"{images_path} holds no images")
        images, labels = _idx_data(fi, itype, idims), _idx_data(fl, ltype, ldims)
    bad = np.flatnonzero((labels < 0) | (labels >= N_CLASSES))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            f"{labels_path}: label {int(labels[i])} at index {i}; expected integers 0 to 9"
        )
    return images, labels


# ---------------------------------------------------------------------------- CIFAR-10


class _Token:
    """Stands for a class a pickle names but may not call (numpy.ndarray)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


_NDARRAY = _Token("numpy.ndarray")
_UINT8 = np.dtype(np.uint8)


def _unexpected(what: str) -> pickle.UnpicklingError:
    """What a batch's pickle may not hold; read_cifar_batch puts it in its message."""
    return pickle.UnpicklingError(what)


def _reconstruct(subtype, shape, typecode) -> np.ndarray:
    """numpy's _reconstruct as numpy pickles an array: (ndarray, (0,), b"b"), the state after."""
    if (
        subtype is not _NDARRAY
        or type(shape) is not tuple
        or len(shape) != 1
        or type(shape[0]) is not int
        or shape[0] != 0
        or type(typecode) not in (bytes, str)
        or typecode != ("b" if type(typecode) is str else b"b")
    ):
        raise _unexpected("an array made other than numpy pickles one")
    return np.empty(0, dtype=np.int8)


def _dtype(obj, align=False, copy=False) -> np.dtype:
    """numpy.dtype, for uint8 only (a batch's pixels)."""
    if type(obj) not in (bytes, str) or obj != ("u1" if type(obj) is str else b"u1"):
        shown = _clip(obj) if type(obj) in (bytes, str) else f"a {type(obj).__name__}"
        raise _unexpected(f"dtype {shown} (expected uint8)")
    return _UINT8


def _frombuffer(buf, dtype, shape, order="C") -> np.ndarray:
    """numpy's _frombuffer (arrays in pickles of protocol 5), for uint8 data of its exact size."""
    if type(buf) not in (bytes, bytearray) or dtype is not _UINT8:
        raise _unexpected("an array not of uint8 bytes")
    if (
        type(shape) is not tuple
        or len(shape) > 4
        or any(type(d) is not int or d < 0 for d in shape)
        or math.prod(shape) != len(buf)
        or type(order) is not str
        or order not in ("C", "F")
    ):
        raise _unexpected("an array whose shape does not fit its data")
    return np.frombuffer(buf, dtype=np.uint8).reshape(shape, order=order)


def _latin1(text, encoding) -> bytes:
    """_codecs.encode as Python 3 pickles bytes at protocol 2: (str, "latin1") only."""
    if type(text) is not str or type(encoding) is not str or encoding not in ("latin1", "latin-1"):
        raise _unexpected("_codecs.encode other than of text to latin1")
    return text.encode("latin-1")


def _check_array_state(state) -> None:
    """The state numpy sets on an array: uint8, of a shape its bytes exactly fill."""
    if type(state) is not tuple or len(state) not in (4, 5):
        raise _unexpected("an array state that is not numpy's")
    shape, dtype, fortran, raw = state[-4:]
    if dtype is not _UINT8 or type(raw) is not bytes or type(fortran) not in (bool, int):
        raise _unexpected("an array state that is not uint8 bytes")
    if (
        type(shape) is not tuple
        or len(shape) > 4
        or any(type(d) is not int or d < 0 for d in shape)
        or math.prod(shape) != len(raw)
    ):
        raise _unexpected("an array whose shape does not fit its data")


class _Dispatch(dict):
    def __missing__(self, code: int):
        op = pickletools.code2op.get(chr(code))
        raise _unexpected(f"pickle opcode {op.name if op else hex(code)}")


def _counted(load):
    def op(self):
        self.ops += 1
        if self.ops > CIFAR_MAX_OPS:
            raise _unexpected(f"more than {CIFAR_MAX_OPS} pickle operations")
        load(self)

    return op


class _CifarUnpickler(pickle._Unpickler):
    """Unpickles only what a CIFAR-10 batch holds: a dict of bytes, lists, ints and a uint8 array.

    A pickle can run any code on loading; this one calls nothing but checked
    stand-ins for the four numpy and codecs functions a batch's pickle names,
    refuses the opcodes a batch never uses (objects, sets, extensions, out-of-band
    buffers), lets only bytes and str be dict keys (hashing shared nested tuples
    is exponential), and counts its operations, so a small hostile file can
    neither run code nor take much time or memory. It is the pure-Python
    unpickler, whose opcodes can be checked one by one; the pixels are one
    opcode, so it is about as fast as the C one on a real batch.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _latin1,  # bytes inside protocol-2 pickles written by Python 3
    }
    OPCODES = (
        "PROTO FRAME STOP MARK POP POP_MARK DUP NONE NEWTRUE NEWFALSE INT BININT BININT1 "
        "BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT STRING BINSTRING SHORT_BINSTRING BINBYTES "
        "SHORT_BINBYTES BINBYTES8 BYTEARRAY8 UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 "
        "EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST LIST APPEND APPENDS EMPTY_DICT DICT "
        "SETITEM SETITEMS GET BINGET LONG_BINGET PUT BINPUT LONG_BINPUT MEMOIZE GLOBAL "
        "STACK_GLOBAL REDUCE BUILD"
    ).split()

    def __init__(self, file: _DataFile):
        super().__init__(file, encoding="bytes")
        self.ops = 0

    def find_class(self, module: str, name: str):
        found = self.ALLOWED.get((module, name))
        if found is None:
            raise _unexpected(f"unexpected object {module[:60]}.{name[:60]}")
        return found

    def persistent_load(self, pid):
        raise _unexpected("a persistent id")

    def load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if not any(func is f for f in self.ALLOWED.values()) or type(args) is not tuple:
            raise _unexpected(f"a call of a {type(func).__name__}")
        self.stack[-1] = func(*args)

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            _check_array_state(state)
            inst.__setstate__(state)
        elif inst is _UINT8:  # its state says nothing a uint8 needs; numpy would take any
            if type(state) is not tuple or any(s is not None for s in state[2:5]):
                raise _unexpected("a uint8 dtype with fields or a subarray")
        else:
            raise _unexpected(f"a state set on a {type(inst).__name__}")

    def _list(self) -> list:
        target = self.stack[-1]
        if type(target) is not list:
            raise _unexpected(f"items appended to a {type(target).__name__}")
        return target

    def load_append(self):
        value = self.stack.pop()
        self._list().append(value)

    def load_appends(self):
        items = self.pop_mark()
        self._list().extend(items)

    def _dict(self, items: list) -> dict:
        if len(items) % 2:
            raise _unexpected("a dict of an odd number of items")
        if any(type(k) not in (bytes, str) for k in items[::2]):
            raise _unexpected("a dict key other than bytes or str")
        return dict(zip(items[::2], items[1::2], strict=True))

    def _set(self, items: list) -> None:
        target = self.stack[-1]
        if type(target) is not dict:
            raise _unexpected(f"items set in a {type(target).__name__}")
        target.update(self._dict(items))

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._set([key, value])

    def load_setitems(self):
        self._set(self.pop_mark())

    def load_bytearray8(self):
        # pickle's own allocates (and zeroes) the length the pickle states, before reading
        (n,) = struct.unpack("<Q", self.read(8))
        data = self.read(n)  # within the file and the budget
        if len(data) != n:
            raise EOFError
        self.append(bytearray(data))

    def load_dict(self):
        items = self.pop_mark()  # first: it sets self.append to the enclosing stack's
        self.append(self._dict(items))

    dispatch = _Dispatch()


def _fill_dispatch() -> None:
    overrides = {
        "REDUCE": _CifarUnpickler.load_reduce,
        "BUILD": _CifarUnpickler.load_build,
        "APPEND": _CifarUnpickler.load_append,
        "APPENDS": _CifarUnpickler.load_appends,
        "SETITEM": _CifarUnpickler.load_setitem,
        "SETITEMS": _CifarUnpickler.load_setitems,
        "DICT": _CifarUnpickler.load_dict,
        "BYTEARRAY8": _CifarUnpickler.load_bytearray8,
    }
    for name in _CifarUnpickler.OPCODES:
        code = getattr(pickle, name)[0]
        load = overrides.get(name, pickle._Unpickler.dispatch[code])
        _CifarUnpickler.dispatch[code] = _counted(load)


_fill_dispatch()


def _describe(obj) -> str:
    if type(obj) is np.ndarray:
        return f"an array of {obj.dtype.name} {obj.shape}"
    return f"a {type(obj).__name__}"


def _check_batch(path: Path, batch) -> tuple[np.ndarray, np.ndarray]:
    if type(batch) is not dict or b"data" not in batch or b"labels" not in batch:
        if type(batch) is dict:
            keys = [_clip(k) for k in list(batch)[:6]]
            got = "keys " + (", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "") or "none")
        else:
            got = _describe(batch)
        raise DatasetError(f"{path}: expected a dict with b'data' and b'labels', got {got}")
    data, labels = batch[b"data"], batch[b"labels"]
    if type(data) is not np.ndarray or data.dtype != _UINT8 or data.dtype.fields is not None:
        raise DatasetError(
            f"{path}: b'data' is {_describe(data)}; expected a uint8 array (n, {CIFAR_PIXELS})"
        )
    if data.ndim != 2 or data.shape[1] != CIFAR_PIXELS:
        raise DatasetError(
            f"{path}: b'data' is {_describe(data)}; expected a uint8 array (n, {CIFAR_PIXELS})"
        )
    # Checked before any conversion: a list of shared lists would expand without bound.
    if type(labels) is not list:
        raise DatasetError(f"{path}: b'labels' is {_describe(labels)}; expected a list of ints")
    if len(labels) != len(data):
        raise DatasetError(
            f"{path}: {len(labels)} labels for the {len(data)} images of b'data'; "
            f"expected one label per image"
        )
    for i, label in enumerate(labels):
        if type(label) is not int or not 0 <= label < N_CLASSES:
            if type(label) is not int:
                shown = _describe(label)
            elif abs(label) < 10**9:
                shown = str(label)
            else:
                shown = f"an int of {label.bit_length()} bits"
            raise DatasetError(f"{path}: label {shown} at index {i}; expected ints 0 to 9")
    return data.reshape(-1, 3, 32, 32), np.array(labels, dtype=np.int64)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (plain or gzipped): images uint8 (n, 3, 32, 32), labels int64.

    The format of the CIFAR site: a pickled dict with b"data" (n x 3072 uint8,
    the red, green and blue 32x32 planes of each image) and b"labels" (a list of
    n ints 0 to 9). At most CIFAR_MAX_BYTES (decompressed) are read.
    """
    path = Path(path)
    with _DataFile(path, CIFAR_MAX_BYTES, "a CIFAR-10 batch") as f:
        if f.size is not None and f.size > CIFAR_MAX_BYTES:
            raise DatasetError(
                f"{path} is {f.size} bytes, more than the {CIFAR_MAX_BYTES >> 20} MiB "
                f"a CIFAR-10 batch can hold (one is about 30 MiB)"
            )
        try:
            batch = _CifarUnpickler(f).load()
        except DatasetError:
            raise
        except Exception as exc:  # any failure of a file unpickled by checked code: a bad file
            why = "it is cut short" if isinstance(exc, EOFError) else _brief(exc)
            raise DatasetError(f"{path} is not a CIFAR-10 python batch ({why})") from exc
        if f.read(1):
            raise DatasetError(f"{path}: more data after the end of its pickle")
    return _check_batch(path, batch)


def load_cifar10(data_dir: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 training (data_batch_1..5) or test (test_batch) set, flattened and normalised."""
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}; expected 'train' or 'test'")
    names = DATASET_FILES["cifar10"] if split == "train" else (CIFAR_TEST,)
    parts = [read_cifar_batch(_find(Path(data_dir), n)) for n in names]
    mean = np.asarray(CIFAR_MEAN)[None, :, None, None]
    std = np.asarray(CIFAR_STD)[None, :, None, None]
    x = np.empty((sum(len(p[1]) for p in parts), CIFAR_PIXELS), dtype=np.float32)
    start = 0
    for images, _ in parts:  # batch by batch: float64 of one batch at a time, not of all
        stop = start + len(images)
        x[start:stop] = ((images.astype(np.float64) / 255.0 - mean) / std).reshape(len(images), -1)
        start = stop
    return x, np.concatenate([p[1] for p in parts])


def _find(folder: Path, name: str) -> Path:
    """folder/name, or folder/name.gz where only that exists."""
    plain = folder / name
    if plain.is_file():
        return plain
    gz = folder / f"{name}.gz"
    if gz.is_file():
        return gz
    raise DatasetError(f"{folder} has no {name} (nor {name}.gz)")


def split_holdout(
    x: np.ndarray, y: np.ndarray, fraction: float | None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x, y) to train on, (x, y) held out): a fixed split, the same for every seed.

    With no fraction (or 0) nothing is held out and the held-out part is empty.
    """
    n_out = int(round(len(y) * (fraction or 0.0)))
    order = np.random.default_rng(0).permutation(len(y))
    held, kept = np.sort(order[:n_out]), np.sort(order[n_out:])
    return (x[kept], y[kept]), (x[held], y[held])


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (pixels float64 (1797, 64), labels int64) from its data file.

    The file sklearn.datasets.load_digits reads, read without importing
    scikit-learn: that import alone costs about a second per training job.
    """
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("dataset 'digits' needs scikit-learn installed (it ships the data)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        table = np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {_brief(exc)}") from exc
    if table.shape[1] != 65 or not len(table):
        raise DatasetError(f"{path}: a table of shape {table.shape}; expected (n, 65)")
    return table[:, :-1], table[:, -1].astype(np.int64)


_CACHE: dict | None = None  # {(name, data_dir): read-only (x, y)} inside `cached_datasets()`


@contextlib.contextmanager
def cached_datasets() -> Iterator[None]:
    """Within: each (dataset, data_dir) is read once (a block of seeds trains in one process)."""
    global _CACHE
    outer, _CACHE = _CACHE, ({} if _CACHE is None else _CACHE)
    try:
        yield
    finally:
        _CACHE = outer


def load_dataset(name: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (n, d), labels int64 (n,)), features standardised: see _read_dataset.

    Inside `cached_datasets()` a dataset read before is copied from memory.
    """
    if _CACHE is None:
        return _read_dataset(name, data_dir)
    key = (name, None if data_dir is None else str(data_dir))
    if key not in _CACHE:
        x, y = _read_dataset(name, data_dir)
        x.flags.writeable = y.flags.writeable = False
        _CACHE[key] = x, y
    x, y = _CACHE[key]
    return x.copy(), y.copy()


def _read_dataset(name: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (n, d), labels int64 (n,)), features standardised.

    Without a data_dir, a dataset with a default folder (DATASET_DIRS:
    fashion_mnist) is read from there.
    """
    if name == "digits":
        pixels, labels = read_digits()
        x = pixels / 16.0
        x = (x - x.mean()) / x.std()
        return x.astype(np.float32), labels
    if name not in DATASET_FILES:
        raise DatasetError(
            f"unknown dataset {name!r}; expected 'digits', 'mnist', 'fashion_mnist' or 'cifar10'"
        )
    if data_dir is None:
        data_dir = DATASET_DIRS.get(name)
    if data_dir is None:
        files = ", ".join(DATASET_FILES[name])
        raise DatasetError(f"dataset {name} needs a data_dir holding {files}")
    if name in IDX_NORMALISATION:
        images, labels = read_mnist(data_dir, name)
        mean, std = IDX_NORMALISATION[name]
        flat = images.reshape(len(images), -1)
        x = np.empty(flat.shape, dtype=np.float32)
        for start in range(0, len(flat), 10_000):  # float64 of 10000 images at a time
            part = flat[start : start + 10_000].astype(np.float64)
            x[start : start + 10_000] = (part / 255.0 - mean) / std
        return x, labels.astype(np.int64)
    return load_cifar10(data_dir)
