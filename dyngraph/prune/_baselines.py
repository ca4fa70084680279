"""Baselines for layer selection, under the same structural constraints as the modularity rule:
random layers (one draw per seed), the least redundant layers (highest ΔQ: the opposite of the
modularity choice), and an adjacent-layer linear-CKA rule (a layer that is nearly the same
representation as the one before it is redundant), in the spirit of RedTest.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .._curve import Curve
from .._validate import check_features, check_positive_int
from ..capture._extract import balanced_indices
from ..capture._features import LayerFeatures
from ._detect import Redundancy, _as_curve, layer_structure, select_layers
from ._surgery import ExampleInput


def _budget(n: int, curve: Curve) -> int:
    check_positive_int(n, "n")
    if n >= len(curve):
        raise ValueError(f"n={n} must be smaller than the number of curve layers ({len(curve)})")
    return n


def random_layers(curve: Curve, n: int, seed: int = 0, *, model: Optional[nn.Module] = None,
                  example_input: Optional[ExampleInput] = None, allow_projection: bool = False,
                  min_per_stage: int = 1) -> Redundancy:
    """``n`` layers drawn uniformly at random (seeded) among those the constraints allow.

    Example:
        >>> import torch, dyngraph as dg
        >>> c = dg._curve.Curve(['stem', 'b1', 'b2', 'b3', 'b4'], torch.tensor([.1, .2, .3, .4, .5]))
        >>> len(dg.prune.random_layers(c, 2, seed=0)), 'stem' in dg.prune.random_layers(c, 2).layers
        (2, False)
    """
    curve = _as_curve(curve)
    n = _budget(n, curve)
    infos, members = layer_structure(curve.layers, model, example_input, allow_projection)
    gen = torch.Generator().manual_seed(int(seed))
    order = [curve.layers[1:][i] for i in torch.randperm(len(curve) - 1, generator=gen).tolist()]
    reasons = {name: f"random draw (seed {seed}), position {k + 1}" for k, name in
               enumerate(order)}
    delta = torch.full_like(curve.values, float("nan"))
    delta[1:] = curve.diff()
    return select_layers(curve.layers, order, reasons, n, infos, members, min_per_stage,
                         curve.values, delta, f"random/seed{seed}",
                         {"n": n, "seed": seed, "allow_projection": allow_projection},
                         model is not None)


def least_redundant_layers(curve: Curve, n: int, *, model: Optional[nn.Module] = None,
                           example_input: Optional[ExampleInput] = None,
                           allow_projection: bool = False, min_per_stage: int = 1) -> Redundancy:
    """The ``n`` removable layers with the highest ``ΔQ = Q_l − Q_{l−1}``: the layers the
    modularity curve calls the *least* redundant. If the curve means anything, removing these
    should hurt more than removing the modularity choice.

    Example:
        >>> import torch, dyngraph as dg
        >>> c = dg._curve.Curve(['stem', 'b1', 'b2', 'b3'], torch.tensor([.1, .5, .52, .6]))
        >>> dg.prune.least_redundant_layers(c, 1).layers
        ['b1']
    """
    curve = _as_curve(curve)
    n = _budget(n, curve)
    infos, members = layer_structure(curve.layers, model, example_input, allow_projection)
    delta = torch.full_like(curve.values, float("nan"))
    delta[1:] = curve.diff()
    order = sorted(range(1, len(curve)), key=lambda i: (-float(delta[i]), i))
    names = [curve.layers[i] for i in order]
    reasons = {curve.layers[i]: f"ΔQ = {float(delta[i]):+.4f}, rank {k + 1} from the top"
               for k, i in enumerate(order)}
    return select_layers(curve.layers, names, reasons, n, infos, members, min_per_stage,
                         curve.values, delta, "least_redundant",
                         {"n": n, "allow_projection": allow_projection}, model is not None)


# ---------------------------------------------------------------------------- linear CKA
def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) of two representations of the
    same N samples: ``‖Ycᵀ Xc‖²_F / (‖Xcᵀ Xc‖_F ‖Ycᵀ Yc‖_F)`` with column-centred ``Xc, Yc``.

    Computed in float64 through the ``N × N`` Gram matrices when ``N`` is smaller than the
    feature dimensions, and through the ``D × D`` cross products otherwise (equal results).

    Args:
        x: ``[N, Dx]``; y: ``[N, Dy]`` (extra dimensions are flattened).

    Returns:
        CKA in ``[0, 1]``; 1 for representations equal up to rotation and isotropic scaling.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
        >>> q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))
        >>> round(dg.prune.linear_cka(x, 3 * x @ q), 6)
        1.0
    """
    x = check_features(x.reshape(x.shape[0], -1) if isinstance(x, Tensor) and x.dim() > 2
                       else x, "x", min_rows=2)
    y = check_features(y.reshape(y.shape[0], -1) if isinstance(y, Tensor) and y.dim() > 2
                       else y, "y", min_rows=2)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same samples, got {x.shape[0]} and {y.shape[0]} "
                         f"rows")
    x = x.double()
    y = y.to(x.device).double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    n = x.shape[0]
    if n < min(x.shape[1], y.shape[1]):
        k, l_ = x @ x.T, y @ y.T
        num = (k * l_).sum()
        den = torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(l_)
    else:
        num = torch.linalg.matrix_norm(y.T @ x) ** 2
        den = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if float(den) == 0.0:
        raise ValueError("linear_cka is undefined for a constant representation (all rows "
                         "equal after centring)")
    return float(num / den)


