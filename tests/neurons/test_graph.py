"""Neuron graphs from weights and from activations, against direct numpy/scipy constructions."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dyngraph as dg


def _dense(data) -> np.ndarray:
    a = np.zeros((data.num_nodes, data.num_nodes))
    ei = data.edge_index.numpy()
    a[ei[0], ei[1]] = data.edge_weight.double().numpy()
    return a


def _mlp(seed=0, sizes=(5, 7, 6, 4)):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1])]
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def test_weight_graph_mlp_equals_abs_weight_blocks():
    m = _mlp()
    g = dg.neurons.neuron_graph(m, include_input=True, include_output=True)
    sizes = [5, 7, 6, 4]
    assert g.num_nodes == sum(sizes) and g.layer_names == ["input", "0", "2", "4"]
    assert g.layer.tolist() == sum(([i] * s for i, s in enumerate(sizes)), [])
    assert g.neuron.tolist() == sum((list(range(s)) for s in sizes), [])
    expect = np.zeros((22, 22))
    off = np.cumsum([0] + sizes)
    for i, lin in enumerate([m[0], m[2], m[4]]):
        w = np.abs(lin.weight.detach().double().numpy())  # [out, in]
        expect[off[i]:off[i + 1], off[i + 1]:off[i + 2]] = w.T
    expect = expect + expect.T
    np.testing.assert_allclose(_dense(g), expect, rtol=1e-6)
    # Hidden neurons only by default.
    g2 = dg.neurons.neuron_graph(m)
    assert g2.layer_names == ["0", "2"] and g2.num_nodes == 13
    np.testing.assert_allclose(_dense(g2), expect[5:18, 5:18], rtol=1e-6)


def _cnn(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Conv2d(3, 4, (3, 2)), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 2 * 3, 5))
    with torch.no_grad():  # a BN with non-trivial statistics
        m[1].weight.uniform_(-2, 2)
        m[1].running_var.uniform_(0.5, 3)
        m[1].running_mean.uniform_(-1, 1)
    return m.eval()


@pytest.mark.parametrize("norm", ["l1", "max_col_sum", "l2"])
def test_conv_kernel_norms_and_bn_folding(norm):
    m = _cnn()
    g = dg.neurons.neuron_graph(m, norm=norm, include_input=True, include_output=True,
                                input_shape=(2, 8, 8))
    a = _dense(g)
    sizes = [2, 3, 4, 5]
    off = np.cumsum([0] + sizes)

    def red(k):  # one kernel [kh, kw] -> a number, by numpy
        k = np.abs(k)
        if norm == "l1":
            return k.sum()
        if norm == "l2":
            return np.sqrt((k ** 2).sum())
        return np.linalg.norm(k, 1)  # the max column sum

    w1 = m[0].weight.detach().double().numpy()
    bn = m[1]
    scale = np.abs((bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy())
    e1 = np.array([[red(w1[o, i]) for i in range(2)] for o in range(3)]) * scale[:, None]
    w2 = m[4].weight.detach().double().numpy()
    e2 = np.array([[red(w2[o, i]) for i in range(3)] for o in range(4)])
    # The Linear reads the 4 x (2 x 3) map: each channel is a 2 x 3 block of columns.
    w3 = m[7].weight.detach().double().numpy().reshape(5, 4, 2, 3)
    e3 = np.array([[red(w3[o, i]) for i in range(4)] for o in range(5)])
    for i, e in enumerate([e1, e2, e3]):
        np.testing.assert_allclose(a[off[i + 1]:off[i + 2], off[i]:off[i + 1]], e, rtol=1e-5)
        np.testing.assert_allclose(a[off[i]:off[i + 1], off[i + 1]:off[i + 2]], e.T, rtol=1e-5)
    # No BN folding: the first block is the plain kernel norms.
    g2 = dg.neurons.neuron_graph(m, norm=norm, include_input=True, fold_bn=False,
                                 input_shape=(2, 8, 8))
    np.testing.assert_allclose(_dense(g2)[2:5, 0:2], e1 / scale[:, None], rtol=1e-5)


def test_grouped_conv_is_block_sparse():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(),
                      nn.Conv2d(4, 2, 1))
    g = dg.neurons.neuron_graph(m)
    a = _dense(g)[4:8, 0:4]  # rows: second conv's channels, cols: first conv's channels
    w = np.abs(m[2].weight.detach().double().numpy()).sum((2, 3))  # [4, 2]
    expect = np.zeros((4, 4))
    expect[0:2, 0:2], expect[2:4, 2:4] = w[0:2], w[2:4]
    np.testing.assert_allclose(a, expect, rtol=1e-5)


def test_dead_and_isolated_neurons_are_removed_and_reported():
    m = _mlp(sizes=(5, 7, 6, 4))
    with torch.no_grad():
        m[0].weight[2] = 0.0          # layer '0' neuron 2: no incoming weight -> dead
        m[2].weight[:, 4] = 0.0       # layer '0' neuron 4: no outgoing weight -> isolated
        m[2].weight[3] = 0.0          # layer '2' neuron 3: no incoming weight -> dead
    g = dg.neurons.neuron_graph(m)
    assert g.removed["0"] == {"dead": [2], "isolated": [4]}
    assert g.removed["2"] == {"dead": [3], "isolated": []}
    assert g.n_removed == 3 and g.num_nodes == 13 - 3
    keep0 = [i for i in range(7) if i not in (2, 4)]
    keep2 = [i for i in range(6) if i != 3]
    assert g.neuron.tolist() == keep0 + keep2
    w = np.abs(m[2].weight.detach().double().numpy())[np.ix_(keep2, keep0)]
    np.testing.assert_allclose(_dense(g)[len(keep0):, :len(keep0)], w, rtol=1e-6)
    # Kept, but still reported, with remove_dead=False.
    g_all = dg.neurons.neuron_graph(m, remove_dead=False)
    assert g_all.num_nodes == 13 and g_all.removed["0"]["dead"] == [2]


def test_relu_dead_neurons_found_from_data():
    m = _mlp(sizes=(5, 7, 6, 4))
    with torch.no_grad():
        m[0].bias[1] = -1e3  # never active
    ds = TensorDataset(torch.randn(50, 5), torch.arange(50) % 4)
    g = dg.neurons.neuron_graph(m, loader=DataLoader(ds, batch_size=16), progress=False)
    assert g.removed["0"]["dead"] == [1]
    assert 1 not in g.neuron[g.layer == 0].tolist()


def test_rank_average_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (40, 6), generator=g).float()  # many ties
    x[:, 5] = 1.0  # a constant column
    ours = dg.neurons.rank_average(x).numpy()
    ref = np.stack([stats.rankdata(x[:, j].numpy()) for j in range(6)], 1)
    np.testing.assert_allclose(ours, ref)
    rho = dg.neurons.spearman_matrix(x[:, :5]).numpy()
    np.testing.assert_allclose(rho, stats.spearmanr(x[:, :5].numpy()).statistic, atol=1e-10)


def _manual_acts(m, x):
    a1 = torch.relu(m[0](x))
    a2 = torch.relu(m[2](a1))
    return torch.cat([a1, a2], 1)


def test_activation_graph_is_clipped_squared_spearman():
    stats = pytest.importorskip("scipy.stats")
    m = _mlp(seed=1, sizes=(5, 7, 6, 4))
    x = torch.randn(80, 5, generator=torch.Generator().manual_seed(1))
    ds = TensorDataset(x, torch.arange(80) % 4)
    dl = DataLoader(ds, batch_size=32)
    g = dg.neurons.neuron_graph(m, "activations", dl, progress=False)
    acts = _manual_acts(m, x).detach().numpy()
    const = acts.max(0) == acts.min(0)
    live = np.flatnonzero(~const)
    rho = stats.spearmanr(acts[:, live]).statistic
    expect = np.clip(rho ** 2, 0, 1)
    np.fill_diagonal(expect, 0.0)
    assert g.num_nodes == live.size
    assert sum(len(v["dead"]) for v in g.removed.values()) == int(const.sum())
    np.testing.assert_allclose(_dense(g), expect, atol=1e-6)
    # Pair selections.
    lay = np.array([0] * 7 + [1] * 6)[live]
    same = lay[:, None] == lay[None, :]
    gw = dg.neurons.neuron_graph(m, "activations", dl, pairs="within", progress=False)
    np.testing.assert_allclose(_dense(gw), np.where(same, expect, 0), atol=1e-6)
    ga = dg.neurons.neuron_graph(m, "activations", dl, pairs="across", progress=False, chunk_size=3)
    np.testing.assert_allclose(_dense(ga), np.where(same, 0, expect), atol=1e-6)


def test_activation_graph_of_a_bn_cnn_has_one_node_per_channel():
    torch.manual_seed(0)
    m = dg.zoo.DigitsCNN(channels=(4, 6, 8), pool_after=(1,))
    dl = DataLoader(dg.zoo.digits_dataset("test"), batch_size=128)
    g = dg.neurons.neuron_graph(m, "activations", dl, progress=False)
    assert sum(g.layer_sizes) == 4 + 6 + 8
    assert g.num_nodes + g.n_removed == 18
    assert bool((g.layer[1:] >= g.layer[:-1]).all())  # ordered layer by layer
    assert list(g.points.values()) == ["features.2", "features.5", "features.9"]  # the ReLUs
    w = g.edge_weight
    assert float(w.min()) > 0 and float(w.max()) <= 1
    assert bool((g.edge_index[0] != g.edge_index[1]).all())


def test_neuron_graph_rejects_bad_input():
    m = _mlp()
    with pytest.raises(ValueError, match="source"):
        dg.neurons.neuron_graph(m, source="gradients")
    with pytest.raises(ValueError, match="loader"):
        dg.neurons.neuron_graph(m, source="activations")
    with pytest.raises(ValueError, match="norm"):
        dg.neurons.neuron_graph(m, norm="l7")
    with pytest.raises(ValueError, match="unknown layer 'fc9'"):
        dg.neurons.neuron_graph(m, layers=["fc9"])
    with pytest.raises(ValueError, match="consecutive"):
        dg.neurons.neuron_graph(m, layers=["0", "4"])
    with pytest.raises(TypeError, match="model"):
        dg.neurons.neuron_graph("not a model")
    with pytest.raises(ValueError, match="no nn.Linear"):
        dg.neurons.neuron_graph(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="min_weight"):
        dg.neurons.neuron_graph(m, min_weight=-1.0)
    with pytest.raises(TypeError, match="loader"):
        dg.neurons.neuron_graph(m, loader=3)
    with pytest.raises(ValueError, match="include_input=True or include_output=True"):
        dg.neurons.neuron_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    bad = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="sequential chain"):
        dg.neurons.neuron_graph(bad)


class _SharedRelu(nn.Module):
    """Like a ResNet BasicBlock: one ReLU module called twice in forward, and a skip."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = self.relu(self.fc1(x))
        h = self.relu(self.fc2(h) + h)
        return self.out(h)


