"""Layer surgery: the paper's pruning arithmetic, round trips on many architectures, errors."""
import copy
import io

import pytest
import torch
from torch import nn

import dyngraph as dg
from dyngraph import prune
from dyngraph.zoo._models import CifarResNet, resnet20, resnet56

torchvision = pytest.importorskip("torchvision")

PAPER_KEEP = (2, 3, 6)


# blocks per stage kept by the reference ΔQ < 0.03 rule on ResNet56


def _drop_to(keep):
    return [f"layer{s + 1}.{i}" for s, k in enumerate(keep) for i in range(k, 9)]


def _closed_form_flops(blocks, widths=(16, 32, 64), side=32, classes=10):
    """2·MACs of every conv and of the linear layer of a CIFAR ResNet (option A), by hand."""
    total = 2 * 3 * widths[0] * 9 * side * side  # stem
    c_in = widths[0]
    for s, (n, w) in enumerate(zip(blocks, widths)):
        if s > 0:
            side //= 2
        for j in range(n):
            cin = c_in if j == 0 else w
            total += 2 * cin * w * 9 * side * side + 2 * w * w * 9 * side * side
        c_in = w
    return total + 2 * widths[-1] * classes


def _closed_form_params(blocks, widths=(16, 32, 64), classes=10):
    total = 3 * widths[0] * 9 + 2 * widths[0]
    c_in = widths[0]
    for n, w in zip(blocks, widths):
        for j in range(n):
            cin = c_in if j == 0 else w
            total += cin * w * 9 + w * w * 9 + 4 * w
        c_in = w
    return total + widths[-1] * classes + classes


def _save_load(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _same_outputs(a, b, x, atol=1e-6):
    a.eval(), b.eval()
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=atol)


# ------------------------------------------------------------------ paper arithmetic
def test_resnet56_pruned_to_2_3_6_matches_paper_reductions():
    model = resnet56()
    x = torch.zeros(1, 3, 32, 32)
    pruned = prune.prune_layers(model, _drop_to(PAPER_KEEP), example_input=x)
    assert [len(pruned.layer1), len(pruned.layer2), len(pruned.layer3)] == list(PAPER_KEEP)
    p0, p1 = prune.count_params(model), prune.count_params(pruned)
    f0, f1 = prune.count_flops(model, x), prune.count_flops(pruned, x)
    # torch's FlopCounterMode agrees with the closed form (independent count by hand).
    assert p0 == _closed_form_params((9, 9, 9)) and p1 == _closed_form_params(PAPER_KEEP)
    assert f0 == _closed_form_flops((9, 9, 9)) and f1 == _closed_form_flops(PAPER_KEEP)
    assert abs(p0 / 1e6 - 0.85) < 0.01  # the published ResNet56 size
    params_red, flops_red = 1 - p1 / p0, 1 - f1 / f0
    assert abs(params_red - 0.4300) < 0.005, params_red  # paper: 43.00%
    assert abs(flops_red - 0.6030) < 0.005, flops_red  # paper: 60.30%
    report = prune.prune_report(model, pruned, x, latency=False)
    assert report["params_reduction"] == pytest.approx(params_red)
    assert report["flops_reduction"] == pytest.approx(flops_red)


def test_pruned_resnet56_has_the_layout_of_a_smaller_resnet():
    model = resnet56()
    pruned = prune.prune_layers(model, _drop_to(PAPER_KEEP))
    small = CifarResNet(PAPER_KEEP)
    small.load_state_dict(pruned.state_dict())  # strict: renumbered keys match
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert _same_outputs(pruned, small, x)
    # kept blocks inherit their weights: pruned layer2.2 is the original layer2.2
    assert torch.equal(pruned.layer2[2].conv1.weight, model.layer2[2].conv1.weight)
    assert torch.equal(pruned.linear.weight, model.linear.weight)


def test_option_a_has_no_shortcut_parameters_and_published_sizes():
    assert abs(prune.count_params(resnet20()) / 1e6 - 0.27) < 0.005
    assert abs(prune.count_params(dg.zoo.resnet110()) / 1e6 - 1.7) < 0.05
    b = dg.zoo.resnet56(option="B")
    assert prune.count_params(b) > prune.count_params(resnet56())
    assert prune.count_params(dg.zoo.PadShortcut(16, 32)) == 0
    with pytest.raises(ValueError, match="depth"):
        dg.zoo.cifar_resnet(57)


