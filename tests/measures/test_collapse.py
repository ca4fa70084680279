"""Neural-collapse metrics against an independent numpy/scipy implementation and closed forms."""
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dyngraph as dg

scipy_linalg = pytest.importorskip("scipy.sparse.linalg")
from scipy.spatial.distance import cdist  # noqa: E402

LAYER_METRICS = dg.measures.LAYER_METRICS
CollapseCallback = dg.measures.CollapseCallback
CollapseConventions = dg.measures.CollapseConventions
CollapseHistory = dg.measures.CollapseHistory
NeuralCollapseAccumulator = dg.measures.NeuralCollapseAccumulator
class_means = dg.measures.class_means
collapse_curves = dg.measures.collapse_curves
etf_gram = dg.measures.etf_gram
minority_collapse = dg.measures.minority_collapse
neural_collapse = dg.measures.neural_collapse
neural_collapse_model = dg.measures.neural_collapse_model
neural_collapse_stream = dg.measures.neural_collapse_stream
simplex_etf = dg.measures.simplex_etf


# ----------------------------------------------------------------------------- reference
def np_collapse(X, y, W=None, b=None, *, global_mean="samples", within="samples", ddof=0,
                over_c=True, std_ddof=1, squared=True, bias=True):
    """Papyan et al.'s metrics written directly in numpy/scipy (eigsh for Σ_B, cdist for NCC)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    C = int(y.max()) + 1
    N = X.shape[0]
    n = np.array([(y == c).sum() for c in range(C)], dtype=np.float64)
    mu = np.stack([X[y == c].mean(0) for c in range(C)])
    muG = X.mean(0) if global_mean == "samples" else mu.mean(0)
    S = [(X[y == c] - mu[c]).T @ (X[y == c] - mu[c]) for c in range(C)]
    if within == "samples":
        Sw = sum(S) / (N - ddof * C)
    else:
        Sw = sum(S[c] / (n[c] - ddof) for c in range(C)) / C
    Mt = mu - muG
    Sb = Mt.T @ Mt / C
    vals, vecs = scipy_linalg.eigsh(Sb, k=C - 1)
    inv = vecs @ np.diag(1.0 / vals) @ vecs.T
    tr = np.trace(Sw @ inv)
    out = {"nc1": tr / C if over_c else tr, "nc1_trace": np.trace(Sw) / np.trace(Sb)}

    def nc2(R):
        norms = np.linalg.norm(R, axis=1)
        cos = (R / norms[:, None]) @ (R / norms[:, None]).T
        off = cos[np.triu_indices(C, 1)]
        G = R @ R.T
        T = np.eye(C) - np.ones((C, C)) / C
        return {"equinorm": norms.std(ddof=std_ddof) / norms.mean(),
                "equiangular": off.std(ddof=std_ddof),
                "maxangle": np.abs(off + 1 / (C - 1)).mean(),
                "etf": np.linalg.norm(G / np.linalg.norm(G) - T / np.linalg.norm(T))}

    for k, v in nc2(Mt).items():
        out[f"nc2_{k}"] = v
    var = np.array([((X[y == c] - mu[c]) ** 2).sum() / (n[c] - ddof) for c in range(C)])
    cd = [(var[i] + var[j]) / (2 * np.sum((mu[i] - mu[j]) ** 2))
          for i in range(C) for j in range(i + 1, C)]
    out["cdnv"] = np.mean(cd)
    ncc = cdist(X, mu).argmin(1)
    out["ncc_accuracy"] = (ncc == y).mean()
    if W is not None:
        W = np.asarray(W, dtype=np.float64)
        for k, v in nc2(W).items():
            out[f"nc2_{k}_w"] = v
        d = np.linalg.norm(W / np.linalg.norm(W) - Mt / np.linalg.norm(Mt))
        out["nc3"] = d ** 2 if squared else d
        logits = X @ W.T + (np.asarray(b) if (b is not None and bias) else 0)
        out["nc4"] = (logits.argmax(1) != ncc).mean()
    return out


def assert_close(ours, ref, rtol=1e-7, atol=1e-10):
    for k, v in ref.items():
        assert k in ours, k
        assert ours[k] == pytest.approx(float(v), rel=rtol, abs=atol), (k, ours[k], v)


def blobs(C=5, D=12, per=(40,), scale=3.0, noise=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    counts = list(per) * C if len(per) == 1 else list(per)
    y = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    centers = scale * torch.randn(C, D, generator=g)
    X = centers[y] + noise * torch.randn(len(y), D, generator=g)
    perm = torch.randperm(len(y), generator=g)
    return X[perm].to(dtype), y[perm]


def classifier_for(X, y, C, seed=0):
    """A plausible (W, b): class means plus noise, so predictions and NCC mostly agree."""
    g = torch.Generator().manual_seed(seed)
    means, _ = class_means(X, y, C)
    W = means.float() + 2.0 * torch.randn(means.shape, generator=g)
    return W, 0.3 * torch.randn(C, generator=g)


# ----------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("per", [(40,), (60, 30, 45, 12, 80)])
def test_matches_numpy_reference(per):
    X, y = blobs(per=per, scale=0.8)
    W, b = classifier_for(X, y, 5)
    ours = neural_collapse(X, y, (W, b))
    ref = np_collapse(X.numpy(), y.numpy(), W.numpy(), b.numpy())
    assert_close(ours, ref)
    assert ours["sb_rank"] == 4 and ours["n_samples"] == len(y)
    assert 0.0 < ours["nc4"] < 0.6 and 0.2 < ours["ncc_accuracy"] < 1.0


@pytest.mark.parametrize("kw,ref_kw", [
    ({"global_mean": "classes"}, {"global_mean": "classes"}),
    ({"within": "classes", "ddof": 1}, {"within": "classes", "ddof": 1}),
    ({"ddof": 1}, {"ddof": 1}),
    ({"nc1_over_classes": False, "std_ddof": 0}, {"over_c": False, "std_ddof": 0}),
    ({"nc3_squared": False, "nc4_bias": False}, {"squared": False, "bias": False}),
])
def test_conventions_match_reference(kw, ref_kw):
    X, y = blobs(per=(50, 20, 35, 70, 15), seed=3)
    W, b = classifier_for(X, y, 5, seed=1)
    ours = neural_collapse(X, y, (W, b), **kw)
    assert_close(ours, np_collapse(X.numpy(), y.numpy(), W.numpy(), b.numpy(), **ref_kw))
    # the same through a CollapseConventions object
    again = neural_collapse(X, y, (W, b), conventions=CollapseConventions(**kw))
    assert again == ours


def test_center_classifier_equals_centred_weight():
    X, y = blobs(seed=4)
    W, b = classifier_for(X, y, 5)
    W = W.double()
    a = neural_collapse(X, y, (W, b), center_classifier=True)
    c = neural_collapse(X, y, (W - W.mean(0, keepdim=True), b))
    for k in ("nc2_equinorm_w", "nc2_equiangular_w", "nc2_etf_w", "nc3"):
        assert a[k] == pytest.approx(c[k], rel=1e-12)


def test_exact_etf_means_give_zero():
    C, D = 6, 10
    M = 4.0 * simplex_etf(C, D, seed=1)
    y = torch.arange(C * 7) % C
    X = M[y]                      # zero within-class scatter, class means a simplex ETF
    r = neural_collapse(X, y, (M, torch.zeros(C)))
    assert r["nc1"] == pytest.approx(0.0, abs=1e-20)
    assert r["nc1_trace"] == pytest.approx(0.0, abs=1e-20)
    for k in ("nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc2_etf", "nc2_equinorm_w",
              "nc2_etf_w", "nc3", "nc4", "cdnv"):
        assert abs(r[k]) < 1e-12, (k, r[k])
    assert r["ncc_accuracy"] == 1.0


def test_non_etf_means_have_positive_nc2():
    y = torch.arange(40) % 4
    M = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    r = neural_collapse(M[y], y)
    assert r["nc1"] == pytest.approx(0.0, abs=1e-20)
    assert r["nc2_equinorm"] > 0.05 and r["nc2_maxangle"] > 0.05 and r["nc2_etf"] > 0.05


def test_noise_closed_form():
    """ETF means of norm r plus isotropic noise σ: NC1 → σ²(C−1)²/(C r²)."""
    C, D, r, sigma, per = 5, 16, 6.0, 0.7, 4000
    g = torch.Generator().manual_seed(0)
    y = torch.arange(C * per) % C
    X = r * simplex_etf(C, D, seed=2)[y] + sigma * torch.randn(C * per, D, generator=g,
                                                              dtype=torch.float64)
    expected = sigma ** 2 * (C - 1) ** 2 / (C * r ** 2)
    got = neural_collapse(X, y)["nc1"]
    assert got == pytest.approx(expected, rel=0.04)
    assert neural_collapse(X, y, nc1_over_classes=False)["nc1"] == pytest.approx(C * got, rel=1e-12)


def test_rotation_invariance():
    X, y = blobs(D=9, seed=5, dtype=torch.float64)
    W, b = classifier_for(X, y, 5)
    W = W.double()
    q, _ = torch.linalg.qr(torch.randn(9, 9, generator=torch.Generator().manual_seed(1),
                                       dtype=torch.float64))
    a = neural_collapse(X, y, (W, b))
    c = neural_collapse(X @ q, y, (W @ q, b))
    for k in a:
        assert c[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12), k


def test_wide_layer_subspace_equals_dense():
    """The O(C·D) class-mean-subspace NC1 equals the naive D × D computation."""
    X, y = blobs(C=8, D=700, per=(25,), noise=2.0, seed=6)  # D > N: Σ_W is rank deficient
    a = neural_collapse(X, y, method="subspace")
    b = neural_collapse(X, y, method="full")
    for k in LAYER_METRICS:
        assert a[k] == pytest.approx(b[k], rel=1e-9), k
    ref = np_collapse(X.numpy(), y.numpy())
    assert a["nc1"] == pytest.approx(ref["nc1"], rel=1e-8)
    assert a["nc1"] > 0


@pytest.mark.parametrize("within", ["samples", "classes"])
def test_subspace_equals_dense_per_class_weights(within):
    X, y = blobs(per=(30, 10, 50, 20, 40), D=40, seed=7)
    a = neural_collapse(X, y, method="subspace", within=within, ddof=1)
    b = neural_collapse(X, y, method="full", within=within, ddof=1)
    assert a["nc1"] == pytest.approx(b["nc1"], rel=1e-10)


def test_full_pinv_trap_is_avoided():
    """A full float32 pinv of Σ_B inverts rounding noise (and negative noise eigenvalues flip the
    sign): NC1 comes out at ±1e7. Inverting only the top C − 1 eigenpairs in float64 does not."""
    rng = np.random.default_rng(0)
    C, D, per = 10, 256, 10
    y = np.repeat(np.arange(C), per)
    X = (3 * rng.normal(size=(C, D))[y] + rng.normal(size=(C * per, D))).astype(np.float32)
    mu = np.stack([X[y == c].mean(0) for c in range(C)])
    Sw = sum((X[y == c] - mu[c]).T @ (X[y == c] - mu[c]) for c in range(C)) / len(y)
    Mt = mu - X.mean(0)
    naive = np.trace(Sw @ np.linalg.pinv(Mt.T @ Mt / C, rcond=1e-15)) / C
    ref = np_collapse(X, y)["nc1"]
    ours = neural_collapse(torch.from_numpy(X), torch.from_numpy(y))["nc1"]
    assert ours == pytest.approx(ref, rel=1e-6) and 0 < ours < 0.01
    assert abs(naive) > 1e3 * ref


def test_low_rank_between_class_scatter():
    """D < C − 1: only D eigenpairs exist; both paths agree and report the rank used."""
    X, y = blobs(C=6, D=3, seed=8)
    a = neural_collapse(X, y)
    b = neural_collapse(X, y, method="full")
    assert a["sb_rank"] == b["sb_rank"] == 3
    assert a["nc1"] == pytest.approx(b["nc1"], rel=1e-10)
    assert neural_collapse(X, y, sb_rank=2)["sb_rank"] == 2


# ----------------------------------------------------------------------------- streaming
def _batches(X, y, seed=0):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    X, y = X[perm], y[perm]
    cuts = sorted(set(torch.randint(1, len(y), (12,), generator=g).tolist()))
    edges = [0] + cuts + [len(y)]
    return [(X[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]


@pytest.mark.parametrize("method", ["full", "subspace"])
@pytest.mark.parametrize("within", ["samples", "classes"])
def test_streamed_equals_in_memory(method, within):
    X, y = blobs(per=(60, 25, 40, 90, 10), D=20, seed=9)
    X = X + 100.0   # a large offset stresses the merge's numerical stability
    W, b = classifier_for(X, y, 5)
    batches = _batches(X, y)
    ours = neural_collapse_stream(batches, 5, (W, b), method=method, within=within)
    ref = neural_collapse(X, y, (W, b), within=within)
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k


def test_accumulator_merge_and_one_pass_full():
    X, y = blobs(D=10, seed=10)
    parts = _batches(X, y, seed=1)
    a, b = NeuralCollapseAccumulator(5, method="full"), NeuralCollapseAccumulator(5, method="full")
    for i, (xb, yb) in enumerate(parts):
        (a if i % 2 else b).update(xb, yb)
    assert not a.needs_second_pass
    merged = a.merge(b).compute()          # one pass suffices for the dense path
    ref = neural_collapse(X, y)
    for k in ("nc1", "nc1_trace", "nc2_etf", "cdnv"):
        assert merged[k] == pytest.approx(ref[k], rel=1e-10), k
    assert "ncc_accuracy" not in merged    # NCC needs the final means: a second pass
    assert a.nbytes >= 10 * 10 * 8


def test_accumulator_memory_is_O_CD_for_subspace():
    acc = NeuralCollapseAccumulator(4, method="auto", max_dense_dim=64)
    X, y = blobs(C=4, D=500, seed=11)
    acc.update(X, y)
    assert acc.method == "subspace" and acc.needs_second_pass
    acc.next_pass()
    acc.update(X, y)
    assert acc.nbytes < 4 * 500 * 8 * 2 + 500 * 4 * 8 + 1000
    assert acc.compute()["nc1"] == pytest.approx(neural_collapse(X, y)["nc1"], rel=1e-10)


def test_streaming_errors():
    X, y = blobs(D=6, seed=12)
    acc = NeuralCollapseAccumulator(5, method="subspace")
    with pytest.raises(ValueError, match="no data"):
        acc.compute()
    acc.update(X, y)
    with pytest.raises(ValueError, match="second pass"):
        acc.compute()
    with pytest.raises(ValueError, match="D=6"):
        acc.update(torch.randn(4, 7), torch.zeros(4, dtype=torch.long))
    acc.next_pass()
    acc.update(X[:50], y[:50])
    with pytest.raises(ValueError, match="other samples"):
        acc.compute()
    with pytest.raises(ValueError, match="already"):
        acc.next_pass()
    with pytest.raises(ValueError, match="num_classes"):
        NeuralCollapseAccumulator(3).update(X, y)
    with pytest.raises(TypeError, match="one-shot"):
        neural_collapse_stream(iter([(X, y)]), 5, method="subspace")
    with pytest.raises(ValueError, match="method"):
        NeuralCollapseAccumulator(5, method="svd")


# ----------------------------------------------------------------------------- validation
def test_bad_inputs():
    X, y = blobs(D=4)
    with pytest.raises(TypeError, match="features"):
        neural_collapse(X.numpy(), y)
    with pytest.raises(ValueError, match="NaN"):
        neural_collapse(torch.full((10, 3), float("nan")), torch.arange(10) % 2)
    with pytest.raises(ValueError, match="labels"):
        neural_collapse(X, y[:-1])
    with pytest.raises(TypeError, match="labels"):
        neural_collapse(X, y.float())
    with pytest.raises(ValueError, match="labels is required"):
        neural_collapse(X)
    with pytest.raises(ValueError, match=r"classes \[2\]"):   # C given: every class needs one
        neural_collapse(X[y != 2], y[y != 2], num_classes=5)
    with pytest.raises(ValueError, match="classifier weight has 5 rows but there are 4 classes"):
        neural_collapse(X[y != 2], y[y != 2], torch.randn(5, 4))
    with pytest.raises(ValueError, match="at least 2 classes"):
        neural_collapse(X, torch.zeros(len(y), dtype=torch.long))
    with pytest.raises(ValueError, match="classifier weight"):
        neural_collapse(X, y, torch.randn(5, 3))
    with pytest.raises(ValueError, match="bias"):
        neural_collapse(X, y, (torch.randn(5, 4), torch.randn(3)))
    with pytest.raises(TypeError, match="classifier"):
        neural_collapse(X, y, "fc")
    with pytest.raises(TypeError, match="unknown keyword"):
        neural_collapse(X, y, global_means="samples")
    with pytest.raises(ValueError, match="global_mean"):
        neural_collapse(X, y, global_mean="weighted")
    with pytest.raises(ValueError, match="method"):
        neural_collapse(X, y, method="svd")
    with pytest.raises(ValueError, match="coincide"):
        neural_collapse(torch.ones(10, 3), torch.arange(10) % 2)
    with pytest.raises(ValueError, match="ddof"):
        neural_collapse(X[:10], torch.arange(10) % 5, within="classes", ddof=2)


# ----------------------------------------------------------------------------- layers, curves
def _layered(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(240) % 4
    etf = simplex_etf(4, 8, seed=0).float()
    feats = {"early": torch.randn(240, 8, generator=g) + 0.5 * etf[y],
             "middle": torch.randn(240, 8, generator=g) + 2.0 * etf[y],
             "late": 0.3 * torch.randn(240, 8, generator=g) + 5.0 * etf[y]}
    return feats, y


def test_layer_features_and_curves(tmp_path):
    feats, y = _layered()
    lf = dg.LayerFeatures(feats, y)
    per_layer = neural_collapse(lf)
    assert list(per_layer) == ["early", "middle", "late"]
    for name in feats:
        assert per_layer[name]["nc1"] == pytest.approx(neural_collapse(feats[name], y)["nc1"])
    assert neural_collapse(lf, layer="middle") == per_layer["middle"]
    curves = collapse_curves(lf)
    assert isinstance(curves, dg.DepthProfile) and set(curves.metrics) == set(LAYER_METRICS)
    nc1 = curves["nc1"]
    assert nc1.name == "nc1" and nc1.layers == list(feats)
    assert nc1.values[0] > nc1.values[1] > nc1.values[2]          # collapse grows with depth
    rep = collapse_curves(lf, per_class=40, repeats=3, metrics=["nc1", "cdnv"])
    assert tuple(rep["nc1"].samples.shape) == (3, 3, 1) and bool((rep["nc1"].errors > 0).all())
    # a DynamicGraph that kept its features gives the same curve
    seq = dg.DynamicGraph.from_features(lf, k=3, keep_x=True)
    assert torch.allclose(collapse_curves(seq)["nc1"].values, nc1.values)
    # logged to TensorBoard beside modularity
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(tmp_path)) as w:
        dg.log(w, dg.depth_profile(lf, ["modularity"], progress=False).join(curves),
               figure=False)
    assert any(p.name.startswith("events") for p in tmp_path.iterdir())


def test_curves_with_classifier_and_errors():
    feats, y = _layered()
    W = 5.0 * simplex_etf(4, 8, seed=0).float()
    res = neural_collapse(feats, y, W)
    assert "nc3" in res["late"] and "nc3" not in res["early"]
    assert res["late"]["nc3"] < 0.01
    with pytest.raises(ValueError, match="not available at every layer"):
        collapse_curves(feats, y, metrics=["nc3"])
    with pytest.raises(ValueError, match="not available at every layer"):
        collapse_curves(res, metrics=["nc3"])
    with pytest.raises(ValueError, match="repeats"):
        collapse_curves(feats, y, repeats=2)
    seq = dg.DynamicGraph.from_features(feats, y=y, k=3)
    with pytest.raises(ValueError, match="keep_x"):
        collapse_curves(seq)
    with pytest.raises(TypeError, match="features"):
        collapse_curves([1, 2, 3])
    with pytest.raises(ValueError, match="needs the classifier"):
        dg.depth_profile(feats, ["nc3"], y=y, progress=False)


def test_depth_profile_equals_neural_collapse_bitwise():
    """The registered NC measures in the one runner give neural_collapse's floats exactly."""
    feats, y = _layered()
    lf = dg.LayerFeatures(feats, y)
    W = 5.0 * simplex_etf(4, 8, seed=0).float()
    names = list(dg.measures.METRICS)
    p = dg.depth_profile(lf, names, measure_options={m: {"classifier": W} for m in names},
                         progress=False)
    for li, layer in enumerate(feats):
        ref = neural_collapse(feats[layer], y, W)
        assert p.samples[0, li].tolist() == [ref[m] for m in names], layer
    # collapse_curves: the same floats as neural_collapse per layer, with its conventions
    kw = {"within": "classes", "ddof": 1, "method": "full"}
    prof = collapse_curves(lf, **kw)
    ref = neural_collapse(lf, **kw)
    for li, layer in enumerate(feats):
        assert prof.samples[0, li].tolist() == [ref[layer][m] for m in prof.metrics]
    # each repeat is neural_collapse of the class-balanced sample of seed + r
    rep = collapse_curves(lf, per_class=40, repeats=2, seed=3)
    for r in range(2):
        sub = lf.subset(dg.capture.balanced_indices(y, 40, None, 3 + r))
        ref = neural_collapse(sub)
        for li, layer in enumerate(feats):
            assert rep.samples[r, li].tolist() == [ref[layer][m] for m in rep.metrics]
    # precomputed results (as neural_collapse_model returns them) become the same profile
    pre = collapse_curves(neural_collapse(lf))
    assert torch.equal(pre.samples, collapse_curves(lf).samples)
    assert pre.meta == {"source": "precomputed"}


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                         nn.Linear(12, 3))


