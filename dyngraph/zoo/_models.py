"""Reference networks for the bundled data (small ones, and deliberately over-deep residual ones
for the pruning study), the CIFAR ResNet family (ResNet20/56/110), and the training entry points.

Training and evaluation share the one loop in :mod:`dyngraph.prune.finetune`.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .._io import CorruptFileError, PathLike, atomic_torch_save, run_environment, verify_payload
from .._validate import check_choice, check_positive_int
from ..prune._finetune import fit

CACHE_FORMAT = "dyngraph.train_cached/1"


class DigitsMLP(nn.Module):
    """An MLP ``64 → width × depth → classes`` (Linear + ReLU per hidden layer).

    Example:
        >>> import torch, dyngraph as dg
        >>> dg.zoo.DigitsMLP(depth=3)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, depth: int = 4, width: int = 128, in_features: int = 64,
                 num_classes: int = 10):
        super().__init__()
        check_positive_int(depth, "depth")
        layers: List[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsCNN(nn.Module):
    """A VGG-style CNN for 8×8 digits: conv(3×3)+BN+ReLU stages with max-pooling, then a linear
    classifier. ``default_layers`` picks every conv, as for VGG in the reference.

    Example:
        >>> import torch, dyngraph as dg
        >>> m = dg.zoo.DigitsCNN()
        >>> m(torch.zeros(2, 1, 8, 8)).shape, len(dg.default_layers(m))
        (torch.Size([2, 10]), 6)
    """

    def __init__(self, channels: Sequence[int] = (16, 16, 32, 32, 64, 64),
                 pool_after: Sequence[int] = (1, 3), num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        layers: List[nn.Module] = []
        c_in, side = in_channels, 8
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            c_in = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SignalCNN(nn.Module):
    """A VGG-style 1-D CNN for MNIST-1D signals ``[B, 1, 40]``: conv(5)+BN+ReLU layers with
    max-pooling, global average pooling, then a linear classifier.

    Example:
        >>> import torch, dyngraph as dg
        >>> m = dg.zoo.SignalCNN()
        >>> m(torch.zeros(2, 1, 40)).shape, len(dg.default_layers(m))
        (torch.Size([2, 10]), 6)
    """

    def __init__(self, channels: Sequence[int] = (32, 32, 64, 64, 128, 128),
                 pool_after: Sequence[int] = (1, 3), num_classes: int = 10, in_channels: int = 1,
                 kernel_size: int = 5):
        super().__init__()
        layers: List[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            layers += [nn.Conv1d(c_in, c, kernel_size, padding=kernel_size // 2, bias=False),
                       nn.BatchNorm1d(c), nn.ReLU()]
            if i in pool_after:
                layers.append(nn.MaxPool1d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                                        nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _kaiming_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


class PadShortcut(nn.Module):
    """Option-A shortcut of the CIFAR ResNets: parameter-free strided subsampling plus zero
    channels on both sides (``c_in → c_out``). A module rather than a lambda, so models pickle.

    Example:
        >>> import torch, dyngraph as dg
        >>> dg.zoo.PadShortcut(16, 32, stride=2)(torch.ones(1, 16, 8, 8)).shape
        torch.Size([1, 32, 4, 4])
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 2):
        super().__init__()
        if c_out < c_in:
            raise ValueError(f"PadShortcut cannot shrink channels: c_in={c_in}, c_out={c_out}")
        self.c_in, self.c_out, self.stride = c_in, c_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[(slice(None), slice(None)) + (slice(None, None, self.stride),) * (x.dim() - 2)]
        extra = self.c_out - self.c_in
        return F.pad(x, [0, 0] * (x.dim() - 2) + [extra // 2, extra - extra // 2])

    def extra_repr(self) -> str:
        return f"{self.c_in}, {self.c_out}, stride={self.stride}"


class CifarBasicBlock(nn.Module):
    """The CIFAR ResNet basic block (He et al. 2016, Sec. 4.2): two 3×3 conv+BN, ReLU after the
    sum. ``option='A'``: zero-padding identity shortcut at a change of shape (the paper's choice,
    no parameters); ``'B'``: 1×1 conv + BN projection there."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1, option: str = "A"):
        super().__init__()
        check_choice(option, "option", ("A", "B"))
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = (PadShortcut(c_in, c_out, stride) if option == "A" else
                             nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                           nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR-10 ResNet family (ResNet20/32/44/56/110): a 3×3 stem, three stages of basic
    blocks with 16/32/64 channels (strides 1/2/2), global average pooling and a linear layer.

    Module names follow the common reference code (``conv1``, ``layer1.0``, ..., ``linear``), so a
    block is pruned as ``dg.prune.prune_layers(model, ['layer1.3'])``. With ``option='A'``
    ResNet56 has 0.85M parameters and, pruned to [2, 3, 6] blocks, loses 42.9% of its parameters
    and 60.2% of its FLOPs (the paper reports 43.0% and 60.3%).

    Args:
        blocks: Blocks per stage, e.g. ``(9, 9, 9)`` for ResNet56.
        num_classes: Output classes.
        option: Shortcut at a change of shape, ``'A'`` (zero padding) or ``'B'`` (projection).
        in_channels: Input channels (3 for CIFAR, 1 for the bundled digits).
        widths: Channels per stage.

    Example:
        >>> import torch, dyngraph as dg
        >>> m = dg.zoo.resnet20()
        >>> m(torch.zeros(2, 3, 32, 32)).shape, sum(p.numel() for p in m.parameters())
        (torch.Size([2, 10]), 269722)
    """

    def __init__(self, blocks: Sequence[int] = (9, 9, 9), num_classes: int = 10,
                 option: str = "A", in_channels: int = 3, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(f"blocks and widths need one entry per stage, got blocks={blocks!r}, "
                             f"widths={widths!r}")
        for b in blocks:
            check_positive_int(b, "blocks[i]")
        check_positive_int(num_classes, "num_classes")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            stage = [CifarBasicBlock(c if j == 0 else w, w, stride if j == 0 else 1, option)
                     for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            c = w
        self.num_stages = len(blocks)
        self.linear = nn.Linear(c, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        return self.linear(out.mean((2, 3)))


def cifar_resnet(depth: int = 56, num_classes: int = 10, option: str = "A",
                 in_channels: int = 3) -> CifarResNet:
    """ResNet-``depth`` for CIFAR (``depth = 6n + 2``: 20, 32, 44, 56, 110, ...).

    Example:
        >>> import dyngraph as dg
        >>> [len(getattr(dg.zoo.cifar_resnet(56), f'layer{i}')) for i in (1, 2, 3)]
        [9, 9, 9]
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got "
                         f"depth={depth!r}")
    n = (depth - 2) // 6
    return CifarResNet((n, n, n), num_classes, option, in_channels)


def resnet20(num_classes: int = 10, option: str = "A", in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet20 (3 blocks per stage, 0.27M parameters with option A).

    Args:
        num_classes: Output classes (default 10).
        option: Shortcut at a change of shape, ``'A'`` (zero padding, default) or ``'B'``
            (1×1 conv projection).
        in_channels: Input channels (default 3); inputs ``[B, in_channels, H, W]``, e.g.
            ``[B, 3, 32, 32]``, give logits ``[B, num_classes]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> m = dg.zoo.resnet20()
        >>> m(torch.zeros(2, 3, 32, 32)).shape, sum(p.numel() for p in m.parameters())
        (torch.Size([2, 10]), 269722)
    """
    return cifar_resnet(20, num_classes, option, in_channels)


def resnet56(num_classes: int = 10, option: str = "A", in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet56 (9 blocks per stage, 0.85M parameters with option A).

    Args:
        num_classes: Output classes (default 10).
        option: Shortcut at a change of shape, ``'A'`` (zero padding, default) or ``'B'``
            (1×1 conv projection).
        in_channels: Input channels (default 3); inputs ``[B, in_channels, H, W]`` give logits
            ``[B, num_classes]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> m = dg.zoo.resnet56(num_classes=100)
        >>> len(dg.capture.residual_blocks(m)), m(torch.zeros(1, 3, 8, 8)).shape
        (27, torch.Size([1, 100]))
    """
    return cifar_resnet(56, num_classes, option, in_channels)


def resnet110(num_classes: int = 10, option: str = "A", in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet110 (18 blocks per stage, 1.7M parameters with option A).

    Args:
        num_classes: Output classes (default 10).
        option: Shortcut at a change of shape, ``'A'`` (zero padding, default) or ``'B'``
            (1×1 conv projection).
        in_channels: Input channels (default 3); inputs ``[B, in_channels, H, W]`` give logits
            ``[B, num_classes]``.

    Example:
        >>> import dyngraph as dg
        >>> m = dg.zoo.resnet110(in_channels=1)
        >>> [len(getattr(m, f'layer{i}')) for i in (1, 2, 3)], m.conv1.in_channels
        ([18, 18, 18], 1)
    """
    return cifar_resnet(110, num_classes, option, in_channels)


class SignalBlock(nn.Module):
    """A 1-D residual basic block: two conv(k)+BN, ReLU after the sum, and a 1×1 conv + BN
    projection shortcut where the shape changes (an empty ``Sequential`` otherwise)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel_size, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel_size, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm1d(c_out))

    forward = CifarBasicBlock.forward  # the same residual sum, on 1-D maps


class SignalResNet(nn.Module):
    """A deliberately over-deep residual 1-D CNN for MNIST-1D ``[B, 1, 40]``: a conv(5) stem,
    stages of :class:`SignalBlock` (strides 1, 2, 2, ...), global average pooling, a linear layer.

    The default ``blocks=(4, 4, 4)`` with 16/32/64 channels gives 12 residual blocks (25 conv
    layers, 0.13M parameters), far deeper than MNIST-1D needs (the 6-conv :class:`SignalCNN`
    reaches about the same accuracy), which is what a layer-pruning study needs, and it trains in
    minutes on a CPU. ``default_layers`` picks the stem conv and every block.

    Example:
        >>> import torch, dyngraph as dg
        >>> m = dg.zoo.SignalResNet()
        >>> m(torch.zeros(2, 1, 40)).shape, len(dg.default_layers(m))
        (torch.Size([2, 10]), 13)
    """

    def __init__(self, blocks: Sequence[int] = (4, 4, 4), widths: Sequence[int] = (16, 32, 64),
                 num_classes: int = 10, in_channels: int = 1, kernel_size: int = 3):
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(f"blocks and widths need one entry per stage, got blocks={blocks!r}, "
                             f"widths={widths!r}")
        self.stem = nn.Sequential(nn.Conv1d(in_channels, widths[0], 5, 1, 2, bias=False),
                                  nn.BatchNorm1d(widths[0]), nn.ReLU())
        c = widths[0]
        stages = []
        for i, (n, w) in enumerate(zip(blocks, widths)):
            check_positive_int(n, "blocks[i]")
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[SignalBlock(c if j == 0 else w, w,
                                                      stride if j == 0 else 1, kernel_size)
                                          for j in range(n)]))
            c = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, num_classes))
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


#: Reference architectures per bundled example: ``{example: {arch: (class, kwargs)}}``.
#: ``'resnet'`` and ``'deep-mlp'`` are the deliberately over-deep networks of the pruning study.
ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    "digits": {"mlp": (DigitsMLP, {}), "cnn": (DigitsCNN, {}),
               "resnet": (CifarResNet, {"blocks": (4, 4, 4), "in_channels": 1}),
               "deep-mlp": (DigitsMLP, {"depth": 12})},
    "mnist1d": {"mlp": (DigitsMLP, {"in_features": 40, "width": 256}), "cnn": (SignalCNN, {}),
                "resnet": (SignalResNet, {}),
                "deep-mlp": (DigitsMLP, {"depth": 12, "in_features": 40, "width": 256})},
}


def build_model(arch: str, example: str = "digits", **kw) -> nn.Module:
    """A reference architecture (``'mlp'``, ``'cnn'``, ``'resnet'``, ``'deep-mlp'``) for a bundled
    example, with keyword overrides.

    Example:
        >>> import dyngraph as dg
        >>> type(dg.zoo.build_model('cnn', 'mnist1d')).__name__
        'SignalCNN'
    """
    check_choice(example, "example", tuple(ARCHITECTURES))
    check_choice(arch, "arch", tuple(ARCHITECTURES[example]))
    cls, defaults = ARCHITECTURES[example][arch]
    return cls(**{**defaults, **kw})


def train_classifier(model: nn.Module, train_loader, epochs: int = 30, lr: float = 3e-3,
                     weight_decay: float = 5e-4, val_loader=None,
                     device: Optional[torch.device] = None, seed: int = 0,
                     progress: bool = True, checkpoint: Optional[PathLike] = None,
                     **kw) -> Dict[str, Any]:
    """Trains from scratch: AdamW with a cosine schedule and cross-entropy, via the shared loop
    :func:`dyngraph.prune.fit`; returns its per-epoch history (``'loss'``, ``'val_acc'``, ...).

    Example:
        >>> import dyngraph as dg
        >>> train, test = dg.zoo.example_loaders('digits')
        >>> m = dg.zoo.DigitsMLP(depth=2)
        >>> h = dg.zoo.train_classifier(m, train, epochs=2, progress=False)
        >>> len(h['loss'])
        2
    """
    return fit(model, train_loader, val_loader, epochs, optimizer="adamw", lr=lr,
               weight_decay=weight_decay, device=device, seed=seed, checkpoint=checkpoint,
               progress=progress, desc=kw.pop("desc", "train"), **kw)


def train_cached(model: nn.Module, train_loader, path: PathLike, epochs: int = 30, *,
                 seed: int = 0, progress: bool = True, info: Optional[Dict[str, Any]] = None,
                 device: Optional[torch.device] = None, **train_kw) -> Dict[str, Any]:
    """Trains ``model`` once and caches it: when ``path`` exists, its weights are loaded
    instead (a finished training run is reused, never repeated); otherwise
    :func:`train_classifier` runs and ``{'model': state_dict, 'info': info}`` is written
    atomically with a checksum of its contents and the environment (thread count, torch
    version), so an interrupted run leaves no half-written file.

    A cached file that is corrupt (unreadable, or a byte changed) is a cache miss: it is moved
    aside to ``<path>.corrupt`` (never deleted) with a warning and the model is trained again.
    A file of an older dyngraph (no checksum) is used with a warning; a readable file that is
    not a cached run is an error.

    Args:
        model: The freshly built network (trained or loaded in place).
        train_loader: Training batches.
        path: File of the cached run (include the seed and epochs in its name).
        epochs, seed, progress, device, **train_kw: Passed to :func:`train_classifier` (e.g.
            ``checkpoint=`` for a per-epoch file that lets an interrupted training resume).
        info: Facts about the run to store with the weights (e.g. the architecture).

    Returns:
        ``info`` updated with ``epochs`` and ``final_loss`` after training, or with what the
        file stored plus ``reused_checkpoint`` when it was reused.

    Example:
        >>> import tempfile, dyngraph as dg
        >>> train, _ = dg.zoo.example_loaders('digits')
        >>> path = tempfile.mkdtemp() + '/mlp.pt'
        >>> dg.zoo.train_cached(dg.zoo.DigitsMLP(depth=2), train, path, 1,
        ...                        progress=False)['epochs']
        1
        >>> 'reused_checkpoint' in dg.zoo.train_cached(dg.zoo.DigitsMLP(depth=2), train,
        ...                                               path, 1, progress=False)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    check_positive_int(epochs, "epochs")
    info = dict(info or {})
    ckpt = Path(path)
    if ckpt.exists():
        state = _read_cached(ckpt, device)
        if state is not None:
            model.load_state_dict(state["model"])
            info.update(state["info"])
            info["reused_checkpoint"] = str(ckpt)
            return info
    hist = train_classifier(model, train_loader, epochs=epochs, seed=seed, progress=progress,
                            device=device, **train_kw)
    info.update({"epochs": epochs, "final_loss": hist["loss"][-1]})
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"format": CACHE_FORMAT, "model": model.state_dict(), "info": info,
                       "environment": run_environment()}, ckpt, checksum=True)
    return info


def _read_cached(ckpt: Path, device: Optional[torch.device]) -> Optional[Dict[str, Any]]:
    """The cached run in ``ckpt``, or ``None`` after moving a corrupt file aside (with a
    warning) so that it is rebuilt; a readable file that is not a cached run is an error."""
    try:
        state = torch.load(ckpt, map_location=device, weights_only=True)
    except Exception as exc:
        _set_aside(ckpt, f"it cannot be read ({type(exc).__name__})")
        return None
    if isinstance(state, dict) and state.get("format") == CACHE_FORMAT:
        try:
            state = verify_payload(state, ckpt, required=True)
        except CorruptFileError:
            _set_aside(ckpt, "its weights do not match their checksum")
            return None
        if isinstance(state.get("model"), dict) and isinstance(state.get("info"), dict):
            return state
        _set_aside(ckpt, "its entries are damaged")
        return None
    if isinstance(state, dict) and set(state) == {"model", "info"}:  # before checksums
        warnings.warn(f"cached model {str(ckpt)!r} has no checksum (an older dyngraph): its "
                      f"weights are used unverified; delete it to retrain", UserWarning,
                      stacklevel=3)
        return state
    raise ValueError(f"path {str(ckpt)!r} is not a train_cached file (expected the keys "
                     f"'model' and 'info'); delete it to retrain")


def _set_aside(ckpt: Path, why: str) -> None:
    """Moves a corrupt cache file to ``<name>.corrupt[-N]`` (never deleted) and warns."""
    dest = ckpt.with_name(ckpt.name + ".corrupt")
    n = 1
    while dest.exists():
        dest = ckpt.with_name(f"{ckpt.name}.corrupt-{n}")
        n += 1
    os.replace(ckpt, dest)
    warnings.warn(f"cached model {str(ckpt)!r} is corrupt ({why}): it was moved to "
                  f"{str(dest)!r} and the model is trained again", UserWarning, stacklevel=4)


__all__ = ["ARCHITECTURES", "CifarBasicBlock", "CifarResNet", "DigitsCNN", "DigitsMLP",
           "PadShortcut", "SignalBlock", "SignalCNN", "SignalResNet", "build_model",
           "cifar_resnet", "resnet110", "resnet20", "resnet56", "train_cached",
           "train_classifier"]
