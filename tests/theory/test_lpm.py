"""The Layer-Peeled Model solver: simplex ETF for balanced classes, Minority Collapse otherwise."""
import json
import math

import numpy as np
import pytest
import torch

import dyngraph as dg

scipy_optimize = pytest.importorskip("scipy.optimize")

etf_gram = dg.measures.etf_gram
neural_collapse = dg.measures.neural_collapse
LayerPeeledSolution = dg.theory.LayerPeeledSolution
MinorityCollapseCurve = dg.theory.MinorityCollapseCurve
lpm_counts = dg.theory.lpm_counts
lpm_minority_curve = dg.theory.lpm_minority_curve
minority_collapse_threshold = dg.theory.minority_collapse_threshold
solve_layer_peeled = dg.theory.solve_layer_peeled


def etf_loss(K, E_H, E_W):
    """CE of the balanced optimum: logit √(E_H E_W) for the true class, −√(E_H E_W)/(K−1) else."""
    a = math.sqrt(E_H * E_W)
    return math.log(1 + (K - 1) * math.exp(-a * K / (K - 1)))


@pytest.mark.parametrize("method", ["convex", "lbfgs"])
@pytest.mark.parametrize("K,E_H,E_W,dim", [(4, 5.0, 1.0, None), (10, 5.0, 1.0, None),
                                           (6, 2.0, 3.0, 15)])
def test_balanced_gives_simplex_etf(method, K, E_H, E_W, dim):
    s = solve_layer_peeled(num_classes=K, E_H=E_H, E_W=E_W, dim=dim, method=method)
    assert isinstance(s, LayerPeeledSolution) and s.W.shape == (K, dim or K)
    atol = 1e-8 if method == "convex" else 1e-5
    assert torch.allclose(s.gram("W"), E_W * etf_gram(K), atol=atol)
    assert torch.allclose(s.gram("H"), E_H * etf_gram(K), atol=atol * E_H)
    assert torch.allclose(s.W, math.sqrt(E_W / E_H) * s.H, atol=10 * atol)   # self-duality
    assert s.loss == pytest.approx(etf_loss(K, E_H, E_W), abs=1e-9)
    assert s.converged and 0 <= s.gap <= 1e-7
    d = s.etf_distance()
    assert d["W"] < 10 * atol and d["H"] < 10 * atol
    # the neural-collapse metrics of the solution (features = class means) see a perfect ETF
    r = neural_collapse(s.H, torch.arange(K), s.W)
    assert r["nc2_etf"] < 1e-4 and r["nc3"] < 1e-8 and r["nc1"] == pytest.approx(0, abs=1e-20)


def test_matches_scipy_slsqp_imbalanced():
    """An independent solver (SLSQP on the factors with the two energy constraints)."""
    counts = torch.tensor([5.0, 2.0, 1.0, 1.0])
    K, E_H, E_W = 4, 2.0, 1.5
    p = (counts / counts.sum()).numpy()

    def f(v):
        W, H = v[:K * K].reshape(K, K), v[K * K:].reshape(K, K)
        Z = W @ H.T
        Z = Z - Z.max(0, keepdims=True)
        return -(p * (np.diag(Z) - np.log(np.exp(Z).sum(0)))).sum()

    cons = [{"type": "ineq", "fun": lambda v: K * E_W - (v[:K * K] ** 2).sum()},
            {"type": "ineq", "fun": lambda v: K * E_H - (v[K * K:] ** 2).sum()}]
    rng = np.random.default_rng(0)
    best = min((scipy_optimize.minimize(f, rng.normal(size=2 * K * K) * 0.3, method="SLSQP",
                                        constraints=cons, options={"maxiter": 2000, "ftol": 1e-14})
                for _ in range(2)), key=lambda r: r.fun)
    ours = solve_layer_peeled(counts, E_H=E_H, E_W=E_W)
    assert ours.loss == pytest.approx(best.fun, abs=1e-6)
    assert ours.loss <= best.fun + 1e-9                      # never worse than the reference
    assert (ours.W ** 2).sum() / K == pytest.approx(E_W, rel=1e-9)
    assert (ours.H ** 2).sum() / K <= E_H * (1 + 1e-9)


