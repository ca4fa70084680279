"""LayerTaps: the one hook mechanism."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

import dyngraph as dg


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        return h, {"aux": h * 2}          # a tuple output, like HF blocks


class DictOut(nn.Module):
    def forward(self, x):
        return OrderedDict(last_hidden_state=x + 1, pooler=x.sum(1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.dict_out = DictOut()
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x=None, *, extra=None):
        h = self.block(x)[0]
        h = self.dict_out(h)["last_hidden_state"]
        if extra is not None:
            h = h + extra
        return self.head(self.act(h))


def no_hooks(m):
    return all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_outputs_inputs_tuples_dicts_and_restoration():
    torch.manual_seed(0)
    m = Net().train()
    x = torch.randn(5, 4)
    with dg.LayerTaps(m, ["block", "dict_out", "head:input", "head"]) as taps:
        assert not m.training
        outs = taps(x)
    assert m.training and no_hooks(m)
    h = m.block.lin(x)
    # independent reference: the same forward pass by hand
    assert torch.equal(outs["block"], h)
    assert torch.equal(outs["dict_out"], h + 1)
    assert torch.equal(outs["head:input"], torch.relu(h + 1))
    assert torch.allclose(outs["head"], m.head(torch.relu(h + 1)))
    assert list(outs) == ["block", "dict_out", "head:input", "head"]
    assert taps.order == ["block", "dict_out", "head:input", "head"]


def test_inplace_activation_does_not_overwrite_a_captured_output():
    m = Net()
    x = -torch.ones(2, 4) * 100
    with dg.LayerTaps(m, ["dict_out"]) as taps:
        out = taps(x)["dict_out"]
    assert bool((out < 0).any())  # the ReLU(inplace=True) after it did not change the copy


def test_dict_inputs_are_keyword_arguments_and_pooling():
    m = Net()
    x = torch.randn(3, 4)
    with dg.LayerTaps(m, ["head"]) as taps:
        a = taps({"x": x})["head"]
        b = taps({"x": x, "extra": torch.ones(3, 4)})["head"]
    assert not torch.equal(a, b)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    img = torch.randn(4, 1, 6, 6)
    ref = conv(img).detach()
    for pool, want in [(None, ref.reshape(4, -1)), ("avg", ref.mean((2, 3))),
                       ("max", ref.amax((2, 3))),
                       (2, nn.functional.adaptive_avg_pool2d(ref, 2).reshape(4, -1))]:
        with dg.LayerTaps(conv, ["0"], pool=pool) as taps:
            assert torch.allclose(taps(img)["0"], want)
    with dg.LayerTaps(conv, ["0"], reduce=False) as taps:
        assert taps(img)["0"].shape == (4, 2, 4, 4)


def test_edits_change_the_forward_and_grad_mode():
    m = Net()
    x = torch.randn(3, 4)
    with dg.LayerTaps(m, ["head"], edits={"act": lambda o: torch.zeros_like(o)}) as taps:
        out = taps(x)["head"]
    assert torch.allclose(out, m.head.bias.expand(3, 3))
    assert no_hooks(m)
    with dg.LayerTaps(m, ["head"], grad=True, eval=False) as taps:
        taps.run(x)
        taps.outputs["head"].sum().backward()
    assert m.head.weight.grad is not None and m.training


def test_errors_are_named_and_hooks_removed_on_error():
    m = Net()
    with pytest.raises(ValueError, match="unknown layer 'blok'.*block"):
        dg.LayerTaps(m, ["blok"])
    with pytest.raises(ValueError, match="pool must be"):
        dg.LayerTaps(m, ["head"], pool="mean_of_everything")
    with pytest.raises(TypeError, match="nn.Module"):
        dg.LayerTaps("model", ["head"])
    with pytest.raises(ValueError, match="edits: unknown module"):
        dg.LayerTaps(m, ["head"], edits={"nope": lambda o: o})
    taps = dg.LayerTaps(m, ["head"])
    with pytest.raises(RuntimeError, match="entered first"):
        taps(torch.randn(2, 4))
    with pytest.raises(RuntimeError):
        with dg.LayerTaps(m, ["head"]) as taps:
            taps(torch.randn(2, 5))  # wrong width: the model raises
    assert no_hooks(m) and m.training
    shared = nn.ReLU()
    twice = nn.Sequential(shared, shared)
    with pytest.raises(ValueError, match="ran 2 times"):
        with dg.LayerTaps(twice, ["0"]) as taps:
            taps(torch.randn(2, 3))
    with dg.LayerTaps(twice, ["0"], allow_repeat=True) as taps:
        taps(torch.randn(2, 3))
        assert taps.order == ["0", "0"]
    unused = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})

    class UsesA(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = unused

        def forward(self, x):
            return self.m["a"](x)
    with pytest.raises(ValueError, match="did not run"):
        with dg.LayerTaps(UsesA(), ["m.b"]) as taps:
            taps(torch.randn(2, 2))


def test_extract_features_is_built_on_the_taps():
    from torch.utils.data import DataLoader, TensorDataset
    torch.manual_seed(0)
    m = Net()
    ds = TensorDataset(torch.randn(30, 4), torch.arange(30) % 3)
    f = dg.extract_features(m, DataLoader(ds, batch_size=7), layers=["block", "head"],
                            progress=False)
    with dg.LayerTaps(m, ["block", "head"]) as taps:
        ref = taps(ds.tensors[0])
    for k in ref:
        assert torch.allclose(f[k], ref[k], atol=1e-6)


def test_the_model_itself_and_no_taps():
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with dg.LayerTaps(lin, ["", ":input"]) as taps:
        out = taps(x)
    assert torch.allclose(out[""], lin(x)) and torch.equal(out[":input"], x)
    with dg.LayerTaps(lin, [], edits={"": lambda o: o * 0}) as taps:
        assert taps.names == [] and bool((taps.run(x) == 0).all())
    with dg.LayerTaps(lin, []) as taps:       # no hooks at all: run() is the plain forward
        assert torch.allclose(taps.run(x), lin(x)) and taps.outputs == {}
    assert no_hooks(lin) and lin.training
    with pytest.raises(RuntimeError, match="entered first"):
        dg.LayerTaps(lin, []).run(x)
    with pytest.raises(ValueError, match="layers is empty"):
        from torch.utils.data import DataLoader, TensorDataset
        dg.extract_features(lin, DataLoader(TensorDataset(x, torch.arange(4) % 2)), layers=[])


def test_keyword_calls_tensorless_values_and_every_call():
    class KwOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)
            self.meta = nn.Identity()

        def forward(self, x):
            self.meta("a string")               # a tapped value with no tensor in it
            return self.inner(input=x) if False else self.inner(x) + self.inner(x * 2)

    class Kw(nn.Module):
        def forward(self, *, hidden):
            return hidden * 3

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.kw = Kw()

        def forward(self, x):
            return self.kw(hidden=x)
    x = torch.randn(3, 2)
    with dg.LayerTaps(Outer(), ["kw:input", "kw"]) as taps:
        out = taps(x)
    assert torch.equal(out["kw:input"], x) and torch.equal(out["kw"], 3 * x)
    m = KwOnly()
    with pytest.raises(ValueError, match="no tensor in it"):
        with dg.LayerTaps(m, ["meta"]) as taps:
            taps(x)
    with dg.LayerTaps(m, ["meta", "inner"], strict=False, allow_repeat=True) as taps:
        taps.run(x)
    assert taps.empty == {"meta"} and "meta" not in taps.outputs
    assert [t.shape for t in taps.calls["inner"]] == [(3, 2), (3, 2)]
    assert torch.allclose(taps.calls["inner"][0], m.inner(x))
    assert torch.allclose(taps.outputs["inner"], m.inner(x * 2))
    assert taps.order == ["meta", "inner", "inner"]


def test_taps_during_a_training_loop_start_afresh_each_forward():
    m = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    seen = []
    with dg.LayerTaps(m, ["1"], eval=False, grad=True) as taps:
        for _ in range(3):
            x = torch.randn(4, 3)
            loss = m(x).pow(2).mean()          # the user's own forward, not taps.run
            seen.append(taps.outputs["1"].detach().clone())
            assert torch.equal(seen[-1], torch.relu(m[0](x)).detach())
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert m.training and taps.order == ["1"]
    assert no_hooks(m)


def test_a_sink_takes_each_capture_as_the_layer_runs():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    with dg.LayerTaps(m, ["0", "2", "2:input"]) as taps:
        want = taps(x)
    seen = []
    with dg.LayerTaps(m, ["0", "2", "2:input"], sink=lambda a, v: seen.append((a, v.clone()))) \
            as taps:
        taps.run(x)
        assert taps.outputs == {}  # nothing kept
    assert [a for a, _ in seen] == ["0", "2:input", "2"]  # in the order the layers ran
    for a, v in seen:
        assert torch.equal(v, want[a])
    with pytest.raises(TypeError, match="sink must be callable"):
        dg.LayerTaps(m, ["0"], sink="print")

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.a(x)
    with pytest.raises(ValueError, match=r"layers \['b'\] did not run"):
        with dg.LayerTaps(Skips(), ["a", "b"], sink=lambda a, v: None) as taps:
            taps.run(torch.randn(2, 2))


def test_the_input_of_a_keyword_only_call_is_its_hidden_states():
    class Inner(nn.Module):
        def forward(self, *, attention_bias=None, hidden_states=None):
            return hidden_states * 2

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return self.inner(attention_bias=torch.zeros(1), hidden_states=x)
    x = torch.randn(3, 4)
    with dg.LayerTaps(Outer(), ["inner:input"]) as taps:
        assert torch.equal(taps(x)["inner:input"], x)
