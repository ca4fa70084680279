"""Scale: column/row blocking of the kNN, half-precision tiles, random projection, bounded memory,
and CUDA paths (skipped without a GPU)."""
from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import dyngraph as dg

K = importlib.import_module("dyngraph.graphs._knn")
P = importlib.import_module("dyngraph.graphs._projection")
from dyngraph.testing import reference_knn  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def clustered(n, d, classes=5, sep=2.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, d, generator=g, dtype=dtype) + sep * torch.randn(classes, d, generator=g,
                                                                          dtype=dtype)[y]
    return x, y


# ---------------------------------------------------------------------------- column blocks
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("rows, cols", [(None, None), (3, 7), (13, 2), (64, 50), (200, 199),
                                        (37, 256)])
def test_row_and_column_blocks_match_reference(metric, rows, cols):
    x, _ = clustered(200, 10, dtype=torch.float64)
    vals, idx = dg.graphs.nearest_neighbors(x, 6, metric=metric, backend="matmul", chunk_size=rows,
                       col_chunk_size=cols)
    ref_v, ref_i = reference_knn(x.numpy(), 6, metric)
    assert np.array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(vals.numpy(), ref_v, atol=1e-10)


def test_ties_across_column_blocks_go_to_the_smaller_index():
    # Duplicated points in different column blocks: the tie must resolve to the smallest ids.
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    x = base.repeat(8, 1)  # row i duplicates row i mod 3
    for cols in (2, 3, 5, 24):
        _, idx = dg.graphs.nearest_neighbors(x, 3, backend="matmul", col_chunk_size=cols)
        _, ref = reference_knn(x.numpy(), 3, "cosine")
        assert np.array_equal(idx.numpy(), ref), cols
        _, idx = dg.graphs.nearest_neighbors(x, 3, metric="euclidean", backend="matmul", col_chunk_size=cols,
                        chunk_size=4)
        _, ref = reference_knn(x.numpy(), 3, "euclidean")
        assert np.array_equal(idx.numpy(), ref), cols


def test_tiles_never_exceed_chunk_times_col_chunk(monkeypatch):
    seen = []
    real = K.BlockTopK._scores

    def spy(self, *args):
        out = real(self, *args)
        seen.append(tuple(out.shape))
        return out
    monkeypatch.setattr(K.BlockTopK, "_scores", spy)
    x, _ = clustered(1000, 8)
    dg.graphs.nearest_neighbors(x, 4, backend="matmul", chunk_size=100, col_chunk_size=128)
    assert seen and max(r * c for r, c in seen) <= 100 * 128
    # The self-search scores each pair once: about half of the N² scores, never fewer.
    assert 1000 * 1000 / 2 <= sum(r * c for r, c in seen) < 0.6 * 1000 * 1000
    # Default tiles: bounded by DEFAULT_TILE_ELEMENTS whatever N (shrunk here to stay quick).
    monkeypatch.setattr(K, "DEFAULT_TILE_ELEMENTS", 1 << 14)
    monkeypatch.setattr(K, "DEFAULT_COL_BLOCK", 256)
    for n in (500, 3000):
        seen.clear()
        _, idx = dg.graphs.nearest_neighbors(torch.randn(n, 2), 2, backend="matmul")
        assert idx.shape == (n, 2)
        assert max(r * c for r, c in seen) <= 1 << 14
        assert max(c for _, c in seen) <= 256
    # A query set other than the points themselves streams row × column tiles.
    seen.clear()
    q = K.prepare_features(torch.randn(300, 2), "cosine")
    keys = K.prepare_features(torch.randn(700, 2), "cosine")
    acc = K.BlockTopK(q, 2, "cosine", exclude_self=False, chunk_size=50)
    for c0 in range(0, 700, 256):
        acc.update(keys[c0:c0 + 256], c0)
    assert max(r * c for r, c in seen) <= 50 * 256 and sum(r * c for r, c in seen) == 300 * 700


def test_even_blocks_have_no_thin_tail():
    for n, b in [(20000, 8192), (50000, 8192), (1000, 333), (8193, 8192)]:
        size = K.even_blocks(n, b)
        assert size <= max(b, 64)
        tail = n - (math.ceil(n / size) - 1) * size
        assert tail > 0.5 * size or n <= b
    assert K.even_blocks(5000, 8192) == 5000


