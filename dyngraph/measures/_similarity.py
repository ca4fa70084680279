"""Similarity between two representations of the same N inputs, and layer × layer matrices.

Every measure takes two feature matrices ``x [N, Dx]`` and ``y [N, Dy]`` whose rows are the same
inputs in the same order (``Dx`` and ``Dy`` may differ; inputs with more axes are flattened).

Measures (``higher = more similar`` unless noted):

* ``'cka'`` / ``'cka_unbiased'``: linear CKA (Kornblith et al. 2019), with the biased HSIC
  (centred Gram matrices) or the unbiased one (Song et al. 2012, written as U-centred Gram
  matrices as in Székely & Rizzo 2014). Accumulated in float64. Invariant to orthogonal
  transforms, isotropic scaling and translation of either input.
* ``'knn_overlap'``: mean Jaccard index of each input's k-nearest-neighbour sets.
* ``'mutual_knn'``: mutual-kNN alignment of Huh et al. 2024: mean ``|N_x(i) ∩ N_y(i)| / k``.
* ``'graph'``: graph-based similarity in the spirit of Chen et al. 2021 (GBS): the mean over
  samples of the cosine between the two weighted adjacency rows of sample ``i`` (kNN graphs with
  cosine weights, symmetrised as the snapshots are, or the full cosine graph with ``k=None``).
* ``'modularity_distance'``: ``|Q_x − Q_y|`` (a distance; 0 = same), Q the modularity of each
  kNN graph with the labels as communities (Lu et al. 2022).

Streaming: :class:`StreamingCKA` accumulates exact sufficient statistics in float64 batch by batch
(memory ``O(Dx·Dy)``, independent of N); :class:`MinibatchCKA` is the minibatch estimator of
Nguyen et al. 2021 (mean HSIC over batches, memory ``O(L·B²)``), for whole layer × layer matrices
streamed from a loader.

Every pairwise value can get a permutation-null p-value (:func:`permutation_test`): the rows of
``y`` are shuffled relative to ``x``, reusing the per-representation work (Gram matrices, kNN
lists, graphs), so a permutation costs ``O(N²)`` for CKA and ``O(N·k²)`` or ``O(E log E)`` for the
graph measures.

Layer × layer matrices: each measure is registered (bottom of this module) as a pair measure whose
``prepare`` step is a :class:`RepresentationSummary`; :func:`dyngraph.layer_matrix` prepares every
layer once and fills the cells with :func:`fill_matrix`.
"""
from __future__ import annotations

import math
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import torch
from torch import Tensor

from .._pyg import coalesce, scatter
from .._validate import (
    check_choice,
    check_edge_index,
    check_edge_weight,
    check_features,
    check_flag,
    check_k,
    check_labels,
    check_positive_int,
    check_same_device,
)
from ..graphs._graph import SYMMETRIZE
from ..graphs._graph import symmetrize as _symmetrize
from ..graphs._knn import edges_from_knn, nearest_neighbors, normalize_rows
from ._modularity import modularity_q
from ._registry import register

MEASURES = ("cka", "cka_unbiased", "knn_overlap", "mutual_knn", "graph", "modularity_distance")
#: Measures where a smaller value means more similar.
DISTANCES = ("modularity_distance",)
CKA_FORMS = ("auto", "features", "gram")

_BLOCK = 1 << 24  # elements per temporary block in blocked loops