def test_model_streaming_matches_extracted_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(150) % 3
    x = torch.randn(150, 6, generator=g) + torch.eye(6)[y] * 2
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    model = _mlp()
    res = neural_collapse_model(model, loader, progress=False, method="subspace")
    assert list(res) == ["0", "2", "4:input", "4"]
    assert model.training  # mode restored
    feats = dg.extract_features(model, loader, layers=list(res), progress=False)
    ref = neural_collapse(feats, classifier=model[4], classifier_layer="4:input")
    for layer in res:
        for k, v in ref[layer].items():
            assert res[layer][k] == pytest.approx(v, rel=1e-6, abs=1e-9), (layer, k)
    dense = neural_collapse_model(model, loader, classifier=None, progress=False, method="full")
    assert "nc4" not in dense["2"] and dense["2"]["nc1"] == pytest.approx(res["2"]["nc1"], 1e-6)
    with pytest.raises(ValueError, match="nn.Linear"):
        neural_collapse_model(model, loader, classifier="1", progress=False)


def test_dead_layer_is_reported_not_fatal():
    model = _mlp()
    with torch.no_grad():                     # layer "1" (a ReLU) outputs zeros: a dead layer
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)
    y = torch.arange(60) % 3
    loader = DataLoader(TensorDataset(torch.randn(60, 6), y), batch_size=20)
    with pytest.raises(ValueError, match="layer '1'"):
        neural_collapse_model(model, loader, layers=["1", "3"], progress=False)
    cb = CollapseCallback(loader, layers=["1", "3", "4:input"])
    with pytest.warns(UserWarning, match="undefined"):
        res = cb(model, epoch=0)
    errors = res.meta["errors"]
    assert "1" in errors and "coincide" in errors["1"]
    assert "3" in errors                      # its input is constant too
    assert bool(res.samples[0, :2].isnan().all()) and not bool(res.samples[0, 2].isnan().any())
    with pytest.raises(ValueError, match="not recorded"):
        cb.history.series("nc1", "1")


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_and_mode_restored():
    """The passes run in eval mode with one hook per layer; afterwards, also after an error in
    either pass, no hook is left and the training mode is back."""
    model = _mlp()
    model.train()
    y = torch.arange(90) % 3
    loader = DataLoader(TensorDataset(torch.randn(90, 6), y), batch_size=30)
    seen = []

    def spy(batch):
        seen.append((model.training, _hooks(model)))
        return batch[0], batch[1]

    res = neural_collapse_model(model, loader, batch_fn=spy, progress=False, method="subspace")
    assert seen == [(False, len(res) + 1)] * 6    # two passes of three batches; +1: the taps' start-of-forward hook
    assert model.training and _hooks(model) == 0

    def failing(n):
        calls = []

        def fn(batch):
            calls.append(1)
            if len(calls) == n:
                raise RuntimeError("batch failed")
            return batch[0], batch[1]
        return fn

    for n in (2, 5):                           # in the first pass, in the second pass
        with pytest.raises(RuntimeError, match="batch failed"):
            neural_collapse_model(model, loader, batch_fn=failing(n), progress=False)
        assert model.training and _hooks(model) == 0
        cb = CollapseCallback(loader, batch_fn=failing(n))
        with pytest.raises(RuntimeError, match="batch failed"):
            cb(model, epoch=0)
        assert model.training and _hooks(model) == 0 and len(cb.history) == 0
    model.eval()                               # an eval-mode model stays in eval mode
    CollapseCallback(loader)(model)
    assert not model.training and _hooks(model) == 0


