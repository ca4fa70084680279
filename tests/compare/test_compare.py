"""dg.compare, stream_cka and the ``dyngraph compare`` command."""
import csv
import importlib
import io
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dyngraph as dg

compare = dg.compare.compare_models
# the private module, to count the per-model work
compare_mod = importlib.import_module("dyngraph.compare._compare")
ALL = ["cka", "cka_unbiased", "knn_overlap", "mutual_knn", "graph", "modularity_distance"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def feature_sets():
    y = torch.arange(90) % 3
    x = torch.randn(90, 8, generator=gen(1)) + 2 * torch.eye(8)[y]
    a = {"l1": x, "l2": torch.tanh(x @ torch.randn(8, 40, generator=gen(2))),
         "l3": torch.randn(90, 5, generator=gen(3))}
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen(4)))
    b = {"m1": 3 * x @ q, "m2": torch.randn(90, 6, generator=gen(5))}
    return a, b, y


def tiny_models():
    torch.manual_seed(0)
    m1 = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    m2 = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    return m1, m2


def tiny_loader(n=120, batch_size=40):
    g = gen(7)
    y = torch.arange(n) % 3
    x = torch.randn(n, 6, generator=g) + torch.eye(6)[y] * 2
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def test_compare_feature_sets_matches_layer_matrix(feature_sets, tmp_path):
    a, b, y = feature_sets
    measures = ALL
    res = compare({"A": a, "B": b}, measures=measures, labels=y, k=5, progress=False)
    assert isinstance(res, dg.compare.Comparison) and res.names == ["A", "B"]
    assert set(res.matrices) == {("A", "A"), ("A", "B"), ("B", "B")}
    opts = {m: {"k": 5} for m in measures}
    ref_ab = dg.layer_matrix(a, b, measures, y=y, measure_options=opts)
    ref_aa = dg.layer_matrix(a, None, measures, y=y, measure_options=opts)
    for m in measures:
        assert torch.equal(res.matrix("A", "B")[m], ref_ab[m])
        assert torch.equal(res.matrix("A", "A")[m], ref_aa[m])
        assert torch.equal(res.matrix("B", "A")[m], ref_ab[m].T)
    assert res.matrix("B", "A").rows == list(b) and res.matrix("B", "A").cols == list(a)
    # B's first layer is A's first layer rotated and scaled
    assert res.matrix("A", "B")["cka"][0, 0] == pytest.approx(1.0)
    assert res.matrix("A", "B")["modularity_distance"][0, 0] == pytest.approx(0, abs=1e-6)
    # tidy table: one row per cell
    rows = res.table
    n_cells = sum(len(m.rows) * len(m.cols) * len(measures) for m in res.matrices.values())
    assert len(rows) == n_cells
    r = next(r for r in rows if r["measure"] == "cka" and r["model_a"] == "A"
             and r["model_b"] == "B" and r["layer_a"] == "l2" and r["layer_b"] == "m1")
    assert r["value"] == pytest.approx(dg.measures.linear_cka(a["l2"], b["m1"]), abs=1e-12)
    parsed = list(csv.DictReader(io.StringIO(res.to_csv(tmp_path / "t.csv"))))
    assert len(parsed) == n_cells and (tmp_path / "t.csv").exists()
    # free per-model profiles
    assert isinstance(res.profiles["A"], dg.DepthProfile)
    assert torch.allclose(res.profiles["A"]["modularity"].values,
                          torch.tensor([dg.modularity(*_snap(a[l], y)) for l in a],
                                       dtype=torch.float64), atol=1e-12)
    assert 0 <= float(res.profiles["B"]["knn_purity"].values.min())
    # JSON round trip and summary
    back = dg.compare.Comparison.from_json(_write(res, tmp_path / "r.json"))
    assert back.names == res.names
    assert back.matrix("A", "B") == res.matrix("A", "B")
    assert back.profiles["A"] == res.profiles["A"]
    s = res.summary()
    assert s["cka"]["A|A"]["diagonal_mean"] == pytest.approx(1.0)
    assert s["cka"]["A|B"]["mean_best_match"] <= 1.0 + 1e-12


def _snap(x, y):
    s = dg.graphs.build_snapshot(x, y, k=3)
    return s.edge_index, y, s.edge_weight


