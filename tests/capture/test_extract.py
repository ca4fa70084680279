import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import dyngraph as dg


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 5))

    def forward(self, x):
        return self.head(self.features(x))


class Block(nn.Module):  # a user's own residual block, unknown to dyngraph
    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.shortcut = nn.Identity()

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.stage1 = nn.Sequential(Block(4), Block(4))
        self.stage2 = nn.Sequential(Block(4))
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.stage2(self.stage1(self.act(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def image_data(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 5)


def test_matches_torchvision_feature_extractor():
    from torchvision.models.feature_extraction import create_feature_extractor
    torch.manual_seed(0)
    m = SmallCNN().eval()
    ds = image_data(40)
    names = ["features.0", "features.3", "features.6"]
    f = dg.extract_features(m, DataLoader(ds, batch_size=16), layers=names, progress=False)
    # Reference on a copy without in-place ops (FX returns the node's tensor, which a following
    # ReLU(inplace=True) overwrites: torchvision then reports post-ReLU values for 'features.3').
    clean = copy.deepcopy(m)
    for mod in clean.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
    ref = create_feature_extractor(clean, return_nodes=names)(ds.tensors[0])
    for n in names:
        assert torch.allclose(f[n], ref[n].flatten(1), atol=1e-5)
    tv_inplace = create_feature_extractor(m, return_nodes=names)(ds.tensors[0])
    assert torch.allclose(tv_inplace["features.3"].flatten(1), f["features.3"].clamp_min(0),
                          atol=1e-5)
    # inplace ReLU after features.3 must not leak into the stored conv output
    assert (f["features.3"] < 0).any()
    post = dg.extract_features(m, DataLoader(ds, batch_size=16), layers=["features.4"],
                               progress=False)
    assert torch.allclose(post["features.4"], f["features.3"].clamp_min(0), atol=1e-6)


def test_default_layers_presets():
    from torchvision.models import resnet18, vgg11_bn
    r = resnet18()
    assert dg.default_layers(r) == ["conv1"] + [f"layer{s}.{b}" for s in range(1, 5)
                                                 for b in range(2)]
    assert dg.default_layers(r, point="post")[0] == "relu"
    v = vgg11_bn()
    convs = dg.list_layers(v, nn.Conv2d)
    assert dg.default_layers(v) == convs and len(convs) == 8
    post = dg.default_layers(v, point="post")
    assert all(isinstance(dict(v.named_modules())[n], nn.ReLU) for n in post)
    assert dg.default_layers(TinyResNet()) == ["stem", "stage1.0", "stage1.1", "stage2.0"]
    assert dg.default_layers(TinyResNet(), point="post")[0] == "act"
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(),
                        nn.Linear(8, 2))
    assert dg.default_layers(mlp) == ["1", "3", "5"]
    assert dg.default_layers(mlp, point="post") == ["2", "4", "5"]


def test_torchvision_resnet_extraction_runs():
    from torchvision.models import resnet18
    m = resnet18(num_classes=5)
    m.train()
    ds = TensorDataset(torch.randn(20, 3, 32, 32), torch.arange(20) % 5)
    f = dg.extract_features(m, DataLoader(ds, batch_size=8), per_class=2, pool="avg",
                            progress=False)
    assert f.names == dg.default_layers(m) and f.n_samples == 10
    assert f.dims["layer4.1"] == 512 and f.dims["conv1"] == 64
    assert m.training  # restored
    assert all(not mod._forward_hooks for mod in m.modules())


def test_class_balanced_sampling_is_seeded():
    ds = TensorDataset(torch.randn(300, 4), torch.arange(300) % 3)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    a = dg.extract_features(m, DataLoader(ds, batch_size=32), per_class=7, seed=1, progress=False)
    b = dg.extract_features(m, DataLoader(ds, batch_size=32), per_class=7, seed=1, progress=False)
    c = dg.extract_features(m, DataLoader(ds, batch_size=32), per_class=7, seed=2, progress=False)
    assert a.y.bincount().tolist() == [7, 7, 7]
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    assert torch.equal(ds.tensors[1][a.indices], a.y)
    # the features are those of the selected inputs
    assert torch.allclose(a["0"], m[0](ds.tensors[0][a.indices]), atol=1e-6)
    n = dg.extract_features(m, DataLoader(ds, batch_size=32), n_samples=20, progress=False)
    assert n.n_samples == 20 and sorted(n.y.bincount().tolist()) == [6, 7, 7]


class NoLabelAttr(Dataset):  # labels only visible by iterating
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x, self._t = torch.randn(n, 4, generator=g), torch.arange(n) % 4

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self._t[i]


def test_streaming_selection_without_dataset_labels():
    ds = NoLabelAttr(200)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4))
    f = dg.extract_features(m, DataLoader(ds, batch_size=16, shuffle=False), per_class=5,
                            num_classes=4, progress=False)
    assert f.y.bincount().tolist() == [5, 5, 5, 5]
    with pytest.warns(UserWarning, match="ran out"):
        dg.extract_features(m, DataLoader(ds, batch_size=16), per_class=60, progress=False)
    with pytest.raises(ValueError, match="num_classes"):
        dg.extract_features(m, DataLoader(ds, batch_size=16), n_samples=10, progress=False)


def test_spill_to_disk_matches_memory(tmp_path):
    ds = image_data(60)
    m = SmallCNN()
    mem = dg.extract_features(m, DataLoader(ds, batch_size=16), progress=False)
    disk = dg.extract_features(m, DataLoader(ds, batch_size=16), spill_dir=str(tmp_path),
                               progress=False)
    half = dg.extract_features(m, DataLoader(ds, batch_size=16), spill_dir=str(tmp_path),
                               spill_dtype="float16", progress=False)
    assert disk.on_disk and not mem.on_disk
    for n in mem:
        assert torch.equal(mem[n], disk[n])
        assert torch.allclose(mem[n], half[n], rtol=1e-2, atol=1e-2)
    sub = disk.subset([0, 5, 7])
    assert torch.equal(sub[mem.names[0]], mem[mem.names[0]][[0, 5, 7]])
    out = disk.save(tmp_path / "saved")
    back = dg.LayerFeatures.load(out)
    assert back.names == mem.names and torch.equal(back[mem.names[1]], mem[mem.names[1]])


