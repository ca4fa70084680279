"""SIGKILL during a resumable extraction (``extract_features(checkpoint=...)``), then the rerun:
it skips the batches the last progress record counts (the model runs only on the others), cuts
off what the killed run wrote after that record, restores the streaming selection's counts and
random generator, and ends with features, labels, indices and positions byte for byte those of
an uninterrupted extraction, spilled or in memory.

Each killed run is a child process (``python -m tests.faults.test_extract_resume <scenario>
<folder> <step>``) that kills itself with SIGKILL at a fixed step: in its n-th forward pass, or
in the final selection of tokens, so the fault lands at the same place every time."""
import json
import os
import signal
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import dyngraph as dg
import dyngraph.capture._extract as E

from ._children import killed, spawn

EVERY = 2  # a progress record every 2 batches


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------ the runs
class Unlabelled(Dataset):
    """Samples whose labels only running the loader tells (no ``.targets``): streaming
    selection, where each batch's choice comes from the seeded generator."""

    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self._x = torch.randn(96, 5, generator=g)
        self._c = torch.randint(0, 3, (96,), generator=g)

    def __len__(self):
        return 96

    def __getitem__(self, i):
        return self._x[i], self._c[i]


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.proj = nn.Linear(16, 16)

    def forward(self, input_ids, attention_mask):
        return self.proj(self.emb(input_ids))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 512), nn.ReLU(), nn.Linear(512, 32), nn.ReLU(),
                         nn.Linear(32, 4))


def inputs(scenario: str):
    """``(model, loader, keyword arguments)`` of a scenario, the same in every process."""
    if scenario == "known":  # labels known up front: the sample is drawn first (a Subset)
        g = torch.Generator().manual_seed(0)
        ds = TensorDataset(torch.randn(120, 5, generator=g), torch.arange(120) % 4)
        return mlp(), DataLoader(ds, batch_size=8), dict(per_class=20, seed=3)
    if scenario == "stream":
        return mlp(), DataLoader(Unlabelled(), batch_size=8), dict(per_class=10, num_classes=3,
                                                                   seed=5)
    # "tokens", "take": every real token a sample, batches padded per batch (a plain list)
    g = torch.Generator().manual_seed(2)
    batches = []
    for b in range(12):
        t = 3 + b % 4
        mask = (torch.arange(t)[None] < torch.randint(1, t + 1, (4, 1), generator=g)).long()
        batches.append({"input_ids": torch.randint(1, 20, (4, t), generator=g) * mask,
                        "attention_mask": mask,
                        "labels": torch.randint(0, 3, (4,), generator=g)})
    torch.manual_seed(0)
    return Encoder(), batches, dict(layers=["emb", "proj"], pool="tokens", per_class=8,
                                    tokens_per_class=6, seed=1, spill_dtype="float16")


def run(scenario: str, folder: Path, kill_at: int = 0, forwards=None):
    """The resumable extraction of ``scenario`` in ``folder``. ``kill_at = n``: dies in the
    n-th forward pass (scenario ``'take'``: while the n-th layer's tokens are selected, after
    the loop). ``forwards``: a list that counts the forward passes."""
    model, loader, kw = inputs(scenario)
    count = [] if forwards is None else forwards

    def hook(module, args):
        count.append(1)
        if kill_at and scenario != "take" and len(count) == kill_at:
            die()
    model.register_forward_pre_hook(hook)
    if scenario == "take" and kill_at:
        real, seen = E._take, []

        def take(*args, **kwargs):
            seen.append(1)
            if len(seen) == kill_at:
                die()
            return real(*args, **kwargs)
        E._take = take  # type: ignore[assignment]
    return dg.extract_features(model, loader, checkpoint=folder / "ck", checkpoint_every=EVERY,
                               progress=False, **kw)


# (scenario, the step at which the child kills itself)
KILLS = {"known": 6,    # in the 6th of 10 batches: the record of batch 4 is the last
         "stream": 4,   # in the 4th forward pass (streaming selection)
         "tokens": 4,   # every token a sample, a list of batches (read past the ones done)
         "take": 2}     # after the loop, while the second layer's tokens are selected


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """The killed runs, started together."""
    yield from spawn(tmp_path_factory, "tests.faults.test_extract_resume", KILLS)


def record(folder: Path) -> dict:
    return json.loads((folder / "ck" / "progress.json").read_text())


def uninterrupted(scenario: str, tmp_path: Path, **kw):
    model, loader, args = inputs(scenario)
    counter = []
    model.register_forward_pre_hook(lambda m, a: counter.append(1))
    return dg.extract_features(model, loader, progress=False, **{**args, **kw}), len(counter)


