"""Label and cluster values are ids, not sizes (issue 15): no tensor of the neuron analysis is
sized by the largest value. ``{0, 1, 10**9}`` runs in bounded memory and gives the result of
``{0, 1, 2}`` wherever only the grouping matters (label entropy, n-cut, the report's cluster
count, the partition drawing); the lesion runner's per-class axis holds the classes present,
and a label that cannot be a logit index is a named error."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dyngraph as dg

BIG = 10 ** 9


def test_label_entropy_of_label_values():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = torch.arange(60) % 3
    big = torch.tensor([0, 1, BIG])[y]
    ref = dg.neurons.label_entropy(scores, y, 12)
    assert torch.equal(dg.neurons.label_entropy(scores, big, 12), ref)
    assert torch.equal(dg.neurons.label_entropy(scores, y, 12, num_classes=7), ref)
    for j in range(5):  # scipy on the label counts of each column's top 12
        top = np.argsort(-scores[:, j].numpy(), kind="stable")[:12]
        assert float(ref[j]) == pytest.approx(stats.entropy(np.bincount(y[top].numpy())),
                                              abs=1e-12)
    with pytest.raises(ValueError, match="y holds labels up to 1000000000, so num_classes=3 is "
                                         "too small"):
        dg.neurons.label_entropy(scores, big, 12, num_classes=3)


def _graph():
    """Two 6-node cliques joined by one edge, plus a triangle joined to the second."""
    edges = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    edges += [(6 + i, 6 + j) for i in range(6) for j in range(i + 1, 6)]
    edges += [(12, 13), (13, 14), (12, 14), (5, 6), (11, 12)]
    ei = torch.tensor(edges).T
    return torch.cat([ei, ei.flip(0)], 1)


def ncut_by_hand(ei, clusters):
    total = 0.0
    for c in clusters.unique().tolist():
        inside = clusters == c
        src_in, dst_in = inside[ei[0]], inside[ei[1]]
        total += float((src_in & ~dst_in).sum()) / float(src_in.sum())
    return total


def test_ncut_of_cluster_values():
    ei = _graph()
    small = torch.tensor([0] * 6 + [1] * 6 + [2] * 3)
    big = torch.tensor([0, 1, BIG])[small]
    ref = dg.neurons.ncut(ei, small)
    assert ref == pytest.approx(ncut_by_hand(ei, small), rel=1e-12)
    assert dg.neurons.ncut(ei, big) == ref
    # per cluster the result is indexed by id: a gap gives zeros, a huge sparse axis an error
    per = dg.neurons.ncut(ei, small * 2, per_cluster=True)
    assert per.shape == (5,) and per[1::2].tolist() == [0.0, 0.0]
    assert torch.equal(per[::2], dg.neurons.ncut(ei, small, per_cluster=True))
    with pytest.raises(ValueError, match="clusters has 3 distinct values up to 1000000000"):
        dg.neurons.ncut(ei, big, per_cluster=True)
    with pytest.raises(ValueError, match="clusters \\[1000000001\\] have zero volume"):
        dg.neurons.ncut(ei, torch.cat([big, torch.tensor([BIG + 1])]), num_nodes=16)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4)).eval()


def _loader(values):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 5, generator=g)
    y = torch.tensor(values)[torch.arange(80) % len(values)]
    return DataLoader(TensorDataset(x, y), batch_size=32), x, y


def test_lesion_runner_per_class_axis_holds_the_classes_present():
    model = _mlp()
    loader, x, y = _loader([0, 3])                   # 4 logits, classes 1 and 2 absent
    runner = dg.neurons.LesionRunner(model, loader)
    assert runner.classes.tolist() == [0, 3] and runner.num_classes == 2
    masks = torch.ones(2, 8)
    masks[1, :4] = 0.0
    overall, per_class = runner.accuracy("0", masks)
    assert per_class.shape == (2, 2)
    with torch.no_grad():   # by hand: the lesion zeroes outputs 0-3 of layer '0'
        pred = [model(x).argmax(1), model[2](model[1](model[0](x) * masks[1]))
                .argmax(1)]
    for m in range(2):
        hits = pred[m] == y
        assert float(overall[m]) == pytest.approx(float(hits.double().mean()), abs=1e-12)
        want = [float(hits[y == c].double().mean()) for c in (0, 3)]
        assert per_class[m].tolist() == pytest.approx(want, abs=1e-12)
    # the importance test reports its classes by label
    graph = dg.neurons.neuron_graph(model, include_output=True)
    clusters = torch.arange(graph.num_nodes) % 2
    r = dg.neurons.lesion_importance(model, graph, clusters, loader, n_random=19,
                                     progress=False)
    assert r.meta["classes"] == [0, 3] and len(r.base_class_accuracy) == 2
    assert r.base_class_accuracy == pytest.approx(per_class[0].tolist(), abs=1e-12)
    for row in r.groups:
        assert row["class_drop_argmax"] == [0, 3][int(np.argmax(row["class_drops"]))]
    # a label that is not the index of a logit: a named error, in bounded memory
    big, _, _ = _loader([0, 1, BIG])
    with pytest.raises(ValueError, match="labels: the loader holds label 1000000000, but the "
                                         "model gives 4 logits"):
        dg.neurons.LesionRunner(model, big).accuracy()


def test_report_and_partition_drawing_of_cluster_values():
    from matplotlib.figure import Figure
    model = _mlp()
    graph = dg.neurons.neuron_graph(model, include_output=True)
    small = torch.arange(graph.num_nodes) % 3
    big = torch.tensor([0, 1, BIG])[small]
    figs, titles = [], []
    for clusters in (small, big):
        report = dg.neurons.NeuronReport(graph, clusters, dg.neurons.ncut(
            graph.edge_index, clusters, graph.edge_weight, graph.num_nodes))
        assert report.summary()["n_clusters"] == 3
        fig = dg.plot(report)
        assert isinstance(fig, Figure)
        figs.append(fig)
        titles.append(fig.axes[0].get_title())
    assert titles[0] == titles[1]
    points = [[c for c in f.axes[0].collections if type(c).__name__ == "PathCollection"][0]
              for f in figs]
    assert np.array_equal(points[0].get_offsets(), points[1].get_offsets())
    assert np.array_equal(points[0].get_facecolors(), points[1].get_facecolors())
    assert len({tuple(c) for c in points[0].get_facecolors()}) == 3
