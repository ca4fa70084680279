"""The seed paper's hook points and pruned networks, pinned without the authors' code.

The lists below are copied from the authors' repository (yaolu-zjut/Dynamic-Graphs-Construction,
``utils/design_for_hook.py`` ``cfgs`` and ``model/diy_cvgg.py``). ``benchmarks/authors_check.py``
runs their own code against dyngraph; these tests keep the layouts it checked from drifting
(docs/reproducing.md).
"""
import pytest
import torch
from torch import nn

import dyngraph as dg

vgg = pytest.importorskip("torchvision.models.vgg")

# their hook list for VGG19-BN (every Conv2d, before BN and ReLU) and for their 6-conv-pruned VGG19
THEIR_VGG19_HOOKS = ["features.0", "features.3", "features.7", "features.10", "features.14",
                     "features.17", "features.20", "features.23", "features.27", "features.30",
                     "features.33", "features.36", "features.40", "features.43", "features.46",
                     "features.49"]
THEIR_VGG19_6_HOOKS = ["features.0", "features.3", "features.7", "features.10", "features.14",
                       "features.17", "features.20", "features.23", "features.27", "features.31"]
VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"]
VGG19_6 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, "M", 512, "M"]  # their 'A'


class CifarVGG(nn.Module):
    """Their CIFAR VGG layout: BN conv stack, flatten, linear classifier on 512 features."""

    def __init__(self, cfg):
        super().__init__()
        self.features = vgg.make_layers(cfg, batch_norm=True)
        self.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(True), nn.Linear(512, 10))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def test_default_layers_are_their_hook_points():
    assert dg.default_layers(CifarVGG(VGG19)) == THEIR_VGG19_HOOKS
    blocks = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(9)]
    assert dg.default_layers(dg.zoo.resnet56()) == ["conv1"] + blocks  # stem conv, every block


def test_vgg19_without_six_convs_is_their_cvgg19_6():
    torch.manual_seed(0)
    full = CifarVGG(VGG19)
    drop = [f"features.{i}" for i in (30, 33, 36, 43, 46, 49)]  # convs 2-4 of stages 4 and 5
    pruned = dg.prune.prune_layers(full, drop, example_input=torch.zeros(1, 3, 32, 32))
    theirs = CifarVGG(VGG19_6)
    a, b = pruned.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert dg.default_layers(pruned) == THEIR_VGG19_6_HOOKS
    theirs.load_state_dict(a)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pruned.eval(), theirs.eval()
    assert torch.equal(pruned(x), theirs(x))
