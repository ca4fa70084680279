"""Resumable extraction (``extract_features(checkpoint=...)``) in one process: an interrupted
run resumes bitwise, a finished one is returned without running the model, and every way a
checkpoint folder can be wrong (other settings, damaged files, names that leave the folder, a
folder dyngraph did not make, a shuffled loader) is a clear error. The killed-process runs are in
``tests/faults/test_extract_resume.py``."""
import base64
import json
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import dyngraph as dg
from dyngraph._io import atomic_write_json, read_json_file
from dyngraph.errors import CorruptFileError


class Stop(Exception):
    """Raised by a forward hook to interrupt an extraction at a fixed batch."""


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                         nn.Linear(8, 3))


def dataset(n: int = 72) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.arange(n) % 3)


class Counted(Dataset):
    """A dataset without exposed labels (streaming) that counts the samples it loads."""

    def __init__(self, n: int = 72, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self._x, self._c = torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)
        self.loaded = 0

    def __len__(self):
        return len(self._c)

    def __getitem__(self, i):
        self.loaded += 1
        return self._x[i], self._c[i]


def counting(m: nn.Module, stop_at: int = 0) -> list:
    """Counts ``m``'s forward passes; raises :class:`Stop` in the ``stop_at``-th."""
    calls: list = []

    def hook(module, args):
        calls.append(1)
        if stop_at and len(calls) == stop_at:
            raise Stop
    m.register_forward_pre_hook(hook)
    return calls


def bitwise(a: dg.LayerFeatures, b: dg.LayerFeatures) -> None:
    assert a.names == b.names
    for name in a.names:
        assert a[name].numpy().tobytes() == b[name].numpy().tobytes(), name
    for attr in ("y", "indices", "positions"):
        ta, tb = getattr(a, attr), getattr(b, attr)
        assert (ta is None) == (tb is None), attr
        if ta is not None:
            assert torch.equal(ta, tb), attr


def interrupted(tmp_path, loader, stop_at: int, **kw):
    """A checkpointed extraction stopped in forward pass ``stop_at`` (every 2 batches a
    record); returns the checkpoint folder."""
    ck = tmp_path / "ck"
    with pytest.raises(Stop):
        dg.extract_features(_stopping(stop_at), loader, checkpoint=ck, checkpoint_every=2,
                            progress=False, **kw)
    return ck


def _stopping(stop_at: int) -> nn.Module:
    m = model()
    counting(m, stop_at)
    return m