def _write(res, path):
    res.to_json(path)
    return path


def test_compare_outputs_figures_and_tensorboard(feature_sets, tmp_path):
    a, b, y = feature_sets
    res = compare([a, b], measures=["cka", "mutual_knn"], names=["A", "B"], labels=y, k=5,
                  permutations=9, progress=False)
    p = res.matrix("A", "B")["cka:p"]
    assert ((p >= 0.1) & (p <= 1)).all()
    assert float(p[0, 0]) == pytest.approx(0.1)   # 1/(9+1): the rotated copy beats every shuffle
    from dyngraph.cli.commands.compare import _write_figures
    paths = _write_figures(res, tmp_path / "figs")
    assert {"grid_cka", "grid_mutual_knn", "cka__A__vs__B", "curve_knn_purity"} <= set(paths)
    assert all(p.stat().st_size > 1000 for p in paths.values())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(tmp_path / "tb")) as w:
        dg.log(w, res, prefix="dyngraph/compare")
    ev = EventAccumulator(str(tmp_path / "tb"))
    ev.Reload()
    assert "dyngraph/compare/cka/figure" in ev.Tags()["images"]
    assert "dyngraph/compare/A/knn_purity" in ev.Tags()["scalars"]
    assert "dyngraph/compare/A_vs_B/cka:p/text_summary" in ev.Tags()["tensors"]   # text table


def test_compare_models_does_per_model_work_once(monkeypatch):
    m1, m2 = tiny_models()
    loader = tiny_loader()
    calls = []
    real = compare_mod._prepare

    def counting(features, ms, y, opts, device, name, progress):
        calls.append(name)
        return real(features, ms, y, opts, device, name, progress)

    monkeypatch.setattr(compare_mod, "_prepare", counting)
    res = compare({"deep": m1, "shallow": m2, "deep_again": m1}, loader,
                  measures=["cka", "knn_overlap", "graph"], k=5, per_class=20, progress=False)
    assert sorted(calls) == ["deep", "deep_again", "shallow"]          # once per model
    assert len(res.matrices) == 6                                      # 3 within + 3 between
    assert res.layers["deep"] == dg.default_layers(m1)
    assert res.meta["n_samples"] == 60
    same = res.matrix("deep", "deep_again")["cka"]
    assert torch.allclose(same, res.matrix("deep", "deep")["cka"])
    assert torch.allclose(same.diagonal(), torch.ones(3, dtype=torch.float64))
    assert res.matrix("deep", "deep_again")["knn_overlap"].diagonal().min() == 1.0


def test_stream_cka_matches_exact_and_minibatch_definition():
    m1, m2 = tiny_models()
    loader = tiny_loader(batch_size=120)                 # one batch: minibatch CKA = exact
    got = dg.compare.stream_cka([m1, m2], loader, progress=False)
    names = ["Sequential_0", "Sequential_1"]
    f1 = dg.extract_features(m1, loader, progress=False)
    f2 = dg.extract_features(m2, loader, progress=False)
    m = got[tuple(names)]
    assert isinstance(m, dg.LayerMatrix) and m.metrics == ["cka_minibatch"]
    assert m.meta["cka_minibatch"]["batches"] == 1
    assert m.rows == f1.names and m.cols == f2.names
    for i, la in enumerate(f1.names):
        for j, lb in enumerate(f2.names):
            assert float(m["cka_minibatch"][i, j]) == pytest.approx(
                dg.measures.linear_cka(f1[la], f2[lb], unbiased=True), abs=1e-6)
    # several batches (last one of 2 rows is skipped): the mean-HSIC estimator
    small = tiny_loader(n=122, batch_size=40)
    res = compare({"a": m1, "b": m2}, small, measures=["cka_minibatch", "cka"], progress=False)
    mb = res.matrix("a", "b")
    assert mb.metrics == ["cka_minibatch", "cka"]
    stats = mb.meta["cka_minibatch"]
    assert stats["skipped_batches"] == 1 and stats["batches"] == 3
    acc = dg.measures.MinibatchCKA()
    fa = dg.extract_features(m1, small, progress=False)
    fb = dg.extract_features(m2, small, progress=False)
    for s in range(0, 120, 40):
        acc.update([fa[l][s:s + 40] for l in fa], [fb[l][s:s + 40] for l in fb])
    assert torch.allclose(mb["cka_minibatch"], acc.compute(), atol=1e-6)