def test_activation_module_run_twice_asks_for_pre_activations():
    m = _SharedRelu()
    ds = TensorDataset(torch.randn(40, 4), torch.arange(40) % 2)
    dl = DataLoader(ds, batch_size=20)
    with pytest.raises(ValueError, match="point='pre'"):
        dg.neurons.neuron_graph(m, "activations", dl, progress=False)
    assert sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules()) == 0
    assert m.training  # its mode is back after the error
    g = dg.neurons.neuron_graph(m, "activations", dl, point="pre", progress=False)
    assert g.points == {"fc1": "fc1", "fc2": "fc2"} and g.num_nodes == 12
    # A skip that bypasses the lesioned layer (around fc2) makes lesions repeat the inputs; a
    # skip that starts after it (fc1's output) still allows repeating at the layer.
    runner = dg.neurons.LesionRunner(m, dl)
    masks = torch.ones(3, 6)
    masks[1, :2] = 0
    masks[2, 3:] = 0
    x, y = ds.tensors
    for name, mode in (("fc1", "hook"), ("fc2", "input")):
        correct = runner.correct(name, masks)
        assert runner._modes[name] == mode
        for i in range(3):
            mm = _SharedRelu()
            mm.load_state_dict(m.state_dict())
            with torch.no_grad():
                drop = (masks[i] == 0).nonzero().flatten()
                getattr(mm, name).weight[drop] = 0
                getattr(mm, name).bias[drop] = 0
            assert float(correct[i].sum()) == float((mm(x).argmax(1) == y).sum())
