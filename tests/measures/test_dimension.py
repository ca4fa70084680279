"""Intrinsic dimension: estimators against skdim / numpy / sklearn, robustness, profiles over
depth, phases, figures and TensorBoard."""
import itertools
import json
import math
import warnings

import numpy as np
import pytest
import torch

import dyngraph as dg

warnings.filterwarnings("ignore", category=FutureWarning)


def _skdim():
    skdim = pytest.importorskip("skdim")
    return skdim


def _datasets():
    skdim = _skdim()
    rng = np.random.default_rng(7)
    return {
        "hyperBall": skdim.datasets.hyperBall(800, 5, random_state=0),
        "hyperSphere": skdim.datasets.hyperSphere(800, 4, random_state=1),
        "gaussian": rng.standard_normal((800, 6)),
        "gaussian_D40": rng.standard_normal((800, 40)),  # skdim's pairwise path (D > 25)
    }


def _embedded_cube(n, d, big_d=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, d, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(big_d, d, generator=g, dtype=torch.float64))[0]
    return z @ q.T


# ------------------------------------------------------------------------ neighbour distances
@pytest.mark.parametrize("blocks", [False, True])
def test_neighbor_distances_match_brute_force(blocks, monkeypatch):
    from scipy.spatial.distance import cdist
    if blocks:  # the symmetric self-search over 96-row blocks, as for large N
        import importlib
        monkeypatch.setattr(importlib.import_module("dyngraph.graphs._knn"), "DEFAULT_TILE_ELEMENTS",
                            96 * 96)
    x = _embedded_cube(400, 4, 30, seed=1) + 5.0  # an offset: the search centres the data
    d, idx = dg.measures.neighbor_distances(x, 6)
    full = cdist(x.numpy(), x.numpy())
    np.fill_diagonal(full, np.inf)
    ref = np.sort(full, axis=1)[:, :6]
    assert d.dtype == torch.float64 and idx.dtype == torch.long
    np.testing.assert_allclose(d.numpy(), ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(full[np.arange(400)[:, None], idx.numpy()], ref, rtol=1e-12)


def test_neighbor_distances_certificate_fallback_is_exact():
    from scipy.spatial.distance import cdist
    g = torch.Generator().manual_seed(3)
    # A tight cluster next to far-away points: float32 rounding (driven by the largest norm)
    # swamps the cluster's distances, so the certificate must send those rows to float64.
    tight = 1e-5 * torch.randn(150, 8, generator=g, dtype=torch.float64)
    far = 1e3 * torch.randn(20, 8, generator=g, dtype=torch.float64)
    x = torch.cat([tight, far])
    d, idx, stats = dg.measures.neighbor_distances(x, 3, return_stats=True)
    assert stats["search"] == "float32" and stats["refined_rows"] >= 100
    assert stats["brute_rows"] > 0  # even the float64 bound cannot certify the tight cluster
    full = cdist(x.numpy(), x.numpy())
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(d.numpy(), np.sort(full, axis=1)[:, :3], rtol=1e-13)
    d64, _ = dg.measures.neighbor_distances(x, 3, search="float64")
    np.testing.assert_allclose(d64.numpy(), np.sort(full, axis=1)[:, :3], rtol=1e-10)


# ------------------------------------------------------------------------ TwoNN
@pytest.mark.parametrize("method,discard", [("linear", 0.1), ("linear", 0.25), ("mle", 0.1),
                                            ("mle", 0.0)])
def test_twonn_matches_skdim(method, discard):
    skdim = _skdim()
    for name, x in _datasets().items():
        ref = skdim.id.TwoNN(discard_fraction=discard, method=method).fit(x).dimension_
        ours = dg.measures.twonn(torch.from_numpy(x), discard_fraction=discard, method=method)
        assert abs(ours - ref) < 1e-6, (name, ours, ref)


def test_twonn_mle_form_is_n_minus_1_over_sum_log_mu():
    x = _embedded_cube(500, 3, 20, seed=2)
    d, _ = dg.measures.neighbor_distances(x, 2)
    mu = (d[:, 1] / d[:, 0]).numpy()
    expected = (len(mu) - 1) / np.log(mu).sum()
    assert dg.measures.twonn(x, discard_fraction=0.0, method="mle") == pytest.approx(expected, rel=1e-12)


def _ansuini_reference(x: np.ndarray, fraction: float = 0.9) -> tuple:
    """Ansuini et al.'s estimate(): dense distances, drop r1 = 0 and r1 = r2, linear fit."""
    from scipy.spatial.distance import cdist
    from sklearn.linear_model import LinearRegression
    full = cdist(x, x)
    y = np.sort(full, axis=1)
    k1, k2 = y[:, 1], y[:, 2]
    zeros = np.where(k1 == 0)[0]
    degeneracies = np.where(k1 == k2)[0]
    good = np.setdiff1d(np.setdiff1d(np.arange(len(x)), zeros), degeneracies)
    k1, k2 = k1[good], k2[good]
    npoints = int(np.floor(good.shape[0] * fraction))
    n = good.shape[0]
    mu = np.sort(k2 / k1)
    femp = np.arange(1, n + 1, dtype=np.float64) / n
    xs, ys = np.log(mu[:npoints]), -np.log(1 - femp[:npoints])
    lr = LinearRegression(fit_intercept=False).fit(xs[:, None], ys[:, None])
    return float(lr.coef_[0][0]), len(zeros), len(np.setdiff1d(degeneracies, zeros))


def test_twonn_duplicates_and_ties_dropped_and_counted():
    g = torch.Generator().manual_seed(4)
    base = _embedded_cube(300, 3, 10, seed=4)
    dup_rows = torch.randint(0, 300, (40,), generator=g).unique()
    x = torch.cat([base, base[dup_rows]])  # each duplicated point and its copy have r1 = 0
    est = dg.measures.twonn(x, return_details=True)
    assert isinstance(est, dg.measures.IDEstimate) and math.isfinite(est.dimension)
    assert est.dropped["duplicates"] == 2 * dup_rows.numel()
    ref, n_zero, _ = _ansuini_reference(x.numpy())
    assert n_zero == est.dropped["duplicates"]
    assert est.dimension == pytest.approx(ref, abs=1e-9)
    # a lattice has exact ties r1 = r2: dropped, counted, as Ansuini does
    grid = torch.tensor(list(itertools.product(range(12), range(12))), dtype=torch.float64)
    jitter = torch.cat([grid, torch.rand(100, 2, generator=g, dtype=torch.float64) * 11])
    est = dg.measures.twonn(jitter, return_details=True)
    ref, _, n_ties = _ansuini_reference(jitter.numpy())
    assert est.dropped["ties"] == n_ties > 10
    assert est.dimension == pytest.approx(ref, abs=1e-9) and math.isfinite(est.dimension)


def test_twonn_all_duplicates_is_an_error_not_nan():
    x = torch.ones(50, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="duplicates"):
        dg.measures.twonn(x)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5])
