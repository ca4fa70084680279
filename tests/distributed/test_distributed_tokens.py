"""Distributed extraction with ``pool='tokens'`` in one process (world size 1, no process
group): token rows, their labels, input indices and positions equal ``extract_features``'s; the
global ids of token rows; the depth profile of token rows; label values as ids. The same on two
gloo ranks is in ``test_distributed.py`` (one torchrun launch for the whole module)."""
import pytest
import torch

import dyngraph as dg

from ._tokens import TokenEncoder, TokenTexts, token_loader

D = pytest.importorskip("dyngraph.distributed")


def test_one_process_token_rows_equal_extract_features():
    model, loader = TokenEncoder().eval(), token_loader()
    for kw in ({}, {"per_class": 6, "seed": 2}):
        single = dg.extract_features(model, loader, ["emb", "block"], pool="tokens",
                                     progress=False, **kw)
        dist = D.distributed_extract_features(model, loader, ["emb", "block"], pool="tokens",
                                              progress=False, **kw)
        assert dist.positions is not None and dist.indices is not None
        assert torch.equal(dist.indices, single.indices)
        assert torch.equal(dist.positions, single.positions)
        assert torch.equal(dist.y, single.y)
        for name in single.names:
            assert torch.equal(dist[name], single[name])
        assert dist.meta["n_samples"] == single.n_samples == dist.n_samples
        assert dist.meta["shard"] == {"rank": 0, "world_size": 1, "rows": "tokens",
                                      "n_global": single.meta["n_inputs"]}
        assert torch.equal(D.token_ids(dist), torch.arange(single.n_samples))
    # independently of extract_features: every real token of the chosen inputs, in order
    ds = TokenTexts()
    want = [(i, t) for i in single.indices.unique().tolist() for t in range(len(ds.seqs[i]))]
    assert list(zip(dist.indices.tolist(), dist.positions.tolist())) == want
    assert dist.y.tolist() == [int(ds.labels[i]) for i, _ in want]
    with pytest.raises(ValueError, match="shard of token rows.*token_ids"):
        D.shard_ids(dist.meta)


def test_one_process_profile_of_token_rows():
    model, loader = TokenEncoder().eval(), token_loader()
    single = dg.extract_features(model, loader, ["emb", "block"], pool="tokens", progress=False)
    dist = D.distributed_extract_features(model, loader, ["emb", "block"], pool="tokens",
                                          progress=False)
    spec = dg.GraphSpec(k=3, backend="matmul")
    kw = dict(graph=spec, per_class=15, repeats=2, seed=4, progress=False)
    got = D.distributed_depth_profile(dist, **kw)
    ref = dg.depth_profile(single, ["modularity"], **kw)
    assert torch.equal(got.samples, ref.samples)


def test_token_ids_order_rows_by_input_then_position():
    f = dg.LayerFeatures({"h": torch.zeros(5, 2)}, torch.tensor([0, 0, 1, 1, 1]),
                         torch.tensor([9, 9, 2, 2, 2]), positions=torch.tensor([0, 1, 0, 1, 2]))
    assert D.token_ids(f).tolist() == [3, 4, 0, 1, 2]
    with pytest.raises(ValueError, match="token_ids needs LayerFeatures with indices and "
                                         "positions.*without them"):
        D.token_ids(dg.LayerFeatures({"h": torch.zeros(2, 2)}, torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="same \\(indices, positions\\)"):
        D.token_ids(dg.LayerFeatures({"h": torch.zeros(2, 2)}, torch.tensor([0, 1]),
                                     torch.tensor([3, 3]), positions=torch.tensor([1, 1])))


def test_profile_labels_are_ids_not_sizes():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = {"a": torch.randn(60, 6, generator=g) + 2 * torch.eye(6)[y]}
    big = torch.tensor([0, 1, 10 ** 9])[y]
    for kw in ({}, {"per_class": 12, "repeats": 2, "seed": 1}):
        ref = D.distributed_depth_profile(x, y=y, progress=False, **kw)
        got = D.distributed_depth_profile(x, y=big, progress=False, **kw)
        assert torch.equal(got.samples, ref.samples)
