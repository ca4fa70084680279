"""Names read from files never become paths outside the output folder (issue 14, security): the
entries of a LayerFeatures index, the rows of a saved prune-study report, the selections of a
saved transformer-study report."""
import json

import pytest
import torch

import dyngraph as dg
from dyngraph._io import atomic_write_json, file_in, read_json_file


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "/etc/passwd", "a/b", "..", ".",
                                  "", "a\\b", "a\x00b", 5, None])
def test_file_in_refuses_anything_but_a_plain_name(tmp_path, name):
    with pytest.raises(ValueError, match="not a plain file name"):
        file_in(tmp_path, name, ".pt")


@pytest.mark.parametrize("name", ["random0", "modularity", "block_influence@0.25", "a.b", "-x"])
def test_file_in_keeps_plain_names_inside(tmp_path, name):
    p = file_in(tmp_path, name, ".pt")
    assert p.parent == tmp_path and p.name == f"{name}.pt"


@pytest.mark.parametrize("entry", ["../outside.npy", "/etc/passwd", "sub/a.npy", ".."])
def test_layer_features_index_cannot_name_a_file_outside_its_folder(tmp_path, entry):
    folder = dg.LayerFeatures({"a": torch.randn(6, 3)}, torch.arange(6) % 2).save(tmp_path / "f")
    (tmp_path / "outside.npy").write_bytes((folder / "layer_000.npy").read_bytes())
    index = read_json_file(folder / "index.json")
    index["layers"]["a"] = entry
    index["checksums"][entry] = index["checksums"]["layer_000.npy"]
    atomic_write_json(folder / "index.json", index)  # a consistent checksum: only the name is bad
    with pytest.raises(ValueError, match="only plain file names inside the folder"):
        dg.LayerFeatures.load(folder)


def test_a_prune_report_row_cannot_reach_outside_the_output_folder(tmp_path):
    train, test = dg.zoo.example_loaders("digits", batch_size=256)
    torch.manual_seed(0)
    net = dg.zoo.CifarResNet((2, 2, 2), widths=(4, 8, 8), in_channels=1)
    kw = dict(per_class=5, pool_per_class=5, repeats=1, n_remove=1, methods=["modularity"],
              control=False, finetune_epochs=1, latency=True, latency_batch=2, progress=False,
              log=None)
    out = tmp_path / "study"
    dg.prune.prune_study(net, train, test, out, **kw)
    report = read_json_file(out / "prune_report.json")
    report["rows"]["../../evil"] = dict(report["rows"]["modularity"])
    atomic_write_json(out / "prune_report.json", report)
    victim = tmp_path / "evil.pt"
    victim.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="'../../evil' is not a plain file name"):
        dg.prune.prune_study(net, train, test, out, **kw)
    assert victim.read_bytes() == b"not a model"
    assert json.loads((out / "prune_report.json").read_text())["rows"].keys() == \
        report["rows"].keys()
