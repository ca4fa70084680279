"""A per-layer curve of one metric, with its spread over repeats and the settings that made it."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ._io import PathLike, atomic_write_json, atomic_write_text


@dataclass
class Curve:
    """Values of one metric over the layers of a network.

    Attributes:
        layers: Layer names, in depth order ``[L]``.
        values: Mean value per layer, float64 ``[L]``.
        std: Standard deviation over repeats ``[L]`` (zeros for a single run).
        samples: Every repeat's values ``[R, L]``.
        name: The metric (``'modularity'``, ``'nc1'``, ...).
        meta: The settings that produced it (k, N, metric, layers, seed, ...).

    Example:
        >>> import torch, dyngraph as dg
        >>> c = dg._curve.Curve.from_samples(['a', 'b'], torch.tensor([[0.1, 0.5], [0.3, 0.7]]))
        >>> [round(v, 3) for v in c.values.tolist()], [round(v, 3) for v in c.std.tolist()]
        ([0.2, 0.6], [0.141, 0.141])
    """

    layers: List[str]
    values: Tensor
    std: Optional[Tensor] = None
    samples: Optional[Tensor] = None
    name: str = "modularity"
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = [str(n) for n in self.layers]
        self.values = torch.as_tensor(self.values, dtype=torch.float64).detach().cpu().reshape(-1)
        if self.values.numel() != len(self.layers):
            raise ValueError(f"values must have one entry per layer ({len(self.layers)}), got "
                             f"{self.values.numel()}")
        if self.samples is None:
            self.samples = self.values.unsqueeze(0)
        self.samples = torch.as_tensor(self.samples, dtype=torch.float64).cpu()
        if self.std is None:
            self.std = (self.samples.std(0, unbiased=True) if self.samples.shape[0] > 1
                        else torch.zeros_like(self.values))
        self.std = torch.as_tensor(self.std, dtype=torch.float64).cpu().reshape(-1)

    @classmethod
    def from_samples(cls, layers: Sequence[str], samples: Tensor, name: str = "modularity",
                     meta: Optional[Dict[str, Any]] = None) -> "Curve":
        """Builds the mean ± std curve from repeats ``[R, L]``."""
        samples = torch.as_tensor(samples, dtype=torch.float64)
        if samples.dim() == 1:
            samples = samples.unsqueeze(0)
        return cls(list(layers), samples.mean(0), samples=samples, name=name, meta=dict(meta or {}))

    # ------------------------------------------------------------------ container-ish
    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        vals = ", ".join(f"{v:.3f}" for v in self.values.tolist()[:8])
        more = ", ..." if len(self) > 8 else ""
        keys = {k: self.meta[k] for k in ("k", "metric", "n_samples", "repeats", "seed")
                if k in self.meta}
        return (f"Curve(name={self.name!r}, layers={len(self)}, repeats={self.samples.shape[0]}, "
                f"values=[{vals}{more}], meta={keys})")

    def __getitem__(self, layer) -> float:
        idx = self.layers.index(layer) if isinstance(layer, str) else int(layer)
        return float(self.values[idx])

    def diff(self) -> Tensor:
        """Layer-to-layer change ``values[l] − values[l−1]`` ``[L−1]``."""
        return self.values[1:] - self.values[:-1]

    def argmax(self) -> str:
        return self.layers[int(self.values.argmax())]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "layers": list(self.layers),
            self.name: self.values.tolist(),
            "values": self.values.tolist(),
            "std": self.std.tolist(),
            "samples": self.samples.tolist(),
            "meta": _jsonable(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Curve":
        return cls(d["layers"], torch.tensor(d["values"]), std=torch.tensor(d["std"]),
                   samples=torch.tensor(d["samples"]), name=d.get("name", "modularity"),
                   meta=d.get("meta", {}))

    def to_json(self, path: Optional[PathLike] = None) -> str:
        """Returns the JSON text, and writes it atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            atomic_write_json(path, self.to_dict())
        return text

    @classmethod
    def from_json(cls, path: PathLike) -> "Curve":
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def to_csv(self, path: Optional[PathLike] = None) -> str:
        """CSV with columns ``layer_index, layer, mean, std`` and one column per repeat."""
        buf = io.StringIO()
        w = csv.writer(buf)
        reps = self.samples.shape[0]
        w.writerow(["layer_index", "layer", self.name, "std"] + [f"repeat_{r}" for r in range(reps)])
        for i, name in enumerate(self.layers):
            w.writerow([i, name, f"{self.values[i]:.10g}", f"{self.std[i]:.10g}"]
                       + [f"{self.samples[r, i]:.10g}" for r in range(reps)])
        text = buf.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    # ------------------------------------------------------------------ outputs
    def to_tensorboard(self, writer, tag: Optional[str] = None, figure: bool = True) -> None:
        """Logs one scalar per layer (step = layer index) and the figure. See :func:`log_curve`."""
        from .outputs._log import log_curve
        log_curve(writer, self, tag=tag, figure=figure)

    def plot(self, path: Optional[PathLike] = None, ax=None, label: Optional[str] = None, **kw):
        """Draws the curve (mean ± std band); saves a PNG when ``path`` is given. Returns the figure."""
        from .outputs._plot import plot_curves
        return plot_curves([self], path=path, ax=ax, labels=[label] if label else None, **kw)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
