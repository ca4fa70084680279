"""Intrinsic dimension: estimators against skdim / numpy / sklearn, robustness, curves, phases."""
import itertools
import json
import math
import warnings

import numpy as np
import pytest
import torch

import dyngraph as dg
from dyngraph.measures._dimension import (
    IDEstimate,
    block_analysis,
    id_curve,
    id_curves,
    id_phases,
    local_id,
    log_id_phases,
    mle_id,
    neighbor_distances,
    participation_ratio,
    pca_dim,
    pca_spectrum,
    plot_depth_profiles,
    subsample_id,
    twonn,
)

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
    d, idx = neighbor_distances(x, 6)
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
    d, idx, stats = neighbor_distances(x, 3, return_stats=True)
    assert stats["search"] == "float32" and stats["refined_rows"] >= 100
    assert stats["brute_rows"] > 0  # even the float64 bound cannot certify the tight cluster
    full = cdist(x.numpy(), x.numpy())
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(d.numpy(), np.sort(full, axis=1)[:, :3], rtol=1e-13)
    d64, _ = neighbor_distances(x, 3, search="float64")
    np.testing.assert_allclose(d64.numpy(), np.sort(full, axis=1)[:, :3], rtol=1e-10)


# ------------------------------------------------------------------------ TwoNN
@pytest.mark.parametrize("method,discard", [("linear", 0.1), ("linear", 0.25), ("mle", 0.1),
                                            ("mle", 0.0)])
def test_twonn_matches_skdim(method, discard):
    skdim = _skdim()
    for name, x in _datasets().items():
        ref = skdim.id.TwoNN(discard_fraction=discard, method=method).fit(x).dimension_
        ours = twonn(torch.from_numpy(x), discard_fraction=discard, method=method)
        assert abs(ours - ref) < 1e-6, (name, ours, ref)


def test_twonn_mle_form_is_n_minus_1_over_sum_log_mu():
    x = _embedded_cube(500, 3, 20, seed=2)
    d, _ = neighbor_distances(x, 2)
    mu = (d[:, 1] / d[:, 0]).numpy()
    expected = (len(mu) - 1) / np.log(mu).sum()
    assert twonn(x, discard_fraction=0.0, method="mle") == pytest.approx(expected, rel=1e-12)


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
    est = twonn(x, return_details=True)
    assert isinstance(est, IDEstimate) and math.isfinite(est.dimension)
    assert est.dropped["duplicates"] == 2 * dup_rows.numel()
    ref, n_zero, _ = _ansuini_reference(x.numpy())
    assert n_zero == est.dropped["duplicates"]
    assert est.dimension == pytest.approx(ref, abs=1e-9)
    # a lattice has exact ties r1 = r2: dropped, counted, as Ansuini does
    grid = torch.tensor(list(itertools.product(range(12), range(12))), dtype=torch.float64)
    jitter = torch.cat([grid, torch.rand(100, 2, generator=g, dtype=torch.float64) * 11])
    est = twonn(jitter, return_details=True)
    ref, _, n_ties = _ansuini_reference(jitter.numpy())
    assert est.dropped["ties"] == n_ties > 10
    assert est.dimension == pytest.approx(ref, abs=1e-9) and math.isfinite(est.dimension)


def test_twonn_all_duplicates_is_an_error_not_nan():
    x = torch.ones(50, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="duplicates"):
        twonn(x)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5])
def test_twonn_recovers_known_dimension(d):
    x = _embedded_cube(4000, d, 100, seed=10 + d)
    assert abs(twonn(x) - d) <= 0.1 * d


def test_twonn_underestimates_large_dimension():
    x = _embedded_cube(2000, 30, 100, seed=5)
    assert twonn(x) < 0.9 * 30  # the known finite-N underestimate, documented


# ------------------------------------------------------------------------ MLE
@pytest.mark.parametrize("k,unbiased,comb", [(20, False, "mle"), (5, False, "mle"),
                                             (10, True, "mle"), (12, False, "mean"),
                                             (12, False, "median")])
