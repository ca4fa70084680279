"""Baselines for layer selection, under the same structural constraints as the modularity rule:
random layers (one draw per seed), the least redundant layers (highest ΔQ: the opposite of the
modularity choice), and an adjacent-layer linear-CKA rule (a layer that is nearly the same
representation as the one before it is redundant), in the spirit of RedTest.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import nn

from .._validate import check_positive_int
from ..capture._extract import balanced_indices
from ..capture._features import LayerFeatures
from ..measures._similarity import linear_cka
from ..profiles._profile import DepthProfile
from ._detect import Redundancy, as_profile, select_layers
from ._surgery import ExampleInput


def _budget(n: int, profile: DepthProfile) -> int:
    check_positive_int(n, "n")
    if n >= len(profile):
        raise ValueError(f"n={n} must be smaller than the number of layers ({len(profile)})")
    return n


def _seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}: {seed!r}")
    return int(seed)


def _delta(profile: DepthProfile) -> torch.Tensor:
    """``[L]``: ``Q_l − Q_{l−1}`` (``nan`` at the first layer)."""
    delta = torch.full_like(profile.values, float("nan"))
    delta[1:] = profile.diff()
    return delta


def random_layers(profile: DepthProfile, n: int, seed: int = 0, *,
                  model: Optional[nn.Module] = None, example_input: Optional[ExampleInput] = None,
                  allow_projection: bool = False, min_per_stage: int = 1) -> Redundancy:
    """``n`` layers drawn uniformly at random (seeded) among those the constraints allow.

    Args:
        profile: The one-metric profile of the candidate layers (``Q`` is reported per removal).
        n: How many layers to remove.
        seed: Seed of the draw (``torch.randperm``).
        model, example_input, allow_projection, min_per_stage: The structural constraints of
            :func:`~dyngraph.prune.redundant_layers`.

    Example:
        >>> import torch, dyngraph as dg
        >>> q = dg.DepthProfile(['stem', 'b1', 'b2', 'b3', 'b4'], 'modularity',
        ...                     torch.tensor([.1, .2, .3, .4, .5]))
        >>> len(dg.prune.random_layers(q, 2, seed=0)), 'stem' in dg.prune.random_layers(q, 2).layers
        (2, False)
    """
    profile = as_profile(profile)
    n = _budget(n, profile)
    gen = torch.Generator().manual_seed(_seed(seed))
    order = [profile.layers[1:][i]
             for i in torch.randperm(len(profile) - 1, generator=gen).tolist()]
    reasons = {name: f"random draw (seed {seed}), position {k + 1}" for k, name in
               enumerate(order)}
    return select_layers(profile, order, reasons, n, _delta(profile), f"random/seed{seed}",
                         {"n": n, "seed": seed, "allow_projection": allow_projection},
                         model=model, example_input=example_input,
                         allow_projection=allow_projection, min_per_stage=min_per_stage)


def least_redundant_layers(profile: DepthProfile, n: int, *, model: Optional[nn.Module] = None,
                           example_input: Optional[ExampleInput] = None,
                           allow_projection: bool = False, min_per_stage: int = 1) -> Redundancy:
    """The ``n`` removable layers with the highest ``ΔQ = Q_l − Q_{l−1}``: the layers the
    modularity profile calls the *least* redundant. If the profile means anything, removing these
    should hurt more than removing the modularity choice.

    Args:
        profile: The one-metric modularity profile of the candidate layers.
        n: How many layers to remove.
        model, example_input, allow_projection, min_per_stage: The structural constraints of
            :func:`~dyngraph.prune.redundant_layers`.

    Example:
        >>> import torch, dyngraph as dg
        >>> q = dg.DepthProfile(['stem', 'b1', 'b2', 'b3'], 'modularity',
        ...                     torch.tensor([.1, .5, .52, .6]))
        >>> dg.prune.least_redundant_layers(q, 1).layers
        ['b1']
    """
    profile = as_profile(profile)
    n = _budget(n, profile)
    delta = _delta(profile)
    order = sorted(range(1, len(profile)), key=lambda i: (-float(delta[i]), i))
    names = [profile.layers[i] for i in order]
    reasons = {profile.layers[i]: f"ΔQ = {float(delta[i]):+.4f}, rank {k + 1} from the top"
               for k, i in enumerate(order)}
    return select_layers(profile, names, reasons, n, delta, "least_redundant",
                         {"n": n, "allow_projection": allow_projection}, model=model,
                         example_input=example_input, allow_projection=allow_projection,
                         min_per_stage=min_per_stage)


# ---------------------------------------------------------------------------- adjacent CKA
def adjacent_cka(features: LayerFeatures, per_class: Optional[int] = None, repeats: int = 1,
                 seed: int = 0) -> DepthProfile:
    """``CKA(layer_{l−1}, layer_l)`` (:func:`dg.measures.linear_cka
    <dyngraph.measures.linear_cka>`) for every layer after the first, over class-balanced
    resamplings (repeat ``r`` uses ``balanced_indices(y, per_class, seed=seed + r)``, as
    :func:`dg.depth_profile <dyngraph.depth_profile>` does).

    Args:
        features: Per-layer representations ``{layer: [N, ...]}`` with labels.
        per_class: Samples per class in each repeat (``None``: all samples, one repeat).
        repeats: Number of resamplings.
        seed: First seed.

    Returns:
        A one-metric :class:`~dyngraph.DepthProfile` ``'adjacent_cka'`` over
        ``features.names[1:]``, samples ``[repeats, L − 1, 1]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> a = torch.randn(60, 5, generator=g)
        >>> f = dg.LayerFeatures({'a': a, 'b': 2 * a, 'c': torch.randn(60, 5, generator=g)},
        ...                      y=torch.arange(60) % 3)
        >>> c = dg.prune.adjacent_cka(f)
        >>> c.layers, [round(v, 4) for v in c.values.tolist()][0], bool(c.values[1] < 0.5)
        (['b', 'c'], 1.0, True)
    """
    if not isinstance(features, LayerFeatures):
        raise TypeError(f"features must be LayerFeatures (dg.extract_features), got "
                        f"{type(features).__name__}")
    if len(features) < 2:
        raise ValueError(f"adjacent_cka needs at least 2 layers, got {features.names}")
    check_positive_int(repeats, "repeats")
    _seed(seed)
    if per_class is not None:
        check_positive_int(per_class, "per_class")
    if per_class is None and repeats > 1:
        raise ValueError(f"repeats={repeats} needs per_class (each repeat resamples)")
    samples = torch.empty(repeats, len(features) - 1, dtype=torch.float64)
    for r in range(repeats):
        sub = features if per_class is None else features.subset(
            balanced_indices(features.y, per_class=per_class, seed=seed + r))
        for i in range(1, len(sub)):
            samples[r, i - 1] = linear_cka(sub[sub.names[i - 1]], sub[sub.names[i]])
    return DepthProfile(features.names[1:], "adjacent_cka", samples,
                        {"per_class": per_class, "repeats": repeats, "seed": seed})


def cka_layers(features: Optional[LayerFeatures], n: Optional[int] = None,
               threshold: float = 0.95, *, model: Optional[nn.Module] = None,
               example_input: Optional[ExampleInput] = None, per_class: Optional[int] = None,
               repeats: int = 1, seed: int = 0, allow_projection: bool = False,
               min_per_stage: int = 1, cka: Optional[DepthProfile] = None,
               profile: Optional[DepthProfile] = None) -> Redundancy:
    """Layers whose representation is nearly the previous layer's: adjacent linear CKA above
    ``threshold``, or the ``n`` highest, under the same constraints as
    :func:`~dyngraph.prune.redundant_layers`.

    Args:
        features: Per-layer representations (the same layers as the modularity profile); may
            be ``None`` when ``cka`` and ``profile`` are given.
        n: Remove exactly this many (highest CKA first); ``None``: all above ``threshold``.
        threshold: CKA above which a layer is redundant (threshold mode).
        model, example_input, allow_projection, min_per_stage: The structural constraints.
        per_class, repeats, seed: Resampling for :func:`adjacent_cka`.
        cka: A precomputed :func:`adjacent_cka` profile.
        profile: The one-metric modularity profile of the same layers, to report ``Q`` and
            ``ΔQ`` per removal.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(60, 5, generator=g), torch.randn(60, 5, generator=g)
        >>> f = dg.LayerFeatures({'s': a, 'x': b, 'y': 1.01 * b, 'z': a}, y=torch.arange(60) % 3)
        >>> dg.prune.cka_layers(f, n=1).layers
        ['y']
    """
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or \
            not math.isfinite(threshold) or not 0 <= threshold < 1:
        raise ValueError(f"threshold is a linear CKA in [0, 1): a layer whose CKA with the one "
                         f"before exceeds it is redundant; got threshold={threshold!r}")
    if features is not None:
        if not isinstance(features, LayerFeatures):
            raise TypeError(f"features must be LayerFeatures (dg.extract_features) or None, got "
                            f"{type(features).__name__}")
        names = list(features.names)
    elif profile is not None:
        names = list(profile.layers)
    else:
        raise ValueError("cka_layers needs features, or a precomputed cka= with the profile=")
    if cka is None:
        if features is None:
            raise ValueError("cka_layers needs features when cka= is not given")
        cka = adjacent_cka(features, per_class, repeats, seed)
    if not isinstance(cka, DepthProfile) or len(cka.metrics) != 1:
        raise TypeError(f"cka must be the one-metric DepthProfile of dg.prune.adjacent_cka, got "
                        f"{cka!r}")
    if names[1:] != cka.layers:
        raise ValueError(f"cka covers layers {cka.layers}, features {names}")
    vals = torch.full((len(names),), float("nan"), dtype=torch.float64)
    vals[1:] = cka.values
    if profile is None:
        profile = DepthProfile(names, "modularity", torch.full_like(vals, float("nan")))
    elif list(profile.layers) != names:
        raise ValueError(f"profile covers layers {profile.layers}, features {names}")
    if n is not None:
        _budget(n, profile)
    order = sorted(range(1, len(names)), key=lambda i: (-float(vals[i]), i))
    ranking = [names[i] for i in order]
    if n is None:
        reasons = {names[i]: f"CKA with {names[i - 1]} = {float(vals[i]):.4f} > {threshold:g}"
                   for i in order if float(vals[i]) > threshold}
    else:
        reasons = {names[i]: f"CKA with {names[i - 1]} = {float(vals[i]):.4f}, rank {k + 1} "
                   f"from the top" for k, i in enumerate(order)}
    # The score (lower = more redundant) is −CKA.
    return select_layers(profile, ranking, reasons, n, -vals, "adjacent_cka",
                         {"n": n, "threshold": threshold, "cka": cka.values.tolist()},
                         model=model, example_input=example_input,
                         allow_projection=allow_projection, min_per_stage=min_per_stage)


__all__ = ["adjacent_cka", "cka_layers", "least_redundant_layers", "random_layers"]
