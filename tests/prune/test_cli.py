"""`dyngraph prune` end to end on tiny settings, resume, --model FILE, the study's report drawn
and logged through dg.plot / dg.log, and the public names."""
import json

import pytest
import torch

import dyngraph as dg
from dyngraph.cli._main import main

pytest.importorskip("sklearn")


@pytest.fixture(autouse=True)
def restore(monkeypatch):
    old = torch.get_num_threads()
    monkeypatch.setenv("DYNGRAPH_QUIET", "1")
    yield
    torch.set_num_threads(old)


TINY = ["--example", "digits", "--finetune-epochs", "1", "--repeats", "2", "--per-class", "10",
        "--pool-per-class", "20", "--n-remove", "2", "--random-seeds", "0", "1", "--no-latency",
        "--threads", "1", "--batch-size", "256", "--quiet"]


def _tiny_resnet(path):
    torch.manual_seed(0)
    torch.save(dg.zoo.CifarResNet((2, 2, 2), widths=(4, 8, 8), in_channels=1), path)


def test_cli_prune_user_resnet_file_and_resume(tmp_path, capsys):
    model_file = tmp_path / "tiny_resnet.pt"
    _tiny_resnet(model_file)
    out = tmp_path / "run"
    args = ["prune", "--model", str(model_file), "--trust-pickle", "--out", str(out)] + TINY
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| modularity |" in printed and "random, mean ± std (2 seeds)" in printed
    rep = json.loads((out / "prune_report.json").read_text())
    assert rep["model_info"]["source"] == str(model_file)
    rows = rep["rows"]
    assert set(rows) == {"modularity", "least_redundant", "cka", "random_seed0", "random_seed1",
                         "unpruned_finetuned"}
    for name, row in rows.items():
        assert 0.0 <= row["acc_pruned"] <= 1.0 and 0.0 <= row["acc_finetuned"] <= 1.0
        if name != "unpruned_finetuned":
            assert row["n_removed"] == 2 and row["params"] < rep["baseline"]["params"]
            assert row["flops"] < rep["baseline"]["flops"]
            # never the stem, the classifier or a shape-changing first block of a stage
            assert not {"conv1", "linear", "layer2.0", "layer3.0"} & set(row["removed"])
    mod = rep["selections"]["modularity"]["remove"]
    assert len(mod) == 2 and all("rank" in r["reason"] for r in mod)
    assert rep["summary"]["random_finetuned"]["n"] == 2
    assert rep["summary"]["test_samples"] == len(dg.zoo.digits_dataset("test"))
    assert (out / "curves.png").stat().st_size > 0 and (out / "prune_table.md").exists()
    assert len(rep["curve_after"]["layers"]) == len(rep["curve"]["layers"]) - 2
    # the curve is the one runner's modularity profile of the extracted pool
    report = dg.prune.StudyReport.from_json(out / "prune_report.json")
    assert report == rep and report.profile.metrics == ["modularity"]
    assert report.profile.meta["measures"] == ["modularity"] and report.profile.repeats == 2
    model = torch.load(model_file, weights_only=False)
    train, _ = dg.zoo.example_loaders("digits", batch_size=256, seed=0)
    feats = dg.extract_features(model, train, layers=report.profile.layers, per_class=20, seed=0,
                                progress=False)
    again = dg.depth_profile(feats, "modularity", graph=dg.GraphSpec(k=3), per_class=10,
                             repeats=2, seed=0, progress=False)
    assert torch.equal(again.samples, report.profile.samples)
    # its figure: the curve before and after pruning, the removed layers marked
    fig = dg.plot(report)
    ax = fig.axes[0]
    assert type(fig).__name__ == "Figure" and ax.get_ylabel() == "modularity Q"
    assert [line.get_label() for line in ax.lines] == ["before pruning",
                                                       "after pruning + fine-tuning"]
    pos = {n: i for i, n in enumerate(report.profile.layers)}
    crosses = ax.collections[-1].get_offsets()
    assert sorted(crosses[:, 0].tolist()) == sorted(pos[n] for n in report.removed)
    assert list(ax.lines[1].get_xdata()) == [pos[n] for n in
                                             report.profile_after.meta["original_layers"]]
    # the saved pruned weights load (weights_only=True) into the architecture rebuilt from the
    # model and the row's removed layers, and the pruned model runs
    orig = torch.load(model_file, weights_only=False)      # the test's own model file
    m = dg.prune.prune_layers(orig, report["rows"]["modularity"]["removed"],
                              example_input=torch.zeros(1, 1, 8, 8))
    m.load_state_dict(torch.load(out / "models" / "modularity.pt", weights_only=True))
    assert m(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert not list((out / "checkpoints").glob("*.pt"))
    # a rerun skips every finished row and changes nothing
    before = (out / "prune_report.json").read_text()
    assert main([a for a in args if a != "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "done before" in printed and "resuming" in printed
    assert json.loads((out / "prune_report.json").read_text())["rows"] == json.loads(before)["rows"]
    # other settings in the same folder are refused, with the difference named
    assert main(args + ["--finetune-epochs", "3"]) == 2
    assert "finetune_epochs" in capsys.readouterr().err
    # so is a 0.1 report (its curve is not a DepthProfile)
    old = json.loads(before)
    del old["config"]["format"]
    old.pop("checksum")  # (an edited file without a checksum is read with a warning)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "prune_report.json").write_text(json.dumps(old))
    assert main([a if a != str(out) else str(tmp_path / "old") for a in args]) == 2
    assert "'format': (None, 'dyngraph.prune_study/2')" in capsys.readouterr().err


def test_cli_prune_trains_a_deep_mlp_example(tmp_path):
    out = tmp_path / "mlp"
    args = ["prune", "--example", "digits", "--arch", "deep-mlp", "--epochs", "1",
            "--out", str(out), "--finetune-epochs", "1", "--repeats", "1", "--per-class", "10",
            "--pool-per-class", "10", "--n-remove", "3", "--methods", "modularity", "random",
            "--random-seeds", "0", "--no-control", "--no-latency", "--batch-size", "256",
            "--quiet"]
    assert main(args) == 0
    rep = json.loads((out / "prune_report.json").read_text())
    assert rep["model_info"]["arch"] == "deep-mlp" and rep["baseline"]["layers"] == 13
    assert set(rep["rows"]) == {"modularity", "random_seed0"}
    hidden = {f"net.{i}" for i in range(3, 24, 2)}  # never net.1 (first) or net.25 (classifier)
    for row in rep["rows"].values():
        assert len(row["removed"]) == 3 and set(row["removed"]) <= hidden
    assert list(out.glob("model_digits_deep-mlp_seed0_ep1.pt"))  # the trained model is cached
    assert main(["prune", "--out", str(tmp_path / "x"), "--example", "digits",
                 "--model", str(tmp_path / "missing.pt")]) == 2


def test_study_report_logs_to_tensorboard_and_plots(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    before = dg.DepthProfile(["stem", "b1", "b2", "b3"], "modularity",
                             torch.tensor([[0.2, 0.5, 0.51, 0.7], [0.3, 0.5, 0.53, 0.8]]))
    after = dg.DepthProfile(["stem", "b1", "b2"], "modularity", torch.tensor([0.25, 0.55, 0.8]),
                            {"original_layers": ["stem", "b1", "b3"]})
    report = dg.prune.StudyReport(curve=before.to_dict(), curve_after=after.to_dict(),
                                  selections={"modularity": {"remove": [{"layer": "b2"}]}},
                                  table="| model | acc |")
    assert report.profile == before and report.profile_after == after
    assert report.removed == ["b2"]
    with SummaryWriter(str(tmp_path)) as w:
        dg.log(w, report, prefix="study")
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    q = acc.Scalars("study/modularity")
    assert [e.step for e in q] == [0, 1, 2, 3]
    assert [e.value for e in q] == pytest.approx(before.values.tolist(), abs=1e-6)
    qa = acc.Scalars("study/modularity_after")
    assert [e.step for e in qa] == [0, 1, 3]  # the kept layers' original positions
    assert [e.value for e in qa] == pytest.approx([0.25, 0.55, 0.8], abs=1e-6)
    assert "study/figure" in acc.Tags()["images"]
    assert {"study/layers", "study/results"} <= {t.split("/text_summary")[0]
                                                  for t in acc.Tags()["tensors"]}
    only_before = dg.prune.StudyReport(curve=before.to_dict())
    fig = dg.plot(only_before, tmp_path / "curve.png")
    assert type(fig).__name__ == "Figure" and len(fig.axes[0].lines) == 1
    assert (tmp_path / "curve.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no 'curve' yet"):
        dg.plot(dg.prune.StudyReport(rows={}))
    (tmp_path / "old.json").write_text(json.dumps({"config": {}}))  # a 0.1 report
    with pytest.raises(ValueError, match="not a dyngraph.prune_study/2 report"):
        dg.prune.StudyReport.from_json(tmp_path / "old.json")


def test_public_names():
    expected = {
        "redundant_layers", "layer_scores", "Redundancy", "Removal", "RULES",
        "DEFAULT_THRESHOLDS", "random_layers", "least_redundant_layers", "cka_layers",
        "adjacent_cka", "prune_layers", "probe", "infer_example_input", "make_projection",
        "finetune", "fit", "evaluate", "count_params", "count_flops", "measure_latency",
        "cost_report", "prune_report", "prune_study", "StudyReport",
        # transformer depth pruning (issue 16)
        "BlockSelection", "BlockStates", "TRANSFORMER_CRITERIA", "block_states", "heal",
        "lm_batches", "perplexity", "remove_blocks", "select_blocks", "transformer_blocks",
        "transformer_prune_study"}
    assert sorted(dg.prune.__all__) == sorted(expected)
    for name in dg.prune.__all__:
        assert hasattr(dg.prune, name), name
    # moved: CKA to dg.measures.linear_cka, figures to dg.plot(report); study internals private
    for gone in ("linear_cka", "plot_before_after", "format_table", "summarize",
                 "layer_structure"):
        assert not hasattr(dg.prune, gone), gone
    assert dg.prune.prune_layers is dg.prune.prune_layers