def test_callback_records_training(tmp_path):
    torch.manual_seed(0)
    ds = dg.zoo.digits_dataset("train")
    x, y = ds.tensors
    keep = dg.capture.balanced_indices(y, per_class=40, seed=0)
    train = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=50, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    probe = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=200)
    model = dg.zoo.DigitsMLP(depth=2, width=48)

    class Writer:
        def __init__(self):
            self.calls = []
            self.texts = []

        def add_scalar(self, tag, value, global_step=None):
            self.calls.append((tag, value, global_step))

        def add_text(self, tag, text, global_step=None):
            self.texts.append((tag, global_step))

    writer = Writer()
    path = tmp_path / "collapse.json"
    cb = CollapseCallback(probe, writer=writer, path=path, every=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)
    cb(model, epoch=0)
    for epoch in range(1, 13):
        model.train()
        for xb, yb in train:
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % 4 == 0:
            cb(model, epoch=epoch)
    h = cb.history
    assert isinstance(h, CollapseHistory) and h.epochs == [0, 4, 8, 12]
    assert h.default_layer == "net.5:input"
    nc1 = h.series("nc1")                    # the classifier's input by default
    assert torch.equal(nc1, h.series("nc1", "net.5:input"))
    assert nc1[-1] < 0.5 * nc1[0]            # training collapses the last layer
    assert h.series("nc4")[-1] < h.series("nc4")[0]
    assert h[12].layers == ["net.1", "net.3", "net.5:input", "net.5"]
    assert any(t == "collapse/nc1/net.5:input" and s == 12 for t, _, s in writer.calls)
    assert ("collapse/layers", 12) in writer.texts
    assert not any(t.startswith("collapse/nc3/net.1") for t, _, _ in writer.calls)
    saved = json.loads(path.read_text())
    assert saved["epochs"] == [0, 4, 8, 12]
    resumed = CollapseCallback(probe, path=path)
    assert resumed.history.epochs == [0, 4, 8, 12] and resumed.history == h
    from matplotlib.figure import Figure
    fig = dg.plot(h, tmp_path / "tpt.png")
    assert isinstance(fig, Figure) and (tmp_path / "tpt.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no loader"):
        CollapseCallback()(model)


