"""Statistics for comparing a group with random groups: permutation p-values, percentiles,
Fisher's combination and the Benjamini–Hochberg correction (all in torch)."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torch import Tensor

from .._validate import check_flag


def _as_tensor(x, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.double()
    try:
        return torch.as_tensor(x, dtype=torch.float64)
    except Exception as exc:
        raise TypeError(f"{name} must be a tensor or a sequence of numbers, got "
                        f"{type(x).__name__}") from exc


def _rows(observed, null) -> Tuple[Tensor, Tensor, Tensor]:
    """``(observed, null [G, n], observed [G, 1])`` in float64, checked: ``observed`` a scalar or
    ``[G]``, ``null`` ``[n]`` or ``[G, n]`` with at least one value per row, nothing NaN."""
    observed, null = _as_tensor(observed, "observed"), _as_tensor(null, "null")
    if observed.dim() > 1:
        raise ValueError(f"observed must be a scalar or [G], got shape {tuple(observed.shape)}")
    if null.dim() not in (1, 2):
        raise ValueError(f"null must be [n] or [G, n], got shape {tuple(null.shape)}")
    null = null.unsqueeze(0) if null.dim() == 1 else null
    obs = observed.reshape(-1, 1)
    if obs.shape[0] != null.shape[0]:
        raise ValueError(f"observed has {obs.shape[0]} values but null has {null.shape[0]} rows "
                         f"(null is [G, n]: one row of random values per observed value)")
    if null.shape[1] == 0:
        raise ValueError("null needs at least one random value per group")
    for name, t in (("observed", obs), ("null", null)):
        if bool(t.isnan().any()):
            raise ValueError(f"{name} contains NaN; a p-value or percentile of NaN is undefined")
    return observed, null, obs


def empirical_p(observed: Tensor, null: Tensor, greater: bool = True) -> Tensor:
    """One-sided permutation p-value ``(r + 1) / (n + 1)`` per row.

    Args:
        observed: ``[G]`` statistic of each group (or a scalar).
        null: ``[G, n]`` (or ``[n]``) statistics of the random groups.
        greater: ``r`` counts null values ``>= observed`` (large is extreme) when ``True``, else
            ``<= observed``.

    Returns:
        ``[G]`` p-values in ``[1/(n+1), 1]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> dg.neurons.empirical_p(torch.tensor(5.0), torch.arange(19.0)).item()  # 14 of 19 >= 5
        0.75
    """
    check_flag(greater, "greater")
    observed, null, obs = _rows(observed, null)
    r = (null >= obs).sum(1) if greater else (null <= obs).sum(1)
    p = (r.double() + 1) / (null.shape[1] + 1)
    return p if observed.dim() else p.squeeze(0)


def percentile_of(observed: Tensor, null: Tensor) -> Tensor:
    """Where ``observed`` falls among the random values, in ``[0, 100]`` (ties count half).

    Example:
        >>> import torch, dyngraph as dg
        >>> dg.neurons.percentile_of(torch.tensor(2.0), torch.tensor([1., 2., 3., 4.])).item()
        37.5
    """
    observed, null, obs = _rows(observed, null)
    below = (null < obs).double().sum(1)
    ties = (null == obs).double().sum(1)
    pct = 100.0 * (below + 0.5 * ties) / null.shape[1]
    return pct if observed.dim() else pct.squeeze(0)


def fisher_combine(p_values: Union[Tensor, Sequence[float]]) -> float:
    """Fisher's method: ``X = −2 Σ ln p`` against ``χ²`` with ``2m`` degrees of freedom.

    Args:
        p_values: ``[m]`` p-values in ``(0, 1]``.

    Returns:
        The combined p-value ``P(χ²_{2m} ≥ X)`` (the regularised upper incomplete gamma
        ``Q(m, X/2)``).

    Example:
        >>> import dyngraph as dg
        >>> round(dg.neurons.fisher_combine([0.05, 0.05]), 4)
        0.0175
    """
    p = _as_tensor(p_values, "p_values").reshape(-1)
    if p.numel() == 0:
        raise ValueError("fisher_combine needs at least one p-value, got none")
    if bool(((p <= 0) | (p > 1) | torch.isnan(p)).any()):
        raise ValueError(f"p_values must lie in (0, 1], got {p.tolist()[:10]}")
    stat = -2.0 * torch.log(p).sum()
    return float(torch.special.gammaincc(torch.tensor(float(p.numel()), dtype=torch.float64),
                                         stat / 2))


def benjamini_hochberg(p_values: Union[Tensor, Sequence[float]]) -> Tensor:
    """Benjamini–Hochberg adjusted p-values (q-values), in the input order.

    Args:
        p_values: ``[m]`` p-values in ``[0, 1]``.

    Returns:
        ``[m]`` adjusted values ``min_{j ≥ i} p_(j) m / j``, capped at 1. Reject at level ``α``
        where ``q ≤ α``.

    Example:
        >>> import dyngraph as dg
        >>> [round(q, 3) for q in dg.neurons.benjamini_hochberg([0.01, 0.04, 0.03, 0.2]).tolist()]
        [0.04, 0.053, 0.053, 0.2]
    """
    p = _as_tensor(p_values, "p_values").reshape(-1)
    if bool(((p < 0) | (p > 1) | torch.isnan(p)).any()):
        raise ValueError(f"p_values must lie in [0, 1], got {p.tolist()[:10]}")
    m = p.numel()
    if m == 0:
        return p
    order = p.argsort()
    ranked = p[order] * m / torch.arange(1, m + 1, dtype=torch.float64, device=p.device)
    q_sorted = ranked.flip(0).cummin(0).values.flip(0).clamp(max=1.0)
    q = torch.empty_like(p)
    q[order] = q_sorted
    return q


def compare(observed: Tensor, null: Tensor, greater: bool = True
            ) -> Tuple[Tensor, Tensor, Tensor, float]:
    """``(p, q, percentile, Fisher's p)`` of each group's ``observed`` against its ``null`` row:
    :func:`empirical_p`, :func:`benjamini_hochberg`, :func:`percentile_of` (as ``100 − pct`` when
    small is extreme, ``greater=False``) and :func:`fisher_combine`."""
    p = empirical_p(observed, null, greater=greater)
    pct = percentile_of(observed, null)
    return p, benjamini_hochberg(p), pct if greater else 100.0 - pct, fisher_combine(p)