def test_certificate_and_local_optimality():
    s = solve_layer_peeled(num_classes=8, n_majority=3, ratio=20.0, E_H=5.0, E_W=1.0)
    assert s.converged
    p = s.counts / s.counts.sum()

    def loss(W, H):
        return float(-(p * torch.diagonal(torch.log_softmax(W @ H.T, 0))).sum())

    g = torch.Generator().manual_seed(0)
    for _ in range(20):   # feasible perturbations never do better than the certificate allows
        W = s.W + 1e-2 * torch.randn(s.W.shape, generator=g, dtype=s.W.dtype)
        H = s.H + 1e-2 * torch.randn(s.H.shape, generator=g, dtype=s.H.dtype)
        W = W * math.sqrt(8 * 1.0) / W.norm()
        H = H * math.sqrt(8 * 5.0) / H.norm()
        assert loss(W, H) >= s.loss - s.gap - 1e-12


def test_lbfgs_and_convex_agree_imbalanced():
    for ratio in (3.0, 50.0):
        a = solve_layer_peeled(num_classes=10, n_majority=5, ratio=ratio, method="convex")
        b = solve_layer_peeled(num_classes=10, n_majority=5, ratio=ratio, method="lbfgs")
        assert a.loss == pytest.approx(b.loss, abs=1e-7)
        ma, mb = a.minority_collapse(), b.minority_collapse()
        assert ma["minority_dist_w"] == pytest.approx(mb["minority_dist_w"], abs=1e-4)


def test_minority_collapse_trend_and_thresholds():
    """K = 10, E_H = 5, E_W = 1 (Fang et al.): minority classifiers merge beyond a ratio that falls
    as the number of majority classes K_A grows."""
    curve = lpm_minority_curve([1.0, 4.0, 1e3], num_classes=10, n_majority=5)
    cos = curve["minority_cos_w"]
    assert cos[0] == pytest.approx(-1 / 9, abs=1e-6)          # balanced: a simplex ETF
    assert cos[0] < cos[1] < cos[2]
    assert cos[2] == pytest.approx(1.0, abs=1e-6) and curve["minority_dist_w"][2] < 1e-5
    thresholds = {ka: minority_collapse_threshold(10, ka, rel_precision=0.01)
                  for ka in (3, 5, 7)}
    t = [thresholds[ka]["threshold"] for ka in (3, 5, 7)]
    assert t[0] > t[1] > t[2] > 1.0
    for ka in (3, 5, 7):    # just above the threshold: collapsed; just below: not
        lo, hi = thresholds[ka]["bracket"]
        above = solve_layer_peeled(n_majority=ka, ratio=hi * 1.02).minority_collapse()
        below = solve_layer_peeled(n_majority=ka, ratio=lo / 1.05).minority_collapse()
        assert above["minority_dist_w"] < 1e-5 < below["minority_dist_w"]


