"""The symmetric self-search (each score computed once) and the prefiltered tile top-k."""
import importlib

import numpy as np
import pytest
import torch

import dyngraph as dg
from dyngraph.testing import reference_knn
from tests.conftest import clustered

K = importlib.import_module("dyngraph.graphs._knn")


def stable_topk(scores: torch.Tensor, k: int, largest: bool):
    """Oracle: full stable sort (ties → smaller column)."""
    v, i = scores.sort(dim=1, descending=largest, stable=True)
    return v[:, :k], i[:, :k]


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("shape", [(7, 2000), (300, 1031), (64, 260), (5, 9), (40, 4100),
                                   (50, 1300), (1300, 50)])  # g = 7, 5, 3 included
def test_topk_rows_and_cols_equal_a_stable_sort(shape, largest):
    g = torch.Generator().manual_seed(sum(shape))
    r, c = shape
    for k in (1, 3, 6):
        if k >= c:
            continue
        s = torch.randn(r, c, generator=g, dtype=torch.float64)
        # Integer-valued scores: many exact ties, inside and across groups.
        ties = torch.randint(0, 12, (r, c), generator=g).double()
        for m in (s, ties):
            v, i = K.topk_rows(m, k, largest)
            rv, ri = stable_topk(m, k, largest)
            assert torch.equal(i, ri) and torch.equal(v, rv)
            v, i = K.topk_cols(m, k, largest) if k < r else (None, None)
            if v is not None:
                rv, ri = stable_topk(m.T.contiguous(), k, largest)
                assert torch.equal(i, ri) and torch.equal(v, rv)


def test_topk_prefilter_handles_masked_scores_and_group_ties():
    # -inf (a masked self score) and a row whose best values all tie: the group-boundary tie check
    # must fall back to the full search.
    s = torch.randn(50, 2048, generator=torch.Generator().manual_seed(0))
    s[:, ::3] = 1.0  # hundreds of tied maxima in every row and column
    s[torch.arange(50), torch.arange(50)] = -float("inf")
    for k in (2, 5):
        v, i = K.topk_rows(s, k, True)
        rv, ri = stable_topk(s, k, True)
        assert torch.equal(i, ri) and torch.equal(v, rv)
    t = s[:, :1000].T.contiguous()  # [1000, 50]: column pass over 1,000 rows
    v, i = K.topk_cols(t, 3, True)
    rv, ri = stable_topk(t.T.contiguous(), 3, True)
    assert torch.equal(i, ri)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block", [37, 64, 200])
def test_self_search_equals_the_oracle(metric, block):
    x, _ = clustered(60, 5, 12, 1.0, seed=3)  # 300 points: blocks 37 and 64 leave uneven tails
    x = x.double()
    xp = K.prepare_features(x, metric)
    acc = K.BlockTopK(xp, 4, metric).update_self(block)
    vals, idx = acc.result()
    ref_v, ref_i = reference_knn(x.numpy(), 4, metric)
    assert np.array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(vals.numpy(), ref_v, atol=1e-10)


@pytest.mark.parametrize("largest", [True, False])
def test_unsorted_tile_topk_keeps_the_same_entries(largest):
    g = torch.Generator().manual_seed(5)
    ties = torch.randint(0, 9, (120, 3000), generator=g).float()  # ties at every k-th place
    for m in (torch.randn(120, 3000, generator=g), ties):
        for k in (1, 4):
            for fn, t in ((K.topk_rows, m), (K.topk_cols, m.T.contiguous())):
                rv, ri = fn(t, k, largest)
                v, i = fn(t, k, largest, sorted=False)
                # the same k (value, id) pairs per row, ties at the k-th place → smaller id
                sv, si = K.sort_rows(v, i, largest)
                assert torch.equal(si, ri) and torch.equal(sv, rv)


@pytest.mark.parametrize("parts", [1, 2, 3, 100])
def test_self_search_merges_waiting_candidates_in_any_batching(monkeypatch, parts):
    # Blocks of 37 rows over ~300 points: 9 blocks, so the last block collects 9 candidate parts;
    # merging every 1, 2, 3 or 100 parts must give the oracle's neighbours.
    monkeypatch.setattr(K, "_MERGE_PARTS", parts)
    g = torch.Generator().manual_seed(parts)
    # Small integer rows (exact squared distances): ties everywhere, broken by the smaller index.
    x_int = torch.randint(-2, 3, (300, 3), generator=g).double()
    x_gauss, _ = clustered(60, 5, 12, 1.0, seed=parts)
    for x, metric in ((x_int, "euclidean"), (x_gauss.double(), "cosine"),
                      (x_gauss.double(), "euclidean")):
        xp = K.prepare_features(x, metric)
        vals, idx = K.BlockTopK(xp, 4, metric).update_self(37).result()
        ref_v, ref_i = reference_knn(x.numpy(), 4, metric)
        assert np.array_equal(idx.numpy(), ref_i), metric
        np.testing.assert_allclose(vals.numpy(), ref_v, atol=1e-10)


