"""The modularity the similarity measures compute on graphs they built themselves skips the
``O(E)`` undirected-graph contract check (issue 15), and its values are unchanged: they equal
``dg.modularity`` (the checked public function) on the same graphs, bit for bit."""
import importlib

import pytest
import torch

import dyngraph as dg

modularity_mod = importlib.import_module("dyngraph.measures._modularity")
similarity_mod = importlib.import_module("dyngraph.measures._similarity")


def data(seed=0, n=90):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    x = torch.randn(n, 8, generator=g, dtype=torch.float64) + 2 * torch.eye(8)[labels]
    y = torch.tanh(x @ torch.randn(8, 12, generator=g, dtype=torch.float64)) \
        + 0.5 * torch.randn(n, 12, generator=g, dtype=torch.float64)
    return x, y, labels


def checked_q(x, labels, k=3, symmetrize="mean", resolution=1.0):
    """Q of the reference snapshot through the public, checked path."""
    ei, w = dg.knn_edges(x, k)
    ei, w = dg.graphs.symmetrize(ei, w, x.shape[0], symmetrize)
    return dg.modularity(ei, labels, w, resolution=resolution)


@pytest.fixture
def contract_checks(monkeypatch):
    """Counts the O(E) undirected-graph checks."""
    calls = []
    real = modularity_mod.check_undirected

    def counting(*args, **kw):
        calls.append(args[0].shape[1])
        return real(*args, **kw)

    monkeypatch.setattr(modularity_mod, "check_undirected", counting)
    return calls


def test_own_graphs_skip_the_contract_check_and_give_the_same_q(contract_checks):
    x, y, labels = data()
    qx, qy = checked_q(x, labels), checked_q(y, labels)
    assert len(contract_checks) == 2                     # the public path checks (the oracle)
    contract_checks.clear()
    assert dg.measures.modularity_distance(x, y, labels) == abs(qx - qy)
    for sym in ("max", "mutual"):
        assert dg.measures.modularity_distance(x, y, labels, symmetrize=sym, resolution=0.7) \
            == abs(checked_q(x, labels, symmetrize=sym, resolution=0.7)
                   - checked_q(y, labels, symmetrize=sym, resolution=0.7))
    contract_checks.clear()
    s = similarity_mod.RepresentationSummary(x, ["modularity_distance"], labels,
                                             modularity_k=4)
    assert contract_checks == []
    assert s.q == checked_q(x, labels, k=4)
    contract_checks.clear()
    res = dg.measures.permutation_test("modularity_distance", x, y, labels=labels,
                                       permutations=20, seed=3)
    mats = dg.layer_matrix({"a": x, "b": y}, None, ["modularity_distance"], y=labels,
                           permutations=5)
    assert contract_checks == []                         # none of the runs checked its graphs
    # the null: b's rows permuted, each Q through the checked public path
    g = torch.Generator().manual_seed(3)
    perms = [torch.randperm(x.shape[0], generator=g) for _ in range(20)]
    brute = torch.tensor([abs(qx - checked_q(y[p], labels)) for p in perms],
                         dtype=torch.float64)
    torch.testing.assert_close(res.null, brute, atol=1e-12, rtol=0)
    assert res.value == abs(qx - qy)
    assert float(mats["modularity_distance"][0, 1]) == abs(qx - qy)


def test_a_directed_graph_is_still_checked_and_refused(contract_checks):
    x, y, labels = data(1)
    with pytest.raises(ValueError, match="modularity needs an undirected graph"):
        dg.measures.modularity_distance(x, y, labels, symmetrize=None)
    assert len(contract_checks) == 1