def test_block_topk_streams_blocks_in_any_order_with_ids():
    x, _ = clustered(257, 12, dtype=torch.float64)
    xn = K.prepare_features(x, "cosine")
    ref_v, ref_i = dg.graphs.nearest_neighbors(x, 5, backend="matmul")
    # Queries: an interleaved shard; keys: shuffled blocks with explicit ascending ids.
    q_ids = torch.arange(1, 257, 3)
    acc = K.BlockTopK(xn[q_ids], 5, "cosine", query_ids=q_ids, chunk_size=19)
    bounds = [(0, 40), (200, 257), (40, 41), (41, 200)]
    for a, b in bounds:
        acc.update(xn[a:b], torch.arange(a, b) if a % 2 else a)
    v, i = acc.result()
    assert torch.equal(i, ref_i[q_ids])
    torch.testing.assert_close(v, ref_v[q_ids], rtol=0, atol=1e-12)


def test_block_topk_result_needs_enough_keys():
    xn = K.prepare_features(torch.randn(20, 4), "cosine")
    acc = K.BlockTopK(xn, 3, "cosine").update(xn[:3], 0)
    with pytest.raises(ValueError, match="fewer than k=3 keys"):
        acc.result()


def test_large_n_with_small_tiles_matches_default():
    x, _ = clustered(2000, 16)
    a = dg.graphs.nearest_neighbors(x, 3, backend="matmul")
    b = dg.graphs.nearest_neighbors(x, 3, backend="matmul", chunk_size=256, col_chunk_size=512)
    assert torch.equal(a[1], b[1])
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)


