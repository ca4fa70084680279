import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.utils import to_undirected

import dyngraph as dg


def random_graph(n, p, seed, weighted=True, self_loops=False):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, n, generator=g) < p
    mask = torch.triu(mask, diagonal=0 if self_loops else 1)
    src, dst = mask.nonzero().t()
    w = torch.rand(src.numel(), generator=g, dtype=torch.float64) + 0.1 if weighted else None
    ei, w = to_undirected(torch.stack([src, dst]), w, num_nodes=n)
    return ei, w


def nx_modularity(ei, w, comm, n, resolution=1.0):
    G = nx.Graph()
    G.add_nodes_from(range(n))
    ws = w.tolist() if w is not None else [1.0] * ei.shape[1]
    for (a, b), ww in zip(ei.t().tolist(), ws):
        G.add_edge(a, b, weight=ww)
    parts = [set((comm == c).nonzero().flatten().tolist()) for c in comm.unique()]
    return nx.community.modularity(G, parts, weight="weight", resolution=resolution)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("weighted", [True, False])
def test_matches_networkx(seed, weighted):
    n = 80
    ei, w = random_graph(n, 0.08, seed, weighted)
    comm = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(seed + 100))
    q = dg.modularity(ei, comm, w, num_nodes=n)
    assert abs(q - nx_modularity(ei, w, comm, n)) < 1e-6


def test_matches_networkx_with_self_loops_and_resolution():
    n = 40
    ei, w = random_graph(n, 0.2, 11, True, self_loops=True)
    assert bool((ei[0] == ei[1]).any())
    comm = torch.arange(n) % 3
    for res in (0.5, 1.0, 2.0):
        q = dg.modularity(ei, comm, w, resolution=res)
        assert abs(q - nx_modularity(ei, w, comm, n, res)) < 1e-6


def test_knn_snapshot_matches_networkx():
    from tests.conftest import clustered
    x, y = clustered(40, 5, 16, 1.0)
    snap = dg.graphs.build_snapshot(x, y, k=3)
    q = dg.modularity(snap.edge_index, y, snap.edge_weight)
    assert abs(q - nx_modularity(snap.edge_index, snap.edge_weight.double(), y, len(y))) < 1e-6


def test_batch_equals_separate_graphs():
    graphs = [random_graph(30 + 5 * i, 0.15, i) for i in range(4)]
    comms = [torch.arange(30 + 5 * i) % (2 + i) for i in range(4)]
    offset, eis, ws, batch = 0, [], [], []
    for i, (ei, w) in enumerate(graphs):
        eis.append(ei + offset)
        ws.append(w)
        batch.append(torch.full((30 + 5 * i,), i))
        offset += 30 + 5 * i
    q = dg.modularity(torch.cat(eis, 1), torch.cat(comms), torch.cat(ws), batch=torch.cat(batch))
    assert q.shape == (4,)
    for i, (ei, w) in enumerate(graphs):
        assert abs(float(q[i]) - dg.modularity(ei, comms[i], w)) < 1e-12


def test_contributions_sum_to_q():
    ei, w = random_graph(60, 0.1, 3)
    comm = torch.arange(60) % 5
    c = dg.measures.community_contributions(ei, comm, w)
    assert c.shape == (5,)
    assert abs(float(c.sum()) - dg.modularity(ei, comm, w)) < 1e-12


def test_closed_form_facts():
    # Only cross-class edges: Q = -sum_c a_c^2 (bipartite between the two classes).
    n = 20
    comm = (torch.arange(n) >= 8).long()  # sizes 8 and 12
    a = comm.nonzero().flatten()
    b = (comm == 0).nonzero().flatten()
    src = b.repeat_interleave(a.numel())
    dst = a.repeat(b.numel())
    ei = to_undirected(torch.stack([src, dst]), num_nodes=n)
    q = dg.modularity(ei, comm)
    strength = torch.zeros(n).index_add_(0, ei[0], torch.ones(ei.shape[1]))
    a_c = torch.stack([strength[comm == c].sum() for c in (0, 1)]) / strength.sum()
    assert abs(q + float((a_c ** 2).sum())) < 1e-12
    # Perfectly separated balanced classes (disjoint cliques): Q = 1 - 1/C.
    C, m = 4, 6
    blocks = [torch.combinations(torch.arange(c * m, (c + 1) * m)).t() for c in range(C)]
    ei = to_undirected(torch.cat(blocks, 1), num_nodes=C * m)
    comm = torch.arange(C * m) // m
    assert abs(dg.modularity(ei, comm) - (1 - 1 / C)) < 1e-12


def test_upper_bound_and_random_labels_near_zero():
    from tests.conftest import clustered
    x, y = clustered(50, 4, 16, 3.0, seed=2)
    snap = dg.graphs.build_snapshot(x, y, k=5)
    q = dg.modularity(snap.edge_index, y, snap.edge_weight)
    assert q <= 1 - 1 / 4 + 1e-12
    g = torch.Generator().manual_seed(0)
    qs = [dg.modularity(snap.edge_index, y[torch.randperm(len(y), generator=g)], snap.edge_weight)
          for _ in range(20)]
    assert abs(float(np.mean(qs))) < 0.02 and q > 0.5


