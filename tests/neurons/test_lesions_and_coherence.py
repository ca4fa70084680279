"""Importance (lesions) and coherence of neuron groups, their statistics, the report and the CLI."""
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dyngraph as dg


# ----------------------------------------------------------------------------- statistics
def test_fisher_and_bh_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for m in (1, 3, 17):
        p = rng.uniform(0.001, 1, m)
        assert dg.neurons.fisher_combine(torch.tensor(p)) == pytest.approx(
            stats.combine_pvalues(p, method="fisher").pvalue, rel=1e-9)
        np.testing.assert_allclose(dg.neurons.benjamini_hochberg(p).numpy(),
                                   stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    with pytest.raises(ValueError, match="p_values"):
        dg.neurons.fisher_combine([0.0, 0.5])
    with pytest.raises(ValueError, match="p_values"):
        dg.neurons.benjamini_hochberg([0.5, 1.5])
    with pytest.raises(ValueError, match="at least one"):
        dg.neurons.fisher_combine([])


def test_empirical_p_and_percentile_follow_their_definitions():
    rng = np.random.default_rng(1)
    obs = rng.integers(0, 5, 6).astype(float)
    null = rng.integers(0, 5, (6, 19)).astype(float)
    p = dg.neurons.empirical_p(torch.tensor(obs), torch.tensor(null)).numpy()
    np.testing.assert_allclose(p, ((null >= obs[:, None]).sum(1) + 1) / 20)
    p_low = dg.neurons.empirical_p(torch.tensor(obs), torch.tensor(null), greater=False).numpy()
    np.testing.assert_allclose(p_low, ((null <= obs[:, None]).sum(1) + 1) / 20)
    pct = dg.neurons.percentile_of(torch.tensor(obs), torch.tensor(null)).numpy()
    expect = 100 * ((null < obs[:, None]).sum(1) + 0.5 * (null == obs[:, None]).sum(1)) / 19
    np.testing.assert_allclose(pct, expect)
    with pytest.raises(ValueError, match="rows"):
        dg.neurons.empirical_p(torch.zeros(3), torch.zeros(2, 5))


def test_label_entropy_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(100, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (100,), generator=g)
    ours = dg.neurons.label_entropy(scores, y, 15)
    for j in range(7):
        top = np.argsort(-scores[:, j].numpy(), kind="stable")[:15]
        ref = stats.entropy(np.bincount(y[top].numpy(), minlength=4))
        assert float(ours[j]) == pytest.approx(ref, abs=1e-12)


# ----------------------------------------------------------------------------- lesions
@pytest.fixture(scope="module")
def digits():
    return dg.zoo.example_loaders("digits")


@pytest.fixture(scope="module")
def trained_mlp(digits):
    torch.manual_seed(0)
    m = dg.zoo.DigitsMLP(depth=2, width=24)
    dg.zoo.train_classifier(m, digits[0], epochs=4, progress=False)
    return m


def _lesioned_copy(model, weight_module, bn_module, neurons):
    """The literal lesion: zero the incoming weights and bias (and the BN's scale and shift)."""
    m = copy.deepcopy(model)
    mods = dict(m.named_modules())
    with torch.no_grad():
        lay = mods[weight_module]
        lay.weight[neurons] = 0.0
        if lay.bias is not None:
            lay.bias[neurons] = 0.0
        if bn_module is not None:
            mods[bn_module].weight[neurons] = 0.0
            mods[bn_module].bias[neurons] = 0.0
    return m


def test_mask_lesion_equals_zeroing_the_weights(trained_mlp, digits):
    test = digits[1]
    runner = dg.neurons.LesionRunner(trained_mlp, test)
    base, base_cls = runner.accuracy()
    assert float(base[0]) == pytest.approx(dg.prune.evaluate(trained_mlp, test))
    groups = [[0, 3, 5], list(range(12)), [7]]
    masks = torch.ones(3, 24)
    for i, gr in enumerate(groups):
        masks[i, gr] = 0.0
    acc, acc_cls = runner.accuracy("net.1", masks)
    assert runner._modes["net.1"] == "hook"  # a chain: the batch is repeated at the layer
    for i, gr in enumerate(groups):
        ref = _lesioned_copy(trained_mlp, "net.1", None, gr)
        assert float(acc[i]) == pytest.approx(dg.prune.evaluate(ref, test))
        x, y = test.dataset.tensors
        pred = ref(x).argmax(1)
        for c in range(10):
            assert float(acc_cls[i, c]) == pytest.approx(float((pred[y == c] == c).float().mean()))
    # The input-repeat path gives the same numbers.
    assert torch.equal(runner._forward_correct("net.1", masks, "input"),
                       runner._forward_correct("net.1", masks, "hook"))


def test_conv_bn_lesion_equals_zeroing_weights_and_bn(digits):
    torch.manual_seed(0)
    m = dg.zoo.DigitsCNN(channels=(6, 8), pool_after=(0,))
    dg.zoo.train_classifier(m, digits[0], epochs=1, progress=False)
    g = dg.neurons.neuron_graph(m)
    assert g.unit_modules == ["features.1", "features.5"]  # the BNs after the convs
    runner = dg.neurons.LesionRunner(m, digits[1], max_rows=700)  # several chunks per batch
    masks = torch.ones(2, 6)
    masks[0, [1, 2]] = 0.0
    masks[1, [0, 4, 5]] = 0.0
    acc, _ = runner.accuracy("features.1", masks)
    for i, gr in enumerate([[1, 2], [0, 4, 5]]):
        ref = _lesioned_copy(m, "features.0", "features.1", gr)
        assert float(acc[i]) == pytest.approx(dg.prune.evaluate(ref, digits[1]))


class Redundant(nn.Module):
    """Class = sign of x0. Neurons 0-3 of the hidden layer each copy |x0| with the right sign
    (any one of them is enough); the 16 others read noise features only."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 20)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(20, 2)
        with torch.no_grad():
            self.fc1.weight.zero_()
            self.fc1.bias.zero_()
            self.fc1.weight[0:2, 0] = 1.0
            self.fc1.weight[2:4, 0] = -1.0
            g = torch.Generator().manual_seed(0)
            self.fc1.weight[4:, 1:] = torch.randn(16, 5, generator=g)
            self.fc2.weight.zero_()
            self.fc2.bias.zero_()
            self.fc2.weight[1, 0:2] = 1.0
            self.fc2.weight[0, 2:4] = 1.0
            self.fc2.weight[:, 4:] = 0.01 * torch.randn(2, 16, generator=g)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _redundant_data(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    x[:, 0] = torch.sign(x[:, 0]) * (0.5 + x[:, 0].abs())  # a clear margin
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=128)


def test_planted_important_group_is_found():
    m = Redundant()
    dl = _redundant_data()
    g = dg.neurons.neuron_graph(m, include_output=True)
    clusters = torch.cat([torch.tensor([0] * 4 + [1] * 16), torch.tensor([0, 1])])
    r = dg.neurons.lesion_importance(m, g, clusters, dl, n_random=99, seed=0, progress=False)
    assert [(row["layer"], row["size"]) for row in r.groups] == [("fc1", 4), ("fc1", 16)]
    assert r.base_accuracy == 1.0
    key, rest = r.groups
    assert key["acc_drop"] == pytest.approx(0.5, abs=0.05)  # chance level
    assert key["p_value"] == pytest.approx(1 / 100)
    assert key["percentile"] > 99 and key["important"] and key["important_class"]
    ref = _lesioned_copy(m, "fc1", None, [0, 1, 2, 3])
    x, y = dl.dataset.tensors
    pred = ref(x).argmax(1)
    drops = [1.0 - float((pred[y == c] == c).float().mean()) for c in (0, 1)]
    assert key["class_drop_max"] == pytest.approx(max(drops))
    assert key["class_drops"] == pytest.approx(drops, abs=1e-6)
    assert rest["acc_drop"] == 0.0 and not rest["important"]
    # The statistics are those of the stored drops.
    p = dg.neurons.empirical_p(r.drops, r.random_drops)
    assert [row["p_value"] for row in r.groups] == p.tolist()
    assert r.fisher_p == pytest.approx(dg.neurons.fisher_combine(p))
    assert [row["q_value"] for row in r.groups] == dg.neurons.benjamini_hochberg(p).tolist()
    # Random groups are reproducible from the seed.
    r2 = dg.neurons.lesion_importance(m, g, clusters, dl, n_random=99, seed=0, progress=False)
    assert torch.equal(r.random_drops, r2.random_drops)


def test_neuron_groups_respect_size_limits():
    m = Redundant()
    g = dg.neurons.neuron_graph(m, include_input=True, include_output=True)
    cl = torch.cat([torch.zeros(6, dtype=torch.long), torch.tensor([0] + [1] * 19),
                    torch.tensor([0, 1])])
    groups = dg.neurons.neuron_groups(g, cl)
    # input skipped, fc1 cluster 0 has 1 neuron (< 2), fc1 cluster 1 has 19 of 20 (<= 99%),
    # fc2 clusters have 1 neuron each.
    assert [(x.layer, x.cluster, x.size) for x in groups] == [("fc1", 1, 19)]
    assert dg.neurons.neuron_groups(g, cl, max_fraction=0.9) == []
    with pytest.raises(ValueError, match="max_fraction"):
        dg.neurons.neuron_groups(g, cl, max_fraction=0.0)
    with pytest.raises(ValueError, match="clusters"):
        dg.neurons.neuron_groups(g, cl[:-1])


# ----------------------------------------------------------------------------- coherence
class ClassDetector(nn.Module):
    """Inputs: a one-hot class code (10 features) + noise. Hidden neurons 0-3 all read the
    class-0 feature; the others each read one noise feature."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 24)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(24, 10)
        with torch.no_grad():
            self.fc1.weight.zero_()
            self.fc1.bias.fill_(0.1)
            self.fc1.weight[0:4, 0] = torch.tensor([1.0, 0.8, 1.2, 0.9])
            for i in range(4, 24):
                self.fc1.weight[i, 10 + (i - 4) % 10] = 1.0
            self.fc2.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _class_data(n=300, seed=0):
    """A one-hot class code (x2) plus noise, then 10 random-sign features (x1)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    signs = torch.randint(0, 2, (n, 10), generator=g).float() * 2 - 1
    x = torch.cat([nn.functional.one_hot(y, 10).float() * 2, signs], 1)
    x = x + 0.3 * torch.randn(n, 20, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=100)


def test_planted_coherent_group_is_found():
    m = ClassDetector()
    dl = _class_data()
    g = dg.neurons.neuron_graph(m, include_output=True)
    clusters = torch.tensor([0] * 4 + [1] * 20 + [2] * 10)  # the logits: 100% of a layer
    r = dg.neurons.coherence(m, g, clusters, dl, methods=("labels", "pixels", "feature_vis"),
                             n_random=49, top_k=20, seed=0, fv_steps=80, progress=False)
    det, noise = r.groups
    assert det["size"] == 4 and noise["size"] == 20
    # Direct check of the label score: top-20 inputs of the z-scored mean activation.
    x, y = dl.dataset.tensors
    a = torch.relu(m.fc1(x)).detach().double()
    z = (a - a.mean(0)) / a.std(0, unbiased=False)
    top = z[:, :4].mean(1).topk(20).indices
    counts = np.bincount(y[top].numpy(), minlength=10) / 20
    ent = -(counts[counts > 0] * np.log(counts[counts > 0])).sum()
    assert det["labels_score"] == pytest.approx(ent, abs=1e-9)
    assert det["labels_score"] == pytest.approx(0.0, abs=1e-12)  # all class 0
    # As coherent as a group can be; random groups (many without a detector) are mixed.
    assert bool((r.random_scores["labels"][0] >= det["labels_score"]).all())
    assert det["labels_random_mean"] > 0.5
    assert det["labels_percentile"] >= 50
    # Pixels: the group mean follows input feature 0.
    gm = z[:, :4].mean(1)
    r0 = np.corrcoef(gm.numpy(), x[:, 0].double().numpy())[0, 1]
    assert det["pixels_score"] == pytest.approx(abs(r0), abs=1e-6)
    assert det["pixels_p_value"] <= 0.1 and det["pixels_percentile"] >= 90
    # Feature visualisation: the detectors share one input direction, so with the same input
    # budget they are driven further than random groups.
    assert det["feature_vis_score"] > det["feature_vis_random_mean"]
    assert det["feature_vis_p_value"] <= 0.1
    assert r.fisher_p["pixels"] == pytest.approx(
        dg.neurons.fisher_combine(torch.tensor([det["pixels_p_value"], noise["pixels_p_value"]])))
    assert r.n_coherent("pixels") >= 1
    # Gradient ascent improves on its start: fewer steps reach less.
    short = dg.neurons.coherence(m, g, clusters, dl, methods=("feature_vis",), n_random=19,
                                 seed=0, fv_steps=2, progress=False)
    assert short.groups[0]["feature_vis_score"] < det["feature_vis_score"]


def test_coherence_rejects_bad_input():
    m = ClassDetector()
    dl = _class_data(60)
    g = dg.neurons.neuron_graph(m, include_output=True)
    cl = torch.tensor([0] * 4 + [1] * 20 + [2] * 10)
    with pytest.raises(ValueError, match="methods"):
        dg.neurons.coherence(m, g, cl, dl, methods=["vibes"], n_random=19)
    with pytest.raises(ValueError, match="n_random"):
        dg.neurons.coherence(m, g, cl, dl, n_random=5)
    with pytest.raises(ValueError, match="top_k"):
        dg.neurons.coherence(m, g, cl, dl, n_random=19, top_k=500, progress=False)
    with pytest.raises(ValueError, match="alpha"):
        dg.neurons.lesion_importance(m, g, cl, dl, n_random=19, alpha=2.0)
    with pytest.raises(ValueError, match="neuron metadata"):
        dg.neurons.lesion_importance(m, dg.graphs.build_snapshot(torch.randn(10, 3), k=2), cl, dl,
                                     n_random=19)
    with pytest.raises(TypeError, match="Data"):
        dg.neurons.coherence(m, "graph", cl, dl, n_random=19)
    with pytest.raises(ValueError, match="unknown module 'fc9'"):
        dg.neurons.LesionRunner(m, dl).accuracy("fc9", torch.ones(2, 24))


# ----------------------------------------------------------------------------- report and CLI
class _Writer:
    def __init__(self):
        self.scalars, self.texts, self.figures = {}, {}, {}

    def add_scalar(self, tag, value, global_step=None):
        self.scalars[tag] = value

    def add_text(self, tag, text, global_step=None):
        self.texts[tag] = text

    def add_figure(self, tag, fig, global_step=None):
        self.figures[tag] = fig


@pytest.fixture(scope="module")
def mlp_report(trained_mlp, digits):
    return dg.neurons.neuron_report(trained_mlp, digits[1], n_clusters=4, n_shuffles=3,
                                    n_random=19, methods=("labels",), progress=False)


def test_neuron_report_writes_everything(mlp_report, tmp_path):
    r = mlp_report
    s = r.summary()
    assert s["n_nodes"] == 48 and s["n_clusters"] == 4 and s["n_shuffles"] == 3
    assert s["ncut"] == pytest.approx(dg.neurons.ncut(r.graph.edge_index, r.clusters,
                                                      r.graph.edge_weight, r.graph.num_nodes))
    rows = r.groups()
    assert rows and all({"percentile", "labels_percentile", "p_value"} <= set(x) for x in rows)
    assert s["n_groups"] == len(rows)
    paths = r.save(tmp_path / "out")
    rep = json.loads(open(paths["json"]).read())
    assert rep["summary"]["ncut"] == pytest.approx(s["ncut"])
    assert len(rep["groups"]) == len(rows)
    header = open(paths["csv"]).readline().strip().split(",")
    assert {"layer", "cluster", "size", "percentile", "labels_p_value"} <= set(header)
    assert (tmp_path / "out" / "partition.png").stat().st_size > 1000
    assert any((tmp_path / "out" / "tensorboard").iterdir())
    w = _Writer()
    dg.log(w, r, prefix="nr")
    assert w.scalars["nr/ncut"] == pytest.approx(s["ncut"])
    assert "nr/clusterability_p" in w.scalars and "nr/figure" in w.figures
    assert "| layer |" in w.texts["nr/layers"]
    with pytest.raises(TypeError, match="writer"):
        dg.log(object(), r)


def test_results_write_strict_json(mlp_report, tmp_path):
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    r = mlp_report
    for i, res in enumerate((r, r.clusterability, r.importance, r.coherence)):
        res.to_json(tmp_path / f"{i}.json")
        back = json.loads((tmp_path / f"{i}.json").read_text(), parse_constant=no_constants)
        assert set(back) - {"checksum"} == set(res.to_dict())
    c = r.clusterability
    inf = dg.neurons.ClusterabilityResult(c.ncut, torch.full((3,), c.ncut + 1.0), 1 / 4,
                                          float("-inf"), c.n_clusters, c.clusters, c.graph)
    inf.to_json(tmp_path / "inf.json")
    assert json.loads((tmp_path / "inf.json").read_text())["z_score"] == "-inf"


def test_neuron_drawers_return_figures(mlp_report, tmp_path):
    from matplotlib.figure import Figure
    r = mlp_report
    assert {"NeuronReport", "ClusterabilityResult"} <= set(dg.outputs.drawable_types())
    assert not hasattr(dg.neurons, "plot_neuron_partition")  # 0.2: dg.plot(report)
    fig = dg.plot(r)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == r.graph.layer_names
    assert "n-cut" in ax.get_title() and "shuffled" in ax.get_title()
    # Nodes, then the circled important groups (when there are any); edges as one collection.
    points = [c for c in ax.collections if hasattr(c, "get_offsets") and
              type(c).__name__ == "PathCollection"]
    assert points[0].get_offsets().shape == (r.graph.num_nodes, 2)
    assert len(points) == 2 and points[1].get_offsets().shape[0] == int(r.highlight().sum())
    # Into a given axis, saved to a path.
    own = Figure()
    target = own.subplots()
    assert dg.plot(r, path=tmp_path / "p.png", ax=target, title="mine") is own
    assert target.get_title() == "mine" and (tmp_path / "p.png").stat().st_size > 1000
    # The shuffle test's own drawer and logger.
    c = r.clusterability
    fig_c = dg.plot(c)
    assert isinstance(fig_c, Figure) and f"{c.ncut:.3f}" in fig_c.axes[0].get_title()
    w = _Writer()
    dg.log(w, c, prefix="cl")
    assert w.scalars["cl/ncut"] == pytest.approx(c.ncut)
    assert w.scalars["cl/p_value"] == pytest.approx(c.p_value)
    assert isinstance(w.figures["cl/figure"], Figure) and "n_clusters" in w.texts["cl/layers"]
    w2 = _Writer()
    dg.log(w2, r, prefix="nr", figure=False)
    assert w2.figures == {} and "nr/ncut" in w2.scalars
    with pytest.raises(ValueError, match="max_edges"):
        dg.plot(r, max_edges=0)
    with pytest.raises(ValueError, match="highlight"):
        dg.plot(r, highlight=torch.ones(3, dtype=torch.bool))


# ----------------------------------------------------------------------------- hooks and modes
class _Fragile(nn.Module):
    """A small MLP whose forward raises on the inputs that ``fail`` picks."""

    def __init__(self, fail=None):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 8)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(8, 3)
        self.fail = fail

    def forward(self, x):
        if self.fail is not None and self.fail(x):
            raise RuntimeError("boom")
        return self.fc3(self.act2(self.fc2(self.act(self.fc1(x)))))


def _n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _fragile_data():
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(60, 6, generator=g), torch.arange(60) % 3),
                      batch_size=20)


def _lesion(m, dl):
    dg.neurons.LesionRunner(m, dl).accuracy("fc1", torch.ones(2, 8))


def _lesion_bad_masks(m, dl):
    dg.neurons.LesionRunner(m, dl).accuracy("fc1", torch.ones(2, 5))


def _coherence(m, dl):
    g = dg.neurons.neuron_graph(m)
    dg.neurons.coherence(m, g, torch.arange(16) % 2, dl, methods=("labels", "feature_vis"),
                         n_random=19, top_k=5, fv_steps=2, progress=False)


def _graphs(m, dl):
    dg.neurons.neuron_graph(m, "activations", dl, progress=False)
    dg.neurons.neuron_graph(m, loader=dl, progress=False)  # dead neurons, spatial shapes


def _from_call(n):
    """Fails from the ``n``-th forward pass on (for the lesion runner: 2 probes, then lesions)."""
    calls = []

    def fail(x):
        calls.append(1)
        return len(calls) >= n
    return fail


CASES = {  # name: (fail, run, error)
    "lesion": (None, _lesion, None),
    "lesion error": (None, _lesion_bad_masks, "5 channels"),
    "lesion forward error": (4, _lesion, "boom"),
    "coherence": (None, _coherence, None),
    "feature_vis error": (lambda x: x.requires_grad, _coherence, "boom"),
    "activation graph": (None, _graphs, None),
    "activation capture error": (lambda x: x.shape[0] == 20, _graphs, "boom"),
    "spatial shapes error": (lambda x: x.shape[0] == 1, _graphs, "boom"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hooks_removed_and_mode_restored(case):
    fail, run, error = CASES[case]
    dl = _fragile_data()
    for training in (True, False):
        m = _Fragile(_from_call(fail) if isinstance(fail, int) else fail)
        m.train(training)
        before = copy.deepcopy(m.state_dict())
        if error is None:
            run(m, dl)
        else:
            with pytest.raises((ValueError, RuntimeError), match=error):
                run(m, dl)
        assert _n_hooks(m) == 0
        assert all(x.training == training for x in m.modules())
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_lesion_of_a_bare_layer_model():
    """A model that is one nn.Linear: its neurons are the model's own outputs (module name '')."""
    torch.manual_seed(0)
    m = nn.Linear(5, 3)
    g = dg.neurons.neuron_graph(m, include_input=True)
    assert g.unit_modules == [None, ""]
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(1))
    y = m(x).argmax(1).detach()  # the intact model is always right
    dl = DataLoader(TensorDataset(x, y), batch_size=10)
    runner = dg.neurons.LesionRunner(m, dl)
    masks = torch.ones(2, 3)
    masks[1, 0] = 0.0
    acc, _ = runner.accuracy("", masks)
    assert float(runner.accuracy()[0][0]) == 1.0 and float(acc[0]) == 1.0
    with torch.no_grad():
        ref = (m(x) * masks[1]).argmax(1)
    assert float(acc[1]) == pytest.approx(float((ref == y).float().mean()))
    assert _n_hooks(m) == 0 and m.training


