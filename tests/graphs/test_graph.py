import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

import dyngraph as dg
from dyngraph.testing import reference_adjacency, reference_modularity
from tests.conftest import clustered


def dense(ei, w, n):
    a = torch.zeros(n, n, dtype=torch.float64)
    a[ei[0], ei[1]] = w.double()
    return a


def test_symmetrize_mean_is_reference_convention():
    x, y = clustered(20, 3, 8, 1.0)
    ei, w = dg.knn_edges(x.double(), 3)
    a_dir = dense(ei, w, 60)
    for how, expect in [("mean", (a_dir + a_dir.T) / 2), ("add", a_dir + a_dir.T),
                        ("max", torch.maximum(a_dir, a_dir.T))]:
        e2, w2 = dg.graphs.symmetrize(ei, w, 60, how)
        assert torch.allclose(dense(e2, w2, 60), expect)
    e2, w2 = dg.graphs.symmetrize(ei, w, 60, "mutual")
    both = (a_dir > 0) & (a_dir.T > 0)
    assert torch.allclose(dense(e2, w2, 60), torch.where(both, (a_dir + a_dir.T) / 2, 0.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_snapshot_reproduces_reference_pipeline(seed):
    x, y = clustered(25, 4, 10, 0.8, seed=seed)
    x = x.double()
    snap = dg.graphs.build_snapshot(x, y, k=3)
    a_ref = reference_adjacency(x.numpy(), 3)
    assert np.allclose(dense(snap.edge_index, snap.edge_weight, 100).numpy(), a_ref)
    q = dg.modularity(snap.edge_index, y, snap.edge_weight)
    assert abs(q - reference_modularity(x.numpy(), y.numpy(), 3)) < 1e-6


def make_features(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(120) % 4
    centres = torch.randn(4, 12, generator=g)
    return {f"layer{i}": torch.randn(120, 12, generator=g) + s * centres[y]
            for i, s in enumerate([0.0, 0.5, 1.0, 3.0])}, y


def test_dynamic_graph_sequence_protocol(tmp_path):
    feats, y = make_features()
    seq = dg.DynamicGraph.from_features(feats, y=y, k=3, progress=False)
    assert len(seq) == 4 and seq.layers == list(feats)
    assert isinstance(seq[0], Data) and seq[0].layer_name == "layer0" and seq[2].layer_index == 2
    assert isinstance(seq[1:3], dg.DynamicGraph) and seq[1:3].layers == ["layer1", "layer2"]
    assert seq["layer3"].layer_index == 3
    assert [s.layer_index for s in seq] == [s.layer_index for s in seq] == [0, 1, 2, 3]
    it1, it2 = iter(seq), iter(seq)  # independent generators, no shared cursor
    next(it1)
    assert next(it2).layer_index == 0
    assert all(s.is_undirected() and not s.has_self_loops() for s in seq)
    b = seq.to_batch()
    assert isinstance(b, Batch) and b.num_graphs == 4 and b.num_nodes == 480
    assert seq.to("cpu")[0].edge_index.device.type == "cpu"
    path = tmp_path / "seq.pt"
    seq.save(path)
    back = dg.DynamicGraph.load(path)
    assert back.layers == seq.layers and back.meta["k"] == 3
    assert torch.equal(back[2].edge_index, seq[2].edge_index)
    assert torch.allclose(back.modularity().values, seq.modularity().values)
    with pytest.raises(KeyError, match="no layer"):
        seq["nope"]


def test_batched_modularity_equals_per_layer_and_rises():
    feats, y = make_features()
    seq = dg.DynamicGraph.from_features(feats, y=y, k=3, progress=False)
    curve = seq.modularity()
    assert curve.layers == list(feats)
    per = [dg.modularity(s.edge_index, s.y, s.edge_weight) for s in seq]
    assert np.allclose(curve.values.numpy(), per, atol=1e-12)
    assert curve.values[-1] > curve.values[0] + 0.4
    contrib = seq.class_contributions()
    assert contrib.shape == (4, 4)
    assert torch.allclose(contrib.sum(1), curve.values)
    assert curve.meta["k"] == 3 and curve.meta["metric"] == "cosine"


def test_from_layer_features_and_keep_x():
    feats, y = make_features()
    lf = dg.LayerFeatures(feats, y)
    seq = dg.DynamicGraph.from_features(lf, k=4, keep_x=True, progress=False)
    assert seq[0].x.shape == (120, 12) and seq.meta["k"] == 4


def test_multidim_features_are_flattened():
    x = torch.randn(30, 2, 3, 3)
    snap = dg.graphs.build_snapshot(x, torch.arange(30) % 3, k=2, keep_x=True)
    assert snap.x.shape == (30, 18)


def test_depth_profile_modularity_repeats():
    feats, y = make_features()
    p = dg.depth_profile(feats, ["modularity"], y=y, per_class=20, repeats=4, seed=0,
                         progress=False)
    c = p["modularity"]
    assert p.samples.shape == (4, 4, 1)
    assert torch.allclose(c.values, p.samples[:, :, 0].mean(0))
    assert torch.allclose(c.errors, torch.tensor(np.std(p.samples[:, :, 0].numpy(), axis=0,
                                                        ddof=1)))
    assert p.meta["n_samples"] == 80 and p.meta["repeats"] == 4
    assert not torch.allclose(p.samples[0], p.samples[1])  # different resamplings
    # Each repeat is the DynamicGraph of its resampling, bit for bit.
    idx = dg.capture.balanced_indices(y, per_class=20, seed=2)
    seq = dg.DynamicGraph.from_features({n: f[idx] for n, f in feats.items()}, y=y[idx],
                                        progress=False)
    assert torch.equal(p.samples[2, :, 0], seq.modularity().values)


def test_bad_input():
    feats, y = make_features()
    with pytest.raises(ValueError, match="empty"):
        dg.DynamicGraph.from_features({}, y=y)
    with pytest.raises(ValueError, match="y is required"):
        dg.DynamicGraph.from_features(feats)
    with pytest.raises(ValueError, match="one label per sample"):
        dg.DynamicGraph.from_features(feats, y=y[:-1], progress=False)
    with pytest.raises(ValueError, match="at least 2 classes"):
        dg.DynamicGraph.from_features(feats, y=torch.zeros(120, dtype=torch.long),
                                      progress=False)
    with pytest.raises(TypeError, match="floating-point"):
        dg.DynamicGraph.from_features({"a": torch.ones(120, 3, dtype=torch.long)}, y=y,
                                      progress=False)
    bad = feats["layer0"].clone()
    bad[5, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        dg.DynamicGraph.from_features({"a": bad}, y=y, progress=False)
    with pytest.raises(ValueError, match="smaller than the number of samples"):
        dg.DynamicGraph.from_features(feats, y=y, k=120, progress=False)
    with pytest.raises(ValueError, match="same device"):
        dg.DynamicGraph.from_features(feats, y=y.to("meta"), progress=False)
    with pytest.raises(ValueError, match="symmetrize"):
        dg.DynamicGraph.from_features(feats, y=y, symmetrize="avg", progress=False)
    with pytest.raises(TypeError, match="features"):
        dg.DynamicGraph.from_features([feats["layer0"]], y=y)
    with pytest.raises(ValueError, match="repeats"):
        dg.depth_profile(feats, ["modularity"], y=y, repeats=3)


def test_knn_options_pass_through_to_the_snapshots():
    from tests.conftest import clustered
    x, y = clustered(40, 4, 24, 1.0, seed=4)
    ei, w = dg.knn_edges(x, 3, backend="matmul", col_chunk_size=48, precision="bf16",
                         candidates=12)
    snap = dg.graphs.build_snapshot(x, y, k=3, backend="matmul", col_chunk_size=48, precision="bf16",
                             candidates=12, symmetrize="add")
    ref_ei, ref_w = dg.graphs.symmetrize(ei, w, x.shape[0], "add")
    assert torch.equal(snap.edge_index, ref_ei) and torch.equal(snap.edge_weight, ref_w)
    seq = dg.DynamicGraph.from_features({"a": x}, y=y, k=3, precision="bf16", progress=False)
    assert seq.meta["precision"] == "bf16"
    spec = dg.GraphSpec(k=3, precision="fp16", candidates=8)
    profile = dg.depth_profile({"a": x}, ["modularity"], y=y, graph=spec, progress=False)
    assert profile.meta["graph"]["precision"] == "fp16"
    snap = dg.graphs.build_snapshot(x, y, k=3, precision="fp16", candidates=8)
    q = dg.modularity(snap.edge_index, y, snap.edge_weight)
    assert abs(profile["modularity"].values.item() - q) < 1e-12
    with pytest.raises(ValueError, match="precision"):
        dg.graphs.build_snapshot(x, y, precision="int8")
