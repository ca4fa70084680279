"""Exact k-nearest-neighbour search and kNN graphs.

Two backends compute the same exact neighbours:

* ``'matmul'``: blocked ``x @ x.T`` + ``topk`` in pure torch (CPU and CUDA). At most
  ``chunk_size × N`` similarities exist at any time, so peak memory is bounded by ``chunk_size``.
* ``'torch_cluster'``: :func:`torch_cluster.knn` when the extension is installed. Its CPU path is a
  KD-tree, which wins only for very low dimensions; cosine is done by L2-normalising the rows and
  searching in Euclidean distance (torch-cluster rejects ``cosine=True`` on CPU).

``'auto'`` picks between them by timing both on a subsample of the actual input once per
(device, dimension, size) bucket and extrapolating to the full size.

Neighbour order is deterministic: best first, ties broken by the smaller node index.
"""
from __future__ import annotations

import math
import time
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from . import typing as _t
from ._validate import (check_choice, check_features, check_k, check_positive_int,
                        raise_non_finite)

METRICS = ("cosine", "euclidean")
BACKENDS = ("auto", "matmul", "torch_cluster")

#: Elements of one similarity block when ``chunk_size`` is left to dyngraph (128 MiB in fp32).
DEFAULT_BLOCK_ELEMENTS = 1 << 25
COSINE_EPS = 1e-8

_AUTO_CACHE: Dict[tuple, str] = {}


def default_chunk_size(n_rows: int, n_cols: int, budget: int = DEFAULT_BLOCK_ELEMENTS) -> int:
    """Rows per block so that one ``[rows, n_cols]`` block holds at most ``budget`` elements."""
    return max(1, min(n_rows, budget // max(n_cols, 1)))


def normalize_rows(x: Tensor, name: str = "x", norms: Optional[Tensor] = None) -> Tensor:
    """L2-normalises rows (eps 1e-8, the reference convention); zero rows raise ``ValueError``."""
    norms = x.norm(dim=1, keepdim=True) if norms is None else norms
    zero = norms.squeeze(1) <= COSINE_EPS
    if bool(zero.any()):
        idx = zero.nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} has {int(zero.sum())} zero (or near-zero) rows, e.g. rows {idx}; "
                         f"cosine similarity is undefined for them. Drop them or use "
                         f"metric='euclidean'")
    return x / norms.clamp_min(COSINE_EPS)


def _compute_dtype(x: Tensor) -> torch.dtype:
    if x.dtype in (torch.float16, torch.bfloat16) and x.device.type == "cpu":
        return torch.float32
    return x.dtype


def _sort_rows(vals: Tensor, idx: Tensor, largest: bool) -> Tuple[Tensor, Tensor]:
    """Orders each row by value (best first), ties by ascending index."""
    order = idx.argsort(dim=1, stable=True)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    order = vals.argsort(dim=1, descending=largest, stable=True)
    return vals.gather(1, order), idx.gather(1, order)


def _topk_block(scores: Tensor, k: int, largest: bool) -> Tuple[Tensor, Tensor]:
    """Exact, deterministic top-k of each row of a score block (ties → smaller column index)."""
    n_cols = scores.shape[1]
    kk = min(k + 1, n_cols)
    vals, idx = scores.topk(kk, dim=1, largest=largest, sorted=True)
    if kk > k:
        # A tie across the k-th boundary makes topk's choice arbitrary: redo those rows stably.
        tied = vals[:, k - 1] == vals[:, k]
        vals, idx = vals[:, :k], idx[:, :k]
        if bool(tied.any()):
            rows = tied.nonzero().flatten()
            s_vals, s_idx = scores[rows].sort(dim=1, descending=largest, stable=True)
            vals[rows], idx[rows] = s_vals[:, :k], s_idx[:, :k]
    return _sort_rows(vals, idx, largest)