def _step(elements_per_item: int) -> int:
    """How many items of ``elements_per_item`` elements fit one temporary block (at least 1)."""
    return max(1, _BLOCK // max(elements_per_item, 1))


# ================================================================================== input checks
def _flat(x: Tensor, name: str) -> Tensor:
    check_features(x, name, ndim=None, min_rows=2)
    if x.dim() < 2:
        raise ValueError(f"{name} must be [N, D] (or [N, ...], flattened), got shape "
                         f"{tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def _check_pair(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same N inputs in the same order; got x with "
                         f"N={x.shape[0]} rows and y with N={y.shape[0]} rows")
    check_same_device(x=x, y=y)
    return x, y


# ================================================================================== linear CKA
# The one HSIC core: centring (float64), the (U-)centred Gram, the unbiased correction in feature
# space, the self-HSIC check and the CKA ratio. _CKAState (exact, one representation at a time),
# StreamingCKA (exact, from sufficient statistics), MinibatchCKA (mean HSIC over batches, hence
# dg.compare.stream_cka) and the permutation null all go through these functions.
def _centered(x: Tensor) -> Tensor:
    x = x.to(torch.float64)
    return x - x.mean(0, keepdim=True)


def _gram(xc: Tensor, unbiased: bool, float32_product: bool = False) -> Tensor:
    """The centred (biased) or U-centred (unbiased) Gram ``[N, N]`` of centred features
    ``xc [N, D]``; the product runs in float32 when asked (the result is float64)."""
    k = (xc.float() @ xc.float().T).double() if float32_product else xc @ xc.T
    return u_center(k) if unbiased else k


def _unbiased_hsic(h: Tensor, trace_a: Tensor, trace_b: Tensor, row_products: Tensor,
                   n: int) -> Tensor:
    """``⟨Ũ_K, Ũ_L⟩`` from the feature-space terms: ``h = ‖AcᵀBc‖²``, the traces of the two
    centred Grams and ``Σ_i K_ii L_ii`` (any leading batch shape)."""
    return h + trace_a * trace_b / ((n - 1) * (n - 2)) - n / (n - 2) * row_products


def _check_self_hsic(h: Tensor, trace: Tensor, name: str, where: str = "",
                     hint: str = "") -> None:
    """Raises unless ``HSIC(x, x)`` is clearly positive (relative to ``tr(K)²``)."""
    tr = float(trace)
    if tr > 0 and float(h) > 1e-12 * tr ** 2:
        return
    cause = ("zero variance: every row is the same after centring" if not tr > 0
             else "too few samples or degenerate features")
    raise ValueError(f"HSIC({name}, {name}) = {float(h):.3g} is not positive{where} ({cause}); "
                     f"CKA is undefined{hint}")


def _cka_ratio(hxy: Tensor, hxx: Tensor, hyy: Tensor) -> Tensor:
    return hxy / torch.sqrt(hxx * hyy)


def u_center(gram: Tensor) -> Tensor:
    """U-centres a symmetric Gram matrix (Székely & Rizzo 2014), in its own dtype.

    With ``Ũ = u_center(K)``, the unbiased HSIC estimator of Song et al. (2012) is
    ``⟨Ũ_K, Ũ_L⟩ / (n (n − 3))``.

    Args:
        gram: ``[N, N]`` symmetric, ``N >= 4``.

    Returns:
        ``[N, N]`` with a zero diagonal and zero row sums.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> u = dg.measures.u_center(x @ x.T)
        >>> bool(u.diagonal().abs().max() == 0), bool(u.sum(1).abs().max() < 1e-12)
        (True, True)
    """
    n = gram.shape[0]
    if gram.dim() != 2 or gram.shape[1] != n:
        raise ValueError(f"gram must be square [N, N], got shape {tuple(gram.shape)}")
    if n < 4:
        raise ValueError(f"U-centring needs N >= 4 samples, got N={n}")
    k = gram.clone()
    k.fill_diagonal_(0)
    row = k.sum(1)
    total = row.sum()
    u = k - row.unsqueeze(1) / (n - 2) - row.unsqueeze(0) / (n - 2) + total / ((n - 1) * (n - 2))
    u.fill_diagonal_(0)
    return u


class _CKAState:
    """One representation's share of linear CKA, computed once (float64).

    ``form='features'`` keeps the centred features ``[N, D]`` (cheaper when ``D <= N``);
    ``form='gram'`` keeps the centred (biased) or U-centred (unbiased) Gram ``[N, N]``.
    ``self_hsic`` is the unnormalised HSIC of the representation with itself.
    """

    def __init__(self, x: Tensor, unbiased: bool, name: str = "x", form: str = "auto"):
        check_choice(form, "cka_form", CKA_FORMS)
        check_flag(unbiased, "unbiased")
        n, d = x.shape
        if unbiased and n < 4:
            raise ValueError(f"unbiased CKA needs at least 4 samples, got N={n} rows in {name}")
        self.n, self.unbiased, self.name = n, bool(unbiased), name
        if form == "auto":
            form = "features" if d <= n else "gram"
        xc = _centered(x)
        self.row_sq = (xc * xc).sum(1)                      # diag of K, [N]
        self.trace = self.row_sq.sum()                      # tr(K)
        self.xc: Optional[Tensor] = xc if form == "features" else None
        self.gram: Optional[Tensor] = None if form == "features" else _gram(xc, unbiased)
        self.self_hsic = _hsic(self, self)
        _check_self_hsic(self.self_hsic, self.trace, name,
                         hint=" (use unbiased=False or more samples)" if unbiased else "")

    def gram_matrix(self) -> Tensor:
        """The (U-)centred Gram; built once from the features when first needed (pairs with a
        Gram-form state), then kept."""
        if self.gram is None:
            assert self.xc is not None
            self.gram = _gram(self.xc, self.unbiased)
        return self.gram


def _hsic(a: _CKAState, b: _CKAState) -> Tensor:
    """Unnormalised HSIC: ``⟨HKH, HLH⟩`` (biased) or ``⟨Ũ_K, Ũ_L⟩ = n(n−3)·HSIC_u`` (unbiased)."""
    if a.xc is not None and b.xc is not None:
        if a.xc.shape[1] * b.xc.shape[1] <= a.n * a.n:
            cross = a.xc.T @ b.xc
            h = (cross * cross).sum()
        else:  # ‖XᵀY‖²_F = ⟨XXᵀ, YYᵀ⟩ when the feature product would be larger than N²
            h = ((a.xc @ a.xc.T) * (b.xc @ b.xc.T)).sum()
        if a.unbiased:
            h = _unbiased_hsic(h, a.trace, b.trace, (a.row_sq * b.row_sq).sum(), a.n)
        return h
    return (a.gram_matrix() * b.gram_matrix()).sum()


def _cka_from_states(a: _CKAState, b: _CKAState) -> float:
    return float(_cka_ratio(_hsic(a, b), a.self_hsic, b.self_hsic))


def linear_cka(x: Tensor, y: Tensor, unbiased: bool = False, form: str = "auto") -> float:
    r"""Linear centred kernel alignment between two representations of the same inputs.

    ``CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` with ``K = XXᵀ``, ``L = YYᵀ``
    (Kornblith et al. 2019). Biased: ``HSIC ∝ tr(HKH·HLH) = ‖XcᵀYc‖²_F`` (``Xc`` column-centred).
    Unbiased: the U-statistic of Song et al. (2012), ``HSIC_u ∝ ⟨Ũ_K, Ũ_L⟩``; it can be slightly
    negative for unrelated inputs. Computed in float64 in feature space (``D <= N``) or with
    ``N × N`` Gram matrices (``D > N``), whichever is smaller.

    Args:
        x: ``[N, Dx]`` (or ``[N, ...]``, flattened), finite floats.
        y: ``[N, Dy]``, the same inputs in the same order.
        unbiased: Use the unbiased HSIC estimator (needs ``N >= 4``).
        form: ``'auto'``, ``'features'`` or ``'gram'`` (the computation path; same value).

    Returns:
        CKA as a float; 1 for ``y = x·Q·s + b`` (``Q`` orthogonal, ``s > 0``).

    Raises:
        ValueError: different N, non-finite values, or a representation with zero variance
            (CKA undefined) — never a NaN.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(100, 8, generator=g)
        >>> q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
        >>> round(dg.measures.linear_cka(x, 3 * x @ q + 1), 6)
        1.0
        >>> dg.measures.linear_cka(x, torch.randn(100, 8, generator=g)) < 0.2
        True
    """
    x, y = _check_pair(x, y)
    return _cka_from_states(_CKAState(x, unbiased, "x", form), _CKAState(y, unbiased, "y", form))


class StreamingCKA:
    """Exact linear CKA (biased or unbiased) of ``(x, y)`` accumulated batch by batch in float64.

    Keeps sufficient statistics (``XᵀY``, ``XᵀX``, ``YᵀY``, column sums and row-norm moments,
    rows shifted by the first batch's means against cancellation), so memory is
    ``O(Dx·Dy + Dx² + Dy²)`` whatever N is, and :meth:`compute` equals
    :func:`~dyngraph.measures.linear_cka` on the concatenated batches up to float64 rounding.

    Args:
        unbiased: Unbiased HSIC estimator (Song et al. 2012).

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(300, 5, generator=g), torch.randn(300, 7, generator=g)
        >>> acc = dg.measures.StreamingCKA()
        >>> for i in range(0, 300, 64):
        ...     acc.update(x[i:i + 64], y[i:i + 64])
        >>> abs(acc.compute() - dg.measures.linear_cka(x, y)) < 1e-10
        True
    """

    def __init__(self, unbiased: bool = False) -> None:
        self.unbiased = check_flag(unbiased, "unbiased")
        self.reset()

    def reset(self) -> None:
        """Forgets every row seen."""
        self.n = 0
        self._shift: Optional[Tuple[Tensor, Tensor]] = None
        self._s: Dict[str, Tensor] = {}

    def __repr__(self) -> str:
        return f"StreamingCKA(unbiased={self.unbiased}, n={self.n})"

    def update(self, x: Tensor, y: Tensor) -> None:
        """Adds a batch of rows ``x [B, Dx]``, ``y [B, Dy]`` (the same B inputs)."""
        check_features(x, "x", ndim=None, min_rows=1)
        check_features(y, "y", ndim=None, min_rows=1)
        if x.dim() < 2 or y.dim() < 2:
            raise ValueError(f"x and y must be [B, D] batches, got shapes {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same rows in a batch, got {x.shape[0]} and "
                             f"{y.shape[0]}")
        check_same_device(x=x, y=y)
        x, y = x.to(torch.float64), y.to(torch.float64)
        if self._shift is None:
            self._shift = (x.mean(0), y.mean(0))
        sx0, sy0 = self._shift
        if x.shape[1] != sx0.numel() or y.shape[1] != sy0.numel():
            raise ValueError(f"feature sizes changed between batches: first ({sx0.numel()}, "
                             f"{sy0.numel()}), now ({x.shape[1]}, {y.shape[1]})")
        x, y = x - sx0, y - sy0
        rx, ry = (x * x).sum(1), (y * y).sum(1)
        # Each batch term is computed and added in turn: one D × D product in memory at a time.
        batch: Dict[str, Callable[[], Tensor]] = {
            "sx": lambda: x.sum(0), "sy": lambda: y.sum(0), "xty": lambda: x.T @ y,
            "xtx": lambda: x.T @ x, "yty": lambda: y.T @ y, "rx": rx.sum, "ry": ry.sum,
            "rxry": lambda: (rx * ry).sum(), "rxrx": lambda: (rx * rx).sum(),
            "ryry": lambda: (ry * ry).sum(), "x_ry": lambda: x.T @ ry, "y_rx": lambda: y.T @ rx,
            "x_rx": lambda: x.T @ rx, "y_ry": lambda: y.T @ ry}
        for k, term in batch.items():
            v = term()
            if k not in self._s:
                self._s[k] = torch.zeros_like(v)
            self._s[k] += v
        self.n += x.shape[0]

    def _centred_terms(self, a: str, b: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """From the shifted sums of ``a`` and ``b`` (``'x'`` or ``'y'``): ``‖AcᵀBc‖²``,
        ``Σ‖ac_i‖²``, ``Σ‖bc_i‖²``, ``Σ‖ac_i‖²‖bc_i‖²``."""
        s, n = self._s, self.n
        sa, sb, atb, ra, rb = s["s" + a], s["s" + b], s[a + "t" + b], s["r" + a], s["r" + b]
        ma, mb = sa / n, sb / n
        cross = atb - n * torch.outer(ma, mb)
        ma2, mb2 = ma @ ma, mb @ mb
        tra, trb = ra - n * ma2, rb - n * mb2
        # Σ (ra_i − 2 a_i·ma + |ma|²)(rb_i − 2 b_i·mb + |mb|²)
        rr = (s[f"r{a}r{b}"] - 2 * mb @ s[f"{b}_r{a}"] + mb2 * ra - 2 * ma @ s[f"{a}_r{b}"]
              + 4 * ma @ atb @ mb - 2 * mb2 * (ma @ sa) + ma2 * rb - 2 * ma2 * (mb @ sb)
              + n * ma2 * mb2)
        return (cross * cross).sum(), tra, trb, rr

    def compute(self) -> float:
        """CKA of everything seen so far."""
        n = self.n
        if n < (4 if self.unbiased else 2):
            raise ValueError(f"StreamingCKA has seen {n} rows; need at least "
                             f"{4 if self.unbiased else 2}")
        h: Dict[str, Tensor] = {}
        tr: Dict[str, Tensor] = {}
        for a, b in ("xy", "xx", "yy"):
            f, tr[a], tr[b], rr = self._centred_terms(a, b)
            h[a + b] = _unbiased_hsic(f, tr[a], tr[b], rr, n) if self.unbiased else f
        for name in "xy":
            _check_self_hsic(h[name + name], tr[name], name, where=f" over the {n} rows seen")
        return float(_cka_ratio(h["xy"], h["xx"], h["yy"]))


def _as_layer_list(feats: Any, name: str) -> List[Tensor]:
    if isinstance(feats, Tensor):
        return [feats]
    if isinstance(feats, Mapping):
        feats = list(feats.values())
    if not isinstance(feats, (list, tuple)) or not feats:
        raise TypeError(f"{name} must be a Tensor or a non-empty list/dict of Tensors [B, ...], "
                        f"got {type(feats).__name__}")
    for i, f in enumerate(feats):
        if not isinstance(f, Tensor):
            raise TypeError(f"{name}[{i}] must be a Tensor, got {type(f).__name__}")
    return list(feats)


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen, Raghu & Kornblith 2021) for whole layer × layer matrices.

    Each batch contributes ``HSIC(K_i, L_j)`` for every pair of layers, from its own ``B × B``
    Gram matrices (U-centred for the unbiased estimator, the default and the paper's choice);
    the result is ``mean_b HSIC(K, L) / sqrt(mean_b HSIC(K, K) · mean_b HSIC(L, L))``, an
    estimate of the population CKA that needs only one batch of features at a time (memory
    ``O(L·B²)``). Sums are float64. :func:`dyngraph.compare.stream_cka` feeds it from models.

    Args:
        unbiased: Unbiased HSIC per batch (batches need ``B >= 4``).
        float64_gram: Compute each batch's Gram product in float64 even for float32 features
            (default: features are centred in float64, the product runs in float32, and the
            U-centring and all sums run in float64 — about 2× faster, ~1e-7 relative error).

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(512, 16, generator=g)
        >>> layers = [x, x @ torch.randn(16, 32, generator=g), torch.randn(512, 8, generator=g)]
        >>> acc = dg.measures.MinibatchCKA()
        >>> for i in range(0, 512, 128):
        ...     acc.update([f[i:i + 128] for f in layers])
        >>> m = acc.compute()
        >>> m.shape, round(float(m[0, 0]), 6), bool(m[0, 2] < 0.1)
        (torch.Size([3, 3]), 1.0, True)
    """

    def __init__(self, unbiased: bool = True, float64_gram: bool = False) -> None:
        self.unbiased = check_flag(unbiased, "unbiased")
        self.float64_gram = check_flag(float64_gram, "float64_gram")
        self.reset()

    def reset(self) -> None:
        """Forgets every batch seen."""
        self.n_batches = 0
        self.n_rows = 0
        self.cross: Optional[Tensor] = None
        self.self_x: Optional[Tensor] = None
        self.self_y: Optional[Tensor] = None
        self._symmetric: Optional[bool] = None

    def __repr__(self) -> str:
        return (f"MinibatchCKA(unbiased={self.unbiased}, batches={self.n_batches}, "
                f"rows={self.n_rows})")

    def _grams(self, feats: List[Tensor], name: str) -> Tensor:
        b = feats[0].shape[0]
        out = []
        for i, f in enumerate(feats):
            if f.shape[0] != b:
                raise ValueError(f"{name}[{i}] has {f.shape[0]} rows, {name}[0] has {b}: every "
                                 f"layer must hold the same batch")
            if not f.is_floating_point():
                raise TypeError(f"{name}[{i}] must be a floating-point Tensor, got {f.dtype}")
            f = f.reshape(b, -1)
            # Centre in float64 (this removes the cancellation that makes uncentred float32
            # HSIC go negative); the Gram product then runs in the input's precision (at least
            # float32) and everything after it — U-centring, HSIC sums — in float64.
            k = _gram(_centered(f), self.unbiased,
                      float32_product=f.dtype != torch.float64 and not self.float64_gram)
            if not bool(torch.isfinite(k).all()):
                raise ValueError(f"{name}[{i}] contains NaN or inf values")
            # ⟨k_x, k_y⟩ must be this batch's HSIC: ⟨Ũ_K, Ũ_L⟩ / (b(b−3)) or ⟨HKH, HLH⟩ / (b−1)²,
            # so each Gram carries the square root of the normaliser.
            k = k / math.sqrt(b * (b - 3)) if self.unbiased else k / (b - 1)
            out.append(k.reshape(-1))
        return torch.stack(out)

    def update(self, xs: Union[Tensor, Sequence[Tensor]],
               ys: Optional[Union[Tensor, Sequence[Tensor]]] = None) -> None:
        """Adds one batch: ``xs`` (a list of ``[B, ...]``, one per layer of model A) and optionally
        ``ys`` (model B's layers on the same B inputs); without ``ys`` the matrix is A × A."""
        xs = _as_layer_list(xs, "xs")
        b = xs[0].shape[0]
        if b < (4 if self.unbiased else 2):
            raise ValueError(f"a batch of {b} rows is too small for the "
                             f"{'unbiased' if self.unbiased else 'biased'} HSIC (needs >= "
                             f"{4 if self.unbiased else 2}); drop it or use larger batches")
        symmetric = ys is None
        if self._symmetric is not None and symmetric != self._symmetric:
            raise ValueError("update() was called both with and without ys; use one form")
        self._symmetric = symmetric
        gx = self._grams(xs, "xs")
        if ys is None:
            gy = gx
        else:
            ys = _as_layer_list(ys, "ys")
            if ys[0].shape[0] != b:
                raise ValueError(f"xs and ys must hold the same batch, got {b} and "
                                 f"{ys[0].shape[0]} rows")
            check_same_device(xs=xs[0], ys=ys[0])
            gy = self._grams(ys, "ys")
        cross = gx @ gy.T
        sx, sy = (gx * gx).sum(1), (gy * gy).sum(1)
        if self.cross is None or self.self_x is None or self.self_y is None:
            self.cross, self.self_x, self.self_y = cross, sx, sy
        else:
            if cross.shape != self.cross.shape:
                raise ValueError(f"the number of layers changed between batches: "
                                 f"{tuple(self.cross.shape)} then {tuple(cross.shape)}")
            self.cross += cross
            self.self_x += sx
            self.self_y += sy
        self.n_batches += 1
        self.n_rows += b

    def compute(self) -> Tensor:
        """The float64 CKA matrix ``[Lx, Ly]``."""
        if self.cross is None or self.self_x is None or self.self_y is None:
            raise ValueError("MinibatchCKA.compute() before any update()")
        for name, s in (("xs", self.self_x), ("ys", self.self_y)):
            bad = (s <= 0).nonzero().flatten().tolist()
            if bad:
                raise ValueError(f"mean HSIC of {name}[{bad[0]}] with itself is "
                                 f"{float(s[bad[0]]):.3g} <= 0 over {self.n_batches} batches "
                                 f"(a constant layer or too few samples); CKA is undefined for "
                                 f"layers {bad[:10]}")
        return _cka_ratio(self.cross, self.self_x.unsqueeze(1), self.self_y.unsqueeze(0))


# ================================================================================== kNN measures
def _knn_lists(x: Tensor, k: int, metric: str, backend: str, name: str = "x"
               ) -> Tuple[Tensor, Tensor]:
    try:
        return nearest_neighbors(x, k, metric=metric, backend=backend)
    except ValueError as exc:
        if name == "x":
            raise
        raise ValueError(f"{name}: {exc}") from None


def _overlap_counts(ia: Tensor, ib: Tensor) -> Tensor:
    """``|row_i(ia) ∩ row_i(ib)|`` for index lists ``[..., N, ka]``, ``[..., N, kb]`` (blocked)."""
    ka, kb = ia.shape[-1], ib.shape[-1]
    flat_a, flat_b = ia.reshape(-1, ka), ib.reshape(-1, kb)
    step = _step(ka * kb)
    out = torch.empty(flat_a.shape[0], dtype=torch.long, device=ia.device)
    for s in range(0, flat_a.shape[0], step):
        eq = flat_a[s:s + step].unsqueeze(2) == flat_b[s:s + step].unsqueeze(1)
        out[s:s + step] = eq.sum((1, 2))
    return out.reshape(ia.shape[:-1])


def _knn_score(inter: Tensor, k: int, measure: str) -> Tensor:
    """Per-sample Jaccard index (``'knn_overlap'``) or shared share (``'mutual_knn'``) of the
    float64 intersection sizes ``inter``."""
    return inter / (2 * k - inter) if measure == "knn_overlap" else inter / k


def _knn_pair(x: Tensor, y: Tensor, k: int, metric: str, backend: str) -> Tuple[Tensor, Tensor]:
    x, y = _check_pair(x, y)
    check_k(k, x.shape[0])
    check_choice(metric, "metric", ("cosine", "euclidean"))
    return _knn_lists(x, k, metric, backend)[1], _knn_lists(y, k, metric, backend, "y")[1]


def knn_overlap(x: Tensor, y: Tensor, k: int = 10, metric: str = "cosine",
                backend: str = "auto") -> float:
    """Mean Jaccard index of each input's k-nearest-neighbour sets in ``x`` and in ``y``.

    ``(1/N) Σ_i |N_x(i) ∩ N_y(i)| / |N_x(i) ∪ N_y(i)|`` with exact kNN from
    :func:`dyngraph.graphs.nearest_neighbors` (no self-neighbour, ties to the smaller index).

    Args:
        x: ``[N, Dx]``.
        y: ``[N, Dy]``, the same inputs.
        k: Neighbours, ``1 <= k < N``.
        metric: ``'cosine'`` (invariant to rotation and isotropic scaling) or ``'euclidean'``.
        backend: kNN backend (see :func:`dyngraph.graphs.nearest_neighbors`).

    Returns:
        A float in ``[0, 1]``; 1 when the neighbour sets are identical.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
        >>> dg.measures.knn_overlap(x, 2 * x, k=5)
        1.0
    """
    ia, ib = _knn_pair(x, y, k, metric, backend)
    return float(_knn_score(_overlap_counts(ia, ib).double(), k, "knn_overlap").mean())


def mutual_knn(x: Tensor, y: Tensor, k: int = 10, metric: str = "cosine",
               backend: str = "auto") -> float:
    """Mutual k-nearest-neighbour alignment (Huh, Cheung, Wang & Isola 2024).

    ``(1/N) Σ_i |N_x(i) ∩ N_y(i)| / k``: the average share of each input's k nearest neighbours
    that the two representations agree on. Huh et al. L2-normalise the features and rank by inner
    product, which is ``metric='cosine'`` here.

    Args:
        x: ``[N, Dx]``.
        y: ``[N, Dy]``, the same inputs.
        k: Neighbours, ``1 <= k < N``.
        metric: ``'cosine'`` (the paper) or ``'euclidean'``.
        backend: kNN backend.

    Returns:
        A float in ``[0, 1]``; about ``k / (N − 1)`` for unrelated representations.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 8, generator=g)
        >>> y = torch.randn(200, 8, generator=g)
        >>> dg.measures.mutual_knn(x, x, k=10), dg.measures.mutual_knn(x, y) < 0.2
        (1.0, True)
    """
    ia, ib = _knn_pair(x, y, k, metric, backend)
    return float(_overlap_counts(ia, ib).double().mean() / k)


# ================================================================================== graph measure
def _graph_from_knn(vals: Tensor, idx: Tensor, metric: str, symmetrize: Optional[str],
                    weighted: bool = True) -> Tuple[Tensor, Tensor]:
    """The graph of :func:`dyngraph.knn_edges` (then symmetrised) from precomputed kNN lists;
    unit weights when not ``weighted``."""
    ei, w = edges_from_knn(vals, idx, metric if weighted else "euclidean")
    if symmetrize is not None:
        return _symmetrize(ei, w, idx.shape[0], symmetrize)
    return ei.flip(0), w          # directed: row i holds i's own k neighbours


class _SparseRows:
    """A graph's adjacency rows as sorted keys ``row·N + col`` with weights and row norms."""

    def __init__(self, edge_index: Tensor, edge_weight: Tensor, num_nodes: int, name: str):
        ei, w = coalesce(edge_index, edge_weight.to(torch.float64), num_nodes, reduce="sum")
        self.n = num_nodes
        self.row, self.col, self.w = ei[0], ei[1], w
        self.key = ei[0] * num_nodes + ei[1]
        self.norm = scatter(w * w, ei[0], dim=0, dim_size=num_nodes, reduce="sum").sqrt()
        zero = self.norm <= 0
        if bool(zero.any()):
            bad = zero.nonzero().flatten()[:5].tolist()
            raise ValueError(f"{name}: {int(zero.sum())} nodes have an all-zero adjacency row "
                             f"(e.g. {bad}); the row cosine is undefined. Use weighted=False or a "
                             f"larger k")


def _row_cosine(a: _SparseRows, b: _SparseRows) -> Tensor:
    """Per-row cosine ``[N]`` between two sparse adjacency matrices on the same nodes."""
    pos = torch.searchsorted(b.key, a.key).clamp_max(max(b.key.numel() - 1, 0))
    hit = b.key[pos] == a.key
    dot = scatter(a.w[hit] * b.w[pos[hit]], a.row[hit], dim=0, dim_size=a.n, reduce="sum")
    return dot / (a.norm * b.norm)


def _dense_row_cosine(x: Tensor, y: Tensor) -> Tensor:
    """Row cosine between full cosine-similarity graphs (no self-loops), blocked in rows."""
    xn = normalize_rows(x.to(torch.float64), "x")
    yn = normalize_rows(y.to(torch.float64), "y")
    n = x.shape[0]
    step = _step(n)
    out = torch.empty(n, dtype=torch.float64, device=x.device)
    for s in range(0, n, step):
        sx, sy = xn[s:s + step] @ xn.T, yn[s:s + step] @ yn.T
        rows = torch.arange(sx.shape[0], device=x.device)
        sx[rows, rows + s] = 0
        sy[rows, rows + s] = 0
        den = sx.norm(dim=1) * sy.norm(dim=1)
        if bool((den <= 0).any()):
            raise ValueError("a sample has zero cosine similarity to every other sample; the row "
                             "cosine is undefined")
        out[s:s + step] = (sx * sy).sum(1) / den
    return out


def adjacency_cosine(edge_index_a: Tensor, edge_weight_a: Optional[Tensor], edge_index_b: Tensor,
                     edge_weight_b: Optional[Tensor], num_nodes: int,
                     reduce: str = "mean") -> Union[float, Tensor]:
    """Row-wise cosine between two weighted adjacency matrices on the same nodes (sparse).

    Args:
        edge_index_a, edge_index_b: ``[2, E_a]``, ``[2, E_b]`` (duplicates are summed).
        edge_weight_a, edge_weight_b: ``[E]`` weights, or ``None`` for 1.
        num_nodes: ``N``.
        reduce: ``'mean'`` (a float) or ``'none'`` (``[N]`` per node, float64).

    Example:
        >>> import torch, dyngraph as dg
        >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> dg.measures.adjacency_cosine(ei, None, ei, None, 3)
        1.0
    """
    check_choice(reduce, "reduce", ("mean", "none"))
    rows = []
    for tag, ei, w in (("a", edge_index_a, edge_weight_a), ("b", edge_index_b, edge_weight_b)):
        ei = check_edge_index(ei, f"edge_index_{tag}")
        w = torch.ones(ei.shape[1], device=ei.device) if w is None else \
            check_edge_weight(w, ei.shape[1], f"edge_weight_{tag}")
        if ei.numel() and int(ei.max()) >= num_nodes:
            raise ValueError(f"edge_index_{tag} refers to node {int(ei.max())} but num_nodes="
                             f"{num_nodes}")
        rows.append(_SparseRows(ei, w, num_nodes, f"graph {tag}"))
    cos = _row_cosine(rows[0], rows[1])
    return float(cos.mean()) if reduce == "mean" else cos


def graph_similarity(x: Tensor, y: Tensor, k: Optional[int] = 10, metric: str = "cosine",
                     symmetrize: Optional[str] = "mean", weighted: bool = True,
                     backend: str = "auto") -> float:
    """Graph-based similarity (after Chen et al. 2021, GBS): mean row-wise cosine between the
    adjacency matrices of the two representations' sample graphs.

    Each representation becomes a kNN graph of the samples built exactly like the dyngraph
    snapshots (cosine weights, ``(A + Aᵀ)/2`` by default); sample ``i`` then has one adjacency row
    in each graph, and the measure is ``(1/N) Σ_i cos(A_x[i], A_y[i])``. With ``k=None`` the graph
    is the full cosine-similarity matrix (no self-loops), computed in bounded row blocks.

    Invariant to orthogonal transforms and isotropic scaling of either input (cosine weights).

    Args:
        x: ``[N, Dx]``.
        y: ``[N, Dy]``, the same inputs.
        k: Neighbours per sample, or ``None`` for the full graph.
        metric: ``'cosine'`` (weights = cosine) or ``'euclidean'`` (unit weights).
        symmetrize: ``'mean'`` (the snapshot convention), ``'max'``, ``'add'``, ``'mutual'`` or
            ``None`` (directed rows: each row holds its k out-neighbours).
        weighted: Use the cosine weights; ``False`` gives unit weights.
        backend: kNN backend.

    Returns:
        A float in ``[-1, 1]`` (``[0, 1]`` for non-negative weights); 1 for identical graphs.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(100, 6, generator=g)
        >>> q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
        >>> round(dg.measures.graph_similarity(x, 5 * x @ q, k=5), 6)
        1.0
    """
    x, y = _check_pair(x, y)
    check_choice(metric, "metric", ("cosine", "euclidean"))
    check_flag(weighted, "weighted")
    if k is None:
        if metric != "cosine":
            raise ValueError("k=None (the full graph) needs metric='cosine'")
        return float(_dense_row_cosine(x, y).mean())
    check_k(k, x.shape[0])
    if symmetrize is not None:
        check_choice(symmetrize, "symmetrize", SYMMETRIZE)
    rows = []
    for v, name in ((x, "x"), (y, "y")):
        vals, idx = _knn_lists(v, k, metric, backend, name)
        ei, w = _graph_from_knn(vals, idx, metric, symmetrize, weighted)
        rows.append(_SparseRows(ei, w, v.shape[0], name))
    return float(_row_cosine(rows[0], rows[1]).mean())


# ================================================================================== modularity
def modularity_distance(x: Tensor, y: Tensor, labels: Tensor, k: int = 3, metric: str = "cosine",
                        symmetrize: str = "mean", backend: str = "auto",
                        resolution: float = 1.0) -> float:
    """``|Q_x − Q_y|``: the modularity distance between two representations (Lu et al. 2022).

    Q is the weighted Newman modularity of each representation's kNN snapshot (built as
    :func:`dyngraph.graphs.build_snapshot` builds it: reference conventions by default) with the
    labels as communities. A distance: 0 for representations whose classes are equally separated.
    It is a coarse, one-number summary: unrelated representations with the same Q are at
    distance 0.

    Args:
        x: ``[N, Dx]``.
        y: ``[N, Dy]``, the same inputs.
        labels: ``[N]`` integer classes.
        k, metric, symmetrize, backend: Snapshot settings (reference: 3, cosine, mean).
        resolution: Modularity resolution ``γ``.

    Returns:
        A float ``>= 0``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(120) % 3
        >>> a = torch.randn(120, 8, generator=g) + 4 * torch.eye(8)[y]
        >>> dg.measures.modularity_distance(a, 2 * a, y)
        0.0
    """
    x, y = _check_pair(x, y)
    labels = check_labels(labels, x.shape[0], "labels")
    check_same_device(x=x, labels=labels)
    check_k(k, x.shape[0])
    q: List[Any] = []
    for v, name in ((x, "x"), (y, "y")):
        vals, idx = _knn_lists(v, k, metric, backend, name)
        ei, w = _graph_from_knn(vals, idx, metric, symmetrize)
        # A symmetrised graph built here is undirected by construction: the O(E) contract check
        # is skipped; a directed one (symmetrize=None) is checked, and refused.
        q.append(modularity_q(ei, labels, w, v.shape[0], None, resolution,
                              check=symmetrize is None))
    return abs(q[0] - q[1])


# ================================================================================== summaries
class RepresentationSummary:
    """Everything the pairwise measures need from one representation, computed once.

    Holds the CKA state(s) (centred features or Gram matrices, float64), the kNN lists at
    ``max(k, modularity_k)``, the adjacency rows of the kNN graph and the modularity Q. Pairwise
    values then cost no feature access: it is the ``prepare`` state of the registered pair
    measures, with which :func:`dyngraph.layer_matrix` and :func:`dyngraph.compare.compare_models`
    fill layer × layer and model × model matrices.

    Args:
        x: ``[N, ...]`` features.
        measures: Which measures to prepare (a subset of ``MEASURES``).
        labels: ``[N]`` classes (needed for ``'modularity_distance'``).
        k: Neighbours for ``'knn_overlap'``, ``'mutual_knn'`` and ``'graph'``.
        metric: kNN metric.
        symmetrize: Graph symmetrisation for ``'graph'`` and the modularity snapshot.
        modularity_k: Neighbours of the modularity snapshot (reference: 3).
        backend: kNN backend.
        cka_form: ``'auto'``, ``'features'`` or ``'gram'``.
        name: For messages.
        resolution: Modularity resolution ``γ``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(80, 5, generator=g)
        >>> a = dg.measures.RepresentationSummary(x, measures=['cka', 'mutual_knn'], k=5)
        >>> b = dg.measures.RepresentationSummary(2 * x, measures=['cka', 'mutual_knn'], k=5)
        >>> s = dg.measures.summary_similarity
        >>> round(s(a, b, 'cka'), 6), s(a, b, 'mutual_knn')
        (1.0, 1.0)
    """

    def __init__(self, x: Tensor, measures: Sequence[str] = MEASURES,
                 labels: Optional[Tensor] = None, k: int = 10, metric: str = "cosine",
                 symmetrize: Optional[str] = "mean", modularity_k: int = 3,
                 backend: str = "auto", cka_form: str = "auto", name: str = "x",
                 resolution: float = 1.0) -> None:
        x = _flat(x, name)
        measures = [check_choice(m, "measure", MEASURES) for m in measures]
        check_choice(metric, "metric", ("cosine", "euclidean"))
        n = x.shape[0]
        self.n, self.name, self.measures = n, name, list(measures)
        self.k, self.metric, self.symmetrize = k, metric, symmetrize
        self.modularity_k, self.resolution = modularity_k, resolution
        self.cka = _CKAState(x, False, name, cka_form) if "cka" in measures else None
        self.cka_u = _CKAState(x, True, name, cka_form) if "cka_unbiased" in measures else None
        kk = []
        if any(m in _KNN_MEASURES for m in measures):
            kk.append(check_k(k, n))
        if "modularity_distance" in measures:
            kk.append(check_k(modularity_k, n, "modularity_k"))
            if labels is None:
                raise ValueError("measure 'modularity_distance' needs labels")
        self.labels = None if labels is None else check_labels(labels, n, "labels")
        self.knn_vals: Optional[Tensor] = None
        self.knn_idx: Optional[Tensor] = None
        self.rows: Optional[_SparseRows] = None
        self.q: Optional[float] = None
        self.q_graph: Optional[Tuple[Tensor, Tensor]] = None
        if not kk:
            return
        vals, idx = _knn_lists(x, max(kk), metric, backend, name)
        if "graph" in measures:
            ei, w = _graph_from_knn(vals[:, :k], idx[:, :k], metric, symmetrize)
            self.rows = _SparseRows(ei, w, n, name)
        if self.labels is not None and "modularity_distance" in measures:
            mk = modularity_k
            ei, w = _graph_from_knn(vals[:, :mk], idx[:, :mk], metric, symmetrize or "mean")
            self.q_graph = (ei, w)
            # (undirected by construction: no O(E) contract check)
            self.q = float(modularity_q(ei, self.labels.to(ei.device), w, n, None, resolution,
                                        check=False))
        # Only the kNN lists the measures use are kept.
        if any(m in ("knn_overlap", "mutual_knn") for m in measures):
            self.knn_vals, self.knn_idx = vals[:, :k], idx[:, :k]

    def __repr__(self) -> str:
        return (f"RepresentationSummary(name={self.name!r}, n={self.n}, measures={self.measures}, "
                f"k={self.k}, metric={self.metric!r})")


_KNN_MEASURES = ("knn_overlap", "mutual_knn", "graph")
#: The attribute of a summary that holds each measure's prepared state.
_STATE = {"cka": "cka", "cka_unbiased": "cka_u", "knn_overlap": "knn_idx",
          "mutual_knn": "knn_idx", "graph": "rows", "modularity_distance": "q"}


def _states(a: RepresentationSummary, b: RepresentationSummary, measure: str) -> Tuple[Any, Any]:
    """Checks that ``measure`` can compare ``a`` with ``b``; returns their prepared states."""
    if a.n != b.n:
        raise ValueError(f"{a.name!r} and {b.name!r} summarise different numbers of inputs "
                         f"({a.n} and {b.n})")
    for s in (a, b):
        if measure not in s.measures or getattr(s, _STATE[measure]) is None:
            raise ValueError(f"measure {measure!r} was not prepared for {s.name!r} (prepared: "
                             f"{s.measures})")
    if measure in _KNN_MEASURES and a.k != b.k:
        raise ValueError(f"{a.name!r} and {b.name!r} use different k ({a.k} and {b.k})")
    return getattr(a, _STATE[measure]), getattr(b, _STATE[measure])


def summary_similarity(a: RepresentationSummary, b: RepresentationSummary, measure: str) -> float:
    """One measure between two prepared summaries (see :class:`RepresentationSummary`).

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
        >>> a = dg.measures.RepresentationSummary(x, ['cka'])
        >>> round(dg.measures.summary_similarity(a, a, 'cka'), 6)
        1.0
    """
    check_choice(measure, "measure", MEASURES)
    sa, sb = _states(a, b, measure)
    if measure in ("cka", "cka_unbiased"):
        return _cka_from_states(sa, sb)
    if measure in ("knn_overlap", "mutual_knn"):
        return float(_knn_score(_overlap_counts(sa, sb).double(), a.k, measure).mean())
    if measure == "graph":
        return float(_row_cosine(sa, sb).mean())
    return abs(sa - sb)


# ================================================================================== permutation
class PermutationResult(NamedTuple):
    """A measure's value, its permutation-null p-value and the null sample ``[P]``.

    Returned by :func:`permutation_test` and :func:`summary_permutation_test`.

    Attributes:
        value: The measure on the unshuffled pair.
        p_value: ``(1 + #{null as extreme}) / (P + 1)``, in ``(0, 1]``.
        null: ``[P]`` the measure on each shuffle.
        permutations: ``P``.
        measure: The measure's name.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
        >>> r = dg.measures.permutation_test('cka', x, 2 * x, permutations=19)
        >>> r.measure, r.permutations, round(r.value, 6), r.p_value, tuple(r.null.shape)
        ('cka', 19, 1.0, 0.05, (19,))
    """
    value: float
    p_value: float
    null: Tensor
    permutations: int
    measure: str


def _perm_blocks(n: int, permutations: int, step: int, gen: torch.Generator,
                 device: torch.device) -> Iterator[Tensor]:
    """``permutations`` random permutations of ``range(n)``, in blocks ``[c <= step, n]``."""
    for s in range(0, permutations, step):
        count = min(step, permutations - s)
        yield torch.stack([torch.randperm(n, generator=gen) for _ in range(count)]).to(device)


def _null_cka(sa: _CKAState, sb: _CKAState, permutations: int,
              gen: torch.Generator) -> List[Tensor]:
    n, out = sa.n, []
    device = sa.row_sq.device
    if sa.xc is not None and sb.xc is not None:
        for perms in _perm_blocks(n, permutations, _step(n * sb.xc.shape[1]), gen, device):
            cross = torch.einsum("nd,cne->cde", sa.xc, sb.xc[perms])      # y[π]: [c, N, Dy]
            h = (cross * cross).sum((1, 2))
            if sa.unbiased:
                h = _unbiased_hsic(h, sa.trace, sb.trace,
                                   (sa.row_sq.unsqueeze(0) * sb.row_sq[perms]).sum(1), n)
            out.append(_cka_ratio(h, sa.self_hsic, sb.self_hsic))
        return out
    ga, gb = sa.gram_matrix(), sb.gram_matrix()
    for perms in _perm_blocks(n, permutations, _step(n * n), gen, device):
        gp = gb[perms.unsqueeze(2), perms.unsqueeze(1)]     # [c, N, N]
        out.append(_cka_ratio((ga.unsqueeze(0) * gp).sum((1, 2)), sa.self_hsic, sb.self_hsic))
    return out


def _null_knn(ia: Tensor, ib: Tensor, k: int, measure: str, permutations: int,
              gen: torch.Generator) -> List[Tensor]:
    n, out = ia.shape[0], []
    for perms in _perm_blocks(n, permutations, _step(n * k * k), gen, ia.device):   # [c, N]
        inv = torch.argsort(perms, dim=1)
        # neighbours of i in y[π] are π⁻¹(N_y(π(i)))
        nb = ib[perms]                                                    # [c, N, k]
        nb = torch.gather(inv, 1, nb.reshape(nb.shape[0], -1)).reshape(nb.shape)
        inter = _overlap_counts(ia.unsqueeze(0).expand_as(nb), nb).double()
        out.append(_knn_score(inter, k, measure).mean(1))
    return out


def _null_graph(ra: _SparseRows, rb: _SparseRows, permutations: int,
                gen: torch.Generator) -> List[Tensor]:
    n, out = ra.n, []
    device = ra.key.device
    step = _step(4 * max(ra.key.numel(), rb.key.numel()))
    for perms in _perm_blocks(n, permutations, step, gen, device):
        c = perms.shape[0]
        inv = torch.argsort(perms, dim=1)
        off = torch.arange(c, device=device).unsqueeze(1) * (n * n)
        # b' has edge (π⁻¹(i), π⁻¹(j)) for every edge (i, j) of b
        kb = (off + inv[:, rb.row] * n + inv[:, rb.col]).reshape(-1)
        order = kb.argsort()
        kb, wb = kb[order], rb.w.repeat(c)[order]
        ka = (off + ra.key.unsqueeze(0)).reshape(-1)
        pos = torch.searchsorted(kb, ka).clamp_max(kb.numel() - 1)
        hit = kb[pos] == ka
        grp = (torch.arange(c, device=device).unsqueeze(1) * n + ra.row.unsqueeze(0)).reshape(-1)
        dot = scatter(ra.w.repeat(c)[hit] * wb[pos[hit]], grp[hit], dim=0, dim_size=c * n,
                      reduce="sum").view(c, n)
        nb_norm = rb.norm[perms]                                       # row i of b' = row π(i)
        out.append((dot / (ra.norm.unsqueeze(0) * nb_norm)).mean(1))
    return out


def _null_modularity(qa: float, b: RepresentationSummary, permutations: int,
                     gen: torch.Generator) -> List[Tensor]:
    """``y[π]`` with fixed labels is ``b``'s graph with labels ``[π⁻¹]``."""
    assert b.q_graph is not None and b.labels is not None      # prepared with q
    ei, w = b.q_graph
    labels = b.labels.to(ei.device)
    n, e, out = b.n, ei.shape[1], []
    device = ei.device
    for perms in _perm_blocks(n, permutations, _step(4 * e), gen, device):
        c = perms.shape[0]
        comm = labels[torch.argsort(perms, dim=1)].reshape(-1)
        off = (torch.arange(c, device=device) * n).repeat_interleave(e)
        batch = torch.arange(c, device=device).repeat_interleave(n)
        # c disjoint copies of b's undirected graph: no O(E) contract check per block
        q = torch.as_tensor(modularity_q(ei.repeat(1, c) + off.unsqueeze(0), comm, w.repeat(c),
                                         c * n, batch, b.resolution, check=False))
        out.append((qa - q).abs())
    return out


def _p_value(value: float, null: Tensor, measure: str) -> float:
    # A tolerance so that exact ties (e.g. equal Q) count as "as extreme".
    tol = 1e-12 * max(1.0, abs(value))
    extreme = null <= value + tol if measure in DISTANCES else null >= value - tol
    return (1 + int(extreme.sum())) / (null.numel() + 1)


def summary_permutation_test(a: RepresentationSummary, b: RepresentationSummary, measure: str,
                             permutations: int = 1000, seed: int = 0) -> PermutationResult:
    """Permutation test between two prepared summaries (see :func:`permutation_test`).

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
        >>> a = dg.measures.RepresentationSummary(x, ['cka'])
        >>> dg.measures.summary_permutation_test(a, a, 'cka', permutations=19).p_value
        0.05
    """
    check_choice(measure, "measure", MEASURES)
    sa, sb = _states(a, b, measure)
    check_positive_int(permutations, "permutations")
    value = summary_similarity(a, b, measure)
    # The null: the measure between a and b with b's rows shuffled, `permutations` times.
    gen = torch.Generator().manual_seed(int(seed))
    if measure in ("cka", "cka_unbiased"):
        out = _null_cka(sa, sb, permutations, gen)
    elif measure in ("knn_overlap", "mutual_knn"):
        out = _null_knn(sa, sb, a.k, measure, permutations, gen)
    elif measure == "graph":
        out = _null_graph(sa, sb, permutations, gen)
    else:
        out = _null_modularity(sa, b, permutations, gen)
    null = torch.cat(out).cpu().to(torch.float64)
    return PermutationResult(value, _p_value(value, null, measure), null, permutations, measure)


def permutation_test(measure: str, x: Tensor, y: Tensor, labels: Optional[Tensor] = None,
                     permutations: int = 1000, seed: int = 0, k: int = 10,
                     metric: str = "cosine", symmetrize: Optional[str] = "mean",
                     modularity_k: int = 3, backend: str = "auto") -> PermutationResult:
    """Permutation-null p-value of a similarity measure between ``x`` and ``y``.

    The null shuffles the rows of ``y`` relative to ``x`` (the correspondence between inputs is
    destroyed, each representation's own structure kept). ``p = (1 + #{null as extreme}) /
    (P + 1)``, where *as extreme* is ``>=`` for similarities and ``<=`` for the distance
    ``'modularity_distance'``. The per-representation work (Gram matrices, kNN lists, graphs) is
    done once; each permutation only re-indexes it.

    Args:
        measure: One of ``MEASURES``.
        x: ``[N, Dx]``.
        y: ``[N, Dy]``, the same inputs.
        labels: ``[N]`` classes, for ``'modularity_distance'``.
        permutations: Number of shuffles ``P``.
        seed: Seed of the shuffles.
        k, metric, symmetrize, modularity_k, backend: As in the measures.

    Returns:
        :class:`PermutationResult` ``(value, p_value, null [P], permutations, measure)``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(100, 6, generator=g)
        >>> y = x + 0.1 * torch.randn(100, 6, generator=g)
        >>> dg.measures.permutation_test('cka', x, y, permutations=99).p_value
        0.01
    """
    check_choice(measure, "measure", MEASURES)
    x, y = _check_pair(x, y)
    a, b = (RepresentationSummary(v, [measure], labels=labels, k=k, metric=metric,
                                  symmetrize=symmetrize, modularity_k=modularity_k,
                                  backend=backend, name=name) for v, name in ((x, "x"), (y, "y")))
    return summary_permutation_test(a, b, measure, permutations, seed)


# ================================================================================== matrices
def fill_matrix(sa: Mapping[str, RepresentationSummary], sb: Mapping[str, RepresentationSummary],
                measure: str, permutations: int = 0, seed: int = 0, symmetric: bool = False
                ) -> Tuple[Tensor, Optional[Tensor]]:
    """Fills ``[La, Lb]`` (and p-values) of one measure from per-layer summaries: the cell
    ``(i, j)`` is :func:`summary_similarity` (or, with ``permutations``, a
    :func:`summary_permutation_test` seeded ``seed + 7919·i + j``); ``symmetric`` (A × A) mirrors
    the lower triangle. This is the scoring step of :func:`dyngraph.layer_matrix`.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
        >>> s = {'a': dg.measures.RepresentationSummary(x, ['cka'])}
        >>> vals, ps = dg.measures.fill_matrix(s, s, 'cka')
        >>> [round(v, 6) for v in vals.flatten().tolist()], ps
        ([1.0], None)
    """
    la, lb = list(sa), list(sb)
    vals = torch.empty(len(la), len(lb), dtype=torch.float64)
    ps = torch.empty(len(la), len(lb), dtype=torch.float64) if permutations else None
    for i, a in enumerate(la):
        for j, b in enumerate(lb):
            if symmetric and j < i:     # mirror the cell computed at (j, i)
                vals[i, j] = vals[j, i]
                if ps is not None:
                    ps[i, j] = ps[j, i]
            elif ps is None:
                vals[i, j] = summary_similarity(sa[a], sb[b], measure)
            else:
                r = summary_permutation_test(sa[a], sb[b], measure, permutations,
                                             seed + 7919 * i + j)
                vals[i, j], ps[i, j] = r.value, r.p_value
    return vals, ps


__all__ = ["MEASURES", "DISTANCES", "linear_cka", "StreamingCKA", "MinibatchCKA", "u_center",
           "knn_overlap", "mutual_knn", "graph_similarity", "adjacency_cosine",
           "modularity_distance", "RepresentationSummary", "summary_similarity",
           "PermutationResult", "permutation_test", "summary_permutation_test", "fill_matrix"]


# ============================================================================ registered measures
def _pair(measure: str, description: str, distance: bool = False, labels: bool = False) -> None:
    def prepare(x: Tensor, y: Optional[Tensor], **kw: Any) -> RepresentationSummary:
        return RepresentationSummary(x, [measure], labels=y if labels else None, **kw)

    def fn(a: RepresentationSummary, b: RepresentationSummary) -> float:
        return summary_similarity(a, b, measure)
    register(measure, kind="pair", prepare=prepare, distance=distance, labels=labels,
             description=description)(fn)


_pair("cka", "linear CKA, biased HSIC (Kornblith et al. 2019)")
_pair("cka_unbiased", "linear CKA, unbiased HSIC (Song et al. 2012)")
_pair("mutual_knn", "mutual kNN alignment (Huh et al. 2024), k = 10")
_pair("knn_overlap", "mean Jaccard index of the kNN sets, k = 10")
_pair("graph", "graph-based similarity: mean row cosine of the kNN adjacencies")
_pair("modularity_distance", "|Q_a − Q_b| of the reference snapshots (Lu et al. 2022)",
      distance=True, labels=True)
