"""Intrinsic dimension (ID) of representations, per layer: expansion and compression over depth.

Estimators (torch, CPU and CUDA, float64 arithmetic):

* :func:`twonn`: TwoNN (Facco et al. 2017), ``μ = r2/r1``, as used by Ansuini et al. 2019;
  a linear fit through the origin or the closed-form MLE.
* :func:`mle_id`: Levina–Bickel MLE with ``k`` neighbours, pooled with the MacKay–Ghahramani
  harmonic mean.
* :func:`participation_ratio`: ``(Σλ)² / Σλ²`` of the covariance spectrum, with an optional
  distribution-free (U-statistic) finite-sample bias correction.
* :func:`pca_dim`: principal components needed to explain a share of the variance.
* :func:`local_id`: one estimate per point (MLE, or the PR / PCA dimension of its neighbourhood).

Each estimator is a registered layer measure (:data:`ESTIMATORS`), so
:func:`dyngraph.depth_profile` computes it over depth with resampling; :func:`id_curve` is that
runner without labels. Robustness: :func:`subsample_id` (mean ± std over random subsamples) and
:func:`block_analysis` (disjoint blocks of decreasing size: does the estimate depend on N?).
:func:`id_phases` finds the expansion and compression phases of a profile; ``dg.plot`` and
``dg.log`` draw and log :class:`IDPhases` and :class:`BlockAnalysis`.

Conventions follow scikit-dimension (``skdim.id.TwoNN``, ``skdim.id.MLE``) exactly where they
overlap, so the numbers agree with it to ~1e-12 on the same points; the differences (duplicates
and ties are dropped and counted, never inf/NaN) are listed in ``docs/intrinsic_dimension.md``.

Neighbour distances (:func:`neighbor_distances`) are exact float64 distances found at float32
speed: the core tile kernel (:class:`dyngraph.graphs._knn.BlockTopK`, symmetric self-search: each
score computed once for both of its points) ranks candidates by float32 squared distances, the
candidates' distances are recomputed from the float64 differences, and a rigorous rounding-error
bound certifies, row by row, that no other point can be closer; the rare rows it cannot clear are
searched again in float64.
"""
from __future__ import annotations

import math
import warnings
import weakref
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._validate import check_choice, check_choices, check_features, check_positive_int, layer_names
from ..graphs._knn import BACKENDS, DEFAULT_BLOCK_ELEMENTS, BlockTopK, nearest_neighbors, sort_rows
from ._registry import get, register

if TYPE_CHECKING:
    from torch_geometric.data import Data

    from ..profiles._profile import DepthProfile

__all__ = ["ESTIMATORS", "IDEstimate", "IDPhases", "BlockAnalysis", "neighbor_distances", "twonn",
           "mle_id", "participation_ratio", "pca_dim", "pca_spectrum", "local_id", "subsample_id",
           "block_analysis", "id_curve", "id_phases"]

#: Extra candidates fetched by the float64 fallback search beyond the ``k`` that are needed.
EXTRA_CANDIDATES = 8
_U32 = 2.0 ** -24  # unit roundoff of float32


# =============================================================================== input checks
def _as_matrix(x, min_rows: int) -> Tensor:
    """A finite floating ``[N, D]`` tensor; ``[N, C, H, W, ...]`` is flattened to ``[N, C*H*W]``."""
    if isinstance(x, Tensor) and x.dim() > 2:
        x = x.flatten(1)
    return check_features(x, "x", min_rows=min_rows)


