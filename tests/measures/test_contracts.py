"""Contracts of the modularity and community helpers (issue 14): undirected input, weights >= 0,
no edge across graphs in batch mode, a finite resolution, labels whose values never size memory.

Oracles: networkx (modularity, on the graph the stored entries sum to), scikit-learn (NMI/ARI),
closed forms and relabelled inputs (only which nodes share a label may matter)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.utils import to_undirected

import dyngraph as dg
import dyngraph.measures._modularity as M

ROOT = Path(__file__).resolve().parents[2]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_undirected(n=40, p=0.15, seed=0):
    mask = torch.triu(torch.rand(n, n, generator=gen(seed)) < p, diagonal=1)
    src, dst = mask.nonzero().t()
    w = torch.rand(src.numel(), generator=gen(seed + 1), dtype=torch.float64) + 0.1
    return to_undirected(torch.stack([src, dst]), w, num_nodes=n)


def nx_q(ei, w, comm, n, resolution=1.0):
    """networkx modularity of the undirected graph whose adjacency the stored entries sum to
    (each unordered pair {i, j}, i != j, carries A[i, j]; a self-loop carries A[i, i])."""
    a = np.zeros((n, n))
    np.add.at(a, (ei[0].numpy(), ei[1].numpy()), w.numpy())
    assert np.allclose(a, a.T)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for i, j in zip(*np.nonzero(np.triu(a))):
        g.add_edge(int(i), int(j), weight=float(a[i, j]))
    parts = [set(np.flatnonzero(comm.numpy() == c).tolist()) for c in np.unique(comm.numpy())]
    return nx.community.modularity(g, parts, weight="weight", resolution=resolution)


# ------------------------------------------------------------------------------ undirected input
def test_one_direction_knn_edges_are_refused_and_symmetrized_match_networkx():
    x = torch.randn(60, 8, generator=gen(0))
    y = torch.arange(60) % 3
    ei, w = dg.knn_edges(x, 3)
    for fn in (dg.modularity, dg.measures.community_contributions):
        with pytest.raises(ValueError, match=r"undirected.*dg\.graphs\.symmetrize"):
            fn(ei, y, w)
        with pytest.raises(ValueError, match="undirected"):
            fn(ei, y)  # unit weights: the structure alone is one-way
    e2, w2 = dg.graphs.symmetrize(ei, w, 60)
    assert abs(dg.modularity(e2, y, w2) - nx_q(e2, w2.double(), y, 60)) < 1e-12


@pytest.mark.parametrize("case", ["one_edge", "cycle", "one_missing", "weight_differs"])
def test_small_asymmetries_are_named(case):
    ei, w = random_undirected(seed=3)
    comm = torch.arange(40) % 4
    if case == "one_edge":      # a single one-way entry
        ei, w = torch.tensor([[0], [1]]), torch.tensor([1.0], dtype=torch.float64)
        comm = torch.tensor([0, 1])
    elif case == "cycle":       # in and out strengths agree at every node, A != Aᵀ
        ei = torch.tensor([[0, 1, 2], [1, 2, 0]])
        w = torch.ones(3, dtype=torch.float64)
        comm = torch.tensor([0, 0, 1])
    elif case == "one_missing":  # one reverse entry dropped out of hundreds
        ei, w = ei[:, 1:], w[1:]
    else:                       # same structure, one weight off by a relative 1e-6
        w = w.clone()
        w[5] *= 1 + 1e-6
    with pytest.raises(ValueError, match=r"1 of the|no reverse entry") as info:
        dg.modularity(ei, comm, w, num_nodes=comm.numel())
    assert "undirected" in str(info.value)


def test_order_duplicates_and_rounding_are_accepted():
    ei, w = random_undirected(seed=5)
    comm = torch.randint(0, 3, (40,), generator=gen(6))
    q = dg.modularity(ei, comm, w)
    assert abs(q - nx_q(ei, w, comm, 40)) < 1e-12
    perm = torch.randperm(ei.shape[1], generator=gen(7))
    assert abs(dg.modularity(ei[:, perm], comm, w[perm]) - q) < 1e-12
    # {0, 1} stored as 0→1 twice (0.3 + 0.7) and 1→0 once (1.0): A is symmetric
    ei_d = torch.tensor([[0, 0, 1, 1, 2], [1, 1, 0, 2, 1]])
    w_d = torch.tensor([0.3, 0.7, 1.0, 0.5, 0.5], dtype=torch.float64)
    c = torch.tensor([0, 0, 1])
    assert abs(dg.modularity(ei_d, c, w_d) - nx_q(ei_d, w_d, c, 3)) < 1e-12
    # the exact comparison agrees: repeated entries add up, a zero entry is no entry
    ei_z = torch.cat([ei_d, torch.tensor([[0], [2]])], 1)
    w_z = torch.cat([w_d, torch.zeros(1, dtype=torch.float64)])
    assert M._exact_undirected(ei_z, w_z, 3, "x") is None
    assert abs(dg.modularity(ei_z, c, w_z) - nx_q(ei_d, w_d, c, 3)) < 1e-12
    with pytest.raises(ValueError, match=r"1 of the 5 entries.*0→2"):
        M._exact_undirected(ei_z, w_z + (torch.arange(6) == 5), 3, "x")


def test_valid_graph_never_reaches_the_exact_fallback(monkeypatch):
    calls = []
    monkeypatch.setattr(M, "_exact_undirected", lambda *a: calls.append(a))
    for seed in range(5):
        x = torch.randn(300, 16, generator=gen(seed))
        snap = dg.graphs.build_snapshot(x, torch.arange(300) % 5, k=4)
        dg.modularity(snap.edge_index.clone(), snap.y, snap.edge_weight.clone())
    assert calls == []
    M.check_undirected(torch.tensor([[0], [1]]), None, 2)  # asymmetric: the fallback runs
    assert len(calls) == 1


def test_a_checked_graph_changed_in_place_is_checked_again():
    ei, w = random_undirected(seed=8)
    comm = torch.arange(40) % 2
    dg.modularity(ei, comm, w)
    ei[1, 0] = (ei[1, 0] + 1) % 40 if ei[0, 0] != (ei[1, 0] + 1) % 40 else (ei[1, 0] + 2) % 40
    with pytest.raises(ValueError, match="undirected"):
        dg.modularity(ei, comm, w)
    w2 = w.clone()
    e2, _ = random_undirected(seed=8)
    dg.modularity(e2, comm, w2)
    w2[0] += 1.0
    with pytest.raises(ValueError, match="undirected"):
        dg.modularity(e2, comm, w2)


# ------------------------------------------------------------------------------ other contracts
def test_negative_weights_batch_resolution_and_num_nodes():
    ei, w = random_undirected(seed=9)
    comm = torch.arange(40) % 3
    neg = w.clone()
    neg[0] = neg[1] = -0.5   # both directions, so the graph is still undirected
    for fn in (dg.modularity, dg.measures.community_contributions):
        with pytest.raises(ValueError, match=r"edge_weight must be >= 0.*2 negative"):
            fn(ei, comm, neg)
    # batch: an edge across the two graphs
    e2 = torch.cat([ei, ei + 40, torch.tensor([[3, 45], [45, 3]])], 1)
    w2 = torch.cat([w, w, torch.ones(2, dtype=torch.float64)])
    batch = torch.arange(2).repeat_interleave(40)
    with pytest.raises(ValueError, match=r"across graphs.*3→45"):
        dg.modularity(e2, torch.cat([comm, comm]), w2, batch=batch)
    with pytest.raises(ValueError, match="across graphs"):
        dg.measures.community_contributions(e2, torch.cat([comm, comm]), w2, batch=batch)
    ok = dg.modularity(e2[:, :-2], torch.cat([comm, comm]), w2[:-2], batch=batch)
    assert torch.allclose(ok, torch.full((2,), nx_q(ei, w, comm, 40), dtype=torch.float64),
                          rtol=0, atol=1e-12)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="resolution"):
            dg.modularity(ei, comm, w, resolution=bad)
    for bad in ("1", True, None, torch.tensor(1.0)):
        with pytest.raises(TypeError, match="resolution"):
            dg.modularity(ei, comm, w, resolution=bad)
    # γ = 0: the coverage; networkx agrees; numpy scalars are numbers
    assert abs(dg.modularity(ei, comm, w, resolution=0) - nx_q(ei, w, comm, 40, 0.0)) < 1e-12
    assert dg.modularity(ei, comm, w, resolution=np.float32(0.5)) == \
        dg.modularity(ei, comm, w, resolution=0.5)
    for bad in (40.0, True, "40"):
        with pytest.raises(TypeError, match="num_nodes"):
            dg.modularity(ei, comm, w, num_nodes=bad)
    # graph ids that would size a [10**9, C] result
    with pytest.raises(ValueError, match=r"batch has 2 distinct values.*return_inverse"):
        dg.modularity(e2[:, :-2], torch.cat([comm, comm]), w2[:-2],
                      batch=torch.tensor([0, 10 ** 9]).repeat_interleave(40))


# ------------------------------------------------------------------------------ label values
def test_huge_label_values_give_the_relabelled_q_with_small_tensors(monkeypatch):
    ei, w = random_undirected(n=30, seed=10)
    small = torch.randint(0, 3, (30,), generator=gen(11))
    big = torch.tensor([0, 1, 10 ** 9])[small]
    sizes = []
    real = M.community_sums

    def spy(*a, **k):   # records the slot count, and refuses a huge one before allocating it
        sizes.append(a[3])
        assert a[3] <= 30, f"community_sums asked for {a[3]} community slots"
        return real(*a, **k)
    monkeypatch.setattr(M, "community_sums", spy)
    q_small, q_big = dg.modularity(ei, small, w), dg.modularity(ei, big, w)
    assert q_big == q_small and abs(q_small - nx_q(ei, w, small, 30)) < 1e-12
    assert max(sizes) == 3   # the scatter has one slot per distinct label
    # a class axis indexed by label value would be 10**9 long: refused with the fix
    with pytest.raises(ValueError, match=r"return_inverse=True"):
        dg.measures.community_contributions(ei, big, w)
    with pytest.raises(ValueError, match="return_inverse"):
        dg.measures.class_mixing(ei, big, w)
    # small gaps keep the label-indexed axis: label 2 absent → a zero term
    gap = torch.where(small == 2, 3, small)
    c = dg.measures.community_contributions(ei, gap, w)
    assert c.shape == (4,) and c[2] == 0 and abs(float(c.sum()) - q_small) < 1e-12


def test_scalar_community_measures_ignore_label_values():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    x = torch.randn(90, 6, generator=gen(12)) + 3 * torch.eye(6)[torch.arange(90) % 3]
    small = torch.arange(90) % 3
    big = torch.tensor([5, 10 ** 12, 7])[small]
    snap = dg.graphs.build_snapshot(x, small, k=4)
    for name in ("modularity", "graph_purity", "knn_purity", "mixing_ratio"):
        fn = dg.measures.get(name).fn
        assert fn(x, big, snap) == fn(x, small, snap), name
    assert dg.measures.graph_purity(snap.edge_index, big, snap.edge_weight) == \
        dg.measures.graph_purity(snap.edge_index, small, snap.edge_weight)
    det = dg.measures.detect_communities(snap.edge_index, snap.edge_weight, 90)
    assert dg.measures.normalized_mutual_info(det, big) == pytest.approx(
        normalized_mutual_info_score(small.numpy(), det.numpy()), abs=1e-12)
    assert dg.measures.adjusted_rand_index(det, big) == pytest.approx(
        adjusted_rand_score(small.numpy(), det.numpy()), abs=1e-12)
    with pytest.raises(ValueError, match="return_inverse"):
        dg.measures.knn_purity(x, big, per_class=True)
    with pytest.raises(ValueError, match="return_inverse"):
        dg.measures.graph_purity(snap.edge_index, big, snap.edge_weight, per_class=True)


def test_label_pipeline_runs_in_bounded_memory():
    """{0, 1, 10**9} once asked for gigabytes: in a process whose address space is capped 4 GB
    above what torch needs at start, every label entry point still runs and matches the
    relabelled result."""
    script = textwrap.dedent("""
        import re, resource, torch, dyngraph as dg
        torch.set_num_threads(1)
        vm = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
        cap = vm * 1024 + (4 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            torch.empty(2 * 10 ** 9, dtype=torch.float64)   # 16 GB: must not fit
            raise SystemExit("the cap does not hold")
        except RuntimeError:
            pass
        g = torch.Generator().manual_seed(0)
        small = torch.arange(120) % 3
        big = torch.tensor([0, 1, 10 ** 9])[small]
        feats = {"a": torch.randn(120, 8, generator=g) + 2 * torch.eye(8)[small],
                 "b": torch.randn(120, 8, generator=g)}
        out = {}
        for name, y in (("small", small), ("big", big)):
            seq = dg.DynamicGraph.from_features(feats, y=y, k=3, progress=False)
            snap = seq[0]
            out[name] = (
                dg.modularity(snap.edge_index, y, snap.edge_weight),
                seq.modularity().values.tolist(),
                seq.modularity_null(permutations=5).samples.tolist(),
                dg.depth_profile(feats, ["modularity", "graph_purity", "knn_purity",
                                         "mixing_ratio"], y=y, per_class=30, repeats=2,
                                 progress=False).samples.tolist(),
                sorted(dg.capture.balanced_indices(y, per_class=10, seed=1).tolist()))
        assert out["small"] == out["big"], (out["small"], out["big"])
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


# ------------------------------------------------------------------------------ community helpers
def test_community_helpers_contracts():
    ei, w = random_undirected(n=30, seed=13)
    y = torch.arange(30) % 3
    # negative node ids used to index y[-1] silently
    bad = ei.clone()
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="node ids >= 0"):
        dg.measures.class_mixing(bad, y, w)
    with pytest.raises(ValueError, match="node ids >= 0"):
        dg.measures.graph_purity(bad, y, w)
    neg = w.clone()
    neg[0] = -1.0
    with pytest.raises(ValueError, match="class_mixing needs non-negative"):
        dg.measures.class_mixing(ei, y, neg)
    # batch: an edge across graphs
    e2 = torch.cat([ei, ei + 30, torch.tensor([[0], [31]])], 1)
    w2 = torch.cat([w, w, torch.ones(1, dtype=torch.float64)])
    batch = torch.arange(2).repeat_interleave(30)
    for fn in (dg.measures.class_mixing, dg.measures.graph_purity):
        with pytest.raises(ValueError, match="across graphs"):
            fn(e2, torch.cat([y, y]), w2, batch=batch)
    for bad_n in (30.0, True):
        with pytest.raises(TypeError, match="num_nodes"):
            dg.measures.class_mixing(ei, y, w, num_nodes=bad_n)
    # mixing ratio: the matrix must be what class_mixing of an undirected graph gives
    mix = dg.measures.class_mixing(ei, y, w)
    assert torch.allclose(dg.measures.mixing_ratio(mix),
                          mix / torch.outer(mix.sum(1), mix.sum(1)), rtol=0, atol=1e-15)
    asym = mix.clone()
    asym[0, 1] += 0.01
    asym[0, 0] -= 0.01
    with pytest.raises(ValueError, match="symmetric"):
        dg.measures.mixing_ratio(asym)
    with pytest.raises(ValueError, match="total-normalised"):
        dg.measures.mixing_ratio(dg.measures.class_mixing(ei, y, w, normalize=None))
    with pytest.raises(ValueError, match="finite"):
        dg.measures.mean_mixing_ratio(torch.full((2, 2), float("nan")))
    for t in (float("nan"), float("inf"), True, 0):
        with pytest.raises(ValueError, match="threshold"):
            dg.measures.separation_depth(mix.unsqueeze(0), threshold=t)
    # detection options
    for res in (float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="resolution"):
            dg.measures.detect_communities(ei, w, resolution=res)
    with pytest.raises(TypeError, match="seed"):
        dg.measures.detect_communities(ei, w, seed=1.5)
    with pytest.raises(ValueError, match="n_iterations"):
        dg.measures.detect_communities(ei, w, n_iterations=0)
    with pytest.raises(TypeError, match="per_class"):
        dg.measures.graph_purity(ei, y, w, per_class="yes")


def test_community_evolution_checks_options_before_detecting():
    y = torch.arange(60) % 3
    x = torch.randn(60, 6, generator=gen(14))
    seq = dg.DynamicGraph.from_features({"a": x, "b": x + 4 * torch.eye(6)[y]}, y=y,
                                        progress=False)
    for kw, err in (({"seed": 0.5}, TypeError), ({"separation_threshold": float("nan")},
                                                 ValueError),
                    ({"progress": "no"}, TypeError), ({"resolution": float("inf")},
                                                      ValueError)):
        with pytest.raises(err, match=next(iter(kw))):
            dg.measures.community_evolution(seq, **kw)