def test_checkpointed_run_matches_a_forward_pass_and_a_finished_one_runs_nothing(tmp_path):
    ds = dataset()
    loader = DataLoader(ds, batch_size=10)
    m = model()
    ck = tmp_path / "ck"
    f = dg.extract_features(m, loader, per_class=12, seed=4, checkpoint=ck, progress=False)
    plain = dg.extract_features(m, loader, per_class=12, seed=4, progress=False)
    bitwise(f, plain)
    # independent of extraction: the model's own layers on the chosen inputs
    x = ds.tensors[0][f.indices]
    with torch.no_grad():
        h0 = m[0](x)
        h2 = m[2](m[1](h0))
    torch.testing.assert_close(f["0"], h0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(f["2"], h2, rtol=1e-6, atol=1e-6)
    assert torch.equal(f.y, ds.tensors[1][f.indices])
    assert f.on_disk and all(f.stored(n).path.parent == ck for n in f.names)
    assert f.meta["checkpoint"] == str(ck) and f.meta["spill_dir"] is None
    calls = counting(m)
    again = dg.extract_features(m, loader, per_class=12, seed=4, checkpoint=ck, progress=False)
    assert calls == [] and again.meta == f.meta
    bitwise(again, f)
    with again:  # closing keeps the folder: it is the result
        pass
    assert sorted(p.name for p in ck.iterdir()) == [
        ".dyngraph-extract.json", "layer_000.bin", "layer_001.bin", "layer_002.bin",
        "progress.json", "result.pt"]
    bitwise(dg.extract_features(m, loader, per_class=12, seed=4, checkpoint=ck,
                                progress=False), plain)


def test_an_interrupted_run_keeps_its_folder_and_resumes_bitwise(tmp_path):
    loader = DataLoader(dataset(), batch_size=8)                 # 9 batches
    ck = interrupted(tmp_path, loader, 6)
    rec = json.loads((ck / "progress.json").read_text())
    assert rec["state"] == "running" and rec["batches"] == 4
    m = model()
    calls = counting(m)
    resumed = dg.extract_features(m, loader, checkpoint=ck, checkpoint_every=2, progress=False)
    assert len(calls) == 9 - 4
    bitwise(resumed, dg.extract_features(model(), loader, progress=False))
    assert torch.equal(resumed.indices, torch.arange(72))


def test_skipped_batches_of_a_plain_loader_are_not_loaded_and_streaming_resumes(tmp_path):
    ds = Counted()
    loader = DataLoader(ds, batch_size=6)
    kw = dict(per_class=9, num_classes=3, seed=2)
    ck = interrupted(tmp_path, loader, 5, **kw)
    rec = json.loads((ck / "progress.json").read_text())
    done = rec["batches"]
    assert done == 4 and rec["generator"]
    ds.loaded = 0
    resumed = dg.extract_features(model(), loader, checkpoint=ck, checkpoint_every=2,
                                  progress=False, **kw)
    n_resumed, ds.loaded = ds.loaded, 0
    whole = dg.extract_features(model(), loader, progress=False, **kw)
    n_whole = ds.loaded
    bitwise(resumed, whole)
    assert resumed.y.bincount().tolist() == [9, 9, 9]
    # the resumed run loaded only the samples after the batches done (a Subset of the rest)
    assert n_resumed == n_whole - done * 6 and n_whole % 6 == 0


def test_the_generator_state_is_what_makes_a_streamed_resume_right(tmp_path):
    loader = DataLoader(Counted(seed=3), batch_size=6)
    kw = dict(per_class=9, num_classes=3, seed=2)
    whole = dg.extract_features(model(), loader, progress=False, **kw)
    ck = interrupted(tmp_path, loader, 5, **kw)
    # the same record with a fresh generator (re-checksummed, so it is read): another sample
    rec = read_json_file(ck / "progress.json")
    fresh = torch.Generator().manual_seed(2).get_state().numpy().tobytes()
    assert base64.b64decode(rec["generator"]) != fresh
    rec["generator"] = base64.b64encode(fresh).decode()
    atomic_write_json(ck / "progress.json", rec)
    wrong = dg.extract_features(model(), loader, checkpoint=ck, progress=False, **kw)
    assert not torch.equal(wrong["0"], whole["0"])


def test_bytes_written_after_the_last_record_are_cut_off(tmp_path):
    loader = DataLoader(dataset(), batch_size=8)
    ck = interrupted(tmp_path, loader, 6)
    for name in ("layer_000.bin", "layer_002.bin", "y.bin"):  # a killed run's unrecorded tail
        with open(ck / name, "ab") as fh:
            fh.write(os.urandom(100))
    with open(ck / "layer_001_tokens.bin", "wb") as fh:  # and a stale file of its own
        fh.write(b"x")
    resumed = dg.extract_features(model(), loader, checkpoint=ck, checkpoint_every=2,
                                  progress=False)
    bitwise(resumed, dg.extract_features(model(), loader, progress=False))
    assert not (ck / "layer_001_tokens.bin").exists()


def test_a_folder_killed_before_its_first_record_starts_over(tmp_path):
    loader = DataLoader(dataset(), batch_size=8)
    ck = interrupted(tmp_path, loader, 2)                    # no record yet
    assert not (ck / "progress.json").exists() and (ck / "layer_000.bin").exists()
    bitwise(dg.extract_features(model(), loader, checkpoint=ck, progress=False),
            dg.extract_features(model(), loader, progress=False))


def test_other_settings_are_named(tmp_path):
    loader = DataLoader(dataset(), batch_size=8)
    ck = tmp_path / "ck"
    dg.extract_features(model(), loader, per_class=10, seed=0, checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(seed: 0 there, 1 now; indices: sha256:"):
        dg.extract_features(model(), loader, per_class=10, seed=1, checkpoint=ck,
                            progress=False)
    with pytest.raises(ValueError, match=r"per_class: 10 there, 11 now; indices"):
        dg.extract_features(model(), loader, per_class=11, checkpoint=ck, progress=False)
    changed = model()
    with torch.no_grad():
        changed[2].bias[0] += 1e-6
    with pytest.raises(ValueError, match=r"\(model: sha256:[0-9a-f]{12}\.\.\. there, sha256:"):
        dg.extract_features(changed, loader, per_class=10, checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match=r"batch_size: 8 there, 16 now"):
        dg.extract_features(model(), DataLoader(dataset(), batch_size=16), per_class=10,
                            checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match=r"layers: .* there, .* now.*; spill_dtype: \"float32\" "
                                         r"there, \"float16\" now"):
        dg.extract_features(model(), loader, ["0"], per_class=10, checkpoint=ck,
                            spill_dtype="float16", progress=False)
    with pytest.raises(ValueError, match="dataset_length: 72 there, 60 now"):
        dg.extract_features(model(), DataLoader(dataset(60), batch_size=8), per_class=10,
                            checkpoint=ck, progress=False)


def _flip(path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_damaged_files_are_corrupt_file_errors_naming_them(tmp_path):
    loader = DataLoader(dataset(), batch_size=8)
    ck = interrupted(tmp_path, loader, 6)

    def run():
        return dg.extract_features(model(), loader, checkpoint=ck, checkpoint_every=2,
                                   progress=False)
    rec = json.loads((ck / "progress.json").read_text())
    recorded = {"layer_001.bin": rec["columns"]["y"]["rows"] * 8 * 4,        # alias '2': 8 wide
                "y.bin": rec["columns"]["y"]["rows"] * 8}                    # int64
    for name in ("layer_001.bin", "y.bin"):
        saved = (ck / name).read_bytes()
        assert len(saved) > recorded[name]   # the interrupted batch's rows, closed on the error
        _flip(ck / name, 9)
        with pytest.raises(CorruptFileError, match=name) as err:
            run()
        assert err.value.path == ck / name
        (ck / name).write_bytes(saved[:recorded[name] - 8])      # shorter than recorded
        with pytest.raises(CorruptFileError, match="fewer than"):
            run()
        (ck / name).write_bytes(saved)
    saved = (ck / "progress.json").read_text()
    (ck / "progress.json").write_text(saved.replace('"batches": 4', '"batches": 3'))
    with pytest.raises(CorruptFileError, match="progress.json") as err:
        run()
    assert err.value.path == ck / "progress.json"
    rec = json.loads(saved)
    del rec["checksum"]
    (ck / "progress.json").write_text(json.dumps(rec))
    with pytest.raises(CorruptFileError, match="no checksum"):
        run()
    (ck / "progress.json").write_text(saved)
    f = run()                                                    # repaired: it resumes
    bitwise(f, dg.extract_features(model(), loader, progress=False))
    # finished: a layer file is checked on its first read, its size and labels at once
    _flip(ck / "layer_002.bin", 5)
    g = run()
    with pytest.raises(CorruptFileError, match="layer_002.bin"):
        g["4"]
    _flip(ck / "layer_002.bin", 5)
    _flip(ck / "result.pt", 40)
    with pytest.raises(CorruptFileError, match="result.pt"):
        run()


def test_names_in_a_record_never_leave_the_folder(tmp_path):
    loader = DataLoader(dataset(), batch_size=8)
    ck = interrupted(tmp_path, loader, 6)
    (tmp_path / "outside.bin").write_bytes(b"keep")
    rec = read_json_file(ck / "progress.json")
    rec["layers"][0][1]["file"] = "../outside.bin"
    atomic_write_json(ck / "progress.json", rec)                # a valid checksum
    with pytest.raises(CorruptFileError, match="'../outside.bin', which is not one extraction"):
        dg.extract_features(model(), loader, checkpoint=ck, checkpoint_every=2, progress=False)
    assert (tmp_path / "outside.bin").read_bytes() == b"keep"


def test_folders_and_loaders_that_cannot_resume_are_refused(tmp_path):
    ds = dataset()
    loader = DataLoader(ds, batch_size=8)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files and no dyngraph checkpoint marker "
                                         r"\(notes.txt\): refusing"):
        dg.extract_features(model(), loader, checkpoint=theirs, progress=False)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="checkpoint must be a folder"):
        dg.extract_features(model(), loader, checkpoint=theirs / "notes.txt", progress=False)
    shuffled = DataLoader(ds, batch_size=8, shuffle=True)
    with pytest.raises(ValueError, match=r"RandomSampler \(shuffled\); use "
                                         r"DataLoader\(\.\.\., shuffle=False\)"):
        dg.extract_features(model(), shuffled, checkpoint=tmp_path / "a", progress=False)
    # a shuffled loader whose sample is drawn up front (labels known) runs in a fixed order
    f = dg.extract_features(model(), shuffled, per_class=5, checkpoint=tmp_path / "b",
                            progress=False)
    bitwise(f, dg.extract_features(model(), loader, per_class=5, progress=False))
    with pytest.raises(ValueError, match="give spill_dir or checkpoint, not both"):
        dg.extract_features(model(), loader, checkpoint=tmp_path / "c", spill_dir=str(tmp_path),
                            progress=False)
    with pytest.raises(ValueError, match="checkpoint_every"):
        dg.extract_features(model(), loader, checkpoint=tmp_path / "c", checkpoint_every=0,
                            progress=False)
    with pytest.raises(ValueError, match="spill dtype"):
        dg.extract_features(model(), loader, checkpoint=tmp_path / "c", spill_dtype="int8",
                            progress=False)
    marker = tmp_path / "b" / ".dyngraph-extract.json"
    marker.write_text("{")
    with pytest.raises(CorruptFileError, match=".dyngraph-extract.json"):
        dg.extract_features(model(), shuffled, per_class=5, checkpoint=tmp_path / "b",
                            progress=False)


class Stream(IterableDataset):
    def __iter__(self):
        g = torch.Generator().manual_seed(5)
        for _ in range(40):
            yield torch.randn(5, generator=g), int(torch.randint(0, 3, (), generator=g))


def test_an_iterable_dataset_resumes_by_reading_past_the_batches_done(tmp_path):
    loader = DataLoader(Stream(), batch_size=4)
    kw = dict(per_class=6, seed=1)
    ck = interrupted(tmp_path, loader, 4, **kw)
    m = model()
    calls = counting(m)
    whole = dg.extract_features(model(), loader, progress=False, **kw)
    resumed = dg.extract_features(m, loader, checkpoint=ck, checkpoint_every=2, progress=False,
                                  **kw)
    bitwise(resumed, whole)
    assert whole.y.bincount().tolist() == [6, 6, 6] and 0 < len(calls) < 10


def test_the_default_timing_writes_a_record_once_one_is_due(tmp_path, monkeypatch):
    import dyngraph.capture._extract as E
    monkeypatch.setattr(E, "CHECKPOINT_SECONDS", 0.0)  # due after every batch
    monkeypatch.setattr(E, "CHECKPOINT_COST_RATIO", 0)
    loader = DataLoader(dataset(), batch_size=8)
    ck = tmp_path / "ck"
    with pytest.raises(Stop):
        dg.extract_features(_stopping(6), loader, checkpoint=ck, progress=False)
    assert json.loads((ck / "progress.json").read_text())["batches"] == 5
    monkeypatch.setattr(E, "CHECKPOINT_SECONDS", 3600.0)  # never due: only the final records
    m = model()
    calls = counting(m)
    bitwise(dg.extract_features(m, loader, checkpoint=ck, progress=False),
            dg.extract_features(model(), loader, progress=False))
    assert len(calls) == 9 - 5
