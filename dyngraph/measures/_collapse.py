"""Neural collapse per layer (Papyan, Han & Donoho 2020) and Minority Collapse (Fang et al. 2021).

Everything is computed from a few sufficient statistics, in float64:

* per-class counts ``n_c``, class means ``μ_c`` ``[C, D]`` and within-class scatter traces;
* for NC1 either the ``D × D`` within-class scatter (the naive path, one pass) or, exactly and in
  ``O(C·D)`` memory, the within-class scatter projected on the class-mean subspace (two passes).

NC1 = Tr(Σ_W Σ_B^†)/C where Σ_B^† inverts only the top ``C − 1`` eigenpairs of Σ_B. With
``M̃ = [μ_c − μ_G]_c = U S Vᵀ`` (``C × D``), Σ_B = M̃ᵀM̃/C has eigenpairs ``(s_j²/C, v_j)``, so

    NC1 = (1/C) Σ_j C · v_jᵀ Σ_W v_j / s_j² = Σ_j v_jᵀ Σ_W v_j / s_j²,

which needs Σ_W only along the ``r ≤ C − 1`` directions ``v_j``: an exact identity, not an
approximation. The streaming path merges batch statistics with Chan et al.'s pairwise update.

Conventions that differ between public implementations are keyword arguments; the defaults are the
choices of Papyan et al. (2020), see :data:`PAPYAN_CONVENTIONS`.

On the spine: every metric is a registered layer measure (``'nc1'`` ... ``'nc4'``, bottom of this
module), so ``dg.depth_profile`` scores them over depth (:func:`collapse_curves` is that call);
:func:`neural_collapse_model` and :class:`CollapseCallback` run the model through
``dg.capture.LayerTaps``; :class:`CollapseHistory` (one ``DepthProfile`` per epoch) is drawn and
logged by ``dg.plot`` / ``dg.log`` (``dyngraph/outputs/_figures_collapse.py``).
"""
from __future__ import annotations

import math
import os
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sized
from dataclasses import asdict, dataclass, fields, replace
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import torch
from torch import Tensor, nn

from .._io import PathLike
from .._json import JsonFile, jsonable
from .._progress import progress_bar
from .._validate import (
    check_choice,
    check_features,
    check_labels,
    check_positive_int,
    check_tensor,
    compact_labels,
)
from ..capture._features import LayerFeatures
from ..capture._layers import LayerSpec, default_layers
from ..capture._taps import LayerTaps, check_layout, check_pool, split_batch, to_device
from ..profiles._profile import DepthProfile
from ._registry import register

if TYPE_CHECKING:
    from torch_geometric.data import Data

__all__ = [
    "CLASSIFIER_METRICS",
    "CollapseCallback",
    "CollapseConventions",
    "CollapseHistory",
    "LAYER_METRICS",
    "METRICS",
    "NeuralCollapseAccumulator",
    "PAPYAN_CONVENTIONS",
    "class_means",
    "collapse_curves",
    "etf_gram",
    "minority_collapse",
    "neural_collapse",
    "neural_collapse_model",
    "neural_collapse_stream",
    "simplex_etf",
]

#: Metrics defined at every layer (they need only features and labels), in reporting order.
LAYER_METRICS = ("nc1", "nc1_trace", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc2_etf",
                 "cdnv", "ncc_accuracy")
#: Metrics that also need the classifier (the layer that feeds it).
CLASSIFIER_METRICS = ("nc2_equinorm_w", "nc2_equiangular_w", "nc2_maxangle_w", "nc2_etf_w", "nc3",
                      "nc4")
METRICS = LAYER_METRICS + CLASSIFIER_METRICS

_EPS64 = torch.finfo(torch.float64).eps