def test_cli_neurons(tmp_path, capsys):
    from dyngraph.cli._main import main
    out = tmp_path / "cli"
    rc = main(["neurons", "--arch", "mlp", "--epochs", "1", "--clusters", "3", "--shuffles", "2",
               "--random-groups", "19", "--coherence", "labels", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    rep = json.loads((out / "report.json").read_text())
    assert printed["ncut"] == pytest.approx(rep["summary"]["ncut"])
    assert rep["summary"]["n_shuffles"] == 2
    assert (out / "groups.csv").exists() and (out / "partition.png").exists()
    # A rerun reuses the trained model and the finished shuffles.
    assert main(["neurons", "--arch", "mlp", "--epochs", "1", "--clusters", "3", "--shuffles",
                 "2", "--random-groups", "0", "--out", str(out), "--quiet"]) == 0
    assert "reused_checkpoint" in json.loads((out / "report.json").read_text())["meta"]["model"]
    assert main(["neurons", "--clusters", "0", "--out", str(out), "--quiet",
                 "--epochs", "1", "--arch", "mlp"]) == 2


def test_activation_report_round_trips_to_json(tmp_path):
    m = ClassDetector()
    dl = _class_data(200)
    r = dg.neurons.neuron_report(m, dl, n_clusters=3, source="activations", n_shuffles=2,
                                 n_random=19, methods=("pixels",),
                                 graph_kwargs={"include_output": True}, progress=False)
    assert r.graph.source == "activations"
    r.to_json(tmp_path / "r.json")
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["graph"]["norm"] is None and rep["summary"]["source"] == "activations"
    assert len(rep["clusters"]) == r.graph.num_nodes
    assert "NeuronReport(source='activations'" in repr(r)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pipeline_on_cuda_matches_cpu():
    m = Redundant()
    dl = _redundant_data()
    g_cpu = dg.neurons.neuron_graph(m, include_output=True)
    g_gpu = dg.neurons.neuron_graph(m.cuda(), include_output=True)
    assert g_gpu.edge_index.is_cuda
    assert torch.allclose(g_gpu.edge_weight.cpu(), g_cpu.edge_weight)
    c_cpu = dg.neurons.spectral_partition(g_cpu, 2)
    c_gpu = dg.neurons.spectral_partition(g_gpu, 2)
    assert torch.equal(c_gpu.cpu(), c_cpu)
    assert dg.neurons.ncut(g_gpu.edge_index, c_gpu, g_gpu.edge_weight) == pytest.approx(
        dg.neurons.ncut(g_cpu.edge_index, c_cpu, g_cpu.edge_weight))
    clusters = torch.cat([torch.tensor([0] * 4 + [1] * 16), torch.tensor([0, 1])])
    r = dg.neurons.lesion_importance(m, g_gpu, clusters.cuda(), dl, n_random=19, progress=False)
    assert r.groups[0]["acc_drop"] > 0.3
    m.cpu()
