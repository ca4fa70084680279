"""Layer discovery: names of a model's modules, the reference presets, and layer specs resolved
to hook points."""
from __future__ import annotations

import difflib
import re
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

from torch import nn

from .._validate import check_choice, check_model

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid,
               nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.PReLU, nn.SELU, nn.CELU, nn.Softplus,
               nn.GLU)
PASSTHROUGH = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
                nn.modules.instancenorm._InstanceNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                nn.Dropout3d, nn.Identity)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BLOCK_NAME = re.compile(r"(block|bottleneck|residual|resunit)", re.IGNORECASE)
_BLOCK_ATTRS = ("downsample", "shortcut", "skip", "residual")

LayerSpec = Union[None, str, Sequence[str], Dict[str, str], Type[nn.Module],
                  Tuple[Type[nn.Module], ...]]


# ---------------------------------------------------------------------------- discovery
def list_layers(model: nn.Module, types: Optional[Union[type, Tuple[type, ...]]] = None,
                leaves_only: bool = False) -> List[str]:
    """Dotted names of a model's submodules, in registration order.

    Args:
        model: Any ``nn.Module``.
        types: Keep only modules that are instances of these classes.
        leaves_only: Keep only modules without children.

    Returns:
        Names usable in ``extract_features(layers=...)``.

    Example:
        >>> import torch.nn as nn, dyngraph as dg
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> dg.list_layers(m, types=nn.Linear)
        ['0', '2']
    """
    check_model(model)
    return [name for name, mod in model.named_modules()
            if name and not (leaves_only and next(mod.children(), None) is not None)
            and (types is None or isinstance(mod, types))]


def _is_block(mod: nn.Module) -> bool:
    if next(mod.children(), None) is None or isinstance(mod, (nn.Sequential, nn.ModuleList)):
        return False
    has_weights = any(isinstance(m, CONVS + (nn.Linear,)) for m in mod.modules())
    named = bool(_BLOCK_NAME.search(type(mod).__name__)) or any(hasattr(mod, a)
                                                                 for a in _BLOCK_ATTRS)
    return has_weights and named


def residual_blocks(model: nn.Module) -> List[str]:
    """Names of residual blocks: block-like modules that sit directly in an ``nn.Sequential`` stage
    (torchvision ResNets, CIFAR ResNet20/56/110, and user classes built the same way).

    A block is a module with children, a conv or linear layer inside, and a block-like class name
    (containing ``block``, ``bottleneck``, ``residual`` or ``resunit``) or a ``downsample``,
    ``shortcut``, ``skip`` or ``residual`` attribute. Only the outermost blocks are listed.

    Args:
        model: Any ``nn.Module``.

    Returns:
        Dotted module names in registration order (``[]`` when there are none), usable in
        ``extract_features(layers=...)`` and ``dg.prune.prune_layers``.

    Example:
        >>> import dyngraph as dg
        >>> blocks = dg.capture.residual_blocks(dg.zoo.resnet20())
        >>> len(blocks), blocks[:2], blocks[-1]
        (9, ['layer1.0', 'layer1.1'], 'layer3.2')
    """
    blocks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Sequential, nn.ModuleList)):
            for child_name, child in mod.named_children():
                if _is_block(child):
                    blocks.append(f"{name}.{child_name}" if name else child_name)
    # Outermost blocks only (a block nested in another block's Sequential is part of it).
    return _outermost(blocks)


def _activation_after(model: nn.Module, name: str) -> Optional[str]:
    """The activation module that follows ``name`` in registration order (skipping norm/dropout)."""
    leaves = [(n, m) for n, m in model.named_modules() if n and next(m.children(), None) is None]
    pos = next((i for i, (n, _) in enumerate(leaves) if n == name), None)
    if pos is None:  # a container (e.g. a block): its output is already what it returns
        return None
    for n, m in leaves[pos + 1:]:
        if isinstance(m, ACTIVATIONS):
            return n
        if not isinstance(m, PASSTHROUGH):
            break
    return None


# Names of the block list in common libraries; they only break ties between equally long stacks
# (and let a one-block stack count): Hugging Face ``encoder.layer`` / ``model.layers`` /
# ``transformer.h`` / T5 ``block``, torchvision ViT and ``nn.TransformerEncoder`` ``layers``,
# timm ``blocks``, CLIP ``resblocks``.
_STACK_NAMES = ("layers", "layer", "h", "blocks", "block", "resblocks")
BlockStack = Union[nn.ModuleList, nn.Sequential]