def test_twonn_recovers_known_dimension(d):
    x = _embedded_cube(4000, d, 100, seed=10 + d)
    assert abs(dg.measures.twonn(x) - d) <= 0.1 * d


def test_twonn_underestimates_large_dimension():
    x = _embedded_cube(2000, 30, 100, seed=5)
    assert dg.measures.twonn(x) < 0.9 * 30  # the known finite-N underestimate, documented


# ------------------------------------------------------------------------ MLE
@pytest.mark.parametrize("k,unbiased,comb", [(20, False, "mle"), (5, False, "mle"),
                                             (10, True, "mle"), (12, False, "mean"),
                                             (12, False, "median")])
def test_mle_matches_skdim(k, unbiased, comb):
    skdim = _skdim()
    for name, x in _datasets().items():
        ref = skdim.id.MLE(unbiased=unbiased).fit(x, n_neighbors=k, comb=comb).dimension_
        ours = dg.measures.mle_id(torch.from_numpy(x), k=k, unbiased=unbiased, comb=comb)
        assert abs(ours - ref) < 1e-6, (name, ours, ref)


def test_local_mle_matches_skdim_pointwise():
    skdim = _skdim()
    x = _datasets()["hyperBall"]
    ref = skdim.id.MLE().fit(x, n_neighbors=15).dimension_pw_
    ours = dg.measures.local_id(torch.from_numpy(x), k=15, method="mle")
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9)


