"""The two result containers of the spine: :class:`DepthProfile` (metrics over depth) and
:class:`LayerMatrix` (a measure between every pair of layers)."""
from __future__ import annotations

import csv
import io
import numbers
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._io import PathLike, atomic_write_text
from .._json import JsonFile, float_tensor, jsonable

PROFILE_FORMAT = "dyngraph.DepthProfile/1"
MATRIX_FORMAT = "dyngraph.LayerMatrix/1"


def _names(value: Any, what: str) -> List[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{what} must be a list of names, got {type(value).__name__}: {value!r}")
    names = [str(v) for v in value]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{what} must be unique; repeated: {dup}")
    return names


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _check_meta(meta: Any) -> Dict[str, Any]:
    if not isinstance(meta, (dict, type(None))):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    return dict(meta or {})


def _samples(value: Any, name: str) -> Tensor:
    """``value`` (a tensor, NumPy array or nested lists of numbers) as a float64 CPU tensor."""
    if isinstance(value, Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must hold real numbers, got dtype={value.dtype}")
        return value.detach().to("cpu", torch.float64)
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be a tensor (or nested lists) of numbers, got "
                        f"{type(value).__name__}: {value!r}"[:200])
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a tensor (or nested lists) of numbers with one "
                         f"length per dimension, got {type(value).__name__}: "
                         f"{str(exc).splitlines()[0]}") from None
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (
            torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name} must hold real numbers, got dtype={t.dtype}")
    return t.to(torch.float64)


