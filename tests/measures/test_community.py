"""Community evolution: class mixing, purity, detection (Leiden/Louvain), NMI/ARI, transitions,
the profiles over depth, the registered measures, and the drawers / logger.

References: numpy closed forms, networkx (mixing matrix, modularity, planted partitions),
scikit-learn (NMI, ARI, contingency, neighbours) and PyG's homophily, on seeded data.
"""
import dataclasses
import json

import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.utils import homophily

import dyngraph as dg


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


def mixing_sequence():
    """Hand-built [4, 3, 3] mixing: pair (0,1) separates at layer 1, (0,2) at layer 2, (1,2)
    never for good."""
    def mix(m01, m02, m12):
        m = torch.tensor([[0, m01, m02], [m01, 0, m12], [m02, m12, 0]], dtype=torch.float64)
        m = m + torch.diag(1 / 3 - m.sum(1))     # every class keeps a 1/3 share of strength
        return m
    return torch.stack([mix(.1, .1, .1), mix(.001, .1, .001), mix(.001, .001, .1),
                        mix(.001, .001, .12)])


# ---------------------------------------------------------------- class mixing
def test_class_mixing_matches_dense_closed_form_and_networkx():
    x, y = clustered(90, c=3, sep=1.5)
    snap = dg.graphs.build_snapshot(x, y, k=4)
    A = dense(snap.edge_index, snap.edge_weight, 90)
    P = np.eye(3)[y.numpy()]
    ref = P.T @ A @ P
    got = dg.measures.class_mixing(snap.edge_index, y, snap.edge_weight)
    assert np.allclose(got.numpy(), ref / ref.sum(), atol=1e-12)
    assert np.allclose(got.numpy(), got.numpy().T)                  # undirected → symmetric
    raw = dg.measures.class_mixing(snap.edge_index, y, snap.edge_weight, normalize=None)
    assert np.allclose(raw.numpy(), ref, atol=1e-6)
    row = dg.measures.class_mixing(snap.edge_index, y, snap.edge_weight, normalize="row")
    assert np.allclose(row.numpy(), ref / ref.sum(1, keepdims=True), atol=1e-12)
    # unweighted: networkx's attribute mixing matrix (each undirected edge counted both ways)
    G = nx.Graph()
    for i in range(90):
        G.add_node(i, c=int(y[i]))
    G.add_edges_from(snap.edge_index.t().tolist())
    nx_m = nx.attribute_mixing_matrix(G, "c", mapping={0: 0, 1: 1, 2: 2})
    ours = dg.measures.class_mixing(snap.edge_index, y)
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
    got = dg.measures.class_mixing(ei, torch.cat([y, y]), w, batch=batch, num_classes=5)
    assert got.shape == (2, 5, 5)
    for i, s in enumerate((s1, s2)):
        assert torch.allclose(got[i, :3, :3], dg.measures.class_mixing(s.edge_index, y,
                                                                        s.edge_weight))
    assert float(got[:, 3:, :].abs().sum()) == 0
    row = dg.measures.class_mixing(ei, torch.cat([y, y]), w, batch=batch, num_classes=5,
                                   normalize="row")
    assert torch.isfinite(row).all() and float(row[0, 4].sum()) == 0


def test_class_mixing_errors():
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="num_classes"):
        dg.measures.class_mixing(ei, torch.tensor([0, 2]), num_classes=2)
    with pytest.raises(TypeError, match="integer"):
        dg.measures.class_mixing(ei, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="one label per sample"):
        dg.measures.class_mixing(ei, torch.tensor([0, 1, 1]), num_nodes=2)
    with pytest.raises(ValueError, match="normalize"):
        dg.measures.class_mixing(ei, torch.tensor([0, 1]), normalize="col")
    with pytest.raises(ValueError, match="no positive edge weight"):
        dg.measures.class_mixing(ei, torch.tensor([0, 1]), torch.zeros(2))


