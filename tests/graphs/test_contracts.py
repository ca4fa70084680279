"""Contracts of the graph helpers (issue 14): symmetrize's inputs, DynamicGraph's snapshots and
options, degenerate layers, and labels (float labels refused, label values never sizing memory).

Oracles: dense adjacency matrices (numpy), networkx modularity, relabelled inputs, and a plain
loop re-implementing the documented draw of balanced_indices."""
import warnings

import networkx as nx
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset
from torch_geometric.data import Data

import dyngraph as dg
from dyngraph.graphs._graph import DegenerateLayerWarning, rows_identical


def gen(seed):
    return torch.Generator().manual_seed(seed)


def dense(ei, w, n):
    a = np.zeros((n, n))
    np.add.at(a, (ei[0].numpy(), ei[1].numpy()), w.double().numpy())
    return a


# ------------------------------------------------------------------------------ symmetrize
def test_symmetrize_checks_its_inputs():
    ei = torch.tensor([[0, 1, 2], [1, 2, 5]])
    w = torch.tensor([0.5, 0.25, 1.0])
    with pytest.raises(ValueError, match=r"num_nodes=4.*\[0, 5\].*num_nodes > 5"):
        dg.graphs.symmetrize(ei, w, 4)
    with pytest.raises(ValueError, match="node ids"):
        dg.graphs.symmetrize(torch.tensor([[0, -1], [1, 0]]), w[:2], 4)
    with pytest.raises(ValueError, match=r"edge_weight must have shape \[E\]=\[3\]"):
        dg.graphs.symmetrize(ei, w[:2], 6)
    with pytest.raises(TypeError, match="edge_weight must be floating"):
        dg.graphs.symmetrize(ei, torch.ones(3, dtype=torch.long), 6)
    with pytest.raises(TypeError, match="edge_weight must be a torch.Tensor"):
        dg.graphs.symmetrize(ei, [0.5, 0.25, 1.0], 6)
    with pytest.raises(ValueError, match="NaN"):
        dg.graphs.symmetrize(ei, torch.tensor([0.5, float("nan"), 1.0]), 6)
    for bad in (6.0, True, "6"):
        with pytest.raises(TypeError, match="num_nodes"):
            dg.graphs.symmetrize(ei, w, bad)
    for how in ("min", torch.tensor(1), ["mean"]):
        with pytest.raises(ValueError, match="how must be one of"):
            dg.graphs.symmetrize(ei, w, 6, how=how)
    with pytest.raises(ValueError, match="same device"):
        dg.graphs.symmetrize(ei, w.to("meta"), 6)


@pytest.mark.parametrize("how", ["mean", "max", "add", "mutual"])
def test_symmetrize_matches_dense_definitions(how):
    n = 12
    src = torch.randint(0, n, (40,), generator=gen(1))
    dst = torch.randint(0, n, (40,), generator=gen(2))
    keep = src != dst
    ei = torch.unique(torch.stack([src[keep], dst[keep]]), dim=1)   # no repeated entries
    w = torch.rand(ei.shape[1], generator=gen(3), dtype=torch.float64)
    e2, w2 = dg.graphs.symmetrize(ei, w, n, how)
    a, got = dense(ei, w, n), dense(e2, w2, n)
    ref = {"mean": (a + a.T) / 2, "max": np.maximum(a, a.T), "add": a + a.T,
           "mutual": np.where((a > 0) & (a.T > 0), (a + a.T) / 2, 0.0)}[how]
    assert np.allclose(got, ref, rtol=0, atol=1e-15)
    # its output satisfies the modularity contract
    dg.modularity(e2, torch.arange(n) % 2, w2)


