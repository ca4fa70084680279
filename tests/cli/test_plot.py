"""``dyngraph plot RUN...``: several runs' curves overlaid in one figure."""
import json

import torch

import dyngraph as dg
from dyngraph.cli._main import main


def _run(folder, values, layers=("a", "b", "c"), label="trained"):
    folder.mkdir(parents=True)
    p = dg.DepthProfile(list(layers), ["modularity"], torch.tensor(values, dtype=torch.float64),
                        meta={"label": label, "graph": {"k": 3, "metric": "cosine"},
                              "repeats": len(values)})
    p.to_json(folder / "curve.json")
    return folder


def test_overlay_of_runs(tmp_path, capsys):
    a = _run(tmp_path / "t", [[0.2, 0.5, 0.7], [0.3, 0.5, 0.8]])
    b = _run(tmp_path / "u", [[0.2, 0.3, 0.1]], label="untrained")
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "f.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (tmp_path / "f.png").stat().st_size > 0
    assert [r["label"] for r in out["runs"]] == ["trained", "untrained"]
    assert out["runs"][0]["modularity"] == [0.25, 0.5, 0.75]
    # two runs with the same label are told apart by their folder names
    c = _run(tmp_path / "again", [[0.1, 0.1, 0.1]])
    assert main(["plot", str(a), str(c / "curve.json"), "--out", str(tmp_path / "g.png")]) == 0
    assert [r["label"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["t", "again"]


def test_plot_errors_name_the_argument(tmp_path, capsys):
    a = _run(tmp_path / "t", [[0.2, 0.5, 0.7]])
    d = _run(tmp_path / "d", [[0.2, 0.5]], layers=("a", "b"))
    cases = [([str(a), str(tmp_path / "missing")], "RUN"),
             ([str(a), str(d)], "same layers"),
             ([str(a), "--metric", "twonn"], "--metric 'twonn'"),
             ([str(a), "--labels", "x", "y"], "--labels has 2 entries for 1 runs")]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "curve.json").write_text('{"format": "something else"}')
    cases.append(([str(tmp_path / "bad")], "is not a dyngraph curve"))
    for argv, message in cases:
        assert main(["plot", *argv, "--out", str(tmp_path / "f.png")]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("dyngraph: error:") and message in err, (argv, err)
