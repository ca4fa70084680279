"""torch.distributed: 2 gloo processes launched by torchrun on this machine.

The module launches ``torchrun --standalone --nproc_per_node=2`` on this very file once (see
``_rank_main`` at the bottom); each rank saves what it computed, and the tests compare that with
the single-process functions: the distributed depth profile must equal the single-process
``dg.depth_profile``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dyngraph as dg

D = pytest.importorskip("dyngraph.distributed")
WORLD = 2
N_SYN, DIM_SYN, SPLIT = 157, 24, 100   # synthetic rows, split unevenly: rank 0 [0, 100)


def _synthetic():
    g = torch.Generator().manual_seed(11)
    y = torch.arange(N_SYN) % 4
    x = torch.randn(N_SYN, DIM_SYN, generator=g) + 1.2 * torch.randn(4, DIM_SYN, generator=g)[y]
    return x, y


def _model():
    torch.manual_seed(0)
    return dg.zoo.DigitsMLP(depth=3, width=48)


def _split_graph():
    """A weighted undirected graph (both directions stored) and labels."""
    g = torch.Generator().manual_seed(3)
    n = 40
    src = torch.randint(0, n, (120,), generator=g)
    dst = torch.randint(0, n, (120,), generator=g)
    w = torch.rand(120, generator=g, dtype=torch.float64) + 0.1
    keep = src != dst  # no self-loops: repeated pairs add up, as in networkx below
    src, dst, w = src[keep], dst[keep], w[keep]
    ei = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    return ei, torch.cat([w, w]), torch.arange(n) % 3


# ---------------------------------------------------------------------------- one launch
def _launch(out: Path, world: int, *args: str) -> list:
    env = dict(os.environ, OMP_NUM_THREADS="1", DYNGRAPH_QUIET="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                           os.environ.get("PYTHONPATH", "")]))
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={world}", str(Path(__file__).resolve()), str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("dist"), WORLD)


@pytest.fixture(scope="module")
def ranks3(tmp_path_factory):
    """Three gloo ranks, kNN only: every pair role of the symmetric schedule (a rank scores all
    of one other rank's blocks and none of the other's)."""
    return _launch(tmp_path_factory.mktemp("dist3"), 3, "knn")


def test_every_rank_ran_with_gloo(ranks):
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world"] == WORLD and r["backend"] == "gloo" for r in ranks)


def test_extraction_is_sharded_by_distributed_sampler(ranks):
    ds = dg.zoo.digits_dataset("test")
    single = dg.extract_features(_model(), torch.utils.data.DataLoader(ds, batch_size=32),
                                 per_class=15, seed=0, progress=False)
    ids = [r["ids"] for r in ranks]
    assert torch.equal(ids[0], torch.arange(0, single.n_samples, 2))  # DistributedSampler order
    assert torch.equal(ids[1], torch.arange(1, single.n_samples, 2))
    order = torch.cat(ids).argsort()
    assert torch.equal(torch.cat([r["indices"] for r in ranks])[order], single.indices)
    assert torch.equal(torch.cat([r["y"] for r in ranks])[order], single.y)
    for name in single.names:
        got = torch.cat([r["features"][name] for r in ranks])[order]
        torch.testing.assert_close(got, single[name], rtol=1e-5, atol=1e-6)
    # The spilled (memory-mapped) shards hold the same rows.
    for r in ranks:
        assert r["spilled_on_disk"]
        for name in single.names:
            assert torch.equal(r["spilled"][name], r["features"][name])


MATMUL = dg.GraphSpec(k=3, backend="matmul")


def _gathered(ranks):
    order = torch.cat([r["ids"] for r in ranks]).argsort()
    feats = {name: torch.cat([r["features"][name] for r in ranks])[order]
             for name in ranks[0]["features"]}
    return feats, torch.cat([r["y"] for r in ranks])[order]


def test_distributed_profile_equals_single_process_profile(ranks):
    feats, y = _gathered(ranks)
    single = dg.depth_profile(feats, ["modularity"], y=y, graph=MATMUL, progress=False)
    for r in ranks:
        assert r["profile"].layers == single.layers
        assert r["profile"].metrics == ["modularity"]
        # Same graph, same sums: equal to the last bit here; 1e-12 allows another summation order.
        assert torch.allclose(r["profile"]["modularity"].values, single["modularity"].values,
                              rtol=0, atol=1e-12)
    assert torch.equal(ranks[0]["profile"].samples, ranks[1]["profile"].samples)
    assert ranks[0]["profile"].meta["world_size"] == WORLD
    assert ranks[0]["profile"].meta["graph"] == MATMUL.to_dict()


def test_distributed_resampled_profile_equals_single_process(ranks):
    feats, y = _gathered(ranks)
    single = dg.depth_profile(feats, ["modularity"], y=y, graph=MATMUL, per_class=10, repeats=2,
                              seed=1, progress=False)
    for r in ranks:
        assert r["profile_rep"].samples.shape == (2, len(single.layers), 1)
        assert torch.allclose(r["profile_rep"].samples, single.samples, rtol=0, atol=1e-12)
        assert torch.allclose(r["profile_rep"]["modularity"].errors,
                              single["modularity"].errors, rtol=0, atol=1e-12)
        assert r["profile_rep"].meta["n_samples"] == single.meta["n_samples"]


def test_distributed_profile_matches_whole_single_process_pipeline(ranks):
    """Extraction in 2 processes + distributed profile ≈ extraction + profile in one process."""
    ds = dg.zoo.digits_dataset("test")
    single = dg.extract_features(_model(), torch.utils.data.DataLoader(ds, batch_size=32),
                                 per_class=15, seed=0, progress=False)
    profile = dg.depth_profile(single, ["modularity"], graph=MATMUL, progress=False)
    assert torch.allclose(ranks[0]["profile"]["modularity"].values,
                          profile["modularity"].values, rtol=0, atol=1e-6)


@pytest.mark.parametrize("key, metric, precision", [("knn_cos", "cosine", "full"),
                                                    ("knn_cos_blocks", "cosine", "full"),
                                                    ("knn_euc", "euclidean", "full"),
                                                    ("knn_bf16", "cosine", "bf16")])
def test_row_sharded_knn_graph_equals_knn_graph(ranks, key, metric, precision):
    x, _ = _synthetic()
    ei = torch.cat([r[key][0] for r in ranks], 1)
    w = torch.cat([r[key][1] for r in ranks])
    ref_ei, ref_w = dg.knn_edges(x, 4, metric=metric, backend="matmul", precision=precision)
    assert torch.equal(ei, ref_ei)
    _same_weights(key, w, ref_w)
    # Uneven shards: rank 0 owns the queries [0, SPLIT).
    assert ranks[0][key][0][1].max() == SPLIT - 1 and ranks[1][key][0][1].min() == SPLIT


def _same_weights(key: str, w: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal weights: bit for bit where the tiles have the reference's shape; with 8- or 16-row
    tiles MKL may round a dot product differently in the last bit."""
    if key.endswith("_blocks"):
        assert torch.allclose(w, ref, rtol=0, atol=1e-6)
    else:
        assert torch.equal(w, ref)


