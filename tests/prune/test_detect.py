"""Redundant-layer rules (against numpy) on one-metric DepthProfiles, structural constraints,
baselines and the linear CKA they use (dg.measures.linear_cka)."""
import numpy as np
import pytest
import torch

import dyngraph as dg
from dyngraph import prune
from dyngraph.zoo._models import resnet20


def _curve(values, names=None):
    names = names or [f"l{i}" for i in range(len(values))]
    return dg.DepthProfile(names, "modularity", torch.tensor(values, dtype=torch.float64))


def _random_curve(seed, n=12):
    rng = np.random.default_rng(seed)
    return _curve(np.cumsum(rng.normal(0.02, 0.04, n)).tolist())


# ------------------------------------------------------------------ rules vs numpy
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.0, 0.03])
def test_delta_rule_matches_numpy(seed, threshold):
    c = _random_curve(seed)
    q = c.values.numpy()
    expect = [c.layers[i] for i in range(1, len(q)) if q[i] - q[i - 1] < threshold]
    r = prune.redundant_layers(c, "delta", threshold)
    assert r.layers == expect
    for rem in r:
        i = c.layers.index(rem.layer)
        assert rem.delta == pytest.approx(q[i] - q[i - 1])
        assert rem.value == pytest.approx(q[i])
        assert f"{q[i] - q[i - 1]:+.4f}" in rem.reason


@pytest.mark.parametrize("seed", range(5))
def test_plateau_and_degradation_rules_match_numpy(seed):
    c = _random_curve(seed)
    q = c.values.numpy()
    run_max = np.maximum.accumulate(q)
    gap = q[1:] - run_max[:-1]
    tol = 0.02
    plateau = [c.layers[i + 1] for i in range(len(gap)) if abs(gap[i]) <= tol]
    degr = [c.layers[i + 1] for i in range(len(gap)) if gap[i] < -tol]
    both = [c.layers[i + 1] for i in range(len(gap)) if gap[i] <= tol]
    assert prune.redundant_layers(c, "plateau", tol).layers == plateau
    assert prune.redundant_layers(c, "degradation", tol).layers == degr
    assert prune.redundant_layers(c, "plateau+degradation", tol).layers == both
    np.testing.assert_allclose(prune.layer_scores(c, "degradation").numpy()[1:], gap)
    np.testing.assert_allclose(prune.layer_scores(c, "plateau").numpy()[1:], np.abs(gap))


def test_reference_example_and_defaults():
    c = _curve([0.10, 0.30, 0.31, 0.50, 0.45, 0.46], ["stem", "b1", "b2", "b3", "b4", "b5"])
    r = prune.redundant_layers(c)  # delta, 0.03
    assert r.layers == ["b2", "b4", "b5"] and r.params["threshold"] == 0.03
    assert prune.redundant_layers(c, "reference", 0.0).layers == ["b4"]  # the VGG19 rule
    d = prune.redundant_layers(c, "degradation")
    assert d.layers == ["b4", "b5"] and "below the running maximum 0.5000" in d[0].reason
    p = prune.redundant_layers(c, "plateau", 0.02)
    assert p.layers == ["b2"]
    assert "within 0.02 of the running maximum 0.3000 (at b1)" in p[0].reason


def test_n_remove_takes_the_most_redundant():
    c = _random_curve(3)
    q = c.values.numpy()
    order = np.argsort(np.diff(q), kind="stable")[:4] + 1
    r = prune.redundant_layers(c, n_remove=4)
    assert sorted(r.layers) == sorted(c.layers[i] for i in order)
    with pytest.raises(ValueError, match="n_remove=20"):
        prune.redundant_layers(c, n_remove=20)


