"""Community evolution: class mixing, purity, detection (Leiden/Louvain), NMI/ARI, transitions.

References: numpy closed forms, networkx (mixing matrix, modularity, planted partitions),
scikit-learn (NMI, ARI, contingency, neighbours) and PyG's homophily, on seeded data.
"""
import json

import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.utils import homophily

import dyngraph as dg
from dyngraph.measures._community import (
    METHODS,
    CommunityEvolution,
    adjusted_rand_index,
    class_contribution_curves,
    class_mixing,
    community_evolution,
    community_transitions,
    contingency_table,
    detect_communities,
    graph_purity,
    knn_purity,
    mixing_ratio,
    normalized_mutual_info,
    plot_transitions,
    separation_depth,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def clustered(n=120, d=8, c=4, sep=3.0, seed=0):
    y = torch.arange(n) % c
    x = torch.randn(n, d, generator=gen(seed)) + sep * torch.eye(d)[y]
    return x, y


def dense(edge_index, w, n):
    A = np.zeros((n, n))
    np.add.at(A, (edge_index[0].numpy(), edge_index[1].numpy()), w.double().numpy())
    return A


def sbm_graph(sizes=(30, 30, 30), p_in=0.5, p_out=0.02, seed=0):
    probs = [[p_in if i == j else p_out for j in range(len(sizes))] for i in range(len(sizes))]
    G = nx.stochastic_block_model(list(sizes), probs, seed=seed)
    e = torch.tensor(list(G.edges())).t()
    ei = torch.cat([e, e.flip(0)], 1)
    truth = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    return G, ei, truth


# ---------------------------------------------------------------- class mixing
def test_class_mixing_matches_dense_closed_form_and_networkx():
    x, y = clustered(90, c=3, sep=1.5)
    snap = dg.graphs.build_snapshot(x, y, k=4)
    A = dense(snap.edge_index, snap.edge_weight, 90)
    P = np.eye(3)[y.numpy()]
    ref = P.T @ A @ P
    got = class_mixing(snap.edge_index, y, snap.edge_weight)
    assert np.allclose(got.numpy(), ref / ref.sum(), atol=1e-12)
    assert np.allclose(got.numpy(), got.numpy().T)                  # undirected → symmetric
    raw = class_mixing(snap.edge_index, y, snap.edge_weight, normalize=None)
    assert np.allclose(raw.numpy(), ref, atol=1e-6)
    row = class_mixing(snap.edge_index, y, snap.edge_weight, normalize="row")
    assert np.allclose(row.numpy(), ref / ref.sum(1, keepdims=True), atol=1e-12)
    # unweighted: networkx's attribute mixing matrix (each undirected edge counted both ways)
    G = nx.Graph()
    for i in range(90):
        G.add_node(i, c=int(y[i]))
    G.add_edges_from(snap.edge_index.t().tolist())
    nx_m = nx.attribute_mixing_matrix(G, "c", mapping={0: 0, 1: 1, 2: 2})
    ours = class_mixing(snap.edge_index, y)
    assert np.allclose(ours.numpy(), nx_m, atol=1e-12)
    # trace = weighted edge homophily
    assert float(ours.trace()) == pytest.approx(homophily(snap.edge_index, y, method="edge"))


def test_class_mixing_batched_and_padded_classes():
    x, y = clustered(60, c=3)
    s1 = dg.graphs.build_snapshot(x, y, k=3)
    s2 = dg.graphs.build_snapshot(torch.randn(60, 5, generator=gen(1)), y, k=3)
    ei = torch.cat([s1.edge_index, s2.edge_index + 60], 1)
    w = torch.cat([s1.edge_weight, s2.edge_weight])
    batch = torch.arange(2).repeat_interleave(60)
    got = class_mixing(ei, torch.cat([y, y]), w, batch=batch, num_classes=5)
    assert got.shape == (2, 5, 5)
    assert torch.allclose(got[0, :3, :3], class_mixing(s1.edge_index, y, s1.edge_weight))
    assert torch.allclose(got[1, :3, :3], class_mixing(s2.edge_index, y, s2.edge_weight))
    assert float(got[:, 3:, :].abs().sum()) == 0
    row = class_mixing(ei, torch.cat([y, y]), w, batch=batch, num_classes=5, normalize="row")
    assert torch.isfinite(row).all() and float(row[0, 4].sum()) == 0


def test_class_mixing_errors():
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="num_classes"):
        class_mixing(ei, torch.tensor([0, 2]), num_classes=2)
    with pytest.raises(TypeError, match="integer"):
        class_mixing(ei, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="one label per sample"):
        class_mixing(ei, torch.tensor([0, 1, 1]), num_nodes=2)
    with pytest.raises(ValueError, match="normalize"):
        class_mixing(ei, torch.tensor([0, 1]), normalize="col")
    with pytest.raises(ValueError, match="no positive edge weight"):
        class_mixing(ei, torch.tensor([0, 1]), torch.zeros(2))


