"""SIGKILL in the middle of a run, then the rerun: a checkpointed depth_profile and a
checkpointed fine-tuning resume where they stopped and end bitwise where an uninterrupted run
ends; a spilled extraction reruns to the same features, and the folder the killed run left is
removed by clean_spill (and only it). The child process kills itself at a fixed step."""
import importlib
import json
import os

import pytest
import torch

import dyngraph as dg
from dyngraph.capture._features import clean_spill, read_spill_marker

from . import _scenarios as S
from ._children import killed, spawn

runner = importlib.import_module("dyngraph.profiles._runner")


# (scenario, the step at which the child kills itself)
KILLS = {"profile": 5,     # while renaming the 5th checkpoint into place
         "finetune": 2,    # right after epoch 2's checkpoint
         "extract": 3}     # in the 4th batch of 8


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """The killed runs, started together."""
    yield from spawn(tmp_path_factory, "tests.faults._scenarios", KILLS)


def test_sigkill_while_writing_a_profile_checkpoint_then_resume_is_bitwise(children,
                                                                          monkeypatch):
    tmp_path = killed(children, "profile")
    ck = tmp_path / "profile.ckpt.json"
    saved = json.loads(ck.read_text())          # the 4th, whole: the write was atomic
    assert sum(map(sum, saved["done"])) == 4
    assert len(list(tmp_path.glob(".profile.ckpt.json.*.tmp"))) == 1  # the unrenamed write
    calls = []
    real = runner._call
    monkeypatch.setattr(runner, "_call", lambda m, *a: calls.append(m.name) or real(m, *a))
    resumed = S.run_profile(tmp_path)
    assert len(calls) == 2 * (12 - 4)           # two measures on the 8 layers left of 3 x 4
    monkeypatch.setattr(runner, "_call", real)
    feats, kw = S.profile_inputs()
    whole = dg.depth_profile(feats, ["modularity", "knn_purity"], **kw)
    assert resumed == whole and torch.equal(resumed.samples, whole.samples)


def test_sigkill_during_fine_tuning_then_resume_gives_the_same_weights(children):
    tmp_path = killed(children, "finetune")
    model, hist = S.run_finetune(tmp_path)
    assert hist["resumed_from"] == 2 and hist["epoch"] == [1, 2, 3, 4]
    ref, loader, kw = S.finetune_inputs()
    ref_hist = dg.prune.finetune(ref, loader, **kw)
    assert hist["loss"] == ref_hist["loss"]
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name


def test_sigkill_during_spilled_extraction_then_rerun_and_clean(children):
    tmp_path = killed(children, "extract")
    stale = list(tmp_path.glob("dyngraph-features-*"))
    assert len(stale) == 1
    marker = read_spill_marker(stale[0])
    assert marker is not None and marker["pid"] != os.getpid()
    # a part of the first layer (what left the write buffer before the kill)
    assert (stale[0] / "layer_000.bin").stat().st_size < 64 * 12 * 4
    model, loader = S.extract_inputs()
    mem = dg.extract_features(model, loader, progress=False)
    with S.run_extract(tmp_path) as again:     # the rerun is not bothered by the stale folder
        assert again.names == mem.names
        for name in mem.names:
            assert torch.equal(again[name], mem[name])
        live = again.stored(mem.names[0]).path.parent
        assert clean_spill(tmp_path) == stale   # the dead run's folder, not this live one
        assert live.exists() and not stale[0].exists()
    assert list(tmp_path.iterdir()) == []
