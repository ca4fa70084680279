"""Image folders as users have them: layouts stated (never guessed silently), classes matched by
name across splits, the held-out images never used for training or augmented, bad specs named."""
import json

import pytest
import torch

import dyngraph as dg
from dyngraph.cli._main import main


def make_tree(root, split, classes, n=6, seed=0):
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    for ci, c in enumerate(classes):
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = (torch.rand(8, 8, 3, generator=g) * 60 + 60 * ci).clamp(0, 255).byte().numpy()
            Image.fromarray(img).save(d / f"{i}.png")


def test_layouts_are_detected_and_stated(tmp_path):
    make_tree(tmp_path / "a", "train", ["cat", "dog"])
    make_tree(tmp_path / "a", "val", ["cat", "dog"], seed=1)
    for given in (tmp_path / "a", tmp_path / "a" / "train"):
        lay = dg.zoo.folder_layout(str(given))
        assert lay["train"].endswith("a/train") and lay["eval"].endswith("a/val")
    with pytest.raises(ValueError, match="no held-out images"):
        dg.zoo.folder_layout(str(tmp_path / "a" / "val"))
    make_tree(tmp_path / "b", "train", ["cat"])          # a root with only train/: not classes
    with pytest.raises(ValueError, match="split folders \\['train'\\]"):
        dg.zoo.folder_layout(str(tmp_path / "b"))


def test_classes_match_by_name_and_eval_is_not_augmented(tmp_path):
    make_tree(tmp_path, "train", ["ant", "bee", "cat"])
    make_tree(tmp_path, "test", ["bee", "cat"], seed=2)   # lacks 'ant': indices must not shift
    with pytest.warns(UserWarning, match="lacks classes \\['ant'\\]"):
        train, test, n = dg.zoo.image_folder_loaders(str(tmp_path), image_size=8, num_workers=0)
    assert n == 3 and sorted(set(test.dataset.targets)) == [1, 2]
    assert test.dataset.dyngraph_data["eval_missing_classes"] == ["ant"]
    names = [t.__class__.__name__ for t in test.dataset.transform.transforms]
    assert "RandomHorizontalFlip" not in names and "Normalize" in names
    make_tree(tmp_path, "test", ["zebra"], seed=3)
    with pytest.raises(ValueError, match="classes the training folder lacks: \\['zebra'\\]"):
        dg.zoo.image_folder_loaders(str(tmp_path), image_size=8, num_workers=0)
    assert dg.zoo.parse_normalize("0.5,0.5") == ((0.5,), (0.5,))
    for bad in ("imagenett", "0.5", "0.5,0"):
        with pytest.raises(ValueError, match="normalize must be"):
            dg.zoo.parse_normalize(bad)


def test_cli_on_an_image_folder_with_a_mismatched_model(tmp_path, capsys):
    make_tree(tmp_path / "d", "train", ["a", "b"], n=8)
    make_tree(tmp_path / "d", "val", ["a", "b"], n=8, seed=4)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 2))
    torch.save(net, tmp_path / "net.pt")
    args = ["curve", "--data", str(tmp_path / "d"), "--image-size", "8", "--model",
            str(tmp_path / "net.pt"), "--trust-pickle", "--per-class", "4", "--repeats", "1",
            "--null", "0", "--quiet"]
    with pytest.warns(UserWarning, match="runs code"):
        assert main(args + ["--out", str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "run" / "curve.json").read_text())["meta"]
    assert meta["data"]["layout"] == "root with train/ and val/"
    assert meta["data"]["eval"].endswith("d/val") and meta["data"]["normalize"] == "cifar10"
    capsys.readouterr()
    wide = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    torch.save(wide, tmp_path / "wide.pt")
    args[args.index(str(tmp_path / "net.pt"))] = str(tmp_path / "wide.pt")
    with pytest.warns(UserWarning):
        assert main(args + ["--out", str(tmp_path / "run2")]) == 2
    assert "gives 10 outputs but the data has 2 classes" in capsys.readouterr().err
    assert main(["curve", "--out", str(tmp_path / "x"), "--normalize", "bogus", "--quiet"]) == 2
    assert "normalize must be" in capsys.readouterr().err


def test_prune_curve_reads_unaugmented_training_images(tmp_path, monkeypatch):
    from dyngraph.cli.commands import prune as prune_cmd
    make_tree(tmp_path / "d", "train", ["a", "b"], n=8)
    make_tree(tmp_path / "d", "val", ["a", "b"], n=8, seed=4)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2)), tmp_path / "n.pt")
    seen = {}

    def fake_study(model, train, test, out, curve_loader=None, **kw):
        seen["train"] = [type(t).__name__ for t in train.dataset.transform.transforms]
        seen["curve"] = [type(t).__name__ for t in curve_loader.dataset.transform.transforms]
        raise ValueError("stop here")
    monkeypatch.setattr(prune_cmd, "prune_study", fake_study, raising=False)
    import dyngraph.prune as prune_pkg
    monkeypatch.setattr(prune_pkg, "prune_study", fake_study)
    with pytest.warns(UserWarning):
        assert main(["prune", "--data", str(tmp_path / "d"), "--image-size", "8", "--model",
                     str(tmp_path / "n.pt"), "--trust-pickle", "--out", str(tmp_path / "o"),
                     "--quiet"]) == 2
    assert "RandomHorizontalFlip" in seen["train"] and "RandomHorizontalFlip" not in seen["curve"]


def test_cli_explicit_train_and_eval_folders(tmp_path, capsys):
    make_tree(tmp_path / "d", "train", ["a", "b"], n=8)
    make_tree(tmp_path / "d", "holdout", ["a", "b"], n=8, seed=4)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    (tmp_path / "net.py").write_text("import torch\n\ndef Net():\n    return torch.nn.Sequential("
                                     "torch.nn.Flatten(), torch.nn.Linear(192, 2))\n")
    assert main(["curve", "--train-data", str(tmp_path / "d" / "train"), "--eval-data",
                 str(tmp_path / "d" / "holdout"), "--image-size", "8", "--model-def",
                 f"{tmp_path}/net.py:Net", "--weights", str(tmp_path / "w.pt"), "--per-class",
                 "4", "--repeats", "1", "--null", "0", "--quiet", "--out",
                 str(tmp_path / "run")]) == 0
    data = json.loads((tmp_path / "run" / "curve.json").read_text())["meta"]["data"]
    assert data["eval"].endswith("d/holdout") and data["train"].endswith("d/train")