def test_mixing_ratio_and_separation_depth():
    # random labels on a graph: observed ≈ expected (ratio ≈ 1); planted classes: cross ≈ 0
    G, ei, truth = sbm_graph(seed=2)
    rnd = truth[torch.randperm(90, generator=gen(3))]
    r_rand = mixing_ratio(class_mixing(ei, rnd))
    off = ~torch.eye(3, dtype=torch.bool)
    assert 0.7 < float(r_rand[off].mean()) < 1.3
    r_true = mixing_ratio(class_mixing(ei, truth))
    assert float(r_true[off].max()) < 0.2 and float(r_true.diagonal().min()) > 2
    # hand-built sequence: pair (0,1) separates at layer 1, (0,2) at layer 2, (1,2) never for good
    def mix(m01, m02, m12):
        m = torch.tensor([[0, m01, m02], [m01, 0, m12], [m02, m12, 0]], dtype=torch.float64)
        m = m + torch.diag(1 / 3 - m.sum(1))     # every class keeps a 1/3 share of strength
        return m
    seq = torch.stack([mix(.1, .1, .1), mix(.001, .1, .001), mix(.001, .001, .1),
                       mix(.001, .001, .12)])
    dep = separation_depth(seq, threshold=0.1)
    assert dep[0, 1] == 1 and dep[1, 0] == 1 and dep[0, 2] == 2 and dep[1, 2] == -1
    assert (dep.diagonal() == -1).all()
    with pytest.raises(ValueError, match="threshold"):
        separation_depth(seq, threshold=0)
    with pytest.raises(ValueError, match="L, C, C"):
        separation_depth(seq[0])


# ---------------------------------------------------------------- purity
def test_knn_purity_matches_sklearn_and_directed_graph_purity():
    from sklearn.neighbors import NearestNeighbors
    x, y = clustered(150, c=5, sep=1.2, seed=4)
    k = 6
    xn = (x / x.norm(dim=1, keepdim=True)).double().numpy()
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(xn).kneighbors(xn)
    nbr = np.array([[j for j in row if j != i][:k] for i, row in enumerate(idx)])
    per_node = (y.numpy()[nbr] == y.numpy()[:, None]).mean(1)
    assert knn_purity(x, y, k) == pytest.approx(per_node.mean(), abs=1e-12)
    per_class = knn_purity(x, y, k, per_class=True)
    assert np.allclose(per_class.numpy(), [per_node[y.numpy() == c].mean() for c in range(5)])
    ei, _ = dg.knn_edges(x, k, metric="euclidean")
    assert graph_purity(ei, y) == pytest.approx(knn_purity(x, y, k, metric="euclidean"),
                                                abs=1e-12)


def test_graph_purity_against_pyg_homophily_and_weighted_numpy():
    x, y = clustered(100, c=4, sep=1.0, seed=5)
    snap = dg.graphs.build_snapshot(x, y, k=4)
    assert graph_purity(snap.edge_index, y) == pytest.approx(
        homophily(snap.edge_index, y, method="node"), abs=1e-6)
    A = dense(snap.edge_index, snap.edge_weight, 100)
    same = (y.numpy()[:, None] == y.numpy()[None, :])
    per_node = (A * same).sum(0) / A.sum(0)               # incoming weight (column sums)
    assert graph_purity(snap.edge_index, y, snap.edge_weight) == pytest.approx(per_node.mean())
    batch = torch.zeros(100, dtype=torch.long)
    pc = graph_purity(snap.edge_index, y, snap.edge_weight, batch=batch, per_class=True)
    assert pc.shape == (1, 4)
    assert np.allclose(pc[0].numpy(), [per_node[y.numpy() == c].mean() for c in range(4)])
    with pytest.raises(ValueError, match="non-negative"):
        graph_purity(snap.edge_index, y, -snap.edge_weight)
    with pytest.raises(ValueError, match="k must be smaller"):
        knn_purity(x, y, k=100)