def check_out_path(path: Any, name: str = "path") -> Optional[PathLike]:
    """``None`` or a path (``str`` / ``os.PathLike``) that is not an existing folder."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or pathlib.Path), got "
                        f"{type(path).__name__}: {path!r}"[:200])
    if not str(path):
        raise ValueError(f"{name} is empty: give a file path")
    if os.path.isdir(path):
        raise ValueError(f"{name}={str(path)!r} is a folder; give a file path inside it")
    return path


def write_csv(header: List[str], rows: Any, path: Optional[PathLike]) -> str:
    path = check_out_path(path)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    text = buf.getvalue()
    if path is not None:
        atomic_write_text(path, text)
    return text


RESERVED_KEYS = ("format", "layers", "metrics", "samples", "mean", "std", "meta", "checksum")


def require_keys(d: Dict[str, Any], keys: Sequence[str], what: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"not a complete {what} dict: missing {missing} (the file was cut "
                         f"short or edited)")


def _meta_of(d: Dict[str, Any]) -> Dict[str, Any]:
    meta = d.get("meta")
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    return meta


class _Result(JsonFile):
    """What the spine's results share: JSON files (atomic, format-checked) and equality of
    names, values (NaN-aware) and settings."""

    def __eq__(self: Any, other: Any) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (self._key() == other._key() and _same(self._data(), other._data())
                and jsonable(self.meta) == jsonable(other.meta))

    __hash__ = None  # type: ignore[assignment]


class DepthProfile(_Result):
    """Metrics over the layers of a network, every repeat kept.

    ``samples[r, l, m]`` is metric ``m`` at layer ``l`` in repeat ``r`` (a class-balanced
    resampling); :attr:`mean` and :attr:`std` are derived from it, never stored apart. Nulls
    appear as metrics ``'<metric>:null_mean'``, ``'<metric>:null_std'`` and ``'<metric>:z'``.

    Args:
        layers: Layer names in depth order ``[L]``.
        metrics: Metric names ``[M]``.
        samples: ``[R, L, M]``; also ``[R, L]`` or ``[L]`` for one metric, ``[L, M]`` for one
            repeat of several metrics.
        meta: The settings that produced it.

    Example:
        >>> import torch, dyngraph as dg
        >>> p = dg.DepthProfile(['a', 'b'], ['q'], torch.tensor([[0.1, 0.5], [0.3, 0.7]]))
        >>> p.samples.shape, [round(v, 3) for v in p['q'].values.tolist()]
        (torch.Size([2, 2, 1]), [0.2, 0.6])
        >>> dg.DepthProfile.from_dict(p.to_dict()) == p
        True
    """

    def __init__(self, layers: Sequence[str], metrics: Union[str, Sequence[str]],
                 samples: Any, meta: Optional[Dict[str, Any]] = None) -> None:
        self.layers = _names(list(layers) if isinstance(layers, tuple) else layers, "layers")
        if isinstance(metrics, str):
            metrics = [metrics]
        self.metrics = _names(metrics, "metrics")
        s = _samples(samples, "samples")
        L, M = len(self.layers), len(self.metrics)
        if s.dim() == 1 and M == 1:          # [L]: one metric, one repeat
            s = s.reshape(1, -1, 1)
        elif s.dim() == 2 and M == 1:        # [R, L]: one metric
            s = s.unsqueeze(-1)
        elif s.dim() == 2:                   # [L, M]: one repeat
            s = s.unsqueeze(0)
        if s.dim() != 3 or tuple(s.shape[1:]) != (L, M) or s.shape[0] < 1:
            raise ValueError(f"samples must have shape [repeats, {L} layers, {M} metrics], got "
                             f"{tuple(_samples(samples, 'samples').shape)}")
        self.samples: Tensor = s.clone()
        self.meta = _check_meta(meta)

    FORMAT = PROFILE_FORMAT

    def _key(self) -> Tuple[Any, ...]:
        return (self.layers, self.metrics)

    def _data(self) -> Tensor:
        return self.samples

    # ------------------------------------------------------------------ derived
    @property
    def repeats(self) -> int:
        return int(self.samples.shape[0])

    @property
    def mean(self) -> Tensor:
        """Mean over repeats ``[L, M]``."""
        return self.samples.mean(0)

    @property
    def std(self) -> Tensor:
        """Sample standard deviation over repeats ``[L, M]`` (zeros for one repeat)."""
        if self.repeats == 1:
            return torch.zeros_like(self.samples[0])
        return self.samples.std(0, unbiased=True)

    def _single(self, what: str) -> int:
        if len(self.metrics) != 1:
            raise ValueError(f"{what} needs a one-metric profile; this one has {self.metrics}: "
                             f"select one with profile[{self.metrics[0]!r}]")
        return 0

    @property
    def name(self) -> str:
        """The metric of a one-metric profile."""
        return self.metrics[self._single(".name")]

    @property
    def values(self) -> Tensor:
        """Mean over repeats ``[L]`` of a one-metric profile (``profile['modularity'].values``)."""
        return self.mean[:, self._single(".values")]

    @property
    def errors(self) -> Tensor:
        """Standard deviation ``[L]`` of a one-metric profile."""
        return self.std[:, self._single(".errors")]

    def __getitem__(self, key: Union[str, Sequence[str]]) -> "DepthProfile":
        """One metric (``p['modularity']``) or several (``p[['nc1', 'twonn']]``) as a profile."""
        if isinstance(key, str):
            keys = [key]
        elif isinstance(key, (list, tuple)) and key and all(isinstance(k, str) for k in key):
            keys = list(key)
        else:
            raise TypeError(f"a DepthProfile is indexed by a metric name or a list of names "
                            f"(metrics are {self.metrics}), got {type(key).__name__}: {key!r}; "
                            f"use .layer(i) for a layer")
        if len(set(keys)) != len(keys):
            raise ValueError(f"metrics listed twice: {keys}")
        idx = []
        for k in keys:
            if k not in self.metrics:
                raise KeyError(f"no metric {k!r}; metrics are {self.metrics}")
            idx.append(self.metrics.index(k))
        return DepthProfile(self.layers, keys, self.samples[:, :, idx], self.meta)

    def layer(self, name: Union[str, int]) -> Dict[str, float]:
        """``{metric: mean}`` at one layer (by name or index)."""
        if isinstance(name, str):
            if name not in self.layers:
                raise KeyError(f"no layer {name!r}; layers are {self.layers}")
            i = self.layers.index(name)
        elif isinstance(name, bool) or not isinstance(name, numbers.Integral):
            raise TypeError(f"layer takes a layer name or an int index, got "
                            f"{type(name).__name__}: {name!r}")
        elif not -len(self.layers) <= name < len(self.layers):
            raise IndexError(f"layer index {name} is out of range for {len(self.layers)} layers")
        else:
            i = int(name)
        return {m: float(v) for m, v in zip(self.metrics, self.mean[i])}

    def diff(self) -> Tensor:
        """Layer-to-layer change of the mean ``[L − 1, M]`` (``[L − 1]`` for one metric)."""
        d = self.mean[1:] - self.mean[:-1]
        return d[:, 0] if len(self.metrics) == 1 else d

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        head = ", ".join(f"{m}=[" + ", ".join(f"{v:.3f}" for v in self.mean[:6, i].tolist())
                         + (", ..." if len(self) > 6 else "") + "]"
                         for i, m in enumerate(self.metrics[:4]))
        more = f", +{len(self.metrics) - 4} metrics" if len(self.metrics) > 4 else ""
        return f"DepthProfile(layers={len(self)}, repeats={self.repeats}, {head}{more})"

    # ------------------------------------------------------------------ combine
    def join(self, other: "DepthProfile") -> "DepthProfile":
        """The metrics of both profiles side by side (same layers and repeats)."""
        if not isinstance(other, DepthProfile):
            raise TypeError(f"join takes a DepthProfile, got {type(other).__name__}")
        if other.layers != self.layers:
            raise ValueError(f"join needs the same layers: {self.layers} vs {other.layers}"[:300])
        if other.repeats != self.repeats:
            raise ValueError(f"join needs the same number of repeats: {self.repeats} vs "
                             f"{other.repeats}")
        clash = set(self.metrics) & set(other.metrics)
        if clash:
            raise ValueError(f"both profiles have metrics {sorted(clash)}")
        return DepthProfile(self.layers, self.metrics + other.metrics,
                            torch.cat([self.samples, other.samples], 2),
                            {**other.meta, **self.meta})

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict: ``layers``, ``metrics``, ``samples``, the derived ``mean`` and
        ``std`` per metric, each metric's mean list under its own name (unless the name is one of
        these keys), and ``meta``."""
        d: Dict[str, Any] = {"format": PROFILE_FORMAT, "layers": list(self.layers),
                             "metrics": list(self.metrics)}
        mean, std = self.mean, self.std
        for i, m in enumerate(self.metrics):
            if m not in RESERVED_KEYS:  # a metric named like a key: its mean is in d['mean']
                d[m] = jsonable(mean[:, i])
        d["mean"] = {m: jsonable(mean[:, i]) for i, m in enumerate(self.metrics)}
        d["std"] = {m: jsonable(std[:, i]) for i, m in enumerate(self.metrics)}
        d["samples"] = jsonable(self.samples)
        d["meta"] = jsonable(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DepthProfile":
        """Inverse of :meth:`to_dict`. The stored means, standard deviations and per-metric lists
        must agree with the samples (to the last bit)."""
        cls._check_format(d)
        require_keys(d, ("layers", "metrics", "samples"), "DepthProfile")
        prof = cls(d["layers"], d["metrics"], float_tensor(d["samples"], "samples"),
                   _meta_of(d))
        derived = {"mean": prof.mean, "std": prof.std}
        for part in ("mean", "std"):
            stored = d.get(part)
            if stored is None:
                continue
            if not isinstance(stored, dict):
                raise ValueError(f"the stored {part} must be a dict {{metric: values}}, got "
                                 f"{type(stored).__name__}")
            for i, m in enumerate(prof.metrics):
                if m not in stored or not _same(float_tensor(stored[m], f"{part}[{m!r}]"),
                                                derived[part][:, i]):
                    raise ValueError(f"the stored {part} of {m!r} disagrees with its samples: the "
                                     f"file was edited or corrupted")
        for i, m in enumerate(prof.metrics):
            if m in d and m not in RESERVED_KEYS and not _same(
                    float_tensor(d[m], repr(m)), prof.mean[:, i]):
                raise ValueError(f"the stored values of {m!r} disagree with its samples: the "
                                 f"file was edited or corrupted")
        return prof

    def to_csv(self, path: Optional[PathLike] = None) -> str:
        """Long CSV: ``layer_index, layer, metric, mean, std, repeat_0, ...``."""
        mean, std = self.mean, self.std
        rows = ([i, name, m, repr(float(mean[i, j])), repr(float(std[i, j]))]
                + [repr(float(v)) for v in self.samples[:, i, j].tolist()]
                for i, name in enumerate(self.layers) for j, m in enumerate(self.metrics))
        return write_csv(["layer_index", "layer", "metric", "mean", "std"]
                    + [f"repeat_{r}" for r in range(self.repeats)], rows, path)


class LayerMatrix(_Result):
    """A measure between every pair of layers: ``values[i, j, m]`` for row layer ``i`` (model
    A), column layer ``j`` (model B, or A again) and metric ``m``.

    With permutations, each measure ``x`` has the metric ``'x:p'`` beside it: the permutation
    p-value, whose smallest possible value is ``1/(P + 1)``.

    Example:
        >>> import torch, dyngraph as dg
        >>> m = dg.LayerMatrix(['a1', 'a2'], ['b1', 'b2'], ['cka'], torch.eye(2).unsqueeze(-1))
        >>> m['cka'].shape, dg.LayerMatrix.from_dict(m.to_dict()) == m
        (torch.Size([2, 2]), True)
    """

    def __init__(self, rows: Sequence[str], cols: Sequence[str],
                 metrics: Union[str, Sequence[str]], values: Any,
                 meta: Optional[Dict[str, Any]] = None) -> None:
        self.rows = _names(list(rows) if isinstance(rows, tuple) else rows, "rows")
        self.cols = _names(list(cols) if isinstance(cols, tuple) else cols, "cols")
        if isinstance(metrics, str):
            metrics = [metrics]
        self.metrics = _names(metrics, "metrics")
        v = _samples(values, "values")
        if v.dim() == 2 and len(self.metrics) == 1:
            v = v.unsqueeze(-1)
        want = (len(self.rows), len(self.cols), len(self.metrics))
        if tuple(v.shape) != want:
            raise ValueError(f"values must have shape [rows, cols, metrics] = {list(want)}, got "
                             f"{list(_samples(values, 'values').shape)}")
        self.values: Tensor = v.clone()
        self.meta = _check_meta(meta)

    FORMAT = MATRIX_FORMAT

    def _key(self) -> Tuple[Any, ...]:
        return (self.rows, self.cols, self.metrics)

    def _data(self) -> Tensor:
        return self.values

    def __getitem__(self, metric: str) -> Tensor:
        """The ``[rows, cols]`` matrix of one metric."""
        if not isinstance(metric, str):
            raise TypeError(f"a LayerMatrix is indexed by a metric name (metrics are "
                            f"{self.metrics}), got {type(metric).__name__}: {metric!r}")
        if metric not in self.metrics:
            raise KeyError(f"no metric {metric!r}; metrics are {self.metrics}")
        return self.values[:, :, self.metrics.index(metric)]

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def diagonal_contrast(self, metric: str) -> Dict[str, float]:
        """Mean of the diagonal, mean off the diagonal, and the share of rows whose best column
        is the diagonal one (square matrices: the same layers of two models)."""
        v = self[metric]
        if v.shape[0] != v.shape[1]:
            raise ValueError(f"diagonal_contrast needs a square matrix, got {tuple(v.shape)}")
        n = v.shape[0]
        off = v[~torch.eye(n, dtype=torch.bool)]
        best = v.argmin(1) if self.meta.get("distance", {}).get(metric) else v.argmax(1)
        return {"diagonal_mean": float(v.diagonal().mean()),
                "off_diagonal_mean": float(off.mean()) if off.numel() else float("nan"),
                "row_best_is_diagonal": float((best == torch.arange(n)).double().mean())}

    def __repr__(self) -> str:
        return (f"LayerMatrix(rows={len(self.rows)}, cols={len(self.cols)}, "
                f"metrics={self.metrics})")

    def to_dict(self) -> Dict[str, Any]:
        return {"format": MATRIX_FORMAT, "rows": list(self.rows), "cols": list(self.cols),
                "metrics": list(self.metrics), "values": jsonable(self.values),
                "meta": jsonable(self.meta)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LayerMatrix":
        cls._check_format(d)
        require_keys(d, ("rows", "cols", "metrics", "values"), "LayerMatrix")
        return cls(d["rows"], d["cols"], d["metrics"], float_tensor(d["values"], "values"),
                   _meta_of(d))

    def to_csv(self, path: Optional[PathLike] = None) -> str:
        """Long CSV: ``row, col, metric, value``."""
        rows = ([r, c, m, repr(float(self.values[i, j, k]))]
                for i, r in enumerate(self.rows) for j, c in enumerate(self.cols)
                for k, m in enumerate(self.metrics))
        return write_csv(["row", "col", "metric", "value"], rows, path)