def test_mle_duplicates_finite_and_counted():
    base = _embedded_cube(300, 3, 10, seed=6)
    x = torch.cat([base, base[:25]])
    est = dg.measures.mle_id(x, k=10, return_details=True)
    assert math.isfinite(est.dimension) and est.dropped["duplicates"] == 50
    assert est.n_used == 300 - 25 and est.fit["local"].numel() == 275
    with pytest.warns(RuntimeWarning, match="50 of 325"):
        loc = dg.measures.local_id(x, k=10)
    assert int(loc.isnan().sum()) == 50


# ------------------------------------------------------------------------ participation ratio, PCA
@pytest.mark.parametrize("n,d", [(300, 20), (30, 200)])  # covariance side and Gram side
def test_participation_ratio_matches_numpy_eigenvalues(n, d):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d)) * np.linspace(3, 0.1, d) + 2.0
    lam = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    assert dg.measures.participation_ratio(torch.from_numpy(x)) == pytest.approx(
        lam.sum() ** 2 / (lam ** 2).sum(), rel=1e-10)


def _brute_force_moments(x: np.ndarray):
    """U-statistics over explicitly enumerated distinct index tuples."""
    n = len(x)
    g = x @ x.T
    p = list(itertools.permutations(range(n), 4))
    tr_sq = np.mean([g[i, j] ** 2 - 2 * g[i, j] * g[j, k] + g[i, j] * g[k, l]
                     for i, j, k, l in p])
    tr2 = np.mean([(g[i, i] - g[i, j]) * (g[k, k] - g[k, l]) for i, j, k, l in p])
    return tr2, tr_sq


def test_bias_corrected_pr_equals_brute_force_u_statistics():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3)) * np.array([2.0, 1.0, 0.5]) + np.array([3.0, -1.0, 0.5])
    tr2, tr_sq = _brute_force_moments(x)
    ours = dg.measures.participation_ratio(torch.from_numpy(x), bias_correction=True)
    assert ours == pytest.approx(tr2 / tr_sq, rel=1e-9)
    # invariant to a shift of the data
    assert dg.measures.participation_ratio(torch.from_numpy(x + 100.0), bias_correction=True) == \
        pytest.approx(ours, rel=1e-7)


def test_bias_corrected_pr_removes_finite_sample_bias():
    g = torch.Generator().manual_seed(0)
    lam = 1.0 / torch.arange(1, 201, dtype=torch.float64)
    true = float(lam.sum() ** 2 / (lam ** 2).sum())
    plain, corrected = [], []
    for _ in range(30):
        x = torch.randn(50, 200, generator=g, dtype=torch.float64) * lam.sqrt()
        plain.append(dg.measures.participation_ratio(x))
        corrected.append(dg.measures.participation_ratio(x, bias_correction=True))
    assert np.mean(plain) < 0.8 * true  # the plain estimate is biased low
    assert abs(np.mean(corrected) - true) < 0.15 * true


@pytest.mark.parametrize("n,d", [(400, 12), (25, 60)])
def test_pca_dim_matches_sklearn(n, d):
    from sklearn.decomposition import PCA
    rng = np.random.default_rng(d)
    x = rng.standard_normal((n, d)) * np.geomspace(5, 0.05, d)
    for thr in (0.3, 0.5, 0.8, 0.9, 0.95, 0.99):
        ref = PCA(n_components=thr, svd_solver="full").fit(x).n_components_
        assert dg.measures.pca_dim(torch.from_numpy(x), thr) == ref, thr
    ev = PCA(svd_solver="full").fit(x).explained_variance_
    np.testing.assert_allclose(dg.measures.pca_spectrum(torch.from_numpy(x))[:len(ev)].numpy(), ev,
                               rtol=1e-8, atol=1e-12)