# ---------------------------------------------------------------- detection
@pytest.mark.parametrize("method", METHODS)
def test_detect_communities_recovers_planted_partition(method):
    G, ei, truth = sbm_graph(seed=6)
    comm = detect_communities(ei, num_nodes=90, method=method, seed=0)
    assert comm.shape == (90,) and comm.dtype == torch.long
    assert normalized_mutual_info(comm, truth) == pytest.approx(1.0)
    # ids ordered by size (ties by smallest member): community 0 contains node 0 here
    sizes = torch.bincount(comm)
    assert (sizes[:-1] >= sizes[1:]).all() and int(comm[0]) == 0
    q_ours = dg.modularity(ei, comm)
    parts = [set(torch.nonzero(comm == c).flatten().tolist()) for c in range(int(comm.max()) + 1)]
    assert q_ours == pytest.approx(nx.community.modularity(G, parts), abs=1e-9)


def test_detect_communities_quality_and_determinism_on_knn_graph():
    x, y = clustered(200, d=16, c=5, sep=1.2, seed=7)
    snap = dg.graphs.build_snapshot(x, y, k=5)
    qs = {}
    for method in METHODS:
        a = detect_communities(snap.edge_index, snap.edge_weight, 200, method=method, seed=3)
        b = detect_communities(snap.edge_index, snap.edge_weight, 200, method=method, seed=3)
        assert torch.equal(a, b), method
        qs[method] = dg.modularity(snap.edge_index, a, snap.edge_weight)
    # every method reaches about the same optimum, above the label partition's Q
    assert max(qs.values()) - min(qs.values()) < 0.03
    assert min(qs.values()) > dg.modularity(snap.edge_index, y, snap.edge_weight) - 0.02
    more = detect_communities(snap.edge_index, snap.edge_weight, 200, resolution=3.0)
    fewer = detect_communities(snap.edge_index, snap.edge_weight, 200, resolution=0.3)
    assert int(more.max()) > int(fewer.max())


def test_detect_communities_directed_input_is_symmetrised():
    x, y = clustered(80, c=4, seed=8)
    ei_dir, w_dir = dg.knn_edges(x, 4)
    ei_und, w_und = dg.graphs.symmetrize(ei_dir, w_dir, 80, "mean")
    a = detect_communities(ei_dir, w_dir, 80, seed=1)
    b = detect_communities(ei_und, w_und, 80, seed=1)
    assert torch.equal(a, b)


def test_detect_communities_errors():
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="method"):
        detect_communities(ei, method="spectral")
    with pytest.raises(ValueError, match="non-negative"):
        detect_communities(ei, torch.tensor([-1.0, -1.0]))
    with pytest.raises(ValueError, match="resolution"):
        detect_communities(ei, resolution=0)
    with pytest.raises(ValueError, match="num_nodes"):
        detect_communities(ei, num_nodes=1)
    with pytest.raises(TypeError, match="integer"):
        detect_communities(ei.float())


