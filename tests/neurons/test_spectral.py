"""Spectral partitions and n-cut against scikit-learn, networkx and direct dense numpy."""
import numpy as np
import pytest
import torch
from torch import nn

import dyngraph as dg


def _ari(a, b) -> float:
    metrics = pytest.importorskip("sklearn.metrics")
    return float(metrics.adjusted_rand_score(np.asarray(a), np.asarray(b)))


def planted(sizes, p_in, p_out, seed=0, weighted=True):
    """A weighted stochastic block model as a dense symmetric numpy adjacency, and its blocks."""
    rng = np.random.default_rng(seed)
    lab = np.repeat(np.arange(len(sizes)), sizes)
    n = lab.size
    p = np.where(lab[:, None] == lab[None, :], p_in, p_out)
    a = (rng.random((n, n)) < p).astype(float)
    if weighted:
        a *= rng.uniform(0.5, 1.5, (n, n))
    a = np.triu(a, 1)
    return a + a.T, lab


def _edges(a: np.ndarray):
    t = torch.as_tensor(a)
    ei = t.nonzero().T
    return ei, t[ei[0], ei[1]]


def ncut_dense(a: np.ndarray, labels: np.ndarray) -> float:
    """Σ_c cut(c)/vol(c) straight from the dense matrix (self-loops count twice in degrees)."""
    deg = a.sum(1) + np.diag(a)
    total = 0.0
    for c in np.unique(labels):
        inside = labels == c
        total += a[np.ix_(inside, ~inside)].sum() / deg[inside].sum()
    return total


def test_ncut_matches_dense_numpy():
    rng = np.random.default_rng(3)
    a = rng.random((30, 30)) * (rng.random((30, 30)) < 0.3)
    a = np.triu(a, 1)
    a = a + a.T
    a[4, 4] = 0.7  # a self-loop, stored once
    labels = rng.integers(0, 5, 30)
    ei, w = _edges(a)
    ours = dg.neurons.ncut(ei, torch.as_tensor(labels), w)
    assert ours == pytest.approx(ncut_dense(a, labels), rel=1e-12)
    per = dg.neurons.ncut(ei, torch.as_tensor(labels), w, per_cluster=True)
    assert per.shape == (5,) and float(per.sum()) == pytest.approx(ours, rel=1e-12)
    # Unused label values are skipped.
    gap = torch.as_tensor(labels) * 2
    assert dg.neurons.ncut(ei, gap, w) == pytest.approx(ours, rel=1e-12)
    # Unit weights by default.
    assert dg.neurons.ncut(ei, torch.as_tensor(labels)) == pytest.approx(
        ncut_dense((a > 0) * 1.0, labels))


def test_ncut_two_clusters_matches_networkx():
    nx = pytest.importorskip("networkx")
    a, lab = planted([12, 15], 0.4, 0.1, seed=1)
    g = nx.from_numpy_array(a)
    s = set(np.flatnonzero(lab == 0).tolist())
    ei, w = _edges(a)
    assert dg.neurons.ncut(ei, torch.as_tensor(lab), w) == pytest.approx(
        nx.normalized_cut_size(g, s, weight="weight"), rel=1e-10)


