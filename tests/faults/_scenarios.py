"""The runs the fault tests kill: shared by the test (which builds the same inputs) and by the
child process, run as ``python -m tests.faults._scenarios <scenario> <folder> <step>``, which
kills itself with SIGKILL at a fixed step of the run, so the fault lands at the same place every
time (no timing involved)."""
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dyngraph as dg


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------ depth_profile
def profile_inputs():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    feats = {f"l{i}": torch.randn(90, 6, generator=g) + i * torch.eye(6)[y] for i in range(4)}
    return feats, dict(y=y, per_class=20, repeats=3, seed=1, progress=False)


def run_profile(folder: Path, kill_at: int = 0) -> dg.DepthProfile:
    """With ``kill_at = n``: dies while the n-th checkpoint is being written (its temporary file
    is complete, the rename has not happened)."""
    ck = folder / "profile.ckpt.json"
    if kill_at:
        import dyngraph._io as io
        real, count = os.replace, [0]

        def replace(src, dst):
            if Path(dst) == ck:
                count[0] += 1
                if count[0] == kill_at:
                    die()
            real(src, dst)
        io.os.replace = replace  # type: ignore[assignment]
    feats, kw = profile_inputs()
    return dg.depth_profile(feats, ["modularity", "knn_purity"], checkpoint=ck, **kw)


# ------------------------------------------------------------------------------ fine-tuning
def finetune_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(16, 2))
    return model, loader, dict(epochs=4, lr=0.05, progress=False)


def run_finetune(folder: Path, kill_after: int = 0):
    """With ``kill_after = n``: dies right after epoch n's checkpoint is written."""
    model, loader, kw = finetune_inputs()

    def on_epoch_end(epoch, hist):
        if epoch == kill_after:
            die()
    hist = dg.prune.finetune(model, loader, checkpoint=folder / "ft.pt",
                             on_epoch_end=on_epoch_end, **kw)
    return model, hist


# ------------------------------------------------------------------------------ extraction
def extract_inputs():
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(64, 5, generator=g), torch.arange(64) % 4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(),
                          nn.Linear(8, 4))
    return model, DataLoader(ds, batch_size=8)


def run_extract(folder: Path, kill_after: int = 0, **kw):
    """With ``kill_after = n``: dies in the forward pass after n batches were spilled."""
    model, loader = extract_inputs()
    if kill_after:
        seen = [0]

        def hook(module, inputs):
            seen[0] += 1
            if seen[0] > kill_after:
                die()
        model.register_forward_pre_hook(hook)
    return dg.extract_features(model, loader, spill_dir=str(folder), progress=False, **kw)


if __name__ == "__main__":
    torch.set_num_threads(1)  # as in the test process (tests/conftest.py)
    scenario, where, step = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    {"profile": run_profile, "finetune": run_finetune, "extract": run_extract}[scenario](
        where, step)
    sys.exit(3)  # not killed: the test reports it