def _shards(world: int):
    bounds = [0, 60, 61, N_SYN] if world == 3 else [0, SPLIT, N_SYN]  # uneven, one of 1 row
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _knn_cases():
    """(key, kwargs): default blocks, many small blocks on both axes, Euclidean, bf16."""
    return [("knn_cos", dict(metric="cosine")),
            ("knn_cos_blocks", dict(metric="cosine", chunk_size=8, col_chunk_size=16)),
            ("knn_euc", dict(metric="euclidean", chunk_size=16)),
            ("knn_euc_blocks", dict(metric="euclidean", col_chunk_size=13)),
            ("knn_bf16", dict(metric="cosine", precision="bf16", col_chunk_size=23))]


@pytest.mark.parametrize("key, kw", _knn_cases())
def test_symmetric_schedule_equals_knn_graph_on_three_ranks(ranks3, key, kw):
    x, _ = _synthetic()
    ei = torch.cat([r[key][0] for r in ranks3], 1)
    w = torch.cat([r[key][1] for r in ranks3])
    opts = {k_: v for k_, v in kw.items() if k_ in ("metric", "precision")}
    ref_ei, ref_w = dg.knn_edges(x, 4, backend="matmul", **opts)
    assert torch.equal(ei, ref_ei)
    # The 1-row shard's tiles are matrix-vector products, rounded differently in the last bit.
    assert torch.allclose(w, ref_w, rtol=0, atol=1e-6)
    for r, rows in zip(ranks3, _shards(3)):
        assert r[key][0][1].min() == rows.start and r[key][0][1].max() == rows.stop - 1