def test_knn_graph_accepts_tile_options():
    x, _ = clustered(200, 8)
    ei, w = dg.knn_edges(x, 3, backend="matmul", chunk_size=20, col_chunk_size=30)
    ref_ei, ref_w = dg.knn_edges(x, 3, backend="matmul")
    assert torch.equal(ei, ref_ei)
    torch.testing.assert_close(w, ref_w, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("precision", ["bf16", "fp16", "tf32"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_half_precision_tiles_refined_in_fp32(precision, metric):
    x, _ = clustered(600, 32, seed=2)
    full_v, full_i = dg.graphs.nearest_neighbors(x, 5, metric=metric, backend="matmul")
    v, i = dg.graphs.nearest_neighbors(x, 5, metric=metric, precision=precision, col_chunk_size=200)
    same = (i == full_i).all(1).float().mean()
    assert same >= 0.99
    # Values are exact fp32 re-scorings of the returned neighbours, not half-precision values.
    if metric == "cosine":
        xn = torch.nn.functional.normalize(x, dim=1)
        direct = (xn.unsqueeze(1) * xn[i]).sum(-1)
    else:
        direct = (x.unsqueeze(1) - x[i]).pow(2).sum(-1).sqrt()
    torch.testing.assert_close(v, direct, rtol=1e-5, atol=1e-5)
    assert v.dtype == torch.float32
    # Best first.
    assert bool((v[:, :-1] >= v[:, 1:]).all()) if metric == "cosine" else \
        bool((v[:, :-1] <= v[:, 1:]).all())


def test_more_candidates_change_fewer_neighbours():
    x, _ = clustered(800, 48, sep=0.6, seed=5)  # weak clusters: many near-ties
    _, ref = dg.graphs.nearest_neighbors(x, 8, backend="matmul")
    changed = {}
    for c in (8, 12, 32):
        _, i = dg.graphs.nearest_neighbors(x, 8, precision="bf16", candidates=c)
        changed[c] = int((i != ref).any(1).sum())
    assert changed[32] <= changed[12] <= changed[8]
    assert changed[32] <= 0.01 * 800


def test_fp16_euclidean_survives_large_values():
    x, _ = clustered(200, 16, seed=1)
    x = x * 1e4  # |x|² ≈ 1e9 overflows fp16 unless the tile is rescaled
    _, ref = dg.graphs.nearest_neighbors(x, 3, metric="euclidean", backend="matmul")
    v, i = dg.graphs.nearest_neighbors(x, 3, metric="euclidean", precision="fp16")
    assert torch.isfinite(v).all()
    assert (i == ref).all(1).float().mean() >= 0.99


def test_tf32_leaves_the_matmul_precision_as_it_was():
    before = torch.get_float32_matmul_precision()
    x, _ = clustered(300, 16, seed=1)
    dg.graphs.nearest_neighbors(x, 3, precision="tf32")
    assert torch.get_float32_matmul_precision() == before


def test_precision_bad_options():
    x = torch.randn(30, 4)
    with pytest.raises(ValueError, match="precision"):
        dg.graphs.nearest_neighbors(x, 3, precision="int8")
    with pytest.raises(ValueError, match="candidates must be >= k"):
        dg.graphs.nearest_neighbors(x, 5, precision="bf16", candidates=3)
    with pytest.raises(ValueError, match="torch_cluster"):
        dg.graphs.nearest_neighbors(x, 3, precision="bf16", backend="torch_cluster")
    with pytest.raises(ValueError, match="col_chunk_size"):
        dg.graphs.nearest_neighbors(x, 3, col_chunk_size=0)
    with pytest.raises(TypeError, match="col_chunk_size"):
        dg.graphs.nearest_neighbors(x, 3, col_chunk_size=2.5)


# ---------------------------------------------------------------------------- projection
def test_jl_min_dim_matches_sklearn_formula():
    from sklearn.random_projection import johnson_lindenstrauss_min_dim
    for n, eps in [(100, 0.5), (5000, 0.1), (50000, 0.3), (10 ** 6, 0.2)]:
        ours = dg.graphs.jl_min_dim(n, eps)
        theirs = int(johnson_lindenstrauss_min_dim(n, eps=eps))
        assert ours in (theirs, theirs + 1)  # sklearn floors the bound, we take its ceiling
        assert ours >= 4 * math.log(n) / (eps ** 2 / 2 - eps ** 3 / 3)
    with pytest.raises(ValueError, match="eps"):
        dg.graphs.jl_min_dim(100, 1.5)
    with pytest.raises(ValueError, match="n_samples"):
        dg.graphs.jl_min_dim(0)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "sparse"])
def test_projection_preserves_distances_like_jl_predicts(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6000, generator=g)
    m = 600
    z = dg.graphs.random_projection(x, m, seed=3, kind=kind)
    ratio = (torch.pdist(z.double()) / torch.pdist(x.double())).pow(2)
    # ‖Rz‖²/‖z‖² has mean 1 and variance ≈ 2/m (exactly χ²_m/m for Gaussian R).
    assert abs(float(ratio.mean()) - 1) < 0.02
    assert abs(float(ratio.std()) / math.sqrt(2 / m) - 1) < 0.2
    # The JL guarantee for eps = 0.3 at this N.
    assert dg.graphs.jl_min_dim(120, 0.3) <= m and float((ratio.sqrt() - 1).abs().max()) < 0.3


def test_projection_distortion_matches_sklearn_gaussian_projection():
    from sklearn.random_projection import GaussianRandomProjection
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 3000, generator=g, dtype=torch.float64)
    d0 = torch.pdist(x)
    ours = torch.pdist(dg.graphs.random_projection(x, 256, seed=0).double()) / d0
    sk = GaussianRandomProjection(256, random_state=0).fit_transform(x.numpy())
    theirs = torch.pdist(torch.from_numpy(sk)) / d0
    assert abs(float(ours.std()) - float(theirs.std())) < 0.2 * float(theirs.std())
    assert abs(float(ours.mean()) - float(theirs.mean())) < 0.01


def test_projection_is_seeded_and_independent_of_blocking(tmp_path):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(70, 2500, generator=g)
    a = dg.graphs.random_projection(x, 64, seed=7)
    assert torch.equal(a, dg.graphs.random_projection(x, 64, seed=7))
    assert not torch.allclose(a, dg.graphs.random_projection(x, 64, seed=8))
    # Equal to x @ R with R built tile by tile; invariant to row blocks and to caching R.
    R = P.projection_matrix(2500, 64, seed=7)
    torch.testing.assert_close(a, x @ R, rtol=1e-5, atol=1e-4)
    b = dg.graphs.random_projection(x, 64, seed=7, block_rows=9, cache_bytes=0)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    # Slices of R equal slices of the whole.
    assert torch.equal(P.projection_matrix(2500, 64, 7, start=1000, stop=2100), R[1000:2100])
    # The same rows from a .npy memmap (read with plain reads) and from a spilled file.
    np.save(tmp_path / "x.npy", x.numpy())
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    same_blocks = dg.graphs.random_projection(x, 64, seed=7, block_rows=16)
    assert torch.equal(dg.graphs.random_projection(mm, 64, seed=7, block_rows=16), same_blocks)
    sp = dg.capture.SpilledArray(tmp_path / "x.bin", 2500)
    sp.append(x[:30])
    sp.append(x[30:])
    assert torch.equal(dg.graphs.random_projection(sp, 64, seed=7, block_rows=16), same_blocks)
    assert torch.equal(dg.graphs.random_projection(x.numpy(), 64, seed=7, block_rows=16), same_blocks)


