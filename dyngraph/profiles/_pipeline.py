"""Composed steps: features → snapshots → modularity curve, with repeats over resamplings."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._curve import Curve
from .._validate import check_labels, check_positive_int, layer_names
from ..capture._extract import balanced_indices
from ..capture._features import LayerFeatures
from ..graphs._graph import DynamicGraph


def modularity_curve(features, y: Optional[Tensor] = None, k: int = 3, metric: str = "cosine",
                     symmetrize: str = "mean", per_class: Optional[int] = None,
                     n_samples: Optional[int] = None, repeats: int = 1, seed: int = 0,
                     backend: str = "auto", chunk_size: Optional[int] = None,
                     progress: bool = True, *, col_chunk_size: Optional[int] = None,
                     precision: str = "full", candidates: Optional[int] = None,
                     null_permutations: int = 0) -> Curve:
    """Modularity per layer, as mean ± std over ``repeats`` class-balanced resamplings.

    The reference built five graphs of N = 500 test images and averaged Q; here each repeat draws
    its own seeded class-balanced subset (``per_class`` or ``n_samples``) of the extracted pool.

    Args:
        features: :class:`LayerFeatures` or ``{name: Tensor[N, ...]}`` (then ``y`` is needed).
        y: ``[N]`` labels.
        k, metric, symmetrize, backend, chunk_size: As in :meth:`DynamicGraph.from_features`.
        col_chunk_size, precision, candidates: kNN tile shape and half-precision tiles, as in
            :func:`~dyngraph.knn_edges`.
        null_permutations: When > 0, also the label-permutation null of every repeat's graphs
            (:meth:`DynamicGraph.modularity_null`, seeds ``seed + r``), pooled over repeats into
            ``meta['null']``: per-layer ``mean`` and ``std`` of the null Q and the ``zscore``
            ``(Q − mean) / std`` of the curve.
        per_class, n_samples: Size of each repeat's sample; both ``None``: all samples, once.
        repeats: Number of resamplings (seeds ``seed, seed+1, ...``).
        seed: First seed.
        progress: Progress bars.

    Returns:
        A :class:`Curve` with ``samples`` ``[repeats, L]`` and the settings in ``meta``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 4
        >>> f = {'a': torch.randn(200, 8, generator=g), 'b': torch.randn(200, 8, generator=g) + 5 * torch.eye(8)[y]}
        >>> c = dg.profiles._pipeline.modularity_curve(f, y, per_class=30, repeats=3, progress=False)
        >>> tuple(c.samples.shape), bool(c.values[1] > c.values[0])
        ((3, 2), True)
    """
    check_positive_int(repeats, "repeats")
    if isinstance(null_permutations, bool) or not isinstance(null_permutations, int) or \
            null_permutations < 0:
        raise ValueError(f"null_permutations must be an integer >= 0, got {null_permutations!r}")
    if not isinstance(features, LayerFeatures):
        names = layer_names(features)
        if y is None:
            raise ValueError("y is required when features is a plain dict")
        n = features[names[0]].shape[0]
        features = LayerFeatures(dict(features), check_labels(y, n, "y"))
    elif y is not None:
        features = LayerFeatures(dict(features._layers), check_labels(y, features.n_samples, "y"),
                                 features.indices, features.meta)
    if (per_class is None and n_samples is None) and repeats > 1:
        raise ValueError(f"repeats={repeats} needs per_class or n_samples (each repeat resamples)")
    rows, nulls = [], []
    n_used = features.n_samples
    for r in range(repeats):
        sub = features
        if per_class is not None or n_samples is not None:
            idx = balanced_indices(features.y, per_class, n_samples, seed + r)
            sub = features.subset(idx)
            n_used = int(idx.numel())
        seq = DynamicGraph.from_features(sub, k=k, metric=metric, symmetrize=symmetrize,
                                         backend=backend, chunk_size=chunk_size,
                                         progress=progress and repeats == 1,
                                         col_chunk_size=col_chunk_size, precision=precision,
                                         candidates=candidates)
        rows.append(seq.modularity().values)
        if null_permutations:
            nulls.append(seq.modularity_null(null_permutations, seed=seed + r).samples)
    meta = {"k": k, "metric": metric, "symmetrize": symmetrize, "n_samples": n_used,
            "per_class": per_class, "repeats": repeats, "seed": seed, "layers": features.names}
    if precision != "full":
        meta["precision"] = precision
    meta.update({key: v for key, v in features.meta.items() if key not in meta})
    curve = Curve.from_samples(features.names, torch.stack(rows), name="modularity", meta=meta)
    if nulls:
        pooled = torch.cat(nulls)  # [repeats * P, L]
        mean, std = pooled.mean(0), pooled.std(0)
        curve.meta["null"] = {"mean": mean.tolist(), "std": std.tolist(),
                              "zscore": ((curve.values - mean) / std).tolist(),
                              "permutations": null_permutations, "seed": seed}
    return curve