def _stack_candidates(model: nn.Module) -> List[Tuple[str, BlockStack]]:
    """Every ``nn.ModuleList`` / ``nn.Sequential`` whose items are all instances of one block
    class (a module with children and parameters, not a bare container), outermost only."""
    found: List[Tuple[str, BlockStack]] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)):
            continue
        items = list(mod.children())
        if not items:
            continue
        cls = type(items[0])
        if cls in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
            continue
        if not all(type(m) is cls for m in items):
            continue
        if not all(next(m.children(), None) is not None and any(True for _ in m.parameters())
                   for m in items):
            continue
        if len(items) < 2 and name.rpartition(".")[2] not in _STACK_NAMES:
            continue
        found.append((name, mod))
    # A stack inside another stack's item (e.g. MoE experts inside a decoder layer) is not it.
    return [(n, m) for n, m in found
            if not any(o == "" or n.startswith(o + ".") for o, _ in found if o != n)]


def block_stack(model: nn.Module) -> Tuple[str, BlockStack]:
    """The list of repeated blocks that makes a network's depth, and its dotted path.

    The rule: among the ``nn.ModuleList`` / ``nn.Sequential`` containers whose items all have one
    block class (not nested in another such list), the longest; a tie goes to a conventional
    name (``layers``, ``layer``, ``h``, ``blocks``, ``block``, ``resblocks``), then to the first
    registered (the encoder of an encoder-decoder). This finds Hugging Face ``encoder.layer``
    (BERT, RoBERTa), ``transformer.h`` (GPT-2), ``model.layers`` (Llama, Mistral, Qwen),
    torchvision ViT ``encoder.layers`` and ``nn.TransformerEncoder`` ``layers``. For a network
    built in stages (ResNet, Swin) it is the longest stage.

    Args:
        model: The network.

    Returns:
        ``(path, blocks)``: the dotted module name (``''`` when ``model`` is itself the list) and
        the container; ``blocks[i]`` is block ``i`` in depth order.

    Raises:
        ValueError: when no such list exists.

    Example:
        >>> import torch.nn as nn
        >>> from dyngraph.capture import block_stack
        >>> enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), num_layers=3,
        ...                             enable_nested_tensor=False)
        >>> path, blocks = block_stack(enc)
        >>> path, len(blocks), type(blocks[0]).__name__
        ('layers', 3, 'TransformerEncoderLayer')
    """
    check_model(model)
    found = _stack_candidates(model)
    if not found:
        raise ValueError(f"block_stack found no stack of blocks in {type(model).__name__}: no "
                         f"nn.ModuleList or nn.Sequential whose items are all one block class; "
                         f"pass the layer names instead (see dg.list_layers(model))")
    order = {n: i for i, (n, _) in enumerate(found)}
    return max(found, key=lambda c: (len(c[1]), c[0].rpartition(".")[2] in _STACK_NAMES,
                                      -order[c[0]]))


# Block classes of torchvision's branchy and mobile CNNs, by class name (user classes of the same
# name are the same idea): GoogLeNet, Inception-v3, EfficientNet (v1, v2), MobileNetV2/V3 and
# ShuffleNetV2, MNASNet, DenseNet (dense blocks and transitions), ConvNeXt, RegNet, SqueezeNet.
KNOWN_BLOCKS = frozenset({
    "Inception", "InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "MBConv",
    "FusedMBConv", "InvertedResidual", "_InvertedResidual", "_DenseBlock", "_Transition",
    "CNBlock", "ResBottleneckBlock", "Fire"})
_AUX = re.compile(r"(^|\.)aux", re.IGNORECASE)  # aux1, AuxLogits: auxiliary classifiers