def test_self_search_breaks_ties_across_blocks_by_index():
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    x = base.repeat(50, 1)  # row i duplicates row i mod 4, in every block
    for metric in ("cosine", "euclidean"):
        xp = K.prepare_features(x, metric)
        for block in (7, 16, 64):
            _, idx = K.BlockTopK(xp, 5, metric).update_self(block).result()
            _, ref = reference_knn(x.numpy(), 5, metric)
            assert np.array_equal(idx.numpy(), ref), (metric, block)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_self_search_half_precision_matches_plain_half_precision(precision):
    x, _ = clustered(100, 4, 32, 1.5, seed=1)
    xp = K.prepare_features(x, "cosine")
    v_sym, i_sym = K.BlockTopK(xp, 3, "cosine", precision=precision).update_self(64).result()
    plain = K.BlockTopK(xp, 3, "cosine", precision=precision, chunk_size=64)
    v_pl, i_pl = plain.update(xp, 0).result()
    # Both re-score their candidates exactly: same neighbours unless rounding pushed one out of a
    # tile's candidates, which the candidate margin makes rare.
    assert (i_sym == i_pl).all(1).float().mean() > 0.99
    ref_v, ref_i = reference_knn(x.numpy(), 3, "cosine")
    assert (i_sym.numpy() == ref_i).all(1).mean() > 0.99


def test_knn_uses_the_self_search_and_scores_each_pair_once(monkeypatch):
    calls = []
    real = K.BlockTopK.update_self

    def spy(self, block, **kw):
        calls.append(block)
        return real(self, block, **kw)
    monkeypatch.setattr(K.BlockTopK, "update_self", spy)
    x, _ = clustered(100, 6, 8, 1.0)
    v, i = dg.graphs.nearest_neighbors(x, 3, backend="matmul", chunk_size=128)
    assert calls == [128]
    ref_v, ref_i = reference_knn(x.numpy(), 3, "cosine")
    assert np.array_equal(i.numpy(), ref_i)
    # The edge weights of a pair are one score: w(i→j) == w(j→i) bitwise where both are edges.
    ei, w = dg.knn_edges(x, 3, backend="matmul", chunk_size=128)
    lookup = {(int(a), int(b)): float(c) for (a, b), c in zip(ei.t(), w)}
    mutual = [(a, b) for (a, b) in lookup if (b, a) in lookup]
    assert mutual and all(lookup[(a, b)] == lookup[(b, a)] for a, b in mutual)


def test_self_search_progress_bar_counts_the_tiles(capsys, monkeypatch):
    monkeypatch.delenv("DYNGRAPH_QUIET", raising=False)
    x, _ = clustered(100, 6, 8, 1.0)  # 600 points in blocks of 128: 5 blocks, 15 tiles
    ref = dg.graphs.nearest_neighbors(x, 3, backend="matmul", chunk_size=128)
    assert capsys.readouterr().err == ""  # off by default
    out = dg.graphs.nearest_neighbors(x, 3, backend="matmul", chunk_size=128, progress=True)
    err = capsys.readouterr().err
    assert "kNN tiles" in err and "/15 " in err  # the bar counts 15 tiles
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    monkeypatch.setenv("DYNGRAPH_QUIET", "1")
    dg.graphs.nearest_neighbors(x, 3, backend="matmul", chunk_size=128, progress=True)
    assert "kNN tiles" not in capsys.readouterr().err
    monkeypatch.delenv("DYNGRAPH_QUIET")
    dg.graphs.nearest_neighbors(x[:100], 3, backend="matmul", progress=True)  # one tile: no bar
    assert "kNN tiles" not in capsys.readouterr().err


def test_update_self_rejects_shards():
    xp = K.prepare_features(torch.randn(20, 3), "cosine")
    with pytest.raises(ValueError, match="query_ids=0"):
        K.BlockTopK(xp, 2, "cosine", query_ids=5).update_self(8)
    with pytest.raises(ValueError, match="exclude_self"):
        K.BlockTopK(xp, 2, "cosine", exclude_self=False).update_self(8)


def test_tile_topk_and_self_search_reject_bad_input():
    s = torch.randn(5, 7)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 7\]"):
        K.topk_rows(s, 8)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\]"):
        K.topk_cols(s, 6)
    with pytest.raises(ValueError, match="k must be"):
        K.topk_rows(s, 0)
    with pytest.raises(ValueError, match="2-D floating-point"):
        K.topk_rows(torch.arange(10), 2)
    with pytest.raises(TypeError, match="scores"):
        K.topk_cols(s.numpy(), 2)
    xp = K.prepare_features(torch.randn(20, 3), "cosine")
    with pytest.raises(ValueError, match="block"):
        K.BlockTopK(xp, 2, "cosine").update_self(0)
    with pytest.raises(TypeError, match="rows must be a callable"):
        K.BlockTopK(xp, 2, "cosine").update_self(8, rows=xp)


def test_switches_reject_non_bool_values():
    s = torch.randn(20, 600)
    x, _ = clustered(100, 6, 8, 1.0)
    with pytest.raises(TypeError, match="sorted must be True or False, got str"):
        K.topk_rows(s, 3, sorted="no")
    with pytest.raises(TypeError, match="sorted must be True or False"):
        K.topk_cols(s.T.contiguous(), 3, sorted=0)
    with pytest.raises(TypeError, match="progress must be True or False"):
        dg.graphs.nearest_neighbors(x, 3, progress="quiet")
    with pytest.raises(TypeError, match="progress must be True or False"):
        dg.knn_edges(x, 3, progress=None)
    with pytest.raises(TypeError, match="progress must be True or False"):
        K.BlockTopK(K.prepare_features(x, "cosine"), 3).update_self(128, progress=1)