# ------------------------------------------------------------------------------ degenerate layers
def test_identical_rows_warn_naming_the_layer():
    y = torch.arange(30) % 3
    cases = [("const", torch.ones(30, 5), "cosine"),
             ("scaled", torch.arange(1.0, 31.0).unsqueeze(1) * torch.randn(1, 5, generator=gen(0)),
              "cosine"),
             ("zeros", torch.zeros(30, 4), "euclidean"),
             ("const_e", torch.full((30, 2, 3), 0.7), "euclidean")]
    for name, x, metric in cases:
        with pytest.warns(DegenerateLayerWarning, match=rf"layer '{name}'.*identical.*tie rule"):
            dg.graphs.build_snapshot(x, y, k=3, metric=metric, layer_name=name)
    # a positive factor is not "identical" for the Euclidean metric
    x = torch.arange(1.0, 31.0).unsqueeze(1) * torch.ones(1, 5)
    assert not rows_identical(x, "euclidean") and rows_identical(x, "cosine")
    # one row differing anywhere (even the last) is enough; so is a NumPy/out-of-core layer
    x = torch.ones(300, 4)
    x[-1, 2] = 1.01
    assert not rows_identical(x) and rows_identical(x[:-1])
    assert rows_identical(np.ones((300, 4), dtype=np.float32))
    with pytest.warns(DegenerateLayerWarning, match="layer 'mm'"):
        dg.graphs.build_snapshot(np.ones((30, 4), dtype=np.float32), y, k=3, layer_name="mm")
    assert issubclass(DegenerateLayerWarning, UserWarning)


def test_degenerate_warning_reaches_the_pipelines_and_spares_real_layers():
    y = torch.arange(60) % 3
    feats = {"dead": torch.zeros(60, 8) + 1.0,
             "live": torch.randn(60, 8, generator=gen(4)) + 3 * torch.eye(8)[y]}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        dg.DynamicGraph.from_features(feats, y=y, progress=False)
        dg.depth_profile(feats, y=y, progress=False)
    hits = [r for r in rec if issubclass(r.category, DegenerateLayerWarning)]
    assert len(hits) == 2 and all("'dead'" in str(r.message) for r in hits)


# ------------------------------------------------------------------------------ DynamicGraph
def _seq(y=None, seed=5):
    y = torch.arange(45) % 3 if y is None else y
    x = torch.randn(45, 6, generator=gen(seed))
    return dg.DynamicGraph.from_features({"a": x, "b": x + 4 * torch.eye(6)[torch.arange(45) % 3]},
                                         y=y, k=3, progress=False)


def test_dynamic_graph_checks_its_snapshots_and_options():
    seq = _seq()
    s = seq[0]
    # ids past num_nodes would silently land in the next layer of the batched union
    spill = Data(edge_index=s.edge_index.clone(), edge_weight=s.edge_weight, y=s.y,
                 num_nodes=s.num_nodes)
    spill.edge_index[:, :2] = torch.tensor([[44, 50], [50, 44]])
    with pytest.raises(ValueError, match=r"snapshot 0 .*edge ids in \[0, 50\].*num_nodes=45"):
        dg.DynamicGraph([spill, seq[1]]).modularity()
    # a one-direction snapshot
    ei, w = dg.knn_edges(torch.randn(45, 6, generator=gen(6)), 3)
    one_way = Data(edge_index=ei, edge_weight=w, y=s.y, num_nodes=45)
    with pytest.raises(ValueError, match="undirected"):
        dg.DynamicGraph([one_way]).modularity()
    with pytest.raises(ValueError, match="undirected"):
        dg.DynamicGraph([one_way]).modularity_null(permutations=2)
    neg = Data(edge_index=s.edge_index, edge_weight=-s.edge_weight, y=s.y, num_nodes=45)
    with pytest.raises(ValueError, match="negative edge weights"):
        dg.DynamicGraph([neg]).class_contributions()
    for bad in (float("nan"), -0.5, float("inf")):
        with pytest.raises(ValueError, match="resolution"):
            seq.modularity(resolution=bad)
        with pytest.raises(ValueError, match="resolution"):
            seq.modularity_null(permutations=2, resolution=bad)
    with pytest.raises(TypeError, match="seed"):
        seq.modularity_null(permutations=2, seed=1.5)
    with pytest.raises(ValueError, match="one \\[N\\] tensor per snapshot"):
        seq.modularity(communities=[s.y])
    with pytest.raises(TypeError, match="integer"):
        seq.modularity(communities=[s.y.float(), s.y.float()])