def test_projection_matrix_entries():
    d, m = 4096, 256
    gauss = P.projection_matrix(d, m, 0, "gaussian")
    assert abs(float(gauss.var()) * m - 1) < 0.02 and abs(float(gauss.mean())) < 1e-3
    rad = P.projection_matrix(d, m, 0, "rademacher")
    assert set(torch.unique(rad * math.sqrt(m)).tolist()) == {-1.0, 1.0}
    sparse = P.projection_matrix(d, m, 0, "sparse")
    density = float((sparse != 0).float().mean())
    assert abs(density - 1 / math.sqrt(d)) < 0.002
    assert abs(float(sparse.pow(2).sum(0).mean()) - d / m) < 0.1 * d / m


def test_projection_keeps_modularity_close_on_real_features():
    """Effect on Q: digits images blown up to 4096 wide random-feature maps, then projected."""
    ds = dg.zoo.digits_dataset("train")
    x, y = ds.tensors[0].reshape(len(ds), -1).float(), ds.tensors[1]
    g = torch.Generator().manual_seed(0)
    wide = torch.relu(x @ torch.randn(64, 4096, generator=g))  # a wide ReLU layer
    spec = dg.GraphSpec(k=3, backend="matmul")

    def q(x):
        return dg.depth_profile({"wide": x}, ["modularity"], y=y, graph=spec,
                                progress=False)["modularity"].values[0]

    q0 = q(wide)
    qs = {m: q(dg.graphs.random_projection(wide, m, seed=0)) for m in (64, 512)}
    assert abs(float(qs[512] - q0)) < 0.03
    assert abs(float(qs[512] - q0)) <= abs(float(qs[64] - q0)) + 0.01


def test_project_features_only_wide_layers(tmp_path):
    f = dg.LayerFeatures({"wide": torch.randn(40, 3000), "narrow": torch.randn(40, 16)},
                         y=torch.arange(40) % 4)
    p = dg.graphs.project_features(f, 100, seed=1)
    assert p.dims == {"wide": 100, "narrow": 16}
    assert torch.equal(p["narrow"], f["narrow"])
    assert torch.equal(p["wide"], dg.graphs.random_projection(f["wide"], 100, seed=1))
    assert p.meta["projection"] == {"wide": {"from": 3000, "to": 100, "seed": 1,
                                             "kind": "gaussian"}}
    with pytest.raises(TypeError, match="LayerFeatures"):
        dg.graphs.project_features({"a": torch.randn(4, 4)}, 2)


def test_project_spilled_features_streams_from_disk(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset
    ds = TensorDataset(torch.randn(48, 1, 8, 8), torch.arange(48) % 4)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 40, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(2560, 4))
    f = dg.extract_features(m, DataLoader(ds, batch_size=10), layers=["0", "3"],
                            spill_dir=str(tmp_path), progress=False)
    assert f.on_disk
    p = dg.graphs.project_features(f, 256, seed=0)
    assert p.dims == {"0": 256, "3": 4}
    torch.testing.assert_close(p["0"], dg.graphs.random_projection(f["0"], 256, seed=0))


@pytest.mark.parametrize("bad, err, match", [
    (lambda x: dict(x=x, dim=5000), ValueError, "dim must be smaller"),
    (lambda x: dict(x=x, dim=0), ValueError, "dim must be >= 1"),
    (lambda x: dict(x=x, dim=8, kind="orthogonal"), ValueError, "kind"),
    (lambda x: dict(x=x.long(), dim=8), TypeError, "floating point"),
    (lambda x: dict(x=x.tolist(), dim=8), TypeError, "torch.Tensor, a NumPy array"),
    (lambda x: dict(x=x.index_fill(0, torch.tensor([2]), float("nan")), dim=8), ValueError,
     "NaN"),
    (lambda x: dict(x=x, dim=8, seed=1.5), TypeError, "seed"),
    (lambda x: dict(x=x, dim=None, eps=0.05), ValueError, "Johnson"),
])
def test_projection_bad_input(bad, err, match):
    x = torch.randn(10, 5000)
    kw = bad(x)
    with pytest.raises(err, match=match):
        dg.graphs.random_projection(kw.pop("x"), **kw)