def test_bad_input():
    c = _curve([0.1, 0.2, 0.3])
    with pytest.raises(TypeError, match="DepthProfile"):
        prune.redundant_layers([0.1, 0.2])
    two = dg.DepthProfile(["a", "b", "c"], ["modularity", "nc1"], torch.rand(3, 2))
    with pytest.raises(ValueError, match=r"one metric.*\['modularity', 'nc1'\]"):
        prune.redundant_layers(two)
    with pytest.raises(ValueError, match="one metric"):
        prune.layer_scores(two)
    with pytest.raises(ValueError, match="rule"):
        prune.redundant_layers(c, "steep")
    with pytest.raises(ValueError, match="threshold"):
        prune.redundant_layers(c, "delta", float("nan"))
    with pytest.raises(ValueError, match="tolerance"):
        prune.redundant_layers(c, "plateau", -0.1)
    with pytest.raises(ValueError, match="n_remove"):
        prune.redundant_layers(c, n_remove=0)
    with pytest.raises(ValueError, match="at least 2 layers"):
        prune.redundant_layers(_curve([0.1]))
    with pytest.raises(ValueError, match="non-finite"):
        prune.redundant_layers(_curve([0.1, float("nan")]))


# ------------------------------------------------------------------ structure
def _resnet20_curve(values):
    m = resnet20()
    return m, dg.DepthProfile(dg.default_layers(m), "modularity",
                              torch.tensor(values, dtype=torch.float64))


def test_constraints_on_resnet20():
    # conv1, layer1.0-2, layer2.0-2, layer3.0-2: everything flat → everything flagged
    m, c = _resnet20_curve([0.1] * 10)
    x = torch.zeros(1, 3, 32, 32)
    r = prune.redundant_layers(c, model=m, example_input=x)
    assert "conv1" not in r.layers  # the stem
    assert "layer2.0" not in r.layers and "layer3.0" not in r.layers  # shape changes
    assert "changes the shape [16, 32, 32] → [32, 16, 16]" in r.kept["layer2.0"]
    kept1 = [l for l in ("layer1.0", "layer1.1", "layer1.2") if l not in r.layers]
    assert len(kept1) == 1 and "stage" in r.kept[kept1[0]]  # one block per stage stays
    assert set(r.layers) == {"layer1.0", "layer1.1", "layer2.1", "layer2.2", "layer3.1",
                             "layer3.2"}
    # the stage keeps its least redundant block
    m, c = _resnet20_curve([0.1, 0.11, 0.2, 0.21, 0.3, 0.31, 0.32, 0.4, 0.41, 0.42])
    r = prune.redundant_layers(c, model=m, example_input=x, threshold=0.5)
    assert "layer1.1" not in r.layers and {"layer1.0", "layer1.2"} <= set(r.layers)
    # projections unlock the shape-changing blocks
    m, c = _resnet20_curve([0.1, 0.11, 0.2, 0.21, 0.215, 0.31, 0.32, 0.4, 0.41, 0.42])
    r = prune.redundant_layers(c, model=m, example_input=x, threshold=0.5)
    assert "layer2.0" not in r.layers
    rp = prune.redundant_layers(c, model=m, example_input=x, threshold=0.5,
                                allow_projection=True)
    proj = {x.layer: x.projection for x in rp}
    assert proj.get("layer2.0") is True and proj.get("layer2.2") is False
    assert "layer2.1" in rp.kept  # the stage keeps one block: its least redundant
    pruned = prune.prune_layers(m, rp, example_input=x)
    assert pruned(x).shape == (1, 10)
    with pytest.raises(ValueError, match="min_per_stage"):
        prune.redundant_layers(c, model=m, min_per_stage=-1)


def test_mlp_classifier_and_post_activation_points():
    mlp = dg.zoo.DigitsMLP(depth=4, width=16)
    layers = dg.default_layers(mlp)  # every Linear, classifier included
    c = dg.DepthProfile(layers, "modularity", torch.zeros(len(layers), dtype=torch.float64))
    r = prune.redundant_layers(c, model=mlp)
    assert layers[-1] not in r.layers and "classifier" in r.kept[layers[-1]]
    assert r.layers == layers[1:-1]
    post = dg.default_layers(mlp, point="post")
    c2 = dg.DepthProfile(post, "modularity", torch.zeros(len(post), dtype=torch.float64))
    r2 = prune.redundant_layers(c2, model=mlp)
    assert [x.module for x in r2] == layers[1:-1]  # ReLU points map to their Linear
    assert r2.to_dict()["remove"][0]["layer"] == post[1]
    assert "| keep:" in r2.table()