def test_mixing_ratio_and_separation_depth():
    # random labels on a graph: observed ≈ expected (ratio ≈ 1); planted classes: cross ≈ 0
    G, ei, truth = sbm_graph(seed=2)
    rnd = truth[torch.randperm(90, generator=gen(3))]
    r_rand = dg.measures.mixing_ratio(dg.measures.class_mixing(ei, rnd))
    off = ~torch.eye(3, dtype=torch.bool)
    assert 0.7 < float(r_rand[off].mean()) < 1.3
    r_true = dg.measures.mixing_ratio(dg.measures.class_mixing(ei, truth))
    assert float(r_true[off].max()) < 0.2 and float(r_true.diagonal().min()) > 2
    seq = mixing_sequence()
    dep = dg.measures.separation_depth(seq, threshold=0.1)
    assert dep[0, 1] == 1 and dep[1, 0] == 1 and dep[0, 2] == 2 and dep[1, 2] == -1
    assert (dep.diagonal() == -1).all()
    with pytest.raises(ValueError, match="threshold"):
        dg.measures.separation_depth(seq, threshold=0)
    with pytest.raises(ValueError, match="L, C, C"):
        dg.measures.separation_depth(seq[0])


# ---------------------------------------------------------------- purity
def test_knn_purity_matches_sklearn_and_directed_graph_purity():
    from sklearn.neighbors import NearestNeighbors
    x, y = clustered(150, c=5, sep=1.2, seed=4)
    k = 6
    xn = (x / x.norm(dim=1, keepdim=True)).double().numpy()
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(xn).kneighbors(xn)
    nbr = np.array([[j for j in row if j != i][:k] for i, row in enumerate(idx)])
    per_node = (y.numpy()[nbr] == y.numpy()[:, None]).mean(1)
    assert dg.measures.knn_purity(x, y, k) == pytest.approx(per_node.mean(), abs=1e-12)
    per_class = dg.measures.knn_purity(x, y, k, per_class=True)
    assert np.allclose(per_class.numpy(), [per_node[y.numpy() == c].mean() for c in range(5)])
    ei, _ = dg.knn_edges(x, k, metric="euclidean")
    assert dg.measures.graph_purity(ei, y) == pytest.approx(
        dg.measures.knn_purity(x, y, k, metric="euclidean"), abs=1e-12)


def test_graph_purity_against_pyg_homophily_and_weighted_numpy():
    x, y = clustered(100, c=4, sep=1.0, seed=5)
    snap = dg.graphs.build_snapshot(x, y, k=4)
    assert dg.measures.graph_purity(snap.edge_index, y) == pytest.approx(
        homophily(snap.edge_index, y, method="node"), abs=1e-6)
    A = dense(snap.edge_index, snap.edge_weight, 100)
    same = (y.numpy()[:, None] == y.numpy()[None, :])
    per_node = (A * same).sum(0) / A.sum(0)               # incoming weight (column sums)
    assert dg.measures.graph_purity(snap.edge_index, y, snap.edge_weight) == pytest.approx(
        per_node.mean())
    batch = torch.zeros(100, dtype=torch.long)
    pc = dg.measures.graph_purity(snap.edge_index, y, snap.edge_weight, batch=batch, per_class=True)
    assert pc.shape == (1, 4)
    assert np.allclose(pc[0].numpy(), [per_node[y.numpy() == c].mean() for c in range(4)])
    with pytest.raises(ValueError, match="non-negative"):
        dg.measures.graph_purity(snap.edge_index, y, -snap.edge_weight)
    with pytest.raises(ValueError, match="k must be smaller"):
        dg.measures.knn_purity(x, y, k=100)


