import json

import pytest

from dyngraph.cli._main import main


def test_curve_command_digits(tmp_path, capsys):
    out = tmp_path / "digits"
    args = ["curve", "--example", "digits", "--arch", "mlp", "--out", str(out), "--epochs", "3",
            "--per-class", "15", "--repeats", "2", "--quiet"]
    assert main(args) == 0
    d = json.loads((out / "curve.json").read_text())
    assert d["layers"] == ["net.1", "net.3", "net.5", "net.7", "net.9"]
    assert len(d["modularity"]) == 5 and all(-0.5 < q <= 0.9 for q in d["modularity"])
    assert d["meta"]["graph"]["k"] == 3 and d["meta"]["n_samples"] == 150 and d["meta"]["repeats"] == 2
    assert (out / "curve.png").exists() and (out / "curve.csv").exists()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    ckpts = list(out.glob("model_*.pt"))
    assert len(ckpts) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["modularity"] == [round(v, 4) for v in d["modularity"]]
    # The label-permutation chance level (100 permutations per repeat by default) and z-scores.
    assert d["meta"]["null_permutations"] == 100 and len(d["modularity:z"]) == 5
    assert all(abs(m) < 0.05 for m in d["modularity:null_mean"]) and printed["zscore"][-1] > 5
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"dyngraph/modularity", "dyngraph/modularity:null_mean", "dyngraph/modularity:z"} <= \
        set(tags)
    assert [e.step for e in acc.Scalars("dyngraph/modularity:z")] == [0, 1, 2, 3, 4]
    # A rerun reuses the finished training run instead of repeating it.
    assert main(args) == 0
    d2 = json.loads((out / "curve.json").read_text())
    assert "reused_checkpoint" in d2["meta"]["model"]
    assert d2["modularity"] == d["modularity"]


def test_curve_untrained_and_bad_args(tmp_path, capsys):
    out = tmp_path / "u"
    assert main(["curve", "--example", "digits", "--arch", "cnn", "--untrained", "--out",
                 str(out), "--per-class", "10", "--repeats", "1", "--quiet"]) == 0
    d = json.loads((out / "curve.json").read_text())
    assert d["meta"]["model"]["trained"] is False and len(d["layers"]) == 6
    assert main(["curve", "--out", str(out), "--k", "0", "--quiet"]) == 2
    assert "k must be >= 1" in capsys.readouterr().err
    assert main(["curve", "--out", str(out), "--model", str(tmp_path / "missing.pt")]) == 2
    assert main(["curve", "--out", str(out), "--null", "-1", "--quiet"]) == 2
    assert "--null must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["curve", "--example", "cifar", "--out", str(out)])


def test_help_shows_defaults_and_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert ":mod:" not in top and "``" not in top and "COMMAND --help" in top
    for cmd in ("curve", "compare", "neurons", "prune"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "(default: 0)" in text and "--seed" in text and "--device" in text, cmd


def test_cuda_without_a_gpu_is_a_named_error(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["curve", "--out", "unused", "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dyngraph: error: --device cuda") and "Traceback" not in err


def test_errors_name_the_flags_as_typed(tmp_path, capsys):
    assert main(["curve", "--out", str(tmp_path), "--per-class", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--per-class must be >= 1" in err and "per_class" not in err


def test_layers_by_name_type_or_preset(tmp_path, capsys):
    base = ["curve", "--example", "digits", "--arch", "mlp", "--epochs", "1", "--per-class", "8",
            "--repeats", "1", "--null", "0", "--quiet"]
    out = tmp_path / "named"
    assert main(base + ["--out", str(out), "--layers", "net.3", "net.7"]) == 0
    assert json.loads((out / "curve.json").read_text())["layers"] == ["net.3", "net.7"]
    out = tmp_path / "typed"
    assert main(base + ["--out", str(out), "--layers", "ReLU"]) == 0
    layers = json.loads((out / "curve.json").read_text())["layers"]
    assert layers == ["net.2", "net.4", "net.6", "net.8"]
    capsys.readouterr()
    assert main(base + ["--out", str(out), "--layers", "net.33"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dyngraph: error: --layers: unknown layer 'net.33'")
    assert main(base + ["--out", str(out), "--layers", "Conv2d"]) == 2
    assert "--layers Conv2d: the model has no Conv2d module" in capsys.readouterr().err


def test_only_the_sampled_rows_are_extracted(tmp_path, capsys):
    out = tmp_path / "few"
    assert main(["curve", "--example", "digits", "--arch", "mlp", "--epochs", "1", "--out",
                 str(out), "--per-class", "4", "--repeats", "2", "--null", "0",
                 "--spill-dir", str(tmp_path), "--quiet"]) == 0
    meta = json.loads((out / "curve.json").read_text())["meta"]
    assert meta["extracted"]["rows"] <= 2 * 4 * 10 < meta["extracted"]["of"]
    assert meta["spill_dir"] is not None and meta["n_samples"] == 40
    assert not list(tmp_path.glob("dyngraph-features-*"))    # the spill folder is removed


def test_threads_default_is_fixed_recorded_and_restored(tmp_path, capsys):
    import torch

    from dyngraph.cli._main import DEFAULT_THREADS
    before = torch.get_num_threads()
    args = ["curve", "--arch", "mlp", "--untrained", "--per-class", "8", "--repeats", "1",
            "--null", "0", "--quiet"]
    try:
        torch.set_num_threads(1)
        assert main(args + ["--out", str(tmp_path / "a")]) == 0
        assert torch.get_num_threads() == 1  # the caller's own setting comes back
        meta = json.loads((tmp_path / "a" / "curve.json").read_text())["meta"]
        assert meta["threads"] == DEFAULT_THREADS
        assert main(args + ["--out", str(tmp_path / "b"), "--threads", "1"]) == 0
        assert json.loads((tmp_path / "b" / "curve.json").read_text())["meta"]["threads"] == 1
        capsys.readouterr()
        assert main(args + ["--out", str(tmp_path / "c"), "--threads", "0"]) == 2
        assert "dyngraph: error: --threads must be >= 1, got 0" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
