"""Input checks shared by every public function.

Each check raises ``TypeError`` or ``ValueError`` that names the argument and quotes what the user
passed, so bad input never fails deep inside torch and never yields a silent NaN.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

import torch
from torch import Tensor


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    text = repr(x)
    return text if len(text) < 80 else text[:77] + "..."


def check_tensor(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}: {_describe(x)}")
    return x


def check_features(x, name: str = "x", *, ndim: Optional[int] = 2, min_rows: int = 1,
                   allow_integer: bool = False, check_finite: bool = True) -> Tensor:
    """Checks a float feature matrix: tensor, floating dtype, shape, all finite.

    ``check_finite=False`` leaves the O(N·D) finiteness pass to the caller (who may check an
    O(N) reduction such as the row norms instead, then call :func:`raise_non_finite`)."""
    check_tensor(x, name)
    if not allow_integer and not (x.is_floating_point()):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype={x.dtype}; "
                        f"convert with {name}.float()")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional [N, D], got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got shape {tuple(x.shape)}")
    if check_finite and x.numel() and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise_non_finite(x, name)
    return x


def raise_non_finite(x: Tensor, name: str) -> None:
    """Raises the ``ValueError`` for NaN/inf in ``x`` (or for finite values too large to square)."""
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or inf values; clean them before building "
                         f"graphs ({_describe(x)})")
    raise ValueError(f"{name} has values so large that their squares overflow {x.dtype} "
                     f"(max |x| = {float(x.abs().max()):.3g}); rescale the features")


def check_k(k, n: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}: {k!r}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {name}={k}")
    if k >= n:
        raise ValueError(f"{name} must be smaller than the number of samples N={n}, got {name}={k}")
    return k


def check_labels(y, n: int, name: str = "y", *, min_classes: int = 1,
                 check_min: bool = True) -> Tensor:
    """Checks integer labels of length ``n`` with values >= 0 (``check_min=False``: the caller
    checks the sign itself, e.g. from one ``aminmax``)."""
    if not isinstance(y, Tensor):
        try:
            y = torch.as_tensor(y)
        except Exception as exc:
            raise TypeError(f"{name} must be a tensor of integer labels, got "
                            f"{type(y).__name__}") from exc
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must hold integer class labels, got dtype={y.dtype}")
    y = y.reshape(-1) if y.dim() > 1 and y.numel() == n else y
    if y.dim() != 1 or y.numel() != n:
        raise ValueError(f"{name} must have one label per sample (length {n}), got shape "
                         f"{tuple(y.shape)}")
    if check_min and n and int(y.min()) < 0:
        raise ValueError(f"{name} must hold labels >= 0, got min({name})={int(y.min())}")
    if min_classes > 1:
        n_cls = int(torch.unique(y).numel())
        if n_cls < min_classes:
            raise ValueError(f"{name} must contain at least {min_classes} classes, got {n_cls} "
                             f"(values {torch.unique(y).tolist()[:10]})")
    return y.long()


def layer_names(features, name: str = "features") -> List[str]:
    """The layer names of ``LayerFeatures`` or of a ``{layer: Tensor[N, ...]}`` mapping, checked:
    a mapping (anything with ``keys``/``items``) with at least one layer."""
    if not isinstance(features, Mapping) and not hasattr(features, "items"):
        raise TypeError(f"{name} must be LayerFeatures or a dict {{layer: Tensor[N, ...]}}, got "
                        f"{type(features).__name__}")
    names = list(features.keys())
    if not names:
        raise ValueError(f"{name} is empty: no layers")
    return names


def check_same_device(**tensors: Optional[Tensor]) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, Tensor)}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on the same device, got {listing}")
    return next(iter(devices.values())) if devices else torch.device("cpu")


def check_flag(value, name: str) -> bool:
    """A ``True``/``False`` switch (a string such as ``'no'`` would be silently truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}: {value!r}")
    return value


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_choices(values, name: str, choices: Sequence[str]) -> List[str]:
    """A name or a sequence of names, each one of ``choices``, at least one, none twice."""
    out = [values] if isinstance(values, str) else list(values)
    if not out:
        raise ValueError(f"{name} must name at least one of {list(choices)}, got []")
    for v in out:
        if v not in choices:
            raise ValueError(f"{name} must be among {list(choices)}, got {v!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} lists a name twice: {out}")
    return out


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value}")
    return value


def check_edge_index(edge_index, name: str = "edge_index") -> Tensor:
    check_tensor(edge_index, name)
    if edge_index.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError(f"{name} must be an integer tensor, got dtype={edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{name} must have shape [2, E], got {tuple(edge_index.shape)}")
    return edge_index.long()


def check_edge_weight(edge_weight, num_edges: int, name: str = "edge_weight",
                      check_finite: bool = True) -> Tensor:
    check_tensor(edge_weight, name)
    if not edge_weight.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype={edge_weight.dtype}")
    if edge_weight.dim() != 1 or edge_weight.numel() != num_edges:
        raise ValueError(f"{name} must have shape [E]=[{num_edges}], got "
                         f"{tuple(edge_weight.shape)}")
    if check_finite and num_edges and not bool(torch.isfinite(edge_weight).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return edge_weight


def check_model(model: Any) -> None:
    """Raises a ``TypeError`` unless ``model`` is a ``torch.nn.Module``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def model_device(model: "torch.nn.Module") -> torch.device:
    """Where the model's first parameter is (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