# ---------------------------------------------------------------- NMI / ARI / contingency
def test_nmi_ari_contingency_match_sklearn():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix
    g = gen(9)
    cases = [(torch.randint(0, 5, (300,), generator=g), torch.randint(0, 7, (300,), generator=g))]
    base = torch.randint(0, 4, (200,), generator=g)
    noisy = base.clone()
    noisy[:40] = torch.randint(0, 6, (40,), generator=g)
    cases += [(base, noisy), (base, (base + 1) % 4 + 10),
              (torch.zeros(20, dtype=torch.long), torch.zeros(20, dtype=torch.long)),
              (torch.zeros(20, dtype=torch.long), torch.arange(20)),
              (torch.arange(20), torch.arange(20)),
              (torch.tensor([0, 0, 1, 1, 2]), torch.tensor([3, 3, 3, 8, 8]))]
    for a, b in cases:
        an, bn = a.numpy(), b.numpy()
        assert normalized_mutual_info(a, b) == pytest.approx(
            normalized_mutual_info_score(an, bn), abs=1e-10)
        assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(an, bn), abs=1e-10)
        assert np.array_equal(contingency_table(a, b).numpy(), contingency_matrix(an, bn))
    with pytest.raises(ValueError, match="same samples"):
        contingency_table(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        normalized_mutual_info(torch.tensor([-1, 0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="1-D"):
        adjusted_rand_index(torch.zeros(2, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------- transitions
def test_community_transitions_counts_and_normalisation():
    g = gen(10)
    layers = [torch.randint(0, k, (100,), generator=g) for k in (3, 5, 2)]
    counts = community_transitions(layers, normalize=None)
    rows = community_transitions(layers)
    total = community_transitions(layers, normalize="total")
    assert [tuple(t.shape) for t in counts] == [(3, 5), (5, 2)]
    for l, t in enumerate(counts):
        ref = np.zeros(t.shape)
        np.add.at(ref, (layers[l].numpy(), layers[l + 1].numpy()), 1)
        assert np.array_equal(t.numpy(), ref)
        assert torch.allclose(rows[l].sum(1), torch.ones(t.shape[0], dtype=torch.float64))
        assert float(total[l].sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        community_transitions(layers[:1])
    with pytest.raises(TypeError, match="list"):
        community_transitions(layers[0])


def test_plot_transitions_flow_and_heatmap(tmp_path):
    g = gen(11)
    y = torch.arange(60) % 3
    comms = [torch.randint(0, 4, (60,), generator=g), y, y * 0 + (y > 0).long()]
    for kind in ("flow", "heatmap"):
        p = tmp_path / f"{kind}.png"
        plot_transitions(comms, labels=y, layers=["a", "b", "c"], path=p, kind=kind)
        assert p.stat().st_size > 2000
    plot_transitions(comms, path=tmp_path / "nolabels.png")
    with pytest.raises(ValueError, match="kind"):
        plot_transitions(comms, kind="sankey")
    with pytest.raises(ValueError, match="same N"):
        plot_transitions([comms[0], comms[1][:10]])


# ---------------------------------------------------------------- evolution
@pytest.fixture(scope="module")
def sequence():
    g = gen(12)
    y = torch.arange(150) % 3
    base = torch.randn(150, 12, generator=g)
    feats = {f"layer{i}": base + s * torch.eye(12)[y] + 0.3 * torch.randn(150, 12, generator=g)
             for i, s in enumerate([0.0, 0.8, 2.0, 4.0])}
    return dg.DynamicGraph.from_features(feats, y=y, k=5, progress=False), y


def test_community_evolution_consistent_with_per_snapshot_functions(sequence, tmp_path):
    seq, y = sequence
    ev = community_evolution(seq, progress=False)
    assert isinstance(ev, CommunityEvolution) and ev.layers == seq.layers
    assert torch.allclose(ev.label_modularity, seq.modularity().values, atol=1e-12)
    assert torch.allclose(ev.class_contributions.sum(1), ev.label_modularity)
    for i, s in enumerate(seq):
        assert torch.allclose(ev.mixing[i], class_mixing(s.edge_index, y, s.edge_weight))
        assert float(ev.purity[i]) == pytest.approx(graph_purity(s.edge_index, y, s.edge_weight))
        comm = detect_communities(s.edge_index, s.edge_weight, 150)
        assert torch.equal(ev.communities[i], comm)
        assert float(ev.nmi[i]) == pytest.approx(normalized_mutual_info(comm, y))
        assert float(ev.ari[i]) == pytest.approx(adjusted_rand_index(comm, y))
        assert float(ev.detected_modularity[i]) == pytest.approx(
            dg.modularity(s.edge_index, comm, s.edge_weight))
    # the class structure forms with depth
    assert ev.nmi[-1] > 0.9 > ev.nmi[0]
    assert ev.purity[-1] > ev.purity[0] + 0.4
    assert len(ev.transitions) == 3
    for i, t in enumerate(ev.transitions):
        assert t.shape == (int(ev.n_communities[i]), int(ev.n_communities[i + 1]))
    assert ev.stability.shape == (3,) and ((ev.stability >= 0) & (ev.stability <= 1)).all()
    assert ev.separation.shape == (3, 3)
    assert (ev.separation[~torch.eye(3, dtype=torch.bool)] >= 1).all()   # not separated at l0
    curves = class_contribution_curves(seq)
    assert torch.allclose(sum(c.values for c in curves), ev.label_modularity)
    # outputs
    ev.to_json(tmp_path / "ev.json")
    d = json.loads((tmp_path / "ev.json").read_text())
    assert d["layers"] == seq.layers and len(d["communities"][0]) == 150
    paths = ev.plot(tmp_path / "figs")
    assert set(paths) == {"class_contributions", "class_mixing", "community_flow",
                          "community_transitions", "community_curves"}
    assert all(p.stat().st_size > 2000 for p in paths.values())
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(tmp_path / "tb")) as w:
        ev.to_tensorboard(w)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert "dyngraph/community/nmi" in acc.Tags()["scalars"]
    assert any("community_flow" in t for t in acc.Tags()["images"])


def test_community_evolution_errors(sequence):
    seq, _ = sequence
    with pytest.raises(TypeError, match="DynamicGraph"):
        community_evolution([s for s in seq])
    with pytest.raises(ValueError, match="method"):
        community_evolution(seq, method="infomap")