# ------------------------------------------------------------------ round trips
def _round_trip(model, names, x, expect_removed_params=True):
    out_shape = model.eval()(x).shape
    pruned, log = prune.prune_layers(model, names, example_input=x, return_log=True)
    assert set(log["removed"]) == set(names)
    y = pruned(x)
    assert y.shape == out_shape
    assert torch.isfinite(y).all()
    if expect_removed_params:
        assert prune.count_params(pruned) < prune.count_params(model)
    loaded = _save_load(pruned)
    assert _same_outputs(pruned, loaded, x)
    twin = copy.deepcopy(pruned)
    for p in twin.parameters():
        nn.init.zeros_(p)
    twin.load_state_dict(pruned.state_dict())
    assert _same_outputs(pruned, twin, x)
    # the original is untouched
    assert prune.count_params(model) == sum(p.numel() for p in model.parameters())
    return pruned, log


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_resnets(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    before = copy.deepcopy(model)
    pruned, log = _round_trip(model, ["layer1.1", "layer2.0", "layer3.1", "layer4.1"], x)
    assert "shortcut layer2.0.downsample" in log["replaced"]["layer2.0"]
    assert log["replaced"]["layer1.1"] == "removed"
    assert len(pruned.layer1) == len(model.layer1) - 1
    # the downsample that replaced layer2.0 inherits its weights
    assert torch.equal(pruned.layer2[0][0].weight, model.layer2[0].downsample[0].weight)
    assert torch.equal(pruned.fc.weight, model.fc.weight)
    for a, b in zip(model.state_dict().values(), before.state_dict().values()):
        assert torch.equal(a, b)


def test_cifar_resnet20_and_shape_change_with_option_a_shortcut():
    model = resnet20()
    x = torch.randn(2, 3, 32, 32)
    pruned, log = _round_trip(model, ["layer1.1", "layer2.0", "layer3.2"], x)
    # option A's shortcut has no parameters: layer2.0 becomes the padding shortcut
    assert isinstance(pruned.layer2[0], dg.zoo.PadShortcut)
    assert "shortcut" in log["replaced"]["layer2.0"]
    with pytest.raises(ValueError, match="changes the shape"):
        prune.prune_layers(model, ["layer2.0"], example_input=x, projection="none")
    p = prune.prune_layers(model, ["layer2.0"], example_input=x, projection="new")
    assert isinstance(p.layer2[0], nn.Sequential) and isinstance(p.layer2[0][0], nn.Conv2d)
    assert p.layer2[0][0].stride == (2, 2)


def _vgg():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 5))


def test_vgg_like_sequential_removes_conv_units():
    model = _vgg()
    x = torch.randn(2, 3, 8, 8)
    pruned, log = _round_trip(model, ["3", "10"], x)
    assert log["removed"]["3"] == ["3", "4", "5"]  # conv + BN + ReLU go together
    assert len(pruned) == len(model) - 6
    assert torch.equal(pruned[4].weight, model[7].weight)  # kept conv, renumbered
    # a post-activation point maps to its conv
    p2, log2 = prune.prune_layers(model, ["5"], example_input=x, return_log=True)
    assert log2["removed"]["5"] == ["3", "4", "5"]
    # a channel-changing conv needs a projection
    with pytest.raises(ValueError, match="projection"):
        prune.prune_layers(model, ["7"], example_input=x, projection="none")
    p3, log3 = prune.prune_layers(model, ["7"], example_input=x, return_log=True)
    assert "projection" in log3["replaced"]["7"] and p3(x).shape == (2, 5)


def test_mlp_hidden_layers():
    model = dg.zoo.DigitsMLP(depth=5, width=32)
    x = torch.randn(3, 1, 8, 8)
    pruned, log = _round_trip(model, ["net.3", "net.7"], x)
    assert log["removed"]["net.3"] == ["net.3", "net.4"]
    hidden = [m for m in pruned.net if isinstance(m, nn.Linear)]
    assert len(hidden) == 4
    assert torch.equal(hidden[0].weight, model.net[1].weight)
    assert torch.equal(hidden[-1].weight, model.net[11].weight)