# ============================================================================ conventions
@dataclass(frozen=True)
class CollapseConventions:
    """How each quantity is normalised. The defaults follow Papyan, Han & Donoho (PNAS 2020).

    Attributes:
        global_mean: ``'samples'``: μ_G is the mean of all samples (the paper's Ave_{i,c} h_{i,c});
            ``'classes'``: the unweighted mean of the class means (the paper's reference notebook).
            The two agree for balanced classes.
        within: ``'samples'``: Σ_W = Σ_c S_c / (N − ddof·C), the average over all samples (paper);
            ``'classes'``: Σ_W = (1/C) Σ_c S_c / (n_c − ddof), every class weighted equally.
            ``S_c`` is class c's scatter Σ_i (h_i − μ_c)(h_i − μ_c)ᵀ.
        ddof: Delta degrees of freedom of Σ_W and of the class variances in CDNV (paper: 0).
        nc1_over_classes: Divide Tr(Σ_W Σ_B^†) by C (the paper's Figure 6; its notebook does not).
        sb_rank: How many top eigenpairs of Σ_B are inverted; ``None``: ``C − 1`` (paper). Fewer
            are used when Σ_B is numerically rank deficient (``D < C − 1`` or degenerate means).
        rtol: Eigenvalues of Σ_B below ``rtol · λ_max`` count as zero; ``None``:
            ``max(C, D) · eps(float64)``.
        std_ddof: Delta degrees of freedom of the std in NC2 (paper's notebook: ``torch.std``, 1).
        nc3_squared: NC3 as the squared Frobenius distance ‖W/‖W‖ − M̃/‖M̃‖‖²_F (paper, Figure 5).
        nc4_bias: The classifier's prediction in NC4 includes its bias (paper: the network's
            output).
        center_classifier: Subtract the mean classifier row before NC2/NC3 (paper: no).

    Defaults: ``global_mean='samples'``, ``within='samples'``, ``ddof=0``,
    ``nc1_over_classes=True``, ``sb_rank=None``, ``rtol=None``, ``std_ddof=1``,
    ``nc3_squared=True``, ``nc4_bias=True``, ``center_classifier=False``
    (:data:`PAPYAN_CONVENTIONS`). Pass one as ``conventions=`` to :func:`neural_collapse` (and its
    stream and model forms), or give single fields there as keywords.

    Example:
        >>> import torch, dyngraph as dg
        >>> cv = dg.measures.CollapseConventions(within='classes', ddof=1)
        >>> cv.within, cv.ddof, cv.sb_rank, cv == dg.measures.PAPYAN_CONVENTIONS
        ('classes', 1, None, False)
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.tensor([0] * 30 + [1] * 10 + [2] * 20)            # unbalanced classes
        >>> x = dg.measures.simplex_etf(3, dim=4)[y].float() + 0.3 * torch.randn(60, 4, generator=g)
        >>> paper = dg.measures.neural_collapse(x, y)['nc1']
        >>> mine = dg.measures.neural_collapse(x, y, conventions=cv)['nc1']
        >>> same = dg.measures.neural_collapse(x, y, within='classes', ddof=1)['nc1']
        >>> mine == same, mine != paper
        (True, True)
    """

    global_mean: str = "samples"
    within: str = "samples"
    ddof: int = 0
    nc1_over_classes: bool = True
    sb_rank: Optional[int] = None
    rtol: Optional[float] = None
    std_ddof: int = 1
    nc3_squared: bool = True
    nc4_bias: bool = True
    center_classifier: bool = False

    def __post_init__(self) -> None:
        check_choice(self.global_mean, "global_mean", ("samples", "classes"))
        check_choice(self.within, "within", ("samples", "classes"))
        for name in ("ddof", "std_ddof"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {name}={v!r}")
        if self.sb_rank is not None:
            check_positive_int(self.sb_rank, "sb_rank")
        if self.rtol is not None and not (isinstance(self.rtol, (int, float))
                                          and 0 <= self.rtol < 1):
            raise ValueError(f"rtol must be a float in [0, 1), got rtol={self.rtol!r}")
        for name in ("nc1_over_classes", "nc3_squared", "nc4_bias", "center_classifier"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")


PAPYAN_CONVENTIONS = CollapseConventions()
_CONVENTION_NAMES = tuple(f.name for f in fields(CollapseConventions))


def _conventions(conventions: Optional[CollapseConventions], kw: Dict[str, Any]
                 ) -> CollapseConventions:
    unknown = [k for k in kw if k not in _CONVENTION_NAMES]
    if unknown:
        raise TypeError(f"unknown keyword argument(s) {unknown}; the conventions are "
                        f"{list(_CONVENTION_NAMES)}")
    base = conventions if conventions is not None else PAPYAN_CONVENTIONS
    if not isinstance(base, CollapseConventions):
        raise TypeError(f"conventions must be a CollapseConventions, got {type(base).__name__}")
    return replace(base, **kw) if kw else base


# ============================================================================ ETF helpers
def etf_gram(num_classes: int, dtype: torch.dtype = torch.float64,
             device: Optional[Union[str, torch.device]] = None) -> Tensor:
    """Gram matrix of a simplex ETF with unit-norm vertices: ``C/(C−1) · (I − 11ᵀ/C)`` ``[C, C]``.

    Example:
        >>> import dyngraph as dg
        >>> g = dg.measures.etf_gram(3)
        >>> [round(v, 3) for v in g[0].tolist()]
        [1.0, -0.5, -0.5]
    """
    c = check_positive_int(num_classes, "num_classes", minimum=2)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype, got {dtype!r}")
    return (torch.eye(c, dtype=dtype, device=device) - 1.0 / c) * (c / (c - 1))


def simplex_etf(num_classes: int, dim: Optional[int] = None, seed: Optional[int] = None,
                dtype: torch.dtype = torch.float64) -> Tensor:
    """Rows of a simplex equiangular tight frame: ``C`` unit vectors in ``R^dim`` with pairwise
    cosine ``−1/(C−1)``, summing to zero, randomly rotated when ``seed`` is given.

    Args:
        num_classes: ``C ≥ 2``.
        dim: Ambient dimension ``D ≥ C − 1`` (default ``C``).
        seed: Seed of a random orthogonal rotation; ``None``: the canonical frame.

    Returns:
        ``[C, dim]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> m = dg.measures.simplex_etf(4, dim=6, seed=0)
        >>> bool(torch.allclose(m @ m.T, dg.measures.etf_gram(4), atol=1e-12))
        True
    """
    c = check_positive_int(num_classes, "num_classes", minimum=2)
    dim = check_positive_int(c if dim is None else dim, "dim")
    if dim < c - 1:
        raise ValueError(f"a simplex ETF of {c} vertices needs dim >= C - 1 = {c - 1}, got "
                         f"dim={dim}")
    # Centered standard basis, orthonormally embedded in C - 1 dimensions.
    centered = torch.eye(c, dtype=torch.float64) - 1.0 / c
    u, s, vh = torch.linalg.svd(centered)
    out = torch.zeros(c, dim, dtype=torch.float64)
    out[:, : c - 1] = u[:, : c - 1] * s[: c - 1] * math.sqrt(c / (c - 1))  # unit vertices
    if seed is not None:
        g = torch.Generator().manual_seed(int(seed))
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
        out = out @ q.T
    return out.to(dtype)


# ============================================================================ input handling
def _check_num_classes(num_classes: Optional[int], labels: Tensor) -> int:
    """``C``: ``num_classes`` checked against the labels, or (``None``) the number of distinct
    labels, which must then be compact (``0..C-1``: see :func:`_features_labels`)."""
    if num_classes is None:
        if labels.numel() == 0:
            raise ValueError("labels is empty")
        num_classes = int(labels.max()) + 1
    else:
        check_positive_int(num_classes, "num_classes")
        if labels.numel() and int(labels.max()) >= num_classes:
            raise ValueError(f"labels must be < num_classes={num_classes}, got max(labels)="
                             f"{int(labels.max())}")
    if num_classes < 2:
        raise ValueError(f"neural collapse needs at least 2 classes, got num_classes={num_classes}")
    return num_classes


def _check_nonempty(counts: Tensor, where: str = "labels") -> None:
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"classes {empty[:10]} have no samples in {where}; every class 0..C-1 "
                         f"needs at least one (remap the labels or pass the right num_classes)")


def parse_classifier(classifier: Any, dim: Optional[int], num_classes: Optional[int]
                      ) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
    """``nn.Linear`` | ``W [C, D]`` | ``(W, b)`` → detached ``(W, b)``."""
    if classifier is None:
        return None
    w: Tensor
    b: Optional[Tensor]
    if isinstance(classifier, nn.Linear):
        w, b = classifier.weight, classifier.bias
    elif isinstance(classifier, Tensor):
        w, b = classifier, None
    elif isinstance(classifier, (tuple, list)) and len(classifier) == 2:
        w, b = classifier
    else:
        raise TypeError(f"classifier must be an nn.Linear, a weight Tensor [C, D] or a tuple "
                        f"(weight, bias), got {type(classifier).__name__}")
    check_tensor(w, "classifier weight")
    if not w.is_floating_point() or w.dim() != 2:
        raise ValueError(f"classifier weight must be a floating [C, D] matrix, got "
                         f"shape {tuple(w.shape)}, dtype {w.dtype}")
    if num_classes is not None and w.shape[0] != num_classes:
        raise ValueError(f"classifier weight has {w.shape[0]} rows but there are {num_classes} "
                         f"classes")
    if dim is not None and w.shape[1] != dim:
        raise ValueError(f"classifier weight is [{w.shape[0]}, {w.shape[1]}] but the features have "
                         f"D={dim} columns; pass the features that feed the classifier")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("classifier weight contains NaN or inf values")
    if b is not None:
        check_tensor(b, "classifier bias")
        if b.reshape(-1).numel() != w.shape[0]:
            raise ValueError(f"classifier bias must have {w.shape[0]} entries, got shape "
                             f"{tuple(b.shape)}")
        b = b.detach().reshape(-1)
    return w.detach(), b


def _flat(x: Tensor, name: str) -> Tensor:
    check_tensor(x, name)
    if x.dim() < 2:
        raise ValueError(f"{name} must be [N, D] (or [N, ...], flattened), got shape "
                         f"{tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1)
    return check_features(x, name, ndim=2)


def _features_labels(features: Tensor, labels: Tensor, num_classes: Optional[int], name: str
                     ) -> Tuple[Tensor, Tensor, int]:
    """``(x [N, D], labels on x's device, C)``, checked.

    Without ``num_classes`` the labels are class ids, not sizes: ``{0, 1, 10**9}`` are three
    classes, renumbered ``0, 1, 2`` in sorted order (:func:`~dyngraph._validate.compact_labels`;
    labels ``0..C-1`` come back unchanged), so no tensor is sized by the largest label. With
    ``num_classes`` they must lie in ``[0, num_classes)`` (classifier row ``c`` is class ``c``)."""
    x = _flat(features, name)
    y = check_labels(labels, x.shape[0], "labels").to(x.device)
    if num_classes is None and y.numel():
        y = compact_labels(y)[0]
    return x, y, _check_num_classes(num_classes, y)


# ============================================================================ statistics
@dataclass
class _Stats:
    """Sufficient statistics of one layer (all float64 on the features' device)."""

    counts: Tensor                       # [C]
    means: Tensor                        # [C, D]
    trace: Tensor                        # [C]  Σ_{i∈c} ‖h_i − μ_c‖²
    scatter: Optional[Tensor] = None     # [D, D] pooled or [C, D, D] per class (method 'full')
    basis: Optional[Tensor] = None       # [D, r] right singular vectors of M̃ (method 'subspace')
    sing: Optional[Tensor] = None        # [r] singular values of M̃
    proj: Optional[Tensor] = None        # [C, r] Σ_{i∈c} ((h_i − μ_c)·v_j)²
    n_pass2: int = 0                     # samples of the second pass (0: none)
    ncc_correct: int = 0
    nc4_mismatch: int = 0


def _global_mean(counts: Tensor, means: Tensor, mode: str) -> Tensor:
    if mode == "samples":
        return (counts.unsqueeze(1) * means).sum(0) / counts.sum()
    return means.mean(0)


def _rank(sq: Tensor, num_classes: int, dim: int, cv: CollapseConventions) -> int:
    """Number of eigenpairs of Σ_B to invert, from its eigenvalues (or s_j²) in descending order."""
    if sq.numel() == 0 or not bool(sq[0] > 0):
        raise ValueError("all class means coincide (Σ_B = 0): NC1 is undefined for this layer")
    r_max = min(cv.sb_rank or num_classes - 1, dim, sq.numel())
    rtol = cv.rtol if cv.rtol is not None else max(num_classes, dim) * _EPS64
    return int((sq[:r_max] > rtol * sq[0]).sum())


def _subspace_basis(counts: Tensor, means: Tensor, cv: CollapseConventions
                    ) -> Tuple[Tensor, Tensor, Tensor]:
    """``(V [D, r], s [r], zeros [C, r])``: the top right singular pairs of ``M̃ = means − μ_G``
    and an empty projected scatter (like ``means``)."""
    mt = means - _global_mean(counts, means, cv.global_mean)
    _, s, vh = torch.linalg.svd(mt, full_matrices=False)
    r = _rank(s * s, means.shape[0], means.shape[1], cv)
    proj = torch.zeros(means.shape[0], r, dtype=means.dtype, device=means.device)
    return vh[:r].T.contiguous(), s[:r].clone(), proj


def _within_weights(counts: Tensor, cv: CollapseConventions) -> Tensor:
    """Per-class factor ``w_c`` with Σ_W = Σ_c w_c S_c."""
    c = counts.numel()
    if cv.within == "samples":
        denom = counts.sum() - cv.ddof * c
        if not bool(denom > 0):
            raise ValueError(f"ddof={cv.ddof} leaves no degrees of freedom: N={int(counts.sum())} "
                             f"samples in C={c} classes")
        return torch.full_like(counts, 1.0) / denom
    denom = counts - cv.ddof
    small = (denom <= 0).nonzero().flatten().tolist()
    if small:
        raise ValueError(f"ddof={cv.ddof} with within='classes' needs more than {cv.ddof} samples "
                         f"in every class; classes {small[:10]} are too small")
    return 1.0 / (c * denom)


def _second_pass(x: Tensor, y: Tensor, means: Tensor, basis: Optional[Tensor],
                 clf: Optional[Tuple[Tensor, Optional[Tensor]]], cv: CollapseConventions,
                 proj: Optional[Tensor]) -> Tuple[int, int]:
    """Adds one chunk's projected within-class scatter to ``proj`` (in place); returns
    ``(ncc_correct, nc4_mismatch)`` of the chunk. ``x`` is float64 ``[B, D]``."""
    if basis is not None and proj is not None:
        p = (x - means[y]) @ basis
        proj.index_add_(0, y, p * p)
    # nearest class centre: argmin ‖h − μ_c‖² = argmax (2 h·μ_c − ‖μ_c‖²)
    scores = 2.0 * (x @ means.T) - (means * means).sum(1).unsqueeze(0)
    ncc = scores.argmax(1)
    correct = int((ncc == y).sum())
    mismatch = 0
    if clf is not None:
        w, b = clf
        logits = x @ w.T
        if b is not None and cv.nc4_bias:
            logits = logits + b
        mismatch = int((logits.argmax(1) != ncc).sum())
    return correct, mismatch


def _class_means(x: Tensor, y: Tensor, num_classes: int, dtype: torch.dtype,
                 chunk: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """``(counts [C], means [C, D])`` in ``dtype``, rows converted ``chunk`` at a time; an empty
    class gets a zero mean."""
    counts = torch.bincount(y, minlength=num_classes).to(dtype)
    sums = torch.zeros(num_classes, x.shape[1], dtype=dtype, device=x.device)
    chunk = chunk or max(1, x.shape[0])
    for s in range(0, x.shape[0], chunk):
        sums.index_add_(0, y[s:s + chunk], x[s:s + chunk].to(dtype))
    return counts, sums / counts.clamp_min(1).unsqueeze(1)


def _zero_scatter(cv: CollapseConventions, num_classes: int, dim: int, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    """The within-class scatter of method 'full': pooled ``[D, D]``, per class with
    ``within='classes'``."""
    shape = (num_classes, dim, dim) if cv.within == "classes" else (dim, dim)
    return torch.zeros(*shape, dtype=dtype, device=device)


def _add_scatter(xc: Tensor, y: Tensor, trace: Tensor, scatter: Optional[Tensor]) -> None:
    """Adds the centred rows ``xc`` to the per-class ``trace`` and to ``scatter`` (in place)."""
    trace.index_add_(0, y, (xc * xc).sum(1))
    if scatter is not None and scatter.dim() == 2:
        scatter.addmm_(xc.T, xc)
    elif scatter is not None:
        for c in y.unique().tolist():
            xcc = xc[y == c]
            scatter[c].addmm_(xcc.T, xcc)


def _stats_in_memory(x: Tensor, y: Tensor, num_classes: int, method: str,
                     clf: Optional[Tuple[Tensor, Optional[Tensor]]], cv: CollapseConventions,
                     chunk_size: Optional[int]) -> _Stats:
    """Exact two-pass statistics of an in-memory feature matrix, chunked over rows (``clf`` in
    float64 on the features' device)."""
    n, d = x.shape
    dev, f64 = x.device, torch.float64
    chunk = chunk_size or max(1, (1 << 23) // max(d, 1))  # ≈ 64 MiB of float64 per chunk
    counts, means = _class_means(x, y, num_classes, f64, chunk)
    _check_nonempty(counts)
    scatter = _zero_scatter(cv, num_classes, d, f64, dev) if method == "full" else None
    st = _Stats(counts, means, torch.zeros(num_classes, dtype=f64, device=dev), scatter, n_pass2=n)
    if method == "subspace":
        st.basis, st.sing, st.proj = _subspace_basis(counts, means, cv)
    for s in range(0, n, chunk):
        xb, yb = x[s:s + chunk].to(f64), y[s:s + chunk]
        _add_scatter(xb - means[yb], yb, st.trace, st.scatter)
        correct, mismatch = _second_pass(xb, yb, means, st.basis, clf, cv, st.proj)
        st.ncc_correct += correct
        st.nc4_mismatch += mismatch
    return st


def _clf64(clf: Optional[Tuple[Tensor, Optional[Tensor]]], device: Union[str, torch.device]
           ) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
    if clf is None:
        return None
    w, b = clf
    return (w.to(device, torch.float64),
            None if b is None else b.to(device, torch.float64))


def _classifier_rows(w: Tensor, center: bool) -> Tensor:
    """The classifier weight in float64, less its mean row with ``center``."""
    w = w.to(torch.float64)
    return w - w.mean(0, keepdim=True) if center else w


# ---------------------------------------------------------------------------- NC2 pieces
def _std(v: Tensor, ddof: int) -> float:
    if v.numel() - ddof <= 0:
        return 0.0  # a single value has no spread
    return float(v.std(correction=ddof))


def _nc2(rows: Tensor, cv: CollapseConventions, what: str) -> Dict[str, float]:
    """Equinorm, equiangularity, max-angle and ETF-Gram distance of ``rows`` ``[C, D]``."""
    c = rows.shape[0]
    norms = rows.norm(dim=1)
    bad = (norms <= 0).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"{what} of classes {bad[:10]} have zero norm; their angles (NC2) are "
                         f"undefined")
    unit = rows / norms.unsqueeze(1)
    cos = unit @ unit.T
    iu = torch.triu_indices(c, c, 1, device=rows.device)
    off = cos[iu[0], iu[1]]
    gram = rows @ rows.T
    target = etf_gram(c, device=rows.device) / math.sqrt(c - 1) * ((c - 1) / c)
    # (I − 11ᵀ/C)/√(C−1) has unit Frobenius norm.
    etf = float((gram / gram.norm() - target).norm())
    return {"equinorm": _std(norms, cv.std_ddof) / float(norms.mean()),
            "equiangular": _std(off, cv.std_ddof),
            "maxangle": float((off + 1.0 / (c - 1)).abs().mean()),
            "etf": etf}


def _finalize(st: _Stats, clf: Optional[Tuple[Tensor, Optional[Tensor]]],
              cv: CollapseConventions) -> Dict[str, float]:
    counts, means = st.counts, st.means
    c, d = means.shape
    mt = means - _global_mean(counts, means, cv.global_mean)
    wc = _within_weights(counts, cv)
    out: Dict[str, float] = {}
    # ---- NC1
    if st.scatter is not None:  # naive D × D path
        sw = st.scatter * wc[0] if st.scatter.dim() == 2 else torch.einsum("c,cde->de", wc,
                                                                            st.scatter)
        sb = mt.T @ mt / c
        lam, vec = torch.linalg.eigh(sb)
        lam, vec = lam.flip(0), vec.flip(1)
        rank = _rank(lam, c, d, cv)
        pinv = (vec[:, :rank] / lam[:rank]) @ vec[:, :rank].T
        tr = float(torch.trace(sw @ pinv))
    else:
        if st.proj is None or st.basis is None or st.sing is None:
            raise RuntimeError("subspace statistics are incomplete: the second pass is missing")
        dirs = (wc.unsqueeze(1) * st.proj).sum(0)           # v_jᵀ Σ_W v_j
        tr = float((c * dirs / (st.sing * st.sing)).sum())  # Tr(Σ_W Σ_B^†)
        rank = int(st.sing.numel())
    out["nc1"] = tr / c if cv.nc1_over_classes else tr
    tr_w = float((wc * st.trace).sum())
    tr_b = float((mt * mt).sum()) / c
    out["nc1_trace"] = tr_w / tr_b
    # ---- NC2 (class means)
    out.update({f"nc2_{k}": v for k, v in _nc2(mt, cv, "centred class means").items()})
    # ---- CDNV (Galanti et al. 2022): mean over pairs of (σ²_i + σ²_j) / (2‖μ_i − μ_j‖²)
    denom = counts - cv.ddof
    if not bool((denom > 0).all()):
        raise ValueError(f"ddof={cv.ddof} needs more than {cv.ddof} samples in every class for "
                         f"CDNV")
    var = st.trace / denom
    dist2 = torch.cdist(means, means).pow(2)
    iu = torch.triu_indices(c, c, 1, device=means.device)
    pair = dist2[iu[0], iu[1]]
    if bool((pair <= 0).any()):
        bad = int((pair <= 0).nonzero()[0])
        raise ValueError(f"the means of classes {int(iu[0, bad])} and {int(iu[1, bad])} coincide: "
                         f"CDNV is undefined")
    out["cdnv"] = float(((var[iu[0]] + var[iu[1]]) / (2.0 * pair)).mean())
    if st.n_pass2:
        out["ncc_accuracy"] = st.ncc_correct / st.n_pass2
    # ---- classifier
    if clf is not None:
        w = _classifier_rows(clf[0].to(means.device), cv.center_classifier)
        out.update({f"nc2_{k}_w": v for k, v in _nc2(w, cv, "classifier rows").items()})
        if float(w.norm()) == 0.0:
            raise ValueError("the classifier weight is all zeros: NC3 is undefined")
        dist = float((w / w.norm() - mt / mt.norm()).norm())
        out["nc3"] = dist * dist if cv.nc3_squared else dist
        if st.n_pass2:
            out["nc4"] = st.nc4_mismatch / st.n_pass2
    out.update(num_classes=c, n_samples=int(counts.sum()), dim=d, sb_rank=rank)
    return out


def _check_method(method: str) -> str:
    return check_choice(method, "method", ("auto", "subspace", "full"))


# ============================================================================ in-memory API
def class_means(features: Tensor, labels: Tensor, num_classes: Optional[int] = None
                ) -> Tuple[Tensor, Tensor]:
    """Per-class means and counts, in float64.

    Args:
        features: ``[N, D]`` (or ``[N, ...]``, flattened).
        labels: ``[N]`` integer labels in ``[0, C)``; without ``num_classes``, any class ids
            (``{0, 1, 10**9}`` are three classes, rows ``0, 1, 2`` in sorted order).
        num_classes: ``C``; default: the number of distinct labels.

    Returns:
        ``(means [C, D] float64, counts [C] float64)``.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.tensor([[0., 2.], [2., 2.], [5., 5.]])
        >>> m, n = dg.measures.class_means(x, torch.tensor([0, 0, 1]))
        >>> m.tolist(), n.tolist()
        ([[1.0, 2.0], [5.0, 5.0]], [2.0, 1.0])
    """
    x, y, c = _features_labels(features, labels, num_classes, "features")
    counts, means = _class_means(x, y, c, torch.float64)
    _check_nonempty(counts)
    return means, counts


def _layer_collapse(x: Tensor, y: Tensor, classifier: Any, num_classes: Optional[int], method: str,
                    cv: CollapseConventions, chunk_size: Optional[int], name: str
                    ) -> Dict[str, float]:
    x, y, c = _features_labels(x, y, num_classes, name)
    clf = _clf64(parse_classifier(classifier, x.shape[1], c), x.device)
    method = "subspace" if method == "auto" else method
    return _finalize(_stats_in_memory(x, y, c, method, clf, cv, chunk_size), clf, cv)


def neural_collapse(features: Union[Tensor, LayerFeatures, Mapping[str, Tensor], Any],
                    labels: Optional[Tensor] = None, classifier: Any = None, *,
                    num_classes: Optional[int] = None, layer: Optional[str] = None,
                    classifier_layer: Optional[str] = None, method: str = "auto",
                    chunk_size: Optional[int] = None,
                    conventions: Optional[CollapseConventions] = None, **kw: Any
                    ) -> Dict[str, Any]:
    """Neural-collapse metrics of one layer's features, or of every layer of a
    :class:`LayerFeatures`.

    Keys (floats; smaller is more collapsed unless noted):

    * ``nc1``: Tr(Σ_W Σ_B^†)/C, the top ``C − 1`` eigenpairs of Σ_B inverted in float64;
    * ``nc1_trace``: Tr(Σ_W)/Tr(Σ_B);
    * ``nc2_equinorm``: std/mean of ‖μ_c − μ_G‖;
    * ``nc2_equiangular``: std of the pairwise cosines of the centred means;
    * ``nc2_maxangle``: mean |cos + 1/(C−1)|;
    * ``nc2_etf``: ‖G/‖G‖_F − (I − 11ᵀ/C)/√(C−1)‖_F with G = M̃M̃ᵀ (Zhu et al. 2021);
    * ``cdnv``: class-distance normalised variance (Galanti et al. 2022), mean over pairs;
    * ``ncc_accuracy``: accuracy of the nearest-class-centre rule (higher = more collapsed);
    * with a classifier: ``nc2_*_w`` (the same four for its rows), ``nc3`` (self-duality
      ‖W/‖W‖_F − M̃/‖M̃‖_F‖²_F) and ``nc4`` (share of samples where the classifier's prediction
      differs from the nearest class centre);
    * bookkeeping: ``num_classes``, ``n_samples``, ``dim``, ``sb_rank`` (eigenpairs inverted).

    Args:
        features: ``[N, D]`` (``[N, ...]`` is flattened), a :class:`LayerFeatures`, or a dict
            ``{layer: Tensor}`` (then ``labels`` is needed).
        labels: ``[N]`` integer labels in ``[0, C)``; taken from ``features.y`` for LayerFeatures.
            Without ``num_classes`` any class ids do: they are renumbered ``0..C-1`` in sorted
            order (``{0, 1, 10**9}`` gives the result of ``{0, 1, 2}``, in bounded memory).
        classifier: ``nn.Linear``, weight ``[C, D]`` or ``(weight, bias)`` of the last layer; row
            ``c`` is class ``c`` (the ``c``-th smallest label). With several layers it applies
            to ``classifier_layer``.
        num_classes: ``C``; default: the number of distinct labels. Every class needs a sample.
        layer: With several layers, compute only this one and return its flat dict.
        classifier_layer: The layer that feeds the classifier (default: the last one).
        method: ``'subspace'`` (exact, O(C·D) besides the data; ``'auto'``) or ``'full'`` (the
            naive D × D Σ_W and Σ_B eigendecomposition; same value, for reference).
        chunk_size: Rows converted to float64 at a time.
        conventions: A :class:`CollapseConventions`; single fields can also be given as keywords
            (``global_mean``, ``within``, ``ddof``, ``nc1_over_classes``, ``sb_rank``, ``rtol``,
            ``std_ddof``, ``nc3_squared``, ``nc4_bias``, ``center_classifier``).

    Returns:
        The metric dict, or ``{layer: metric dict}`` for several layers.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(300) % 3
        >>> etf = dg.measures.simplex_etf(3, dim=8)[y].float()
        >>> x = 10 * etf + 0.1 * torch.randn(300, 8, generator=g)
        >>> r = dg.measures.neural_collapse(x, y)
        >>> r['nc1'] < 1e-3, r['nc2_maxangle'] < 1e-2, r['ncc_accuracy']
        (True, True, 1.0)
    """
    cv = _conventions(conventions, kw)
    _check_method(method)
    if isinstance(features, Tensor):
        if labels is None:
            raise ValueError("labels is required with a feature tensor")
        return _layer_collapse(features, labels, classifier, num_classes, method, cv, chunk_size,
                               "features")
    feats = _as_layer_features(features, labels)
    names = feats.names
    for arg, value in (("layer", layer), ("classifier_layer", classifier_layer)):
        if value is not None and value not in names:
            raise ValueError(f"{arg}={value!r} is not among the layers {names}")
    classifier_layer = names[-1] if classifier_layer is None else classifier_layer
    out: Dict[str, Any] = OrderedDict()
    for name in ([layer] if layer is not None else names):
        clf = classifier if name == classifier_layer else None
        out[name] = _layer_collapse(feats[name], feats.y, clf, num_classes, method, cv, chunk_size,
                                    f"features[{name!r}]")
    return out[layer] if layer is not None else out


def _as_layer_features(features: Any, labels: Optional[Tensor]) -> LayerFeatures:
    if isinstance(features, LayerFeatures):
        if labels is None:
            return features
        return LayerFeatures({n: features[n] for n in features},
                             check_labels(labels, features.n_samples, "labels"), features.indices,
                             features.meta)
    from ..graphs._graph import DynamicGraph
    if isinstance(features, DynamicGraph):
        layers: Dict[str, Tensor] = {}
        ys: Optional[Tensor] = None
        for i, snap in enumerate(features):
            x = getattr(snap, "x", None)
            if x is None:
                raise ValueError(f"snapshot {i} ({getattr(snap, 'layer_name', i)!r}) stores no "
                                 f"features; build it with DynamicGraph.from_features(..., "
                                 f"keep_x=True)")
            layers[str(getattr(snap, "layer_name", i))] = x
            ys = snap.y if ys is None else ys
        y = labels if labels is not None else ys
        if y is None:
            raise ValueError("the snapshots carry no labels y; pass labels")
        return LayerFeatures(layers, check_labels(y, next(iter(layers.values())).shape[0],
                                                  "labels"))
    if isinstance(features, Mapping):
        if not features:
            raise ValueError("features is empty: no layers")
        if labels is None:
            raise ValueError("labels is required with a dict of feature tensors")
        first = next(iter(features.values()))
        check_tensor(first, "features[first layer]")
        return LayerFeatures(dict(features), check_labels(labels, first.shape[0], "labels"))
    raise TypeError(f"features must be a Tensor [N, D], a LayerFeatures, a dict {{layer: Tensor}} "
                    f"or a DynamicGraph, got {type(features).__name__}")


# ============================================================================ streaming
class NeuralCollapseAccumulator:
    """Streams batches of one layer's features into the neural-collapse statistics, in float64.

    Pass 1 merges each batch's class counts, means and scatter into the running ones with Chan et
    al.'s pairwise update (``M2 = M2_a + M2_b + δδᵀ n_a n_b / n``), which is exact and numerically
    stable in any batch order. What it keeps depends on ``method``:

    * ``'full'``: the pooled ``D × D`` within-class scatter (``[C, D, D]`` with
      ``within='classes'``). NC1 follows after one pass.
    * ``'subspace'``: only ``[C, D]`` means, so memory is ``O(C·D)``. After pass 1, the class-mean
      subspace ``V`` (``D × r``, ``r ≤ C − 1``) is fixed, and a second pass over the same data
      accumulates ``Σ_{i∈c} ((h_i − μ_c)·v_j)²``, giving the exact NC1.

    NC4 and the NCC accuracy need the final class means, hence also a second pass. Call
    :meth:`next_pass` between the passes; :attr:`needs_second_pass` says whether one is needed.
    The second pass must see the same samples (a deterministic loader, no augmentation).

    Args:
        num_classes: ``C``.
        classifier: Optional ``nn.Linear`` / ``W`` / ``(W, b)`` for NC2-W, NC3 and NC4.
        method: ``'auto'`` (``'full'`` when the dense scatter has at most ``max_dense_dim²``
            entries, else ``'subspace'``), ``'full'`` or ``'subspace'``.
        max_dense_dim: See ``method='auto'``.
        dtype: Accumulation dtype (float64).
        conventions, **kw: As in :func:`neural_collapse`.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(400) % 4
        >>> etf = dg.measures.simplex_etf(4, dim=16)[y].float()
        >>> x = 3 * etf + torch.randn(400, 16, generator=g)
        >>> acc = dg.measures.NeuralCollapseAccumulator(4, method='subspace')
        >>> for s in range(0, 400, 64): acc.update(x[s:s + 64], y[s:s + 64])
        >>> acc.next_pass()
        >>> for s in range(0, 400, 64): acc.update(x[s:s + 64], y[s:s + 64])
        >>> abs(acc.compute()['nc1'] - dg.measures.neural_collapse(x, y)['nc1']) < 1e-10
        True
    """

    def __init__(self, num_classes: int, classifier: Any = None, *, method: str = "auto",
                 max_dense_dim: int = 2048, dtype: torch.dtype = torch.float64,
                 conventions: Optional[CollapseConventions] = None, **kw: Any) -> None:
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.cv = _conventions(conventions, kw)
        self.method_arg = _check_method(method)
        self.max_dense_dim = check_positive_int(max_dense_dim, "max_dense_dim")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype, got {dtype!r}")
        self.dtype = dtype
        parse_classifier(classifier, None, self.num_classes)  # its type and shape, now
        self._classifier = classifier
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forgets everything (back to pass 1)."""
        self.phase = 1
        self.dim: Optional[int] = None
        self.method: Optional[str] = None
        self.clf: Optional[Tuple[Tensor, Optional[Tensor]]] = None
        self.counts: Optional[Tensor] = None
        self.means: Optional[Tensor] = None
        self.trace: Optional[Tensor] = None
        self.scatter: Optional[Tensor] = None
        self.basis: Optional[Tensor] = None
        self.sing: Optional[Tensor] = None
        self.proj: Optional[Tensor] = None
        self.counts2: Optional[Tensor] = None
        self.ncc_correct = self.nc4_mismatch = 0

    def _moments(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(counts, means, trace)`` of pass 1; raises before the first batch."""
        if self.counts is None or self.means is None or self.trace is None:
            raise ValueError("no data: call update() with at least one batch first")
        return self.counts, self.means, self.trace

    def _init_state(self, dim: int, device: torch.device) -> None:
        c = self.num_classes
        self.dim = dim
        self.clf = parse_classifier(self._classifier, dim, c)
        dense_entries = dim * dim * (c if self.cv.within == "classes" else 1)
        auto = "full" if dense_entries <= self.max_dense_dim ** 2 else "subspace"
        self.method = auto if self.method_arg == "auto" else self.method_arg
        self.counts = torch.zeros(c, dtype=self.dtype, device=device)
        self.means = torch.zeros(c, dim, dtype=self.dtype, device=device)
        self.trace = torch.zeros(c, dtype=self.dtype, device=device)
        if self.method == "full":
            self.scatter = _zero_scatter(self.cv, c, dim, self.dtype, device)

    @property
    def needs_second_pass(self) -> bool:
        """Whether :meth:`compute` needs a second pass (subspace NC1, NC4, NCC accuracy)."""
        if self.method is None:
            return self.method_arg == "subspace" or self._classifier is not None
        return self.method == "subspace" or self.clf is not None

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulated statistics."""
        return sum(t.numel() * t.element_size() for t in
                   (self.counts, self.means, self.trace, self.scatter, self.basis, self.sing,
                    self.proj, self.counts2) if t is not None)

    def __repr__(self) -> str:
        return (f"NeuralCollapseAccumulator(num_classes={self.num_classes}, "
                f"method={self.method or self.method_arg!r}, dim={self.dim}, phase={self.phase}, "
                f"n_samples={0 if self.counts is None else int(self.counts.sum())})")

    # ------------------------------------------------------------------ updates
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Adds a batch ``[B, D]`` (``[B, ...]`` is flattened) with labels ``[B]`` to the current
        pass."""
        x, y, _ = _features_labels(features, labels, self.num_classes, "features")
        if self.dim is None:
            self._init_state(x.shape[1], x.device)
        elif x.shape[1] != self.dim:
            raise ValueError(f"features have D={x.shape[1]} columns but earlier batches had "
                             f"D={self.dim}")
        dev = self._moments()[1].device
        x, y = x.to(dev, self.dtype), y.to(dev)
        if x.shape[0] == 0:
            return
        if self.counts2 is None:  # pass 1: merge the batch's moments
            nb, mb = _class_means(x, y, self.num_classes, self.dtype)
            trb = torch.zeros(self.num_classes, dtype=self.dtype, device=dev)
            sb = None if self.scatter is None else torch.zeros_like(self.scatter)
            _add_scatter(x - mb[y], y, trb, sb)
            self._merge(nb, mb, trb, sb)
            return
        self.counts2.index_add_(0, y, torch.ones_like(y, dtype=self.dtype))
        c_, m_ = _second_pass(x, y, self._moments()[1], self.basis, _clf64(self.clf, x.device),
                              self.cv, self.proj)
        self.ncc_correct += c_
        self.nc4_mismatch += m_

    def _merge(self, nb: Tensor, mb: Tensor, trb: Tensor, sb: Optional[Tensor]) -> None:
        """Chan et al.'s pairwise merge of (counts, means, scatter) into the running state."""
        na, ma, tr = self._moments()
        n = na + nb
        safe = n.clamp_min(1)
        delta = mb - ma
        coef = na * nb / safe                      # 0 where a side is empty
        self.means = ma + delta * (nb / safe).unsqueeze(1)
        self.trace = tr + trb + coef * (delta * delta).sum(1)
        if self.scatter is not None and sb is not None:
            if self.scatter.dim() == 2:
                dd = delta * coef.sqrt().unsqueeze(1)
                self.scatter += sb + dd.T @ dd
            else:
                self.scatter += sb + coef[:, None, None] * delta.unsqueeze(2) * delta.unsqueeze(1)
        self.counts = n

    def merge(self, other: "NeuralCollapseAccumulator") -> "NeuralCollapseAccumulator":
        """Folds another accumulator's first-pass statistics into this one (Chan's merge), e.g.
        one per data shard or per process. Both must be in pass 1 with the same settings."""
        if not isinstance(other, NeuralCollapseAccumulator):
            raise TypeError(f"other must be a NeuralCollapseAccumulator, got "
                            f"{type(other).__name__}")
        if self.phase != 1 or other.phase != 1:
            raise ValueError("merge() combines first-pass statistics; call it before next_pass()")
        if other.dim is None:
            return self
        if other.num_classes != self.num_classes or other.cv != self.cv:
            raise ValueError("cannot merge accumulators with different num_classes or conventions")
        counts, means, trace = other._moments()
        if self.dim is None:
            self._init_state(other.dim, means.device)
        if other.dim != self.dim or other.method != self.method:
            raise ValueError(f"cannot merge D={other.dim}/method={other.method!r} into "
                             f"D={self.dim}/method={self.method!r}")
        dev = self._moments()[1].device
        self._merge(counts.to(dev), means.to(dev), trace.to(dev),
                    None if other.scatter is None else other.scatter.to(dev))
        return self

    def next_pass(self) -> None:
        """Ends pass 1: freezes the class means (and the class-mean subspace); later
        :meth:`update` calls feed pass 2."""
        if self.phase != 1:
            raise ValueError("next_pass() was already called; there are only two passes")
        counts, means, _ = self._moments()
        _check_nonempty(counts, "the first pass")
        if self.method == "subspace":
            self.basis, self.sing, self.proj = _subspace_basis(counts, means, self.cv)
        self.counts2 = torch.zeros_like(counts)
        self.ncc_correct = self.nc4_mismatch = 0
        self.phase = 2

    def compute(self) -> Dict[str, float]:
        """The metric dict of :func:`neural_collapse` from what was streamed."""
        counts, means, trace = self._moments()
        _check_nonempty(counts, "the streamed data")
        n_pass2 = 0 if self.counts2 is None else int(self.counts2.sum())
        if self.needs_second_pass and not n_pass2:
            raise ValueError(f"method={self.method!r}"
                             f"{' with a classifier' if self.clf is not None else ''} needs a "
                             f"second pass: call next_pass() and update() with the same data")
        if self.counts2 is not None and n_pass2 and not torch.equal(self.counts2, counts):
            raise ValueError(f"the second pass saw other samples (class counts "
                             f"{self.counts2.long().tolist()} vs {counts.long().tolist()}); "
                             f"use a deterministic loader without augmentation")
        st = _Stats(counts, means, trace, self.scatter, self.basis, self.sing, self.proj, n_pass2,
                    self.ncc_correct, self.nc4_mismatch)
        return _finalize(st, self.clf, self.cv)


def neural_collapse_stream(batches: Iterable[Any], num_classes: int, classifier: Any = None, *,
                           method: str = "auto", max_dense_dim: int = 2048,
                           batch_fn: Optional[Callable[[Any], Any]] = None,
                           progress: bool = False,
                           conventions: Optional[CollapseConventions] = None, **kw: Any
                           ) -> Dict[str, float]:
    """Neural collapse of features that arrive in batches (one or two passes over ``batches``).

    Args:
        batches: A re-iterable (a ``DataLoader`` over a ``TensorDataset`` of features, a list) of
            ``(features [B, D], labels [B])``.
        num_classes, classifier, method, max_dense_dim, conventions, **kw: As in
            :class:`NeuralCollapseAccumulator`.
        batch_fn: ``batch -> (features, labels)`` for other batch shapes.
        progress: Progress bars.

    Returns:
        The metric dict of :func:`neural_collapse`.

    Example:
        >>> import torch, dyngraph as dg
        >>> y = torch.arange(60) % 3
        >>> x = dg.measures.simplex_etf(3, dim=5)[y].float() + 0.01 * torch.randn(60, 5)
        >>> chunks = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 60, 16)]
        >>> a = dg.measures.neural_collapse_stream(chunks, 3)['nc1']
        >>> abs(a - dg.measures.neural_collapse(x, y)['nc1']) < 1e-9
        True
    """
    acc = NeuralCollapseAccumulator(num_classes, classifier, method=method,
                                    max_dense_dim=max_dense_dim, conventions=conventions, **kw)

    def feed(desc: str) -> None:
        for b in progress_bar(batches, desc=desc, disable=not progress):
            xb, yb = batch_fn(b) if batch_fn is not None else b
            acc.update(xb, yb)

    feed("collapse pass 1")
    if acc.needs_second_pass:
        if isinstance(batches, Iterator):
            raise TypeError(f"method={acc.method!r}{' with a classifier' if acc.clf else ''} needs "
                            f"a second pass, but batches is a one-shot iterator; pass a "
                            f"re-iterable (a DataLoader or a list)")
        acc.next_pass()
        feed("collapse pass 2")
    return acc.compute()


# ============================================================================ models
def _find_classifier(model: nn.Module, classifier: Any) -> Optional[Tuple[str, nn.Linear]]:
    if classifier is None:
        return None
    named = dict(model.named_modules())
    linears = [n for n, m in named.items() if isinstance(m, nn.Linear)]
    if isinstance(classifier, str):
        if classifier == "auto":
            if not linears:
                raise ValueError("classifier='auto' found no nn.Linear in the model; pass "
                                 "classifier=None or the name of the last layer")
            classifier = linears[-1]
        found = named.get(classifier)
        if not isinstance(found, nn.Linear):
            raise ValueError(f"classifier={classifier!r} is not the name of an nn.Linear in the "
                             f"model; linear layers: {linears}")
        return classifier, found
    if isinstance(classifier, nn.Linear):
        for n, m in named.items():
            if m is classifier:
                return n, classifier
        raise ValueError("classifier is an nn.Linear that is not part of the model")
    raise TypeError(f"classifier must be 'auto', None, a layer name or an nn.Linear of the model, "
                    f"got {type(classifier).__name__}")


def _model_layers(model: nn.Module, layers: LayerSpec, clf_name: Optional[str]) -> LayerSpec:
    """``layers``, or the default layers plus, with a classifier, its input (before it)."""
    if layers is not None:
        return layers
    names = default_layers(model)
    point = f"{clf_name}:input"
    if clf_name is not None and point not in names:
        names.insert(names.index(clf_name) if clf_name in names else len(names), point)
    return names


def _class_codes(labels: Tensor, classes: Optional[Tensor]) -> Tensor:
    """``labels`` renumbered by their position in the sorted ``classes`` (``None``: as they
    are); a label that is not one of ``classes`` is an error."""
    if classes is None:
        return labels
    pos = torch.searchsorted(classes, labels).clamp_max_(classes.numel() - 1)
    bad = classes[pos] != labels
    if bool(bad.any()):
        raise ValueError(f"labels: the loader gives label {int(labels[bad][0])}, which is not "
                         f"among the {classes.numel()} labels of its dataset")
    return pos


def _stream_pass(taps: LayerTaps, loader: Iterable[Any],
                 accs: Mapping[str, "NeuralCollapseAccumulator"],
                 device: torch.device, batch_fn: Optional[Callable[[Any], Any]],
                 max_batches: Optional[int], progress: bool, desc: str,
                 classes: Optional[Tensor] = None) -> None:
    """One pass of ``loader`` through the (entered) taps into the accumulators. With
    ``pool='tokens'`` every token row gets the label of its input (``taps.tokens``); with
    ``classes`` the labels are renumbered by their position among them."""
    total = len(loader) if isinstance(loader, Sized) else None
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    for i, batch in enumerate(progress_bar(loader, desc=desc, total=total,
                                           disable=not progress)):
        if max_batches is not None and i >= max_batches:
            break
        inputs, yb = split_batch(batch, batch_fn)
        feats = taps(to_device(inputs, device))
        labels = check_labels(yb, torch.as_tensor(yb).numel(), "labels").cpu()
        if taps.pool == "tokens" and taps.tokens is not None:
            labels = labels[taps.tokens[0].cpu()]   # each token row: its input's label
        labels = _class_codes(labels, classes)
        for alias, acc in accs.items():
            acc.update(feats[alias], labels.to(feats[alias].device))


def neural_collapse_model(model: nn.Module, loader: Iterable[Any], layers: LayerSpec = None,
                          classifier: Any = "auto", *, num_classes: Optional[int] = None,
                          method: str = "auto", max_dense_dim: int = 2048,
                          pool: Union[None, str, int] = None,
                          device: Optional[Union[str, torch.device]] = None,
                          batch_fn: Optional[Callable[[Any], Any]] = None,
                          max_batches: Optional[int] = None, progress: bool = True,
                          on_error: str = "raise",
                          conventions: Optional[CollapseConventions] = None,
                          layout: Optional[str] = None, **kw: Any
                          ) -> "OrderedDict[str, Dict[str, Any]]":
    """Streams a model over a loader and returns the neural-collapse metrics of every layer,
    without storing any features (one :class:`NeuralCollapseAccumulator` per layer).

    The layers are tapped with :class:`dg.capture.LayerTaps <dyngraph.capture.LayerTaps>`: the
    model runs in ``eval()`` mode without autograd, and on return (also after an error) every hook
    is removed and the training mode restored.

    Args:
        model: The network.
        loader: A deterministic, re-iterable loader of ``(inputs, labels)``.
        layers: As in :func:`dg.extract_features <dyngraph.extract_features>`; default
            :func:`dg.default_layers <dyngraph.default_layers>` plus, with a classifier, its input
            (``'<fc>:input'``, the penultimate features).
        classifier: ``'auto'`` (the model's last ``nn.Linear``), a layer name, an ``nn.Linear`` of
            the model, or ``None``. NC2-W, NC3 and NC4 are reported at its input.
        num_classes: ``C``; default: the classifier's ``out_features``, or the number of
            distinct labels of the dataset (then any class ids do: ``{0, 1, 10**9}`` are three
            classes, renumbered ``0, 1, 2`` in sorted order). With ``num_classes`` or a
            classifier the labels must lie in ``[0, C)``.
        method, max_dense_dim: Per layer, as in :class:`NeuralCollapseAccumulator`.
        pool: ``None`` (flatten), ``'avg'``, ``'max'`` or an int for conv maps; ``'mean'``,
            ``'cls'``, ``'last'`` or ``'tokens'`` for token sequences, as in
            ``extract_features``. With ``'tokens'`` every real token is a sample with its input's
            label (tap layers that return ``[B, T, H]``; ``classifier=None`` unless the
            classifier reads every token).
        device: Where to run the model (default: where its parameters are).
        batch_fn: ``batch -> (inputs, labels)``.
        max_batches: Use only the first batches of each pass.
        progress: Progress bars.
        on_error: ``'raise'``, or ``'warn'``: a layer whose metrics are undefined (e.g. a dead
            ReLU layer whose class means coincide) gets ``{'error': message}`` and a warning.
        conventions, **kw: As in :func:`neural_collapse`.
        layout: ``None`` (detected per layer), ``'channels_first'`` or ``'channels_last'``, as
            in :class:`dg.capture.LayerTaps <dyngraph.capture.LayerTaps>`.

    Returns:
        ``{layer: metric dict}`` in depth order (:func:`collapse_curves` turns it into a
        :class:`~dyngraph.DepthProfile`).

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = TensorDataset(torch.randn(90, 4), torch.arange(90) % 3)
        >>> m = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> r = dg.measures.neural_collapse_model(m, DataLoader(ds, batch_size=32), progress=False)
        >>> list(r), 'nc4' in r['2:input']
        (['0', '2:input', '2'], True)
    """
    from .._validate import check_model, model_device
    from ..capture._extract import dataset_labels
    check_model(model)
    if not hasattr(loader, "__iter__") or isinstance(loader, Iterator):
        raise TypeError(f"loader must be a re-iterable of batches (a DataLoader), got "
                        f"{type(loader).__name__}")
    cv = _conventions(conventions, kw)
    _check_method(method)
    check_choice(on_error, "on_error", ("raise", "warn"))
    found = _find_classifier(model, classifier)
    clf_name, clf_mod = found if found else (None, None)
    taps = LayerTaps(model, _model_layers(model, layers, clf_name), pool, layout=layout)
    classes: Optional[Tensor] = None       # the dataset's labels, when they are not 0..C-1
    if num_classes is None and clf_mod is not None:
        num_classes = clf_mod.out_features
    elif num_classes is None:
        dataset = getattr(loader, "dataset", None)
        known = dataset_labels(dataset) if dataset is not None else None
        if known is None or known.numel() == 0:
            raise ValueError("num_classes is needed: no classifier and the dataset does not "
                             "expose its labels")
        classes = compact_labels(known)[1]
        num_classes = int(classes.numel())
        if int(classes[-1]) == num_classes - 1:
            classes = None                     # already 0..C-1: the labels are the codes
    dev = torch.device(device) if device is not None else model_device(model)
    accs: "OrderedDict[str, NeuralCollapseAccumulator]" = OrderedDict()
    for alias, point in taps.spec.items():
        clf = clf_mod if point == (clf_name, "input") else None
        accs[alias] = NeuralCollapseAccumulator(num_classes, clf, method=method,
                                                max_dense_dim=max_dense_dim, conventions=cv)
    with taps:
        _stream_pass(taps, loader, accs, dev, batch_fn, max_batches, progress, "collapse pass 1",
                     classes)
        if any(a.needs_second_pass for a in accs.values()):
            for a in accs.values():
                a.next_pass()
            _stream_pass(taps, loader, accs, dev, batch_fn, max_batches, progress,
                         "collapse pass 2", classes)
    out: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
    for alias, acc in accs.items():
        try:
            out[alias] = acc.compute()
        except ValueError as exc:
            if on_error == "raise":
                raise ValueError(f"layer {alias!r}: {exc}") from exc
            warnings.warn(f"neural collapse of layer {alias!r} is undefined: {exc}",
                          stacklevel=2)
            out[alias] = {"error": str(exc)}
    return out


# ============================================================================ depth profiles
def _results_profile(results: Mapping[str, Mapping[str, Any]],
                     meta: Optional[Dict[str, Any]] = None) -> DepthProfile:
    """``{layer: metric dict}`` → a one-repeat :class:`DepthProfile` of every metric of
    :data:`METRICS` found at some layer (``NaN`` where a layer lacks it); the messages of layers
    recorded as ``{'error': ...}`` go to ``meta['errors']``."""
    layers = list(results)
    metrics = [m for m in METRICS if any(m in r for r in results.values())]
    samples = torch.tensor([[float(results[n].get(m, math.nan)) for m in metrics]
                            for n in layers], dtype=torch.float64)
    samples = samples.reshape(1, len(layers), len(metrics))
    meta = dict(meta or {})
    errors = {n: str(r["error"]) for n, r in results.items() if "error" in r}
    if errors:
        meta["errors"] = errors
    return DepthProfile(layers, metrics, samples, meta)


def collapse_curves(features: Any, y: Optional[Tensor] = None, *,
                    metrics: Optional[Sequence[str]] = None, num_classes: Optional[int] = None,
                    per_class: Optional[int] = None, n_samples: Optional[int] = None,
                    repeats: int = 1, seed: int = 0, method: str = "auto",
                    chunk_size: Optional[int] = None, progress: bool = False,
                    conventions: Optional[CollapseConventions] = None, **kw: Any
                    ) -> DepthProfile:
    """The neural-collapse metrics defined at every layer, as one
    :class:`~dyngraph.DepthProfile`: :func:`dg.depth_profile <dyngraph.depth_profile>` with the
    registered measures ``'nc1'``, ``'nc1_trace'``, ``'nc2_*'``, ``'cdnv'`` and
    ``'ncc_accuracy'``, every one with the same options.

    The classifier metrics (``nc3``, ``nc4``, ``nc2_*_w``) exist only where the classifier reads
    the features: take them from :func:`neural_collapse`, or from ``dg.depth_profile`` with
    ``measure_options={'nc3': {'classifier': fc}}`` over layers of the classifier's width.

    Args:
        features: :class:`~dyngraph.LayerFeatures`, ``{layer: Tensor}`` (with ``y``), a
            :class:`~dyngraph.DynamicGraph` built with ``keep_x=True``, or the
            ``{layer: metric dict}`` that :func:`neural_collapse_model` /
            :func:`neural_collapse` return (then no resampling options apply).
        y: Labels ``[N]`` (LayerFeatures and snapshots carry their own).
        metrics: Which metrics (default: :data:`LAYER_METRICS`, those present at every layer).
        per_class, n_samples, repeats, seed: Class-balanced resampling of ``dg.depth_profile``:
            repeat ``r`` draws its own sample with seed ``seed + r``.
        num_classes, method, chunk_size, conventions, **kw: As in :func:`neural_collapse`.
        progress: A progress bar over repeats × layers.

    Returns:
        A :class:`~dyngraph.DepthProfile`, samples ``[repeats, layers, metrics]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 4
        >>> etf = dg.measures.simplex_etf(4, 8)[y].float()
        >>> f = {'a': torch.randn(200, 8, generator=g),
        ...      'b': 4 * etf + torch.randn(200, 8, generator=g)}
        >>> p = dg.measures.collapse_curves(f, y)
        >>> p.layers, bool(p['nc1'].values[1] < p['nc1'].values[0])
        (['a', 'b'], True)
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    precomputed = isinstance(features, Mapping) and bool(features) and all(
        isinstance(v, Mapping) for v in features.values())
    defined = list(LAYER_METRICS)
    if precomputed:
        prof = _results_profile(features, {"source": "precomputed"})
        defined = [m for m in prof.metrics if not bool(prof[m].samples.isnan().any())]
    chosen = [m for m in LAYER_METRICS if m in defined] if metrics is None else list(metrics)
    missing = [m for m in chosen if m not in defined]
    if missing or not chosen:
        raise ValueError(f"metrics {missing or chosen} are not available at every layer; "
                         f"available: {defined} (classifier metrics exist at the classifier "
                         f"layer only)")
    if precomputed:
        return prof[chosen]
    from ..profiles._runner import depth_profile
    _check_method(method)
    options: Dict[str, Any] = {"method": method, **asdict(_conventions(conventions, kw))}
    options.update({k: v for k, v in (("num_classes", num_classes), ("chunk_size", chunk_size))
                    if v is not None})
    return depth_profile(_as_layer_features(features, y), chosen, repeats=repeats,
                         per_class=per_class, n_samples=n_samples, seed=seed,
                         measure_options={m: options for m in chosen}, progress=progress)


# ============================================================================ minority collapse
def _pair_stats(rows: Tensor, idx: Tensor, same: float) -> Tuple[float, float]:
    """Mean pairwise cosine and mean pairwise distance among ``rows[idx]``; pairs closer than
    ``same`` count as coinciding (cosine 1), a zero vector's other cosines are 0."""
    sub = rows[idx]
    norms = sub.norm(dim=1, keepdim=True).clamp_min(torch.finfo(sub.dtype).tiny)
    cos = (sub / norms) @ (sub / norms).T
    k = idx.numel()
    iu = torch.triu_indices(k, k, 1, device=rows.device)
    dist = torch.cdist(sub, sub)[iu[0], iu[1]]
    pair_cos = torch.where(dist <= same, torch.ones_like(dist), cos[iu[0], iu[1]])
    return float(pair_cos.mean()), float(dist.mean())


def minority_collapse(classifier: Any = None, features: Optional[Tensor] = None,
                      labels: Optional[Tensor] = None, *,
                      minority: Optional[Sequence[int]] = None, n_majority: Optional[int] = None,
                      num_classes: Optional[int] = None, center_classifier: bool = False,
                      global_mean: str = "samples", atol: float = 1e-6) -> Dict[str, float]:
    """Minority Collapse (Fang et al. 2021): how far the minority classes' classifier vectors and
    class means have merged.

    Keys (from the classifier, when given):

    * ``minority_cos_w``: mean pairwise cosine of the minority classifier rows (→ 1 on collapse);
    * ``majority_cos_w``: the same among majority rows (a simplex gives −1/(K_A−1));
    * ``minority_dist_w``: mean ‖w_k − w_k'‖ over minority pairs divided by the mean majority
      ‖w_k‖ (→ 0 on collapse; well defined even when minority rows shrink to zero);
    * ``minority_norm_ratio_w``: mean minority ‖w_k‖ / mean majority ‖w_k‖.

    From ``features`` and ``labels`` (class means centred by the global mean):
    ``minority_cos_means``, ``majority_cos_means``, ``minority_dist_means``,
    ``minority_norm_ratio_means``.

    Two vectors closer than ``atol`` times the mean majority norm count as coinciding (cosine 1):
    past the collapse threshold the minority vectors of the Layer-Peeled Model may also shrink to
    zero, where the raw cosine of the ~1e-9 residuals is noise. Otherwise a zero vector's cosine
    is 0.

    Args:
        classifier: ``nn.Linear`` / ``W [K, D]`` / ``(W, b)``.
        features, labels: Last-layer features ``[N, D]`` and labels, for the class-mean metrics.
        minority: The minority class ids; or
        n_majority: ``K_A``: classes ``0..K_A−1`` are the majority, the rest the minority (the
            layout of Fang et al.). From labels alone (no classifier, no ``num_classes``) any
            class ids do: ``minority`` names label values, and ``n_majority`` the ``K_A``
            smallest labels.
        num_classes: ``K`` (default from the classifier or the labels).
        center_classifier: Subtract the mean classifier row first.
        global_mean: ``'samples'`` or ``'classes'``, for centring the class means.
        atol: Relative distance below which two vectors coincide.

    Returns:
        The metric dict, with ``n_minority`` and ``n_majority``.

    Example:
        >>> import torch, dyngraph as dg
        >>> minority = torch.tensor([[0., 0, 0, 1], [0, 0, 0, 1]])
        >>> w = torch.cat([dg.measures.simplex_etf(3, 4).float(), minority])
        >>> r = dg.measures.minority_collapse(w, n_majority=3)
        >>> round(r['minority_cos_w'], 6), round(r['minority_dist_w'], 6)
        (1.0, 0.0)
    """
    check_choice(global_mean, "global_mean", ("samples", "classes"))
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not 0 <= atol < 1:
        raise ValueError(f"atol must be a number in [0, 1), got atol={atol!r}")
    clf = parse_classifier(classifier, None, None)
    k = clf[0].shape[0] if clf is not None else None
    means: Optional[Tensor] = None
    counts: Optional[Tensor] = None
    ids: Optional[Tensor] = None   # the label of each class-mean row, when not 0..K-1
    if features is not None:
        if labels is None:
            raise ValueError("labels is required with features")
        if clf is None and num_classes is None:  # class_means renumbers them in sorted order
            lab = check_labels(labels, torch.as_tensor(labels).numel(), "labels")
            classes = compact_labels(lab)[1].cpu() if lab.numel() else None
            if classes is not None and int(classes[-1]) != classes.numel() - 1:
                ids = classes
        means, counts = class_means(features, labels, num_classes if num_classes is not None else k)
        k = means.shape[0] if k is None else k
        if means.shape[0] != k:
            raise ValueError(f"the labels give {means.shape[0]} classes but the classifier has {k}")
    if k is None:
        raise ValueError("give a classifier, or features and labels (or both)")
    if num_classes is not None and num_classes != k:
        raise ValueError(f"num_classes={num_classes} but the classifier/labels give {k} classes")
    if (minority is None) == (n_majority is None):
        raise ValueError(f"give exactly one of minority or n_majority, got minority={minority!r}, "
                         f"n_majority={n_majority!r}")
    if n_majority is not None:
        check_positive_int(n_majority, "n_majority")
        if n_majority > k - 2:
            raise ValueError(f"n_majority={n_majority} leaves fewer than 2 minority classes out of "
                             f"{k}")
    if n_majority is None and ids is not None:
        given = sorted({int(m) for m in minority or ()})
        pos = torch.searchsorted(ids, torch.tensor(given, dtype=torch.long)).clamp_max_(k - 1)
        if bool((ids[pos] != torch.tensor(given, dtype=torch.long)).any()):
            raise ValueError(f"minority must hold labels of the data ({ids[:10].tolist()}"
                             f"{', ...' if k > 10 else ''}), got {given}")
        minority = pos.tolist()
    minority = sorted({int(m) for m in (range(n_majority, k) if n_majority is not None
                                        else minority or ())})
    if not minority or minority[0] < 0 or minority[-1] >= k:
        raise ValueError(f"minority must hold class ids in [0, {k}), got {minority}")
    majority = [c for c in range(k) if c not in minority]
    if len(minority) < 2 or not majority:
        raise ValueError(f"need at least 2 minority classes and 1 majority class, got "
                         f"minority={minority} of K={k}")
    out: Dict[str, float] = {"n_minority": len(minority), "n_majority": len(majority)}

    def block(rows: Tensor, suffix: str) -> None:
        dev = rows.device
        mi, ma = torch.tensor(minority, device=dev), torch.tensor(majority, device=dev)
        maj_norm = float(rows[ma].norm(dim=1).mean())
        if maj_norm <= 0:
            raise ValueError(f"the majority {suffix} vectors are all zero")
        cos_mi, dist_mi = _pair_stats(rows, mi, atol * maj_norm)
        out[f"minority_cos_{suffix}"] = cos_mi
        out[f"majority_cos_{suffix}"] = (_pair_stats(rows, ma, atol * maj_norm)[0]
                                         if len(majority) > 1 else 1.0)
        out[f"minority_dist_{suffix}"] = dist_mi / maj_norm
        out[f"minority_norm_ratio_{suffix}"] = float(rows[mi].norm(dim=1).mean()) / maj_norm

    if clf is not None:
        block(_classifier_rows(clf[0], center_classifier), "w")
    if means is not None and counts is not None:
        block(means - _global_mean(counts, means, global_mean), "means")
    return out


# ============================================================================ over training
HISTORY_FORMAT = "dyngraph.CollapseHistory/1"


class CollapseHistory(JsonFile):
    """Neural-collapse metrics of every layer at each recorded epoch: one
    :class:`~dyngraph.DepthProfile` per epoch, in epoch order.

    Each profile has one repeat (samples ``[1, layers, metrics]``) and the metrics of
    :data:`METRICS` that some layer has; a metric a layer lacks is ``NaN`` there (the classifier
    metrics away from the classifier's input, every metric of a layer whose metrics were undefined
    that epoch; its message is in ``profile.meta['errors']``). ``dg.plot(history)`` draws metrics
    against epoch, ``dg.log(writer, history)`` writes the scalars ``'<prefix>/<metric>/<layer>'``
    at step = epoch.

    Args:
        epochs: Epoch numbers ``[E]`` (distinct integers).
        profiles: One profile per epoch ``[E]``.
        meta: Settings (the callback's conventions).

    Example:
        >>> import torch, dyngraph as dg
        >>> h = dg.measures.CollapseHistory()
        >>> h.add(0, dg.DepthProfile(['a', 'fc:input'], ['nc1'], torch.tensor([2.0, 1.0])))
        >>> h.add(5, dg.DepthProfile(['a', 'fc:input'], ['nc1'], torch.tensor([1.5, 0.5])))
        >>> h.epochs, h.series('nc1', 'fc:input').tolist(), h[5].layer('a')
        ([0, 5], [1.0, 0.5], {'nc1': 1.5})
    """

    def __init__(self, epochs: Sequence[int] = (), profiles: Sequence[DepthProfile] = (),
                 meta: Optional[Dict[str, Any]] = None) -> None:
        if len(epochs) != len(profiles):
            raise ValueError(f"epochs has {len(epochs)} entries but profiles has "
                             f"{len(profiles)}")
        if not isinstance(meta, (dict, type(None))):
            raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
        self.meta: Dict[str, Any] = dict(meta or {})
        self._by_epoch: Dict[int, DepthProfile] = {}
        for e, p in zip(epochs, profiles):
            if int(e) in self._by_epoch:
                raise ValueError(f"epochs must be distinct; {int(e)} is repeated")
            self.add(e, p)

    def add(self, epoch: int, profile: DepthProfile) -> None:
        """Records (or replaces) the profile of ``epoch``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise TypeError(f"epoch must be an int, got {type(epoch).__name__}: {epoch!r}")
        if not isinstance(profile, DepthProfile):
            raise TypeError(f"profile must be a dg.DepthProfile, got {type(profile).__name__}")
        self._by_epoch[epoch] = profile
        self._by_epoch = dict(sorted(self._by_epoch.items()))

    @property
    def epochs(self) -> List[int]:
        """The recorded epochs, ascending ``[E]``."""
        return list(self._by_epoch)

    @property
    def profiles(self) -> List[DepthProfile]:
        """One profile per epoch ``[E]``."""
        return list(self._by_epoch.values())

    def __len__(self) -> int:
        return len(self._by_epoch)

    def __getitem__(self, epoch: int) -> DepthProfile:
        """The profile of a recorded epoch."""
        if epoch not in self._by_epoch:
            raise KeyError(f"epoch={epoch!r} was not recorded; recorded: {self.epochs}")
        return self._by_epoch[epoch]

    def _last(self) -> DepthProfile:
        if not self._by_epoch:
            raise ValueError("no epochs recorded yet")
        return self.profiles[-1]

    @property
    def default_layer(self) -> str:
        """The layer that feeds the classifier (where ``nc4`` or ``nc3`` is defined at the last
        epoch), else the last layer."""
        p = self._last()
        for m in ("nc4", "nc3"):
            if m in p.metrics:
                defined = (~p[m].samples[0, :, 0].isnan()).nonzero().flatten().tolist()
                if defined:
                    return p.layers[defined[0]]
        return p.layers[-1]

    def series(self, metric: str = "nc1", layer: Optional[str] = None) -> Tensor:
        """``metric`` of one layer at every recorded epoch, float64 ``[E]`` (aligned with
        :attr:`epochs`; ``NaN`` where undefined). Default layer: :attr:`default_layer`."""
        last = self._last()
        layer = self.default_layer if layer is None else layer
        if not any(layer in p.layers for p in self.profiles):
            raise ValueError(f"layer={layer!r} was never recorded; layers: {last.layers}")
        out = torch.full((len(self),), math.nan, dtype=torch.float64)
        for i, p in enumerate(self.profiles):
            if layer in p.layers and metric in p.metrics:
                out[i] = p.samples[0, p.layers.index(layer), p.metrics.index(metric)]
        if bool(out.isnan().all()):
            seen = sorted({m for p in self.profiles if layer in p.layers for m in p.metrics
                           if not bool(p[m].samples[0, p.layers.index(layer), 0].isnan())})
            raise ValueError(f"metric={metric!r} is not recorded at layer {layer!r}; available: "
                             f"{seen}")
        return out

    FORMAT = HISTORY_FORMAT
    FORMATS = (HISTORY_FORMAT, "dyngraph.CollapseCallback/1")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CollapseHistory):
            return NotImplemented
        return self.epochs == other.epochs and self.profiles == other.profiles \
            and jsonable(self.meta) == jsonable(other.meta)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        layers = len(self.profiles[-1]) if self._by_epoch else 0
        return f"CollapseHistory(epochs={self.epochs}, layers={layers})"

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (each profile as :meth:`DepthProfile.to_dict`)."""
        return {"format": HISTORY_FORMAT, "epochs": self.epochs,
                "profiles": [p.to_dict() for p in self.profiles], "meta": jsonable(self.meta)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CollapseHistory":
        """Inverse of :meth:`to_dict`; also reads the 0.1 callback file
        (``'dyngraph.CollapseCallback/1'``)."""
        cls._check_format(d)
        if d["format"] == "dyngraph.CollapseCallback/1":
            recs = d.get("history", [])
            return cls([int(h["epoch"]) for h in recs],
                       [_results_profile(h["layers"], {"epoch": int(h["epoch"])}) for h in recs],
                       {"conventions": d.get("conventions")})
        return cls([int(e) for e in d["epochs"]],
                   [DepthProfile.from_dict(p) for p in d["profiles"]], d.get("meta") or {})


class CollapseCallback:
    """Records the neural-collapse metrics of every layer once per epoch, to follow the terminal
    phase of training. Call it at the end of each epoch with ``(model, loader)``; each call runs
    :func:`neural_collapse_model` (hooks through ``dg.capture.LayerTaps``, eval mode, no
    autograd; the hooks are removed and the training mode restored afterwards, also on error).

    Args:
        loader: Default loader (deterministic; e.g. the training set without augmentation).
        layers, classifier, pool, method, max_dense_dim, device, batch_fn, max_batches,
            num_classes, layout: As in :func:`neural_collapse_model`.
        every: Record every ``every``-th call only.
        writer: A TensorBoard ``SummaryWriter``: after each record, ``dg.log(writer, history,
            prefix=tag, figure=False, epochs=[epoch])`` writes the scalars
            ``'<tag>/<metric>/<layer>'`` at step = epoch and the epoch's table.
        tag: Tag prefix.
        path: JSON file of :attr:`history`, rewritten atomically after each record; an existing
            file is loaded on construction so a resumed run continues its history.
        progress: Progress bars of the passes.
        on_error: ``'warn'`` (default: a layer whose metrics are undefined that epoch, e.g. a dead
            layer, is recorded as ``NaN`` with its message in ``meta['errors']`` and training goes
            on) or ``'raise'``.
        conventions, **kw: As in :func:`neural_collapse`.

    Attributes:
        history: A :class:`CollapseHistory`: one :class:`~dyngraph.DepthProfile` per epoch.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = TensorDataset(torch.randn(60, 4), torch.arange(60) % 3)
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> cb = dg.measures.CollapseCallback(DataLoader(ds, batch_size=30))
        >>> _ = cb(m, epoch=0); _ = cb(m, epoch=1)
        >>> cb.history.epochs, cb.history.default_layer, cb.history.series('nc1').shape
        ([0, 1], '2:input', torch.Size([2]))
    """

    def __init__(self, loader: Optional[Iterable[Any]] = None, layers: LayerSpec = None,
                 classifier: Any = "auto", *, every: int = 1, writer: Any = None,
                 tag: str = "collapse", path: Optional[PathLike] = None,
                 num_classes: Optional[int] = None, method: str = "auto",
                 max_dense_dim: int = 2048, pool: Union[None, str, int] = None,
                 device: Optional[Union[str, torch.device]] = None,
                 batch_fn: Optional[Callable[[Any], Any]] = None,
                 max_batches: Optional[int] = None, progress: bool = False,
                 on_error: str = "warn", conventions: Optional[CollapseConventions] = None,
                 layout: Optional[str] = None, **kw: Any) -> None:
        check_positive_int(every, "every")
        check_layout(layout, check_pool(pool))   # now, not at the end of the first epoch
        if writer is not None and not all(callable(getattr(writer, f, None))
                                          for f in ("add_scalar", "add_text")):
            raise TypeError(f"writer must be a SummaryWriter-like object with add_scalar() and "
                            f"add_text(), got {type(writer).__name__}")
        self.loader, self.layers, self.classifier = loader, layers, classifier
        self.every, self.writer, self.tag, self.path = every, writer, tag, path
        self.kwargs: Dict[str, Any] = dict(
            num_classes=num_classes, method=_check_method(method), max_dense_dim=max_dense_dim,
            pool=pool, device=device, batch_fn=batch_fn, max_batches=max_batches,
            progress=progress, on_error=check_choice(on_error, "on_error", ("raise", "warn")),
            layout=layout)
        self.cv = _conventions(conventions, kw)
        self.history = CollapseHistory(meta={"conventions": asdict(self.cv)})
        self._calls = 0
        if path is not None and os.path.exists(path):
            self.history = CollapseHistory.from_json(path)

    def __repr__(self) -> str:
        return (f"CollapseCallback(every={self.every}, classifier={self.classifier!r}, "
                f"records={len(self.history)}, method={self.kwargs['method']!r})")

    def __call__(self, model: nn.Module, loader: Optional[Iterable[Any]] = None,
                 epoch: Optional[int] = None) -> Optional[DepthProfile]:
        """Measures ``model`` on ``loader`` (default: the constructor's); returns the epoch's
        :class:`~dyngraph.DepthProfile`, or ``None`` when this call is skipped by ``every``."""
        loader = loader if loader is not None else self.loader
        if loader is None:
            raise ValueError("no loader: pass one to CollapseCallback(...) or to the call")
        self._calls += 1
        if epoch is None:
            epoch = self.history.epochs[-1] + 1 if len(self.history) else 0
        if (self._calls - 1) % self.every:
            return None
        res = neural_collapse_model(model, loader, self.layers, self.classifier,
                                    conventions=self.cv, **self.kwargs)
        prof = _results_profile(res, {"epoch": int(epoch)})
        self.history.add(int(epoch), prof)
        if self.writer is not None:
            from ..outputs import log
            log(self.writer, self.history, prefix=self.tag, figure=False, epochs=[int(epoch)])
        if self.path is not None:
            self.history.to_json(self.path)
        return prof


# ============================================================================ registered measures
_last: Dict[str, Any] = {}


def _collapse(x: Tensor, y: Tensor, classifier: Any = None, **kw: Any) -> Dict[str, Any]:
    """neural_collapse of one layer, reused by the NC measures of the same runner call (the
    cache holds weak references: it never keeps a layer's features alive)."""
    key: Tuple[Any, ...] = (x._version, y._version, tuple(sorted(kw.items())))
    hit = (_last.get("key") == key and _last["x"]() is x and _last["y"]() is y
           and _last["classifier"] is classifier)
    if not hit:
        value = neural_collapse(x, y, classifier, **kw)
        _last.clear()
        _last.update(key=key, x=weakref.ref(x), y=weakref.ref(y), classifier=classifier,
                     value=value)
    return _last["value"]


def _nc_measure(metric: str) -> None:
    needs_w = metric in CLASSIFIER_METRICS

    def fn(x: Tensor, y: Tensor, graph: Optional[Data], classifier: Any = None,
           **kw: Any) -> float:
        if needs_w and classifier is None:
            raise ValueError(f"measure {metric!r} needs the classifier: pass "
                             f"measure_options={{{metric!r}: {{'classifier': model.fc}}}}")
        return float(_collapse(x, y, classifier, **kw)[metric])
    fn.__name__ = f"_{metric}"
    register(metric, graph=False, description=f"neural collapse {metric} (Papyan et al. 2020; "
             f"see dg.measures.neural_collapse)")(fn)


for _m in METRICS:
    _nc_measure(_m)