def test_bad_input():
    ei, w = random_graph(10, 0.5, 0)
    comm = torch.arange(10) % 2
    with pytest.raises(ValueError, match="communities"):
        dg.modularity(ei, comm[:7], w, num_nodes=10)
    with pytest.raises(TypeError, match="communities"):
        dg.modularity(ei, comm.float(), w)
    with pytest.raises(ValueError, match="edge_weight"):
        dg.modularity(ei, comm, w[:-1])
    with pytest.raises(ValueError, match="NaN"):
        dg.modularity(ei, comm, w.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="edge_index"):
        dg.modularity(ei[:1], comm)
    with pytest.raises(ValueError, match="same device"):
        dg.modularity(ei, comm.to("meta"), w)
    with pytest.raises(ValueError, match="positive total edge weight"):
        dg.modularity(ei, comm, torch.zeros_like(w))
    with pytest.raises(ValueError, match="num_nodes"):
        dg.modularity(ei, comm[:5], w, num_nodes=5)
    with pytest.raises(ValueError, match=">= 0"):
        dg.modularity(ei, comm - 1, w)


@pytest.mark.parametrize("self_loops", [False, True])
def test_many_communities_path_matches_networkx(self_loops):
    # C² > MIXING_SLOTS: the (strength, inside) slot path instead of the C×C mixing matrix.
    from dyngraph.measures._modularity import MIXING_SLOTS
    n, n_comm = 700, 300
    assert n_comm * n_comm > MIXING_SLOTS
    ei, w = random_graph(n, 0.01, 5, True, self_loops=self_loops)
    comm = torch.randint(0, n_comm, (n,), generator=torch.Generator().manual_seed(1))
    comm[0] = n_comm - 1
    q = dg.modularity(ei, comm, w)
    assert abs(q - nx_modularity(ei, w, comm, n)) < 1e-6
    # Batched: two copies with different labels, each equal to its own networkx value.
    comm2 = comm.flip(0)
    q2 = dg.modularity(torch.cat([ei, ei + n], 1), torch.cat([comm, comm2]), torch.cat([w, w]),
                       batch=torch.arange(2).repeat_interleave(n))
    assert abs(float(q2[0]) - q) < 1e-12
    assert abs(float(q2[1]) - nx_modularity(ei, w, comm2, n)) < 1e-6
    contrib = dg.measures.community_contributions(ei, comm, w)
    assert contrib.shape == (n_comm,) and abs(float(contrib.sum()) - q) < 1e-12


def test_out_of_range_edge_index_names_the_argument():
    ei, w = random_graph(10, 0.5, 0)
    comm = torch.arange(10) % 2
    for bad in (10, -1):
        e = ei.clone()
        e[0, 3] = bad
        with pytest.raises(ValueError, match=r"edge_index.*num_nodes=10"):
            dg.modularity(e, comm, w)


def test_label_permutation_null_matches_networkx_and_centres_near_zero():
    from tests.conftest import clustered
    x, y = clustered(40, 4, 16, 1.5, seed=3)
    feats = {"a": x, "b": x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1))}
    seq = dg.DynamicGraph.from_features(feats, y=y, k=3, progress=False)
    null = seq.modularity_null(permutations=200, seed=7)
    assert null.name == "modularity_null" and tuple(null.samples.shape) == (200, 2, 1)
    # Oracle: the first permutation, rebuilt from the documented generator, against networkx.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(7))
    for li, snap in enumerate(seq):
        q_nx = nx_modularity(snap.edge_index, snap.edge_weight.double(), y[perm], len(y))
        assert abs(float(null.samples[0, li, 0]) - q_nx) < 1e-9
    # Shuffled labels: Q centred near 0 (class sizes kept), far below the observed Q.
    q = seq.modularity().values
    assert bool((null.values.abs() < 0.03).all())
    z = (q - null.values) / null.errors
    assert bool((z > 10).all())
    with pytest.raises(ValueError, match="permutations"):
        seq.modularity_null(permutations=0)


def test_depth_profile_reports_the_null_and_zscores():
    from tests.conftest import clustered
    x, y = clustered(30, 3, 8, 2.0, seed=1)
    p = dg.depth_profile({"a": x}, ["modularity"], y=y, per_class=20, repeats=2,
                         null_permutations=30, progress=False)
    assert p.meta["null_permutations"] == 30
    assert p.metrics == ["modularity", "modularity:null_mean", "modularity:null_std",
                         "modularity:z"]
    q, mu, sd, z = (p.samples[:, 0, i] for i in range(4))
    assert torch.allclose(z, (q - mu) / sd, rtol=0, atol=1e-12)
    assert "modularity:z" not in dg.depth_profile({"a": x}, y=y, progress=False).metrics
    with pytest.raises(ValueError, match="null_permutations"):
        dg.depth_profile({"a": x}, y=y, null_permutations=-1, progress=False)