# ---------------------------------------------------------------- detection
@pytest.mark.parametrize("method", dg.measures.METHODS)
def test_detect_communities_recovers_planted_partition(method):
    G, ei, truth = sbm_graph(seed=6)
    comm = dg.measures.detect_communities(ei, num_nodes=90, method=method, seed=0)
    assert comm.shape == (90,) and comm.dtype == torch.long
    assert dg.measures.normalized_mutual_info(comm, truth) == pytest.approx(1.0)
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
    for method in dg.measures.METHODS:
        a, b = (dg.measures.detect_communities(snap.edge_index, snap.edge_weight, 200,
                                               method=method, seed=3) for _ in range(2))
        assert torch.equal(a, b), method
        qs[method] = dg.modularity(snap.edge_index, a, snap.edge_weight)
    # every method reaches about the same optimum, above the label partition's Q
    assert max(qs.values()) - min(qs.values()) < 0.03
    assert min(qs.values()) > dg.modularity(snap.edge_index, y, snap.edge_weight) - 0.02
    more = dg.measures.detect_communities(snap.edge_index, snap.edge_weight, 200, resolution=3.0)
    fewer = dg.measures.detect_communities(snap.edge_index, snap.edge_weight, 200, resolution=0.3)
    assert int(more.max()) > int(fewer.max())


def test_detect_communities_directed_input_is_symmetrised():
    x, y = clustered(80, c=4, seed=8)
    ei_dir, w_dir = dg.knn_edges(x, 4)
    ei_und, w_und = dg.graphs.symmetrize(ei_dir, w_dir, 80, "mean")
    a = dg.measures.detect_communities(ei_dir, w_dir, 80, seed=1)
    b = dg.measures.detect_communities(ei_und, w_und, 80, seed=1)
    assert torch.equal(a, b)