def test_local_linear_dimensions_match_numpy_per_neighbourhood():
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors
    g = torch.Generator().manual_seed(8)
    t = torch.rand(400, generator=g, dtype=torch.float64) * 6.0
    x = torch.stack([t.cos(), t.sin(), 0.3 * t], 1)  # a helix: locally 1-D
    k = 8
    pr = dg.measures.local_id(x, k=k, method="pr")
    pc = dg.measures.local_id(x, k=k, method="pca", threshold=0.9)
    _, nb = NearestNeighbors(n_neighbors=k).fit(x.numpy()).kneighbors()
    for i in (0, 17, 123, 399):
        z = x.numpy()[np.r_[i, nb[i]]]
        lam = np.linalg.eigvalsh(np.cov(z, rowvar=False))
        assert float(pr[i]) == pytest.approx(lam.sum() ** 2 / (lam ** 2).sum(), rel=1e-9)
        assert float(pc[i]) == PCA(n_components=0.9, svd_solver="full").fit(z).n_components_
    assert float(pc.median()) == 1.0 and dg.measures.pca_dim(x, 0.9) >= 2  # local < global on a curve


# ------------------------------------------------------------------------ robustness
def test_subsample_id_is_mean_std_of_seeded_subsamples():
    x = _embedded_cube(600, 3, 12, seed=9)
    mean, std, vals = dg.measures.subsample_id(x, "twonn", fraction=0.8, repeats=4, seed=5)
    ref = []
    for r in range(4):
        gen = torch.Generator().manual_seed(5 + r)
        idx = torch.randperm(600, generator=gen)[:480].sort().values
        ref.append(dg.measures.twonn(x[idx]))
    np.testing.assert_allclose(vals.numpy(), ref, rtol=1e-12)
    assert mean == pytest.approx(np.mean(ref)) and std == pytest.approx(np.std(ref, ddof=1))
    m2, s2, _ = dg.measures.subsample_id(x, "mle_id", fraction=1.0, repeats=1, k=10)
    assert s2 == 0.0 and m2 == pytest.approx(dg.measures.mle_id(x, k=10), rel=1e-12)


def test_block_analysis_uses_disjoint_blocks():
    x = _embedded_cube(1200, 2, 10, seed=11)
    b = dg.measures.block_analysis(x, "twonn", n_blocks=(1, 3, 6), seed=2)
    assert b.block_size == [1200, 400, 200] and [len(s) for s in b.samples] == [1, 3, 6]
    assert b.mean[0] == pytest.approx(dg.measures.twonn(x), rel=1e-12)  # one block = all points
    perm = torch.randperm(1200, generator=torch.Generator().manual_seed(2))
    blocks = [dg.measures.twonn(x[perm[i * 400:(i + 1) * 400]]) for i in range(3)]
    np.testing.assert_allclose(b.samples[1], blocks, rtol=1e-12)
    assert b.std[1] == pytest.approx(np.std(blocks, ddof=1))
    assert abs(b.relative_change()) < 0.15  # TwoNN at d = 2 does not depend on N
    assert set(b.to_dict()) >= {"block_size", "mean", "std", "relative_change"}
    assert dg.measures.BlockAnalysis.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    # the estimator's options pass through; the pca_dim measure equals pca_dim
    b2 = dg.measures.block_analysis(x, "pca_dim", n_blocks=(2,), threshold=0.5)
    assert b2.samples[0] == [dg.measures.pca_dim(x[perm[:600]], 0.5),
                             dg.measures.pca_dim(x[perm[600:]], 0.5)]