def test_ncut_rejects_bad_input():
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(TypeError, match="clusters"):
        dg.neurons.ncut(ei, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="clusters"):
        dg.neurons.ncut(ei, torch.tensor([0, 1, 1]), num_nodes=2)
    with pytest.raises(ValueError, match="edge_weight"):
        dg.neurons.ncut(ei, torch.tensor([0, 1]), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="zero volume"):
        dg.neurons.ncut(ei, torch.tensor([0, 0, 1]), num_nodes=3)  # node 2 alone, no edges
    with pytest.raises(ValueError, match="edge_index"):
        dg.neurons.ncut(torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_nodes"):
        dg.neurons.ncut(torch.tensor([[0, 5], [5, 0]]), torch.tensor([0, 1]))


def test_planted_partition_is_recovered_and_agrees_with_sklearn():
    cluster = pytest.importorskip("sklearn.cluster")
    a, lab = planted([30, 40, 50], 0.3, 0.03, seed=0)
    ours = dg.neurons.spectral_partition(torch.as_tensor(a), 3, seed=0)
    assert ours.shape == (120,) and ours.dtype == torch.long
    assert _ari(lab, ours) == 1.0
    sk = cluster.SpectralClustering(3, affinity="precomputed", random_state=0).fit_predict(a)
    assert _ari(sk, ours) == 1.0
    ei, w = _edges(a)
    assert dg.neurons.ncut(ei, ours, w) == pytest.approx(
        dg.neurons.ncut(ei, torch.as_tensor(sk), w), rel=1e-12)
    # Noisier graphs: the two methods agree on labels and on n-cut.
    for seed in range(3):
        a2, lab2 = planted([25, 25, 25, 25], 0.3, 0.06, seed=seed)
        ours2 = dg.neurons.spectral_partition(torch.as_tensor(a2), 4, seed=0)
        sk2 = cluster.SpectralClustering(4, affinity="precomputed",
                                         random_state=0).fit_predict(a2)
        ei2, w2 = _edges(a2)
        assert _ari(sk2, ours2) >= 0.95
        assert _ari(lab2, ours2) >= 0.8
        assert dg.neurons.ncut(ei2, ours2, w2) == pytest.approx(
            dg.neurons.ncut(ei2, torch.as_tensor(sk2), w2), abs=1e-3)
    # Near the detection limit k-means lands in different local optima, of similar quality.
    for seed in range(4):
        a3, _ = planted([25, 25, 25, 25], 0.25, 0.08, seed=seed)
        ei3, w3 = _edges(a3)
        sk3 = cluster.SpectralClustering(4, affinity="precomputed",
                                         random_state=0).fit_predict(a3)
        ours3 = dg.neurons.spectral_partition(torch.as_tensor(a3), 4, seed=0)
        assert abs(dg.neurons.ncut(ei3, ours3, w3)
                   - dg.neurons.ncut(ei3, torch.as_tensor(sk3), w3)) < 0.06


def test_spectral_embedding_matches_sklearn():
    manifold = pytest.importorskip("sklearn.manifold")
    a, _ = planted([20, 25, 30], 0.35, 0.05, seed=2)
    ours = dg.neurons.spectral_embedding(torch.as_tensor(a), 3).numpy()
    ref = manifold.spectral_embedding(a, n_components=3, norm_laplacian=True, drop_first=False,
                                      random_state=0)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_solvers_agree_and_seed_makes_it_deterministic():
    pytest.importorskip("scipy")
    a, lab = planted([40, 40, 40], 0.2, 0.02, seed=4)
    t = torch.as_tensor(a)
    parts = {s: dg.neurons.spectral_partition(t, 3, seed=7, solver=s)
             for s in ("dense", "scipy", "lobpcg")}
    for s, p in parts.items():
        assert _ari(lab, p) == 1.0, s
    assert torch.equal(dg.neurons.spectral_partition(t, 3, seed=7), parts["dense"])
    # Same labels from a PyG Data and from the dense matrix; numbering by first appearance.
    from torch_geometric.data import Data
    ei, w = _edges(a)
    d = Data(edge_index=ei, edge_weight=w, num_nodes=120)
    assert torch.equal(dg.neurons.spectral_partition(d, 3, seed=7), parts["dense"])
    assert parts["dense"][0] == 0
    # k = 1 is the trivial partition.
    assert dg.neurons.spectral_partition(t, 1).unique().tolist() == [0]


def test_torch_kmeans_matches_sklearn():
    cluster = pytest.importorskip("sklearn.cluster")
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 3, generator=g) * 6
    x = (centres.repeat_interleave(40, 0) + torch.randn(200, 3, generator=g)).double()
    labels, cent, inertia = dg.neurons.kmeans(x, 5, seed=0)
    sk = cluster.KMeans(5, n_init=10, random_state=0).fit(x.numpy())
    assert _ari(sk.labels_, labels) == 1.0
    assert inertia == pytest.approx(sk.inertia_, rel=1e-6)
    assert torch.equal(dg.neurons.kmeans(x, 5, seed=0)[0], labels)


def test_spectral_partition_rejects_bad_input():
    a, _ = planted([5, 5], 0.9, 0.1, seed=0)
    t = torch.as_tensor(a)
    with pytest.raises(ValueError, match="n_clusters"):
        dg.neurons.spectral_partition(t, 11)
    with pytest.raises(TypeError, match="n_clusters"):
        dg.neurons.spectral_partition(t, 2.0)
    with pytest.raises(ValueError, match="solver"):
        dg.neurons.spectral_partition(t, 2, solver="magic")
    with pytest.raises(TypeError, match="data"):
        dg.neurons.spectral_partition(np.eye(3), 2)
    with pytest.raises(ValueError, match=">= 0"):
        dg.neurons.spectral_partition(-t, 2)
    iso = torch.zeros(11, 11, dtype=torch.float64)
    iso[:10, :10] = t
    with pytest.raises(ValueError, match="no edges"):
        dg.neurons.spectral_partition(iso, 2)
    with pytest.raises(ValueError, match="square"):
        dg.neurons.spectral_partition(torch.ones(3, 4), 2)