def _matmul_knn(x: Tensor, k: int, metric: str, chunk_size: Optional[int],
                query: Optional[Tensor] = None, query_offset: int = 0,
                exclude_self: bool = True) -> Tuple[Tensor, Tensor]:
    """Blocked exact kNN of ``query`` rows (default: all of ``x``) against ``x``."""
    n = x.shape[0]
    q = x if query is None else query
    chunk = chunk_size or default_chunk_size(q.shape[0], n)
    cosine = metric == "cosine"
    sq = None if cosine else (x * x).sum(1)
    out_v, out_i = [], []
    for start in range(0, q.shape[0], chunk):
        qb = q[start:start + chunk]
        s = qb @ x.T
        if not cosine:  # squared distance, clamped against cancellation
            s = ((qb * qb).sum(1, keepdim=True) + sq.unsqueeze(0) - 2 * s).clamp_min_(0)
        if exclude_self:
            rows = torch.arange(qb.shape[0], device=x.device)
            cols = rows + query_offset + start
            ok = cols < n
            s[rows[ok], cols[ok]] = -math.inf if cosine else math.inf
        kk = k if cosine else min(k + 1, n - int(exclude_self))
        v, i = _topk_block(s, kk, largest=cosine)
        if not cosine:
            v, i = _refine_euclidean(qb, x, v, i, k)
        out_v.append(v)
        out_i.append(i)
        del s
    return torch.cat(out_v), torch.cat(out_i)


