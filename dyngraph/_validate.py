"""Input checks shared by every public function.

Each check raises ``TypeError`` or ``ValueError`` that names the argument and quotes what the user
passed, so bad input never fails deep inside torch and never yields a silent NaN.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, List, Mapping, Optional, Sequence, Tuple

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
    checks the sign itself, e.g. from one ``aminmax``).

    Anything ``torch.as_tensor`` reads is accepted (lists, NumPy arrays); float, bool and complex
    labels are a ``TypeError`` (never truncated). A ``[N, 1]`` or ``[1, N]`` tensor is flattened;
    any other shape is a ``ValueError``."""
    if not isinstance(y, Tensor):
        try:
            y = torch.as_tensor(y)
        except Exception as exc:
            raise TypeError(f"{name} must be a tensor of integer labels, got "
                            f"{type(y).__name__}: {_describe(y)}") from exc
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must hold integer class labels, got dtype={y.dtype}; float "
                        f"labels are never truncated: map them to integers first")
    if y.dim() > 1 and y.numel() == n and sum(d != 1 for d in y.shape) <= 1:
        y = y.reshape(-1)  # [N, 1] or [1, N]
    if y.dim() != 1 or y.numel() != n:
        raise ValueError(f"{name} must have one label per sample (length {n}), got shape "
                         f"{tuple(y.shape)}")
    if check_min and n and int(y.min()) < 0:
        raise ValueError(f"{name} must hold labels >= 0, got min({name})={int(y.min())}")
    if min_classes > 1:
        uniq = torch.unique(y)
        if uniq.numel() < min_classes:
            raise ValueError(f"{name} must contain at least {min_classes} classes, got "
                             f"{uniq.numel()} (values {uniq.tolist()[:10]})")
    return y.long()


#: Largest class axis (or class × class matrix, in entries) that a result indexed by label value
#: may have when most of it would belong to absent labels; see :func:`check_class_axis`.
SPARSE_AXIS_LIMIT = 1 << 20


def compact_labels(y: Tensor) -> Tuple[Tensor, Tensor]:
    """``(codes, classes)``: the sorted distinct labels ``classes`` ``[K]`` and ``codes`` ``[N]``
    in ``0..K-1`` with ``classes[codes] == y``.

    Time and memory are ``O(N log N)`` (``O(N + max(y))`` when the ids are small), never sized by
    the label values: ``{0, 1, 10**9}`` gives three classes. Labels already ``0..K-1`` (each
    present) come back unchanged, the same tensor.

    Example:
        >>> import torch
        >>> from dyngraph._validate import compact_labels
        >>> codes, classes = compact_labels(torch.tensor([7, 10**9, 7, 3]))
        >>> codes.tolist(), classes.tolist()
        ([1, 2, 1, 0], [3, 7, 1000000000])
    """
    y = y.long()
    n = y.numel()
    if n == 0:
        return y, y
    lo, hi = (int(v) for v in y.aminmax())
    if lo >= 0 and hi < 2 * n + 1024:  # small ids: one bincount, no sort
        present = torch.bincount(y, minlength=hi + 1) > 0
        if bool(present.all()):
            return y, torch.arange(hi + 1, device=y.device)
        return (present.cumsum(0) - 1)[y], present.nonzero().flatten()
    classes, codes = torch.unique(y, sorted=True, return_inverse=True)
    return codes, classes


def check_class_axis(y: Tensor, size: int, name: str = "y", *, power: int = 1) -> None:
    """Refuses a result indexed by label value (``size = max(y) + 1`` rows, ``power=2`` for a
    ``size × size`` matrix) that would be large (``> SPARSE_AXIS_LIMIT`` entries) and mostly
    empty (over half of it for absent labels): e.g. labels ``{0, 1, 10**9}``. The error says how
    to compact them."""
    entries = size ** power
    if entries <= SPARSE_AXIS_LIMIT:
        return
    k = int(torch.unique(y).numel())
    if entries > 2 * k ** power:
        shape = " × ".join([str(size)] * power)
        raise ValueError(f"{name} has {k} distinct values up to {size - 1}: a result with one "
                         f"entry per label value would be {shape}, mostly empty. Relabel them "
                         f"0..{k - 1} first: {name} = torch.unique({name}, "
                         f"return_inverse=True)[1]")


def check_number(value, name: str, *, minimum: Optional[float] = None,
                 strict: bool = False) -> float:
    """A finite real number (``int``/``float``/NumPy scalar, not ``bool``), ``>= minimum``
    (``> minimum`` with ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {name}={value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got "
                         f"{name}={value:g}")
    return value


def check_resolution(value, name: str = "resolution", *, strict: bool = False) -> float:
    """Newman's resolution ``γ``: a finite number ``>= 0`` (``> 0`` with ``strict``)."""
    return check_number(value, name, minimum=0.0, strict=strict)


def check_num_nodes(value, name: str = "num_nodes") -> int:
    """A node count: an ``int`` (NumPy integers too, not ``bool``) ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {_describe(value)}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {name}={value}")
    return int(value)


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


def check_choice(value, name: str, choices: Sequence[Any]) -> Any:
    if not (value is None or isinstance(value, str)) or value not in choices:
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


def check_device(value, name: str = "device") -> Optional[torch.device]:
    """``None`` or a torch device (``'cpu'``, ``'cuda:1'``, a ``torch.device``)."""
    if value is None or isinstance(value, torch.device):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a device name or a torch.device, got "
                        f"{type(value).__name__}: {value!r}")
    try:
        return torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name} must be a torch device ('cpu', 'cuda', 'cuda:1', 'mps', ...), "
                         f"got {value!r}") from None


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