def test_compare_errors(feature_sets):
    a, b, y = feature_sets
    m1, _ = tiny_models()
    with pytest.raises(ValueError, match="loader"):
        compare([m1, m1])
    with pytest.raises(ValueError, match="measures"):
        compare([a, b], measures=["svcca"], labels=y)
    with pytest.raises(ValueError, match="twice"):
        compare([a, b], measures=["cka", "cka"], labels=y)
    with pytest.raises(ValueError, match="unique"):
        compare([a, b], names=["x", "x"], labels=y)
    with pytest.raises(ValueError, match="same inputs"):
        compare([a, {"z": torch.randn(50, 3)}], measures=["cka"])
    with pytest.raises(ValueError, match="needs labels"):
        compare([a, b], measures=["modularity_distance"])
    with pytest.raises(ValueError, match="nn.Module"):
        compare([a, b], measures=["cka_minibatch"], labels=y)
    with pytest.raises(TypeError, match="list"):
        compare(a["l1"])
    with pytest.raises(TypeError, match=r"models_or_feature_sets\[1\]"):
        compare([a, "model.pt"])
    res = compare([a, b], measures=["cka"], labels=y, within=False, progress=False)
    with pytest.raises(KeyError, match="not computed"):
        res.matrix("features_0", "features_0")
    with pytest.raises(KeyError, match="no metric 'graph'"):
        res.matrix("features_0", "features_1")["graph"]
    with pytest.raises(KeyError, match="no model named"):
        res.matrix("features_0", "C")


def test_compare_command_trains_compares_and_resumes(tmp_path, capsys):
    from dyngraph.cli._main import main
    out = tmp_path / "cmp"
    argv = ["compare", "--archs", "mlp", "--seeds", "0", "1", "--include-untrained",
            "--epochs", "2", "--per-class", "8", "--measures", "cka", "mutual_knn",
            "--k", "5", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert report["names"] == ["mlp-seed0", "mlp-seed1", "mlp-untrained"]
    assert set(report["measures"]) == {"cka", "mutual_knn"}
    assert printed["n_samples"] == 80
    assert report["info"]["mlp-untrained"]["trained"] is False
    assert (out / "table.csv").exists() and (out / "figures" / "grid_cka.png").exists()
    assert list((out / "tensorboard").glob("events.*"))
    assert {c["measure"] for c in report["checks"]["same_architecture_seeds"]} == {"cka",
                                                                                  "mutual_knn"}
    assert len(list(out.glob("model_*.pt"))) == 2          # trained checkpoints cached
    # rerun with the same settings: the report is reused, nothing is retrained
    assert main(argv) == 0
    assert "reused" in json.loads(capsys.readouterr().out)
    # model files
    torch.save(dg.zoo.DigitsMLP(depth=2), tmp_path / "a.pt")
    torch.save(dg.zoo.DigitsMLP(depth=3), tmp_path / "b.pt")
    assert main(["compare", "--models", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"),
                 "--measures", "cka", "--per-class", "6", "--out", str(tmp_path / "files"),
                 "--quiet"]) == 2                             # pickled modules need the flag
    assert "--trust-pickle" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="runs code from the file"):
        assert main(["compare", "--models", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"),
                     "--measures", "cka", "--per-class", "6", "--out", str(tmp_path / "files"),
                     "--trust-pickle", "--quiet"]) == 0
    rep = json.loads((tmp_path / "files" / "report.json").read_text())
    assert rep["names"] == ["a", "b"] and rep["layers"]["b"] == ["net.1", "net.3", "net.5",
                                                                 "net.7"]
    capsys.readouterr()
    assert main(["compare", "--archs", "mlp", "--out", str(tmp_path / "one"), "--quiet"]) == 2
    assert "two or more models" in capsys.readouterr().err


