"""``LayerFeatures``: an ordered ``{layer: Tensor[N, D]}`` with labels, in memory or on disk."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._io import PathLike
from .._validate import check_labels

_NP_DTYPES = {"float32": np.float32, "float16": np.float16}


class SpilledArray:
    """A row-appendable ``[N, D]`` array in a raw file, read back as a read-only memory map.

    ``offset`` is where the rows start in the file (a ``.npy`` header's length); an array opened
    with :meth:`open_npy` is read-only.
    """

    def __init__(self, path: PathLike, dim: int, dtype: str = "float32", offset: int = 0):
        if dtype not in _NP_DTYPES:
            raise ValueError(f"spill dtype must be one of {list(_NP_DTYPES)}, got {dtype!r}")
        self.path, self.dim, self.dtype, self.rows = Path(path), int(dim), dtype, 0
        self.offset = int(offset)
        self._fh: Optional[Any] = None
        self._readonly = False

    @classmethod
    def open_npy(cls, path: PathLike) -> "SpilledArray":
        """A read-only view of a 2-D float32/float16 ``.npy`` file, without reading its rows."""
        arr = np.load(path, mmap_mode="r")
        dtype = next((k for k, v in _NP_DTYPES.items() if arr.dtype == np.dtype(v)), None)
        if arr.ndim != 2 or dtype is None or not arr.flags.c_contiguous:
            raise ValueError(f"{path}: expected a C-ordered 2-D float32/float16 array, got "
                             f"{arr.dtype} of shape {arr.shape}")
        out = cls(path, arr.shape[1], dtype, offset=int(arr.offset))
        out.rows = int(arr.shape[0])
        out._readonly = True
        return out

    def append(self, rows: Tensor) -> None:
        if getattr(self, "_readonly", False):
            raise ValueError(f"{self.path} was opened read-only (a saved .npy layer)")
        if self._fh is None:
            self._fh = open(self.path, "ab")
        arr = rows.detach().to("cpu", torch.float32).numpy().astype(_NP_DTYPES[self.dtype],
                                                                   copy=False)
        self._fh.write(np.ascontiguousarray(arr).tobytes())
        self.rows += arr.shape[0]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def memmap(self) -> np.memmap:
        self.close()
        return np.memmap(self.path, dtype=_NP_DTYPES[self.dtype], mode="r",
                         shape=(self.rows, self.dim), offset=self.offset)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(_NP_DTYPES[self.dtype])

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` read from the file (not memory-mapped: the pages read do not stay
        in this process's resident memory), as a fresh ``[stop − start, D]`` array."""
        self.close()
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
        if name not in self._layers:
            raise KeyError(f"no layer {name!r}; layers are {list(self._layers)}")
        v = self._layers[name]
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
        """The same layers restricted to rows ``index`` (loaded in memory)."""
        idx = torch.as_tensor(index).long()
        feats = {}
        for k, v in self._layers.items():
            feats[k] = v.load(idx.numpy()) if isinstance(v, SpilledArray) else v[idx]
        return LayerFeatures(feats, self.y[idx],
                             None if self.indices is None else self.indices[idx], self.meta,
                             None if self.positions is None else self.positions[idx])

    def select(self, layers: Sequence[str]) -> "LayerFeatures":
        """Only the named layers, in the given order."""
        missing = [n for n in layers if n not in self._layers]
        if missing:
            raise ValueError(f"unknown layers {missing}; available: {self.names}")
        return LayerFeatures({n: self._layers[n] for n in layers}, self.y, self.indices, self.meta,
                             self.positions)

    # persistence
    def save(self, path: PathLike) -> Path:
        """Writes a folder (one ``.npy`` per layer + ``index.json``), atomically via rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            files = {}
            for i, name in enumerate(self._layers):
                fname = f"layer_{i:03d}.npy"
                np.save(tmp / fname, self[name].float().cpu().numpy())
                files[name] = fname
            torch.save({"y": self.y.cpu(), "indices": self.indices, "positions": self.positions},
                       tmp / "labels.pt")
            meta = json.loads(json.dumps(self.meta, default=str))
            (tmp / "index.json").write_text(json.dumps({"format": "dyngraph.LayerFeatures/1",
                                                        "layers": files, "meta": meta}, indent=2))
            if path.exists():
                if not _is_saved_features(path):
                    raise FileExistsError(f"{path} exists and is not a folder written by "
                                          f"LayerFeatures.save; refusing to replace it")
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
                os.replace(path, old / path.name)  # then the new folder takes its place
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: PathLike, mmap: bool = True) -> "LayerFeatures":
        """Reads a folder written by :meth:`save`; layers stay memory-mapped when ``mmap``."""
        path = Path(path)
        index = json.loads((path / "index.json").read_text())
        if index.get("format") != "dyngraph.LayerFeatures/1":
            raise ValueError(f"{path} is not a LayerFeatures folder")
        labels = torch.load(path / "labels.pt", weights_only=True)
        feats: Dict[str, Union[Tensor, SpilledArray]] = {}
        for name, fname in index["layers"].items():
            if not isinstance(fname, str) or Path(fname).name != fname or fname in (".", ".."):
                raise ValueError(f"{path}/index.json names layer file {fname!r} for layer "
                                 f"{name!r}: only plain file names inside the folder are read")
            if mmap:  # stays on disk: rows are read when a layer is used
                feats[name] = SpilledArray.open_npy(path / fname)
            else:
                feats[name] = torch.from_numpy(np.load(path / fname))
        return cls(feats, labels["y"], labels["indices"], index["meta"], labels.get("positions"))