def _copies():
    """90 rows drawn with repetition from 12: every row has bitwise copies, on several ranks."""
    g = torch.Generator().manual_seed(5)
    return torch.randn(12, 9, generator=g)[torch.randint(0, 12, (90,), generator=g)]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_copies_on_other_ranks_take_the_smallest_ids(ranks3, metric):
    """Copies of a key tie exactly, wherever they live: each row's neighbours are those of the
    float64 brute force (ties to the smaller id) and of the single-process search."""
    from tests.properties.strategies import brute_knn
    x = _copies()
    ref_v, ref_i = brute_knn(x, 4, metric)
    single_v, single_i = dg.graphs.nearest_neighbors(x, 4, metric, backend="matmul")
    assert torch.equal(single_i, ref_i)
    got_v, got_i = torch.empty_like(single_v), torch.empty_like(single_i)
    for r, res in enumerate(ranks3):
        got_v[r::3], got_i[r::3] = res[f"copies_{metric}"]
    assert torch.equal(got_i, ref_i)
    torch.testing.assert_close(got_v.double(), ref_v, rtol=0, atol=1e-6)


def test_distributed_modularity_of_a_split_graph(ranks):
    import networkx as nx
    ei, w, comm = _split_graph()
    ref = dg.modularity(ei, comm, w)
    g = nx.Graph()
    g.add_nodes_from(range(comm.numel()))
    half = ei.shape[1] // 2
    for (a, b), c in zip(ei[:, :half].t().tolist(), w[:half].tolist()):
        g.add_edge(a, b, weight=g[a][b]["weight"] + c if g.has_edge(a, b) else c)
    parts = [set((comm == c).nonzero().flatten().tolist()) for c in range(3)]
    nx_q = nx.community.modularity(g, parts, weight="weight")
    for r in ranks:
        assert abs(r["split_q"] - ref) < 1e-12
        assert abs(r["split_q"] - nx_q) < 1e-9


def test_token_rows_are_sharded_by_input_and_equal_single_process(ranks):
    from ._tokens import TokenEncoder, token_loader
    single = dg.extract_features(TokenEncoder().eval(), token_loader(), ["emb", "block"],
                                 pool="tokens", per_class=6, seed=2, progress=False)
    toks = [r["tokens"] for r in ranks]
    ids = torch.cat([t["ids"] for t in toks])
    assert torch.equal(ids.sort().values, torch.arange(single.n_samples))
    order = ids.argsort()
    for key in ("indices", "positions", "y"):
        assert torch.equal(torch.cat([t[key] for t in toks])[order], getattr(single, key))
    for name in single.names:  # (other batches, other padding: equal to float rounding)
        torch.testing.assert_close(torch.cat([t["features"][name] for t in toks])[order],
                                   single[name], rtol=1e-5, atol=1e-5)
    inputs = single.indices.unique()                      # 18 inputs, interleaved over ranks
    for r, t in enumerate(toks):
        assert torch.equal(t["indices"].unique(), inputs[r::WORLD])
        assert t["meta"]["n_samples"] == single.n_samples and t["meta"]["n_inputs"] == 18
        assert t["meta"]["shard"]["rows"] == "tokens"
    ref = dg.depth_profile(single, ["modularity"], graph=dg.GraphSpec(k=3, backend="matmul"),
                           per_class=8, repeats=2, seed=1, progress=False)
    for t in toks:
        assert torch.allclose(t["profile"].samples, ref.samples, rtol=0, atol=1e-6)