def adjacent_cka(features, per_class: Optional[int] = None, repeats: int = 1,
                 seed: int = 0) -> Curve:
    """``CKA(layer_{l−1}, layer_l)`` for every layer after the first, mean ± std over
    class-balanced resamplings. The returned curve's layers are ``features.names[1:]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> a = torch.randn(60, 5, generator=g)
        >>> f = dg.LayerFeatures({'a': a, 'b': 2 * a, 'c': torch.randn(60, 5, generator=g)},
        ...                      y=torch.arange(60) % 3)
        >>> c = dg.prune.adjacent_cka(f)
        >>> c.layers, round(c['b'], 4), c['c'] < 0.5
        (['b', 'c'], 1.0, True)
    """
    if not isinstance(features, LayerFeatures):
        raise TypeError(f"features must be LayerFeatures (dg.extract_features), got "
                        f"{type(features).__name__}")
    if len(features) < 2:
        raise ValueError(f"adjacent_cka needs at least 2 layers, got {features.names}")
    check_positive_int(repeats, "repeats")
    rows = []
    for r in range(repeats):
        sub = features
        if per_class is not None:
            sub = features.subset(balanced_indices(features.y, per_class=per_class, seed=seed + r))
        vals, prev = [], None
        for name in sub.names:
            cur = sub[name]
            if prev is not None:
                vals.append(linear_cka(prev, cur))
            prev = cur
        rows.append(torch.tensor(vals, dtype=torch.float64))
    return Curve.from_samples(features.names[1:], torch.stack(rows), name="adjacent_cka",
                              meta={"per_class": per_class, "repeats": repeats, "seed": seed})


def cka_layers(features, n: Optional[int] = None, threshold: float = 0.95, *,
               model: Optional[nn.Module] = None, example_input: Optional[ExampleInput] = None,
               per_class: Optional[int] = None, repeats: int = 1, seed: int = 0,
               allow_projection: bool = False, min_per_stage: int = 1,
               cka: Optional[Curve] = None, curve: Optional[Curve] = None) -> Redundancy:
    """Layers whose representation is nearly the previous layer's: adjacent linear CKA above
    ``threshold``, or the ``n`` highest, under the same constraints as :func:`redundant_layers`.

    Args:
        features: Per-layer representations (the same layers as the modularity curve); may be
            ``None`` when ``cka`` and ``curve`` are given.
        n: Remove exactly this many (highest CKA first); ``None``: all above ``threshold``.
        threshold: CKA above which a layer is redundant (threshold mode).
        model, example_input, allow_projection, min_per_stage: The structural constraints.
        per_class, repeats, seed: Resampling for :func:`adjacent_cka`.
        cka: A precomputed :func:`adjacent_cka` curve.
        curve: The modularity curve of the same layers, to report ``Q`` and ``ΔQ`` per removal.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(60, 5, generator=g), torch.randn(60, 5, generator=g)
        >>> f = dg.LayerFeatures({'s': a, 'x': b, 'y': 1.01 * b, 'z': a}, y=torch.arange(60) % 3)
        >>> dg.prune.cka_layers(f, n=1).layers
        ['y']
    """
    if cka is None:
        cka = adjacent_cka(features, per_class, repeats, seed)
    if features is not None:
        names = list(features.names)
    elif curve is not None:
        names = list(curve.layers)
    else:
        raise ValueError("cka_layers needs features, or a precomputed cka= with the curve=")
    if names[1:] != cka.layers:
        raise ValueError(f"cka covers layers {cka.layers}, features {names}")
    vals = torch.full((len(names),), float("nan"), dtype=torch.float64)
    vals[1:] = cka.values
    if curve is not None and list(curve.layers) != names:
        raise ValueError(f"curve covers layers {curve.layers}, features {names}")
    q = curve.values if curve is not None else torch.full_like(vals, float("nan"))
    if n is not None:
        check_positive_int(n, "n")
        if n >= len(names):
            raise ValueError(f"n={n} must be smaller than the number of layers ({len(names)})")
    infos, members = layer_structure(names, model, example_input, allow_projection)
    order = sorted(range(1, len(names)), key=lambda i: (-float(vals[i]), i))
    ranking = [names[i] for i in order]
    if n is None:
        reasons = {names[i]: f"CKA with {names[i - 1]} = {float(vals[i]):.4f} > {threshold:g}"
                   for i in order if float(vals[i]) > threshold}
    else:
        reasons = {names[i]: f"CKA with {names[i - 1]} = {float(vals[i]):.4f}, rank {k + 1} "
                   f"from the top" for k, i in enumerate(order)}
    # The score (lower = more redundant) is −CKA.
    return select_layers(names, ranking, reasons, n, infos, members, min_per_stage,
                         q, -vals, "adjacent_cka",
                         {"n": n, "threshold": threshold, "cka": cka.values.tolist()},
                         model is not None)


__all__ = ["adjacent_cka", "cka_layers", "least_redundant_layers", "linear_cka",
           "random_layers"]
