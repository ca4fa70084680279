"""``LayerFeatures``: an ordered ``{layer: Tensor[N, D]}`` with labels, in memory or on disk."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._io import (
    CorruptFileError,
    PathLike,
    atomic_write_json,
    json_text,
    read_json_file,
    sha256_file,
    verify_file,
)
from .._validate import check_labels

_NP_DTYPES = {"float32": np.float32, "float16": np.float16}
_RESAVE = "delete it and extract (or save) the features again"


SPILL_PREFIX = "dyngraph-features-"
SPILL_MARKER = ".dyngraph-spill.json"
SPILL_FORMAT = "dyngraph.spill/1"
# what a spill folder made by dyngraph may hold: its marker (and the marker's temporary file
# while it is written) and the layer files of extraction
_SPILL_FILES = re.compile(r"layer_\d{3,}(_tokens)?\.bin|\.\.dyngraph-spill\.json\..+\.tmp")


def _process_start(pid: int) -> Optional[str]:
    """When process ``pid`` started (clock ticks since boot, Linux), telling a reused pid apart;
    ``None`` where ``/proc`` does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _write_spill_marker(folder: Path) -> None:
    atomic_write_json(folder / SPILL_MARKER, {
        "format": SPILL_FORMAT, "pid": os.getpid(), "host": socket.gethostname(),
        "start": _process_start(os.getpid()), "created": time.time()})


def make_spill_dir(spill_dir: PathLike) -> Path:
    """A new ``dyngraph-features-*`` folder inside ``spill_dir`` carrying dyngraph's marker (the
    process that made it), so that :meth:`LayerFeatures.close` and :func:`clean_spill` can
    remove it, and nothing else, later.

    Example:
        >>> import tempfile, dyngraph.capture._features as F
        >>> d = F.make_spill_dir(tempfile.mkdtemp())
        >>> d.name.startswith('dyngraph-features-'), F.read_spill_marker(d)['pid'] == os.getpid()
        (True, True)
        >>> F.remove_spill_dir(d), d.exists()
        (True, False)
    """
    parent = Path(spill_dir)
    if not parent.is_dir():
        raise ValueError(f"spill_dir must be an existing folder, got {str(spill_dir)!r}")
    folder = Path(tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=parent))
    _write_spill_marker(folder)
    return folder


def read_spill_marker(folder: PathLike) -> Optional[Dict[str, Any]]:
    """The marker of a spill folder dyngraph made (``pid``, ``host``, ``start``, ``created``),
    or ``None`` when ``folder`` has none (or an unreadable one: then it is not treated as
    dyngraph's)."""
    path = Path(folder) / SPILL_MARKER
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            d = read_json_file(path)
    except (OSError, ValueError):
        return None
    if not (isinstance(d, dict) and d.get("format") == SPILL_FORMAT
            and isinstance(d.get("pid"), int)):
        return None
    return d


def _owned_spill_dir(folder: Path) -> bool:
    """``folder`` is a spill folder dyngraph made (its name, its marker) holding nothing but
    what dyngraph writes there."""
    if not folder.name.startswith(SPILL_PREFIX) or folder.is_symlink() or not folder.is_dir() \
            or read_spill_marker(folder) is None:
        return False
    return all(p.name == SPILL_MARKER or (_SPILL_FILES.fullmatch(p.name) and p.is_file()
                                          and not p.is_symlink()) for p in folder.iterdir())


def remove_spill_dir(folder: PathLike) -> bool:
    """Removes ``folder`` when it is a spill folder dyngraph made (``dyngraph-features-*``, with
    dyngraph's marker) that holds only dyngraph's files; returns whether it was removed. Any
    other folder is left as it is."""
    folder = Path(folder)
    if not _owned_spill_dir(folder):
        return False
    shutil.rmtree(folder)
    return True


def _claim_spill_dir(folder: Path) -> None:
    """Marks a ``dyngraph-features-*`` folder that holds only spilled layer files as this
    process's spill folder (extraction's folder before its first layer file is written)."""
    if folder.name.startswith(SPILL_PREFIX) and not (folder / SPILL_MARKER).exists() \
            and folder.is_dir() and not folder.is_symlink() \
            and all(_SPILL_FILES.fullmatch(p.name) for p in folder.iterdir()):
        _write_spill_marker(folder)