def test_public_api_is_exported():
    for name in ("random_projection", "project_features", "jl_min_dim", "init_distributed",
                 "distributed_extract_features", "distributed_nearest_neighbors", "distributed_knn_edges",
                 "distributed_modularity", "distributed_depth_profile"):
        home = dg.distributed if name.startswith(("distributed", "init")) else dg.graphs
        assert name in home.__all__ and callable(getattr(home, name))
    assert dg.graphs.random_projection is P.random_projection


# ---------------------------------------------------------------------------- bounded memory
def test_peak_memory_is_set_by_the_tile_not_by_n():
    """A subprocess measures the extra peak RSS of a kNN at N = 8,000 with 16 MiB tiles: a dense
    similarity would need 244 MiB; the tiled search stays within a few tiles."""
    code = textwrap.dedent("""
        import json, resource, torch, dyngraph as dg
        torch.set_num_threads(1)
        import importlib
        K = importlib.import_module('dyngraph.graphs._knn')
        K.DEFAULT_TILE_ELEMENTS = 1 << 22   # 16 MiB tiles
        x = torch.randn(8000, 32, generator=torch.Generator().manual_seed(0))
        dg.graphs.nearest_neighbors(x[:100], 3, backend='matmul')  # warm up the allocator and kernels
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        dg.graphs.nearest_neighbors(x, 3, backend='matmul')
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({'extra_mib': (peak - base) / 1024}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    extra = json.loads(out.stdout.strip().splitlines()[-1])["extra_mib"]
    dense = 8000 ** 2 * 4 / 2 ** 20  # 244 MiB for one dense fp32 similarity matrix
    tile = (1 << 22) * 4 / 2 ** 20  # 16 MiB (measured: about 18 MiB extra, flat in N)
    assert extra < min(4 * tile, 0.25 * dense), (extra, dense)


# ---------------------------------------------------------------------------- CUDA (skipped on CPU)
@CUDA
@pytest.mark.parametrize("precision", ["full", "bf16", "fp16", "tf32"])
def test_cuda_knn_matches_cpu(precision):
    x, _ = clustered(2000, 64, seed=4)
    ref_v, ref_i = dg.graphs.nearest_neighbors(x, 5, backend="matmul")
    v, i = dg.graphs.nearest_neighbors(x.cuda(), 5, backend="matmul", precision=precision, col_chunk_size=512)
    assert v.is_cuda and i.is_cuda
    assert (i.cpu() == ref_i).all(1).float().mean() >= 0.99
    torch.testing.assert_close(v.cpu(), ref_v, rtol=1e-4, atol=1e-4)


@CUDA
def test_cuda_knn_has_no_per_element_syncs():
    x, _ = clustered(4096, 64, seed=4)
    x = x.cuda()
    dg.graphs.nearest_neighbors(x, 5, backend="matmul", col_chunk_size=1024)  # warm-up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            dg.graphs.nearest_neighbors(x, 5, backend="matmul", col_chunk_size=1024, chunk_size=1024)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in rec if "synchroniz" in str(w.message).lower()]
    n_tiles = (4096 // 1024) ** 2
    assert len(syncs) <= 2 * n_tiles + 8, len(syncs)  # O(tiles), not O(N)


@CUDA
def test_cuda_projection_matches_cpu():
    x = torch.randn(64, 3000)
    a = dg.graphs.random_projection(x, 128, seed=0)
    b = dg.graphs.random_projection(x.cuda(), 128, seed=0)
    assert b.is_cuda
    torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)


@CUDA
def test_cuda_distributed_single_process_matches_knn():
    x, _ = clustered(1000, 32, seed=4)
    v, i = dg.distributed.distributed_nearest_neighbors(x.cuda(), 4, col_chunk_size=300)
    rv, ri = dg.graphs.nearest_neighbors(x.cuda(), 4, backend="matmul")
    assert torch.equal(i, ri)