def test_detect_communities_errors():
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="method"):
        dg.measures.detect_communities(ei, method="spectral")
    with pytest.raises(ValueError, match="non-negative"):
        dg.measures.detect_communities(ei, torch.tensor([-1.0, -1.0]))
    with pytest.raises(ValueError, match="resolution"):
        dg.measures.detect_communities(ei, resolution=0)
    with pytest.raises(ValueError, match="num_nodes"):
        dg.measures.detect_communities(ei, num_nodes=1)
    with pytest.raises(TypeError, match="integer"):
        dg.measures.detect_communities(ei.float())


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
        assert dg.measures.normalized_mutual_info(a, b) == pytest.approx(
            normalized_mutual_info_score(an, bn), abs=1e-10)
        assert dg.measures.adjusted_rand_index(a, b) == pytest.approx(
            adjusted_rand_score(an, bn), abs=1e-10)
        assert np.array_equal(dg.measures.contingency_table(a, b).numpy(),
                              contingency_matrix(an, bn))
    with pytest.raises(ValueError, match="same samples"):
        dg.measures.contingency_table(torch.zeros(3, dtype=torch.long),
                                      torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        dg.measures.normalized_mutual_info(torch.tensor([-1, 0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="1-D"):
        dg.measures.adjusted_rand_index(torch.zeros(2, 2, dtype=torch.long),
                                        torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------- transitions
def test_community_transitions_counts_and_normalisation():
    g = gen(10)
    layers = [torch.randint(0, k, (100,), generator=g) for k in (3, 5, 2)]
    counts = dg.measures.community_transitions(layers, normalize=None)
    rows = dg.measures.community_transitions(layers)
    total = dg.measures.community_transitions(layers, normalize="total")
    assert [tuple(t.shape) for t in counts] == [(3, 5), (5, 2)]
    for l, t in enumerate(counts):
        ref = np.zeros(t.shape)
        np.add.at(ref, (layers[l].numpy(), layers[l + 1].numpy()), 1)
        assert np.array_equal(t.numpy(), ref)
        assert torch.allclose(rows[l].sum(1), torch.ones(t.shape[0], dtype=torch.float64))
        assert float(total[l].sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        dg.measures.community_transitions(layers[:1])
    with pytest.raises(TypeError, match="list"):
        dg.measures.community_transitions(layers[0])


def test_mixing_profile_and_mean_mixing_ratio_against_numpy():
    seq = mixing_sequence()
    p = dg.measures.mixing_profile(seq, ["a", "b", "c", "d"], threshold=0.1)
    assert isinstance(p, dg.DepthProfile)
    assert p.metrics == ["mixing_ratio", "separated_pairs"] and p.layers == ["a", "b", "c", "d"]
    assert p.meta["separation_threshold"] == 0.1
    m = seq.numpy()
    off = ~np.eye(3, dtype=bool)
    ratio = [(m[l] / np.outer(m[l].sum(1), m[l].sum(1)))[off].mean() for l in range(4)]
    assert np.allclose(p["mixing_ratio"].values.numpy(), ratio, rtol=0, atol=1e-12)
    dep = dg.measures.separation_depth(seq, threshold=0.1).numpy()
    pairs = [(0, 1), (0, 2), (1, 2)]
    share = [np.mean([0 <= dep[a, b] <= l for a, b in pairs]) for l in range(4)]
    assert p["separated_pairs"].values.tolist() == share == [0, 1 / 3, 2 / 3, 2 / 3]
    # one layer alone, and the [L] form, agree
    assert torch.equal(dg.measures.mean_mixing_ratio(seq[1]),
                       dg.measures.mean_mixing_ratio(seq)[1])
    # an absent class (no weight) is left out of both
    padded = torch.zeros(4, 4, 4, dtype=torch.float64)
    padded[:, :3, :3] = seq
    q = dg.measures.mixing_profile(padded, threshold=0.1)
    assert q.layers == ["0", "1", "2", "3"]
    assert torch.allclose(q.samples, p.samples, rtol=0, atol=1e-15)
    # graphs: random labels ≈ 1, planted classes ≈ 0
    G, ei, truth = sbm_graph(seed=2)
    rnd = truth[torch.randperm(90, generator=gen(3))]
    assert 0.7 < float(dg.measures.mean_mixing_ratio(dg.measures.class_mixing(ei, rnd))) < 1.3
    assert float(dg.measures.mean_mixing_ratio(dg.measures.class_mixing(ei, truth))) < 0.2
    one = torch.tensor([[1.0]], dtype=torch.float64)
    assert torch.isnan(dg.measures.mean_mixing_ratio(one))      # a single class: no pair
    with pytest.raises(ValueError, match="layers"):
        dg.measures.mixing_profile(seq, ["a"])
    with pytest.raises(ValueError, match="L, C, C"):
        dg.measures.mixing_profile(seq[0])
    with pytest.raises(ValueError, match="threshold"):
        dg.measures.mixing_profile(seq, threshold=-1)
    with pytest.raises(TypeError, match="mixing"):
        dg.measures.mixing_profile(seq.tolist())


# ---------------------------------------------------------------- evolution
@pytest.fixture(scope="module")
def features():
    g = gen(12)
    y = torch.arange(150) % 3
    base = torch.randn(150, 12, generator=g)
    feats = {f"layer{i}": base + s * torch.eye(12)[y] + 0.3 * torch.randn(150, 12, generator=g)
             for i, s in enumerate([0.0, 0.8, 2.0, 4.0])}
    return feats, y


@pytest.fixture(scope="module")
def sequence(features):
    feats, y = features
    return dg.DynamicGraph.from_features(feats, y=y, k=5, progress=False), y


@pytest.fixture(scope="module")
def evolution(sequence):
    return dg.measures.community_evolution(sequence[0], progress=False)


def test_class_contribution_profile_against_dense_numpy(sequence):
    seq, y = sequence
    p = dg.measures.class_contribution_profile(seq)
    assert isinstance(p, dg.DepthProfile) and p.layers == seq.layers and p.repeats == 1
    assert p.metrics == ["modularity_class_0", "modularity_class_1", "modularity_class_2"]
    assert torch.equal(p.samples[0], seq.class_contributions())
    assert torch.allclose(p.mean.sum(1), seq.modularity().values, atol=1e-12)
    for i, s in enumerate(seq):
        A = dense(s.edge_index, s.edge_weight, 150)
        two_w, strength = A.sum(), A.sum(1)
        for c in range(3):
            inside = (y == c).numpy()
            ref = A[np.ix_(inside, inside)].sum() / two_w - (strength[inside].sum() / two_w) ** 2
            assert float(p.samples[0, i, c]) == pytest.approx(ref, abs=1e-9)
    named = dg.measures.class_contribution_profile(seq, resolution=0.5,
                                                   class_names=["cat", "dog", "eel"])
    assert named.metrics == ["modularity_class_cat", "modularity_class_dog",
                             "modularity_class_eel"]
    assert torch.equal(named.samples[0], seq.class_contributions(resolution=0.5))
    assert named.meta["resolution"] == 0.5
    with pytest.raises(ValueError, match="class_names"):
        dg.measures.class_contribution_profile(seq, class_names=["a", "b"])
    with pytest.raises(ValueError, match="resolution"):
        dg.measures.class_contribution_profile(seq, resolution=0)
    with pytest.raises(TypeError, match="DynamicGraph"):
        dg.measures.class_contribution_profile(list(seq))


def test_community_evolution_consistent_with_per_snapshot_functions(sequence, evolution,
                                                                    tmp_path):
    seq, y = sequence
    ev = evolution
    assert isinstance(ev, dg.measures.CommunityEvolution) and ev.layers == seq.layers
    p = ev.profile
    assert isinstance(p, dg.DepthProfile) and p.repeats == 1
    assert p.metrics == ["modularity", "detected_modularity", "graph_purity", "n_communities",
                         "nmi", "ari", "mixing_ratio", "separated_pairs"]
    assert p.meta["method"] == "leiden" and p.meta["k"] == 5 and ev.meta is p.meta
    assert torch.allclose(p["modularity"].values, seq.modularity().values, atol=1e-12)
    assert torch.allclose(ev.class_contributions.mean.sum(1), p["modularity"].values)
    for i, s in enumerate(seq):
        mix = dg.measures.class_mixing(s.edge_index, y, s.edge_weight)
        assert torch.allclose(ev.mixing[i], mix)
        assert float(p["graph_purity"].values[i]) == pytest.approx(
            dg.measures.graph_purity(s.edge_index, y, s.edge_weight))
        assert float(p["mixing_ratio"].values[i]) == pytest.approx(
            float(dg.measures.mean_mixing_ratio(mix)))
        comm = dg.measures.detect_communities(s.edge_index, s.edge_weight, 150)
        assert torch.equal(ev.communities[i], comm)
        assert float(p["n_communities"].values[i]) == int(comm.max()) + 1
        assert float(p["nmi"].values[i]) == pytest.approx(
            dg.measures.normalized_mutual_info(comm, y))
        assert float(p["ari"].values[i]) == pytest.approx(
            dg.measures.adjusted_rand_index(comm, y))
        assert float(p["detected_modularity"].values[i]) == pytest.approx(
            dg.modularity(s.edge_index, comm, s.edge_weight))
    # the class structure forms with depth
    nmi, purity = p["nmi"].values, p["graph_purity"].values
    assert nmi[-1] > 0.9 > nmi[0]
    assert purity[-1] > purity[0] + 0.4
    n_comm = p["n_communities"].values
    assert len(ev.transitions) == 3
    for i, t in enumerate(ev.transitions):
        assert t.shape == (int(n_comm[i]), int(n_comm[i + 1]))
    assert ev.stability.shape == (3,) and ((ev.stability >= 0) & (ev.stability <= 1)).all()
    for i in range(3):
        assert float(ev.stability[i]) == dg.measures.normalized_mutual_info(
            ev.communities[i], ev.communities[i + 1])
    assert ev.separation.shape == (3, 3)
    assert (ev.separation[~torch.eye(3, dtype=torch.bool)] >= 1).all()   # not separated at l0
    assert torch.equal(ev.separation, dg.measures.separation_depth(ev.mixing, 0.1))
    assert ev.class_contributions == dg.measures.class_contribution_profile(seq)
    mp = dg.measures.mixing_profile(ev.mixing, ev.layers, threshold=0.1)
    assert torch.equal(p[["mixing_ratio", "separated_pairs"]].samples, mp.samples)
    assert torch.equal(ev.labels, y)
    assert "nmi=[" in repr(ev)
    # JSON: an exact round trip
    text = ev.to_json(tmp_path / "ev.json")
    d = json.loads((tmp_path / "ev.json").read_text())
    assert json.loads(text) == d
    assert d["layers"] == seq.layers and len(d["communities"][0]) == 150
    back = dg.measures.CommunityEvolution.from_json(tmp_path / "ev.json")
    assert back == ev and back.profile == ev.profile
    assert all(c.dtype == torch.long for c in back.communities)
    with pytest.raises(ValueError, match="CommunityEvolution"):
        dg.measures.CommunityEvolution.from_dict(ev.profile.to_dict())


def test_community_evolution_profile_equals_registered_measures(features, evolution):
    """The evolution's series are the registered layer measures run by depth_profile."""
    feats, y = features
    prof = dg.depth_profile(feats, ["modularity", "graph_purity", "mixing_ratio",
                                    "detected_communities"], y=y, graph=dg.GraphSpec(k=5),
                            progress=False)
    ev = evolution.profile
    for m in ("detected_modularity", "n_communities", "nmi", "ari"):
        assert torch.equal(prof[m].values, ev[m].values), m
    for m in ("modularity", "graph_purity", "mixing_ratio"):
        assert torch.allclose(prof[m].values, ev[m].values, rtol=0, atol=1e-12), m


def test_registered_measures_match_pure_functions_and_references(features):
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.neighbors import NearestNeighbors
    feats, y = features
    spec = dg.GraphSpec(k=5)
    prof = dg.depth_profile(feats, ["graph_purity", "knn_purity", "mixing_ratio",
                                    "detected_communities"], y=y, graph=spec, progress=False,
                            measure_options={"knn_purity": {"k": 6},
                                             "detected_communities": {"method": "louvain",
                                                                      "seed": 2}})
    assert prof.metrics == ["graph_purity", "knn_purity", "mixing_ratio", "detected_modularity",
                            "n_communities", "nmi", "ari"]
    yn = y.numpy()
    same = yn[:, None] == yn[None, :]
    for name, x in feats.items():
        row = prof.layer(name)
        g = spec.build(x, y)
        ei, w = g.edge_index, g.edge_weight
        # the pure functions, exactly
        assert row["graph_purity"] == dg.measures.graph_purity(ei, y, w)
        assert row["knn_purity"] == dg.measures.knn_purity(x, y, 6)
        mix = dg.measures.class_mixing(ei, y, w)
        assert row["mixing_ratio"] == float(dg.measures.mean_mixing_ratio(mix))
        comm = dg.measures.detect_communities(ei, w, 150, method="louvain", seed=2)
        assert row["n_communities"] == int(comm.max()) + 1
        assert row["nmi"] == dg.measures.normalized_mutual_info(comm, y)
        assert row["ari"] == dg.measures.adjusted_rand_index(comm, y)
        assert row["detected_modularity"] == dg.modularity(ei, comm, w)
        # independent references: numpy, scikit-learn, networkx
        A = dense(ei, w, 150)
        assert row["graph_purity"] == pytest.approx(((A * same).sum(0) / A.sum(0)).mean())
        xn = (x / x.norm(dim=1, keepdim=True)).double().numpy()
        _, idx = NearestNeighbors(n_neighbors=7).fit(xn).kneighbors(xn)
        nbr = np.array([[j for j in r if j != i][:6] for i, r in enumerate(idx)])
        assert row["knn_purity"] == pytest.approx((yn[nbr] == yn[:, None]).mean(), abs=1e-12)
        P = np.eye(3)[yn]
        mx = P.T @ A @ P
        mx = mx / mx.sum()
        s = mx.sum(1)
        off = ~np.eye(3, dtype=bool)
        assert row["mixing_ratio"] == pytest.approx((mx / np.outer(s, s))[off].mean())
        cn = comm.numpy()
        assert row["nmi"] == pytest.approx(normalized_mutual_info_score(yn, cn), abs=1e-10)
        assert row["ari"] == pytest.approx(adjusted_rand_score(yn, cn), abs=1e-10)
        G = nx.from_numpy_array(A)
        parts = [set(np.flatnonzero(cn == c).tolist()) for c in range(int(cn.max()) + 1)]
        assert row["detected_modularity"] == pytest.approx(
            nx.community.modularity(G, parts, weight="weight"), abs=1e-9)
    # a label-permutation null: permuted labels carry no information about the communities
    two = {k: feats[k] for k in ("layer0", "layer3")}
    nulls = dg.depth_profile(two, ["detected_communities"], y=y, graph=spec, progress=False,
                             null_permutations=5)
    assert (nulls["nmi:null_mean"].values < 0.1).all()
    assert float(nulls["nmi:z"].values[1]) > 5
    for m in ("graph_purity", "mixing_ratio", "detected_communities"):
        assert dg.measures.get(m).graph
    assert not dg.measures.get("knn_purity").graph


# ---------------------------------------------------------------- drawers and logger
@pytest.mark.parametrize("kind", ["flow", "transitions", "mixing", "contributions", "profile"])
def test_plot_evolution_every_kind(evolution, kind, tmp_path):
    from matplotlib.figure import Figure
    ev = evolution
    path = tmp_path / f"{kind}.png"
    fig = dg.plot(ev, path, kind=kind)
    assert isinstance(fig, Figure) and path.stat().st_size > 2000
    if kind == "flow":    # one block per community of every layer
        from matplotlib.patches import Rectangle
        blocks = [a for a in fig.axes[0].patches if isinstance(a, Rectangle)]
        assert len(blocks) == int(ev.profile["n_communities"].values.sum())
    elif kind == "transitions":
        images = [a.images[0].get_array() for a in fig.axes if a.images]
        assert len(images) == 3
        for img, t in zip(images, ev.transitions):
            assert np.allclose(np.asarray(img), t.numpy())
    elif kind == "mixing":
        images = [a.images[0].get_array() for a in fig.axes if a.images]
        row = ev.mixing / ev.mixing.sum(2, keepdim=True)
        assert len(images) == 4
        assert all(np.allclose(np.asarray(i), r.numpy()) for i, r in zip(images, row))
    else:
        p = ev.class_contributions if kind == "contributions" else ev.profile
        lines = fig.axes[0].get_lines()
        want = p.metrics if kind == "contributions" else \
            ["modularity", "detected_modularity", "graph_purity", "nmi", "ari"]
        assert len(lines) == len(want)
        for line, m in zip(lines, want):
            assert np.allclose(line.get_ydata(), p[m].values.numpy())


def test_plot_evolution_options_and_errors(evolution, sequence, tmp_path):
    from matplotlib.figure import Figure
    ev = evolution
    # arbitrary splits and merges: random communities, the classes, two groups, the classes
    y = ev.labels
    comms = [torch.randint(0, 4, (150,), generator=gen(11)), y, (y > 0).long(), y]
    mixed = dataclasses.replace(ev, communities=comms)
    for kind in ("flow", "transitions"):
        path = tmp_path / f"{kind}.png"
        dg.plot(mixed, path, kind=kind)
        assert path.stat().st_size > 2000
    for norm, ref in (("total", ev.mixing), ("ratio", dg.measures.mixing_ratio(ev.mixing))):
        fig = dg.plot(ev, kind="mixing", normalize=norm, title="t")
        images = [a.images[0].get_array() for a in fig.axes if a.images]
        assert all(np.allclose(np.asarray(i), r.numpy()) for i, r in zip(images, ref))
        assert fig._suptitle.get_text() == "t"
    fig = dg.plot(ev, kind="profile", metrics="n_communities")
    assert np.allclose(fig.axes[0].get_lines()[0].get_ydata(),
                       ev.profile["n_communities"].values.numpy())
    ax = Figure().subplots()
    assert dg.plot(ev, ax=ax, kind="flow") is ax.figure
    with pytest.raises(ValueError, match="kind"):
        dg.plot(ev, kind="sankey")
    with pytest.raises(ValueError, match="normalize"):
        dg.plot(ev, kind="mixing", normalize="col")
    with pytest.raises(ValueError, match="metrics"):
        dg.plot(ev, kind="profile", metrics=["nope"])
    with pytest.raises(ValueError, match="ax="):
        dg.plot(ev, ax=Figure().subplots(), kind="mixing")
    one = dg.measures.community_evolution(sequence[0][:1], progress=False)
    assert one.transitions == [] and one.stability.shape == (0,)
    with pytest.raises(ValueError, match="at least 2"):
        dg.plot(one, kind="flow")
    with pytest.raises(ValueError, match="at least 2"):
        dg.plot(one, kind="transitions")
    assert isinstance(dg.plot(one, ax=Figure().subplots(), kind="mixing"), Figure)


def test_log_evolution_scalars_at_layer_steps(evolution, sequence, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    ev = evolution
    with SummaryWriter(str(tmp_path / "tb")) as w:
        dg.log(w, ev, prefix="dyngraph/community")
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()
    for p in (ev.profile, ev.class_contributions):
        for m in p.metrics:
            events = acc.Scalars(f"dyngraph/community/{m}")
            assert [e.step for e in events] == list(range(len(ev.layers)))
            assert np.allclose([e.value for e in events], p[m].values.numpy(), atol=1e-6)
    assert "dyngraph/community/nmi" in tags["scalars"]
    assert {"dyngraph/community/figure", "dyngraph/community/class_mixing"} <= set(tags["images"])
    assert any(t.startswith("dyngraph/community/layers") for t in tags["tensors"])
    one = dg.measures.community_evolution(sequence[0][:1], progress=False)
    with SummaryWriter(str(tmp_path / "tb1")) as w:
        dg.log(w, one, prefix="one")
        dg.log(w, ev, prefix="nofig", figure=False)
    acc = EventAccumulator(str(tmp_path / "tb1"))
    acc.Reload()
    assert set(acc.Tags()["images"]) == {"one/figure", "one/class_mixing"}
    assert [e.step for e in acc.Scalars("one/modularity")] == [0]
    assert "nofig/ari" in acc.Tags()["scalars"]


def test_community_evolution_errors(sequence):
    seq, y = sequence
    with pytest.raises(TypeError, match="DynamicGraph"):
        dg.measures.community_evolution([s for s in seq])
    with pytest.raises(ValueError, match="method"):
        dg.measures.community_evolution(seq, method="infomap")
    with pytest.raises(ValueError, match="resolution"):
        dg.measures.community_evolution(seq, resolution=-1.0)
    with pytest.raises(ValueError, match="no snapshots"):
        dg.measures.community_evolution(dg.DynamicGraph([]))
    small = dg.graphs.build_snapshot(torch.randn(60, 5, generator=gen(1)), torch.arange(60) % 3)
    with pytest.raises(ValueError, match="same samples"):
        dg.measures.community_evolution(dg.DynamicGraph([seq[0], small]))
    unlabelled = dg.graphs.build_snapshot(torch.randn(150, 5, generator=gen(1)))
    with pytest.raises(ValueError, match="no labels"):
        dg.measures.community_evolution(dg.DynamicGraph([unlabelled]))