def _owner_alive(marker: Dict[str, Any]) -> Optional[bool]:
    """Whether the process that made a spill folder still runs; ``None`` if unknown (another
    host)."""
    if marker.get("host") != socket.gethostname():
        return None
    pid = int(marker["pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    except OSError:
        return None
    start, now = marker.get("start"), _process_start(pid)
    return not (start is not None and now is not None and start != now)  # a reused pid: dead


def clean_spill(spill_dir: PathLike) -> List[Path]:
    """Removes the spill folders that runs killed before they could clean up left in
    ``spill_dir``: the ``dyngraph-features-*`` folders carrying dyngraph's marker whose process
    is no longer running (on this host) and that hold only dyngraph's files.

    A folder without the marker, of a live process, of another host, or holding anything else
    is kept.

    Args:
        spill_dir: The folder given to ``extract_features(spill_dir=...)``.

    Returns:
        The folders removed.

    Example:
        >>> import tempfile, dyngraph.capture._features as F
        >>> d = tempfile.mkdtemp()
        >>> live = F.make_spill_dir(d)   # this process is running: kept
        >>> F.clean_spill(d), live.exists()
        ([], True)
    """
    parent = Path(spill_dir)
    if not parent.is_dir():
        raise ValueError(f"spill_dir must be an existing folder, got {str(spill_dir)!r}")
    removed = []
    for folder in sorted(parent.glob(SPILL_PREFIX + "*")):
        marker = read_spill_marker(folder) if folder.is_dir() else None
        if marker is not None and _owner_alive(marker) is False and remove_spill_dir(folder):
            removed.append(folder)
    return removed


def resume_file(path: PathLike, nbytes: int, sha256: str, fix: str = _RESAVE) -> Any:
    """Makes ``path`` hold exactly its first ``nbytes`` bytes after checking them against
    ``sha256`` (a hex digest of those bytes, recorded when they were written): bytes written
    after that record (a run killed before its next one) are cut off. Returns the running
    ``hashlib.sha256`` of the bytes kept, ready for more to be appended. The file is read once,
    in chunks.

    Raises:
        CorruptFileError: The file is missing, shorter than ``nbytes``, or its first ``nbytes``
            do not match ``sha256``.

    Example:
        >>> import tempfile, pathlib, hashlib, dyngraph.capture._features as F
        >>> p = pathlib.Path(tempfile.mkdtemp()) / 'a.bin'
        >>> _ = p.write_bytes(b'abcdef')
        >>> h = F.resume_file(p, 4, hashlib.sha256(b'abcd').hexdigest())
        >>> p.read_bytes(), h.hexdigest() == hashlib.sha256(b'abcd').hexdigest()
        (b'abcd', True)
    """
    path = Path(path)
    h = hashlib.sha256()
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if nbytes == 0 and sha256 == h.hexdigest():
            return h  # nothing was written yet
        raise CorruptFileError(path, f"it is missing (the progress record counts {nbytes} "
                               f"bytes in it)", fix) from None
    if size < nbytes:
        raise CorruptFileError(path, f"it holds {size} bytes, fewer than the {nbytes} recorded "
                               f"as written", fix)
    left = nbytes
    with open(path, "rb") as fh:
        while left:
            block = fh.read(min(left, 1 << 20))
            if not block:
                break
            h.update(block)
            left -= len(block)
    if left or h.hexdigest() != sha256:
        raise CorruptFileError(path, f"its first {nbytes} bytes do not match the checksum "
                               f"recorded when they were written", fix)
    if size > nbytes:
        os.truncate(path, nbytes)
    return h


class SpilledArray:
    """A row-appendable ``[N, D]`` array in a raw file, read back as a read-only memory map.

    ``offset`` is where the rows start in the file (a ``.npy`` header's length); an array opened
    with :meth:`open_npy` is read-only.

    Integrity: the bytes appended are hashed as they are written; :meth:`close` records the
    sha256 of the file (:attr:`sha256`), and the first read after it checks the file against it
    (one sequential pass), as :meth:`open_npy` does with a recorded checksum. A file changed
    since raises :class:`~dyngraph._io.CorruptFileError`.

    Example:
        >>> import tempfile, torch, dyngraph as dg
        >>> a = dg.capture.SpilledArray(tempfile.mkdtemp() + '/x.bin', 3)
        >>> a.append(torch.ones(2, 3)); a.append(torch.zeros(1, 3)); a.close()
        >>> a.shape, a.load().sum().item(), len(a.sha256)
        ((3, 3), 6.0, 64)
    """

    def __init__(self, path: PathLike, dim: int, dtype: str = "float32", offset: int = 0,
                 sha256: Optional[str] = None):
        if dtype not in _NP_DTYPES:
            raise ValueError(f"spill dtype must be one of {list(_NP_DTYPES)}, got {dtype!r}")
        self.path, self.dim, self.dtype, self.rows = Path(path), int(dim), dtype, 0
        self.offset = int(offset)
        self.sha256: Optional[str] = sha256
        self._fh: Optional[Any] = None
        self._readonly = False
        self._hash: Optional[Any] = None
        self._verified = False
        self._removed = False

    @classmethod
    def open_npy(cls, path: PathLike, sha256: Optional[str] = None) -> "SpilledArray":
        """A read-only view of a 2-D float32/float16 ``.npy`` file, without reading its rows;
        with ``sha256`` (the file's :func:`~dyngraph._io.sha256_file`), the first read checks
        the file against it."""
        try:
            arr = np.load(path, mmap_mode="r")
        except Exception as exc:  # a damaged header fails in many ways (even a TokenError)
            if sha256 is not None and Path(path).is_file() and sha256_file(path) != sha256:
                raise CorruptFileError(path, "its bytes do not match the checksum recorded for "
                                       "it", _RESAVE) from None
            raise ValueError(f"{path}: not a readable .npy file ({exc})") from None
        dtype = next((k for k, v in _NP_DTYPES.items() if arr.dtype == np.dtype(v)), None)
        if arr.ndim != 2 or dtype is None or not arr.flags.c_contiguous:
            if sha256 is not None and sha256_file(path) != sha256:
                raise CorruptFileError(path, "its bytes do not match the checksum recorded for "
                                       "it", _RESAVE)
            raise ValueError(f"{path}: expected a C-ordered 2-D float32/float16 array, got "
                             f"{arr.dtype} of shape {arr.shape}")
        out = cls(path, arr.shape[1], dtype, offset=int(arr.offset), sha256=sha256)
        out.rows = int(arr.shape[0])
        out._readonly = True
        return out

    @classmethod
    def resume(cls, path: PathLike, dim: int, dtype: str, rows: int, sha256: str,
               fix: str = _RESAVE) -> "SpilledArray":
        """The array of ``path`` as it was when its first ``rows`` rows had the running checksum
        ``sha256`` (from :meth:`sync`): those rows are checked, anything after them is cut off,
        and appending continues from there (see :func:`resume_file`).

        Example:
            >>> import tempfile, torch, dyngraph as dg
            >>> a = dg.capture.SpilledArray(tempfile.mkdtemp() + '/x.bin', 2)
            >>> a.append(torch.ones(3, 2)); mark = a.sync(); a.append(torch.zeros(1, 2)); a.close()
            >>> b = dg.capture.SpilledArray.resume(a.path, 2, 'float32', 3, mark)
            >>> b.append(torch.full((1, 2), 5.)); b.close()
            >>> b.load()[:, 0].tolist()
            [1.0, 1.0, 1.0, 5.0]
        """
        out = cls(path, dim, dtype)
        if not (isinstance(rows, int) and rows >= 0):
            raise ValueError(f"rows must be an int >= 0, got {rows!r}")
        out._hash = resume_file(out.path, rows * out._row_bytes, sha256, fix)
        out.rows = rows
        return out

    def sync(self) -> str:
        """Flushes the rows appended so far to disk (``fsync``) and returns the sha256 (hex) of
        every byte written, which :meth:`resume` checks."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        if self._hash is None:
            if self.rows == 0 and self.offset == 0:
                return hashlib.sha256().hexdigest()
            raise ValueError(f"{self.path}: the running checksum of this array is unknown (it "
                             f"was opened read-only or made before its rows were written)")
        return str(self._hash.copy().hexdigest())

    @property
    def _row_bytes(self) -> int:
        return self.dim * self.np_dtype.itemsize

    def append(self, rows: Tensor) -> None:
        """Appends ``[B, D]`` rows to the file (converted to the array's dtype)."""
        if getattr(self, "_readonly", False):
            raise ValueError(f"{self.path} was opened read-only (a saved or finished layer)")
        self._check_present()
        if self._fh is None:
            self._open_for_append()
        arr = rows.detach().to("cpu", torch.float32).numpy().astype(_NP_DTYPES[self.dtype],
                                                                   copy=False)
        data = np.ascontiguousarray(arr).tobytes()
        assert self._fh is not None
        self._fh.write(data)
        if self._hash is not None:
            self._hash.update(data)
        self.rows += arr.shape[0]
        self.sha256, self._verified = None, False

    def _open_for_append(self) -> None:
        size = self.path.stat().st_size if self.path.exists() else 0
        if size != self.offset + self.rows * self._row_bytes:
            raise ValueError(f"{self.path} holds {size} bytes but this spilled array has "
                             f"{self.rows} rows of {self.dim}: a spilled array writes its own "
                             f"file; choose a new path")
        if size == 0:
            _claim_spill_dir(self.path.parent)
            self._hash = hashlib.sha256()
        elif self._hash is None:  # rows written before this object knew them: hash them too
            self._hash = hashlib.sha256()
            with open(self.path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    self._hash.update(block)
        self._fh = open(self.path, "ab")

    def close(self) -> None:
        """Flushes and closes the file (if open) and records its :attr:`sha256`."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
        if self._hash is not None:  # also rows resumed but not appended to since
            self.sha256 = self._hash.hexdigest()  # checked by the first read after this

    def _check_present(self) -> None:
        if self._removed:
            raise ValueError(f"{self.path}: this spilled layer was removed by "
                             f"LayerFeatures.close(); extract the features again")

    def verify(self) -> None:
        """Checks the file's size and, once, its bytes against :attr:`sha256` (when known).

        Raises:
            CorruptFileError: The file has changed since it was written.
        """
        self.close()
        self._check_present()
        want = self.offset + self.rows * self._row_bytes
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise ValueError(f"{self.path}: the spilled layer's file is gone (its folder was "
                             f"removed?); extract the features again") from None
        if size != want:
            raise CorruptFileError(self.path, f"it holds {size} bytes where {self.rows} rows of "
                                   f"{self.dim} {self.dtype} take {want}", _RESAVE)
        if not self._verified and self.sha256 is not None:
            if sha256_file(self.path) != self.sha256:
                raise CorruptFileError(self.path, "its bytes do not match the checksum recorded "
                                       "when it was written", _RESAVE)
            self._verified = True

    def memmap(self) -> np.memmap:
        """The rows as a read-only ``[N, D]`` memory map (the file checked first)."""
        self.verify()
        return np.memmap(self.path, dtype=_NP_DTYPES[self.dtype], mode="r",
                         shape=(self.rows, self.dim), offset=self.offset)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(_NP_DTYPES[self.dtype])

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` read from the file (not memory-mapped: the pages read do not stay
        in this process's resident memory), as a fresh ``[stop − start, D]`` array."""
        self.verify()
        if not (isinstance(start, int) and isinstance(stop, int)
                and 0 <= start <= stop <= self.rows):
            raise ValueError(f"rows {start!r}:{stop!r} are outside this spilled array's "
                             f"{self.rows} rows")
        count = (stop - start) * self.dim
        arr = np.fromfile(self.path, dtype=self.np_dtype, count=count,
                          offset=self.offset + start * self.dim * self.np_dtype.itemsize)
        return arr.reshape(-1, self.dim)

    def load(self, rows: Optional[np.ndarray] = None) -> Tensor:
        """The whole array (or selected rows) as a float32 tensor in memory."""
        mm = self.memmap()
        src = mm if rows is None else mm[rows]
        out = np.empty(src.shape, dtype=np.float32)  # one allocation, converted in place
        out[...] = src
        return torch.from_numpy(out)

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.rows, self.dim)

    def describe(self) -> Dict[str, Any]:
        return {"file": self.path.name, "rows": self.rows, "dim": self.dim, "dtype": self.dtype}


def _is_saved_features(path: Path) -> bool:
    """Whether ``path`` is a folder written by :meth:`LayerFeatures.save` (and nothing else)."""
    if not path.is_dir() or path.is_symlink():
        return False
    try:
        index = json.loads((path / "index.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict) or index.get("format") != "dyngraph.LayerFeatures/1":
        return False
    ours = {"index.json", "labels.pt", *map(str, index.get("layers", {}).values())}
    return {p.name for p in path.iterdir()} <= ours


def _per_sample(value: Any, n: int, name: str) -> Optional[Tensor]:
    """``None`` or an integer ``[n]`` tensor (one entry per sample), checked."""
    if value is None:
        return None
    t = torch.as_tensor(value)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype={t.dtype}")
    if t.dim() != 1 or t.numel() != n:
        raise ValueError(f"{name} must have one entry per sample (length {n}), got shape "
                         f"{tuple(t.shape)}")
    return t.long()


class LayerFeatures(Mapping):
    """Ordered per-layer representations of the same N samples, with their labels.

    Layers live in memory (tensors) or on disk (:class:`SpilledArray`, loaded one layer at a time
    on access), so building snapshots layer by layer needs one layer in memory at once.

    Attributes:
        y: ``[N]`` labels.
        indices: ``[N]`` dataset index of each sample, when known (with ``pool='tokens'``: the
            index of the input each token comes from).
        positions: ``[N]`` token position of each sample within its input when every token is a
            sample (``pool='tokens'``); ``None`` otherwise.
        meta: How the features were extracted (hook points, pooling, sampling, seed, ...).

    Example:
        >>> import torch, dyngraph as dg
        >>> f = dg.LayerFeatures({'a': torch.randn(4, 3), 'b': torch.randn(4, 5)},
        ...                      y=torch.tensor([0, 0, 1, 1]))
        >>> list(f), f.n_samples, f.dims
        (['a', 'b'], 4, {'a': 3, 'b': 5})
    """

    def __init__(self, features: "Mapping[str, Union[Tensor, SpilledArray]]", y: Tensor,
                 indices: Optional[Tensor] = None, meta: Optional[Dict[str, Any]] = None,
                 positions: Optional[Tensor] = None):
        if not isinstance(features, Mapping):
            raise TypeError(f"features must be a mapping {{name: Tensor}}, got "
                            f"{type(features).__name__}")
        self._layers: Dict[str, Union[Tensor, SpilledArray]] = dict(features)
        if not self._layers:
            raise ValueError("features is empty: at least one layer is needed")
        n: Optional[int] = None
        for name, v in self._layers.items():
            if not isinstance(v, (Tensor, SpilledArray)):
                raise TypeError(f"features[{name!r}] must be a Tensor, got {type(v).__name__}")
            rows = v.shape[0]
            if n is not None and rows != n:
                raise ValueError(f"every layer must have the same number of samples; "
                                 f"features[{name!r}] has {rows}, expected {n}")
            n = rows
        assert n is not None
        self.y = check_labels(y, n, "y")
        self.indices = _per_sample(indices, n, "indices")
        self.positions = _per_sample(positions, n, "positions")
        self.meta: Dict[str, Any] = dict(meta or {})

    def stored(self, name: str) -> "Union[Tensor, SpilledArray]":
        """Layer ``name`` as stored: a tensor, or the :class:`SpilledArray` on disk (not loaded;
        :func:`dyngraph.graphs.nearest_neighbors` searches it out of core)."""
        if name not in self._layers:
            raise KeyError(f"no layer {name!r}; layers are {list(self._layers)}")
        return self._layers[name]

    # Mapping protocol
    def __getitem__(self, name: str) -> Tensor:
        v = self.stored(name)
        return v.load() if isinstance(v, SpilledArray) else v

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    @property
    def names(self) -> List[str]:
        return list(self._layers)

    @property
    def n_samples(self) -> int:
        return int(self.y.numel())

    @property
    def dims(self) -> Dict[str, int]:
        return {k: int(np.prod(v.shape[1:])) for k, v in self._layers.items()}

    @property
    def on_disk(self) -> bool:
        return any(isinstance(v, SpilledArray) for v in self._layers.values())

    def __repr__(self) -> str:
        dims = ", ".join(f"{k}: {d}" for k, d in list(self.dims.items())[:6])
        more = ", ..." if len(self) > 6 else ""
        return (f"LayerFeatures(n_samples={self.n_samples}, layers={len(self)}, "
                f"classes={int(self.y.unique().numel())}, dims={{{dims}{more}}}, "
                f"on_disk={self.on_disk})")

    def subset(self, index: Union[Tensor, Sequence[int]]) -> "LayerFeatures":
        """The same layers restricted to rows ``index`` (loaded in memory).

        Raises:
            TypeError: ``index`` is not integer (a float index would be truncated).
            ValueError: An index is outside ``[-N, N)``.
        """
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool and idx.ndim == 1 and len(idx) == len(self.y):
            idx = idx.nonzero().flatten()
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise TypeError(f"index must hold integers (or be a boolean mask of {len(self.y)} "
                            f"rows), got dtype {idx.dtype} (float indices are not truncated)")
        idx = idx.long().flatten()
        n = len(self.y)
        bad = idx[(idx < -n) | (idx >= n)]
        if bad.numel():
            raise ValueError(f"index holds {bad[:5].tolist()} outside the {n} rows of these "
                             f"features")
        idx = torch.where(idx < 0, idx + n, idx)
        feats = {k: v.load(idx.numpy()) if isinstance(v, SpilledArray) else v[idx]
                 for k, v in self._layers.items()}
        return LayerFeatures(feats, self.y[idx],
                             None if self.indices is None else self.indices[idx], self.meta,
                             None if self.positions is None else self.positions[idx])

    def select(self, layers: Sequence[str]) -> "LayerFeatures":
        """Only the named layers, in the given order."""
        if isinstance(layers, str) or not isinstance(layers, (list, tuple)):
            raise TypeError(f"layers must be a list of layer names, got {type(layers).__name__} "
                            f"{layers!r} (a str would be read letter by letter)")
        missing = [n for n in layers if n not in self._layers]
        if missing:
            raise ValueError(f"unknown layers {missing}; available: {self.names}")
        return LayerFeatures({n: self._layers[n] for n in layers}, self.y, self.indices, self.meta,
                             self.positions)

    # spill folders
    def verify(self) -> None:
        """Checks every layer on disk against the checksum recorded when it was written (a
        spilled layer at its close, a saved layer in ``index.json``): one sequential read of
        each file. Layers are also checked on their first read, so this only brings the check
        forward.

        Raises:
            CorruptFileError: A file no longer matches its checksum (named in the message).
        """
        for v in self._layers.values():
            if isinstance(v, SpilledArray):
                v.verify()

    def close(self) -> None:
        """Removes the spill folder(s) extraction made for these features (``spill_dir=``):
        only ``dyngraph-features-*`` folders carrying dyngraph's marker and holding nothing but
        dyngraph's files; a folder written by :meth:`save`, the ``checkpoint=`` folder of a
        resumable extraction (the result itself: a rerun returns it), or any other, is never
        touched.

        Layers in memory stay usable; the spilled ones (also in views made by :meth:`select`)
        raise a ``ValueError`` when read afterwards. ``with features: ...`` calls it on exit,
        also after an error.

        Example:
            >>> import tempfile, torch, dyngraph as dg
            >>> from torch.utils.data import DataLoader, TensorDataset
            >>> _ = torch.manual_seed(0)
            >>> ds = TensorDataset(torch.randn(20, 4), torch.arange(20) % 2)
            >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())  # '1': >= 0
            >>> spill = tempfile.mkdtemp()
            >>> with dg.extract_features(m, DataLoader(ds), layers=['1'], spill_dir=spill,
            ...                          progress=False) as f:
            ...     q = float(dg.depth_profile(f, 'modularity', progress=False).values[0])
            >>> import os; os.listdir(spill)
            []
        """
        folders: Dict[Path, List[SpilledArray]] = {}
        for v in self._layers.values():
            if isinstance(v, SpilledArray):
                v.close()
                folders.setdefault(v.path.parent, []).append(v)
        made = self.meta.get("spill_dir")
        if isinstance(made, str) and made:
            folders.setdefault(Path(made), [])
        for folder, arrays in folders.items():
            if remove_spill_dir(folder):
                for a in arrays:
                    a._removed = True

    def __enter__(self) -> "LayerFeatures":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # persistence
    def save(self, path: PathLike) -> Path:
        """Writes a folder (one ``.npy`` per layer, ``labels.pt`` and ``index.json``), atomically
        via rename. ``index.json`` records the sha256 of every file and carries a checksum of
        its own; :meth:`load` checks them.

        An existing folder at ``path`` is replaced only when :meth:`save` wrote it (its
        ``index.json`` and nothing but its files); anything else is a ``FileExistsError``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            files = {name: f"layer_{i:03d}.npy" for i, name in enumerate(self._layers)}
            for name, fname in files.items():
                np.save(tmp / fname, self[name].float().cpu().numpy())
            torch.save({"y": self.y.cpu(), "indices": self.indices, "positions": self.positions},
                       tmp / "labels.pt")
            sums = {fname: sha256_file(tmp / fname) for fname in [*files.values(), "labels.pt"]}
            meta = json.loads(json.dumps(self.meta, default=str))
            (tmp / "index.json").write_text(json_text({
                "format": "dyngraph.LayerFeatures/1", "layers": files, "meta": meta,
                "checksums": sums}))
            if path.exists():
                if not _is_saved_features(path):
                    raise FileExistsError(f"{path} exists and is not a folder written by "
                                          f"LayerFeatures.save; refusing to replace it")
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
                os.replace(path, old / path.name)  # then the new folder takes its place
                try:
                    os.replace(tmp, path)
                except BaseException:  # the saved folder goes back where it was
                    os.replace(old / path.name, path)
                    old.rmdir()
                    raise
                shutil.rmtree(old)  # (our mkdtemp, holding only the checked folder we replaced)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: PathLike, mmap: bool = True) -> "LayerFeatures":
        """Reads a folder written by :meth:`save`; layers stay memory-mapped when ``mmap``.

        ``index.json`` and ``labels.pt`` are checked against their checksums here, each layer
        file on its first read (``mmap=True``: a layer is read when used; call :meth:`verify`
        to check them all now) or here (``mmap=False``). A mismatch raises
        :class:`~dyngraph._io.CorruptFileError` naming the file. A folder saved before
        checksums existed is read with a warning.

        Example:
            >>> import tempfile, torch, dyngraph as dg
            >>> f = dg.LayerFeatures({'a': torch.randn(4, 3)}, y=torch.tensor([0, 0, 1, 1]))
            >>> g = dg.LayerFeatures.load(f.save(tempfile.mkdtemp() + '/feats'))
            >>> torch.equal(g['a'], f['a']), g.on_disk
            (True, True)
        """
        path = Path(path)
        fix = _RESAVE
        with warnings.catch_warnings():  # one warning below for a folder without checksums
            warnings.simplefilter("ignore", UserWarning)
            index = read_json_file(path / "index.json", keep_checksum=True, fix=fix,
                                   what="a LayerFeatures index")
        if not isinstance(index, dict) or index.get("format") != "dyngraph.LayerFeatures/1":
            raise ValueError(f"{path} is not a LayerFeatures folder")
        sums = index.get("checksums")
        if sums is None:
            warnings.warn(f"{str(path)!r} was saved without checksums (an older dyngraph): its "
                          f"files are read unverified; save it again to add them", UserWarning,
                          stacklevel=2)
        elif "checksum" not in index:
            warnings.warn(f"{str(path / 'index.json')!r} has no checksum of its own: its "
                          f"entries are used unverified", UserWarning, stacklevel=2)
        if sums is not None and not isinstance(sums, dict):
            raise CorruptFileError(path / "index.json", "its 'checksums' entry is not a dict", fix)

        def expected(fname: str) -> Optional[str]:
            if sums is None:
                return None
            assert isinstance(sums, dict)
            if not isinstance(sums.get(fname), str):
                raise CorruptFileError(path / "index.json", f"it records no checksum for "
                                       f"{fname!r}", fix)
            return sums[fname]

        with warnings.catch_warnings():  # the missing checksums were reported once, above
            warnings.simplefilter("ignore", UserWarning)
            verify_file(path / "labels.pt", expected("labels.pt"), fix)
        try:
            labels = torch.load(path / "labels.pt", weights_only=True)
            y = labels["y"]
        except Exception as exc:
            raise CorruptFileError(path / "labels.pt", f"it cannot be read ({exc})", fix) from None
        feats: Dict[str, Union[Tensor, SpilledArray]] = {}
        for name, fname in index["layers"].items():
            if not isinstance(fname, str) or Path(fname).name != fname or fname in (".", ".."):
                raise ValueError(f"{path}/index.json names layer file {fname!r} for layer "
                                 f"{name!r}: only plain file names inside the folder are read")
            want = expected(fname)
            if mmap:  # stays on disk: rows are read (and first checked) when a layer is used
                feats[name] = SpilledArray.open_npy(path / fname, sha256=want)
            else:
                if want is not None:
                    verify_file(path / fname, want, fix)
                try:
                    feats[name] = torch.from_numpy(np.load(path / fname))
                except Exception as exc:
                    raise ValueError(f"{path / fname}: not a readable .npy file ({exc})") from None
        return cls(feats, y, labels.get("indices"), index["meta"], labels.get("positions"))