def test_pooling_options():
    ds = image_data(20)
    m = SmallCNN()
    f = dg.extract_features(m, DataLoader(ds, batch_size=8), layers=["features.6"],
                            pool="avg", progress=False)
    full = dg.extract_features(m, DataLoader(ds, batch_size=8), layers=["features.6"],
                               progress=False)
    assert f.dims["features.6"] == 16
    assert torch.allclose(f["features.6"], full["features.6"].view(20, 16, 16).mean(2), atol=1e-6)
    g = dg.extract_features(m, DataLoader(ds, batch_size=8), layers=["features.6"], pool=2,
                            progress=False)
    assert g.dims["features.6"] == 64
    with pytest.raises(ValueError, match="pool"):
        dg.extract_features(m, DataLoader(ds, batch_size=8), pool="median")


def test_layer_selection_forms():
    m = SmallCNN()
    ds = image_data(20)
    by_type = dg.extract_features(m, DataLoader(ds), layers=nn.Conv2d, progress=False)
    assert by_type.names == ["features.0", "features.3", "features.6"]
    aliased = dg.extract_features(m, DataLoader(ds), layers={"features.0": "conv1",
                                                             "head.1:input": "pre_fc"},
                                  progress=False)
    assert aliased.names == ["conv1", "pre_fc"] and aliased.dims["pre_fc"] == 256
    assert aliased.meta["points"]["pre_fc"] == "head.1 (input)"


class _Strings(nn.Module):
    def forward(self, x):
        return ("not", "a tensor")


class NoTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Strings()

    def forward(self, x):
        self.inner(x)
        return x


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.shared = nn.ReLU()

    def forward(self, x):
        return self.shared(self.lin(x)), x


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.lin(self.act(x)))


class Wrap(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)[0]


def test_errors_restore_state():
    ds = TensorDataset(torch.randn(20, 4), torch.arange(20) % 2)
    m = Wrap(TupleOut())
    m.train()
    # A tuple output gives its first tensor (0.2: tuples, dicts and ModelOutputs are understood).
    f = dg.extract_features(m, DataLoader(ds), layers=["inner", "inner.shared"], progress=False)
    assert torch.equal(f["inner"], f["inner.shared"])
    assert m.training and all(not mod._forward_hooks for mod in m.modules())
    with pytest.raises(ValueError, match="no tensor in it"):
        dg.extract_features(NoTensor(), DataLoader(ds), layers=["inner"], progress=False)
    assert all(not mod._forward_hooks for mod in m.modules())
    with pytest.raises(ValueError, match="ran 2 times"):
        dg.extract_features(Twice(), DataLoader(ds), layers=["act"], progress=False)
    with pytest.raises(ValueError, match="unknown layer 'inner.linn'.*inner.lin"):
        dg.extract_features(m, DataLoader(ds), layers=["inner.linn"], progress=False)
    with pytest.raises(ValueError, match="layers is empty"):
        dg.extract_features(m, DataLoader(ds), layers=[], progress=False)
    with pytest.raises(TypeError, match="nn.Module"):
        dg.extract_features("model", DataLoader(ds))
    with pytest.raises(ValueError, match="per_class must be >= 1"):
        dg.extract_features(nn.Sequential(nn.Linear(4, 2)), DataLoader(ds), layers=nn.Linear, per_class=0)
    with pytest.raises(ValueError, match="exactly one of per_class or n_samples"):
        dg.extract_features(nn.Sequential(nn.Linear(4, 2)), DataLoader(ds), layers=nn.Linear, per_class=2,
                            n_samples=4)
    with pytest.raises(ValueError, match="class 0 has only 10"):
        dg.extract_features(nn.Sequential(nn.Linear(4, 2)), DataLoader(ds), layers=nn.Linear, per_class=11,
                            progress=False)


def test_labels_are_checked_not_guessed():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    y = torch.arange(40) % 2
    w = torch.rand(40, generator=g)                   # per-sample weights, not labels
    m = nn.Sequential(nn.Linear(4, 3))
    three = TensorDataset(x, w, y)
    with pytest.raises(ValueError, match="3 items per batch.*batch_fn"):
        dg.extract_features(m, DataLoader(three, batch_size=8), layers=["0"], per_class=5,
                            progress=False)
    f = dg.extract_features(m, DataLoader(three, batch_size=8), layers=["0"], per_class=5,
                            batch_fn=lambda b: (b[0], b[2]), progress=False)
    assert f.y.bincount().tolist() == [5, 5]
    floats = TensorDataset(x, y.float() + 0.5)
    with pytest.raises(TypeError, match="integer class labels"):
        dg.extract_features(m, DataLoader(floats, batch_size=8), layers=["0"], per_class=5,
                            progress=False)
    with pytest.raises(TypeError, match="integer class labels"):
        dg.capture.balanced_indices(torch.tensor([0.0, 1.0, 1.0]), per_class=1)


def test_every_short_class_is_reported_at_once():
    y = torch.tensor([0] * 10 + [1] * 3 + [2] * 2 + [3] * 10)
    with pytest.raises(ValueError, match="class 1 has only 3, class 2 has only 2 samples.*"
                                         r"per_class=5 \(2 of 4 classes short\)"):
        dg.capture.balanced_indices(y, per_class=5)
