"""Independent reference implementations, used as oracles by the tests and as the slow baseline
by the benchmarks. They are deliberately naive and share no code with the package's fast paths."""
from __future__ import annotations

import heapq

import numpy as np


def reference_adjacency(x: np.ndarray, k: int) -> np.ndarray:
    """The reference repository's graph, re-implemented faithfully: a dense cosine matrix (rows
    L2-normalised with eps 1e-8), a Python heap per row for the top-k (no self), directed weights
    ``cos(i, j)``, then ``A = (A + Aᵀ) / 2``. Returns the dense ``[N, N]`` float64 adjacency."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
    sim = xn @ xn.T
    n = len(x)
    a = np.zeros((n, n))
    for i in range(n):
        # A heap of the k best (similarity, -j) pairs, no self; ties: the smaller index wins.
        for s, neg_j in heapq.nlargest(k, ((sim[i, j], -j) for j in range(n) if j != i)):
            a[i, -neg_j] = s
    return (a + a.T) / 2


def reference_modularity(x: np.ndarray, y: np.ndarray, k: int = 3) -> float:
    """The reference per-layer step end to end: dense graph → networkx → modularity with the
    classes as communities."""
    import networkx as nx
    a = reference_adjacency(x, k)
    g = nx.from_numpy_array(a)
    y = np.asarray(y)
    parts = [set(np.flatnonzero(y == c).tolist()) for c in np.unique(y)]
    return float(nx.community.modularity(g, parts, weight="weight"))


def reference_knn(x: np.ndarray, k: int, metric: str):
    """Exact kNN oracle in float64: dense scores, self excluded, ties by lexsort (score, index).
    Returns ``(values, index)`` ``[N, k]``: cosine similarities or Euclidean distances."""
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        score = -(xn @ xn.T)
    else:
        score = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(score, np.inf)
    idx = np.stack([np.lexsort((np.arange(len(x)), s))[:k] for s in score])
    vals = np.take_along_axis(score, idx, 1)
    return (-vals if metric == "cosine" else vals), idx
