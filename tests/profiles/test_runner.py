"""depth_profile and layer_matrix: the one runner against independent per-layer computations."""
import pytest
import torch

import dyngraph as dg
from tests.conftest import clustered


def feats_and_labels(n_per_class=40, seed=0):
    x, y = clustered(n_per_class, 4, 12, 1.0, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    return {"l0": x + 2 * torch.randn(x.shape, generator=g), "l1": x,
            "l2": 3 * x + 0.1 * torch.randn(x.shape, generator=g)}, y


def test_modularity_is_bit_identical_to_dynamic_graph_per_repeat():
    f, y = feats_and_labels()
    spec = dg.GraphSpec(k=4)
    p = dg.depth_profile(f, ["modularity"], y=y, graph=spec, per_class=25, repeats=3, seed=5,
                         progress=False)
    assert p.samples.shape == (3, 3, 1) and p.layers == ["l0", "l1", "l2"]
    for r in range(3):
        idx = dg.capture.balanced_indices(y, per_class=25, seed=5 + r)
        sub = {k: v[idx] for k, v in f.items()}
        seq = dg.DynamicGraph.from_features(sub, y=y[idx], k=4, progress=False)
        assert torch.equal(p.samples[r, :, 0], seq.modularity().values)
    assert p.meta["graph"]["k"] == 4 and p.meta["per_class"] == 25 and p.meta["n_samples"] == 100


def test_null_matches_modularity_null_of_the_same_graphs():
    f, y = feats_and_labels()
    p = dg.depth_profile(f, ["modularity"], y=y, per_class=20, repeats=2, seed=1,
                         null_permutations=40, progress=False)
    for r in range(2):
        idx = dg.capture.balanced_indices(y, per_class=20, seed=1 + r)
        seq = dg.DynamicGraph.from_features({k: v[idx] for k, v in f.items()}, y=y[idx],
                                            progress=False)
        null = seq.modularity_null(40, seed=1 + r).samples[:, :, 0]  # [P, L]
        assert torch.equal(p.samples[r, :, 1], null.mean(0))
        assert torch.equal(p.samples[r, :, 2], null.std(0))
        z = (p.samples[r, :, 0] - null.mean(0)) / null.std(0)
        assert torch.equal(p.samples[r, :, 3], z)
    assert bool((p["modularity:z"].values[1:] > 10).all())


def test_several_measures_at_once_equal_their_functions():
    f, y = feats_and_labels()
    p = dg.depth_profile(f, ["twonn", "nc1", "knn_purity", "modularity"], y=y,
                         measure_options={"knn_purity": {"k": 5}}, progress=False)
    for li, x in enumerate(f.values()):
        assert p.samples[0, li, 0] == dg.measures.twonn(x)
        assert p.samples[0, li, 1] == dg.measures.neural_collapse(x, y)["nc1"]
        assert p.samples[0, li, 2] == dg.measures.knn_purity(x, y, k=5)
    assert p.meta["graph"] is not None and p.meta["measure_options"] == {"knn_purity": {"k": 5}}
    q = dg.depth_profile(f, ["twonn"], y=y, progress=False)
    assert q.meta["graph"] is None  # no measure needs a graph: none was built


def test_layer_features_input_and_errors():
    f, y = feats_and_labels()
    lf = dg.LayerFeatures(f, y)
    assert dg.depth_profile(lf, progress=False) == dg.depth_profile(f, y=y, progress=False)
    with pytest.raises(ValueError, match="repeats=3 needs per_class or n_samples"):
        dg.depth_profile(f, y=y, repeats=3)
    with pytest.raises(ValueError, match="y is required"):
        dg.depth_profile(f)
    with pytest.raises(ValueError, match="at most one of per_class or n_samples"):
        dg.depth_profile(f, y=y, per_class=5, n_samples=20)
    with pytest.raises(TypeError, match="graph must be a dg.GraphSpec"):
        dg.depth_profile(f, y=y, graph={"k": 3})
    with pytest.raises(ValueError, match="measure_options names 'nc1'"):
        dg.depth_profile(f, ["twonn"], y=y, measure_options={"nc1": {}})
    with pytest.raises(ValueError, match="class 0 has only 40"):
        dg.depth_profile(f, y=y, per_class=41)
    with pytest.raises(TypeError, match="progress"):
        dg.depth_profile(f, y=y, progress="no")


def test_layer_matrix_against_the_pair_functions():
    f, y = feats_and_labels(20)
    m = dg.layer_matrix(f, measures=["cka", "mutual_knn", "modularity_distance"], y=y,
                        measure_options={"mutual_knn": {"k": 5}})
    assert m.metrics == ["cka", "mutual_knn", "modularity_distance"] and m.shape == (3, 3, 3)
    names = list(f)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert m["cka"][i, j] == pytest.approx(dg.measures.linear_cka(f[a], f[b]), abs=1e-12)
            assert m["mutual_knn"][i, j] == pytest.approx(
                dg.measures.mutual_knn(f[a], f[b], k=5), abs=1e-12)
            assert m["modularity_distance"][i, j] == pytest.approx(
                dg.measures.modularity_distance(f[a], f[b], y), abs=1e-12)
    g = torch.Generator().manual_seed(3)
    other = {"o1": torch.randn(80, 5, generator=g), "o2": f["l1"]}
    mp = dg.layer_matrix(f, other, ["cka"], permutations=19, seed=0)
    assert mp.metrics == ["cka", "cka:p"] and mp.rows == names and mp.cols == ["o1", "o2"]
    assert mp["cka:p"][1, 1] == pytest.approx(1 / 20) and mp.meta["p_resolution"] == 1 / 20
    assert bool((mp["cka:p"] >= 1 / 20).all())
    with pytest.raises(ValueError, match="is a layer measure"):
        dg.layer_matrix(f, measures=["twonn"])
    with pytest.raises(ValueError, match="same inputs"):
        dg.layer_matrix(f, {"z": torch.randn(7, 2)}, ["cka"])
    with pytest.raises(ValueError, match="permutations"):
        dg.layer_matrix(f, measures=["cka"], permutations=-1)


def test_user_pair_measure_with_permutations():
    @dg.measures.register("test_corr", kind="pair", labels=False,
                          prepare=lambda x, y: x[:, 0] - x[:, 0].mean())
    def corr(a, b):
        return float((a @ b) / (a.norm() * b.norm()))
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(50, 3, generator=g)
        m = dg.layer_matrix({"a": x}, {"b": 2 * x, "c": torch.randn(50, 3, generator=g)},
                            ["test_corr"], permutations=9)
        assert m["test_corr"][0, 0] == pytest.approx(1.0)
        assert m["test_corr:p"][0, 0] == pytest.approx(0.1)
    finally:
        dg.measures.unregister("test_corr")


class _Interrupt(Exception):
    pass


def test_checkpoint_resumes_bitwise_and_refuses_other_runs(tmp_path):
    f, y = feats_and_labels()
    calls = {"n": 0, "stop_at": None}

    @dg.measures.register("test_flaky_norm", graph=False, labels=False)
    def flaky(x, y_, graph):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            raise _Interrupt("killed")
        return float(x.norm())
    try:
        kw = dict(y=y, per_class=20, repeats=3, seed=2, progress=False)
        whole = dg.depth_profile(f, ["modularity", "test_flaky_norm"], **kw)
        ck = tmp_path / "run.ckpt.json"
        calls.update(n=0, stop_at=6)                          # dies in repeat 1, layer 2
        with pytest.raises(_Interrupt):
            dg.depth_profile(f, ["modularity", "test_flaky_norm"], checkpoint=ck, **kw)
        calls.update(n=0, stop_at=None)
        resumed = dg.depth_profile(f, ["modularity", "test_flaky_norm"], checkpoint=ck, **kw)
        assert calls["n"] == 9 - 5                            # 5 layers were finished before
        assert resumed == whole
        with pytest.raises(ValueError, match="belongs to another run"):
            dg.depth_profile(f, ["modularity", "test_flaky_norm"], checkpoint=ck,
                             **{**kw, "seed": 3})
        g = dict(f, l2=f["l2"] + 1e-3)                        # other features, same shapes
        with pytest.raises(ValueError, match="belongs to another run"):
            dg.depth_profile(g, ["modularity", "test_flaky_norm"], checkpoint=ck, **kw)
        text = ck.read_text()
        ck.write_text(text.replace("0.", "0.9", 1))           # one flipped value
        with pytest.raises(ValueError, match="corrupt"):
            dg.depth_profile(f, ["modularity", "test_flaky_norm"], checkpoint=ck, **kw)
        ck.write_text("{oops")
        with pytest.raises(ValueError, match="not a depth_profile checkpoint"):
            dg.depth_profile(f, ["modularity", "test_flaky_norm"], checkpoint=ck, **kw)
        # with nulls a repeat is checkpointed whole
        ck2 = tmp_path / "null.json"
        calls.update(n=0, stop_at=None)
        a = dg.depth_profile(f, ["modularity"], null_permutations=5, checkpoint=ck2, **kw)
        assert a == dg.depth_profile(f, ["modularity"], null_permutations=5, checkpoint=ck2, **kw)
        assert a == dg.depth_profile(f, ["modularity"], null_permutations=5, **kw)
    finally:
        dg.measures.unregister("test_flaky_norm")


def test_measure_errors_name_the_layer_and_the_measure():
    f, y = feats_and_labels()
    f = dict(f, flat=torch.zeros(160, 12))
    with pytest.raises(ValueError, match="layer 'flat', measure 'twonn'"):
        dg.depth_profile(f, ["twonn"], y=y, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_depth_profile_on_cuda_matches_cpu():
    f, y = feats_and_labels()
    kw = dict(y=y, per_class=20, repeats=2, null_permutations=10, progress=False)
    cpu = dg.depth_profile(f, ["modularity", "twonn", "nc1"], **kw)
    gpu = dg.depth_profile(f, ["modularity", "twonn", "nc1"], device="cuda", **kw)
    assert torch.allclose(gpu.samples, cpu.samples, rtol=1e-5, atol=1e-6)
    m = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU()).cuda()
    with dg.LayerTaps(m, ["0", "1"]) as taps:
        out = taps(f["l1"].cuda())
    assert out["1"].is_cuda and torch.equal(out["1"], torch.relu(out["0"]))


def test_given_samples_reproduce_the_draws_on_a_larger_pool():
    """Extract only the rows some repeat uses, give the draws: the same profile, bitwise."""
    f, y = feats_and_labels()
    full = dg.depth_profile(f, ["modularity", "twonn"], y=y, per_class=10, repeats=3, seed=4,
                            null_permutations=5, progress=False)
    draws = [dg.capture.balanced_indices(y, per_class=10, seed=4 + r) for r in range(3)]
    used = torch.unique(torch.cat(draws))
    small = {k: v[used] for k, v in f.items()}
    given = dg.depth_profile(small, ["modularity", "twonn"], y=y[used], seed=4,
                             null_permutations=5, progress=False,
                             samples=[torch.searchsorted(used, d) for d in draws])
    assert torch.equal(given.samples, full.samples) and used.numel() < y.numel()
    with pytest.raises(ValueError, match="samples= replaces"):
        dg.depth_profile(small, y=y[used], samples=[torch.arange(5)], per_class=2)
    with pytest.raises(ValueError, match="outside the features"):
        dg.depth_profile(small, y=y[used], samples=[torch.tensor([0, 10_000])], progress=False)
