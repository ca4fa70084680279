"""LayerFeatures.save over an earlier save: if the new folder cannot take its place, the earlier
folder is put back unchanged and no temporary folder is left behind."""
import os

import pytest
import torch

import dyngraph as dg


def test_failed_replace_puts_the_earlier_save_back(tmp_path, monkeypatch):
    first = dg.LayerFeatures({"a": torch.ones(4, 2)}, torch.tensor([0, 0, 1, 1]))
    path = first.save(tmp_path / "f")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder moving into place
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    second = dg.LayerFeatures({"a": torch.zeros(4, 2)}, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(OSError, match="disk full"):
        second.save(path)
    monkeypatch.setattr(os, "replace", real)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    assert torch.equal(dg.LayerFeatures.load(path)["a"], torch.ones(4, 2))