def _is_branchy(mod: nn.Module) -> bool:
    """A module whose children are parallel branches (``branch1``, ``branch3x3dbl_1``, ...): an
    Inception-style block whose output concatenates them."""
    if isinstance(mod, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    return sum(n.startswith("branch") for n, _ in mod.named_children()) >= 2


def _outermost(names: List[str]) -> List[str]:
    keep = set(names)
    return [n for n in names if not any(n.startswith(o + ".") for o in keep if o != n)]


def _cnn_blocks(model: nn.Module) -> List[str]:
    """Names of a CNN's blocks, outermost only, in registration order: torchvision's known block
    classes (:data:`KNOWN_BLOCKS`), Inception-style modules with parallel ``branch*`` children,
    and the residual blocks of :func:`residual_blocks`. Auxiliary heads (a name part starting
    with ``aux``) are left out: they do not feed the network's output."""
    found = set(residual_blocks(model))
    names = [name for name, mod in model.named_modules()
             if name and (name in found or type(mod).__name__ in KNOWN_BLOCKS or _is_branchy(mod))]
    return [n for n in _outermost(names) if not _AUX.search(n)]


def _has_attention(mod: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__
               for m in mod.modules())


def _transformer_blocks(model: nn.Module) -> List[str]:
    """Names of a transformer's blocks in depth order, or ``[]`` when the model is not one.

    The blocks are the items of :func:`block_stack` when they contain attention and no
    convolution, plus the items of the lists beside it (same parent, same block class): the
    stages of a hierarchical transformer (Swin ``features.1``, ``features.3``, ...). The decoder
    of an encoder-decoder has its own parent and is not added."""
    try:
        path, stack = block_stack(model)
    except ValueError:
        return []
    cls = type(stack[0])
    if not _has_attention(stack[0]) or any(isinstance(m, CONVS) for m in stack[0].modules()):
        return []
    parent = path.rpartition(".")[0]
    blocks = []
    for p, lst in model.named_modules():
        # the stack itself, and the lists beside it of the same block class (any length)
        beside = bool(path) and p not in (path, "") and p.rpartition(".")[0] == parent
        if p == path or (beside and isinstance(lst, (nn.ModuleList, nn.Sequential))
                         and len(lst) > 0 and all(type(m) is cls for m in lst.children())):
            prefix = p + "." if p else ""
            blocks += [prefix + n for n, _ in lst.named_children()]
    return blocks


def _unit_after(model: nn.Module, name: str, modules: Dict[str, nn.Module]) -> Optional[str]:
    """For a conv with no activation module after it: its parent when that is a conv unit (one
    conv plus norm/activation children, e.g. torchvision's ``BasicConv2d``, which applies ReLU
    in ``forward``), so the point is the unit's output (after norm and activation)."""
    parent = name.rpartition(".")[0]
    if "." not in name or not parent:
        return None
    mod = modules[parent]
    kids = list(mod.children())
    convs = sum(isinstance(m, CONVS) for m in mod.modules())
    if convs == 1 and all(isinstance(k, CONVS + PASSTHROUGH + ACTIVATIONS) for k in kids):
        return parent
    return None


def default_layers(model: nn.Module, point: str = "pre") -> List[str]:
    """The preset hook points of the reference paper, or a sensible choice for other models.

    In depth order:

    * Transformers (a :func:`block_stack` of blocks with attention and no convolution: Hugging
      Face BERT, RoBERTa, GPT-2, Llama/Mistral/Qwen, torchvision ViT and Swin,
      ``nn.TransformerEncoder``): the embedding output, as ``'<block 0>:input'`` (the hidden
      state entering block 0; Hugging Face's ``hidden_states[0]``), then every block's output.
      Swin lists the blocks of every stage.
    * CNNs built of blocks (residual blocks, torchvision's :data:`KNOWN_BLOCKS`, Inception
      modules with parallel ``branch*`` children): every block's output, and every convolution
      outside the blocks — the stem, any downsampling conv between stages, the head conv
      (ResNet: the stem conv and every residual block, the reference; GoogLeNet: 3 stem convs and
      9 Inception modules; EfficientNet-B0: stem, 16 MBConv blocks, head conv). Auxiliary
      classifiers are left out.
    * VGG-like (convolutions, no blocks): every convolution.
    * MLP-like: every ``nn.Linear``.
    * Anything else: every top-level child that has parameters.

    The order is registration order, which is the forward order of these networks.

    Args:
        model: The network.
        point: ``'pre'``: the layer's own output (for a conv, before BN and ReLU — the reference);
            ``'post'``: for a conv, the activation module that follows it (after BN and ReLU),
            or, where the activation is applied in ``forward``, the conv unit that wraps it
            (GoogLeNet's ``BasicConv2d``). Block outputs and the embedding are the same for
            both: a block's output is what it returns — after its final ReLU in ResNet and
            Inception modules, but linear in MobileNet/EfficientNet/ConvNeXt blocks and
            transformers, which have no post-activation point.

    Returns:
        Layer names in depth order. With ``point='post'``, a layer with no activation module after
        it keeps its own output; :func:`extract_features` records the points used in
        ``features.meta['points']``.

    Example:
        >>> import torch.nn as nn, dyngraph as dg
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        ...                   nn.Conv2d(4, 4, 3), nn.ReLU())
        >>> dg.default_layers(m), dg.default_layers(m, point='post')
        (['0', '3'], ['2', '4'])
        >>> enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), num_layers=2,
        ...                             enable_nested_tensor=False)
        >>> dg.default_layers(enc)
        ['layers.0:input', 'layers.0', 'layers.1']
    """
    check_model(model)
    check_choice(point, "point", ("pre", "post"))
    blocks = _transformer_blocks(model)
    if blocks:
        return [blocks[0] + ":input"] + blocks
    blocks = _cnn_blocks(model)
    if blocks:
        inside = tuple(b + "." for b in blocks)
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        convs = [n for n in list_layers(model, CONVS)
                 if not n.startswith(inside) and not _AUX.search(n)]
        base = sorted(convs + blocks, key=order.__getitem__)
    else:
        base = list_layers(model, CONVS) or list_layers(model, nn.Linear)
        if not base:
            base = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    if not base:
        raise ValueError(f"default_layers found no layers in {type(model).__name__}; pass layer "
                         f"names (see dg.list_layers(model))")
    if point == "post":
        modules = dict(model.named_modules())
        keep = set(blocks)
        base = [n if n in keep else (_activation_after(model, n) or _unit_after(model, n, modules)
                                     or n) for n in base]
    return base


# ---------------------------------------------------------------------------- extraction


def resolve_layers(model: nn.Module, layers: LayerSpec, allow_empty: bool = False
                    ) -> "OrderedDict[str, Tuple[str, str]]":
    """Returns ``{alias: (module name, 'output' | 'input')}``; the name ``''`` is the model
    itself (its output, or ``':input'`` its first input)."""
    if layers is None:
        layers = default_layers(model)
    if isinstance(layers, type) or (isinstance(layers, tuple) and layers
                                    and all(isinstance(t, type) for t in layers)):
        found = list_layers(model, layers)
        if not found:
            raise ValueError(f"layers={layers!r}: the model has no module of that type")
        layers = found
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (dict, list, tuple)):
        raise TypeError(f"layers must be a layer name, a list of names, a {{name: label}} dict, "
                        f"a module type or None, got {type(layers).__name__} {layers!r}")
    pairs: List[Tuple[Any, Any]] = (list(layers.items()) if isinstance(layers, dict)
                                    else [(n, n) for n in layers])
    if not pairs and not allow_empty:
        raise ValueError("layers is empty: choose at least one layer (see dg.list_layers(model) "
                         "or dg.default_layers(model))")
    modules = dict(model.named_modules())
    out: "OrderedDict[str, Tuple[str, str]]" = OrderedDict()
    for spec, alias in pairs:
        if not isinstance(spec, str):
            raise TypeError(f"layer names must be strings, got {type(spec).__name__}: {spec!r}")
        name, _, where = spec.partition(":")
        where = where or "output"
        if where not in ("output", "input"):
            raise ValueError(f"layer {spec!r}: the point after ':' must be 'input' or 'output'")
        if name not in modules:
            names = [n for n in modules if n]
            close = list(dict.fromkeys(
                difflib.get_close_matches(name, names, n=5, cutoff=0.6)
                + [n for n in names if name and (name in n or n in name)]))[:5]
            hint = f" Did you mean one of {close}?" if close else ""
            raise ValueError(f"unknown layer {name!r} in layers.{hint} See dg.list_layers(model) "
                             f"for the {len(modules) - 1} available names.")
        if alias in out:
            raise ValueError(f"layer {alias!r} is listed twice")
        out[alias] = (name, where)
    return out