# ------------------------------------------------------------------------ profiles over depth
def _features():
    g = torch.Generator().manual_seed(12)
    z = torch.rand(500, 3, generator=g, dtype=torch.float64)
    return {
        "low": z @ torch.randn(3, 40, generator=g, dtype=torch.float64),
        "high": torch.rand(500, 8, generator=g, dtype=torch.float64),
        "conv": (z @ torch.randn(3, 32, generator=g, dtype=torch.float64)).reshape(500, 2, 4, 4),
    }


def test_every_estimator_is_a_registered_label_free_measure():
    assert set(dg.measures.ESTIMATORS) <= set(dg.measures.available("layer"))
    for name in dg.measures.ESTIMATORS:
        m = dg.measures.get(name)
        assert not m.graph and not m.labels and m.metrics == (name,)


def test_id_curve_matches_the_estimators_on_the_same_subsamples():
    feats = _features()
    est = ("twonn", "mle_id", "participation_ratio", "pca_dim", "local_pca_dim")
    p = dg.measures.id_curve(feats, est, repeats=2, fraction=0.8, seed=1,
                             measure_options={"mle_id": {"k": 10}, "local_pca_dim": {"k": 10}},
                             progress=False)
    assert isinstance(p, dg.DepthProfile) and p.metrics == list(est)
    assert p.layers == ["low", "high", "conv"]
    assert tuple(p.samples.shape) == (2, 3, 5) and p.meta["dims"] == [40, 8, 32]
    for li, name in enumerate(p.layers):
        x = feats[name].flatten(1)
        for r in range(2):
            idx = torch.randperm(500, generator=torch.Generator().manual_seed(1 + r))[:400]
            xs = x[idx.sort().values]
            s = p.samples[r, li]
            assert float(s[0]) == pytest.approx(dg.measures.twonn(xs), rel=1e-12)
            assert float(s[1]) == pytest.approx(dg.measures.mle_id(xs, k=10), rel=1e-12)
            assert float(s[2]) == pytest.approx(dg.measures.participation_ratio(xs))
            assert float(s[3]) == dg.measures.pca_dim(xs)
            loc = float(dg.measures.local_id(xs, k=10, method="pca").mean())
            assert float(s[4]) == pytest.approx(loc)
    c = p["twonn"]
    assert round(c.layer("low")["twonn"]) == 3 and c.layer("high")["twonn"] > 6  # own dimension


def test_id_curve_is_depth_profile_bitwise_and_ignores_labels():
    raw = _features()
    feats = dg.LayerFeatures({k: v.float() for k, v in raw.items()}, y=torch.arange(500) % 5)
    est = ["twonn", "twonn_mle", "participation_ratio_corrected", "local_participation_ratio"]
    p = dg.measures.id_curve(feats, est, repeats=3, fraction=0.9, seed=4, progress=False)
    # the runner with every sample in one class: a plain seeded subsample of 450 points
    ref = dg.depth_profile(feats, est, y=torch.zeros(500, dtype=torch.long), repeats=3,
                           n_samples=450, seed=4, progress=False)
    assert torch.equal(p.samples, ref.samples) and p.metrics == ref.metrics
    # the features' own labels play no part
    plain = dg.measures.id_curve({k: v.float() for k, v in raw.items()}, est, repeats=3,
                                 seed=4, progress=False)
    assert torch.equal(plain.samples, p.samples)
    assert p.meta["fraction"] == 0.9 and p.meta["n_samples"] == 450
    one = dg.measures.id_curve(feats, "twonn", repeats=3, seed=4, progress=False)
    assert one.metrics == ["twonn"] and torch.equal(one.samples[..., 0], p.samples[..., 0])


def test_id_curve_with_duplicate_points_stays_finite():
    g = torch.Generator().manual_seed(13)
    x = torch.rand(200, 5, generator=g, dtype=torch.float64)
    dup = torch.cat([x[:150], x[:50]])
    c = dg.measures.id_curve({"a": x, "dup": dup}, "twonn", fraction=1.0, repeats=1,
                             progress=False)
    assert dg.measures.twonn(x, return_details=True).dropped["duplicates"] == 0
    est = dg.measures.twonn(dup, return_details=True)
    assert est.dropped["duplicates"] == 100
    assert float(c.samples[0, 1, 0]) == est.dimension
    assert torch.isfinite(c.values).all()