def test_collapse_history_container(tmp_path):
    layers, nan, f64 = ["a", "fc:input"], float("nan"), torch.float64
    p0 = dg.DepthProfile(layers, ["nc1", "nc3"], torch.tensor([[2.0, nan], [1.0, 0.5]], dtype=f64))
    p1 = dg.DepthProfile(layers, ["nc1", "nc3"], torch.tensor([[1.5, nan], [0.4, 0.2]], dtype=f64))
    h = CollapseHistory([5, 0], [p1, p0], {"conventions": {"ddof": 0}})
    assert h.epochs == [0, 5] and h[5] == p1 and len(h) == 2
    assert h.default_layer == "fc:input"
    assert h.series("nc3").tolist() == [0.5, 0.2]
    assert h.series("nc1", "a").tolist() == [2.0, 1.5]
    h.add(5, p0)                              # replaces the epoch
    assert h.series("nc1", "a").tolist() == [2.0, 2.0]
    h.to_json(tmp_path / "h.json")
    assert CollapseHistory.from_json(tmp_path / "h.json") == h
    # a 0.1 callback file is read too
    legacy = {"format": "dyngraph.CollapseCallback/1", "conventions": {},
              "history": [{"epoch": 3, "layers": {"a": {"nc1": 1.0, "n_samples": 9},
                                                  "b": {"error": "all class means coincide"}}}]}
    old = CollapseHistory.from_dict(legacy)
    assert old.epochs == [3] and old[3].meta["errors"] == {"b": "all class means coincide"}
    assert old.series("nc1", "a").tolist() == [1.0]
    with pytest.raises(ValueError, match="never recorded"):
        h.series("nc1", "z")
    with pytest.raises(ValueError, match="not recorded"):
        h.series("nc3", "a")
    with pytest.raises(KeyError, match="not recorded"):
        h[7]
    with pytest.raises(ValueError, match="no epochs"):
        CollapseHistory().series("nc1")
    with pytest.raises(ValueError, match="distinct"):
        CollapseHistory([1, 1], [p0, p1])
    with pytest.raises(TypeError, match="profile"):
        h.add(2, {"nc1": 1.0})
    with pytest.raises(ValueError, match="format"):
        CollapseHistory.from_dict({"format": "x"})