def test_plot_and_serialisation(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    s = solve_layer_peeled(num_classes=5, n_majority=2, ratio=10.0)
    W = s.W + 0.1 * torch.randn(s.W.shape, generator=torch.Generator().manual_seed(0),
                                dtype=s.W.dtype)
    fig = dg.plot(s, tmp_path / "cmp.png", classifier=W, means=s.H, title="test")
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    assert isinstance(fig, Figure) and len(fig.axes) >= 4
    assert len(dg.plot(s, classifier=torch.nn.Linear(5, 5)).axes) == 3    # 2 Grams + colorbar
    assert len(dg.plot(s).axes) == 3                                       # the model's W and H
    with pytest.raises(ValueError, match="means"):
        dg.plot(s, means=s.H[:3])
    with pytest.raises(ValueError, match="classifier"):
        dg.plot(s, classifier=torch.randn(4, 5))
    d = s.to_dict()
    assert d["counts"] == [10.0, 10.0, 1.0, 1.0, 1.0] and d["converged"]
    assert "K=5" in repr(s)
    back = LayerPeeledSolution.from_dict(json.loads(json.dumps(d)))
    assert torch.equal(back.W, s.W) and torch.equal(back.H, s.H) and back.loss == s.loss
    assert back.meta == s.meta and back.converged == s.converged
    with pytest.raises(ValueError, match="LayerPeeledSolution"):
        LayerPeeledSolution.from_dict({"W": []})


def test_minority_curve_result(tmp_path):
    from matplotlib.figure import Figure
    c = lpm_minority_curve([1.0, 20.0], num_classes=6, n_majority=3)
    assert isinstance(c, MinorityCollapseCurve) and c.ratios == [1.0, 20.0] and len(c) == 2
    assert [s.loss for s in c.solutions] == c["loss"]
    assert c.meta["num_classes"] == 6 and c.meta["n_majority"] == 3
    back = MinorityCollapseCurve.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back.values == c.values and back.ratios == c.ratios and back.meta == c.meta
    assert [torch.equal(a.W, b.W) for a, b in zip(back.solutions, c.solutions)] == [True, True]
    trained = MinorityCollapseCurve([1.0, 20.0], {"minority_cos_w": [-0.1, 0.5],
                                                  "minority_cos_means": [-0.2, 0.3]},
                                    meta={"label": "trained"})
    fig = dg.plot([trained, c], tmp_path / "mc.png")
    assert isinstance(fig, Figure) and (tmp_path / "mc.png").stat().st_size > 0
    assert [a.get_ylabel() for a in fig.axes] == ["minority_cos_w", "minority_cos_means"]
    assert isinstance(dg.plot(c, metrics="minority_dist_w"), Figure)
    with pytest.raises(ValueError, match="no curve has"):
        dg.plot(c, metrics=["nc1"])
    with pytest.raises(ValueError, match="labels"):
        dg.plot([trained, c], labels=["one"])
    with pytest.raises(ValueError, match="2 ratios"):
        MinorityCollapseCurve([1.0, 2.0], {"minority_cos_w": [0.1]})
    with pytest.raises(KeyError, match="minority_cos_means"):
        c["minority_cos_means"]

    class Writer:
        def __init__(self):
            self.tags = []

        def add_scalar(self, tag, value, global_step=None):
            self.tags.append((tag, global_step))

        def add_text(self, tag, text, global_step=None):
            self.tags.append((tag, global_step))

        def add_figure(self, tag, fig, global_step=None):
            assert isinstance(fig, Figure)
            self.tags.append((tag, global_step))

    w = Writer()
    dg.log(w, c, prefix="lpm")
    assert ("lpm/minority_cos_w", 1) in w.tags and ("lpm/ratios", None) in w.tags
    assert ("lpm/figure", None) in w.tags
    w = Writer()
    dg.log(w, c.solutions[1], prefix="sol")
    assert {"sol/loss", "sol/gap", "sol/etf_distance_W", "sol/minority_cos_w", "sol/summary",
            "sol/figure"} <= {t for t, _ in w.tags}


def test_bad_inputs():
    with pytest.raises(ValueError, match="E_H"):
        solve_layer_peeled(num_classes=4, E_H=0.0)
    with pytest.raises(ValueError, match="E_W"):
        solve_layer_peeled(num_classes=4, E_W=float("inf"))
    with pytest.raises(ValueError, match="counts"):
        solve_layer_peeled([3.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="counts"):
        solve_layer_peeled([3.0])
    with pytest.raises(ValueError, match="not both"):
        solve_layer_peeled([3.0, 1.0, 1.0], n_majority=1)
    with pytest.raises(ValueError, match="method"):
        solve_layer_peeled(num_classes=4, method="sdp")
    with pytest.raises(ValueError, match="dim"):
        solve_layer_peeled(num_classes=4, dim=2, method="convex")
    with pytest.raises(ValueError, match="ratio"):
        lpm_counts(10, 3, ratio=-1.0)
    with pytest.raises(ValueError, match="n_majority"):
        lpm_counts(10, 11)
    with pytest.raises(ValueError, match="r_min"):
        minority_collapse_threshold(r_min=10, r_max=5)
    with pytest.raises(ValueError, match="minority"):
        solve_layer_peeled(num_classes=4).minority_collapse()
    # dim < K is allowed with the factor solver (a rank-restricted model)
    s = solve_layer_peeled(num_classes=4, dim=2, method="lbfgs")
    assert s.W.shape == (4, 2)