# ------------------------------------------------------------------------ phases, logging, figure
def _profile(layers, values, name="twonn"):
    return dg.DepthProfile(list(layers), name, torch.tensor(values))


def test_id_phases_shapes():
    p = dg.measures.id_phases(_profile("abcdef", [10.0, 20, 40, 35, 15, 12]))
    assert (p.shape, p.peak_layer, p.start_index, p.end_index) == ("hunchback", "c", 0, 5)
    assert p.expansion == ["a", "b", "c"] and p.compression == list("cdef")
    assert p.rise == pytest.approx(30.0) and p.fall == pytest.approx(28.0)
    assert dg.measures.id_phases(_profile("abc", [1.0, 2, 3])).shape == "rising"
    assert dg.measures.id_phases(_profile("abc", [3.0, 2, 1])).shape == "falling"
    assert dg.measures.id_phases(_profile("abc", [10.0, 10.5, 10.2])).shape == "flat"
    # a bump within the noise of the repeats is not a phase
    noisy = _profile("abc", [[8.0, 14, 8], [12, 12, 12]])
    assert dg.measures.id_phases(noisy).shape == "flat"
    assert dg.measures.id_phases(noisy, n_sigma=0).shape == "hunchback"
    assert "hunchback" in p.summary() and p.to_dict()["peak_index"] == 2
    assert p.estimator == "twonn" and p.profile.values.tolist() == [10.0, 20, 40, 35, 15, 12]
    d = json.loads(json.dumps(p.to_dict()))
    assert dg.measures.IDPhases.from_dict(d).to_dict() == p.to_dict()


def test_id_phases_reads_one_metric_of_a_profile():
    two = dg.DepthProfile(list("abc"), ["modularity", "twonn"],
                          torch.tensor([[0.1, 5.0], [0.5, 9.0], [0.9, 2.0]]))
    p = dg.measures.id_phases(two, "twonn")
    assert p.shape == "hunchback" and p.estimator == "twonn" and p.profile.metrics == ["twonn"]
    assert dg.measures.id_phases(two, metric="modularity").shape == "rising"
    with pytest.raises(ValueError, match="metric="):
        dg.measures.id_phases(two)
    with pytest.raises(ValueError, match="metric='nc1'"):
        dg.measures.id_phases(two, "nc1")
    with pytest.raises(ValueError, match="non-finite"):
        dg.measures.id_phases(_profile("ab", [1.0, float("nan")]))