def test_dynamic_graph_label_values_do_not_matter():
    small = torch.arange(45) % 3
    big = torch.tensor([7, 0, 10 ** 10])[small]
    a, b = _seq(small), _seq(big)
    assert torch.equal(a.modularity().values, b.modularity().values)
    assert torch.equal(a.modularity_null(permutations=4).samples,
                       b.modularity_null(permutations=4).samples)
    # networkx agrees on the layer graphs, with the original label values as communities
    for snap, q in zip(b, b.modularity().values.tolist()):
        g = nx.Graph()
        g.add_nodes_from(range(45))
        for (i, j), wt in zip(snap.edge_index.t().tolist(), snap.edge_weight.tolist()):
            g.add_edge(i, j, weight=wt)
        parts = [set((big == c).nonzero().flatten().tolist()) for c in big.unique()]
        assert abs(q - nx.community.modularity(g, parts, weight="weight")) < 1e-12
    with pytest.raises(ValueError, match="return_inverse"):
        b.class_contributions()
    # small gaps keep the label-indexed columns: label 1 absent → a zero column
    gap = _seq(small * 2)
    c = gap.class_contributions()
    assert c.shape == (2, 5) and bool((c[:, 1::2] == 0).all())
    assert torch.allclose(c.sum(1), a.modularity().values, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------ labels at entry
def _draw(labels, per_class, seed):
    """The documented draw: for each class in increasing order, its positions in increasing
    order, permuted by randperm(count) of one generator seeded once; the first per_class kept."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in sorted(set(labels.tolist())):
        pos = [i for i, v in enumerate(labels.tolist()) if v == c]
        perm = torch.randperm(len(pos), generator=g)[:per_class].tolist()
        out += [pos[p] for p in perm]
    return sorted(out)


def test_balanced_indices_labels():
    y = torch.randint(0, 5, (200,), generator=gen(7))
    for seed in (0, 3):
        assert dg.capture.balanced_indices(y, per_class=6, seed=seed).tolist() == \
            _draw(y, 6, seed)
    big = torch.tensor([0, 12, 10 ** 9, 10 ** 12, 10 ** 15])[y]   # (same class order)
    assert torch.equal(dg.capture.balanced_indices(big, per_class=6, seed=1),
                       dg.capture.balanced_indices(y, per_class=6, seed=1))
    assert torch.equal(dg.capture.balanced_indices(big, n_samples=23, seed=2),
                       dg.capture.balanced_indices(y, n_samples=23, seed=2))
    for floats in (y.float(), y.double().tolist(), np.asarray(y, dtype=np.float32)):
        with pytest.raises(TypeError, match="integer class labels"):
            dg.capture.balanced_indices(floats, per_class=2)
    with pytest.raises(ValueError, match="empty"):
        dg.capture.balanced_indices(torch.tensor([], dtype=torch.long), per_class=1)
    with pytest.raises(ValueError, match="empty"):
        dg.capture.balanced_indices(torch.tensor([], dtype=torch.long), n_samples=1)
    with pytest.raises(TypeError, match="seed"):
        dg.capture.balanced_indices(y, per_class=2, seed=1.5)
    # [N, 1] labels are flattened; any other 2-D shape is refused
    assert torch.equal(dg.capture.balanced_indices(y.unsqueeze(1), per_class=3),
                       dg.capture.balanced_indices(y, per_class=3))
    with pytest.raises(ValueError, match="one label per sample"):
        dg.modularity(torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0, 1], [1, 0]]),
                      num_nodes=4)


class _Targets(torch.utils.data.Dataset):
    def __init__(self, targets):
        self.x = torch.randn(len(targets), 3, generator=gen(8))
        self.targets = targets

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0


def test_dataset_labels_refuse_float_labels_everywhere():
    from dyngraph.capture._extract import dataset_labels
    model = torch.nn.Sequential(torch.nn.Linear(3, 4))
    for ds in (TensorDataset(torch.randn(12, 3), torch.arange(12.0) % 3),
               _Targets([0.0, 1.5, 2.0, 1.0] * 3), _Targets(np.arange(12) % 3 * 1.0)):
        with pytest.raises(TypeError, match="integer class labels"):
            dataset_labels(ds)
        with pytest.raises(TypeError, match="integer class labels"):
            dg.extract_features(model, DataLoader(ds, batch_size=4), per_class=2,
                                progress=False)
    ok = _Targets(list(range(3)) * 4)
    assert dataset_labels(ok).tolist() == list(range(3)) * 4
    assert dataset_labels(Subset(ok, [1, -1])).tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"Subset's indices must lie in \[0, 12\)"):
        dataset_labels(Subset(ok, [0, 12]))