class Unit(nn.Module):
    """A residual unit with its own names (no 'block' in the class name, 'proj' shortcut)."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.a = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.na = nn.BatchNorm2d(c_out)
        self.b = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.nb = nn.BatchNorm2d(c_out)
        self.proj = None
        if stride != 1 or c_in != c_out:
            self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                      nn.BatchNorm2d(c_out))

    def forward(self, x):
        s = x if self.proj is None else self.proj(x)
        return torch.relu(self.nb(self.b(torch.relu(self.na(self.a(x))))) + s)


class MyResNet(nn.Module):
    """Stages in a ModuleList of Sequentials; head computed in forward."""

    def __init__(self):
        super().__init__()
        self.entry = nn.Conv2d(3, 8, 3, padding=1)
        self.stages = nn.ModuleList([nn.Sequential(Unit(8, 8), Unit(8, 8), Unit(8, 8)),
                                     nn.Sequential(Unit(8, 16, 2), Unit(16, 16))])
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        x = self.entry(x)
        for stage in self.stages:
            x = stage(x)
        return self.out(x.mean((2, 3)))


class AttrResNet(nn.Module):
    """Blocks as plain attributes called in forward (no container to delete from)."""

    def __init__(self):
        super().__init__()
        self.entry = nn.Conv2d(3, 8, 3, padding=1)
        self.u1, self.u2, self.u3 = Unit(8, 8), Unit(8, 8), Unit(8, 16, 2)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.u3(self.u2(self.u1(self.entry(x)))).mean((2, 3)))


def test_custom_resnet_style_classes():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    model = MyResNet()
    pruned, log = _round_trip(model, ["stages.0.1", "stages.1.0"], x)
    assert len(pruned.stages[0]) == 2
    assert "stages.1.0.proj" in log["replaced"]["stages.1.0"]
    assert torch.equal(pruned.stages[0][1].a.weight, model.stages[0][2].a.weight)
    model2 = AttrResNet()
    pruned2, log2 = _round_trip(model2, ["u2"], x)
    assert isinstance(pruned2.u2, nn.Identity)
    # detection works on the unseen class too: the stem, shape change and classifier are kept
    layers = ["entry", "stages.0.0", "stages.0.1", "stages.0.2", "stages.1.0", "stages.1.1"]
    curve = dg.DepthProfile(layers, "modularity",
                            torch.tensor([0.1, 0.15, 0.16, 0.17, 0.18, 0.185]))
    r = prune.redundant_layers(curve, model=model, example_input=x)
    assert r.layers == ["stages.0.1", "stages.0.2", "stages.1.1"]
    assert "changes the shape" in r.kept["stages.1.0"] and "stages.0.0" not in r.kept
    pruned3 = prune.prune_layers(model, r, example_input=x)
    assert [len(s) for s in pruned3.stages] == [1, 1]


# ------------------------------------------------------------------ errors
class UsesWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.c, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.c(self.stem(x)) * self.c.weight.mean())


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.a, self.h = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.h(self.a(self.a(self.stem(x))))


class Skipped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.unused, self.h = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.h(self.a(x))


def test_clear_errors():
    model = resnet20()
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="Did you mean"):
        prune.prune_layers(model, ["layer1.9"], example_input=x)
    with pytest.raises(ValueError, match="inside"):
        prune.prune_layers(model, ["layer1", "layer1.1"], example_input=x)
    with pytest.raises(ValueError, match="more than once"):
        prune.prune_layers(model, ["layer1.1", "layer1.1"], example_input=x)
    with pytest.raises(ValueError, match="classifier"):
        prune.prune_layers(model, ["linear"], example_input=x)
    with pytest.raises(ValueError, match="stem"):
        prune.prune_layers(model, ["conv1"], example_input=x)
    with pytest.raises(ValueError, match="projection must be one of"):
        prune.prune_layers(model, ["layer1.1"], example_input=x, projection="bogus")
    with pytest.raises(TypeError, match="Module"):
        prune.prune_layers("resnet", ["layer1.1"])
    with pytest.raises(TypeError, match="TorchScript"):
        prune.prune_layers(torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))), ["0"])
    with pytest.raises(ValueError, match="breaks the forward pass"):
        prune.prune_layers(UsesWeight(), ["c"], example_input=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="runs 2 times"):
        prune.prune_layers(Shared(), ["a"], example_input=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="did not run"):
        prune.prune_layers(Skipped(), ["unused"], example_input=torch.zeros(2, 4))
    up = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Upsample(scale_factor=2),
                       nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 16 * 16, 2))
    with pytest.raises(ValueError, match="cannot build a projection"):
        prune.prune_layers(up, ["1"], example_input=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="rank"):
        prune.prune_layers(up, ["3"], example_input=torch.zeros(1, 1, 8, 8))


# ------------------------------------------------------------------ helpers
def test_projection_is_strided_zero_padded_identity():
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    p = prune.make_projection((4, 8, 8), (6, 4, 4)).eval()
    with torch.no_grad():
        y = p(x)
    ref = torch.zeros(2, 6, 4, 4)
    ref[:, :4] = x[:, :, ::2, ::2]
    assert torch.allclose(y, ref, atol=1e-4)  # BN eval with default stats ≈ identity
    lin = prune.make_projection((5,), (3,))
    assert torch.equal(lin(torch.eye(5))[:3], torch.eye(3))
    with pytest.raises(ValueError, match="up-sampling"):
        prune.make_projection((4, 8, 8), (4, 16, 16))
    with pytest.raises(ValueError, match="rank"):
        prune.make_projection((4, 8, 8), (256,))


def _reference_probe(model, x):
    """The 0.1 tracer, straight from torch's hooks: per module the order of its first call,
    its number of calls, and the input/output shapes of its first and of its last call."""
    seen, handles = {}, []

    def pre(name):
        def hook(_mod, args):
            shape = tuple(args[0].shape[1:])
            if name in seen:
                seen[name]["calls"] += 1
            else:
                seen[name] = {"order": len(seen), "calls": 1, "first_in": shape}
            seen[name]["last_in"] = shape
        return hook

    def post(name):
        def hook(_mod, _args, out):
            seen[name].setdefault("first_out", tuple(out.shape[1:]))
            seen[name]["last_out"] = tuple(out.shape[1:])
        return hook

    for name, mod in model.named_modules():
        handles += [mod.register_forward_pre_hook(pre(name)), mod.register_forward_hook(post(name))]
    was = model.training
    model.eval()
    with torch.no_grad():
        model(x)
    model.train(was)
    for h in handles:
        h.remove()
    return seen


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("make,shape", [
    (resnet20, (3, 32, 32)), (MyResNet, (3, 16, 16)), (AttrResNet, (3, 16, 16)), (Shared, (4,)),
    (_vgg, (3, 8, 8)), (lambda: torchvision.models.resnet50(num_classes=3), (3, 32, 32))])
def test_probe_runs_on_layer_taps_and_matches_raw_hooks(make, shape, monkeypatch):
    torch.manual_seed(0)
    model = make().train()
    x = torch.randn((2,) + shape)
    ref = _reference_probe(model, x)
    entered = []
    enter = dg.capture.LayerTaps.__enter__

    def spy(self):
        entered.append(self)
        return enter(self)
    monkeypatch.setattr(dg.capture.LayerTaps, "__enter__", spy)
    info = prune.probe(model, x)
    assert len(entered) == 1 and not entered[0].reduce and entered[0].allow_repeat
    assert list(info) == list(ref)  # the same modules, in the order of their first call
    for name, r in ref.items():
        got = info[name]
        assert (got.order, got.calls) == (r["order"], r["calls"]), name
        # shapes of the (last) call; a module called once has only one
        assert (got.in_shape, got.out_shape) == (r["last_in"], r["last_out"]), name
        if r["calls"] == 1:
            assert (got.in_shape, got.out_shape) == (r["first_in"], r["first_out"]), name
    assert model.training and _hook_count(model) == 0  # mode restored, no hook left
    assert info[""].order == 0 and info[""].out_shape == tuple(model.eval()(x).shape[1:])
    if isinstance(model, Shared):
        assert info["a"].calls == 2
    leaf = prune.probe(nn.Linear(4, 2), torch.zeros(3, 4))  # a module without children
    assert list(leaf) == [""] and (leaf[""].in_shape, leaf[""].out_shape) == ((4,), (2,))


def test_probe_and_infer_example_input():
    x = prune.infer_example_input(dg.zoo.DigitsCNN())
    assert tuple(x.shape) == (2, 1, 8, 8)
    assert tuple(prune.infer_example_input(dg.zoo.SignalResNet()).shape) == (2, 1, 40)
    info = prune.probe(resnet20(), torch.zeros(1, 3, 32, 32))
    assert info["layer2.0"].in_shape == (16, 32, 32) and info["layer2.0"].out_shape == (32, 16, 16)
    assert info["layer1.0"].order < info["layer2.0"].order < info["linear"].order
    with pytest.raises(ValueError, match="example_input"):
        prune.infer_example_input(nn.Sequential(nn.ReLU()))