def test_collapse_history_drawer_and_logger(tmp_path):
    from matplotlib.figure import Figure
    layers = ["a", "fc:input"]
    h = CollapseHistory([0, 1], [
        dg.DepthProfile(layers, ["nc1", "nc4"], torch.tensor([[2.0, float("nan")], [1.0, 0.5]])),
        dg.DepthProfile(layers, ["nc1", "nc4"], torch.tensor([[1.5, float("nan")], [0.4, 0.1]]))])
    fig = dg.plot(h, tmp_path / "h.png", layers=["a", "fc:input"])
    assert isinstance(fig, Figure) and len(fig.axes) == 2      # nc1 and nc4 (the only recorded)
    assert (tmp_path / "h.png").stat().st_size > 0
    with pytest.raises(ValueError, match="none of metrics"):
        dg.plot(h, metrics=["nc3"])

    class Writer:
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, global_step=None):
            self.calls.append((tag, value, global_step))

        def add_text(self, tag, text, global_step=None):
            self.calls.append((tag, text, global_step))

        def add_figure(self, tag, fig, global_step=None):
            self.calls.append((tag, fig, global_step))

    w = Writer()
    dg.log(w, h, prefix="tpt")
    tags = [(t, s) for t, _, s in w.calls]
    assert ("tpt/nc1/a", 0) in tags and ("tpt/nc4/fc:input", 1) in tags
    assert ("tpt/nc4/a", 0) not in tags                        # undefined values are skipped
    assert ("tpt/layers", 1) in tags and ("tpt/figure", 1) in tags
    assert isinstance(w.calls[-1][1], Figure)


