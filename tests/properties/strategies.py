"""Hypothesis strategies and independent oracles shared by the property tests.

Every oracle here is written from the definition (dense matrices, full sorts, networkx), never from
dyngraph's own code paths.
"""
from __future__ import annotations

import itertools
from typing import List, Tuple

import networkx as nx
import numpy as np
import torch
from hypothesis import strategies as st

# ----------------------------------------------------------------------------- weighted graphs
#: Edge weights: exact small integers (ties, zeros) and floats across six decades.
WEIGHTS = st.one_of(st.integers(0, 4).map(float),
                    st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False))


@st.composite
def undirected_graphs(draw, min_nodes: int = 2, max_nodes: int = 10, self_loops: bool = True,
                      max_communities: int = 5):
    """``(n, pairs, weights, communities)``: an undirected weighted graph given by its unique
    pairs ``i <= j`` (self-loops when ``self_loops``), weights ``>= 0`` with a positive total, and
    a community id in ``[0, C)`` for every node."""
    n = draw(st.integers(min_nodes, max_nodes))
    all_pairs = [(i, j) for i in range(n) for j in range(i if self_loops else i + 1, n)]
    pairs = draw(st.lists(st.sampled_from(all_pairs), min_size=1,
                          max_size=min(len(all_pairs), 24), unique=True))
    weights = [draw(st.floats(0.01, 10.0))] + [draw(WEIGHTS) for _ in pairs[1:]]
    c = draw(st.integers(1, min(n, max_communities)))
    comms = draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))
    return n, pairs, weights, comms


def pyg_edges(pairs, weights, dtype=torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
    """PyG's undirected convention: a pair ``i != j`` stored in both directions, a self-loop once."""
    src: List[int] = []
    dst: List[int] = []
    w: List[float] = []
    for (i, j), wij in zip(pairs, weights):
        src.append(i)
        dst.append(j)
        w.append(wij)
        if i != j:
            src.append(j)
            dst.append(i)
            w.append(wij)
    return torch.tensor([src, dst], dtype=torch.long), torch.tensor(w, dtype=dtype)


def nx_modularity(n, pairs, weights, comms, resolution: float = 1.0) -> float:
    """networkx's weighted modularity of the partition ``comms`` (self-loops: networkx's rule)."""
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for (i, j), w in zip(pairs, weights):
        g.add_edge(i, j, weight=w)
    parts = [{v for v in range(n) if comms[v] == c} for c in sorted(set(comms))]
    return nx.community.modularity(g, parts, weight="weight", resolution=resolution)


def dense_adjacency(n, pairs, weights) -> np.ndarray:
    """``A`` with ``A_ij = A_ji = w`` and a self-loop as ``A_ii = 2w`` (its degree counts twice)."""
    a = np.zeros((n, n))
    for (i, j), w in zip(pairs, weights):
        if i == j:
            a[i, i] += 2 * w
        else:
            a[i, j] += w
            a[j, i] += w
    return a


# ----------------------------------------------------------------------------- kNN inputs
#: The 24 units of the Hurwitz quaternions (the 24-cell): norm exactly 1, pairwise dot products in
#: {0, ±1/2, ±1}. Scaled by powers of two their normalisation and every dot product are exact in
#: float32 and float64, in any summation order: cosine kNN with exact, abundant ties.
UNITS_24 = np.array([list(v) for v in itertools.product([-0.5, 0.5], repeat=4)]
                    + [[s if d == i else 0.0 for d in range(4)] for i in range(4)
                       for s in (-1.0, 1.0)])


@st.composite
def integer_grid(draw, min_rows: int = 3, max_rows: int = 28):
    """``[N, D]`` integers in ``[-3, 3]`` (``D <= 4``): every squared distance and dot product is
    an exact small integer, so Euclidean kNN has exact ties in any precision and tiling."""
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(1, 4))
    vals = draw(st.lists(st.integers(-3, 3), min_size=n * d, max_size=n * d))
    return np.array(vals, dtype=np.float64).reshape(n, d)


@st.composite
def unit_grid(draw, min_rows: int = 3, max_rows: int = 28):
    """``[N, 4]`` rows of :data:`UNITS_24` times ``2^p``, ``p in [-3, 3]``: exact cosines, many ties
    (repeated and opposite directions)."""
    n = draw(st.integers(min_rows, max_rows))
    which = draw(st.lists(st.integers(0, len(UNITS_24) - 1), min_size=n, max_size=n))
    powers = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    return UNITS_24[which] * np.exp2(np.array(powers, dtype=np.float64))[:, None]


def knn_scores(x: torch.Tensor, metric: str) -> torch.Tensor:
    """Brute-force float64 score matrix with the diagonal excluded: cosine similarity (larger is
    better) or Euclidean *squared* distance (smaller is better), elementwise (no GEMM)."""
    x = x.to(torch.float64)
    if metric == "cosine":
        xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
        s = (xn.unsqueeze(1) * xn.unsqueeze(0)).sum(-1)
        s.fill_diagonal_(-float("inf"))
    else:
        s = ((x.unsqueeze(1) - x.unsqueeze(0)) ** 2).sum(-1)
        s.fill_diagonal_(float("inf"))
    return s


def brute_knn(x: torch.Tensor, k: int, metric: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """The reference answer: a full stable sort of every row (best first, ties to the smaller
    index). Returns float64 values (cosine, or Euclidean distance) and indices ``[N, k]``."""
    s = knn_scores(x, metric)
    key = -s if metric == "cosine" else s
    order = key.argsort(dim=1, stable=True)[:, :k]
    v = s.gather(1, order)
    return (v if metric == "cosine" else v.sqrt()), order


def orthogonal(d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """A random orthogonal ``[d, d]`` matrix (QR of a Gaussian, signs fixed)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r)).unsqueeze(0)).to(dtype)


@st.composite
def labelled_points(draw, min_rows: int = 24, max_rows: int = 48, max_dim: int = 6,
                    max_classes: int = 4, positive: bool = False):
    """``(x [N, D] float64, y [N], seed)``: Gaussian points around class centres (continuous:
    no exact ties, no duplicates), every class at least twice, random anisotropy, separation and
    shift. ``positive``: absolute values, as post-ReLU features (every cosine is then > 0, so
    cosine kNN graphs have positive weights, which modularity needs)."""
    seed = draw(st.integers(0, 2 ** 31 - 1))
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(2, max_dim))
    c = draw(st.integers(2, max_classes))
    sep = draw(st.floats(0.0, 4.0))
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.arange(c).repeat(2), torch.randint(0, c, (n - 2 * c,), generator=g)])
    y = y[torch.randperm(n, generator=g)]
    scales = torch.rand(d, generator=g, dtype=torch.float64) * 2 + 0.2
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    x = x + sep * torch.randn(c, d, generator=g, dtype=torch.float64)[y]
    shift = draw(st.floats(0.0, 6.0))
    direction = torch.randn(d, generator=g, dtype=torch.float64)
    x = x + shift * direction / direction.norm()
    return (x.abs() if positive else x), y, seed
