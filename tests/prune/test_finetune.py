"""The shared training loop (fit/finetune/train_classifier): learning, exact resume, atomic
checkpoints, errors; and the cost counters (params, FLOPs via FlopCounterMode, latency)."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dyngraph as dg
from dyngraph import prune


def _data(seed=0, n=96):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + 2 * (x[:, 2] > 0).long()
    return x, y


def _loaders(seed=0):
    x, y = _data(seed)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=gen)
    test = DataLoader(TensorDataset(x, y), batch_size=64)
    return train, test


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(32, 4))


def test_fit_learns_and_records_history():
    train, test = _loaders()
    m = _net()
    acc0 = prune.evaluate(m, test)
    h = prune.fit(m, train, test, 12, optimizer="sgd", lr=0.1, progress=False)
    assert h["epoch"] == list(range(1, 13)) and len(h["val_acc"]) == 12
    assert h["val_acc"][-1] > max(acc0, 0.85)
    assert h["loss"][-1] < h["loss"][0]
    assert h["lr"][0] == pytest.approx(0.1) and h["lr"][-1] < 0.01  # cosine annealing
    assert not m.training
    h2 = prune.finetune(_net(), train, None, 2, optimizer="adamw", progress=False)
    assert h2["val_acc"] == [] and len(h2["train_acc"]) == 2


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    train, test = _loaders()
    ref = _net()
    h_ref = prune.finetune(ref, train, test, 4, lr=0.05, checkpoint=tmp_path / "a.pt",
                           progress=False)

    train, test = _loaders()  # a fresh process would build fresh loaders
    m = _net()

    def stop(epoch, hist):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune.finetune(m, train, test, 4, lr=0.05, checkpoint=tmp_path / "b.pt",
                       on_epoch_end=stop, progress=False)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    train, test = _loaders()
    m2 = _net()
    h = prune.finetune(m2, train, test, 4, lr=0.05, checkpoint=tmp_path / "b.pt", progress=False)
    assert h["resumed_from"] == 2
    assert h["loss"] == pytest.approx(h_ref["loss"], rel=1e-6)
    for a, b in zip(ref.state_dict().values(), m2.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    # a finished checkpoint resumes to nothing left to do
    h3 = prune.finetune(_net(), train, test, 4, lr=0.05, checkpoint=tmp_path / "b.pt",
                        progress=False)
    assert h3["resumed_from"] == 4 and len(h3["loss"]) == 4
    with pytest.raises(ValueError, match="other settings"):
        prune.finetune(_net(), train, test, 5, lr=0.05, checkpoint=tmp_path / "b.pt",
                       progress=False)
    with pytest.raises(ValueError, match="does not fit this model"):
        prune.finetune(nn.Linear(6, 4), train, test, 4, lr=0.05, checkpoint=tmp_path / "b.pt",
                       progress=False)
    torch.save({"x": 1}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="not a dyngraph training checkpoint"):
        prune.finetune(_net(), train, test, 4, checkpoint=tmp_path / "c.pt", progress=False)
    torch.save(_net(), tmp_path / "d.pt")  # a pickled module is never unpickled here
    with pytest.raises(ValueError, match="not a dyngraph training checkpoint"):
        prune.finetune(_net(), train, test, 4, checkpoint=tmp_path / "d.pt", progress=False)


def test_train_classifier_is_the_same_loop():
    train, _ = _loaders()
    a, b = _net(), _net()
    dg.zoo.train_classifier(a, train, epochs=2, lr=3e-3, weight_decay=5e-4, seed=3,
                               progress=False)
    train, _ = _loaders()
    prune.fit(b, train, None, 2, optimizer="adamw", lr=3e-3, weight_decay=5e-4, seed=3,
              progress=False)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    assert dg.prune.evaluate is prune.evaluate


def test_bad_arguments():
    train, test = _loaders()
    with pytest.raises(ValueError, match="epochs"):
        prune.fit(_net(), train, test, 0)
    with pytest.raises(ValueError, match="optimizer"):
        prune.fit(_net(), train, test, 1, optimizer="adam")
    with pytest.raises(ValueError, match="lr"):
        prune.fit(_net(), train, test, 1, lr=-1.0)
    with pytest.raises(TypeError, match="Module"):
        prune.fit("net", train, test, 1)
    with pytest.raises(ValueError, match="loss became"):
        prune.fit(_net(), train, test, 1, lr=1e30, momentum=0.0, progress=False)
    with pytest.raises(ValueError, match="no samples"):
        prune.evaluate(_net(), [])
    m = _net().train()
    prune.evaluate(m, test)
    assert m.training  # mode restored


# ------------------------------------------------------------------ costs
def test_flops_and_params_closed_form():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert prune.count_flops(conv, torch.zeros(4, 3, 10, 10)) == 2 * 3 * 8 * 9 * 100
    assert prune.count_flops(conv, torch.zeros(4, 3, 10, 10), per_input=False) == \
        4 * 2 * 3 * 8 * 9 * 100
    mlp = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    total, mods = prune.count_flops(mlp, torch.zeros(3, 5), by_module=True)
    assert total == 2 * (5 * 7 + 7 * 2)
    assert mods["Sequential.0"] == 2 * 5 * 7
    shared = nn.Linear(4, 4)
    tied = nn.Sequential(shared, shared)
    assert prune.count_params(tied) == 20
    frozen = nn.Linear(4, 4)
    frozen.bias.requires_grad_(False)
    assert prune.count_params(frozen, trainable_only=True) == 16
    # the guessed input gives the same per-sample count
    assert prune.count_flops(dg.zoo.DigitsCNN()) == \
        prune.count_flops(dg.zoo.DigitsCNN(), torch.zeros(5, 1, 8, 8))


def test_latency_restores_state():
    m = _net().train()
    old = torch.get_num_threads()
    t = prune.measure_latency(m, torch.zeros(8, 6), repeats=4, warmup=1, threads=1)
    assert t["min_ms"] > 0 and t["min_ms"] <= t["median_ms"] and t["repeats"] == 4
    assert m.training and torch.get_num_threads() == old
    with pytest.raises(ValueError, match="repeats"):
        prune.measure_latency(m, torch.zeros(8, 6), repeats=0)
    r = prune.cost_report(copy.deepcopy(m), torch.zeros(2, 6), repeats=2, warmup=0)
    assert r["params"] == prune.count_params(m) and "latency" in r


def test_study_latency_reloads_weights_only(tmp_path, monkeypatch):
    """The latency step rebuilds each pruned model from its selection and loads the saved
    weights with weights_only=True (no pickled module is ever written or read)."""
    train, test = dg.zoo.example_loaders("digits", batch_size=256)
    torch.manual_seed(0)
    net = dg.zoo.CifarResNet((2, 2, 2), widths=(4, 8, 8), in_channels=1)
    loads = []
    real = torch.load

    def spy(*a, **kw):
        loads.append(kw.get("weights_only"))
        return real(*a, **kw)
    monkeypatch.setattr(torch, "load", spy)
    r = dg.prune.prune_study(net, train, test, tmp_path, per_class=10, pool_per_class=10,
                             repeats=1, n_remove=1, methods=["modularity"], control=True,
                             finetune_epochs=1, latency=True, latency_batch=8, progress=False,
                             log=None)
    assert {"modularity", "unpruned_finetuned"} <= set(r["rows"])
    assert all(r["rows"][n]["latency_ms"] > 0 for n in r["rows"]) and r["baseline"]["latency_ms"] > 0
    assert loads and all(w is True for w in loads)
    sd = real(tmp_path / "models" / "modularity.pt", weights_only=True)
    assert isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())


def test_evaluate_and_fit_understand_tuple_and_dict_outputs():
    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return {"hidden": x, "logits": self.lin(x)}

    class TupleOut(DictOut):
        def forward(self, x):
            return self.lin(x), x

    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(30, 4, generator=g), torch.arange(30) % 3)
    dl = DataLoader(ds, batch_size=10)
    torch.manual_seed(0)
    plain = nn.Linear(4, 3)
    for cls in (DictOut, TupleOut):
        m = cls()
        m.lin.load_state_dict(plain.state_dict())
        assert prune.evaluate(m, dl) == prune.evaluate(plain, dl)
        prune.fit(m, dl, epochs=1, lr=0.1, progress=False)
    with pytest.raises(ValueError, match=r"no \[batch, classes\] logits"):
        prune.evaluate(nn.Sequential(nn.Linear(4, 3), nn.Flatten(0)), dl)