def _refine_euclidean(q: Tensor, x: Tensor, d2: Tensor, idx: Tensor, k: int
                      ) -> Tuple[Tensor, Tensor]:
    """Recomputes candidate distances directly (no |a|²+|b|²−2ab cancellation), re-ranks, keeps k."""
    kk, dim = idx.shape[1], x.shape[1]
    step = max(1, (1 << 24) // max(kk * dim, 1))
    exact = torch.empty_like(d2)
    for s in range(0, q.shape[0], step):
        diff = q[s:s + step].unsqueeze(1) - x[idx[s:s + step]]
        exact[s:s + step] = diff.pow(2).sum(-1)
    v, i = _sort_rows(exact, idx, largest=False)
    return v[:, :k].sqrt(), i[:, :k]


def _cluster_knn(x: Tensor, k: int, metric: str) -> Tuple[Tensor, Tensor]:
    """Exact kNN through torch-cluster; returns the same layout as the matmul backend."""
    if not _t.WITH_TORCH_CLUSTER:
        raise ValueError("backend='torch_cluster' needs the torch-cluster extension, which is not "
                         "installed; use backend='matmul' or 'auto'")
    n = x.shape[0]
    xf = x.float() if x.dtype not in (torch.float32, torch.float64) else x
    # k + 1 because the query itself comes back as its own nearest neighbour.
    assign = _t.torch_cluster.knn(xf, xf, k + 1)
    q, nb = assign[0], assign[1]
    keep = q != nb
    q, nb = q[keep], nb[keep]
    if metric == "cosine":
        val = (xf[q] * xf[nb]).sum(1)
    else:
        val = (xf[q] - xf[nb]).pow(2).sum(1)
    # Group by query, best first, ties by index; exactly k per query.
    order = torch.argsort(nb, stable=True)
    q, nb, val = q[order], nb[order], val[order]
    order = torch.argsort(-val if metric == "cosine" else val, stable=True)
    q, nb, val = q[order], nb[order], val[order]
    order = torch.argsort(q, stable=True)
    q, nb, val = q[order], nb[order], val[order]
    counts = torch.bincount(q, minlength=n)
    if bool((counts < k).any()):  # duplicates of the query displaced it: fall back to exact matmul
        return _matmul_knn(x, k, metric, None)
    start = torch.cumsum(counts, 0) - counts
    pos = start.unsqueeze(1) + torch.arange(k, device=x.device)
    vals, idx = val[pos], nb[pos]
    if metric == "euclidean":
        vals = vals.sqrt()
    return vals.to(x.dtype), idx


def _pick_backend(x: Tensor, k: int, metric: str, chunk_size: Optional[int]) -> str:
    if not _t.WITH_TORCH_CLUSTER:
        return "matmul"
    n, d = x.shape
    key = (x.device.type, max(1, d).bit_length(), max(1, n).bit_length(), metric, min(k, 16))
    if key not in _AUTO_CACHE:
        m = min(n, 1024)
        sub = x[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:m].to(x.device)]
        kk = min(k, m - 1)
        times = {}
        for name, fn in (("matmul", lambda: _matmul_knn(sub, kk, metric, chunk_size)),
                         ("torch_cluster", lambda: _cluster_knn(sub, kk, metric))):
            fn()  # warm-up
            _sync(x.device)
            t0 = time.perf_counter()
            fn()
            _sync(x.device)
            times[name] = time.perf_counter() - t0
        scale = n / m
        times["matmul"] *= scale * scale  # O(N²·D)
        times["torch_cluster"] *= scale * math.log(max(n, 2)) / math.log(max(m, 2))  # O(N log N)
        _AUTO_CACHE[key] = min(times, key=times.get)
    return _AUTO_CACHE[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare(x: Tensor, k: int, metric: str, backend: str, chunk_size: Optional[int]) -> Tensor:
    check_features(x, "x", min_rows=2, check_finite=False)
    check_k(k, x.shape[0])
    check_choice(metric, "metric", METRICS)
    check_choice(backend, "backend", BACKENDS)
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")
    x = x.to(_compute_dtype(x))
    # NaN/inf in a row make its norm NaN/inf: an O(N) check instead of a pass over N×D values.
    norms = x.norm(dim=1, keepdim=True)
    if not bool(torch.isfinite(norms).all()):
        raise_non_finite(x, "x")
    if metric == "cosine":
        x = normalize_rows(x, norms=norms)
    return x


def knn(x: Tensor, k: int, metric: str = "cosine", backend: str = "auto",
        chunk_size: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Exact k nearest neighbours of every row of ``x`` among the other rows.

    Args:
        x: Features ``[N, D]``, floating point, finite.
        k: Neighbours per node, ``1 <= k < N``. A node is never its own neighbour.
        metric: ``'cosine'`` (rows L2-normalised with eps 1e-8, then dot product) or
            ``'euclidean'``.
        backend: ``'matmul'``, ``'torch_cluster'`` or ``'auto'`` (chosen by timing).
        chunk_size: Query rows per similarity block; at most ``chunk_size × N`` scores are held.
            Default: as many rows as fit in 2**25 scores.

    Returns:
        ``(values, index)``, both ``[N, k]``, best first: cosine similarities (descending) or
        Euclidean distances (ascending), and the neighbours' row indices. Ties go to the smaller
        index.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.tensor([[0.], [1.], [3.], [7.]])
        >>> vals, idx = dg.knn(x, k=1, metric='euclidean')
        >>> idx.flatten().tolist(), vals.flatten().tolist()
        ([1, 0, 1, 2], [1.0, 1.0, 2.0, 4.0])
    """
    x = _prepare(x, k, metric, backend, chunk_size)
    if backend == "auto":
        backend = _pick_backend(x, k, metric, chunk_size)
    if backend == "torch_cluster":
        return _cluster_knn(x, k, metric)
    return _matmul_knn(x, k, metric, chunk_size)


def knn_graph(x: Tensor, k: int, metric: str = "cosine", backend: str = "auto",
              chunk_size: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Directed kNN graph of the rows of ``x`` in PyG's ``source_to_target`` flow.

    ``edge_index[1]`` is the query node and ``edge_index[0]`` one of its ``k`` neighbours, so every
    node has in-degree exactly ``k``. Edges are grouped by query, best neighbour first.

    Edge weights:
        * ``metric='cosine'``: the cosine similarity ``cos(i, j)`` (the reference convention).
        * ``metric='euclidean'``: ``1.0`` for every edge (an unweighted kNN graph); the distances
          themselves come from :func:`knn`.

    Args:
        x: Features ``[N, D]``, floating point, finite; no zero rows under cosine.
        k: Neighbours per node, ``1 <= k < N``.
        metric: ``'cosine'`` or ``'euclidean'``.
        backend: ``'matmul'``, ``'torch_cluster'`` or ``'auto'``.
        chunk_size: Query rows per block (bounds memory to ``chunk_size × N`` scores).

    Returns:
        ``edge_index`` ``[2, N*k]`` (long) and ``edge_weight`` ``[N*k]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(100, 16, generator=torch.Generator().manual_seed(0))
        >>> edge_index, edge_weight = dg.knn_graph(x, k=3)
        >>> edge_index.shape, edge_weight.shape
        (torch.Size([2, 300]), torch.Size([300]))
    """
    vals, idx = knn(x, k, metric=metric, backend=backend, chunk_size=chunk_size)
    n = idx.shape[0]
    target = torch.arange(n, device=idx.device).repeat_interleave(k)
    edge_index = torch.stack([idx.reshape(-1), target])
    if metric == "cosine":
        weight = vals.reshape(-1)
    else:
        weight = torch.ones(n * k, dtype=vals.dtype, device=vals.device)
    return edge_index, weight
