"""Each registered layer measure is invariant to what it claims (or what its definition implies):
run through the one runner, ``dg.depth_profile``, on a layer and a transformed copy of it.

* kNN-graph and label measures on cosine graphs (``modularity``, ``graph_purity``,
  ``mixing_ratio``, ``knn_purity``): rotation and isotropic scaling (cosine weights), sample order
  (rows and labels together) and the class ids.
* Intrinsic-dimension measures (``twonn``, ``twonn_mle``, ``mle_id``, ``participation_ratio``,
  ``participation_ratio_corrected``, ``pca_dim``, ``local_participation_ratio``,
  ``local_pca_dim``): functions of Euclidean distances or of the covariance spectrum, so rotation,
  isotropic scaling, translation and sample order.
* Neural-collapse measures (``nc1`` ... ``ncc_accuracy``; with a classifier ``nc2_*_w``, ``nc3``,
  ``nc4``): rotation, isotropic scaling, translation, sample order and class ids (the classifier
  transformed with the features).

Not covered: ``detected_communities`` (Leiden's partition depends on the node order by design).
Features are float64 (continuous, no exact ties), so the only differences are rounding.
"""
import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import dyngraph as dg

from .strategies import labelled_points, orthogonal

GRAPH_MEASURES = ["modularity", "graph_purity", "mixing_ratio", "knn_purity"]
ID_MEASURES = ["twonn", "twonn_mle", "mle_id", "participation_ratio",
               "participation_ratio_corrected", "pca_dim", "local_participation_ratio",
               "local_pca_dim"]
NC_MEASURES = ["nc1", "nc1_trace", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc2_etf",
               "cdnv", "ncc_accuracy"]
SCALES = st.floats(1e-3, 1e3)


def _profile(layers, measures, y):
    return dg.depth_profile(layers, measures, y=y, progress=False)


def _assert_rows_close(a, b, metrics, rtol=1e-8, atol=1e-10):
    """Two ``[M]`` rows of a profile agree (NaN nowhere)."""
    assert not bool(a.isnan().any() or b.isnan().any())
    bad = [(m, float(u), float(v)) for m, u, v in zip(metrics, a, b)
           if not math.isclose(float(u), float(v), rel_tol=rtol, abs_tol=atol)]
    assert not bad, bad


def _class_permutation(y, data):
    c = int(y.max()) + 1
    pi = torch.tensor(data.draw(st.permutations(range(c)), label="class ids"))
    return pi[y]


def test_measure_lists_are_registered():
    """The lists above name registered layer measures (a rename would silently skip one)."""
    layer = set(dg.measures.available("layer"))
    assert set(GRAPH_MEASURES + ID_MEASURES + NC_MEASURES) <= layer


@given(labelled_points(positive=True), st.integers(0, 2 ** 31 - 1), SCALES)
def test_graph_measures_rotation_and_scaling(points, rot_seed, scale):
    x, y, _ = points
    q = orthogonal(x.shape[1], rot_seed)
    p = _profile({"x": x, "t": scale * x @ q}, GRAPH_MEASURES, y)
    _assert_rows_close(p.samples[0, 0], p.samples[0, 1], p.metrics)


@given(labelled_points(), st.integers(0, 2 ** 31 - 1), SCALES,
       st.floats(-50, 50), st.integers(0, 2 ** 31 - 1))
def test_euclidean_measures_rotation_scaling_translation(points, rot_seed, scale, shift, t_seed):
    x, y, _ = points
    q = orthogonal(x.shape[1], rot_seed)
    t = shift * torch.randn(x.shape[1], generator=torch.Generator().manual_seed(t_seed),
                            dtype=torch.float64)
    ms = ID_MEASURES + NC_MEASURES
    p = _profile({"x": x, "t": scale * x @ q + t}, ms, y)
    _assert_rows_close(p.samples[0, 0], p.samples[0, 1], p.metrics, rtol=1e-7)


@given(labelled_points(positive=True), st.data())
def test_sample_order_and_class_ids(points, data):
    """Permuting the samples (rows and labels together) and renaming the classes changes no
    measure."""
    x, y, _ = points
    perm = torch.tensor(data.draw(st.permutations(range(x.shape[0])), label="sample order"))
    y2 = _class_permutation(y, data)
    ms = GRAPH_MEASURES + ID_MEASURES + NC_MEASURES
    a = _profile({"x": x}, ms, y)
    b = _profile({"x": x[perm]}, ms, y2[perm])
    _assert_rows_close(a.samples[0, 0], b.samples[0, 0], a.metrics, rtol=1e-7)


@given(labelled_points(), st.integers(0, 2 ** 31 - 1), SCALES, SCALES, st.floats(-50, 50),
       st.data())
def test_neural_collapse_with_classifier(points, seed, scale, w_scale, shift, data):
    """With a classifier ``(W, b)``: ``x → s·x·R + t`` together with ``W → W' = c·W·R`` and
    ``b → s·c·b − W'·t`` scales the logits by ``s·c > 0``, so predictions, self-duality
    (NC3), the classifier's geometry (``nc2_*_w``) and NC4 stay; permuting samples and classes
    (rows of ``W`` and ``b`` with them) changes nothing either."""
    x, y, _ = points
    n, d = x.shape
    c = int(y.max()) + 1
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    r = orthogonal(d, seed + 1)
    t = shift * torch.randn(d, generator=g, dtype=torch.float64)
    ref = dg.measures.neural_collapse(x, y, (w, b))
    w2 = w_scale * w @ r
    moved = dg.measures.neural_collapse(scale * x @ r + t, y, (w2, scale * w_scale * b - w2 @ t))
    perm = torch.tensor(data.draw(st.permutations(range(n)), label="sample order"))
    pi = torch.tensor(data.draw(st.permutations(range(c)), label="class ids"))
    inv = torch.argsort(pi)  # class k is renamed pi[k]: row pi[k] of the new W is row k
    renamed = dg.measures.neural_collapse(x[perm], pi[y][perm], (w[inv], b[inv]))
    keys = sorted(k for k in ref if k.startswith(("nc", "cdnv")))
    assert {"nc3", "nc4", "nc2_etf_w"} <= set(keys)
    for other in (moved, renamed):
        assert set(other) == set(ref)
        _assert_rows_close(torch.tensor([ref[k] for k in keys], dtype=torch.float64),
                           torch.tensor([other[k] for k in keys], dtype=torch.float64), keys,
                           rtol=1e-7)
        assert all(ref[k] == other[k] for k in ("num_classes", "n_samples", "dim", "sb_rank"))
