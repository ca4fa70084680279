import numpy as np
import pytest
import torch

import dyngraph as dg
from dyngraph import typing as dgt
from dyngraph.testing import reference_knn as brute_force

BACKENDS = ["matmul"] + (["torch_cluster"] if dgt.WITH_TORCH_CLUSTER else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_knn_matches_brute_force(backend, metric, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 12, generator=g, dtype=torch.float64)
    vals, idx = dg.graphs.nearest_neighbors(x, 5, metric=metric, backend=backend)
    ref_v, ref_i = brute_force(x.numpy(), 5, metric)
    assert np.array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(vals.numpy(), ref_v, atol=1e-10)


def test_knn_matches_scipy_ckdtree():
    from scipy.spatial import cKDTree
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64)
    d, i = cKDTree(x.numpy()).query(x.numpy(), k=5)  # includes self at position 0
    vals, idx = dg.graphs.nearest_neighbors(x, 4, metric="euclidean", backend="matmul", chunk_size=37)
    assert np.array_equal(idx.numpy(), i[:, 1:])
    np.testing.assert_allclose(vals.numpy(), d[:, 1:], atol=1e-12)


def test_knn_matches_sklearn_brute_cosine():
    from sklearn.neighbors import NearestNeighbors
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 20, generator=g)
    nn_ = NearestNeighbors(n_neighbors=4, algorithm="brute", metric="cosine").fit(x.numpy())
    d, i = nn_.kneighbors(x.numpy())
    vals, idx = dg.graphs.nearest_neighbors(x, 3, metric="cosine")
    assert (idx.numpy() == i[:, 1:]).mean() > 0.999  # float32 near-ties may swap
    np.testing.assert_allclose(vals.numpy(), 1 - d[:, 1:], atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_chunking_does_not_change_result(chunk):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(150, 9, generator=g)
    base = dg.graphs.nearest_neighbors(x, 4, backend="matmul")
    got = dg.graphs.nearest_neighbors(x, 4, backend="matmul", chunk_size=chunk)
    assert torch.equal(base[1], got[1]) and torch.allclose(base[0], got[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_broken_by_smaller_index(backend):
    # A 1-D integer grid: every interior point has two neighbours at distance 1.
    x = torch.arange(10, dtype=torch.float64).unsqueeze(1)
    vals, idx = dg.graphs.nearest_neighbors(x, 1, metric="euclidean", backend=backend)
    assert idx.flatten().tolist() == [1, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    # Duplicated points: ties at the k-th boundary resolve to the smallest index.
    x = torch.tensor([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 2)
    vals, idx = dg.graphs.nearest_neighbors(x, 2, metric="cosine", backend=backend)
    assert idx[0].tolist() == [1, 2] and idx[5].tolist() == [0, 1] and idx[6].tolist()[0] == 7
    ref_v, ref_i = brute_force(x.numpy().astype(np.float64), 2, "cosine")
    assert np.array_equal(idx.numpy(), ref_i)


def test_knn_graph_layout_and_weights():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(50, 8, generator=g)
    ei, w = dg.knn_edges(x, 3)
    vals, idx = dg.graphs.nearest_neighbors(x, 3)
    assert ei.shape == (2, 150) and w.shape == (150,)
    assert torch.equal(ei[1], torch.arange(50).repeat_interleave(3))  # target = query
    assert torch.equal(ei[0], idx.reshape(-1))  # source = neighbour
    assert not bool((ei[0] == ei[1]).any())
    assert torch.bincount(ei[1], minlength=50).eq(3).all()
    xn = torch.nn.functional.normalize(x, dim=1)
    assert torch.allclose(w, (xn[ei[0]] * xn[ei[1]]).sum(1), atol=1e-6)
    _, w_e = dg.knn_edges(x, 3, metric="euclidean")
    assert torch.equal(w_e, torch.ones(150))


def test_auto_backend_is_the_tie_rule_whatever_is_installed():
    # many exact ties (integer points on a grid): 'auto' keeps the smaller index, always
    g = torch.Generator().manual_seed(7)
    for d in (2, 3, 64):
        x = torch.randint(0, 3, (400, d), generator=g).float() + 1.0
        vals, idx = dg.graphs.nearest_neighbors(x, 3, backend="auto", metric="euclidean")
        full = torch.cdist(x, x).fill_diagonal_(float("inf"))
        # the oracle: sort by (distance, index) with a stable sort over index order
        order = torch.sort(full, dim=1, stable=True).indices[:, :3]
        assert torch.equal(idx, order), d
        assert torch.allclose(vals, full.gather(1, order))


@pytest.mark.parametrize("bad, err, match", [
    (lambda x: (x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill_(0, torch.tensor([3]), True), float("nan")), 3), ValueError, "NaN"),
    (lambda x: (x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill_(0, torch.tensor([1]), True), float("inf")), 3), ValueError, "inf"),
    (lambda x: (x, 0), ValueError, "k must be >= 1"),
    (lambda x: (x, 20), ValueError, "smaller than the number of samples"),
    (lambda x: (x, 2.5), TypeError, "k must be an int"),
    (lambda x: (x.long(), 3), TypeError, "floating-point"),
    (lambda x: (x[0], 3), ValueError, "2-dimensional"),
    (lambda x: (x.index_fill(0, torch.tensor([4]), 0.0), 3), ValueError, "zero"),
    (lambda x: (x.tolist(), 3), TypeError, "torch.Tensor"),  # NumPy arrays are searched out of core
])
def test_knn_bad_input(bad, err, match):
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    xx, k = bad(x)
    with pytest.raises(err, match=match):
        dg.knn_edges(xx, k)


def test_knn_bad_options():
    x = torch.randn(20, 5)
    with pytest.raises(ValueError, match="metric"):
        dg.graphs.nearest_neighbors(x, 3, metric="manhattan")
    with pytest.raises(ValueError, match="backend"):
        dg.graphs.nearest_neighbors(x, 3, backend="faiss")
    with pytest.raises(ValueError, match="chunk_size"):
        dg.graphs.nearest_neighbors(x, 3, chunk_size=0)


def test_zero_vectors_fine_under_euclidean():
    x = torch.zeros(6, 3)
    x[3:] = 1.0
    vals, idx = dg.graphs.nearest_neighbors(x, 2, metric="euclidean")
    assert torch.isfinite(vals).all() and idx[0].tolist() == [1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(300, 32)
    a = dg.graphs.nearest_neighbors(x, 4, backend="matmul")
    b = dg.graphs.nearest_neighbors(x.cuda(), 4, backend="matmul")
    assert torch.equal(a[1], b[1].cpu())


@pytest.mark.parametrize("rows, cols", [(None, 40), (16, 33), (150, 1), (7, None)])
def test_column_blocks_do_not_change_result(rows, cols):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(150, 9, generator=g, dtype=torch.float64)
    for metric in ("cosine", "euclidean"):
        base = dg.graphs.nearest_neighbors(x, 4, metric=metric, backend="matmul")
        got = dg.graphs.nearest_neighbors(x, 4, metric=metric, backend="matmul", chunk_size=rows, col_chunk_size=cols)
        ref_v, ref_i = brute_force(x.numpy(), 4, metric)
        assert torch.equal(base[1], got[1]) and np.array_equal(got[1].numpy(), ref_i)
        np.testing.assert_allclose(got[0].numpy(), ref_v, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cosine_copies_tie_exactly_in_every_tiling(dtype):
    """Bitwise copies of a row score one canonical value against each other, so the smaller
    index wins whatever the tile shape (a GEMM's rounding depends on it); the rows themselves
    are left untouched by the copy detection."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 7, generator=g, dtype=dtype)
    x = base[torch.tensor([0, 1, 0, 2, 0, 1, 0, 0, 2, 0, 1, 0])]
    before = x.clone()
    ref = None
    for chunk in (None, 1, 2, 3, 4, 5, 7, 11):
        vals, idx = dg.graphs.nearest_neighbors(x, 3, chunk_size=chunk)
        if ref is None:
            ref = (vals, idx)
        # (other scores may move in the last bit with the tile: only the choice is exact)
        assert torch.equal(idx, ref[1]), chunk
        torch.testing.assert_close(vals, ref[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(x, before)
    # row 2 is a copy of rows 0, 4, 6, 7, 9, 11: its neighbours are the three smallest of those
    assert ref[1][2].tolist() == [0, 4, 6]


@pytest.mark.parametrize("chunk", [None, 2, 3, 4, 7])
def test_ten_equal_rows_pick_the_smallest_index(chunk):
    """The case the property tests found: with chunk_size=4, rows 8 and 9 of ten equal rows used
    to pick each other (the edge tile rounded their score up to 1.0, the others to 1 - 2^-53)."""
    vals, idx = dg.graphs.nearest_neighbors(torch.full((10, 3), 0.1875, dtype=torch.float64), 1,
                                            chunk_size=chunk)
    assert idx.flatten().tolist() == [1] + [0] * 9
    assert len(set(vals.flatten().tolist())) == 1


# ---------------------------------------------------------------- copies of rows, exact sqrt
def _with_copies(seed, n=300, distinct=30, d=37):
    """Rows drawn with repetition from ``distinct`` Gaussian rows: every row has bitwise copies."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(distinct, d, generator=g)[torch.randint(0, distinct, (n,), generator=g)]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_copies_of_a_key_take_the_smallest_ids_in_every_tiling(metric):
    """A query ties exactly with every copy of a key, so it takes the copies with the smallest
    ids, however the tiles round their scores. The oracle: float64 scores, elementwise, then a
    stable sort of each row."""
    from tests.properties.strategies import brute_knn
    for seed in range(4):
        x = _with_copies(seed)
        ref_v, ref_i = brute_knn(x, 4, metric)
        for chunk, cols in [(None, None), (5, None), (None, 7), (16, 40), (64, 7)]:
            for src in (x, x.numpy()):  # in memory and out of core
                v, i = dg.graphs.nearest_neighbors(src, 4, metric, chunk_size=chunk,
                                                   col_chunk_size=cols)
                assert torch.equal(i, ref_i), (seed, chunk, cols, type(src))
                torch.testing.assert_close(v.double(), ref_v, rtol=0, atol=1e-6)


def test_copy_groups_equal_grouping_by_whole_rows():
    from dyngraph.graphs._knn import copy_groups
    g = torch.Generator().manual_seed(0)
    x = _with_copies(1, n=200, distinct=20, d=300)
    # rows equal on every hashed column but one unhashed column: same hash, different rows
    x[150:160] = x[0]
    x[150:160, 299] = torch.arange(10, dtype=x.dtype) + 100
    x[160:] = torch.randn(40, 300, generator=g)  # rows without copies
    first = {}
    want = [first.setdefault(tuple(row.tolist()), i) for i, row in enumerate(x)]
    assert copy_groups(x).tolist() == want
    assert copy_groups(torch.randn(50, 8, generator=g)) is None
    # the out-of-core way: merge_copies over every pair of blocks (i <= j)
    from dyngraph.graphs._knn import merge_copies
    for block in (7, 64, 200):
        group = torch.arange(200)
        for a in range(0, 200, block):
            for b in range(a, 200, block):
                merge_copies(group, x[a:a + block], a, None if a == b else x[b:b + block], b)
        assert group.tolist() == want


def test_canonical_copies_against_a_loop():
    from dyngraph.graphs._knn import canonical_copies
    g = torch.Generator().manual_seed(3)
    n, k = 60, 5
    group = torch.randint(0, 12, (n,), generator=g)
    group = torch.tensor([int((group == group[i]).nonzero()[0]) for i in range(n)])  # min id
    qids = torch.arange(n)
    idx = torch.stack([torch.randperm(n, generator=g)[:k + 1] for _ in range(n)])
    idx = torch.stack([r[r != q][:k] for r, q in zip(idx, qids)])  # never the query itself
    for largest in (True, False):
        vals = torch.rand(n, k, generator=g, dtype=torch.float64).sort(1, descending=largest)[0]
        v, i = canonical_copies(vals, idx, group, qids, largest)
        for q in range(n):
            want = {}
            for slot in range(k):
                gr = int(group[idx[q, slot]])
                want.setdefault(gr, []).append(float(vals[q, slot]))
            pairs = []
            for gr, vs in want.items():
                members = [m for m in range(n) if int(group[m]) == gr and m != q][:len(vs)]
                best = max(vs) if largest else min(vs)
                pairs += [(best, m) for m in members]
            pairs.sort(key=lambda p: (-p[0] if largest else p[0], p[1]))
            assert i[q].tolist() == [m for _, m in pairs]
            assert v[q].tolist() == [b for b, _ in pairs]


def test_euclidean_distances_are_correctly_rounded():
    """sqrt rounded once (IEEE): float64 values against math.sqrt, float32 against the correctly
    rounded float64 root rounded to float32 (exact: 53 >= 2 * 24 + 2)."""
    import math

    from dyngraph.graphs._knn import exact_sqrt
    g = torch.Generator().manual_seed(0)
    t64 = torch.rand(20000, generator=g, dtype=torch.float64) * 1000
    assert exact_sqrt(t64).tolist() == [math.sqrt(v) for v in t64.tolist()]
    t32 = torch.arange(0, 20000, dtype=torch.float32)
    want = torch.tensor([math.sqrt(v) for v in t32.tolist()], dtype=torch.float64).float()
    assert torch.equal(exact_sqrt(t32), want)
    # through the search: points at integer squared distances
    x = torch.tensor([[0.0, 0.0], [3.0, 3.0], [3.0, 4.0], [1.0, 3.0]])
    v, i = dg.graphs.nearest_neighbors(x, 1, "euclidean")
    d2 = ((x[:, None].double() - x[None].double()) ** 2).sum(-1)
    want = torch.tensor([math.sqrt(float(d2[r, int(i[r])])) for r in range(4)]).float()
    assert torch.equal(v.flatten(), want)