def _block_mlp(blocks=3, width=8, cross=0.0, seed=0):
    """An MLP whose hidden weights are block-diagonal: neuron i of every layer is in block
    i // width, and (almost) no weight crosses blocks."""
    torch.manual_seed(seed)
    n = blocks * width
    m = nn.Sequential(nn.Linear(6, n), nn.ReLU(), nn.Linear(n, n), nn.ReLU(), nn.Linear(n, n),
                      nn.ReLU(), nn.Linear(n, 2))
    mask = torch.block_diag(*[torch.ones(width, width)] * blocks)
    with torch.no_grad():
        for lin in (m[2], m[4]):
            lin.weight.copy_(lin.weight.abs() * (mask + cross * (1 - mask)) + 0.01 * mask)
    return m, torch.arange(n).div(width, rounding_mode="floor").repeat(3)


def test_planted_block_diagonal_network_is_recovered():
    m, blocks = _block_mlp(cross=0.02)
    g = dg.neurons.neuron_graph(m)
    assert g.num_nodes == 72
    parts = dg.neurons.spectral_partition(g, 3, seed=0)
    assert _ari(blocks, parts) == 1.0
    value = dg.neurons.ncut(g.edge_index, parts, g.edge_weight, g.num_nodes)
    a = np.zeros((72, 72))
    a[g.edge_index[0].numpy(), g.edge_index[1].numpy()] = g.edge_weight.double().numpy()
    assert value == pytest.approx(ncut_dense(a, parts.numpy()), rel=1e-6)
    assert value < 0.2
    # The shuffled copies are far less clusterable: p is the smallest possible, z very negative.
    res = dg.neurons.clusterability(m, 3, n_shuffles=9, seed=0, progress=False)
    assert res.ncut == pytest.approx(value)
    assert res.p_value == pytest.approx(1 / 10)
    assert res.z_score < -5 and float(res.shuffled.min()) > value
    assert _ari(blocks, res.clusters) == 1.0


def test_shuffle_weights_permutes_within_each_layer():
    m, _ = _block_mlp()
    with torch.no_grad():
        m[2].weight[0, :5] = 0.0
    s = dg.neurons.shuffle_weights(m, seed=3)
    for a, b in zip(m.parameters(), s.parameters()):
        if a.dim() == 2:
            assert not torch.equal(a, b)
            assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
        else:  # biases are kept
            assert torch.equal(a, b)
    nz = dg.neurons.shuffle_weights(m, seed=3, how="nonzero")
    for a, b in zip(m.parameters(), nz.parameters()):
        assert torch.equal(a == 0, b == 0)
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
    with pytest.raises(ValueError, match="shuffle"):
        dg.neurons.shuffle_weights(m, how="rows")


def test_clusterability_checkpoint_resumes(tmp_path):
    torch.manual_seed(0)
    m = dg.zoo.DigitsMLP(depth=3, width=16)
    ck = tmp_path / "shuffles.json"
    fresh = dg.neurons.clusterability(m, 3, n_shuffles=5, seed=1, progress=False)
    part = dg.neurons.clusterability(m, 3, n_shuffles=3, seed=1, checkpoint=ck, progress=False)
    assert torch.equal(part.shuffled, fresh.shuffled[:3])
    resumed = dg.neurons.clusterability(m, 3, n_shuffles=5, seed=1, checkpoint=ck, progress=False)
    assert torch.equal(resumed.shuffled, fresh.shuffled)
    r = int((fresh.shuffled <= fresh.ncut).sum())
    assert fresh.p_value == pytest.approx((r + 1) / 6)
    z = (fresh.ncut - fresh.shuffled.mean()) / fresh.shuffled.std()
    assert fresh.z_score == pytest.approx(float(z))
    # Other settings do not reuse the file.
    other = dg.neurons.clusterability(m, 4, n_shuffles=2, seed=1, checkpoint=ck, progress=False)
    assert other.shuffled.numel() == 2
    with pytest.raises(ValueError, match="n_shuffles"):
        dg.neurons.clusterability(m, 3, n_shuffles=0)
    with pytest.raises(ValueError, match="graph_kwargs"):
        dg.neurons.clusterability(m, 3, graph_kwargs={"source": "weights"})
