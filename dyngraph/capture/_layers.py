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
    names = []
    for name, mod in model.named_modules():
        if not name:
            continue
        if leaves_only and next(mod.children(), None) is not None:
            continue
        if types is not None and not isinstance(mod, types):
            continue
        names.append(name)
    return names


def _is_block(mod: nn.Module) -> bool:
    if next(mod.children(), None) is None or isinstance(mod, (nn.Sequential, nn.ModuleList)):
        return False
    has_weights = any(isinstance(m, CONVS + (nn.Linear,)) for m in mod.modules())
    named = bool(_BLOCK_NAME.search(type(mod).__name__)) or any(hasattr(mod, a)
                                                                 for a in _BLOCK_ATTRS)
    return has_weights and named


def residual_blocks(model: nn.Module) -> List[str]:
    """Names of residual blocks: block-like modules that sit directly in an ``nn.Sequential`` stage
    (torchvision ResNets, CIFAR ResNet20/56/110, and user classes built the same way)."""
    blocks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Sequential, nn.ModuleList)):
            for child_name, child in mod.named_children():
                if _is_block(child):
                    blocks.append(f"{name}.{child_name}" if name else child_name)
    # Outermost blocks only (a block nested in another block's Sequential is part of it).
    return [b for b in blocks if not any(b.startswith(o + ".") for o in blocks if o != b)]


def _activation_after(model: nn.Module, name: str) -> Optional[str]:
    """The activation module that follows ``name`` in registration order (skipping norm/dropout)."""
    leaves = [(n, m) for n, m in model.named_modules() if n and next(m.children(), None) is None]
    pos = next((i for i, (n, _) in enumerate(leaves) if n == name), None)
    if pos is None:  # a container (e.g. a block): its output is already what it returns
        return None
    found = None
    for n, m in leaves[pos + 1:]:
        if isinstance(m, ACTIVATIONS):
            found = n
            break
        if not isinstance(m, PASSTHROUGH):
            break
    return found


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
        >>> from dyngraph.capture._layers import block_stack
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


def default_layers(model: nn.Module, point: str = "pre") -> List[str]:
    """The preset hook points of the reference paper, or a sensible choice for other models.

    * ResNet-like (residual blocks found): the stem conv, then every residual block's output.
    * VGG-like (convolutions, no blocks): every convolution.
    * MLP-like: every ``nn.Linear``.
    * Anything else: every top-level child that has parameters.

    Args:
        model: The network.
        point: ``'pre'``: the layer's own output (for a conv, before BN and ReLU — the reference);
            ``'post'``: the activation module that follows it (after BN and ReLU), where one
            exists. Block outputs are the same for both.

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
    """
    check_model(model)
    check_choice(point, "point", ("pre", "post"))
    blocks = residual_blocks(model)
    if blocks:
        inside = tuple(b + "." for b in blocks)
        stem = [n for n in list_layers(model, CONVS) if not n.startswith(inside)][:1]
        base = stem + blocks
    else:
        base = list_layers(model, CONVS) or list_layers(model, nn.Linear)
        if not base:
            base = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    if not base:
        raise ValueError(f"default_layers found no layers in {type(model).__name__}; pass layer "
                         f"names (see dg.list_layers(model))")
    if point == "post":
        base = [_activation_after(model, n) or n for n in base]
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
    pairs: List[Tuple[Any, Any]]
    if isinstance(layers, dict):
        pairs = list(layers.items())
    else:
        pairs = [(n, n) for n in layers]
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
        alias = alias if isinstance(layers, dict) else spec
        if alias in out:
            raise ValueError(f"layer {alias!r} is listed twice")
        out[alias] = (name, where)
    return out
