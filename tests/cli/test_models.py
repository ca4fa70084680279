"""The user's own model in the CLI: a class in a training script, a state_dict, a pickled module
(only with --trust-pickle), TorchScript (refused with the reason), bad specs (named errors)."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from dyngraph.cli._main import main

SCRIPT = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, hidden=16):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))

        def forward(self, x):
            return self.net(x)

    if __name__ == "__main__":          # the user's training run: saves both kinds of file
        import sys
        torch.manual_seed(0)
        m = Net(hidden=int(sys.argv[2]))
        torch.save(m.state_dict(), sys.argv[1] + "/weights.pt")
        torch.save(m, sys.argv[1] + "/whole.pt")
        torch.jit.save(torch.jit.script(m), sys.argv[1] + "/scripted.pt")
""")
ARGS = ["--per-class", "8", "--repeats", "1", "--null", "0", "--quiet"]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    (d / "train.py").write_text(SCRIPT)
    subprocess.run([sys.executable, str(d / "train.py"), str(d), "12"], check=True)
    return d


def test_class_in_a_script_with_its_state_dict(user_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["curve", "--model-def", f"{user_files}/train.py:Net", "--model-args",
                 '{"hidden": 12}', "--model", str(user_files / "weights.pt"),
                 "--out", str(out)] + ARGS) == 0
    d = json.loads((out / "curve.json").read_text())
    assert d["layers"] == ["net.1", "net.3", "net.5"]
    assert d["meta"]["model"]["model_def"].endswith("train.py:Net")
    capsys.readouterr()
    # the same class without the right constructor arguments: the weights do not fit
    assert main(["curve", "--model-def", f"{user_files}/train.py:Net", "--model",
                 str(user_files / "weights.pt"), "--out", str(out)] + ARGS) == 2
    assert "does not fit --model-def" in capsys.readouterr().err


def test_pickled_module_needs_trust_and_its_class(user_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["curve", "--model", str(user_files / "whole.pt"), "--out", str(out)]
                + ARGS) == 2
    err = capsys.readouterr().err
    assert err.startswith("dyngraph: error: --model") and "--trust-pickle" in err
    assert "Traceback" not in err
    with pytest.warns(UserWarning, match="runs code from the file"):
        assert main(["curve", "--model", str(user_files / "whole.pt"), "--trust-pickle",
                     "--out", str(out)] + ARGS) == 2
    assert "needs --model-def script.py:Name" in capsys.readouterr().err  # class was __main__.Net
    with pytest.warns(UserWarning, match="runs code from the file"):
        assert main(["curve", "--model", str(user_files / "whole.pt"), "--trust-pickle",
                     "--model-def", f"{user_files}/train.py:Net", "--out", str(out)] + ARGS) == 0


def test_torchscript_and_bad_specs_are_named_errors(user_files, tmp_path, capsys):
    out = str(tmp_path / "run")
    cases = [
        (["--model", str(user_files / "scripted.pt")], "TorchScript"),
        (["--model-def", "train.py"], "--model-def must be FILE.py:Name"),
        (["--model-def", f"{user_files}/nope.py:Net"], "--model-def: no file"),
        (["--model-def", f"{user_files}/train.py:Missing"], "defines no 'Missing'"),
        (["--model-def", "no_such_package.models:Net"], "cannot import module"),
        (["--model-def", f"{user_files}/train.py:Net", "--model-args", "[1]"],
         "--model-args must be a JSON object"),
        (["--model", str(tmp_path / "missing.pt")], "does not exist"),
    ]
    for extra, message in cases:
        assert main(["curve", "--out", out] + extra + ARGS) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("dyngraph: error:") and message in err, (extra, err)


def test_state_dict_of_a_reference_architecture(tmp_path, capsys):
    import dyngraph as dg
    torch.manual_seed(0)
    m = dg.zoo.build_model("mlp", "digits")
    torch.save({"model": m.state_dict(), "info": {}}, tmp_path / "ckpt.pt")  # the CLI's own cache
    assert main(["curve", "--arch", "mlp", "--model", str(tmp_path / "ckpt.pt"),
                 "--out", str(tmp_path / "run")] + ARGS) == 0
    assert json.loads((tmp_path / "run" / "curve.json").read_text())["meta"]["model"]["arch"] \
        == "mlp"


def test_weights_flag_reads_only_state_dicts(user_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["curve", "--model-def", f"{user_files}/train.py:Net", "--model-args",
                 '{"hidden": 12}', "--weights", str(user_files / "weights.pt"),
                 "--out", str(out)] + ARGS) == 0
    assert json.loads((out / "curve.json").read_text())["meta"]["model"]["source"] \
        == str(user_files / "weights.pt")
    capsys.readouterr()
    # a pickled module is never unpickled through --weights, even with --trust-pickle
    assert main(["curve", "--weights", str(user_files / "whole.pt"), "--trust-pickle",
                 "--out", str(out)] + ARGS) == 2
    err = capsys.readouterr().err
    assert err.startswith("dyngraph: error: --weights") and "pickled Python object" in err
    assert main(["curve", "--weights", str(user_files / "weights.pt"), "--model",
                 str(user_files / "weights.pt"), "--out", str(out)] + ARGS) == 2
    assert "--weights and --model" in capsys.readouterr().err


def test_neurons_layers_and_point(user_files, tmp_path, capsys):
    base = ["neurons", "--model-def", f"{user_files}/train.py:Net", "--model-args",
            '{"hidden": 12}', "--weights", str(user_files / "weights.pt"), "--shuffles", "0",
            "--random-groups", "0", "--clusters", "2", "--quiet"]
    assert main(base + ["--layers", "net.1", "net.3", "--out", str(tmp_path / "a")]) == 0
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["graph"]["layers"] == ["net.1", "net.3"]
    capsys.readouterr()
    # a module type selects every module of that type (here all three Linear layers)
    assert main(base + ["--layers", "Linear", "--source", "activations", "--point", "pre",
                        "--out", str(tmp_path / "b")]) == 0
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["graph"]["layers"] == ["net.1", "net.3", "net.5"]
    capsys.readouterr()
    assert main(base + ["--layers", "net.9", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dyngraph: error: --layers") and "net.9" in err
