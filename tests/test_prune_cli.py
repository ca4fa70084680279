"""`dyngraph prune` end to end on tiny settings, resume, --model FILE, and the public names."""
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
    args = ["prune", "--model", str(model_file), "--out", str(out)] + TINY
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
    # the saved pruned model is a normal module that loads and runs
    m = torch.load(out / "models" / "modularity.pt", weights_only=False)
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


def test_public_names():
    for name in ("redundant_layers", "prune_layers", "finetune", "count_params", "count_flops",
                 "measure_latency", "prune_report", "prune_study", "Redundancy", "Removal"):
        assert hasattr(dg.prune, name) and name in dg.prune.__all__, name
    assert dg.prune.prune_layers is dg.prune.prune_layers