# ------------------------------------------------------------------ baselines
def test_random_and_least_redundant_respect_constraints():
    m, c = _resnet20_curve([0.1, 0.15, 0.17, 0.3, 0.31, 0.5, 0.52, 0.6, 0.7, 0.71])
    x = torch.zeros(1, 3, 32, 32)
    allowed = {"layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"}
    draws = [tuple(prune.random_layers(c, 3, seed=s, model=m, example_input=x).layers)
             for s in range(6)]
    assert all(len(d) == 3 and set(d) <= allowed for d in draws)
    assert len(set(draws)) > 1  # different seeds, different layers
    assert draws[0] == tuple(prune.random_layers(c, 3, seed=0, model=m, example_input=x).layers)
    lr = prune.least_redundant_layers(c, 3, model=m, example_input=x)
    q = c.values.numpy()
    dq = {c.layers[i]: q[i] - q[i - 1] for i in range(1, len(q))}
    top = sorted(allowed, key=lambda l: -dq[l])
    # greedy from the top; layer1 keeps one block
    assert set(lr.layers) == set(top[:3])
    mod = prune.redundant_layers(c, n_remove=3, model=m, example_input=x)
    assert not set(mod.layers) & set(lr.layers)
    with pytest.raises(ValueError, match="n="):
        prune.random_layers(c, 10)


def _np_cka(x, y):
    """Gretton's HSIC with the centring matrix H, straight from the definition."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.trace(k @ l_) / np.sqrt(np.trace(k @ k) * np.trace(l_ @ l_))


@pytest.mark.parametrize("n,dx,dy", [(40, 100, 80), (200, 5, 7)])  # Gram path, feature path
def test_linear_cka_matches_numpy(n, dx, dy):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, dx, generator=g)
    y = x[:, :min(dx, dy)].repeat(1, 2)[:, :dy] + 0.5 * torch.randn(n, dy, generator=g)
    cka = dg.measures.linear_cka
    assert cka(x, y) == pytest.approx(_np_cka(x, y), rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(dx, dx, generator=g))
    assert cka(x, 2.5 * x @ q + 3.0) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="same N inputs"):
        cka(x, y[:-1])
    with pytest.raises(ValueError, match="zero variance"):
        cka(torch.ones(n, 3), y)
    assert not hasattr(dg.prune, "linear_cka")  # one CKA core: dg.measures.linear_cka


def test_cka_baseline_on_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    a, b, d = (torch.randn(90, 6, generator=g) for _ in range(3))
    f = dg.LayerFeatures({"s": a, "x": b, "x2": b + 0.01 * d, "z": d}, y)
    cka = prune.adjacent_cka(f, per_class=20, repeats=3)
    assert cka.layers == ["x", "x2", "z"] and cka.samples.shape == (3, 3, 1)
    assert cka.metrics == ["adjacent_cka"]
    assert cka.layer("x2")["adjacent_cka"] > 0.99 and cka.layer("z")["adjacent_cka"] < 0.9
    # every repeat is dg.measures.linear_cka of adjacent layers on the runner's resampling
    for r in range(3):
        sub = f.subset(dg.capture.balanced_indices(f.y, per_class=20, seed=r))
        for i, (a_, b_) in enumerate([("s", "x"), ("x", "x2"), ("x2", "z")]):
            assert cka.samples[r, i, 0] == dg.measures.linear_cka(sub[a_], sub[b_])
    r = prune.cka_layers(f, n=1)
    assert r.layers == ["x2"] and "CKA with x" in r[0].reason
    assert prune.cka_layers(f, threshold=0.99).layers == ["x2"]
    with pytest.raises(TypeError, match="LayerFeatures"):
        prune.adjacent_cka({"a": a})
