"""Out-of-core exact kNN: layers on disk (memory maps, spilled layers) searched block by block."""
import numpy as np
import pytest
import torch

import dyngraph as dg
from dyngraph.testing import reference_knn
from tests.conftest import clustered


def _memmap(tmp_path, x: np.ndarray, name="x.f32"):
    mm = np.memmap(tmp_path / name, dtype=x.dtype, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    return np.memmap(tmp_path / name, dtype=x.dtype, mode="r", shape=x.shape)


class _Recorder(np.ndarray):
    """An array that records the row ranges read from it."""
    reads: list = []

    def __getitem__(self, item):
        if isinstance(item, slice):
            _Recorder.reads.append(item.stop - item.start)
        return np.asarray(self).__getitem__(item)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_memmap_search_equals_the_in_memory_search(tmp_path, metric):
    x, _ = clustered(80, 5, 24, 1.0, seed=2)  # 400 points
    mm = _memmap(tmp_path, x.numpy())
    v, i = dg.graphs.nearest_neighbors(mm, 4, metric=metric, chunk_size=96)  # five 80-row blocks
    v_ref, i_ref = dg.graphs.nearest_neighbors(x, 4, metric=metric, backend="matmul")
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(v, v_ref, rtol=0, atol=1e-6)
    ref_v, ref_i = reference_knn(x.numpy(), 4, metric)
    assert np.array_equal(i.numpy(), ref_i)


def test_float64_and_float16_arrays_and_half_precision_tiles(tmp_path):
    x, _ = clustered(60, 4, 16, 1.0, seed=5)
    x64 = x.double().numpy()
    v, i = dg.graphs.nearest_neighbors(x64, 3, chunk_size=50)
    assert v.dtype == torch.float64
    ref_v, ref_i = reference_knn(x64, 3, "cosine")
    assert np.array_equal(i.numpy(), ref_i)
    np.testing.assert_allclose(v.numpy(), ref_v, atol=1e-12)
    x16 = x.numpy().astype(np.float16)
    v, i = dg.graphs.nearest_neighbors(_memmap(tmp_path, x16, "x.f16"), 3, metric="euclidean", chunk_size=64,
                  precision="fp16")
    _, ref_i = reference_knn(x16.astype(np.float64), 3, "euclidean")
    assert (i.numpy() == ref_i).all(1).mean() > 0.98


def test_spilled_layer_snapshot_and_profile_equal_the_loaded_ones(tmp_path):
    x, y = clustered(50, 4, 32, 1.2, seed=7)
    sp = dg.capture.SpilledArray(tmp_path / "layer.bin", 32)
    for s in range(0, 200, 64):
        sp.append(x[s:s + 64])
    loaded = sp.load()
    a = dg.graphs.build_snapshot(sp, y, k=3, chunk_size=64)
    b = dg.graphs.build_snapshot(loaded, y, k=3, backend="matmul")
    assert torch.equal(a.edge_index, b.edge_index)
    torch.testing.assert_close(a.edge_weight, b.edge_weight, rtol=0, atol=1e-6)
    feats = dg.LayerFeatures({"spilled": sp, "memory": x}, y)
    seq = dg.DynamicGraph.from_features(feats, k=3, out_of_core=True, chunk_size=64,
                                        progress=False)
    ref = dg.DynamicGraph.from_features(feats, k=3, backend="matmul", progress=False)
    torch.testing.assert_close(seq.modularity().values, ref.modularity().values, rtol=0,
                               atol=1e-9)
    spec = dg.GraphSpec(k=3, out_of_core=True, chunk_size=64)
    profile = dg.depth_profile(feats, ["modularity"], graph=spec, progress=False)
    torch.testing.assert_close(profile["modularity"].values, seq.modularity().values, rtol=0,
                               atol=1e-12)
    with pytest.raises(ValueError, match="keep_x"):
        dg.graphs.build_snapshot(sp, y, keep_x=True)


def test_at_most_two_blocks_are_read_at_a_time():
    x, _ = clustered(100, 3, 8, 1.0)
    rec = x.numpy().view(_Recorder)
    _Recorder.reads = []
    _, i = dg.graphs.nearest_neighbors(rec, 3, chunk_size=64)
    assert _Recorder.reads and max(_Recorder.reads) <= 64
    # 300 rows in blocks of 60: block i is read once per block j >= i (15 reads, not 300/60=5)
    assert len(_Recorder.reads) == 15
    _, i_ref = dg.graphs.nearest_neighbors(x, 3, backend="matmul")
    assert torch.equal(i, i_ref)


def test_bad_out_of_core_input():
    with pytest.raises(TypeError, match="floating"):
        dg.graphs.nearest_neighbors(np.arange(20).reshape(10, 2), 2)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        dg.graphs.nearest_neighbors(np.zeros(10, dtype=np.float32), 2)
    x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    bad = x.copy()
    bad[25, 1] = np.nan
    with pytest.raises(ValueError, match=r"x\[.*NaN"):
        dg.graphs.nearest_neighbors(bad, 2, chunk_size=16)
    with pytest.raises(ValueError, match="k"):
        dg.graphs.nearest_neighbors(x, 40)
    with pytest.raises(ValueError, match="matmul"):
        dg.graphs.nearest_neighbors(x, 2, backend="torch_cluster")
    with pytest.raises(TypeError, match="x must be"):
        dg.graphs.nearest_neighbors([[1.0, 2.0], [3.0, 4.0]], 1)


def test_spilled_rows_out_of_range_raise(tmp_path):
    sp = dg.capture.SpilledArray(tmp_path / "l.bin", 4)
    sp.append(torch.randn(10, 4))
    assert sp.read_rows(2, 5).shape == (3, 4)
    for a, b in ((-1, 3), (3, 11), (6, 5)):
        with pytest.raises(ValueError, match="outside"):
            sp.read_rows(a, b)