def same_bytes(a: dg.LayerFeatures, b: dg.LayerFeatures) -> None:
    """Every layer, ``y``, ``indices`` and ``positions`` equal byte for byte (spilled layers:
    the files themselves)."""
    assert a.names == b.names and a.n_samples == b.n_samples
    for name in a.names:
        sa, sb = a.stored(name), b.stored(name)
        if isinstance(sa, dg.capture.SpilledArray) and isinstance(sb, dg.capture.SpilledArray):
            assert sa.dtype == sb.dtype and sa.shape == sb.shape
            assert sa.path.read_bytes() == sb.path.read_bytes(), name
        assert a[name].numpy().tobytes() == b[name].numpy().tobytes(), name
    for attr in ("y", "indices", "positions"):
        ta, tb = getattr(a, attr), getattr(b, attr)
        assert (ta is None) == (tb is None), attr
        if ta is not None:
            assert ta.dtype == tb.dtype and ta.numpy().tobytes() == tb.numpy().tobytes(), attr


def test_sigkill_with_labels_known_resumes_from_the_last_record_bitwise(children, tmp_path):
    folder = killed(children, "known")
    rec = record(folder)
    assert rec["state"] == "running" and rec["batches"] == 4     # the batch-4 record, whole
    rows = rec["columns"]["y"]["rows"]
    assert rows == 32 and all(e["rows"] == rows for _, e in rec["layers"])
    first = folder / "ck" / rec["layers"][0][1]["file"]
    assert first.stat().st_size > rows * 512 * 4   # the killed run wrote past its last record
    forwards: list = []
    resumed = run("known", folder, forwards=forwards)
    whole, n_whole = uninterrupted("known", tmp_path)
    assert n_whole == 10 and len(forwards) == 10 - 4             # only the batches not recorded
    same_bytes(resumed, whole)                                   # as the in-memory run
    with uninterrupted("known", tmp_path, spill_dir=str(tmp_path))[0] as spilled:
        same_bytes(resumed, spilled)                             # and as a spilled one
    assert resumed.stored("0").path.stat().st_size == 80 * 512 * 4  # the tail was cut off
    # finished: the rerun reads the folder and runs nothing
    again: list = []
    same_bytes(run("known", folder, forwards=again), whole)
    assert again == []


def test_sigkill_in_streaming_selection_restores_counts_and_generator(children, tmp_path):
    folder = killed(children, "stream")
    rec = record(folder)
    assert rec["state"] == "running" and rec["batches"] == 2 and rec["generator"]
    assert sum(n for _, n in rec["counts"]) == rec["columns"]["y"]["rows"] == 16
    forwards: list = []
    resumed = run("stream", folder, forwards=forwards)
    whole, n_whole = uninterrupted("stream", tmp_path)
    assert len(forwards) == n_whole - 2
    same_bytes(resumed, whole)
    assert resumed.y.bincount().tolist() == [10, 10, 10] and resumed.indices is None
    with uninterrupted("stream", tmp_path, spill_dir=str(tmp_path))[0] as spilled:
        same_bytes(resumed, spilled)


@pytest.mark.parametrize("scenario", ["tokens", "take"])
def test_sigkill_with_every_token_a_sample_resumes_bitwise(children, tmp_path, scenario):
    folder = killed(children, scenario)
    rec = record(folder)
    forwards: list = []
    resumed = run(scenario, folder, forwards=forwards)
    spilled, n_whole = uninterrupted(scenario, tmp_path, spill_dir=str(tmp_path))
    with spilled:
        same_bytes(resumed, spilled)                             # float16 files, token positions
        assert spilled.meta["n_inputs"] == resumed.meta["n_inputs"] == 24
    if scenario == "tokens":
        done = rec["batches"]
        assert rec["state"] == "running" and done % EVERY == 0 and done >= 2
        model, batches, kw = inputs(scenario)
        before = []  # the forward passes of the batches the record counts
        model.register_forward_pre_hook(lambda m, a: before.append(1))
        with warnings.catch_warnings():  # fewer inputs than per_class asks: a warning
            warnings.simplefilter("ignore", UserWarning)
            dg.extract_features(model, batches[:done], progress=False,
                                **{**kw, "tokens_per_class": None})
        assert len(forwards) == n_whole - len(before) and before
    else:  # killed after the loop: nothing runs again, the tokens are selected anew
        assert rec["state"] == "extracted" and forwards == []
    assert sorted(p.name for p in (folder / "ck").iterdir()) == [
        ".dyngraph-extract.json", "layer_000_tokens.bin", "layer_001_tokens.bin",
        "progress.json", "result.pt"]


if __name__ == "__main__":
    torch.set_num_threads(1)  # as in the test process (tests/conftest.py)
    run(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
    sys.exit(3)  # not killed: the test reports it