def _check_fraction(value, name: str, interval: str = "[)") -> float:
    """``value`` as a float in the unit interval, open or closed at each end as ``interval``
    (``'[)'``, ``'()'`` or ``'(]'``) says."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}: {value!r}")
    value = float(value)
    above = value > 0.0 if interval[0] == "(" else value >= 0.0
    below = value < 1.0 if interval[1] == ")" else value <= 1.0
    if not (above and below):  # NaN fails both
        raise ValueError(f"{name} must be in {interval[0]}0.0, 1.0{interval[1]}, got "
                         f"{name}={value!r}")
    return value


def _check_k(k, n: int, minimum: int) -> None:
    check_positive_int(k, "k", minimum=minimum)
    if k >= n:
        raise ValueError(f"k must be smaller than the number of points N={n}, got k={k}")


# =============================================================================== results
@dataclass
class IDEstimate:
    """One intrinsic-dimension estimate with its bookkeeping.

    ``float(estimate)`` gives the dimension.

    Returned by :func:`twonn` and :func:`mle_id` with ``return_details=True``.

    Attributes:
        dimension: The estimate.
        estimator: ``'twonn'``, ``'twonn_mle'``, ``'mle'``, ...
        n_points: Rows given.
        n_used: Points that entered the estimate (after dropping).
        dropped: ``{'duplicates': …, 'ties': …, 'degenerate': …}`` counts of dropped points
            (default ``{}``).
        fit: Estimator internals (default ``{}``): for TwoNN ``log_mu`` and ``neg_log_survival``
            (the points of the fit, ``[n_fit]``); for MLE the ``local`` estimates ``[n_used]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(500, 2, generator=g, dtype=torch.float64) @ torch.randn(
        ...     2, 10, generator=g, dtype=torch.float64)
        >>> x = torch.cat([x, x[:5]])     # 5 points twice: r1 = 0 for 10, r1 = r2 for a few more
        >>> e = dg.measures.twonn(x, return_details=True)
        >>> e.estimator, e.n_points, e.n_used, e.dropped, round(float(e), 1)
        ('twonn', 505, 490, {'duplicates': 10, 'ties': 5}, 2.0)
        >>> e.fit['log_mu'].shape           # the largest 10% of the 490 ratios are discarded
        torch.Size([441])
    """

    dimension: float
    estimator: str
    n_points: int
    n_used: int
    dropped: Dict[str, int] = field(default_factory=dict)
    fit: Dict[str, Tensor] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.dimension)

    def __repr__(self) -> str:
        drops = {k: v for k, v in self.dropped.items() if v}
        return (f"IDEstimate({self.estimator}={self.dimension:.4f}, n_points={self.n_points}, "
                f"n_used={self.n_used}, dropped={drops})")


# =============================================================================== neighbours
def _direct_distances(x: Tensor, idx: Tensor, rows: Optional[Tensor] = None) -> Tensor:
    """``‖x[i] − x[idx[i, j]]‖`` from the differences (no cancellation), in bounded blocks; the
    query points are ``rows`` (default: all rows, in order)."""
    n, kk = idx.shape
    out = torch.empty(n, kk, dtype=x.dtype, device=x.device)
    step = max(1, (1 << 24) // max(kk * x.shape[1], 1))
    for s in range(0, n, step):
        q = x[s:s + step] if rows is None else x[rows[s:s + step]]
        diff = x[idx[s:s + step]]
        diff.sub_(q.unsqueeze(1))
        out[s:s + step] = torch.linalg.vector_norm(diff, dim=-1)
    return out


def _brute_rows(x64: Tensor, rows: Tensor, kk: int) -> Tuple[Tensor, Tensor]:
    """Nearest neighbours of ``rows`` from the float64 differences to every point (no cancellation
    at all); the last resort for rows no bound can certify."""
    n, dim = x64.shape
    step = max(1, (1 << 24) // max(n * dim, 1))
    out = []
    for s in range(0, rows.numel(), step):
        r = rows[s:s + step]
        d = (x64[r].unsqueeze(1) - x64.unsqueeze(0)).pow(2).sum(-1).sqrt()
        d[torch.arange(r.numel(), device=x64.device), r] = math.inf
        out.append(sort_rows(*d.topk(kk, dim=1, largest=False), largest=False))
    dists, idx = zip(*out)
    return torch.cat(dists), torch.cat(idx)


def _rows_float64(x64: Tensor, xc: Tensor, rows: Tensor, kk: int, k: int, norms: Tensor,
                  r_max: Tensor, extra_bound: Tensor) -> Tuple[Tensor, Tensor, int]:
    """Exact ``kk`` nearest neighbours of ``rows`` (the float32 certificate's fallback): candidates
    from a float64 Gram block of the centred points, certified again with the float64 bound; rows
    that still fail are brute-forced. Returns distances, indices and the number brute-forced."""
    n, dim = xc.shape
    sq = (xc * xc).sum(1)
    chunk = max(1, DEFAULT_BLOCK_ELEMENTS // max(n, 1))
    take = min(kk + EXTRA_CANDIDATES, n - 1)
    out = []
    for s in range(0, rows.numel(), chunk):
        r = rows[s:s + chunk]
        d2 = torch.addmm(sq[r].unsqueeze(1) + sq.unsqueeze(0), xc[r], xc.T, beta=1.0, alpha=-2.0)
        d2[torch.arange(r.numel(), device=xc.device), r] = math.inf  # never the point itself
        cand = d2.topk(take, dim=1, largest=False).indices
        out.append(sort_rows(_direct_distances(x64, cand, r), cand, largest=False))
    dists, idx = zip(*out)
    d, cand = torch.cat(dists), torch.cat(idx)
    n_brute = 0
    if take < n - 1:
        # |fl(|a|² + |b|² − 2a·b) − ‖a − b‖²| for a = each row and any b, with the float64 unit
        # roundoff u (the dot products' γ_D plus the additions and the cast)
        u = 2.0 ** -53
        gamma = dim * u / max(1.0 - dim * u, 1e-3)
        delta = (gamma + 8 * u) * 1.01 * (norms[rows] + r_max) ** 2 + extra_bound[rows]
        bad = (d[:, k - 1] ** 2 + 2 * delta >= d[:, -1] ** 2).nonzero().flatten()
        if bad.numel():
            n_brute = int(bad.numel())
            d[bad], cand[bad] = _brute_rows(x64, rows[bad], take)
    return d[:, :kk], cand[:, :kk], n_brute


def neighbor_distances(x: Tensor, k: int, search: str = "auto", backend: str = "matmul",
                       return_stats: bool = False) -> Tuple[Any, ...]:
    """Exact float64 Euclidean distances to the ``k`` nearest neighbours of every row.

    ``search='float32'`` (the default through ``'auto'``): the points are centred and scaled to
    ``y = (x − x̄)/R`` (``R`` the largest centred norm), and the core tile kernel
    :class:`dyngraph.graphs._knn.BlockTopK` keeps, per row, the ``k + 2`` (``k <= 2``) or ``k + 4``
    candidates with the smallest float32 score ``|y_i|² + |y_j|² − 2 y_i·y_j``, through its
    symmetric self-search (each score computed once, for both of its points: about half of the
    GEMM). Their distances are recomputed from the float64 differences and re-sorted. A float32
    score is off by at most ``εᵢ = (γ_{D+1} + 8u)(3|yᵢ| + 2)`` (``u = 2⁻²⁴``,
    ``γ_m = mu/(1 − mu)``; the dot product, both squared norms, two additions and the cast), so a
    point outside the candidates is at squared distance ``≥ d²_last − 2εᵢR²``; rows whose exact
    ``k``-th squared distance is not below that bound are
    searched again in float64 (a Gram block, certified the same way with the float64 bound), and
    any row that still fails is brute-forced from the differences. The result is the exact
    float64 answer. Exact duplicates give distance 0.

    ``search='float64'``: :func:`dyngraph.graphs.nearest_neighbors` in float64 on the centred
    points, then the same float64 re-scoring.

    Args:
        x: Points ``[N, D]`` (``[N, ...]`` is flattened), floating point, finite.
        k: Neighbours per point, ``1 <= k < N``.
        search: ``'auto'`` (float32 unless the values overflow it), ``'float32'`` or ``'float64'``.
        backend: :func:`dyngraph.graphs.nearest_neighbors` backend for ``search='float64'``
            (``'matmul'`` default: its ``'auto'`` timing mis-picks the KD-tree for
            high-dimensional features).
        return_stats: Also return ``{'refined_rows': …, 'brute_rows': …, 'search': …}``: the rows
            searched again in float64 and, of those, the rows brute-forced.

    Returns:
        ``(dist, index)``: float64 ``[N, k]`` ascending distances and long ``[N, k]`` neighbour
        indices (ties by the smaller index); plus the stats dict with ``return_stats``.

    Example:
        >>> import torch, dyngraph as dg
        >>> d, i = dg.measures.neighbor_distances(torch.tensor([[0.], [1.], [3.], [7.]]), k=2)
        >>> d.tolist(), i.tolist()
        ([[1.0, 3.0], [1.0, 2.0], [2.0, 3.0], [4.0, 6.0]], [[1, 2], [0, 2], [1, 0], [2, 1]])
    """
    x = _as_matrix(x, min_rows=2)
    n, dim = x.shape
    _check_k(k, n, 1)
    check_choice(search, "search", ("auto", "float32", "float64"))
    check_choice(backend, "backend", BACKENDS)
    x64 = x.to(torch.float64)
    xc = x64 - x64.mean(0, keepdim=True)  # the search runs on centred points (less cancellation)
    norms = xc.norm(dim=1)
    r_max = norms.max()
    if search == "auto":
        search = "float32" if float(r_max) < 1e18 else "float64"
    stats = {"refined_rows": 0, "brute_rows": 0, "search": search}
    if search == "float64":
        _, idx = nearest_neighbors(xc, k, metric="euclidean", backend=backend)
        d, idx = sort_rows(_direct_distances(x64, idx), idx, largest=False)
        return (d, idx, stats) if return_stats else (d, idx)
    # spare candidates for the certificate: 2 for TwoNN's k = 2, 4 for larger k (a row the
    # certificate cannot clear is searched again in float64, which is cheap for a few rows)
    kk = min(k + (2 if k <= 2 else 4), n - 1)
    # the kk best candidates of every row by the float32 tile scores alone (no exact re-scoring:
    # certified below), through the symmetric self-search (each score serves both of its points)
    y = (xc / r_max if bool(r_max > 0) else xc).to(torch.float32)
    cand = BlockTopK(y, kk, "euclidean", exclude_self=True, refine=False).search_self().result()[1]
    # exact distances from the raw float64 differences (centring would round them)
    d, cand = sort_rows(_direct_distances(x64, cand), cand, largest=False)
    if kk < n - 1:  # with every other point a candidate the result is exact already
        raw = x64.norm(dim=1)
        centring = 16 * 2.0 ** -53 * (raw + raw.max()) ** 2  # rounding of centring and scaling
        gamma = (dim + 1) * _U32 / max(1.0 - (dim + 1) * _U32, 1e-3)
        # One tile score |y_q|² + |y_j|² − 2 y_q·y_j (|y| <= 1) is off by at most
        # 2γ|y_q| (the dot product) + γ|y_q|² + γ (the squared norms) + 7u (two additions of
        # terms <= 3 and <= 4) + the float32 cast of y: <= (γ + 8u)(3|y_q| + 2), with 1% slack.
        eps = (gamma + 8 * _U32) * 1.01 * (1.5 * norms / r_max.clamp_min(1e-300) + 1.0)
        delta = 2 * eps * r_max ** 2 + centring  # one score's error, in squared distance
        bad = (d[:, k - 1] ** 2 + 2 * delta >= d[:, -1] ** 2).nonzero().flatten()
        if bad.numel():
            stats["refined_rows"] = int(bad.numel())
            d[bad], cand[bad], stats["brute_rows"] = _rows_float64(x64, xc, bad, kk, k, norms,
                                                                   r_max, centring)
    d, cand = d[:, :k].contiguous(), cand[:, :k].contiguous()
    return (d, cand, stats) if return_stats else (d, cand)


# =============================================================================== TwoNN
_SHARED: Dict[str, Any] = {}  # the last layer's neighbour distances (one entry)
_PREFETCH_K: ContextVar[int] = ContextVar("dyngraph_id_prefetch_k", default=0)


def _shared_distances(x: Tensor, k: int, search: str, backend: str) -> Tensor:
    """:func:`neighbor_distances` ``[N, k]`` shared by the distance-based estimators of one
    layer: the search of the largest ``k`` asked for (or prefetched by :func:`id_curve`) serves
    every smaller ``k``; the nearest distances are a prefix, bit for bit."""
    c = _SHARED
    ref = c.get("x")
    if (ref is not None and ref() is x and c["version"] == x._version
            and c["opts"] == (search, backend) and c["k"] >= k):
        return c["d"][:, :k]
    kk = min(max(k, _PREFETCH_K.get()), x.shape[0] - 1)
    d, _ = neighbor_distances(x, kk, search=search, backend=backend)
    c.clear()
    c.update(x=weakref.ref(x), version=x._version, opts=(search, backend), k=kk, d=d)
    return d[:, :k]


def twonn(x: Tensor, discard_fraction: float = 0.1, method: str = "linear",
          drop_ties: bool = True, return_details: bool = False, search: str = "auto",
          backend: str = "matmul") -> Union[float, IDEstimate]:
    r"""TwoNN intrinsic dimension (Facco et al. 2017), as used by Ansuini et al. 2019.

    For each point ``μ = r2/r1``, the ratio of its second- to first-neighbour distance.
    Points with ``r1 = 0`` (duplicates) and, with ``drop_ties``, ``r1 = r2`` are dropped and
    counted, as Ansuini et al. do. Of the ``N`` remaining ratios, sorted, the largest
    ``discard_fraction`` are discarded (``n = int(N(1 − discard_fraction))`` kept), and with
    ``F_i = i/N``:

    * ``method='linear'``: the least-squares slope through the origin of ``−log(1 − F_i)`` on
      ``log μ_(i)``;
    * ``method='mle'``: ``(n − 1) / (Σ_{i≤n} log μ_(i) + (N − n) log μ_(n))``, the MLE of a
      Pareto(1, d) law with the discarded ratios censored; ``(N − 1)/Σ log μ`` for
      ``discard_fraction=0``.

    Both match ``skdim.id.TwoNN(discard_fraction, method=…)`` on the same points. Known bias:
    TwoNN underestimates large dimensions at finite N (see the docs page).

    Args:
        x: Points ``[N, D]`` (``[N, ...]`` is flattened), floating point, finite; ``N >= 3``.
        discard_fraction: Share of the largest ratios left out, in ``[0, 1)``; 0.1 by default.
            With ``discard_fraction=0`` and ``'linear'`` the last point (``F = 1``) is left out.
        method: ``'linear'`` or ``'mle'``.
        drop_ties: Drop points with ``r1 = r2`` (``μ = 1``). skdim keeps them; the two agree on
            data without exact ties.
        return_details: Return an :class:`IDEstimate` (counts of dropped points, the fitted points)
            instead of a float.
        search, backend: Neighbour search, see :func:`neighbor_distances`.

    Returns:
        The dimension (``float``), or an :class:`IDEstimate`.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> plane = torch.rand(2000, 2, generator=g) @ torch.randn(2, 50, generator=g)
        >>> round(dg.measures.twonn(plane), 1)
        2.0
    """
    x = _as_matrix(x, min_rows=3)
    discard_fraction = _check_fraction(discard_fraction, "discard_fraction")
    check_choice(method, "method", ("linear", "mle"))
    d = _shared_distances(x, 2, search, backend)
    r1, r2 = d[:, 0], d[:, 1]
    dup = r1 <= 0
    tie = (r2 <= r1) & ~dup if drop_ties else torch.zeros_like(dup)
    keep = ~(dup | tie)
    mu = r2[keep] / r1[keep]
    n = int(mu.numel())
    dropped = {"duplicates": int(dup.sum()), "ties": int(tie.sum())}
    n_keep = int(n * (1 - discard_fraction))  # the skdim / Ansuini convention
    if method == "linear" and n_keep == n:
        n_keep = n - 1  # F = 1 at the last point makes -log(1 - F) infinite: leave it out
    if n_keep < 2:
        raise ValueError(f"TwoNN needs at least 2 points in the fit, got {n_keep} of "
                         f"{x.shape[0]} after dropping {dropped['duplicates']} duplicates "
                         f"(r1 = 0) and {dropped['ties']} ties (r1 = r2) and discarding "
                         f"{discard_fraction:.0%}; use more points")
    log_mu = mu.sort().values[:n_keep].log()
    f = torch.arange(1, n_keep + 1, dtype=torch.float64, device=mu.device) / n
    y = -torch.log1p(-f)
    if method == "mle":
        # Unbiased exponential-rate MLE of log μ under type-II censoring (as skdim);
        # discard_fraction=0 gives (N − 1) / Σ log μ.
        denom = log_mu.sum() + (n - n_keep) * log_mu[-1]
    else:  # least squares through the origin of −log(1 − F) on log μ
        denom = (log_mu * log_mu).sum()
    if not bool(denom > 0):
        raise ValueError(f"TwoNN is undefined here: every kept ratio r2/r1 equals 1 "
                         f"({n_keep} points); the data are degenerate (use drop_ties=True)")
    dim = (n_keep - 1) / denom if method == "mle" else (log_mu * y).sum() / denom
    est = IDEstimate(float(dim), "twonn" if method == "linear" else "twonn_mle", x.shape[0], n,
                     dropped, {"log_mu": log_mu, "neg_log_survival": y})
    return est if return_details else est.dimension


# =============================================================================== Levina–Bickel MLE
def _mle_local(dist: Tensor, k: int) -> Tuple[Tensor, Tensor, Dict[str, int]]:
    """Per-point Levina–Bickel sums ``Σ_{j<k} log(R_k/R_j)``, the valid mask and drop counts."""
    r = dist[:, :k]
    dup = r[:, 0] <= 0
    safe = torch.where(dup.unsqueeze(1), torch.ones_like(r), r)
    s = torch.log(safe[:, k - 1:k] / safe[:, :k - 1]).sum(1)
    degenerate = (s <= 0) & ~dup  # all k distances equal: the local estimate is infinite
    valid = ~(dup | degenerate)
    return s, valid, {"duplicates": int(dup.sum()), "degenerate": int(degenerate.sum())}


def mle_id(x: Tensor, k: int = 20, unbiased: bool = False, comb: str = "mle",
           return_details: bool = False, search: str = "auto",
           backend: str = "matmul") -> Union[float, IDEstimate]:
    r"""Levina–Bickel maximum-likelihood intrinsic dimension with ``k`` neighbours.

    Each point's estimate is ``m_i = (k − 1) / Σ_{j<k} log(R_k / R_j)`` (``k − 2`` with
    ``unbiased``), from its ``k`` nearest-neighbour distances ``R_1 ≤ … ≤ R_k``. They are pooled
    with the MacKay–Ghahramani correction, the harmonic mean ``(mean_i 1/m_i)⁻¹`` (``comb='mle'``,
    as ``skdim.id.MLE`` and the ``intrinsicDimension`` R package do), or by their mean or median.
    Points with ``R_1 = 0`` (duplicates) or ``R_1 = R_k`` are dropped and counted.

    Args:
        x: Points ``[N, D]`` (``[N, ...]`` is flattened), floating point, finite.
        k: Neighbours, ``2 <= k < N`` (``3 <=`` with ``unbiased``); 20 by default, as skdim.
        unbiased: ``k − 2`` in the numerator (Levina–Bickel's unbiased form).
        comb: ``'mle'`` (harmonic mean, default), ``'mean'`` or ``'median'``.
        return_details: Return an :class:`IDEstimate` (with the local estimates).
        search, backend: Neighbour search, see :func:`neighbor_distances`.

    Returns:
        The dimension (``float``), or an :class:`IDEstimate`.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> cube = torch.rand(2000, 3, generator=g) @ torch.randn(3, 40, generator=g)
        >>> round(dg.measures.mle_id(cube, k=20))
        3
    """
    x = _as_matrix(x, min_rows=3)
    _check_k(k, x.shape[0], 3 if unbiased else 2)
    check_choice(comb, "comb", ("mle", "mean", "median"))
    d = _shared_distances(x, k, search, backend)
    s, valid, dropped = _mle_local(d, k)
    s = s[valid]
    if s.numel() == 0:
        raise ValueError(f"MLE is undefined: all {x.shape[0]} points have a duplicate (r1 = 0) "
                         f"or {k} equal neighbour distances")
    kfac = k - 2 if unbiased else k - 1
    local = kfac / s
    if comb == "mle":  # MacKay & Ghahramani: average the inverse estimates
        dim = 1.0 / (s / kfac).mean()
    elif comb == "mean":  # Levina & Bickel's original average
        dim = local.mean()
    else:
        dim = torch.quantile(local, 0.5)
    est = IDEstimate(float(dim), "mle", x.shape[0], int(s.numel()), dropped, {"local": local})
    return est if return_details else est.dimension


# =============================================================================== linear dimensions
def _centered(x: Tensor) -> Tensor:
    xc = x.to(torch.float64)
    return xc - xc.mean(0, keepdim=True)


def _gram_frobenius_sq(xc: Tensor) -> Tensor:
    """``‖Xc Xcᵀ‖_F² = ‖Xcᵀ Xc‖_F²`` through the smaller side, in bounded blocks."""
    n, dim = xc.shape
    if dim <= n:
        c = xc.T @ xc
        return (c * c).sum()
    total = torch.zeros((), dtype=xc.dtype, device=xc.device)
    step = max(1, DEFAULT_BLOCK_ELEMENTS // max(n, 1))
    for s in range(0, n, step):
        b = xc[s:s + step] @ xc.T
        total = total + (b * b).sum()
    return total


def participation_ratio(x: Tensor, bias_correction: bool = False) -> float:
    r"""Participation ratio ``(Σλ)² / Σλ²`` of the covariance eigenvalues ``λ``.

    Computed from traces, ``(tr C)² / tr(C²)``, without an eigendecomposition; memory stays
    bounded (``min(N, D)²`` or blocks of the Gram matrix).

    With ``bias_correction`` the numerator and denominator are replaced by unbiased U-statistic
    estimates of ``(tr Σ)²`` and ``tr(Σ²)`` over distinct sample indices (Chen, Zhang & Zhong
    2010), valid for any distribution. The plain PR of N points is at most ``N − 1`` and is
    biased low when ``D`` is comparable to ``N``; the corrected one estimates the population PR.

    Args:
        x: Points ``[N, D]`` (``[N, ...]`` is flattened), floating point, finite, ``N >= 2``
            (``>= 4`` with the correction).
        bias_correction: Use the finite-sample correction.

    Returns:
        The participation ratio (``1 <= PR <= min(N − 1, D)`` without correction).

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(4000, 3, generator=g) * torch.tensor([1., 1., 0.])
        >>> round(dg.measures.participation_ratio(x), 2)
        2.0
    """
    xc = _centered(_as_matrix(x, min_rows=2))
    n = xc.shape[0]
    g = (xc * xc).sum(1)  # diagonal of the Gram matrix
    a = g.sum()
    if not bool(a > 0):
        raise ValueError(f"participation ratio is undefined: all {n} rows of x are identical "
                         f"(zero variance)")
    frob = _gram_frobenius_sq(xc)
    if not bias_correction:
        return float(a * a / frob)
    if n < 4:
        raise ValueError(f"the bias-corrected participation ratio needs N >= 4 points, got N={n}")
    # U-statistics over distinct indices (Chen, Zhang & Zhong 2010) from Gram-matrix sums:
    # unbiased for tr(Σ²) and (tr Σ)² under any distribution, invariant to a shift of the data.
    r = xc @ xc.sum(0)  # row sums of the Gram matrix
    sg, sg2 = a, (g * g).sum()
    u = r.sum() - sg  # Σ_{i≠j} G_ij
    s2 = frob - sg2  # Σ_{i≠j} G_ij²
    s3 = (r * r).sum() - 2 * (g * r).sum() - frob + 2 * sg2  # Σ_{i,j,k distinct} G_ij G_jk
    s4 = u * u - 2 * s2 - 4 * s3  # Σ_{i,j,k,l distinct} G_ij G_kl
    p2, p3, p4 = n * (n - 1.0), n * (n - 1.0) * (n - 2.0), n * (n - 1.0) * (n - 2.0) * (n - 3.0)
    tr_sq = s2 / p2 - 2 * s3 / p3 + s4 / p4
    tr2 = (sg * sg - sg2) / p2 - 2 * (u * sg - 2 * (g * (r - g)).sum()) / p3 + s4 / p4
    if not (bool(tr_sq > 0) and bool(tr2 > 0)):
        raise ValueError(f"the bias-corrected participation ratio is undefined for these N={n} "
                         f"points (the unbiased moment estimates are not positive: "
                         f"tr(Σ²)≈{float(tr_sq):.3g}, (trΣ)²≈{float(tr2):.3g}); use more points "
                         f"or bias_correction=False")
    return float(tr2 / tr_sq)


def _eigvalsh(m: Tensor) -> Tensor:
    """Ascending eigenvalues of symmetric matrices ``[..., n, n]``. On CPU through numpy's LAPACK
    (zero-copy), which measured 2× faster than torch's and without its multi-second first-call
    stalls on this shared machine; on CUDA ``torch.linalg.eigvalsh``."""
    if m.device.type == "cpu":
        return torch.from_numpy(np.linalg.eigvalsh(m.detach().contiguous().numpy()))
    return torch.linalg.eigvalsh(m)


def _spectrum(x: Tensor) -> Tensor:
    xc = _centered(x)
    n, dim = xc.shape
    m = xc.T @ xc if dim <= n else xc @ xc.T
    ev = _eigvalsh(m).flip(0).clamp_min(0.0)
    return ev / max(n - 1, 1)


def pca_spectrum(x: Tensor) -> Tensor:
    """Covariance eigenvalues, descending, float64 ``[min(N, D)]`` (``ddof=1``, as sklearn's
    ``PCA.explained_variance_``).

    Example:
        >>> import torch, dyngraph as dg
        >>> dg.measures.pca_spectrum(torch.tensor([[1., 0.], [-1., 0.], [0., 0.]])).tolist()
        [1.0, 0.0]
    """
    return _spectrum(_as_matrix(x, min_rows=2))


def pca_dim(x: Tensor, threshold: float = 0.9) -> int:
    """Number of principal components that explain more than ``threshold`` of the variance.

    The rule of ``sklearn.decomposition.PCA(n_components=threshold)``: the smallest ``n`` whose
    cumulative explained-variance ratio exceeds ``threshold``.

    Args:
        x: Points ``[N, D]`` (``[N, ...]`` is flattened), floating point, finite.
        threshold: Share of variance, in ``(0, 1)``; 0.9 by default.

    Returns:
        The PCA dimension (``int``, ``1 <= n <= min(N, D)``).

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(500, 4, generator=g) * torch.tensor([10., 10., 1., 0.1])
        >>> dg.measures.pca_dim(x, 0.9), dg.measures.pca_dim(x, 0.999)
        (2, 3)
    """
    x = _as_matrix(x, min_rows=2)
    threshold = _check_fraction(threshold, "threshold", "()")
    ev = _spectrum(x)
    total = ev.sum()
    if not bool(total > 0):
        raise ValueError("pca_dim is undefined: all rows of x are identical (zero variance)")
    ratio = ev.cumsum(0) / total
    n = int(torch.searchsorted(ratio, torch.tensor([threshold], dtype=ratio.dtype,
                                                   device=ratio.device), right=True)) + 1
    return min(n, int(ev.numel()))


# =============================================================================== local ID
def _local_linear(xc: Tensor, idx: Tensor, method: str, threshold: float) -> Tensor:
    """PR or PCA dimension of each point's neighbourhood ``{i} ∪ kNN(i)``, batched."""
    n, k = idx.shape
    out = torch.empty(n, dtype=torch.float64, device=xc.device)
    step = max(1, (1 << 24) // max((k + 1) * xc.shape[1], 1))
    nb_all = torch.cat([torch.arange(n, device=xc.device).unsqueeze(1), idx], 1)
    for s in range(0, n, step):
        z = xc[nb_all[s:s + step]]  # [b, k+1, D]
        z = z - z.mean(1, keepdim=True)
        h = z @ z.transpose(1, 2)  # [b, k+1, k+1] local Gram matrices
        tr = h.diagonal(dim1=1, dim2=2).sum(1)
        if method == "pr":
            val = tr * tr / (h * h).sum((1, 2))
        else:
            ev = _eigvalsh(h).flip(1).clamp_min(0.0)
            ratio = ev.cumsum(1) / tr.unsqueeze(1)
            val = ((ratio <= threshold).sum(1) + 1).clamp_max(k + 1).to(torch.float64)
        out[s:s + step] = torch.where(tr > 0, val, torch.full_like(val, math.nan))
    return out


def local_id(x: Tensor, k: int = 20, method: str = "mle", threshold: float = 0.9,
             unbiased: bool = False, search: str = "auto", backend: str = "matmul") -> Tensor:
    r"""A local intrinsic dimension for every point, from its ``k`` nearest neighbours.

    * ``'mle'``: the Levina–Bickel estimate ``(k − 1)/Σ_{j<k} log(R_k/R_j)`` at the point (the
      terms that :func:`mle_id` pools);
    * ``'pr'``: the participation ratio of the neighbourhood ``{i} ∪ kNN(i)``;
    * ``'pca'``: its PCA dimension at ``threshold``.

    Comparing their average with a global estimate (:func:`participation_ratio`,
    :func:`pca_dim` of all points) separates a curved low-dimensional manifold (local ≪ global)
    from a flat one (local ≈ global), as Recanatesi et al. do.

    Points where the estimate is undefined (a duplicate for ``'mle'``; a neighbourhood of
    identical points for ``'pr'``/``'pca'``) get ``NaN``, and a ``RuntimeWarning`` gives their
    number. Use ``torch.nanmean``, or select ``~out.isnan()``.

    Args:
        x: Points ``[N, D]`` (``[N, ...]`` is flattened), floating point, finite.
        k: Neighbours, ``2 <= k < N`` (``3 <=`` for ``'mle'`` with ``unbiased``).
        method: ``'mle'``, ``'pr'`` or ``'pca'``.
        threshold: Explained-variance share for ``'pca'``.
        unbiased: ``k − 2`` for ``'mle'``.
        search, backend: Neighbour search, see :func:`neighbor_distances`.

    Returns:
        float64 ``[N]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> t = torch.rand(1000, generator=g) * 6.28
        >>> circle = torch.stack([t.cos(), t.sin()], 1)       # a curve: locally 1-D, globally 2-D
        >>> local = dg.measures.local_id(circle, k=10, method='pca')
        >>> round(float(local.median())), dg.measures.pca_dim(circle, 0.9)
        (1, 2)
    """
    out = _local(x, k, method, threshold, unbiased, search, backend)
    bad = int(out.isnan().sum())
    if bad:
        warnings.warn(f"local_id(method={method!r}): {bad} of {out.numel()} points have an "
                      f"undefined local dimension (duplicate points) and are NaN",
                      RuntimeWarning, stacklevel=2)
    return out


def _local(x: Tensor, k: int, method: str, threshold: float, unbiased: bool, search: str,
           backend: str) -> Tensor:
    """:func:`local_id`'s values ``[N]``, without the warning."""
    x = _as_matrix(x, min_rows=3)
    check_choice(method, "method", ("mle", "pr", "pca"))
    _check_k(k, x.shape[0], 3 if (method == "mle" and unbiased) else 2)
    threshold = _check_fraction(threshold, "threshold", "()")
    d, idx = neighbor_distances(x, k, search=search, backend=backend)
    if method != "mle":
        return _local_linear(_centered(x), idx, method, threshold)
    s, valid, _ = _mle_local(d, k)
    kfac = k - 2 if unbiased else k - 1
    return torch.where(valid, kfac / torch.where(valid, s, torch.ones_like(s)),
                       torch.full_like(s, math.nan))


def _mean_local(x: Tensor, k: int, method: str, threshold: float, search: str,
                backend: str) -> float:
    """The mean local PR / PCA dimension over the points where it is defined."""
    loc = _local(x, k, method, threshold, False, search, backend)
    if bool(loc.isnan().all()):
        raise ValueError(f"local {method}: every neighbourhood consists of identical points")
    return float(loc.nanmean())


# =============================================================================== robustness
def _estimator(estimator: str, settings: Dict[str, Any]) -> Callable[[Tensor], float]:
    """The registered measure ``estimator`` as ``x -> float``, its ``settings`` checked."""
    check_choice(estimator, "estimator", ESTIMATORS)
    _check_settings(estimator, settings)
    fn = get(estimator).fn
    return lambda x: float(fn(x, None, None, **settings))


def _check_settings(estimator: str, settings: Dict[str, Any]) -> None:
    allowed = sorted(_OPTIONS[estimator])
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise TypeError(f"unknown estimator settings {unknown} for {estimator!r}; allowed: "
                        f"{allowed}")


def _unlabelled(features: Any) -> Any:
    """``LayerFeatures`` with every sample in class 0: the ID measures read no labels, and with
    one class the runner's ``n_samples`` draw is the plain seeded subsample
    ``torch.randperm(N)[:n]``, sorted."""
    from ..capture._features import LayerFeatures
    from ..profiles._runner import as_layer_features
    if isinstance(features, LayerFeatures):
        n = features.n_samples
    else:
        first = layer_names(features)[0]
        if not isinstance(features[first], Tensor):
            raise TypeError(f"features[{first!r}] must be a Tensor, got "
                            f"{type(features[first]).__name__}")
        n = int(features[first].shape[0])
    return as_layer_features(features, torch.zeros(n, dtype=torch.long))


def subsample_id(x: Tensor, estimator: str = "twonn", fraction: float = 0.9, repeats: int = 10,
                 seed: int = 0, **settings: Any) -> Tuple[float, float, Tensor]:
    """Mean ± std of an estimate over seeded random subsamples without replacement (the runner
    :func:`dyngraph.depth_profile` on one layer).

    Args:
        x: Points ``[N, D]`` (``[N, ...]`` is flattened).
        estimator: One of :data:`ESTIMATORS` (registered measure names).
        fraction: Share of the points in each subsample, in ``(0, 1]``; 0.9 by default.
        repeats: Number of subsamples (seeds ``seed, seed + 1, …``).
        seed: First seed.
        **settings: The estimator's options (e.g. ``discard_fraction`` for ``'twonn'``, ``k``
            for ``'mle_id'``, ``threshold`` for ``'pca_dim'``).

    Returns:
        ``(mean, std, samples)``; ``std`` is the sample std (0 for one repeat), ``samples`` is
        float64 ``[repeats]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(1000, 3, generator=g) @ torch.randn(3, 20, generator=g)
        >>> m, s, vals = dg.measures.subsample_id(x, 'twonn', repeats=4)
        >>> round(m), vals.shape
        (3, torch.Size([4]))
    """
    from ..profiles._runner import depth_profile
    x = _as_matrix(x, min_rows=3)
    _estimator(estimator, settings)
    fraction = _check_fraction(fraction, "fraction", "(]")
    check_positive_int(repeats, "repeats")
    m = max(3, int(round(fraction * x.shape[0])))
    p = depth_profile(_unlabelled({"x": x}), [estimator], repeats=repeats, n_samples=m, seed=seed,
                      measure_options={estimator: settings}, progress=False)
    t = p.samples[:, 0, 0].contiguous()
    return float(t.mean()), float(t.std()) if repeats > 1 else 0.0, t


@dataclass
class BlockAnalysis:
    """Estimates on disjoint blocks of decreasing size (Facco et al.'s decimation test); drawn by
    :func:`dyngraph.plot` (ID against block size) and logged by :func:`dyngraph.log`.

    Returned by :func:`block_analysis`; one *level* per entry of its ``n_blocks``.

    Attributes:
        estimator: The estimator.
        n_blocks: Number of blocks per level ``[L]``.
        block_size: Points per block ``[L]``.
        mean, std: Mean and std over the blocks of each level ``[L]`` (std 0 for one block).
        samples: Each level's per-block estimates (``samples[l]`` has ``n_blocks[l]`` floats).

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.rand(400, 3, generator=torch.Generator().manual_seed(0))
        >>> b = dg.measures.block_analysis(x, n_blocks=(1, 2, 4))
        >>> b.estimator, b.n_blocks, b.block_size, [len(s) for s in b.samples]
        ('twonn', [1, 2, 4], [400, 200, 100], [1, 2, 4])
        >>> round(b.mean[0]), b.std[0], abs(b.relative_change()) < 0.5
        (3, 0.0, True)
    """

    estimator: str
    n_blocks: List[int]
    block_size: List[int]
    mean: List[float]
    std: List[float]
    samples: List[List[float]]

    def relative_change(self) -> float:
        """``(mean at the largest block − mean at the smallest) / mean at the largest``: how much
        the estimate grows with N (about 0 for a scale-free estimate)."""
        big = self.mean[self.block_size.index(max(self.block_size))]
        small = self.mean[self.block_size.index(min(self.block_size))]
        return (big - small) / big if big else math.nan

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready fields plus ``relative_change``."""
        return dict(vars(self), relative_change=self.relative_change())

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BlockAnalysis":
        """Inverse of :meth:`to_dict`."""
        return cls(*(d[k] for k in cls.__dataclass_fields__))


def block_analysis(x: Tensor, estimator: str = "twonn",
                   n_blocks: Sequence[int] = (1, 2, 4, 8, 16), seed: int = 0,
                   **settings: Any) -> BlockAnalysis:
    """Splits one random permutation of the points into ``b`` disjoint blocks, for each ``b`` in
    ``n_blocks``, and estimates the ID of every block: a flat profile means the estimate does not
    depend on N; a falling one (as N shrinks) shows the finite-sample underestimate.

    Args:
        x: Points ``[N, D]`` (``[N, ...]`` is flattened).
        estimator: One of :data:`ESTIMATORS`.
        n_blocks: Block counts; each block has ``N // b`` points (at least 3).
        seed: Seed of the permutation.
        **settings: The estimator's options, as in :func:`subsample_id`.

    Returns:
        A :class:`BlockAnalysis` (``dg.plot(result)`` draws it).

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(2000, 2, generator=g) @ torch.randn(2, 10, generator=g)
        >>> b = dg.measures.block_analysis(x, n_blocks=(1, 4))
        >>> b.block_size, [round(v) for v in b.mean]
        ([2000, 500], [2, 2])
        >>> dg.plot(b).axes[0].get_xscale()
        'log'
    """
    x = _as_matrix(x, min_rows=3)
    estimate = _estimator(estimator, settings)
    n_blocks = [n_blocks] if isinstance(n_blocks, int) else n_blocks
    n_blocks = [check_positive_int(b, "n_blocks") for b in n_blocks]
    if not n_blocks:
        raise ValueError("n_blocks is empty")
    n = x.shape[0]
    for b in n_blocks:
        if n // b < 3:
            raise ValueError(f"n_blocks={b} leaves {n // b} points per block (N={n}); "
                             f"each block needs at least 3")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).to(x.device)
    sizes = [n // b for b in n_blocks]
    samples = [[estimate(x[perm[i * size:(i + 1) * size]]) for i in range(b)]
               for b, size in zip(n_blocks, sizes)]
    levels = [torch.tensor(vals, dtype=torch.float64) for vals in samples]
    return BlockAnalysis(estimator, n_blocks, sizes, [float(t.mean()) for t in levels],
                         [float(t.std()) if t.numel() > 1 else 0.0 for t in levels], samples)


# =============================================================================== over depth
def id_curve(features: Any, estimators: Union[str, Sequence[str]] = "twonn", *,
             fraction: float = 0.9, repeats: int = 5, seed: int = 0,
             measure_options: Optional[Dict[str, Dict[str, Any]]] = None,
             device: Optional[Union[str, torch.device]] = None,
             progress: bool = True) -> "DepthProfile":
    """Intrinsic dimension per layer, mean ± std over seeded subsamples of ``fraction × N``
    points: :func:`dyngraph.depth_profile` without labels (a plain, not class-balanced, draw;
    repeat ``r`` takes the same points in every layer, ``torch.randperm(N)`` seeded ``seed + r``).

    Args:
        features: :class:`~dyngraph.LayerFeatures` (labels ignored) or ``{layer: Tensor[N, ...]}``.
        estimators: One or several of :data:`ESTIMATORS`: ``'twonn'``, ``'twonn_mle'``,
            ``'mle_id'``, ``'participation_ratio'``, ``'participation_ratio_corrected'``,
            ``'pca_dim'``, ``'local_participation_ratio'``, ``'local_pca_dim'``.
        fraction: Share of the points in each subsample, in ``(0, 1]``.
        repeats: Subsamples; ``repeats > 1`` needs ``fraction < 1``.
        seed: First seed.
        measure_options: ``{estimator: {option: value}}``, e.g. ``{'mle_id': {'k': 10}}``.
        device: Where to compute (default: where each layer's tensor is).
        progress: Progress bar over repeats × layers.

    Returns:
        A :class:`~dyngraph.DepthProfile`, samples ``[repeats, layers, estimators]``, the metrics
        named as the estimators; ``meta`` has the settings and each layer's dimension ``dims``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.rand(600, 2, generator=g)
        >>> f = {'a': z @ torch.randn(2, 30, generator=g), 'b': torch.rand(600, 6, generator=g)}
        >>> p = dg.measures.id_curve(f, ['twonn', 'pca_dim'], repeats=3, progress=False)
        >>> [round(v) for v in p['twonn'].values.tolist()], tuple(p.samples.shape)
        ([2, 6], (3, 2, 2))
    """
    from ..profiles._runner import depth_profile
    names = check_choices(estimators, "estimators", ESTIMATORS)
    fraction = _check_fraction(fraction, "fraction", "(]")
    check_positive_int(repeats, "repeats")
    if repeats > 1 and fraction == 1.0:
        raise ValueError(f"repeats={repeats} needs fraction < 1 (each repeat subsamples); "
                         f"use repeats=1 for a single estimate on all points")
    feats = _unlabelled(features)
    m = max(3, int(round(fraction * feats.n_samples))) if fraction < 1.0 else None
    # One neighbour search per layer serves every distance-based estimator (TwoNN: k = 2, MLE).
    wanted = [2 if n.startswith("twonn") else int((measure_options or {}).get(n, {}).get("k", 20))
              for n in names if n in ("twonn", "twonn_mle", "mle_id")]
    token = _PREFETCH_K.set(max(wanted, default=0))
    try:
        p = depth_profile(feats, names, repeats=repeats, n_samples=m, seed=seed,
                          measure_options=measure_options, device=device, progress=progress)
    finally:
        _PREFETCH_K.reset(token)
        _SHARED.clear()
    p.meta.update(fraction=fraction, dims=[feats.dims[n] for n in feats.names])
    return p


# =============================================================================== phases
@dataclass
class IDPhases:
    """The expansion and compression phases of an ID curve; :func:`dyngraph.plot` draws them
    (optionally beside other profiles) and :func:`dyngraph.log` logs them.

    Attributes:
        layers: The curve's layers.
        shape: ``'hunchback'`` (a significant rise, then a significant fall), ``'rising'``,
            ``'falling'`` or ``'flat'``.
        peak_index, peak_layer, peak_value: Where the ID is largest.
        start_index, end_index: The minima before and after the peak (the ends of the phases).
        rise, fall: ``ID(peak) − ID(start)`` and ``ID(peak) − ID(end)``.
        rel_rise, rel_fall: The same relative to the peak value.
        expansion, compression: Layer names from ``start`` to the peak and from the peak to ``end``
            (empty when the rise or fall is not significant).
        significant_rise, significant_fall: Whether each exceeds ``tol`` (relative) and, when the
            curve has repeats, ``n_sigma`` combined standard deviations.
        estimator: The metric the phases were read from.
        profile: That metric's one-metric :class:`~dyngraph.DepthProfile`.

    Returned by :func:`id_phases`.

    Example:
        >>> import torch, dyngraph as dg
        >>> p = dg.DepthProfile(['in', 'c1', 'c2', 'fc'], 'twonn', torch.tensor([4., 9., 7., 3.]))
        >>> ph = dg.measures.id_phases(p)
        >>> ph.shape, ph.peak_layer, ph.peak_value, ph.rise, ph.fall, ph.compression
        ('hunchback', 'c1', 9.0, 5.0, 6.0, ['c1', 'c2', 'fc'])
        >>> ph.summary().split('; ')[0]
        "hunchback: peak 9.00 at 'c1' (layer 1)"
    """

    layers: List[str]
    shape: str
    peak_index: int
    peak_layer: str
    peak_value: float
    start_index: int
    end_index: int
    rise: float
    fall: float
    rel_rise: float
    rel_fall: float
    expansion: List[str]
    compression: List[str]
    significant_rise: bool
    significant_fall: bool
    estimator: str
    profile: "DepthProfile"

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready fields (the profile as its own dict)."""
        return dict(vars(self), profile=self.profile.to_dict())

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "IDPhases":
        """Inverse of :meth:`to_dict`."""
        from ..profiles._profile import DepthProfile
        kw = {k: d[k] for k in cls.__dataclass_fields__}
        return cls(**{**kw, "profile": DepthProfile.from_dict(d["profile"])})

    def summary(self) -> str:
        """One line: shape, peak, rise and fall."""
        return (f"{self.shape}: peak {self.peak_value:.2f} at {self.peak_layer!r} (layer "
                f"{self.peak_index}); rise {self.rise:+.2f} ({self.rel_rise:.0%}) over "
                f"{len(self.expansion)} layers, fall {-self.fall:+.2f} ({self.rel_fall:.0%}) over "
                f"{len(self.compression)} layers")


def id_phases(profile: "DepthProfile", metric: Optional[str] = None, tol: float = 0.1,
              n_sigma: float = 2.0) -> IDPhases:
    """Finds the expansion (rise to the peak) and compression (fall after it) phases.

    The peak is the layer with the largest mean ID; the expansion phase runs from the lowest
    layer before it, the compression phase to the lowest layer after it. A phase counts when its
    change is at least ``tol`` of the peak value and, for profiles with repeats, more than
    ``n_sigma`` times ``sqrt(std_peak² + std_end²)``.

    Args:
        profile: A :class:`~dyngraph.DepthProfile` (from :func:`id_curve` or
            :func:`dyngraph.depth_profile`).
        metric: The metric to read; may be left out for a one-metric profile.
        tol: Smallest relative rise or fall that counts, ``>= 0``.
        n_sigma: Significance in standard deviations over repeats, ``>= 0``.

    Returns:
        An :class:`IDPhases`.

    Example:
        >>> import torch, dyngraph as dg
        >>> p = dg.DepthProfile(['in', 'c1', 'c2', 'c3', 'fc'], 'twonn',
        ...                     torch.tensor([10., 25., 30., 12., 6.]))
        >>> ph = dg.measures.id_phases(p)
        >>> ph.shape, ph.peak_layer, ph.expansion, ph.compression
        ('hunchback', 'c2', ['in', 'c1', 'c2'], ['c2', 'c3', 'fc'])
        >>> len(dg.plot(ph).axes)   # the curve, phases shaded (profiles=... adds panels)
        1
    """
    from ..profiles._profile import DepthProfile
    if not isinstance(profile, DepthProfile):
        raise TypeError(f"profile must be a dg.DepthProfile, got {type(profile).__name__}")
    if metric is None:
        if len(profile.metrics) != 1:
            raise ValueError(f"profile has metrics {profile.metrics}: choose one with metric=")
        metric = profile.metrics[0]
    if not isinstance(metric, str) or metric not in profile.metrics:
        raise ValueError(f"metric must be one of the profile's metrics {profile.metrics}, got "
                         f"metric={metric!r}")
    if len(profile) == 0:
        raise ValueError("profile has no layers")
    for name, value in (("tol", tol), ("n_sigma", n_sigma)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {name}={value!r}")
    one = profile[metric]
    v, std = one.values, one.errors
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"metric {metric!r} has non-finite values: {v.tolist()}")
    peak = int(v.argmax())
    start = int(v[:peak + 1].argmin())
    end = peak + int(v[peak:].argmin())
    pv = float(v[peak])
    scale = abs(pv) if pv != 0 else 1.0
    rise, fall = pv - float(v[start]), pv - float(v[end])

    def significant(change: float, other: int) -> bool:
        noise = n_sigma * math.sqrt(float(std[peak]) ** 2 + float(std[other]) ** 2)
        return change > 0 and change / scale >= tol and change > noise

    sig_r, sig_f = significant(rise, start), significant(fall, end)
    shape = {(True, True): "hunchback", (True, False): "rising", (False, True): "falling",
             (False, False): "flat"}[(sig_r, sig_f)]
    layers = list(one.layers)
    return IDPhases(layers, shape, peak, layers[peak], pv, start, end, rise, fall, rise / scale,
                    fall / scale, layers[start:peak + 1] if sig_r else [],
                    layers[peak:end + 1] if sig_f else [], sig_r, sig_f, metric, one)


# ============================================================================ registered measures
#: Each estimator's settings (``measure_options``) with their defaults.
_OPTIONS: Dict[str, Dict[str, Any]] = {}
_SEARCH = {"search": "auto", "backend": "matmul"}


def _register(name: str, description: str, compute: Callable[..., Any], **options: Any) -> None:
    """Registers ``float(compute(x, **settings))`` as the label-free layer measure ``name``;
    ``options`` are its settings with their defaults."""
    def measure(x: Tensor, y: Optional[Tensor], graph: Optional[Data], **settings: Any) -> float:
        _check_settings(name, settings)
        return float(compute(x, **{**options, **settings}))
    _OPTIONS[name] = options
    register(name, graph=False, labels=False, description=description)(measure)


_register("twonn", "TwoNN intrinsic dimension (Facco et al. 2017), linear fit",
          partial(twonn, method="linear"), discard_fraction=0.1, drop_ties=True, **_SEARCH)
_register("twonn_mle", "TwoNN intrinsic dimension, the censored Pareto MLE",
          partial(twonn, method="mle"), discard_fraction=0.1, drop_ties=True, **_SEARCH)
_register("mle_id", "Levina-Bickel MLE intrinsic dimension (k = 20)", mle_id, k=20,
          unbiased=False, comb="mle", **_SEARCH)
_register("participation_ratio", "participation ratio (Σλ)²/Σλ² of the covariance spectrum",
          participation_ratio)
_register("participation_ratio_corrected", "participation ratio with the U-statistic "
          "finite-sample bias correction", partial(participation_ratio, bias_correction=True))
_register("pca_dim", "principal components explaining 90% of the variance", pca_dim,
          threshold=0.9)
_register("local_participation_ratio", "mean participation ratio of the k = 20 "
          "nearest-neighbour neighbourhoods", partial(_mean_local, method="pr", threshold=0.9),
          k=20, **_SEARCH)
_register("local_pca_dim", "mean PCA dimension (90%) of the k = 20 nearest-neighbour "
          "neighbourhoods", partial(_mean_local, method="pca"), k=20, threshold=0.9, **_SEARCH)
#: The registered ID measures: names accepted by :func:`id_curve`, :func:`subsample_id`,
#: :func:`block_analysis` and :func:`dyngraph.depth_profile`.
ESTIMATORS = tuple(_OPTIONS)
