"""Symmetrisation weights as documented (``dg.graphs.symmetrize``), and whole snapshots
(``dg.graphs.build_snapshot``) against dense-matrix oracles built from a brute-force kNN."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dyngraph as dg

from .strategies import brute_knn, integer_grid, nx_modularity, unit_grid

HOWS = ["mean", "max", "add", "mutual"]
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def dense_symmetrized(n, src, dst, w, how):
    """``(present [N, N] bool, value [N, N])`` of the documented rule, from the dense directed
    adjacency ``A[i, j] = w`` for an entry ``i → j`` (self-loops dropped): ``'mean'``:
    ``(A + Aᵀ)/2`` on every pair with an entry either way; ``'add'``: ``A + Aᵀ``; ``'max'``: the
    larger of the entries present; ``'mutual'``: ``(A + Aᵀ)/2`` on pairs with entries both ways."""
    a = torch.zeros(n, n, dtype=w.dtype)
    p = torch.zeros(n, n, dtype=torch.bool)
    keep = src != dst
    a[src[keep], dst[keep]] = w[keep]
    p[src[keep], dst[keep]] = True
    both, either = p & p.T, p | p.T
    if how == "mean":
        return either, (a + a.T) / 2
    if how == "add":
        return either, a + a.T
    if how == "max":
        return either, torch.where(both, torch.maximum(a, a.T), torch.where(p, a, a.T))
    return both, (a + a.T) / 2


def assert_matches_dense(ei, w, n, present, value):
    """An undirected, coalesced edge list (no self-loops) equal to the dense oracle."""
    assert ei.dtype == torch.long and ei.shape == (2, w.numel())
    assert bool((ei[0] != ei[1]).all())
    key = ei[0] * n + ei[1]
    assert bool((key[1:] > key[:-1]).all())  # coalesced: sorted by (row, col), no repeats
    got = torch.zeros(n, n, dtype=torch.bool)
    got[ei[0], ei[1]] = True
    assert torch.equal(got, present)
    assert w.dtype == value.dtype
    assert torch.equal(w, value[ei[0], ei[1]])


@st.composite
def directed_entries(draw):
    """``(n, src, dst, w)``: unique directed entries (self-loops allowed, to be dropped) with
    signed weights, as a cosine kNN graph may have."""
    n = draw(st.integers(1, 9))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=30,
                          unique=True))
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    w = draw(st.lists(st.one_of(st.sampled_from([0.25, 0.5, 1.0, -0.5]),
                                st.floats(-1, 1, width=32)),
                      min_size=len(pairs), max_size=len(pairs)))
    src = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    dst = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return n, src, dst, torch.tensor(w, dtype=dtype)


@given(directed_entries(), st.sampled_from(HOWS))
def test_symmetrize_weights_as_documented(entries, how):
    n, src, dst, w = entries
    ei, w2 = dg.graphs.symmetrize(torch.stack([src, dst]), w, n, how=how)
    present, value = dense_symmetrized(n, src, dst, w, how)
    assert_matches_dense(ei, w2, n, present, value)


# (tiny exact grids make the expected warnings: identical rows, negative cosine edges)
@pytest.mark.filterwarnings("ignore::UserWarning")
@given(st.sampled_from(["cosine", "euclidean"]), st.sampled_from(HOWS), st.data())
def test_snapshot_is_symmetrized_brute_force_knn(metric, how, data):
    """``build_snapshot`` = the brute-force kNN (exact inputs: integer grids for Euclidean, scaled
    24-cell directions for cosine) as entries neighbour → query with cosine or unit weights, then
    the documented symmetrisation; its Q (non-negative weights) equals networkx's."""
    x64 = data.draw(unit_grid() if metric == "cosine" else integer_grid(), label="x")
    n = x64.shape[0]
    k = data.draw(st.integers(1, min(n - 1, 5)), label="k")
    dtype = DTYPES[data.draw(st.sampled_from(sorted(DTYPES)), label="dtype")]
    y = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n), label="y")
    y[:2] = [0, 1]
    x = torch.tensor(x64, dtype=dtype)
    snap = dg.graphs.build_snapshot(x, torch.tensor(y), k=k, metric=metric, symmetrize=how)
    vals, idx = brute_knn(x, k, metric)
    w = vals.to(dtype) if metric == "cosine" else torch.ones(n, k, dtype=dtype)
    src, dst = idx.reshape(-1), torch.arange(n).repeat_interleave(k)
    present, value = dense_symmetrized(n, src, dst, w.reshape(-1), how)
    assert snap.num_nodes == n and torch.equal(snap.y, torch.tensor(y))
    assert_matches_dense(snap.edge_index, snap.edge_weight, n, present, value)
    wts = snap.edge_weight.double()
    if bool((wts >= 0).all()) and float(wts.sum()) > 0:
        upper = snap.edge_index[0] < snap.edge_index[1]
        pairs = [tuple(p) for p in snap.edge_index[:, upper].t().tolist()]
        q = dg.modularity(snap.edge_index, torch.tensor(y), wts, num_nodes=n)
        ref = nx_modularity(n, pairs, wts[upper].tolist(), y)
        assert abs(q - ref) <= 1e-12 * max(1.0, float(np.abs(ref)))