def test_public_api_names():
    names = ["linear_cka", "knn_overlap", "mutual_knn", "graph_similarity", "modularity_distance",
             "class_mixing", "knn_purity", "detect_communities", "community_transitions",
             "compare", "StreamingCKA", "MinibatchCKA", "permutation_test", "community_evolution"]
    homes = {"compare": (dg.compare, "compare_models")}
    for n in names:
        mod, attr = homes.get(n, (dg.measures, n))
        assert attr in mod.__all__ and callable(getattr(mod, attr)), n
    assert dg.compare.compare_models is compare


def test_comparison_drawers_return_figures(feature_sets, tmp_path):
    from matplotlib.figure import Figure
    a, b, y = feature_sets
    res = compare({"A": a, "B": b}, measures=["cka", "modularity_distance"], labels=y, k=5,
                  permutations=4, progress=False)
    grid = dg.plot(res, tmp_path / "grid.png", metric="modularity_distance")
    assert isinstance(grid, Figure) and (tmp_path / "grid.png").stat().st_size > 1000
    assert "|Q_i − Q_j|" in grid._suptitle.get_text()
    one = dg.plot(res, pair=("B", "A"))                       # transposed on demand
    assert isinstance(one, Figure)
    ax = one.axes[0]
    assert ax.get_ylabel() == "B layers" and ax.get_xlabel() == "A layers"
    assert [t.get_text() for t in ax.get_yticklabels()] == list(b)
    assert len(ax.texts) == len(a) * len(b)                   # annotated cells
    assert dg.plot(res).axes[0].get_title() == "A"            # default: the first measure
    single = compare([a], measures=["cka"], progress=False)   # one model: a 1 × 1 grid
    assert isinstance(dg.plot(single), Figure)
    with pytest.raises(ValueError, match="was not computed"):
        dg.plot(res, metric="graph")
    with pytest.raises(ValueError, match="pair"):
        dg.plot(res, pair=("A", "C"))
    with pytest.raises(ValueError, match="pair must be two"):
        dg.plot(res, pair="AB")
    from matplotlib.figure import Figure as F
    with pytest.raises(ValueError, match="ax="):
        dg.plot(res, ax=F().subplots())
    assert "Comparison" in dg.outputs.drawable_types()


def test_stream_cka_taps_leave_models_clean():
    m1, m2 = tiny_models()
    m1.train()
    loader = tiny_loader(batch_size=40)
    got = dg.compare.stream_cka({"a": m1, "b": m2}, loader, layers={"a": ["0", "2"]},
                                max_batches=2, progress=False)
    assert got[("a", "a")].rows == ["0", "2"] and got[("b", "b")].rows == dg.default_layers(m2)
    assert got[("a", "b")].meta["cka_minibatch"]["rows"] == 80
    for m in (m1, m2):
        assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    assert m1.training and m2.training
    with pytest.raises(ValueError, match="did not run|unknown|no layer"):
        dg.compare.stream_cka([m1], loader, layers=["nope"], progress=False)
    assert all(not mod._forward_hooks for mod in m1.modules()) and m1.training
    with pytest.raises(TypeError, match="needs models"):
        dg.compare.stream_cka({"a": {"l": torch.zeros(3, 2)}}, loader)


def test_compare_with_a_registered_pair_measure(feature_sets):
    a, b, y = feature_sets

    def prepare(x, labels, scale=1.0):
        return scale * x.double().norm(dim=1)

    @dg.measures.register("norm_corr", kind="pair", labels=False, prepare=prepare,
                          overwrite=True)
    def norm_corr(u, v):
        return float(torch.corrcoef(torch.stack([u, v]))[0, 1])

    try:
        res = compare({"A": a, "B": b}, measures=["cka", "norm_corr"], labels=y,
                      measure_options={"norm_corr": {"scale": 2.0}}, permutations=3,
                      progress=False)
        ref = dg.layer_matrix(a, b, ["norm_corr"], y=y, permutations=3,
                              measure_options={"norm_corr": {"scale": 2.0}})
        got = res.matrix("A", "B")
        assert got.metrics == ["cka", "cka:p", "norm_corr", "norm_corr:p"]
        assert torch.equal(got["norm_corr"], ref["norm_corr"])
        assert torch.equal(got["norm_corr:p"], ref["norm_corr:p"])
    finally:
        dg.measures.unregister("norm_corr")