def test_mismatched_shapes_raise_on_every_rank(ranks):
    for r in ranks:
        assert "same number of columns" in r["mismatch_error"]


def test_single_process_fallback_without_a_group():
    assert dg.distributed.init_distributed() == (0, 1) if "WORLD_SIZE" not in os.environ else True
    x, y = _synthetic()
    v, i = dg.distributed.distributed_nearest_neighbors(x, 4)
    rv, ri = dg.graphs.nearest_neighbors(x, 4, backend="matmul")
    assert torch.equal(i, ri) and torch.equal(v, rv)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    feats = {"a": x, "b": x + 0.5 * noise}
    c = dg.distributed.distributed_depth_profile(feats, y=y, progress=False)
    s = dg.depth_profile(feats, ["modularity"], y=y, graph=dg.GraphSpec(backend="matmul"),
                         progress=False)
    assert torch.equal(c["modularity"].values, s["modularity"].values)
    # Every option of depth_profile it shares: resampling, resolution, the graph's settings.
    spec = dg.GraphSpec(k=4, symmetrize="max", backend="matmul", chunk_size=16)
    kw = dict(graph=spec, per_class=20, repeats=3, seed=5,
              measure_options={"modularity": {"resolution": 0.7}}, progress=False)
    c = dg.distributed.distributed_depth_profile(feats, y=y, **kw)
    s = dg.depth_profile(feats, ["modularity"], y=y, **kw)
    assert torch.equal(c.samples, s.samples)
    assert {k: v for k, v in c.meta.items() if k != "world_size"} == s.meta
    ei, w, comm = _split_graph()
    q = dg.distributed.distributed_modularity(ei, comm, w)
    assert abs(q - dg.modularity(ei, comm, w)) < 1e-12


def test_permuted_global_ids_give_the_same_graph():
    x, _ = _synthetic()
    ids = torch.arange(0, N_SYN, 3)  # an interleaved shard, as DistributedSampler makes
    with pytest.raises(ValueError, match="permutation"):
        dg.distributed.distributed_nearest_neighbors(x[ids], 3, global_ids=ids)  # one process must hold every id
    with pytest.raises(ValueError, match="strictly increasing"):
        dg.distributed.distributed_nearest_neighbors(x, 3, global_ids=torch.arange(N_SYN).flip(0))
    ei, w = dg.distributed.distributed_knn_edges(x, 3, global_ids=torch.arange(N_SYN))
    assert torch.equal(ei, dg.knn_edges(x, 3, backend="matmul")[0])


