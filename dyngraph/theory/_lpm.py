"""The Layer-Peeled Model (Fang, He, Long & Su, PNAS 2021), solved numerically.

The last-layer features and classifier are free variables under energy constraints. With every
sample of class k sharing its feature ``h_k`` (optimal, by convexity of the loss in ``h``):

    min_{W, H}  Σ_k (n_k / N) · CE(W h_k, k)
    s.t.        (1/K) Σ_k ‖w_k‖² ≤ E_W,   (1/K) Σ_k ‖h_k‖² ≤ E_H.

The loss depends on ``W`` and ``H`` only through the logits ``Z = W Hᵀ`` (``K × K``), and the set of
``Z`` reachable under the two constraints (for ``d ≥ K``) is the nuclear-norm ball
``‖Z‖_* ≤ τ = K·√(E_H·E_W)`` (``‖Z‖_* = min ‖W‖_F‖H‖_F`` over factorisations, and AM–GM). So
the model is the convex program ``min f(Z) s.t. ‖Z‖_* ≤ τ``, and any feasible point has the
Frank–Wolfe certificate ``f(Z) − f* ≤ ⟨∇f, Z⟩ + τ·σ_max(∇f)``. Two solvers:

* ``'lbfgs'`` (default): L-BFGS on the factors, each rescaled onto its energy sphere (the
  constraints are active at the optimum), certified by the gap above;
* ``'convex'``: accelerated projected gradient (FISTA with restarts) on ``Z`` over the nuclear
  ball, then the balanced factorisation ``W = U S^½ α``, ``H = V S^½ / α``, ``α = (E_W/E_H)^¼``.

For balanced classes the optimum is a simplex ETF (``W Wᵀ = E_W·K/(K−1)·(I − 11ᵀ/K)``,
``W = √(E_W/E_H)·H``). With ``K_A`` majority classes of ``n_A`` samples and ``K − K_A`` minority
classes of ``n_B = n_A / R``, the minority classifiers become identical beyond a threshold ratio:
Minority Collapse.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._json import jsonable
from .._validate import check_choice, check_positive_int
from ..measures._collapse import etf_gram, minority_collapse

__all__ = [
    "LayerPeeledSolution",
    "MinorityCollapseCurve",
    "lpm_counts",
    "lpm_minority_curve",
    "minority_collapse_threshold",
    "solve_layer_peeled",
]

SOLUTION_FORMAT = "dyngraph.LayerPeeledSolution/1"
CURVE_FORMAT = "dyngraph.MinorityCollapseCurve/1"


@dataclass
class LayerPeeledSolution:
    """A solution of the Layer-Peeled Model.

    Attributes:
        W: Classifier ``[K, d]``.
        H: Class features ``[K, d]`` (every sample of class k has ``h_k``).
        counts: Class sizes (or proportions) ``[K]``.
        E_H, E_W: Energy budgets.
        loss: Objective Σ_k (n_k/N)·CE(W h_k, k).
        gap: Frank–Wolfe certificate: ``loss − optimum ≤ gap`` (exact for ``d ≥ K``).
        method: Solver used.
        iterations: Iterations run.
        converged: ``gap <= tol``.
        meta: Solver settings.

    ``dg.plot(solution)`` draws the cosine Grams of ``W`` and ``H``; with ``classifier=`` (and
    ``means=``) of a trained network, side by side with the model's.

    Example:
        >>> import dyngraph as dg
        >>> s = dg.theory.solve_layer_peeled(num_classes=4)
        >>> dg.theory.LayerPeeledSolution.from_dict(s.to_dict()).loss == s.loss
        True
    """

    W: Tensor
    H: Tensor
    counts: Tensor
    E_H: float
    E_W: float
    loss: float
    gap: float
    method: str
    iterations: int
    converged: bool
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.W.shape[0])

    @property
    def logits(self) -> Tensor:
        """``Z = W Hᵀ`` ``[K, K]``: column k holds the logits of a class-k sample."""
        return self.W @ self.H.T

    def gram(self, which: str = "W", normalized: bool = False) -> Tensor:
        """Gram matrix of the classifier rows (``'W'``) or features (``'H'``); cosines when
        ``normalized``."""
        check_choice(which, "which", ("W", "H"))
        m = self.W if which == "W" else self.H
        if normalized:
            m = m / m.norm(dim=1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)
        return m @ m.T

    def minority_collapse(self, minority: Optional[Sequence[int]] = None,
                          n_majority: Optional[int] = None) -> Dict[str, float]:
        """:func:`dg.measures.minority_collapse <dyngraph.measures.minority_collapse>` of ``W``
        (and of ``H`` as the class means, centred by the count-weighted mean). Defaults to the
        model's own majority/minority split."""
        if minority is None and n_majority is None:
            minority = self.minority_classes()
            if len(minority) < 2:
                raise ValueError("the classes are balanced (no minority): pass minority= or "
                                 "n_majority=")
        labels = torch.repeat_interleave(torch.arange(self.num_classes),
                                         _integer_counts(self.counts))
        return minority_collapse(self.W, self.H[labels], labels, minority=minority,
                                 n_majority=n_majority)

    def minority_classes(self) -> List[int]:
        """Classes whose count is below the largest count."""
        return (self.counts < self.counts.max()).nonzero().flatten().tolist()

    def etf_distance(self) -> Dict[str, float]:
        """Frobenius distances of the normalised Grams ``WWᵀ``, ``HHᵀ`` from the simplex-ETF Gram
        (0 for the balanced optimum)."""
        k = self.num_classes
        target = etf_gram(k, device=self.W.device)
        target = target / target.norm()
        out = {}
        for name, m in (("W", self.W), ("H", self.H)):
            g = (m @ m.T).to(torch.float64)
            out[name] = float((g / g.norm() - target).norm())
        return out

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (floats at full precision: an exact round trip)."""
        return {"format": SOLUTION_FORMAT, "W": self.W.tolist(), "H": self.H.tolist(),
                "counts": self.counts.tolist(), "dtype": str(self.W.dtype).split(".")[-1],
                "E_H": self.E_H, "E_W": self.E_W, "loss": self.loss, "gap": self.gap,
                "method": self.method, "iterations": self.iterations,
                "converged": self.converged, "meta": jsonable(self.meta)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LayerPeeledSolution":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or d.get("format") != SOLUTION_FORMAT:
            raise ValueError(f"not a LayerPeeledSolution dict (format "
                             f"{d.get('format') if isinstance(d, dict) else None!r})")
        dtype = getattr(torch, str(d.get("dtype", "float64")))
        return cls(W=torch.tensor(d["W"], dtype=dtype), H=torch.tensor(d["H"], dtype=dtype),
                   counts=torch.tensor(d["counts"], dtype=torch.float64), E_H=float(d["E_H"]),
                   E_W=float(d["E_W"]), loss=float(d["loss"]), gap=float(d["gap"]),
                   method=str(d["method"]), iterations=int(d["iterations"]),
                   converged=bool(d["converged"]), meta=dict(d.get("meta") or {}))

    def __repr__(self) -> str:
        return (f"LayerPeeledSolution(K={self.num_classes}, d={self.W.shape[1]}, E_H={self.E_H}, "
                f"E_W={self.E_W}, loss={self.loss:.6g}, gap={self.gap:.2e}, "
                f"method={self.method!r}, converged={self.converged})")


@dataclass
class MinorityCollapseCurve:
    """Minority-collapse metrics (:func:`dg.measures.minority_collapse
    <dyngraph.measures.minority_collapse>` keys) over imbalance ratios, for the Layer-Peeled
    Model (:func:`lpm_minority_curve`) or for networks trained at each ratio.

    ``dg.plot(curve)`` draws each metric against the ratio (a list of curves is overlaid, e.g.
    a trained network beside the model), ``dg.log(writer, curve)`` writes ``'<prefix>/<metric>'``
    at step = ratio index.

    Attributes:
        ratios: Imbalance ratios ``R = n_A / n_B`` ``[P]``.
        values: ``{metric: [P] floats}``.
        solutions: The model's solution at each ratio (empty for trained networks).
        meta: The setting (``num_classes``, ``n_majority``, energies, ...).

    Example:
        >>> import dyngraph as dg
        >>> c = dg.theory.MinorityCollapseCurve([1.0, 10.0], {'minority_cos_w': [-0.1, 0.4]})
        >>> c['minority_cos_w'], c.metrics
        ([-0.1, 0.4], ['minority_cos_w'])
    """

    ratios: List[float]
    values: Dict[str, List[float]]
    solutions: List[LayerPeeledSolution] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ratios = _ratios(self.ratios)
        if not isinstance(self.values, dict) or not self.values:
            raise ValueError(f"values must be a non-empty dict {{metric: [floats]}}, got "
                             f"{self.values!r}")
        for k, v in self.values.items():
            if len(v) != len(self.ratios):
                raise ValueError(f"values[{k!r}] has {len(v)} entries for {len(self.ratios)} "
                                 f"ratios")
        self.values = {str(k): [float(x) for x in v] for k, v in self.values.items()}
        if self.solutions and len(self.solutions) != len(self.ratios):
            raise ValueError(f"solutions has {len(self.solutions)} entries for "
                             f"{len(self.ratios)} ratios")

    @property
    def metrics(self) -> List[str]:
        return list(self.values)

    def __getitem__(self, metric: str) -> List[float]:
        """The values of one metric ``[P]``."""
        if metric not in self.values:
            raise KeyError(f"no metric {metric!r}; metrics are {self.metrics}")
        return self.values[metric]

    def __len__(self) -> int:
        return len(self.ratios)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict, solutions included (an exact round trip)."""
        return {"format": CURVE_FORMAT, "ratios": self.ratios, "values": jsonable(self.values),
                "solutions": [s.to_dict() for s in self.solutions], "meta": jsonable(self.meta)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "MinorityCollapseCurve":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or d.get("format") != CURVE_FORMAT:
            raise ValueError(f"not a MinorityCollapseCurve dict (format "
                             f"{d.get('format') if isinstance(d, dict) else None!r})")
        from .._json import decode_floats
        missing = [k for k in ("ratios", "values") if k not in d]
        if missing:
            raise ValueError(f"not a complete MinorityCollapseCurve dict: missing {missing}")
        return cls(d["ratios"], {k: decode_floats(v) for k, v in d["values"].items()},
                   [LayerPeeledSolution.from_dict(s) for s in d.get("solutions", [])],
                   dict(d.get("meta") or {}))


def _real(value: Any, name: str, *, positive: bool = True) -> float:
    """A finite real number (``> 0`` when ``positive``): a string or a bool is a ``TypeError``,
    never converted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got "
                         f"{name}={value!r}")
    return value


def _ratios(ratios: Any, name: str = "ratios") -> List[float]:
    """A non-empty list of finite ratios > 0 from a sequence (a string is not one)."""
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, (Sequence, Tensor)):
        raise TypeError(f"{name} must be a list of numbers, got {type(ratios).__name__}: "
                        f"{ratios!r}")
    out = [_real(r.item() if isinstance(r, Tensor) else r, f"{name}[{i}]")
           for i, r in enumerate(ratios)]
    if not out:
        raise ValueError(f"{name} is empty")
    return out


def _check_layout(num_classes: Any, n_majority: Any) -> None:
    """The Fang et al. layout of a minority-collapse study: >= 1 majority, >= 2 minority."""
    check_positive_int(num_classes, "num_classes", minimum=3)
    if isinstance(n_majority, bool) or not isinstance(n_majority, int) or n_majority < 1 or \
            num_classes - n_majority < 2:
        raise ValueError(f"n_majority={n_majority!r} must be an int leaving >= 1 majority and >= 2 "
                         f"minority classes out of num_classes={num_classes}")


def _counts(counts: Any) -> Tensor:
    """Class sizes ``[K]`` as float64 from a 1-D tensor or a list of numbers."""
    if isinstance(counts, (str, bytes)):
        raise TypeError(f"counts must be a 1-D tensor or a list of class sizes, got str: "
                        f"{counts!r}")
    try:
        t = torch.as_tensor(counts)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"counts must be a 1-D tensor or a list of class sizes, got "
                        f"{type(counts).__name__}: {counts!r}"[:200]) from None
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or t.dtype in (
            torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"counts must hold real numbers, got dtype={t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"counts must be 1-D [K] (one size per class), got shape "
                         f"{tuple(t.shape)}")
    return t.to(torch.float64)


def _integer_counts(counts: Tensor) -> Tensor:
    c = counts.to(torch.float64)
    if bool((c == c.round()).all()):
        return c.round().long()
    return torch.ones_like(c, dtype=torch.long)  # proportions only: one sample per class


def lpm_counts(num_classes: int = 10, n_majority: int = 5, ratio: float = 1.0) -> Tensor:
    """Class sizes of Fang et al.'s imbalanced setting: ``K_A`` majority classes of size ``R``
    followed by ``K − K_A`` minority classes of size 1 (only proportions matter).

    Example:
        >>> import dyngraph as dg
        >>> dg.theory.lpm_counts(4, 1, ratio=3.0).tolist()
        [3.0, 1.0, 1.0, 1.0]
    """
    check_positive_int(num_classes, "num_classes", minimum=2)
    if isinstance(n_majority, bool) or not isinstance(n_majority, int) or \
            not 0 <= n_majority <= num_classes:
        raise ValueError(f"n_majority must be an int in [0, {num_classes}], got "
                         f"n_majority={n_majority!r}")
    ratio = _real(ratio, "ratio")
    counts = torch.ones(num_classes, dtype=torch.float64)
    counts[:n_majority] = ratio
    return counts


def _objective(z: Tensor, p: Tensor) -> Tensor:
    """Σ_k p_k · CE(z[:, k], k)."""
    return -(p * torch.diagonal(torch.log_softmax(z, dim=0))).sum()


def _grad_z(z: Tensor, p: Tensor) -> Tensor:
    eye = torch.eye(z.shape[0], dtype=z.dtype, device=z.device)
    # exp(log_softmax): torch.softmax over dim 0 in float64 is ~1000× slower on CPU (torch 2.x)
    return (torch.log_softmax(z, dim=0).exp() - eye) * p.unsqueeze(0)


def _fw_gap(z: Tensor, p: Tensor, tau: float) -> float:
    g = _grad_z(z, p)
    return float((g * z).sum() + tau * torch.linalg.svdvals(g)[0])


def _project_l1(s: Tensor, radius: float) -> Tensor:
    """Euclidean projection of a nonnegative vector onto {x ≥ 0, Σx ≤ radius} (Duchi et al.)."""
    if float(s.sum()) <= radius:
        return s
    u = s.sort(descending=True).values
    css = u.cumsum(0) - radius
    k = torch.arange(1, s.numel() + 1, dtype=s.dtype, device=s.device)
    rho = int((u - css / k > 0).nonzero().max())
    theta = css[rho] / (rho + 1)
    return (s - theta).clamp_min(0)


def _project_nuclear(z: Tensor, radius: float) -> Tensor:
    u, s, vh = torch.linalg.svd(z)
    return (u * _project_l1(s, radius)) @ vh


def _solve_convex(p: Tensor, tau: float, max_iter: int, tol: float) -> Tuple[Tensor, int, float]:
    """FISTA over the nuclear-norm ball, step 1/L with L = ½·max_k p_k (the softmax-CE Hessian is
    at most ½ per column), with gradient restarts (O'Donoghue & Candès 2015)."""
    k = p.numel()
    z = torch.zeros(k, k, dtype=p.dtype, device=p.device)
    y, t = z.clone(), 1.0
    step = 1.0 / (0.5 * float(p.max()))
    it, gap = 0, _fw_gap(z, p, tau)
    if gap <= tol:
        return z, 0, gap
    for it in range(1, max_iter + 1):
        z_new = _project_nuclear(y - step * _grad_z(y, p), tau)
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        if float(((y - z_new) * (z_new - z)).sum()) > 0:   # gradient restart
            t_new, y = 1.0, z_new
        else:
            y = z_new + ((t - 1.0) / t_new) * (z_new - z)
        z, t = z_new, t_new
        if it % 25 == 0 or it == max_iter:
            gap = _fw_gap(z, p, tau)
            if gap <= tol:
                break
    return z, it, _fw_gap(z, p, tau)


def _solve_lbfgs(p: Tensor, k: int, dim: int, e_h: float, e_w: float, max_iter: int, tol: float,
                 seed: int) -> Tuple[Tensor, Tensor, int, float]:
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randn(k, dim, generator=g, dtype=p.dtype).to(p.device).requires_grad_()
    b = torch.randn(k, dim, generator=g, dtype=p.dtype).to(p.device).requires_grad_()
    rw, rh = math.sqrt(k * e_w), math.sqrt(k * e_h)
    tau = k * math.sqrt(e_h * e_w)

    def factors() -> Tuple[Tensor, Tensor]:
        return a * (rw / a.norm()), b * (rh / b.norm())

    iters, gap = 0, float("inf")
    rounds = max(1, max_iter // 500)
    for _ in range(rounds):
        opt = torch.optim.LBFGS([a, b], lr=1.0, max_iter=min(500, max_iter), history_size=50,
                                tolerance_grad=1e-14, tolerance_change=1e-18,
                                line_search_fn="strong_wolfe")

        def closure(opt: torch.optim.LBFGS = opt) -> Tensor:
            opt.zero_grad()
            w, h = factors()
            f = _objective(w @ h.T, p)
            f.backward()
            return f

        opt.step(closure)
        iters += int(opt.state[a].get("n_iter", 0))
        with torch.no_grad():
            w, h = factors()
            gap = _fw_gap(w @ h.T, p, tau)
        if gap <= tol:
            break
        with torch.no_grad():  # re-centre the scale of the free variables before another round
            a.mul_(1.0 / a.norm())
            b.mul_(1.0 / b.norm())
    with torch.no_grad():
        w, h = factors()
    return w.detach(), h.detach(), iters, gap


def solve_layer_peeled(counts: Optional[Union[Tensor, Sequence[float]]] = None, *,
                       num_classes: Optional[int] = None, n_majority: Optional[int] = None,
                       ratio: float = 1.0, E_H: float = 5.0, E_W: float = 1.0,
                       dim: Optional[int] = None, method: str = "convex",
                       max_iter: Optional[int] = None, tol: Optional[float] = None,
                       restarts: int = 1,
                       seed: int = 0, dtype: torch.dtype = torch.float64,
                       device: Optional[Union[str, torch.device]] = None) -> LayerPeeledSolution:
    """Solves the Layer-Peeled Model with cross-entropy loss.

    Args:
        counts: Samples per class ``[K]`` (only proportions matter). Default: balanced
            ``num_classes`` classes, or Fang et al.'s layout with ``n_majority`` and ``ratio``.
        num_classes: ``K`` when ``counts`` is not given (default 10); with ``counts`` it may
            only repeat ``len(counts)``.
        n_majority: ``K_A``: classes ``0..K_A−1`` have ``ratio`` times the samples of the others.
        ratio: Imbalance ratio ``R = n_A / n_B``.
        E_H, E_W: Energy budgets of the features and the classifier.
        dim: Feature dimension ``d`` (default ``K``; any ``d ≥ K`` reaches the same optimum).
        method: ``'lbfgs'`` (factors, default) or ``'convex'`` (projected gradient on ``W Hᵀ``).
        max_iter: Iteration budget (default 5000 for L-BFGS, 20000 for the convex solver).
        tol: Target Frank–Wolfe gap, a bound on the suboptimality (default 1e-9 for the convex
            solver, 1e-7 for L-BFGS, which stalls near 1e-8 in float64).
        restarts: L-BFGS random restarts (the best is kept).
        seed: Seed of the initialisation.
        dtype, device: Where to solve (float64 is advised).

    Returns:
        A :class:`LayerPeeledSolution`.

    Example:
        >>> import torch, dyngraph as dg
        >>> s = dg.theory.solve_layer_peeled(num_classes=4, E_H=5.0, E_W=1.0)
        >>> bool(torch.allclose(s.gram('W'), 1.0 * dg.measures.etf_gram(4), atol=1e-5)), s.converged
        (True, True)
    """
    check_choice(method, "method", ("lbfgs", "convex"))
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float64 (advised) or torch.float32, got {dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")
    if tol is None:
        tol = 1e-9 if method == "convex" else 1e-7
    for name, v in (("E_H", E_H), ("E_W", E_W), ("tol", tol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {name}={v!r}")
    check_positive_int(restarts, "restarts")
    if restarts != 1 and method != "lbfgs":
        raise ValueError(f"restarts={restarts} is for method='lbfgs' (the convex solver has one "
                         f"optimum and no random start)")
    if counts is None:
        counts = lpm_counts(10 if num_classes is None else num_classes,
                            n_majority if n_majority is not None else 0,
                            ratio if n_majority is not None else 1.0)
    else:
        if n_majority is not None or ratio != 1.0:
            raise ValueError("give either counts or (n_majority, ratio), not both")
        counts = _counts(counts)
        if counts.numel() < 2:
            raise ValueError(f"counts needs at least 2 classes, got {counts.tolist()}")
        if num_classes is not None and num_classes != counts.numel():
            raise ValueError(f"num_classes={num_classes!r} but counts has {counts.numel()} "
                             f"classes; give one of them")
        if not bool(torch.isfinite(counts).all()) or bool((counts <= 0).any()):
            raise ValueError(f"counts must be finite and > 0, got {counts.tolist()}")
    k = counts.numel()
    dim = check_positive_int(k if dim is None else dim, "dim")
    if max_iter is None:
        max_iter = 5000 if method == "lbfgs" else 20000
    check_positive_int(max_iter, "max_iter")
    device = torch.device(device) if device is not None else torch.device("cpu")
    p = (counts / counts.sum()).to(device, dtype)
    tau = k * math.sqrt(E_H * E_W)
    if method == "convex":
        if dim < k:
            raise ValueError(f"method='convex' needs dim >= K={k} (the relaxation is exact there), "
                             f"got dim={dim}; use method='lbfgs'")
        z, iters, gap = _solve_convex(p, tau, max_iter, tol)
        u, s, vh = torch.linalg.svd(z)
        alpha = (E_W / E_H) ** 0.25
        w = torch.zeros(k, dim, dtype=dtype, device=device)
        h = torch.zeros(k, dim, dtype=dtype, device=device)
        w[:, :k] = u * s.sqrt() * alpha
        h[:, :k] = vh.T * s.sqrt() / alpha
    else:
        sols = [_solve_lbfgs(p, k, dim, E_H, E_W, max_iter, tol, seed + r)
                for r in range(restarts)]
        losses = [float(_objective(sol[0] @ sol[1].T, p)) for sol in sols]
        w, h, iters, gap = sols[min(range(restarts), key=losses.__getitem__)]
    loss = float(_objective(w @ h.T, p))
    return LayerPeeledSolution(W=w, H=h, counts=counts.clone(), E_H=float(E_H), E_W=float(E_W),
                               loss=loss, gap=float(gap), method=method, iterations=int(iters),
                               converged=bool(gap <= tol),
                               meta={"dim": dim, "seed": seed, "restarts": restarts, "tol": tol})


def lpm_minority_curve(ratios: Sequence[float], num_classes: int = 10, n_majority: int = 5,
                       E_H: float = 5.0, E_W: float = 1.0, **solver_kw: Any
                       ) -> MinorityCollapseCurve:
    """Minority-collapse metrics of the Layer-Peeled Model's solution at each imbalance ratio.

    Args:
        ratios: Imbalance ratios ``R`` ``[P]``.
        num_classes, n_majority, E_H, E_W: Fang et al.'s setting (K = 10, E_H = 5, E_W = 1).
        **solver_kw: Passed to :func:`solve_layer_peeled`.

    Returns:
        A :class:`MinorityCollapseCurve` with the metrics ``minority_cos_w``,
        ``minority_dist_w``, ``minority_norm_ratio_w``, ``majority_cos_w``, ``loss`` and ``gap``
        (``[P]`` each) and the solutions.

    Example:
        >>> import dyngraph as dg
        >>> c = dg.theory.lpm_minority_curve([1.0, 1000.0], num_classes=6, n_majority=3)
        >>> c['minority_cos_w'][0] < 0 < 0.999 < c['minority_cos_w'][1]
        True
    """
    ratios = _ratios(ratios)
    _check_layout(num_classes, n_majority)
    keys = ("minority_cos_w", "minority_dist_w", "minority_norm_ratio_w", "majority_cos_w")
    values: Dict[str, List[float]] = {k: [] for k in keys + ("loss", "gap")}
    solutions = []
    minority = list(range(n_majority, num_classes))
    for r in ratios:
        sol = solve_layer_peeled(num_classes=num_classes, n_majority=n_majority, ratio=r,
                                 E_H=E_H, E_W=E_W, **solver_kw)
        row = {**minority_collapse(sol.W, minority=minority), "loss": sol.loss, "gap": sol.gap}
        for key in values:
            values[key].append(row[key])
        solutions.append(sol)
    meta = {"num_classes": num_classes, "n_majority": n_majority, "E_H": E_H, "E_W": E_W,
            "source": "Layer-Peeled Model", "solver": jsonable(solver_kw)}
    return MinorityCollapseCurve(ratios, values, solutions, meta)


def minority_collapse_threshold(num_classes: int = 10, n_majority: int = 5, E_H: float = 5.0,
                                E_W: float = 1.0, *, collapse_tol: float = 1e-5,
                                r_min: float = 1.0, r_max: float = 1e4,
                                rel_precision: float = 1e-3, grid: int = 13,
                                **solver_kw: Any) -> Dict[str, Any]:
    """The smallest imbalance ratio ``R`` at which the Layer-Peeled Model's minority classifiers
    coincide (``mean ‖w_k − w_k'‖ / mean majority ‖w‖ < collapse_tol``).

    A log-spaced grid over ``[r_min, r_max]`` brackets the first collapsed ratio, then bisection in
    ``log R`` narrows it to ``hi/lo − 1 ≤ rel_precision``.

    Returns:
        ``{'threshold': R*, 'bracket': (lo, hi), 'grid': [(R, dist)], 'collapse_tol': ...}``;
        ``threshold`` is ``inf`` when no ratio up to ``r_max`` collapses.

    Example:
        >>> import dyngraph as dg
        >>> t = dg.theory.minority_collapse_threshold(6, 3, rel_precision=0.05, grid=7, r_max=1e3)
        >>> 1.0 < t['threshold'] < 1e3
        True
    """
    _check_layout(num_classes, n_majority)
    r_min, r_max = _real(r_min, "r_min"), _real(r_max, "r_max")
    if not (0 < r_min < r_max):
        raise ValueError(f"need 0 < r_min < r_max, got r_min={r_min!r}, r_max={r_max!r}")
    check_positive_int(grid, "grid", minimum=2)
    if not 0 < _real(rel_precision, "rel_precision") < 1:
        raise ValueError(f"rel_precision must be in (0, 1), got {rel_precision!r}")
    collapse_tol = _real(collapse_tol, "collapse_tol")
    minority = list(range(n_majority, num_classes))

    def dist(r: float) -> float:
        sol = solve_layer_peeled(num_classes=num_classes, n_majority=n_majority, ratio=r,
                                 E_H=E_H, E_W=E_W, **solver_kw)
        return minority_collapse(sol.W, minority=minority)["minority_dist_w"]

    rs = torch.logspace(math.log10(r_min), math.log10(r_max), grid, dtype=torch.float64).tolist()
    seen: List[Tuple[float, float]] = []
    hi = None
    for r in rs:
        seen.append((r, dist(r)))
        if seen[-1][1] < collapse_tol:
            hi = r
            break
    res: Dict[str, Any] = {"num_classes": num_classes, "n_majority": n_majority, "E_H": E_H,
                           "E_W": E_W, "collapse_tol": collapse_tol, "grid": seen}
    if hi is None:
        res.update(threshold=float("inf"), bracket=(r_max, float("inf")))
        return res
    lo = seen[-2][0] if len(seen) > 1 else 0.0  # 0: the first grid ratio already collapses
    while lo > 0 and hi / lo - 1 > rel_precision:
        mid = math.sqrt(lo * hi)
        if dist(mid) < collapse_tol:
            hi = mid
        else:
            lo = mid
    res.update(threshold=hi, bracket=(lo, hi))
    return res
