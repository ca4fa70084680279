"""Properties of the exact kNN search (``dg.graphs.nearest_neighbors``, ``dg.knn_edges``) against a
brute-force oracle: every score computed elementwise in float64, then a full stable sort of each
row (best first, ties to the smaller index)."""
import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import dyngraph as dg

from .strategies import brute_knn, integer_grid, knn_scores, unit_grid

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@st.composite
def tilings(draw, n: int):
    """``(chunk_size, col_chunk_size)``: the default single tile, or tiles of a few rows each
    (at most ~5 blocks per side, so the search stays quick)."""
    kind = draw(st.sampled_from(["default", "rows", "cols", "both"]))
    lo = max(2, -(-n // 5))
    size = st.integers(lo, max(lo, n))
    rows = draw(size) if kind in ("rows", "both") else None
    cols = draw(size) if kind in ("cols", "both") else None
    return rows, cols


def _search(x64: np.ndarray, k, metric, dtype, tiles, source):
    x = torch.tensor(x64, dtype=DTYPES[dtype])
    src = x if source == "tensor" else x.numpy()
    return x, dg.graphs.nearest_neighbors(src, k, metric=metric, chunk_size=tiles[0],
                                          col_chunk_size=tiles[1])


def _assert_exact(x, k, metric, vals, idx):
    ref_v, ref_i = brute_knn(x, k, metric)
    assert idx.dtype == torch.long and idx.shape == (x.shape[0], k)
    assert vals.dtype == x.dtype
    assert torch.equal(idx, ref_i)
    # the oracle's float64 values rounded once to the input precision (sqrt is correctly rounded)
    assert torch.equal(vals, ref_v.to(x.dtype))


@given(integer_grid(), st.data(), st.sampled_from(sorted(DTYPES)),
       st.sampled_from(["tensor", "numpy"]))
def test_euclidean_exact_ties(x64, data, dtype, source):
    """Small integer grids: every distance is exact, ties abound; the search (any tiling, in
    memory or out of core from a NumPy array) equals the brute force bit for bit."""
    n = x64.shape[0]
    k = data.draw(st.integers(1, min(n - 1, 8)), label="k")
    tiles = data.draw(tilings(n), label="tiles")
    x, (vals, idx) = _search(x64, k, "euclidean", dtype, tiles, source)
    _assert_exact(x, k, "euclidean", vals, idx)


@given(unit_grid(), st.data(), st.sampled_from(sorted(DTYPES)),
       st.sampled_from(["tensor", "numpy"]))
def test_cosine_exact_ties(x64, data, dtype, source):
    """Directions of the 24-cell scaled by powers of two: exact cosines with many exact ties
    (repeated directions at different scales); equal to the brute force bit for bit."""
    n = x64.shape[0]
    k = data.draw(st.integers(1, min(n - 1, 8)), label="k")
    tiles = data.draw(tilings(n), label="tiles")
    x, (vals, idx) = _search(x64, k, "cosine", dtype, tiles, source)
    _assert_exact(x, k, "cosine", vals, idx)


def _check_up_to_rounding(x, k, metric, vals, idx, tol, twins=True):
    """A valid exact kNN answer up to the rounding of the scores.

    ``tol`` bounds a score's rounding error (cosine; squared distance for Euclidean). Checks:
    ``k`` distinct neighbours other than the row itself; values equal to the oracle's scores of the
    returned indices; best first; equal returned values in ascending index order; no other row
    better than the worst returned one by more than ``tol``; and (``twins``) an identical copy of a
    returned row that was left out has a larger index (the tie rule on exact ties)."""
    n = x.shape[0]
    s = knn_scores(x, metric)
    assert idx.shape == (n, k) and vals.shape == (n, k)
    rows = torch.arange(n).unsqueeze(1)
    assert bool(((idx >= 0) & (idx < n) & (idx != rows)).all())
    assert all(len(set(r)) == k for r in idx.tolist())
    got = s.gather(1, idx)
    v = vals.to(torch.float64)
    if metric == "cosine":
        assert bool(((v - got).abs() <= tol).all())
        assert bool((vals[:, 1:] <= vals[:, :-1]).all())
    else:
        assert bool(((v * v - got).abs() <= tol).all())
        assert bool((vals[:, 1:] >= vals[:, :-1]).all())
    tied = vals[:, 1:] == vals[:, :-1]
    assert bool((~tied | (idx[:, 1:] > idx[:, :-1])).all())
    chosen = torch.zeros(n, n, dtype=torch.bool)
    chosen[rows, idx] = True
    chosen[torch.arange(n), torch.arange(n)] = True  # (the row itself is never a candidate)
    other = s.masked_fill(chosen, -float("inf") if metric == "cosine" else float("inf"))
    if metric == "cosine":
        assert bool((other.max(1).values <= got.min(1).values + tol).all())
    else:
        assert bool((other.min(1).values >= got.max(1).values - tol).all())
    if not twins:
        return
    same = (x.unsqueeze(1) == x.unsqueeze(0)).all(-1)  # bitwise identical rows
    for i, j in (same & ~chosen).nonzero().tolist():
        twins = (same[j] & chosen[i]).nonzero().flatten()
        twins = twins[twins != i]
        assert bool((twins < j).all()), (i, j, twins.tolist())


def _tolerance(x: torch.Tensor, metric: str) -> float:
    """A score's rounding bound: cosine ~ D·eps; a squared distance ~ D·eps·R² with R the largest
    distance from the centroid (translation-invariant: a shift moves no distance)."""
    eps = torch.finfo(x.dtype).eps
    d = x.shape[1]
    if metric == "cosine":
        return 16 * (d + 2) * eps
    xc = x.double() - x.double().mean(0)
    return 16 * (d + 2) * eps * float((xc * xc).sum(1).max())


@st.composite
def float_points(draw, max_rows: int = 28, max_dim: int = 5):
    """``[N, D]`` floats in ``[-1, 1]`` as hypothesis draws them (repeated values, exact
    duplicates, signed zeros); rows with a tiny norm get 1 added to their first coordinate."""
    n = draw(st.integers(3, max_rows))
    d = draw(st.integers(1, max_dim))
    x = draw(arrays(np.float64, (n, d), elements=st.floats(-1, 1, width=32)))
    small = np.linalg.norm(x, axis=1) < 1e-2
    x[small, 0] += 1.0
    return x


@given(float_points(), st.data(), st.sampled_from(["cosine", "euclidean"]),
       st.sampled_from(sorted(DTYPES)), st.sampled_from(["tensor", "numpy"]))
def test_random_floats_match_brute_force(x64, data, metric, dtype, source):
    n = x64.shape[0]
    k = data.draw(st.integers(1, min(n - 1, 6)), label="k")
    tiles = data.draw(tilings(n), label="tiles")
    x, (vals, idx) = _search(x64, k, metric, dtype, tiles, source)
    # (the tie rule among exact duplicates under cosine: test_cosine_duplicates_any_tiling)
    _check_up_to_rounding(x, k, metric, vals, idx, _tolerance(x, metric),
                          twins=metric == "euclidean")


@st.composite
def duplicated_rows(draw):
    """``[N, D]`` rows drawn from 1-3 distinct float rows, so most rows have exact copies."""
    base = draw(float_points(max_rows=3))
    n = draw(st.integers(4, 24))
    which = draw(st.lists(st.integers(0, base.shape[0] - 1), min_size=n, max_size=n))
    return base[which]


@given(duplicated_rows(), st.integers(1, 6), st.integers(2, 24), st.sampled_from(sorted(DTYPES)))
@example(np.full((10, 3), 0.1875), 1, 4, "float64").via("ten equal rows")
def test_cosine_duplicates_any_tiling(x64, k, rows, dtype):
    """Exact copies tie exactly, so the smaller index wins whatever the tile shape."""
    n = x64.shape[0]
    k = min(k, n - 1)
    tiles = (max(rows, -(-n // 5)), None)
    x, (vals, idx) = _search(x64, k, "cosine", dtype, tiles, "tensor")
    _check_up_to_rounding(x, k, "cosine", vals, idx, _tolerance(x, "cosine"))


@given(float_points(), st.integers(1, 6), st.floats(1e-3, 1.0), st.floats(1e2, 1e4),
       st.sampled_from(sorted(DTYPES)))
@example(np.array([[0.0], [0.3], [0.1], [0.9], [0.55], [0.2]]), 1, 1e-2, 1e3, "float32")
def test_euclidean_is_translation_invariant(x64, k, spread, shift, dtype):
    """Distances do not move under a shift, so the neighbours of ``x + t`` are those of ``x``."""
    k = min(k, x64.shape[0] - 1)
    x = torch.tensor(x64 * spread + shift, dtype=DTYPES[dtype])
    vals, idx = dg.graphs.nearest_neighbors(x, k, metric="euclidean")
    _check_up_to_rounding(x, k, "euclidean", vals, idx, _tolerance(x, "euclidean"))


@given(st.sampled_from(["cosine", "euclidean"]), st.data())
def test_knn_edges_layout(metric, data):
    """``knn_edges``: PyG's source_to_target flow, each query's k neighbours best first, cosine
    weights (or 1 for Euclidean), in-degree exactly k."""
    x64 = data.draw(unit_grid() if metric == "cosine" else integer_grid(), label="x")
    n = x64.shape[0]
    k = data.draw(st.integers(1, min(n - 1, 6)), label="k")
    x = torch.tensor(x64)
    ei, w = dg.knn_edges(x, k, metric=metric)
    ref_v, ref_i = brute_knn(x, k, metric)
    assert ei.shape == (2, n * k) and w.shape == (n * k,)
    assert torch.equal(ei[1], torch.arange(n).repeat_interleave(k))
    assert torch.equal(ei[0], ref_i.reshape(-1))
    assert torch.equal(torch.bincount(ei[1], minlength=n), torch.full((n,), k))
    if metric == "cosine":
        assert torch.allclose(w, ref_v.reshape(-1), rtol=0, atol=1e-12)
    else:
        assert torch.equal(w, torch.ones(n * k, dtype=x.dtype))
