"""Similarity measures: CKA (biased, unbiased, streaming, minibatch), kNN overlap, mutual kNN,
graph similarity, modularity distance, permutation tests and layer × layer matrices.

Every value is checked against an independent computation (numpy closed forms, scikit-learn
neighbours, networkx modularity) on seeded data.
"""
import math

import networkx as nx
import numpy as np
import pytest
import torch

import dyngraph as dg


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rand(n, d, seed=0, dtype=torch.float64):
    return torch.randn(n, d, generator=gen(seed), dtype=dtype)


def orthogonal(d, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=torch.float64))
    return q


# ---------------------------------------------------------------- independent numpy references
def np_hsic_biased(K, L):
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def np_hsic_unbiased(K, L):
    """Song et al. (2012), eq. (5): the U-statistic with zero-diagonal kernels."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    one = np.ones(n)
    val = (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
           - 2.0 / (n - 2) * one @ Kt @ Lt @ one)
    return val / (n * (n - 3))


def np_cka(X, Y, unbiased=False):
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    K, L = X @ X.T, Y @ Y.T
    h = np_hsic_unbiased if unbiased else np_hsic_biased
    return h(K, L) / math.sqrt(h(K, K) * h(L, L))


def np_knn(X, k, metric="cosine"):
    from sklearn.neighbors import NearestNeighbors
    X = np.asarray(X, np.float64)
    if metric == "cosine":
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
    nn_ = NearestNeighbors(n_neighbors=k + 1).fit(X)
    _, idx = nn_.kneighbors(X)
    out = []
    for i, row in enumerate(idx):
        out.append([j for j in row if j != i][:k])
    return np.array(out)


# ---------------------------------------------------------------- CKA
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("form", ["features", "gram"])
@pytest.mark.parametrize("dims", [(5, 7), (40, 12), (3, 90)])
def test_cka_matches_numpy_reference(unbiased, form, dims):
    n = 30
    x = rand(n, dims[0], 1)
    y = torch.tanh(x[:, :1] @ torch.ones(1, dims[1], dtype=torch.float64)) + rand(n, dims[1], 2)
    ours = dg.measures.linear_cka(x, y, unbiased=unbiased, form=form)
    ref = np_cka(x.numpy(), y.numpy(), unbiased=unbiased)
    assert ours == pytest.approx(ref, abs=1e-10)


def test_cka_uncentred_inputs_match_reference_on_raw_grams():
    # The reference uses raw (uncentred) Gram matrices; ours centres first. Both must agree.
    x = rand(25, 6, 3) + 4.0
    y = x @ rand(6, 3, 4) - 7.0 + 0.5 * rand(25, 3, 5)
    for unbiased in (False, True):
        assert dg.measures.linear_cka(x, y, unbiased) == pytest.approx(np_cka(x, y, unbiased), abs=1e-10)


def test_cka_one_dimensional_is_squared_pearson():
    x = rand(200, 1, 6)
    y = 0.3 * x + rand(200, 1, 7)
    r = np.corrcoef(x.flatten().numpy(), y.flatten().numpy())[0, 1]
    assert dg.measures.linear_cka(x, y) == pytest.approx(r ** 2, abs=1e-12)


def test_u_center_identity():
    x, y = rand(12, 4, 8), rand(12, 3, 9)
    K, L = (x @ x.T), (y @ y.T)
    ours = float((dg.measures.u_center(K) * dg.measures.u_center(L)).sum()) / (12 * 9)
    assert ours == pytest.approx(np_hsic_unbiased(K.numpy(), L.numpy()), rel=1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_invariances(unbiased):
    x = rand(80, 10, 10)
    q = orthogonal(10, 11)
    y = torch.relu(x @ rand(10, 6, 12))
    base = dg.measures.linear_cka(x, y, unbiased)
    assert dg.measures.linear_cka(x, x, unbiased) == pytest.approx(1.0, abs=1e-12)
    assert dg.measures.linear_cka(x @ q, y, unbiased) == pytest.approx(base, abs=1e-10)        # rotation
    assert dg.measures.linear_cka(7.5 * x, 0.01 * y, unbiased) == pytest.approx(base, abs=1e-10)  # scaling
    assert dg.measures.linear_cka(x + 3.0, y - 2.0, unbiased) == pytest.approx(base, abs=1e-10)   # shift
    assert dg.measures.linear_cka(x, y, unbiased) == pytest.approx(dg.measures.linear_cka(y, x, unbiased), abs=1e-12)
    # Not invariant to an anisotropic rescaling of the features (CKA does not promise it).
    aniso = x * torch.linspace(0.1, 10, 10, dtype=torch.float64)
    assert abs(dg.measures.linear_cka(aniso, y, unbiased) - base) > 1e-3


def test_cka_unbiased_near_zero_for_independent_data_and_float32_input():
    x, y = rand(400, 20, 13).float(), rand(400, 20, 14).float()
    assert abs(dg.measures.linear_cka(x, y, unbiased=True)) < 0.02
    assert dg.measures.linear_cka(x, y) > dg.measures.linear_cka(x, y, unbiased=True)   # the biased estimator is inflated


def np_feature_cka(X, Y):
    """Closed form on column-centred features: ‖XcᵀYc‖² / (‖XcᵀXc‖ ‖YcᵀYc‖)."""
    X = np.asarray(X, np.float64) - np.mean(X, 0)
    Y = np.asarray(Y, np.float64) - np.mean(Y, 0)
    return (np.linalg.norm(X.T @ Y) ** 2
            / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)))


def test_cka_precision_with_large_offsets():
    # float32 features with a huge common offset: float64 centring keeps CKA accurate, where
    # raw float32 Gram matrices (K ~ 1e9) lose every significant digit of the centred signal.
    x = rand(300, 8, 15)
    y = x @ orthogonal(8, 16)
    xf, yf = (x + 1e4).float(), (y - 1e4).float()
    ref = np_feature_cka(xf.double().numpy(), yf.double().numpy())
    assert ref > 0.9999
    for form in ("features", "gram"):
        assert dg.measures.linear_cka(xf, yf, form=form) == pytest.approx(ref, abs=1e-12)



def test_cka_errors():
    x = rand(20, 3, 17)
    with pytest.raises(ValueError, match="same N"):
        dg.measures.linear_cka(x, rand(21, 3, 18))
    with pytest.raises(ValueError, match="zero variance"):
        dg.measures.linear_cka(x, torch.ones(20, 4, dtype=torch.float64))
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        dg.measures.linear_cka(bad, x)
    with pytest.raises(TypeError, match="floating"):
        dg.measures.linear_cka(torch.ones(20, 3, dtype=torch.long), x)
    with pytest.raises(TypeError, match="torch.Tensor"):
        dg.measures.linear_cka(x.numpy(), x)
    with pytest.raises(ValueError, match="at least 4"):
        dg.measures.linear_cka(x[:3], x[:3], unbiased=True)
    with pytest.raises(ValueError, match="form"):
        dg.measures.linear_cka(x, x, form="dense")


# ---------------------------------------------------------------- streaming CKA
@pytest.mark.parametrize("unbiased", [False, True])
def test_streaming_cka_equals_full(unbiased):
    x = rand(257, 6, 20) * 3 + 50.0          # large offset: the shift must handle it
    y = torch.tanh(x @ rand(6, 9, 21) / 30) + 0.1 * rand(257, 9, 22)
    acc = dg.measures.StreamingCKA(unbiased=unbiased)
    for s, e in [(0, 1), (1, 64), (64, 200), (200, 257)]:      # uneven batches, one of 1 row
        acc.update(x[s:e].float(), y[s:e].float())
    full = dg.measures.linear_cka(x.float(), y.float(), unbiased)
    assert acc.n == 257
    assert acc.compute() == pytest.approx(full, abs=1e-9)
    assert full == pytest.approx(np_cka(x.float().double(), y.float().double(), unbiased),
                                 abs=1e-9)


def test_streaming_cka_errors():
    acc = dg.measures.StreamingCKA(unbiased=True)
    acc.update(rand(3, 2, 1), rand(3, 2, 2))
    with pytest.raises(ValueError, match="seen 3 rows"):
        acc.compute()
    with pytest.raises(ValueError, match="feature sizes changed"):
        acc.update(rand(3, 4, 1), rand(3, 2, 2))
    with pytest.raises(ValueError, match="same rows"):
        acc.update(rand(3, 2, 1), rand(4, 2, 2))
    const = dg.measures.StreamingCKA()
    const.update(torch.ones(10, 2), rand(10, 2, 3).float())
    with pytest.raises(ValueError, match="not positive"):
        const.compute()


def test_minibatch_cka_single_batch_equals_full_cka():
    x = rand(64, 5, 30)
    layers = [x, torch.relu(x @ rand(5, 12, 31)), rand(64, 3, 32)]
    for unbiased in (True, False):
        acc = dg.measures.MinibatchCKA(unbiased=unbiased)
        acc.update(layers)
        m = acc.compute()
        for i in range(3):
            for j in range(3):
                assert float(m[i, j]) == pytest.approx(dg.measures.linear_cka(layers[i], layers[j], unbiased),
                                                       abs=1e-10)


def test_minibatch_cka_matches_numpy_average_of_batch_hsic():
    x, y = rand(125, 4, 33), rand(125, 6, 34)
    y = y + x @ rand(4, 6, 35)
    bounds = [(0, 40), (40, 100), (100, 120), (120, 125)]      # unequal batches, one of 5 rows
    for unbiased, h in ((True, np_hsic_unbiased), (False, np_hsic_biased)):
        acc = dg.measures.MinibatchCKA(unbiased=unbiased)
        hxy = hxx = hyy = 0.0
        for s, e in bounds:
            xb, yb = x[s:e], y[s:e]
            acc.update([xb], [yb])
            K, L = (xb @ xb.T).numpy(), (yb @ yb.T).numpy()
            hxy += h(K, L)
            hxx += h(K, K)
            hyy += h(L, L)
        assert float(acc.compute()[0, 0]) == pytest.approx(hxy / math.sqrt(hxx * hyy),
                                                           abs=1e-10)
        assert acc.n_batches == 4 and acc.n_rows == 125
    # float32 features: float64 centring + float32 Gram stay within 1e-6 of the float64 result
    acc32, acc64 = dg.measures.MinibatchCKA(), dg.measures.MinibatchCKA(float64_gram=True)
    for s, e in bounds:
        acc32.update([x[s:e].float() + 30], [y[s:e].float()])
        acc64.update([x[s:e] + 30], [y[s:e]])
    assert float(acc32.compute()[0, 0]) == pytest.approx(float(acc64.compute()[0, 0]), abs=1e-6)


def test_minibatch_cka_errors():
    acc = dg.measures.MinibatchCKA()
    with pytest.raises(ValueError, match="before any update"):
        acc.compute()
    with pytest.raises(ValueError, match="too small"):
        acc.update([rand(3, 2)])
    with pytest.raises(ValueError, match="same batch"):
        acc.update([rand(8, 2), rand(7, 2)])
    acc.update([rand(8, 2)])
    with pytest.raises(ValueError, match="number of layers changed"):
        acc.update([rand(8, 2), rand(8, 2)])
    with pytest.raises(TypeError, match="Tensor"):
        acc.update(["not a tensor"])


def test_minibatch_cka_against_torch_cka():
    torch_cka = pytest.importorskip("torch_cka")
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    torch.manual_seed(0)
    m1 = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    m2 = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 5))
    loader = DataLoader(TensorDataset(torch.randn(192, 6), torch.zeros(192)), batch_size=64)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = torch_cka.CKA(m1, m2, model1_name="a", model2_name="b",
                             model1_layers=["0", "2", "4"], model2_layers=["0", "2"])
        peer.compare(loader)
    ref = peer.export()["CKA"]
    got = dg.compare.stream_cka({"a": m1, "b": m2}, loader,
                                layers={"a": ["0", "2", "4"], "b": ["0", "2"]}, within=False,
                                progress=False)[("a", "b")]["cka_minibatch"]
    assert torch.allclose(got, ref.double(), atol=1e-4)


# ---------------------------------------------------------------- kNN measures
def test_knn_overlap_and_mutual_knn_match_sklearn():
    x = rand(150, 8, 40)
    y = x + 0.7 * rand(150, 8, 41)
    k = 7
    a, b = np_knn(x.numpy(), k), np_knn(y.numpy(), k)
    inter = np.array([len(set(r) & set(s)) for r, s in zip(a, b)])
    assert dg.measures.knn_overlap(x, y, k) == pytest.approx(float(np.mean(inter / (2 * k - inter))), abs=1e-12)
    assert dg.measures.mutual_knn(x, y, k) == pytest.approx(float(np.mean(inter / k)), abs=1e-12)
    a, b = np_knn(x.numpy(), k, "euclidean"), np_knn(y.numpy(), k, "euclidean")
    inter = np.array([len(set(r) & set(s)) for r, s in zip(a, b)])
    assert dg.measures.mutual_knn(x, y, k, metric="euclidean") == pytest.approx(float(np.mean(inter / k)))


def test_knn_measures_invariances_and_chance_level():
    x = rand(200, 10, 42)
    q = orthogonal(10, 43)
    for fn in (dg.measures.knn_overlap, dg.measures.mutual_knn):
        assert fn(x, x, 10) == 1.0
        assert fn(x, 3.0 * x @ q, 10) == 1.0                 # rotation + isotropic scaling
    unrelated = dg.measures.mutual_knn(x, rand(200, 10, 44), 10)
    assert unrelated < 0.15                                 # chance: k/(N-1) = 0.05
    assert 0 <= dg.measures.knn_overlap(x, rand(200, 10, 44), 10) <= unrelated


def test_knn_measure_errors():
    x = rand(20, 3, 45)
    with pytest.raises(ValueError, match="k must be smaller"):
        dg.measures.mutual_knn(x, x, k=20)
    with pytest.raises(ValueError, match="metric"):
        dg.measures.knn_overlap(x, x, k=3, metric="manhattan")
    with pytest.raises(ValueError, match="same N"):
        dg.measures.mutual_knn(x, x[:10], k=3)
    with pytest.raises(ValueError, match="zero"):
        dg.measures.mutual_knn(x, torch.zeros(20, 3, dtype=torch.float64), k=3)


# ---------------------------------------------------------------- graph similarity
def np_graph_similarity(X, Y, k, symmetrize=True):
    def adj(Z):
        Z = np.asarray(Z, np.float64)
        Zn = Z / np.linalg.norm(Z, axis=1, keepdims=True)
        S = Zn @ Zn.T
        idx = np_knn(Z, k)
        A = np.zeros_like(S)
        for i, row in enumerate(idx):
            A[row, i] = S[row, i]            # edge neighbour -> query, weight cos
        return (A + A.T) / 2 if symmetrize else A
    A, B = adj(X), adj(Y)
    cos = (A * B).sum(1) / (np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1))
    return float(cos.mean())


def test_graph_similarity_matches_dense_numpy():
    x = rand(90, 6, 50)
    y = torch.tanh(x @ rand(6, 9, 51)) + 0.3 * rand(90, 9, 52)
    assert dg.measures.graph_similarity(x, y, k=5) == pytest.approx(np_graph_similarity(x, y, 5), abs=1e-10)
    # directed rows: row i holds i's own k neighbours with their cosines
    ours_dir = dg.measures.graph_similarity(x, y, k=5, symmetrize=None)
    A = np.zeros((90, 90))
    B = np.zeros((90, 90))
    for M, Z in ((A, x), (B, y)):
        Zn = (Z / Z.norm(dim=1, keepdim=True)).numpy()
        for i, row in enumerate(np_knn(Z.numpy(), 5)):
            M[i, row] = Zn[row] @ Zn[i]
    cos = (A * B).sum(1) / (np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1))
    assert ours_dir == pytest.approx(float(np.mean(cos)), abs=1e-10)
    assert ours_dir != pytest.approx(dg.measures.graph_similarity(x, y, k=5), abs=1e-6)


def test_graph_similarity_full_graph_matches_numpy_and_invariances():
    x = rand(70, 5, 53)
    y = x + 0.5 * rand(70, 5, 54)
    xn = (x / x.norm(dim=1, keepdim=True)).numpy()
    yn = (y / y.norm(dim=1, keepdim=True)).numpy()
    A, B = xn @ xn.T, yn @ yn.T
    np.fill_diagonal(A, 0)
    np.fill_diagonal(B, 0)
    ref = np.mean((A * B).sum(1) / (np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1)))
    assert dg.measures.graph_similarity(x, y, k=None) == pytest.approx(float(ref), abs=1e-12)
    q = orthogonal(5, 55)
    for k in (None, 6):
        assert dg.measures.graph_similarity(x, x, k=k) == pytest.approx(1.0, abs=1e-12)
        base = dg.measures.graph_similarity(x, y, k=k)
        assert dg.measures.graph_similarity(4 * x @ q, 0.2 * y, k=k) == pytest.approx(base, abs=1e-10)


def test_adjacency_cosine_sparse_against_dense():
    g = gen(56)
    ei_a = torch.randint(0, 12, (2, 40), generator=g)
    ei_b = torch.randint(0, 12, (2, 40), generator=g)
    wa, wb = torch.rand(40, generator=g), torch.rand(40, generator=g)
    ei_a[0, :12] = torch.arange(12)    # every row non-empty
    ei_b[0, :12] = torch.arange(12)
    A, B = np.zeros((12, 12)), np.zeros((12, 12))
    np.add.at(A, (ei_a[0].numpy(), ei_a[1].numpy()), wa.numpy())
    np.add.at(B, (ei_b[0].numpy(), ei_b[1].numpy()), wb.numpy())
    ref = (A * B).sum(1) / (np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1))
    got = dg.measures.adjacency_cosine(ei_a, wa, ei_b, wb, 12, reduce="none")
    assert np.allclose(got.numpy(), ref, atol=1e-7)
    with pytest.raises(ValueError, match="all-zero adjacency row"):
        dg.measures.adjacency_cosine(ei_a[:, 12:20], None, ei_b, None, 12)
    with pytest.raises(ValueError, match="num_nodes"):
        dg.measures.adjacency_cosine(ei_a, None, ei_b, None, 5)


# ---------------------------------------------------------------- modularity distance
def nx_q(x, labels, k=3):
    snap = dg.graphs.build_snapshot(x, labels, k=k)
    G = nx.Graph()
    G.add_nodes_from(range(x.shape[0]))
    for (i, j), w in zip(snap.edge_index.t().tolist(), snap.edge_weight.tolist()):
        if i < j:
            G.add_edge(i, j, weight=w)
    comms = [set(np.flatnonzero(labels.numpy() == c).tolist()) for c in labels.unique().tolist()]
    return nx.community.modularity(G, comms, weight="weight")


def test_modularity_distance_matches_networkx():
    labels = torch.arange(120) % 4
    a = rand(120, 8, 60) + 2.5 * torch.eye(8, dtype=torch.float64)[labels]
    b = rand(120, 8, 61) + 0.8 * torch.eye(8, dtype=torch.float64)[labels]
    ref = abs(nx_q(a, labels) - nx_q(b, labels))
    assert dg.measures.modularity_distance(a, b, labels) == pytest.approx(ref, abs=1e-6)
    assert dg.measures.modularity_distance(a, a @ orthogonal(8, 62) * 3, labels) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="labels"):
        dg.measures.modularity_distance(a, b, labels[:10])


# ---------------------------------------------------------------- permutation tests
ALL = ["cka", "cka_unbiased", "knn_overlap", "mutual_knn", "graph", "modularity_distance"]


@pytest.mark.parametrize("measure", ALL)
@pytest.mark.parametrize("dim_y", [6, 70])     # features form and Gram form for CKA
def test_permutation_null_equals_brute_force(measure, dim_y):
    n, p, seed = 60, 12, 5
    labels = torch.arange(n) % 3
    x = rand(n, 6, 70) + 1.5 * torch.eye(6, dtype=torch.float64)[labels]
    y = torch.tanh(torch.cat([x, x], 1) @ rand(12, dim_y, 71)) + 0.5 * rand(n, dim_y, 72)
    res = dg.measures.permutation_test(measure, x, y, labels=labels, permutations=p, seed=seed, k=5)
    assert isinstance(res, dg.measures.PermutationResult) and res.null.shape == (p,)
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n, generator=g) for _ in range(p)]
    fns = {"cka": lambda a, b: dg.measures.linear_cka(a, b),
           "cka_unbiased": lambda a, b: dg.measures.linear_cka(a, b, unbiased=True),
           "knn_overlap": lambda a, b: dg.measures.knn_overlap(a, b, 5),
           "mutual_knn": lambda a, b: dg.measures.mutual_knn(a, b, 5),
           "graph": lambda a, b: dg.measures.graph_similarity(a, b, 5),
           "modularity_distance": lambda a, b: dg.measures.modularity_distance(a, b, labels)}
    brute = torch.tensor([fns[measure](x, y[pi]) for pi in perms], dtype=torch.float64)
    assert torch.allclose(res.null, brute, atol=1e-9)
    assert res.value == pytest.approx(fns[measure](x, y), abs=1e-12)


def test_permutation_p_values():
    x = rand(80, 5, 80)
    related = dg.measures.permutation_test("cka", x, x + 0.2 * rand(80, 5, 81), permutations=199)
    assert related.p_value == pytest.approx(1 / 200)
    unrelated = dg.measures.permutation_test("mutual_knn", x, rand(80, 5, 82), permutations=199, k=5)
    assert unrelated.p_value > 0.05
    labels = torch.arange(80) % 2
    sep = x + 3 * torch.eye(5, dtype=torch.float64)[labels]
    d = dg.measures.permutation_test("modularity_distance", sep, 2 * sep, labels=labels, permutations=99)
    assert d.value == 0 and d.p_value == pytest.approx(0.01)
    with pytest.raises(ValueError, match="measure"):
        dg.measures.permutation_test("procrustes", x, x)
    with pytest.raises(ValueError, match="permutations"):
        dg.measures.permutation_test("cka", x, x, permutations=0)
    with pytest.raises(ValueError, match="needs labels"):
        dg.measures.permutation_test("modularity_distance", x, x, permutations=5)


# ---------------------------------------------------------------- layer × layer matrices
def _opts(**kw):
    return {m: dict(kw) for m in ALL}


def _matrix_features():
    labels = torch.arange(90) % 3
    x = rand(90, 8, 90) + 2 * torch.eye(8, dtype=torch.float64)[labels]
    fa = {"l1": x, "l2": torch.tanh(x @ rand(8, 100, 91)), "l3": rand(90, 4, 92)}
    q = orthogonal(8, 93)
    fb = {"m1": 2 * x @ q, "m2": 3 * fa["l2"]}
    return fa, fb, labels


def test_layer_matrix_within_and_between():
    fa, fb, labels = _matrix_features()
    within = dg.layer_matrix(fa, None, ALL, y=labels, measure_options=_opts(k=5))
    between = dg.layer_matrix(fa, fb, ALL, y=labels, permutations=19,
                              measure_options=_opts(k=5))
    assert isinstance(within, dg.LayerMatrix) and within.metrics == ALL
    assert between.metrics == [x for m in ALL for x in (m, f"{m}:p")]
    for m in ALL:
        w = within[m]
        assert w.shape == (3, 3) and torch.allclose(w, w.T)
        target = 0.0 if m == "modularity_distance" else 1.0
        assert torch.allclose(w.diagonal(), torch.full((3,), target, dtype=torch.float64),
                              atol=1e-9)
        b, p = between[m], between[f"{m}:p"]
        assert b.shape == (3, 2) and p.shape == (3, 2)
        assert between.rows == ["l1", "l2", "l3"] and between.cols == ["m1", "m2"]
        # B's layers are A's first two layers, rotated and scaled: same values
        assert torch.allclose(b, w[:, :2], atol=1e-9), m
        assert (p > 0).all() and (p <= 1).all()
    assert within["cka"][0, 2] < 0.3
    c = within.diagonal_contrast("cka")
    assert c["diagonal_mean"] == pytest.approx(1.0) and c["row_best_is_diagonal"] == 1.0
    assert within.meta["distance"]["modularity_distance"] is True


@pytest.mark.parametrize("k, modularity_k", [(5, 3), (2, 4)])
def test_layer_matrix_equals_summary_matrices_bitwise(k, modularity_k):
    """``dg.layer_matrix`` prepares each measure on its own; the 0.1 ``similarity_matrices``
    prepared one summary with every measure (kNN lists at max(k, modularity_k)) and filled the
    cells with the same seeds. Both give the same bits, p-values included."""
    fa, fb, labels = _matrix_features()
    kw = dict(k=k, modularity_k=modularity_k, backend="matmul")

    def summaries(feats):
        return {n: dg.measures.RepresentationSummary(v, ALL, labels=labels, **kw)
                for n, v in feats.items()}
    sa, sb = summaries(fa), summaries(fb)
    between = dg.layer_matrix(fa, fb, ALL, y=labels, permutations=7, seed=3,
                              measure_options=_opts(**kw))
    within = dg.layer_matrix(fa, None, ALL, y=labels, measure_options=_opts(**kw))
    for m in ALL:
        vals, ps = dg.measures.fill_matrix(sa, sb, m, permutations=7, seed=3)
        assert torch.equal(between[m], vals) and torch.equal(between[f"{m}:p"], ps), m
        vals, ps = dg.measures.fill_matrix(sa, sa, m, symmetric=True)
        assert ps is None and torch.equal(within[m], vals), m


def test_layer_matrix_errors():
    x = rand(30, 4, 1)
    with pytest.raises(ValueError, match="measure"):
        dg.layer_matrix({"a": x}, measures=["svcca"])
    with pytest.raises(ValueError, match="same number of samples"):
        dg.layer_matrix({"a": x, "b": x[:20]})
    with pytest.raises(TypeError, match="features"):
        dg.layer_matrix([x])
    with pytest.raises(ValueError, match="needs labels"):
        dg.layer_matrix({"a": x}, measures=["modularity_distance"])
    a = dg.measures.RepresentationSummary(x, measures=["cka"])
    b = dg.measures.RepresentationSummary(x, measures=["mutual_knn"], k=3)
    with pytest.raises(ValueError, match="not prepared"):
        dg.measures.summary_similarity(a, b, "cka")


def test_layer_matrix_plot_json_and_tensorboard(tmp_path):
    from matplotlib.figure import Figure
    from torch.utils.tensorboard import SummaryWriter
    values = torch.tensor([[1.0, 0.2], [0.3, 0.9], [0.1, 0.5]])
    m = dg.LayerMatrix(["a", "b", "c"], ["u", "v"], ["cka", "cka:p"],
                       torch.stack([values, torch.full((3, 2), 0.01)], -1),
                       {"distance": {"cka": False}})
    assert isinstance(dg.plot(m, tmp_path / "h.png"), Figure)
    assert (tmp_path / "h.png").stat().st_size > 1000
    again = dg.LayerMatrix.from_dict(m.to_dict())
    assert again == m and torch.equal(again["cka"], m["cka"]) and again.cols == ["u", "v"]
    with SummaryWriter(str(tmp_path / "tb")) as w:
        dg.log(w, m, prefix="sim")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(tmp_path / "tb"))
    ev.Reload()
    assert "sim/figure" in ev.Tags()["images"]
    with pytest.raises(ValueError, match="values must"):
        dg.LayerMatrix(["a"], ["b"], ["cka"], torch.zeros(2, 2))
    with pytest.raises(TypeError, match="SummaryWriter"):
        dg.log(object(), m)


def test_cka_variants_share_one_core():
    """The exact, streaming and minibatch estimators and the permutation null agree on one batch
    (they share the centring, Gram, unbiased-correction and ratio code)."""
    x = rand(48, 5, 100)
    y = torch.tanh(x @ rand(5, 9, 101)) + 0.3 * rand(48, 9, 102)
    for unbiased in (False, True):
        exact = dg.measures.linear_cka(x, y, unbiased)
        assert dg.measures.linear_cka(x, y, unbiased, form="gram") == pytest.approx(exact,
                                                                                  abs=1e-12)
        acc = dg.measures.StreamingCKA(unbiased)
        acc.update(x, y)
        assert acc.compute() == pytest.approx(exact, abs=1e-12)
        mb = dg.measures.MinibatchCKA(unbiased, float64_gram=True)
        mb.update([x], [y])
        assert float(mb.compute()[0, 0]) == pytest.approx(exact, abs=1e-12)
        measure = "cka_unbiased" if unbiased else "cka"
        r = dg.measures.permutation_test(measure, x, y, permutations=3)
        assert r.value == exact
    # the same degenerate input fails with the same message in every estimator
    const = torch.ones(48, 3, dtype=torch.float64)
    acc = dg.measures.StreamingCKA()
    acc.update(const, y)
    for call in (lambda: dg.measures.linear_cka(const, y), acc.compute):
        with pytest.raises(ValueError, match=r"HSIC\(\w, \w\) = 0 is not positive.*zero variance"):
            call()
