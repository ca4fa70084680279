"""Integrity of what dyngraph writes: every result, checkpoint, cache, saved feature folder and
spill file carries a checksum that is checked on load, so a flipped byte is a named error and
never a silently different Q, weights or report; spill folders are removed by their owner or,
after a killed run, by clean_spill, and nothing without dyngraph's marker is ever deleted; the
prune report says when a baseline removed the very layers of the modularity choice."""
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dyngraph as dg
from dyngraph._io import CorruptFileError, json_checksum, sha256_file
from dyngraph.capture._features import (
    SPILL_MARKER,
    clean_spill,
    make_spill_dir,
    read_spill_marker,
    remove_spill_dir,
)
from dyngraph.prune._finetune import read_checkpoint
from dyngraph.prune._study import format_table, summarize


def flipped(data: bytes, pos: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 0x01
    return bytes(out)


def same(a, b) -> bool:
    """Deep equality of loaded values (tensors bitwise, NaN equal to NaN)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and \
            bool(((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b).all())
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


def every_flip(path, load, expected, positions=None):
    """Flips each byte (or those at ``positions``) of ``path`` in turn: ``load()`` must raise a
    ValueError or give exactly ``expected``. Returns how many flips raised CorruptFileError."""
    data = path.read_bytes()
    corrupt = 0
    with open(path, "r+b") as fh:  # patched in place: rewriting the file each time is slow
        for pos in (range(len(data)) if positions is None else positions):
            fh.seek(pos)
            fh.write(bytes([data[pos] ^ 0x01]))
            fh.flush()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    got = load()
            except CorruptFileError as exc:
                assert str(path.name) in str(exc)
                corrupt += 1
            except ValueError:
                pass
            else:
                assert same(got, expected), f"flipping byte {pos} of {path.name} changed it"
            fh.seek(pos)
            fh.write(data[pos:pos + 1])
            fh.flush()
    assert path.read_bytes() == data
    return corrupt


# ------------------------------------------------------------------------------ results (JSON)
def _profile():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 2, generator=g, dtype=torch.float64)
    s[0, 0, 1] = math.nan
    s[1, 2, 0] = -math.inf
    return dg.DepthProfile(["stem", "b1", "b2"], ["q", "id"], s, {"seed": 0, "k": 3})


def test_result_json_carries_a_checksum_of_its_canonical_contents(tmp_path):
    p = _profile()
    text = p.to_json(tmp_path / "p.json")
    assert (tmp_path / "p.json").read_text() == text + "\n"
    d = json.loads(text)
    payload = {k: v for k, v in d.items() if k != "checksum"}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert d["checksum"] == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert json_checksum(d) == d["checksum"] and list(d)[-1] == "checksum"
    # whitespace and key order do not matter; a value does
    (tmp_path / "q.json").write_text(json.dumps(dict(reversed(list(d.items())))))
    assert dg.DepthProfile.from_json(tmp_path / "q.json") == p
    d["meta"]["k"] = 4
    (tmp_path / "r.json").write_text(json.dumps(d))
    with pytest.raises(CorruptFileError, match=r"r\.json' is corrupt: its contents do not match "
                                               r"their checksum; delete it and rerun"):
        dg.DepthProfile.from_json(tmp_path / "r.json")


@pytest.mark.parametrize("kind", ["profile", "matrix"])
def test_no_flipped_byte_of_a_result_file_is_used_silently(tmp_path, kind):
    if kind == "profile":
        res, cls = _profile(), dg.DepthProfile
    else:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(30, 4, generator=g)
        res, cls = dg.layer_matrix({"a": x, "b": 2 * x + 0.1}, measures=["cka"]), dg.LayerMatrix
    path = tmp_path / "r.json"
    res.to_json(path)
    corrupt = every_flip(path, lambda: cls.from_json(path), res)
    assert corrupt > len(path.read_bytes()) // 4   # the digits, names and keys


def test_a_result_file_without_checksum_is_read_with_a_warning(tmp_path):
    p = _profile()
    d = json.loads(p.to_json())
    del d["checksum"]
    (tmp_path / "old.json").write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="has no checksum"):
        assert dg.DepthProfile.from_json(tmp_path / "old.json") == p


# ------------------------------------------------------------------------------ depth_profile
def test_no_flipped_byte_of_a_depth_profile_checkpoint_changes_the_profile(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    f = {"a": torch.randn(40, 5, generator=g), "b": torch.randn(40, 5, generator=g) + y[:, None]}
    kw = dict(y=y, per_class=10, repeats=2, progress=False)
    whole = dg.depth_profile(f, "modularity", **kw)
    ck = tmp_path / "ck.json"
    assert dg.depth_profile(f, "modularity", checkpoint=ck, **kw) == whole
    assert "checksum" in json.loads(ck.read_text())
    corrupt = every_flip(ck, lambda: dg.depth_profile(f, "modularity", checkpoint=ck, **kw),
                         whole)
    assert corrupt > 0


# ------------------------------------------------------------------------------ fine-tuning
def _train_setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), loader


def test_a_flipped_byte_of_a_training_checkpoint_is_never_resumed(tmp_path):
    model, loader = _train_setup()
    ck = tmp_path / "ft.pt"
    dg.prune.finetune(model, loader, epochs=2, lr=0.1, checkpoint=ck, progress=False)
    state = read_checkpoint(ck)
    assert state["environment"]["threads"] == torch.get_num_threads()
    assert state["environment"]["torch"] == torch.__version__
    data = ck.read_bytes()
    # the bytes of the first weight matrix inside the file
    w = model[0].weight.detach().contiguous().numpy().tobytes()
    at = data.index(w)
    bad = flipped(data, at + 5)
    ck.write_bytes(bad)
    loaded = torch.load(ck, weights_only=True)  # torch alone reads the changed weights silently
    assert not torch.equal(loaded["model"]["0.weight"], model[0].weight)
    with pytest.raises(CorruptFileError, match=r"ft\.pt' is corrupt: its tensors or values do "
                                               r"not match their checksum; delete it \(or pass "
                                               r"resume=False\)"):
        dg.prune.finetune(_train_setup()[0], loader, epochs=3, lr=0.1, checkpoint=ck,
                          progress=False)
    ck.write_bytes(data)
    step = max(1, len(data) // 300)
    positions = sorted(set(range(0, len(data), step)) | set(range(at, at + len(w))))
    assert every_flip(ck, lambda: read_checkpoint(ck), state, positions) > len(w) // 2
    ck.write_bytes(data[: len(data) // 2])  # a truncated file
    with pytest.raises(CorruptFileError, match="cannot be read .* it is corrupt or not a dyngraph "
                                               "training checkpoint"):
        read_checkpoint(ck)


def test_a_checkpoint_of_another_thread_count_warns(tmp_path):
    model, loader = _train_setup()
    ck = tmp_path / "ft.pt"
    old = torch.get_num_threads()
    def stop(epoch, hist):
        raise KeyboardInterrupt
    try:
        torch.set_num_threads(2)
        with pytest.raises(KeyboardInterrupt):
            dg.prune.finetune(model, loader, epochs=2, lr=0.1, checkpoint=ck, progress=False,
                              on_epoch_end=stop)
        torch.set_num_threads(1)
        with pytest.warns(UserWarning, match="written with 2 threads and is resumed with 1"):
            dg.prune.finetune(_train_setup()[0], loader, epochs=2, lr=0.1, checkpoint=ck,
                              progress=False)
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------ cached models
def test_a_corrupt_cached_model_is_set_aside_and_trained_again(tmp_path):
    def train():  # the same batches every time
        return dg.zoo.example_loaders("digits")[0]

    def tiny():
        torch.manual_seed(0)
        return dg.zoo.DigitsMLP(depth=1, width=8)
    path = tmp_path / "mlp.pt"
    first = tiny()
    dg.zoo.train_cached(first, train(), path, 1, progress=False, info={"arch": "mlp"})
    good = path.read_bytes()
    w = first.net[1].weight.detach().contiguous().numpy().tobytes()
    path.write_bytes(flipped(good, good.index(w) + 3))
    second = tiny()
    with pytest.warns(UserWarning, match=r"mlp\.pt' is corrupt \(its weights do not match their "
                                         r"checksum\): it was moved to .*mlp\.pt\.corrupt'"):
        info = dg.zoo.train_cached(second, train(), path, 1, progress=False, info={"arch": "mlp"})
    assert "reused_checkpoint" not in info           # trained again, to the same weights
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "mlp.pt.corrupt").read_bytes() == flipped(good, good.index(w) + 3)
    path.write_bytes(good[:100])                     # unreadable: set aside too, never deleted
    with pytest.warns(UserWarning, match=r"cannot be read .* moved to .*mlp\.pt\.corrupt-1'"):
        dg.zoo.train_cached(tiny(), train(), path, 1, progress=False)
    assert (tmp_path / "mlp.pt.corrupt-1").read_bytes() == good[:100]
    third = tiny()
    assert "reused_checkpoint" in dg.zoo.train_cached(third, train(), path, 1, progress=False)
    assert torch.equal(third.net[1].weight, first.net[1].weight)


# ------------------------------------------------------------------------------ saved features
def _features(n=12):
    g = torch.Generator().manual_seed(0)
    return dg.LayerFeatures({"a": torch.randn(n, 3, generator=g),
                             "b": torch.randn(n, 2, generator=g)},
                            y=torch.arange(n) % 3, indices=torch.arange(n) + 100,
                            meta={"seed": 0})


def _loaded_equal(path, ref, mmap=True):
    back = dg.LayerFeatures.load(path, mmap=mmap)
    return {"names": back.names, "y": back.y, "indices": back.indices, "meta": back.meta,
            **{n: back[n] for n in back.names}}


def test_saved_features_are_checked_file_by_file(tmp_path):
    f = _features()
    out = f.save(tmp_path / "feats")
    index = json.loads((out / "index.json").read_text())
    for fname in ("layer_000.npy", "layer_001.npy", "labels.pt"):
        assert index["checksums"][fname] == hashlib.sha256((out / fname).read_bytes()).hexdigest()
    ref = {"names": f.names, "y": f.y, "indices": f.indices, "meta": f.meta,
           **{n: f[n] for n in f.names}}
    assert same(_loaded_equal(out, ref), ref)
    # a flipped value in a layer file: named when the layer is read (mmap) or at load
    npy = out / "layer_001.npy"
    data = npy.read_bytes()
    npy.write_bytes(flipped(data, len(data) - 2))
    lazy = dg.LayerFeatures.load(out)
    with pytest.raises(CorruptFileError, match=r"layer_001\.npy' is corrupt: its bytes do not "
                                               r"match the checksum recorded when it was "
                                               r"written; delete it and extract \(or save\) the "
                                               r"features again"):
        lazy["b"]
    with pytest.raises(CorruptFileError, match=r"layer_001\.npy"):
        dg.LayerFeatures.load(out).verify()
    with pytest.raises(CorruptFileError, match=r"layer_001\.npy"):
        dg.LayerFeatures.load(out, mmap=False)
    assert torch.equal(lazy["a"], f["a"])            # the intact layer is still read
    npy.write_bytes(data)
    # every byte of the index, the labels and a layer file
    assert every_flip(out / "index.json", lambda: _loaded_equal(out, ref), ref) > 0
    assert every_flip(out / "labels.pt", lambda: _loaded_equal(out, ref), ref,
                      range(0, len((out / "labels.pt").read_bytes()), 3)) > 0
    assert every_flip(npy, lambda: _loaded_equal(out, ref), ref) > 0
    assert every_flip(npy, lambda: _loaded_equal(out, ref, mmap=False), ref) > 0


def test_a_features_folder_without_checksums_is_read_with_a_warning(tmp_path):
    f = _features()
    out = f.save(tmp_path / "feats")
    index = json.loads((out / "index.json").read_text())
    del index["checksums"], index["checksum"]
    (out / "index.json").write_text(json.dumps(index))
    with pytest.warns(UserWarning, match="saved without checksums"):
        back = dg.LayerFeatures.load(out)
    assert torch.equal(back["a"], f["a"])


# ------------------------------------------------------------------------------ spill files
def test_spilled_layers_are_checked_against_the_bytes_written(tmp_path):
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    sp = dg.capture.SpilledArray(tmp_path / "l.bin", 4)
    sp.append(x[:6])
    sp.append(x[6:])
    sp.close()
    assert sp.sha256 == hashlib.sha256(x.numpy().tobytes()).hexdigest()
    assert torch.equal(sp.load(), x)
    data = (tmp_path / "l.bin").read_bytes()
    (tmp_path / "l.bin").write_bytes(flipped(data, 17))
    for read in (sp.load, sp.memmap, lambda: sp.read_rows(0, 2)):
        sp._verified = False       # as in another process reading the file again
        with pytest.raises(CorruptFileError, match=r"l\.bin' is corrupt: its bytes do not "
                                                   r"match the checksum recorded when it was "
                                                   r"written"):
            read()
    (tmp_path / "l.bin").write_bytes(data[:-4])
    with pytest.raises(CorruptFileError, match="holds 156 bytes where 10 rows of 4 float32 take "
                                               "160"):
        sp.load()
    (tmp_path / "l.bin").write_bytes(data)
    sp.append(x[:1])                                   # appending continues the running hash
    sp.close()
    assert torch.equal(sp.load(), torch.cat([x, x[:1]]))
    # a new spilled array never appends to someone's (or a killed run's) file
    with pytest.raises(ValueError, match="holds 176 bytes but this spilled array has 0 rows"):
        dg.capture.SpilledArray(tmp_path / "l.bin", 4).append(x)


# ------------------------------------------------------------------------------ spill folders
def _spilled_features(folder, n=8):
    g = torch.Generator().manual_seed(0)
    arrays = {}
    for i, name in enumerate(["a", "b"]):
        sp = dg.capture.SpilledArray(folder / f"layer_{i:03d}.bin", 3)
        sp.append(torch.randn(n, 3, generator=g))
        arrays[name] = sp
    return dg.LayerFeatures(arrays, torch.arange(n) % 2, meta={"spill_dir": str(folder)})


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_close_removes_only_the_spill_folder_dyngraph_made(tmp_path):
    folder = make_spill_dir(tmp_path)
    marker = read_spill_marker(folder)
    assert marker["pid"] == os.getpid() and marker["host"] == socket.gethostname()
    with _spilled_features(folder) as f:
        view = f.select(["b"])
        q = f["a"].sum()
    assert not folder.exists() and list(tmp_path.iterdir()) == []
    assert torch.isfinite(q)
    with pytest.raises(ValueError, match="removed by LayerFeatures.close"):
        view["b"]
    # after an error inside the with block, too
    folder = make_spill_dir(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with _spilled_features(folder):
            raise RuntimeError("boom")
    assert not folder.exists()
    # a folder without the marker, one holding a file of someone else, a saved folder: kept
    plain = tmp_path / "dyngraph-features-mine"
    plain.mkdir()
    (plain / "layer_000.bin").write_bytes(b"\0" * 24)
    f = dg.LayerFeatures({"a": torch.zeros(2, 3)}, torch.tensor([0, 1]),
                         meta={"spill_dir": str(plain)})
    f.close()
    assert (plain / "layer_000.bin").exists()
    folder = make_spill_dir(tmp_path)
    f = _spilled_features(folder)
    (folder / "results.csv").write_text("precious")
    f.close()
    assert (folder / "results.csv").exists() and f["a"].shape == (8, 3)
    saved = _features().save(tmp_path / "saved")
    g = dg.LayerFeatures.load(saved)
    g.close()
    assert torch.equal(g["a"], _features()["a"]) and (saved / "index.json").exists()
    assert remove_spill_dir(saved) is False and remove_spill_dir(plain) is False


def test_extraction_spill_folder_is_marked_and_closed(tmp_path):
    ds = TensorDataset(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)),
                       torch.arange(20) % 2)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    mem = dg.extract_features(m, DataLoader(ds, batch_size=8), progress=False)
    with dg.extract_features(m, DataLoader(ds, batch_size=8), spill_dir=str(tmp_path),
                             progress=False) as f:
        folder = f.stored(f.names[0]).path.parent
        assert read_spill_marker(folder)["pid"] == os.getpid()
        assert clean_spill(tmp_path) == []             # its owner (this process) is alive
        assert all(torch.equal(f[n], mem[n]) for n in mem)
    assert list(tmp_path.iterdir()) == []


def test_clean_spill_removes_stale_folders_of_dead_runs_only(tmp_path):
    def marked(name, **changes):
        folder = make_spill_dir(tmp_path)
        (folder / "layer_000.bin").write_bytes(b"\0" * 12)
        marker = json.loads((folder / SPILL_MARKER).read_text())
        marker.update(changes)
        marker.pop("checksum")
        dg._io.atomic_write_json(folder / SPILL_MARKER, marker)
        return folder.rename(tmp_path / f"dyngraph-features-{name}")
    dead = _dead_pid()
    stale = marked("stale", pid=dead)
    live = marked("live")
    elsewhere = marked("elsewhere", pid=dead, host=socket.gethostname() + "-other")
    reused = marked("reused", start="1")              # this pid, but started at another time
    foreign = marked("foreign", pid=dead)
    (foreign / "thesis.tex").write_text("not ours")
    unmarked = tmp_path / "dyngraph-features-unmarked"
    unmarked.mkdir()
    (unmarked / "layer_000.bin").write_bytes(b"\0" * 12)
    other_name = marked("x", pid=dead).rename(tmp_path / "my-features")
    bad_marker = marked("bad", pid=dead)
    (bad_marker / SPILL_MARKER).write_text((bad_marker / SPILL_MARKER).read_text()
                                           .replace(str(dead), str(dead + 1)))
    removed = clean_spill(tmp_path)
    if reused.exists():  # /proc tells this process's start time: a pid reused is dead
        assert removed == [stale]
    else:
        assert sorted(removed) == sorted([stale, reused])
    assert not stale.exists()
    for kept in (live, elsewhere, foreign, unmarked, other_name, bad_marker):
        assert kept.exists()
    with pytest.raises(ValueError, match="spill_dir must be an existing folder"):
        clean_spill(tmp_path / "nope")


# ------------------------------------------------------------------------------ prune study
def _rows(removed_random, removed_least=None):
    rows = {"modularity": {"removed": ["b2", "b3"], "acc_pruned": 0.90, "acc_finetuned": 0.95}}
    for i, (rem, acc) in enumerate(removed_random):
        rows[f"random_seed{i}"] = {"removed": rem, "acc_pruned": acc - 0.05, "acc_finetuned": acc}
    if removed_least is not None:
        rows["least_redundant"] = {"removed": removed_least, "acc_pruned": 0.9,
                                   "acc_finetuned": 0.95}
    return {"baseline": {"acc": 0.97, "test_samples": 1000}, "rows": rows}


def test_summary_excludes_random_draws_that_removed_the_same_layers():
    rep = _rows([(["b3", "b2"], 0.95), (["b1", "b2"], 0.93), (["b2", "b3"], 0.95),
                 (["b1", "b3"], 0.97)], removed_least=["b3", "b2"])
    s = summarize(rep)
    assert s["same_layers_as_modularity"] == {"random": ["random_seed0", "random_seed2"],
                                              "least_redundant": ["least_redundant"]}
    cmp_ = s["random_compared"]
    assert cmp_["excluded"] == ["random_seed0", "random_seed2"] and cmp_["finetuned"]["n"] == 2
    assert cmp_["note"] == ("random baseline removed the same layers in 2 of 4 draws; compared "
                            "with the other 2")
    assert cmp_["finetuned"]["mean"] == pytest.approx(0.95)           # (0.93 + 0.97) / 2
    assert s["beats_random"] is False                                  # 0.95 > 0.95 is false
    assert s["random_finetuned"]["n"] == 4                             # the table's row: all
    assert s["beats_least_redundant"] is None and s["claim_holds"] is None
    assert s["beats_least_redundant_reason"] == "least_redundant removed the same layers as " \
                                                "modularity"
    assert "least_redundant" not in s["modularity_minus"]
    table = format_table({**rep, "summary": s, "baseline": {**rep["baseline"], "params": 10,
                                                            "flops": 10},
                          "rows": {k: {**r, "params": 5, "flops": 5}
                                   for k, r in rep["rows"].items()}})
    assert "Note: The random baseline removed the same layers as modularity in 2 of 4 draws " \
           "(random_seed0, random_seed2): modularity is compared with the other 2." in table
    assert "Note: least_redundant removed the same layers as modularity: not compared." in table
    # no draw identical: nothing changes
    s = summarize(_rows([(["b1", "b2"], 0.93), (["b1", "b3"], 0.91)]))
    assert s["beats_random"] is True and "same_layers_as_modularity" not in s
    assert s["random_finetuned"]["mean"] == pytest.approx(0.92)


def test_prune_study_with_no_choice_left_says_so_and_checks_its_files(tmp_path):
    train, test = dg.zoo.example_loaders("digits", batch_size=256)
    torch.manual_seed(0)
    net = dg.zoo.DigitsMLP(depth=4, width=16)      # three removable layers, three removed
    kw = dict(per_class=10, pool_per_class=10, repeats=1, n_remove=3,
              methods=["modularity", "random"], random_seeds=[0, 1], control=False,
              finetune_epochs=1, latency=True, latency_batch=8, curves_after=False,
              progress=False, log=None)
    out = tmp_path / "study"
    r = dg.prune.prune_study(net, train, test, out, **kw)
    assert {k: len(v["removed"]) for k, v in r["rows"].items()} == \
        {"modularity": 3, "random_seed0": 3, "random_seed1": 3}
    s = r["summary"]
    assert s["beats_random"] is None and s["beats_random_before_finetune"] is None
    assert s["beats_random_reason"] == "random baseline removed the same layers in 2 of 2 draws"
    assert "no random comparison is possible (beats_random: none)" in r["table"]
    assert r["environment"]["threads"] == torch.get_num_threads()
    assert r.profile.meta["environment"]["threads"] == torch.get_num_threads()
    for name, row in r["rows"].items():
        assert row["threads"] == torch.get_num_threads()
        assert row["weights_sha256"] == sha256_file(out / "models" / f"{name}.pt")
    saved = json.loads((out / "prune_report.json").read_text())
    assert saved["checksum"] == json_checksum(saved)
    # a flipped byte of a saved pruned model is named when the study reads it again
    model_file = out / "models" / "random_seed1.pt"
    good = model_file.read_bytes()
    model_file.write_bytes(flipped(good, len(good) // 2))
    with pytest.raises(CorruptFileError, match=r"random_seed1\.pt' is corrupt: its bytes do not "
                                               r"match the checksum recorded for it"):
        dg.prune.prune_study(net, train, test, out, **kw)
    model_file.write_bytes(good)
    # so is a changed value of the report
    report = out / "prune_report.json"
    text = report.read_text()
    report.write_text(text.replace('"n_removed": 3', '"n_removed": 2', 1))
    for read in (lambda: dg.prune.StudyReport.from_json(report),
                 lambda: dg.prune.prune_study(net, train, test, out, **kw)):
        with pytest.raises(CorruptFileError, match=r"prune_report\.json' is corrupt: its "
                                                   r"contents do not match their checksum; "
                                                   r"delete it and rerun the study"):
            read()
    report.write_text(text)
    assert dg.prune.StudyReport.from_json(report) == saved


def test_reports_record_the_environment():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        p = dg.depth_profile({"a": torch.randn(20, 3)}, "modularity", y=torch.arange(20) % 2,
                             progress=False)
    finally:
        torch.set_num_threads(old)
    env = p.meta["environment"]
    assert env == {"threads": 1, "torch": torch.__version__,
                   "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                   "cudnn_deterministic": torch.backends.cudnn.deterministic}


def test_corrupt_file_error_is_a_value_error_naming_the_file(tmp_path):
    err = CorruptFileError(tmp_path / "x.json", "a byte changed")
    assert isinstance(err, ValueError) and err.path == tmp_path / "x.json"
    assert str(err) == f"{str(tmp_path / 'x.json')!r} is corrupt: a byte changed; delete it and " \
                       f"rerun to rebuild it"