def test_mle_matches_skdim(k, unbiased, comb):
    skdim = _skdim()
    for name, x in _datasets().items():
        ref = skdim.id.MLE(unbiased=unbiased).fit(x, n_neighbors=k, comb=comb).dimension_
        ours = mle_id(torch.from_numpy(x), k=k, unbiased=unbiased, comb=comb)
        assert abs(ours - ref) < 1e-6, (name, ours, ref)


def test_local_mle_matches_skdim_pointwise():
    skdim = _skdim()
    x = _datasets()["hyperBall"]
    ref = skdim.id.MLE().fit(x, n_neighbors=15).dimension_pw_
    ours = local_id(torch.from_numpy(x), k=15, method="mle")
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9)


def test_mle_duplicates_finite_and_counted():
    base = _embedded_cube(300, 3, 10, seed=6)
    x = torch.cat([base, base[:25]])
    est = mle_id(x, k=10, return_details=True)
    assert math.isfinite(est.dimension) and est.dropped["duplicates"] == 50
    assert est.n_used == 300 - 25 and est.fit["local"].numel() == 275
    with pytest.warns(RuntimeWarning, match="50 of 325"):
        loc = local_id(x, k=10)
    assert int(loc.isnan().sum()) == 50


# ------------------------------------------------------------------------ participation ratio, PCA
@pytest.mark.parametrize("n,d", [(300, 20), (30, 200)])  # covariance side and Gram side
def test_participation_ratio_matches_numpy_eigenvalues(n, d):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d)) * np.linspace(3, 0.1, d) + 2.0
    lam = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    assert participation_ratio(torch.from_numpy(x)) == pytest.approx(
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
    ours = participation_ratio(torch.from_numpy(x), bias_correction=True)
    assert ours == pytest.approx(tr2 / tr_sq, rel=1e-9)
    # invariant to a shift of the data
    assert participation_ratio(torch.from_numpy(x + 100.0), bias_correction=True) == \
        pytest.approx(ours, rel=1e-7)


def test_bias_corrected_pr_removes_finite_sample_bias():
    g = torch.Generator().manual_seed(0)
    lam = 1.0 / torch.arange(1, 201, dtype=torch.float64)
    true = float(lam.sum() ** 2 / (lam ** 2).sum())
    plain, corrected = [], []
    for _ in range(30):
        x = torch.randn(50, 200, generator=g, dtype=torch.float64) * lam.sqrt()
        plain.append(participation_ratio(x))
        corrected.append(participation_ratio(x, bias_correction=True))
    assert np.mean(plain) < 0.8 * true  # the plain estimate is biased low
    assert abs(np.mean(corrected) - true) < 0.15 * true


@pytest.mark.parametrize("n,d", [(400, 12), (25, 60)])
def test_pca_dim_matches_sklearn(n, d):
    from sklearn.decomposition import PCA
    rng = np.random.default_rng(d)
    x = rng.standard_normal((n, d)) * np.geomspace(5, 0.05, d)
    for thr in (0.3, 0.5, 0.8, 0.9, 0.95, 0.99):
        ref = PCA(n_components=thr, svd_solver="full").fit(x).n_components_
        assert pca_dim(torch.from_numpy(x), thr) == ref, thr
    ev = PCA(svd_solver="full").fit(x).explained_variance_
    np.testing.assert_allclose(pca_spectrum(torch.from_numpy(x))[:len(ev)].numpy(), ev,
                               rtol=1e-8, atol=1e-12)


def test_local_linear_dimensions_match_numpy_per_neighbourhood():
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors
    g = torch.Generator().manual_seed(8)
    t = torch.rand(400, generator=g, dtype=torch.float64) * 6.0
    x = torch.stack([t.cos(), t.sin(), 0.3 * t], 1)  # a helix: locally 1-D
    k = 8
    pr = local_id(x, k=k, method="pr")
    pc = local_id(x, k=k, method="pca", threshold=0.9)
    _, nb = NearestNeighbors(n_neighbors=k).fit(x.numpy()).kneighbors()
    for i in (0, 17, 123, 399):
        z = x.numpy()[np.r_[i, nb[i]]]
        lam = np.linalg.eigvalsh(np.cov(z, rowvar=False))
        assert float(pr[i]) == pytest.approx(lam.sum() ** 2 / (lam ** 2).sum(), rel=1e-9)
        assert float(pc[i]) == PCA(n_components=0.9, svd_solver="full").fit(z).n_components_
    assert float(pc.median()) == 1.0 and pca_dim(x, 0.9) >= 2  # local < global on a curve


# ------------------------------------------------------------------------ robustness
def test_subsample_id_is_mean_std_of_seeded_subsamples():
    x = _embedded_cube(600, 3, 12, seed=9)
    mean, std, vals = subsample_id(x, "twonn", fraction=0.8, repeats=4, seed=5)
    ref = []
    for r in range(4):
        gen = torch.Generator().manual_seed(5 + r)
        idx = torch.randperm(600, generator=gen)[:480].sort().values
        ref.append(twonn(x[idx]))
    np.testing.assert_allclose(vals.numpy(), ref, rtol=1e-12)
    assert mean == pytest.approx(np.mean(ref)) and std == pytest.approx(np.std(ref, ddof=1))
    m2, s2, _ = subsample_id(x, "mle", fraction=1.0, repeats=1, k=10)
    assert s2 == 0.0 and m2 == pytest.approx(mle_id(x, k=10), rel=1e-12)


def test_block_analysis_uses_disjoint_blocks():
    x = _embedded_cube(1200, 2, 10, seed=11)
    b = block_analysis(x, "twonn", n_blocks=(1, 3, 6), seed=2)
    assert b.block_size == [1200, 400, 200] and [len(s) for s in b.samples] == [1, 3, 6]
    assert b.mean[0] == pytest.approx(twonn(x), rel=1e-12)  # one block = all points
    perm = torch.randperm(1200, generator=torch.Generator().manual_seed(2))
    blocks = [twonn(x[perm[i * 400:(i + 1) * 400]]) for i in range(3)]
    np.testing.assert_allclose(b.samples[1], blocks, rtol=1e-12)
    assert b.std[1] == pytest.approx(np.std(blocks, ddof=1))
    assert abs(b.relative_change()) < 0.15  # TwoNN at d = 2 does not depend on N
    assert set(b.to_dict()) >= {"block_size", "mean", "std", "relative_change"}


# ------------------------------------------------------------------------ curves
def _features():
    g = torch.Generator().manual_seed(12)
    z = torch.rand(500, 3, generator=g, dtype=torch.float64)
    return {
        "low": z @ torch.randn(3, 40, generator=g, dtype=torch.float64),
        "high": torch.rand(500, 8, generator=g, dtype=torch.float64),
        "conv": (z @ torch.randn(3, 32, generator=g, dtype=torch.float64)).reshape(500, 2, 4, 4),
    }


def test_id_curves_match_the_estimators_on_the_same_subsamples():
    feats = _features()
    curves = id_curves(feats, ("twonn", "mle", "pr", "pca", "local_pca"), repeats=2,
                       fraction=0.8, seed=1, k=10, local_k=10, progress=False)
    assert set(curves) == {"twonn", "mle", "pr", "pca", "local_pca"}
    c = curves["twonn"]
    assert c.name == "id_twonn" and c.layers == ["low", "high", "conv"]
    assert tuple(c.samples.shape) == (2, 3) and c.meta["dims"] == [40, 8, 32]
    for li, name in enumerate(c.layers):
        x = feats[name].flatten(1)
        for r in range(2):
            idx = torch.randperm(500, generator=torch.Generator().manual_seed(1 + r))[:400]
            xs = x[idx.sort().values]
            assert float(c.samples[r, li]) == pytest.approx(twonn(xs), rel=1e-12)
            assert float(curves["mle"].samples[r, li]) == pytest.approx(mle_id(xs, k=10), rel=1e-12)
            assert float(curves["pr"].samples[r, li]) == pytest.approx(participation_ratio(xs))
            assert float(curves["pca"].samples[r, li]) == pca_dim(xs)
            loc = float(local_id(xs, k=10, method="pca").mean())
            assert float(curves["local_pca"].samples[r, li]) == pytest.approx(loc)
    assert round(c["low"]) == 3 and c["high"] > 6  # each layer's own dimension


def test_id_curve_from_layer_features_and_resume(tmp_path):
    feats = dg.LayerFeatures({k: v.float() for k, v in _features().items()},
                             y=torch.arange(500) % 5)
    cp = tmp_path / "id.json"
    c1 = id_curve(feats, "twonn", repeats=2, checkpoint=cp, progress=False)
    saved = json.loads(cp.read_text())
    assert list(saved["layers"]) == ["low", "high", "conv"]
    saved["layers"]["high"]["values"]["twonn"] = [123.0, 123.0]  # a finished layer is reused
    cp.write_text(json.dumps(saved))
    c2 = id_curve(feats, "twonn", repeats=2, checkpoint=cp, progress=False)
    assert c2["high"] == 123.0 and c2["low"] == pytest.approx(c1["low"])
    c3 = id_curve(feats, "twonn", repeats=2, seed=1, checkpoint=cp, progress=False)
    assert c3["high"] != 123.0  # other settings: recomputed, not reused


def test_id_curve_records_dropped_points():
    g = torch.Generator().manual_seed(13)
    x = torch.rand(200, 5, generator=g, dtype=torch.float64)
    c = id_curve({"a": x, "dup": torch.cat([x[:150], x[:50]])}, "twonn", fraction=1.0,
                 repeats=1, progress=False)
    assert "a" not in c.meta["dropped"]
    assert c.meta["dropped"]["dup"]["twonn_duplicates"] == 100
    assert torch.isfinite(c.values).all()


# ------------------------------------------------------------------------ phases, logging, figure
def test_id_phases_shapes():
    c = dg._curve.Curve(list("abcdef"), torch.tensor([10.0, 20, 40, 35, 15, 12]))
    p = id_phases(c)
    assert (p.shape, p.peak_layer, p.start_index, p.end_index) == ("hunchback", "c", 0, 5)
    assert p.expansion == ["a", "b", "c"] and p.compression == list("cdef")
    assert p.rise == pytest.approx(30.0) and p.fall == pytest.approx(28.0)
    assert id_phases(dg._curve.Curve(list("abc"), torch.tensor([1.0, 2, 3]))).shape == "rising"
    assert id_phases(dg._curve.Curve(list("abc"), torch.tensor([3.0, 2, 1]))).shape == "falling"
    assert id_phases(dg._curve.Curve(list("abc"), torch.tensor([10.0, 10.5, 10.2]))).shape == "flat"
    # a bump within the noise of the repeats is not a phase
    noisy = dg._curve.Curve.from_samples(list("abc"), torch.tensor([[8.0, 14, 8], [12, 12, 12]]))
    assert id_phases(noisy).shape == "flat" and id_phases(noisy, n_sigma=0).shape == "hunchback"
    assert "hunchback" in p.summary() and p.to_dict()["peak_index"] == 2


def test_log_id_phases_writes_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    ident = dg._curve.Curve(list("abcd"), torch.tensor([5.0, 9, 7, 3]), name="id_twonn")
    mod = dg._curve.Curve(list("abcd"), torch.tensor([0.1, 0.2, 0.5, 0.8]), name="modularity")
    with SummaryWriter(str(tmp_path)) as w:
        p = log_id_phases(w, ident, others=[mod])
    acc = EventAccumulator(str(tmp_path)).Reload()
    tags = acc.Tags()["scalars"]
    assert {"dyngraph/id_twonn", "dyngraph/modularity",
            "dyngraph/id_phases/peak_index"} <= set(tags)
    assert [e.value for e in acc.Scalars("dyngraph/id_twonn")] == [5.0, 9.0, 7.0, 3.0]
    assert acc.Scalars("dyngraph/id_phases/peak_index")[0].value == p.peak_index == 1
    assert "dyngraph/depth_profiles" in acc.Tags()["images"]


def test_plot_depth_profiles_any_curves(tmp_path):
    layers = list("abcde")
    curves = [dg._curve.Curve(layers, torch.rand(5), name=n) for n in ("modularity", "nc1")]
    ident = dg._curve.Curve.from_samples(layers, torch.tensor([[3.0, 8, 9, 4, 2], [3.2, 7, 9.5, 4, 2]]),
                                  name="id_twonn")
    out = tmp_path / "fig.png"
    fig = plot_depth_profiles(curves + [ident], phases=id_phases(ident), path=out)
    assert len(fig.axes) == 3 and out.stat().st_size > 1000
    assert [a.get_ylabel() for a in fig.axes] == ["modularity", "nc1", "id_twonn"]
    with pytest.raises(TypeError, match=r"curves\[1\]"):
        plot_depth_profiles([ident, "nc1"])


# ------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_naming_the_argument():
    x = _embedded_cube(50, 2, 5)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        twonn(x.numpy())
    with pytest.raises(TypeError, match="floating-point"):
        mle_id(torch.ones(10, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        participation_ratio(torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="discard_fraction"):
        twonn(x, discard_fraction=1.0)
    with pytest.raises(ValueError, match="method"):
        twonn(x, method="fit")
    with pytest.raises(ValueError, match="k must be smaller"):
        mle_id(x, k=50)
    with pytest.raises(ValueError, match="k must be >= 2"):
        mle_id(x, k=1)
    with pytest.raises(ValueError, match="threshold"):
        pca_dim(x, threshold=1.5)
    with pytest.raises(ValueError, match="identical"):
        participation_ratio(torch.ones(5, 3))
    with pytest.raises(ValueError, match="N >= 4"):
        participation_ratio(x[:3], bias_correction=True)
    with pytest.raises(ValueError, match="estimator"):
        id_curve({"a": x}, "tw0nn", repeats=1, fraction=1.0, progress=False)
    with pytest.raises(ValueError, match="repeats=3 needs fraction < 1"):
        id_curve({"a": x}, "twonn", repeats=3, fraction=1.0, progress=False)
    with pytest.raises(ValueError, match="same number of samples"):
        id_curve({"a": x, "b": x[:10]}, progress=False)
    with pytest.raises(TypeError, match="unknown estimator settings"):
        subsample_id(x, "twonn", kk=3)
    with pytest.raises(ValueError, match="n_blocks=40"):
        block_analysis(x, n_blocks=(40,))
    with pytest.raises(TypeError, match="dyngraph.Curve"):
        id_phases([1.0, 2.0])
    with pytest.raises(ValueError, match="layer 'flat'"):  # failures name the layer
        id_curve({"flat": torch.ones(20, 3)}, "pr", repeats=1, fraction=1.0, progress=False)


def test_float32_input_and_high_rank_tensors():
    x = _embedded_cube(600, 3, 16, seed=14)
    a = twonn(x)
    b = twonn(x.float().reshape(600, 4, 4))  # flattened, float32 points
    assert b == pytest.approx(a, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = _embedded_cube(800, 4, 30, seed=15)
    xc = x.cuda()
    assert twonn(xc) == pytest.approx(twonn(x), rel=1e-9)
    assert mle_id(xc) == pytest.approx(mle_id(x), rel=1e-9)
    assert participation_ratio(xc, True) == pytest.approx(participation_ratio(x, True), rel=1e-9)
    assert pca_dim(xc) == pca_dim(x)
    assert torch.allclose(local_id(xc, method="pr").cpu(), local_id(x, method="pr"))
    c = id_curves({"a": xc}, ("twonn", "local_pr"), repeats=2, progress=False)
    assert c["twonn"].values.device.type == "cpu"


def test_untrained_cnn_curve_smoke():
    train, test = dg.zoo.example_loaders("digits")
    torch.manual_seed(0)
    model = dg.zoo.DigitsCNN()
    feats = dg.extract_features(model, test, per_class=20, progress=False)
    curves = id_curves(feats, ("twonn", "pr"), repeats=2, progress=False)
    assert len(curves["twonn"]) == len(feats) == 6
    assert torch.isfinite(curves["twonn"].values).all() and (curves["pr"].values >= 1).all()


def test_estimator_lists_are_checked():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="twice"):
        id_curves({"a": x}, ["twonn", "twonn"], repeats=1, fraction=1.0, progress=False)
    with pytest.raises(ValueError, match="at least one"):
        id_curves({"a": x}, [], repeats=1, fraction=1.0, progress=False)
