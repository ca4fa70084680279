"""The batched label-permutation null of the 'modularity' measure equals one call per
permutation, bit for bit, in one chunk or many, with self-loops and with sparse label values."""
import pytest
import torch

import dyngraph as dg
import dyngraph.measures._modularity as M
from dyngraph.measures._registry import get


def _graph(n=60, d=5, k=4, seed=0, loops=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, d, generator=g) + 2 * torch.eye(d)[y]
    snap = dg.graphs.build_snapshot(x, y, k=k)
    if loops:  # a self-loop counts twice in the strengths (networkx's convention)
        ei = torch.cat([snap.edge_index, torch.tensor([[0, 5], [0, 5]])], 1)
        snap.edge_index, snap.edge_weight = ei, torch.cat([snap.edge_weight,
                                                          torch.tensor([0.3, 0.7])])
    return x, y, snap


@pytest.mark.parametrize("loops", [False, True])
@pytest.mark.parametrize("slots", [M.NULL_SLOTS, 1000, 1])
@pytest.mark.parametrize("values", [(0, 1, 2), (4, 10**9, 7)])
@pytest.mark.parametrize("mixing", [M.MIXING_SLOTS, 8])  # the mixing-matrix pass, and not
def test_batched_null_equals_one_call_per_permutation(monkeypatch, loops, slots, values, mixing):
    monkeypatch.setattr(M, "NULL_SLOTS", slots)
    monkeypatch.setattr(M, "MIXING_SLOTS", mixing)
    x, y, snap = _graph(loops=loops)
    y = torch.tensor(values)[y]
    gen = torch.Generator().manual_seed(1)
    ys = torch.stack([y[torch.randperm(len(y), generator=gen)] for _ in range(23)])
    m = get("modularity")
    batched = m.null(x, ys, snap)
    one_by_one = torch.tensor([m.fn(x, row, snap) for row in ys], dtype=torch.float64)
    assert batched.dtype == torch.float64 and batched.shape == (23,)
    assert torch.equal(batched, one_by_one)


def test_batched_null_checks_its_shape():
    x, y, snap = _graph()
    with pytest.raises(ValueError, match=r"ys must be \[P, 60\]"):
        get("modularity").null(x, y, snap)


def test_profile_null_still_equals_the_dynamic_graph_null():
    x, y, _ = _graph(n=90)
    feats = {"a": x, "b": x + 0.5 * torch.randn(90, 5, generator=torch.Generator().manual_seed(3))}
    prof = dg.depth_profile(feats, ["modularity"], y=y, graph=dg.GraphSpec(k=4),
                            null_permutations=30, seed=7, progress=False)
    seq = dg.DynamicGraph.from_features(feats, y=y, k=4, progress=False)
    null = seq.modularity_null(permutations=30, seed=7)
    assert torch.equal(prof.samples[0, :, 1].to(torch.float64), null.values.to(torch.float64))


def test_register_refuses_a_null_where_it_cannot_apply():
    with pytest.raises(ValueError, match="null= is a callable"):
        dg.measures.register("no_labels_null", labels=False, null=lambda x, ys, g: ys)
    with pytest.raises(ValueError, match="null= is a callable"):
        dg.measures.register("pair_null", kind="pair", null=lambda x, ys, g: ys)
