"""Pair measures (``dg.measures.linear_cka``, ``knn_overlap``, ``mutual_knn``,
``graph_similarity``, ``modularity_distance``): CKA against a NumPy oracle written from the papers'
formulas, and every measure invariant to what ``docs/similarity.md`` lists (rotation and isotropic
scaling of either input, translation for CKA; a sample order applied to both inputs)."""
import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import dyngraph as dg

from .strategies import labelled_points, orthogonal

SCALES = st.floats(1e-3, 1e3)


def cka_oracle(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    """Kornblith et al. 2019 with the biased HSIC ``tr(KHLH)``, or Song et al. 2012's unbiased
    HSIC_1 with zero-diagonal Gram matrices, from ``N × N`` Gram matrices."""
    def hsic(k, m):
        n = k.shape[0]
        if not unbiased:
            h = np.eye(n) - np.ones((n, n)) / n
            return np.trace(k @ h @ m @ h)
        k, m = k - np.diag(np.diag(k)), m - np.diag(np.diag(m))
        one = np.ones(n)
        return (np.trace(k @ m) + (one @ k @ one) * (one @ m @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * (one @ k @ m @ one)) / (n * (n - 3))
    k, m = x @ x.T, y @ y.T
    return hsic(k, m) / math.sqrt(hsic(k, k) * hsic(m, m))


@st.composite
def two_views(draw):
    """Two representations of the same inputs: ``y`` a random linear map of ``x`` plus noise of
    a random strength (from near-identical to unrelated), with its own width; both non-negative
    (as post-ReLU features) so that cosine graphs have the positive weights modularity needs."""
    x, labels, seed = draw(labelled_points(max_rows=40, positive=True))
    g = torch.Generator().manual_seed(seed + 7)
    d2 = draw(st.integers(2, 7))
    noise = draw(st.floats(0.0, 3.0))
    y = x @ torch.randn(x.shape[1], d2, generator=g, dtype=torch.float64)
    y = y + noise * torch.randn(x.shape[0], d2, generator=g, dtype=torch.float64)
    return x, y.abs(), labels, seed


def _transform(v, seed, scale, shift):
    """``scale · v · R + shift · u`` (``R`` orthogonal, ``u`` a random vector)."""
    g = torch.Generator().manual_seed(seed)
    t = shift * torch.randn(v.shape[1], generator=g, dtype=torch.float64)
    return scale * v @ orthogonal(v.shape[1], seed + 1) + t


@given(two_views(), st.booleans())
def test_cka_equals_oracle(views, unbiased):
    x, y, _, _ = views
    got = dg.measures.linear_cka(x, y, unbiased=unbiased)
    assert math.isclose(got, cka_oracle(x.numpy(), y.numpy(), unbiased), rel_tol=1e-9,
                        abs_tol=1e-12)


@given(two_views(), st.booleans(), st.integers(0, 2 ** 31 - 1), SCALES, st.floats(-50, 50),
       SCALES, st.floats(-50, 50), st.data())
def test_cka_invariances(views, unbiased, seed, sx, tx, sy, ty, data):
    """CKA(x, y) = CKA(y, x) = CKA(s·x·Q + t, s'·y·Q' + t') = CKA(x[p], y[p])."""
    x, y, _, _ = views
    ref = dg.measures.linear_cka(x, y, unbiased=unbiased)
    perm = torch.tensor(data.draw(st.permutations(range(x.shape[0])), label="sample order"))
    for other in (dg.measures.linear_cka(y, x, unbiased=unbiased),
                  dg.measures.linear_cka(_transform(x, seed, sx, tx),
                                         _transform(y, seed + 2, sy, ty), unbiased=unbiased),
                  dg.measures.linear_cka(x[perm], y[perm], unbiased=unbiased)):
        assert math.isclose(other, ref, rel_tol=1e-8, abs_tol=1e-10)


@given(two_views(), st.integers(0, 2 ** 31 - 1), SCALES, SCALES, st.integers(1, 8), st.data())
def test_knn_pair_measures_invariances(views, seed, sx, sy, k, data):
    """``knn_overlap``, ``mutual_knn``, ``graph_similarity`` (cosine) and ``modularity_distance``:
    unchanged by rotating and isotropically scaling either input and by a sample order applied to
    both (labels too); the kNN measures are symmetric and lie in [0, 1], 1 for a representation
    against a rotated, scaled copy of itself."""
    x, y, labels, _ = views
    x2, y2 = _transform(x, seed, sx, 0.0), _transform(y, seed + 2, sy, 0.0)
    perm = torch.tensor(data.draw(st.permutations(range(x.shape[0])), label="sample order"))
    fns = {"knn_overlap": lambda a, b, lab: dg.measures.knn_overlap(a, b, k=k),
           "mutual_knn": lambda a, b, lab: dg.measures.mutual_knn(a, b, k=k),
           "graph": lambda a, b, lab: dg.measures.graph_similarity(a, b, k=k),
           "modularity_distance": lambda a, b, lab: dg.measures.modularity_distance(a, b, lab)}
    for name, fn in fns.items():
        ref = fn(x, y, labels)
        for other in (fn(x2, y2, labels), fn(x[perm], y[perm], labels[perm])):
            assert math.isclose(other, ref, rel_tol=1e-9, abs_tol=1e-12), name
        if name != "modularity_distance":
            assert -1e-12 <= ref <= 1 + 1e-12, name
            assert math.isclose(fn(y, x, labels), ref, rel_tol=1e-9, abs_tol=1e-12), name
            assert math.isclose(fn(x, x2, labels), 1.0, rel_tol=1e-9), name
        else:
            assert ref >= 0 and fn(x, x2, labels) <= 1e-12
