"""dg.zoo.train_cached: a finished training run is reused, never repeated."""
import importlib

import pytest
import torch

import dyngraph as dg

M = importlib.import_module("dyngraph.zoo._models")


def _tiny():
    torch.manual_seed(0)
    return dg.zoo.DigitsMLP(depth=1, width=16)


def test_trains_once_then_reuses_the_weights(tmp_path, monkeypatch):
    train, _ = dg.zoo.example_loaders("digits")
    path = tmp_path / "runs" / "mlp_seed0_ep1.pt"  # the folder is created
    first = _tiny()
    before = [p.detach().clone() for p in first.parameters()]
    info = dg.zoo.train_cached(first, train, path, 1, progress=False, info={"arch": "mlp"})
    assert path.exists() and info["arch"] == "mlp" and info["epochs"] == 1
    assert info["final_loss"] > 0 and "reused_checkpoint" not in info
    assert any(not torch.equal(a, b) for a, b in zip(before, first.parameters()))  # it trained

    def no_training(*a, **k):
        raise AssertionError("a cached run must not train again")
    monkeypatch.setattr(M, "train_classifier", no_training)
    second = _tiny()
    again = dg.zoo.train_cached(second, train, path, 1, progress=False)
    assert again["reused_checkpoint"] == str(path) and again["arch"] == "mlp"
    assert again["final_loss"] == info["final_loss"]
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_train_cached_bad_input(tmp_path):
    train, _ = dg.zoo.example_loaders("digits")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        dg.zoo.train_cached("mlp", train, tmp_path / "a.pt")
    with pytest.raises(TypeError, match="path must be a file path"):
        dg.zoo.train_cached(_tiny(), train, 3)
    with pytest.raises(ValueError, match="epochs"):
        dg.zoo.train_cached(_tiny(), train, tmp_path / "a.pt", 0)
    foreign = tmp_path / "plain.pt"
    torch.save(_tiny().state_dict(), foreign)  # a bare state_dict, not a cached run
    with pytest.raises(ValueError, match="not a train_cached file"):
        dg.zoo.train_cached(_tiny(), train, foreign, 1)