def test_log_id_phases_writes_the_convention_tags(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    ident = _profile("abcd", [5.0, 9, 7, 3])
    mod = _profile("abcd", [0.1, 0.2, 0.5, 0.8], "modularity")
    p = dg.measures.id_phases(ident)
    with SummaryWriter(str(tmp_path)) as w:
        dg.log(w, p, profiles=mod)
    acc = EventAccumulator(str(tmp_path)).Reload()
    tags = acc.Tags()["scalars"]
    assert {"dyngraph/twonn", "dyngraph/modularity",
            "dyngraph/id_phases/peak_index"} <= set(tags)
    assert [e.value for e in acc.Scalars("dyngraph/twonn")] == [5.0, 9.0, 7.0, 3.0]
    assert [e.step for e in acc.Scalars("dyngraph/twonn")] == [0, 1, 2, 3]
    assert acc.Scalars("dyngraph/id_phases/peak_index")[0].value == p.peak_index == 1
    assert "dyngraph/figure" in acc.Tags()["images"]
    assert "dyngraph/layers/text_summary" in acc.Tags()["tensors"]


def test_log_block_analysis_writes_tags(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    b = dg.measures.block_analysis(_embedded_cube(600, 2, 6, seed=3), n_blocks=(1, 2, 4))
    with SummaryWriter(str(tmp_path)) as w:
        dg.log(w, b, prefix="run")
    acc = EventAccumulator(str(tmp_path)).Reload()
    assert sorted((e.step, e.value) for e in acc.Scalars("run/twonn")) == \
        [(s, pytest.approx(m)) for s, m in zip(b.block_size[::-1], b.mean[::-1])]
    assert "run/twonn_std" in acc.Tags()["scalars"] and "run/figure" in acc.Tags()["images"]
    assert "run/blocks/text_summary" in acc.Tags()["tensors"]


def test_plot_id_phases_beside_other_profiles(tmp_path):
    from matplotlib.figure import Figure
    layers = list("abcde")
    other = dg.DepthProfile(layers, ["modularity", "nc1"], torch.rand(5, 2))
    ident = _profile(layers, [[3.0, 8, 9, 4, 2], [3.2, 7, 9.5, 4, 2]])
    out = tmp_path / "fig.png"
    fig = dg.plot(dg.measures.id_phases(ident), path=out, profiles=other)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 and out.stat().st_size > 1000
    assert [a.get_ylabel() for a in fig.axes] == ["modularity", "nc1", "twonn"]
    phases = dg.measures.id_phases(ident)
    assert len(dg.plot(phases).axes) == 1
    with pytest.raises(TypeError, match=r"profiles\[1\]"):
        dg.plot(phases, profiles=[ident, "nc1"])
    with pytest.raises(ValueError, match="labels"):
        dg.plot(phases, labels=["a", "b"])


def test_plot_block_analysis(tmp_path):
    from matplotlib.figure import Figure
    x = _embedded_cube(600, 2, 6, seed=3)
    b = dg.measures.block_analysis(x, "twonn", n_blocks=(1, 2, 4))
    out = tmp_path / "blocks.png"
    fig = dg.plot(b, path=out)
    assert isinstance(fig, Figure) and out.stat().st_size > 1000
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_ylabel() == "ID (twonn)"
    m = dg.measures.block_analysis(x, "mle_id", n_blocks=(1, 2, 4), k=10)
    both = dg.plot([b, m])
    assert [t.get_text() for t in both.axes[0].get_legend().get_texts()] == ["twonn", "mle_id"]


# ------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_naming_the_argument():
    x = _embedded_cube(50, 2, 5)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        dg.measures.twonn(x.numpy())
    with pytest.raises(TypeError, match="floating-point"):
        dg.measures.mle_id(torch.ones(10, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        dg.measures.participation_ratio(
            torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="discard_fraction"):
        dg.measures.twonn(x, discard_fraction=1.0)
    with pytest.raises(ValueError, match="method"):
        dg.measures.twonn(x, method="fit")
    with pytest.raises(ValueError, match="k must be smaller"):
        dg.measures.mle_id(x, k=50)
    with pytest.raises(ValueError, match="k must be >= 2"):
        dg.measures.mle_id(x, k=1)
    with pytest.raises(ValueError, match="threshold"):
        dg.measures.pca_dim(x, threshold=1.5)
    with pytest.raises(ValueError, match="identical"):
        dg.measures.participation_ratio(torch.ones(5, 3))
    with pytest.raises(ValueError, match="N >= 4"):
        dg.measures.participation_ratio(x[:3], bias_correction=True)
    with pytest.raises(ValueError, match="estimator"):
        dg.measures.id_curve({"a": x}, "tw0nn", repeats=1, fraction=1.0, progress=False)
    with pytest.raises(ValueError, match="repeats=3 needs fraction < 1"):
        dg.measures.id_curve({"a": x}, "twonn", repeats=3, fraction=1.0, progress=False)
    with pytest.raises(ValueError, match="same number of samples"):
        dg.measures.id_curve({"a": x, "b": x[:10]}, progress=False)
    with pytest.raises(TypeError, match=r"features\['a'\] must be a Tensor"):
        dg.measures.id_curve({"a": [1.0]}, progress=False)
    with pytest.raises(TypeError, match="unknown estimator settings"):
        dg.measures.subsample_id(x, "twonn", kk=3)
    with pytest.raises(ValueError, match="estimator"):
        dg.measures.subsample_id(x, "mle")
    with pytest.raises(ValueError, match="n_blocks=40"):
        dg.measures.block_analysis(x, n_blocks=(40,))
    with pytest.raises(TypeError, match="dg.DepthProfile"):
        dg.measures.id_phases([1.0, 2.0])
    with pytest.raises(ValueError, match="layer 'flat'.*identical"):  # names the layer
        dg.measures.id_curve({"flat": torch.ones(20, 3)}, "participation_ratio", repeats=1,
                             fraction=1.0, progress=False)
    with pytest.raises(TypeError, match="one IDPhases at a time"):
        dg.plot([dg.measures.id_phases(_profile("ab", [1.0, 2.0]))] * 2)


def test_float32_input_and_high_rank_tensors():
    x = _embedded_cube(600, 3, 16, seed=14)
    a = dg.measures.twonn(x)
    b = dg.measures.twonn(x.float().reshape(600, 4, 4))  # flattened, float32 points
    assert b == pytest.approx(a, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = _embedded_cube(800, 4, 30, seed=15)
    xc = x.cuda()
    m = dg.measures
    assert m.twonn(xc) == pytest.approx(m.twonn(x), rel=1e-9)
    assert m.mle_id(xc) == pytest.approx(m.mle_id(x), rel=1e-9)
    assert m.participation_ratio(xc, True) == pytest.approx(m.participation_ratio(x, True),
                                                            rel=1e-9)
    assert m.pca_dim(xc) == m.pca_dim(x)
    assert torch.allclose(m.local_id(xc, method="pr").cpu(), m.local_id(x, method="pr"))
    c = m.id_curve({"a": xc}, ("twonn", "local_participation_ratio"), repeats=2,
                   progress=False)
    assert c["twonn"].values.device.type == "cpu"


def test_untrained_cnn_curve_smoke():
    train, test = dg.zoo.example_loaders("digits")
    torch.manual_seed(0)
    model = dg.zoo.DigitsCNN()
    feats = dg.extract_features(model, test, per_class=20, progress=False)
    p = dg.measures.id_curve(feats, ("twonn", "participation_ratio"), repeats=2, progress=False)
    assert len(p) == len(feats) == 6
    assert torch.isfinite(p["twonn"].values).all()
    assert (p["participation_ratio"].values >= 1).all()


def test_estimator_lists_are_checked():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="twice"):
        dg.measures.id_curve({"a": x}, ["twonn", "twonn"], repeats=1, fraction=1.0,
                             progress=False)
    with pytest.raises(ValueError, match="at least one"):
        dg.measures.id_curve({"a": x}, [], repeats=1, fraction=1.0, progress=False)


def test_id_curve_shares_one_neighbour_search_per_layer(monkeypatch):
    from dyngraph.measures import _dimension
    g = torch.Generator().manual_seed(0)
    feats = {"a": torch.randn(300, 10, generator=g),
             "b": torch.randint(0, 6, (300, 6), generator=g).float()}   # many exact ties
    kw = dict(repeats=2, fraction=0.8, seed=1, progress=False)
    alone = {e: dg.measures.id_curve(feats, e, **kw) for e in ("twonn", "mle_id", "twonn_mle")}
    calls = []
    real = _dimension.neighbor_distances
    monkeypatch.setattr(_dimension, "neighbor_distances",
                        lambda x, k, **o: calls.append(k) or real(x, k, **o))
    both = dg.measures.id_curve(feats, ["twonn", "mle_id", "twonn_mle"], **kw)
    assert calls == [20] * 4                      # 2 repeats x 2 layers, one search each
    for e, p in alone.items():
        assert torch.equal(both[e].samples, p[e].samples)
    calls.clear()
    dg.measures.id_curve(feats, ["twonn"], measure_options=None, **kw)
    assert calls == [2] * 4
