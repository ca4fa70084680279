"""Independent reference implementations, used as oracles by the tests and as the slow baseline
by the benchmarks. They are deliberately naive and share no code with the package's fast paths."""
from __future__ import annotations

import heapq
from typing import Tuple

import numpy as np

__all__ = ["reference_adjacency", "reference_modularity", "reference_knn"]


def reference_adjacency(x: np.ndarray, k: int) -> np.ndarray:
    """The reference repository's graph, re-implemented faithfully: a dense cosine matrix (rows
    L2-normalised with eps 1e-8), a Python heap per row for the top-k (no self), directed weights
    ``cos(i, j)``, then ``A = (A + Aᵀ) / 2``.

    Args:
        x: Features ``[N, ...]`` (flattened to ``[N, D]``).
        k: Neighbours per row (self excluded); ties go to the smaller index.

    Returns:
        The dense ``[N, N]`` float64 adjacency: ``cos(i, j)`` for a mutual pair, ``cos(i, j)/2``
        for a one-way pair, 0 elsewhere and on the diagonal.

    Example:
        >>> import numpy as np
        >>> from dyngraph.testing import reference_adjacency
        >>> x = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
        >>> a = reference_adjacency(x, k=1)
        >>> a.shape, bool((a == a.T).all()), float(a.trace())
        ((3, 3), True, 0.0)
        >>> round(float(a[0, 1]), 4), round(float(a[1, 2]), 4)     # mutual pair; one-way pair
        (0.995, 0.0498)
    """
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
    classes as communities.

    Args:
        x: Features ``[N, ...]``.
        y: Class labels ``[N]`` (the communities).
        k: Neighbours per row.

    Returns:
        Newman's weighted modularity (resolution 1) of :func:`reference_adjacency` by
        ``networkx.community.modularity``.

    Example:
        >>> import numpy as np
        >>> from dyngraph.testing import reference_modularity
        >>> x = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
        >>> round(reference_modularity(x, np.array([0, 0, 1, 1]), k=1), 4)  # two cliques: 1 - 1/2
        0.5
    """
    import networkx as nx
    a = reference_adjacency(x, k)
    g = nx.from_numpy_array(a)
    y = np.asarray(y)
    parts = [set(np.flatnonzero(y == c).tolist()) for c in np.unique(y)]
    return float(nx.community.modularity(g, parts, weight="weight"))


def reference_knn(x: np.ndarray, k: int, metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """Exact kNN oracle in float64: dense scores, self excluded, ties by lexsort (score, index).

    Args:
        x: Features ``[N, D]`` (no zero rows under cosine).
        k: Neighbours per row.
        metric: ``'cosine'`` (largest similarity first) or ``'euclidean'`` (smallest distance
            first).

    Returns:
        ``(values, index)``, both ``[N, k]``: cosine similarities or Euclidean distances, and
        the neighbours' row indices; equal scores are ordered by index.

    Example:
        >>> import numpy as np
        >>> from dyngraph.testing import reference_knn
        >>> vals, idx = reference_knn(np.array([[0.0], [1.0], [2.0], [4.0]]), 1, "euclidean")
        >>> idx[:, 0].tolist(), vals[:, 0].tolist()     # row 1 is 1 from rows 0 and 2: row 0 wins
        ([1, 0, 1, 2], [1.0, 1.0, 1.0, 2.0])
    """
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