def test_distributed_bad_input():
    x, y = _synthetic()
    with pytest.raises(ValueError, match="k must be smaller"):
        dg.distributed.distributed_nearest_neighbors(x, N_SYN)
    with pytest.raises(TypeError, match="floating-point"):
        dg.distributed.distributed_nearest_neighbors(x.long(), 3)
    with pytest.raises(ValueError, match="precision"):
        dg.distributed.distributed_nearest_neighbors(x, 3, precision="int8")
    profile = dg.distributed.distributed_depth_profile
    with pytest.raises(ValueError, match="symmetrize"):
        profile({"a": x}, y=y, graph=dg.GraphSpec(symmetrize="min"), progress=False)
    with pytest.raises(ValueError, match="y is required"):
        profile({"a": x}, progress=False)
    with pytest.raises(ValueError, match="repeats"):
        profile({"a": x}, y=y, repeats=2, progress=False)
    with pytest.raises(ValueError, match="only"):
        profile({"a": x}, ["modularity", "twonn"], y=y, progress=False)
    with pytest.raises(ValueError, match="backend"):
        profile({"a": x}, y=y, graph=dg.GraphSpec(backend="torch_cluster"), progress=False)
    with pytest.raises(TypeError, match="GraphSpec"):
        profile({"a": x}, y=y, graph={"k": 3}, progress=False)
    with pytest.raises(TypeError, match="resolution"):
        profile({"a": x}, y=y, measure_options={"modularity": {"gamma": 2}}, progress=False)
    bad = x.clone()
    bad[5, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        dg.distributed.distributed_nearest_neighbors(bad, 3)


# ---------------------------------------------------------------------------- rank entry point
def _rank_main(out: str) -> None:
    import tempfile
    torch.set_num_threads(1)
    rank, world = dg.distributed.init_distributed()
    res = {"rank": rank, "world": world,
           "backend": torch.distributed.get_backend() if world > 1 else None}
    ds = dg.zoo.digits_dataset("test")
    feats = dg.distributed.distributed_extract_features(_model(), ds, per_class=15, seed=0, batch_size=32,
                                            progress=False)
    res["ids"] = D.shard_ids(feats.meta)
    res["indices"], res["y"] = feats.indices, feats.y
    res["features"] = {n: feats[n] for n in feats.names}
    with tempfile.TemporaryDirectory() as tmp:
        spilled = dg.distributed.distributed_extract_features(_model(), ds, per_class=15, seed=0,
                                                  batch_size=32, spill_dir=tmp, progress=False)
        res["spilled_on_disk"] = spilled.on_disk
        res["spilled"] = {n: spilled[n] for n in spilled.names}
    spec = dg.GraphSpec(k=3)
    res["profile"] = dg.distributed.distributed_depth_profile(feats, graph=spec, progress=False)
    from tests.distributed._tokens import TokenEncoder, token_loader  # (run as a script)
    tok = dg.distributed.distributed_extract_features(
        TokenEncoder().eval(), token_loader(), ["emb", "block"], pool="tokens", per_class=6,
        seed=2, progress=False)
    res["tokens"] = {"ids": D.token_ids(tok), "indices": tok.indices, "positions": tok.positions,
                     "y": tok.y, "features": {n: tok[n] for n in tok.names}, "meta": tok.meta,
                     "profile": dg.distributed.distributed_depth_profile(
                         tok, graph=spec, per_class=8, repeats=2, seed=1, progress=False)}
    res["profile_rep"] = dg.distributed.distributed_depth_profile(
        feats, graph=spec, per_class=10, repeats=2, seed=1, progress=False)
    x, _ = _synthetic()
    rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, N_SYN)
    res["knn_cos"] = dg.distributed.distributed_knn_edges(x[rows], 4)
    res["knn_euc"] = dg.distributed.distributed_knn_edges(x[rows], 4, metric="euclidean", chunk_size=16)
    res["knn_bf16"] = dg.distributed.distributed_knn_edges(x[rows], 4, precision="bf16", col_chunk_size=23)
    res["knn_cos_blocks"] = dg.distributed.distributed_knn_edges(x[rows], 4, chunk_size=8, col_chunk_size=16)
    ei, w, comm = _split_graph()
    share = torch.arange(ei.shape[1]) % world == rank  # splits the two directions of pairs
    res["split_q"] = dg.distributed.distributed_modularity(ei[:, share], comm, w[share])
    try:
        dg.distributed.distributed_nearest_neighbors(x[rows, :DIM_SYN - rank], 3)
        res["mismatch_error"] = ""
    except ValueError as exc:
        res["mismatch_error"] = str(exc)
    torch.save(res, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _rank_main_knn(out: str) -> None:
    torch.set_num_threads(1)
    rank, world = dg.distributed.init_distributed()
    x, _ = _synthetic()
    rows = _shards(world)[rank]
    res = {key: dg.distributed.distributed_knn_edges(x[rows], 4, **kw) for key, kw in _knn_cases()}
    xc = _copies()  # interleaved global ids: rank r holds rows r, r + W, ...
    for metric in ("cosine", "euclidean"):
        res[f"copies_{metric}"] = dg.distributed.distributed_nearest_neighbors(
            xc[rank::world], 4, metric, global_ids=torch.arange(rank, xc.shape[0], world),
            col_chunk_size=7)
    torch.save(res, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[2:] == ["knn"]:
        _rank_main_knn(sys.argv[1])
    else:
        _rank_main(sys.argv[1])