# ----------------------------------------------------------------------------- minority collapse
def test_minority_collapse_against_numpy():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(7, 5, generator=g, dtype=torch.float64)
    r = minority_collapse(W, n_majority=3)
    Wn = W.numpy()
    mi, ma = Wn[3:], Wn[:3]
    cos = (mi / np.linalg.norm(mi, axis=1, keepdims=True)) @ \
          (mi / np.linalg.norm(mi, axis=1, keepdims=True)).T
    iu = np.triu_indices(4, 1)
    assert r["minority_cos_w"] == pytest.approx(cos[iu].mean(), rel=1e-12)
    dists = cdist(mi, mi)[iu].mean() / np.linalg.norm(ma, axis=1).mean()
    assert r["minority_dist_w"] == pytest.approx(dists, rel=1e-12)
    assert r["n_minority"] == 4 and r["n_majority"] == 3
    assert minority_collapse(W, minority=[3, 4, 5, 6]) == r


def test_minority_collapse_detects_merged_classes():
    C = 6
    W = simplex_etf(3, 5, seed=0)
    minority_w = torch.tensor([0.0, 0, 0, 0, 1.0], dtype=torch.float64)
    Wfull = torch.cat([W, minority_w.repeat(3, 1)])
    r = minority_collapse(Wfull, n_majority=3)
    assert r["minority_cos_w"] == pytest.approx(1.0) and r["minority_dist_w"] == 0.0
    assert r["majority_cos_w"] == pytest.approx(-0.5)
    # class means: the same from features
    y = torch.arange(C * 10) % C
    feats = Wfull[y] + 1e-3 * torch.randn(len(y), 5, generator=torch.Generator().manual_seed(0),
                                           dtype=torch.float64)
    rm = minority_collapse(None, feats, y, n_majority=3)
    assert rm["minority_cos_means"] > 0.99 and rm["minority_dist_means"] < 0.01
    # minority vectors that shrank to ~0 (the Layer-Peeled Model beyond its threshold) coincide
    tiny = torch.cat([W, 1e-10 * torch.randn(3, 5, generator=torch.Generator().manual_seed(1),
                                             dtype=torch.float64)])
    assert minority_collapse(tiny, n_majority=3)["minority_cos_w"] == 1.0
    assert minority_collapse(tiny, n_majority=3)["minority_norm_ratio_w"] < 1e-9
    assert minority_collapse(tiny, n_majority=3, atol=0.0)["minority_cos_w"] < 0.99
    with pytest.raises(ValueError, match="atol"):
        minority_collapse(tiny, n_majority=3, atol=-1.0)
    with pytest.raises(ValueError, match="exactly one"):
        minority_collapse(Wfull)
    with pytest.raises(ValueError, match="minority"):
        minority_collapse(Wfull, minority=[5])
    with pytest.raises(ValueError, match="n_majority"):
        minority_collapse(Wfull, n_majority=5)
    with pytest.raises(ValueError, match="classifier"):
        minority_collapse()


def test_etf_helpers():
    for C, D in [(2, 1), (5, 4), (7, 20)]:
        m = simplex_etf(C, D, seed=C)
        assert m.shape == (C, D)
        assert torch.allclose(m @ m.T, etf_gram(C), atol=1e-12)
        assert torch.allclose(m.sum(0), torch.zeros(D, dtype=m.dtype), atol=1e-12)
    g = etf_gram(4).numpy()
    assert np.allclose(np.diag(g), 1) and np.allclose(g[0, 1], -1 / 3)
    with pytest.raises(ValueError, match="dim"):
        simplex_etf(5, 3)
    with pytest.raises(ValueError, match="num_classes"):
        etf_gram(1)
