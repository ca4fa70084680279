"""The chain of weight layers of a network, seen as layers of neurons.

A *layer of neurons* is the output of one ``nn.Linear`` or ``nn.Conv{1,2,3}d`` (a conv channel is
one neuron), in registration order, which is the forward order for sequential networks (MLPs,
VGG-style CNNs, torchvision's VGG/AlexNet). For each one the helpers find

* ``unit``: the module whose output is the neuron's pre-activation value. This is the BatchNorm
  that directly follows the layer (skipping dropout/identity), or the layer itself. Masking this
  output is the same as zeroing the neuron's incoming weights and bias (with the BatchNorm folded).
* ``act``: the activation module after it (``ReLU``, ``GELU``, ...), whose output is the neuron's
  value when activations are measured, or ``None`` when the activation is functional.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._validate import check_model, model_device
from ..capture._extract import extract_features
from ..capture._layers import ACTIVATIONS, CONVS, PASSTHROUGH
from ..capture._taps import LayerTaps

WEIGHT_TYPES = (nn.Linear,) + CONVS
NORMS = ("l1", "max_col_sum", "l2")


@dataclass
class NeuronLayer:
    """One layer of neurons of a chain network (or the input, with ``module=None``)."""

    name: str                      # weight module name, or 'input'
    module: Optional[nn.Module]    # the Linear/Conv, None for the input
    size: int                      # number of neurons (out features / out channels)
    in_size: int                   # what it reads (in features / in channels)
    unit: Optional[str]            # module whose output is the pre-activation (BN or the layer)
    act: Optional[str]             # activation module after it, if any
    bn: Optional[nn.Module]        # BatchNorm folded into its incoming weights, if any


def weight_chain(model: nn.Module) -> List[NeuronLayer]:
    """Every Linear/Conv of ``model`` in registration order, with its BatchNorm and activation."""
    check_model(model)
    leaves = [(n, m) for n, m in model.named_modules() if n and next(m.children(), None) is None]
    if isinstance(model, WEIGHT_TYPES):  # a bare layer
        leaves = [("", model)]
    chain: List[NeuronLayer] = []
    for pos, (name, mod) in enumerate(leaves):
        if not isinstance(mod, WEIGHT_TYPES):
            continue
        size = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
        in_size = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
        bn, unit, act = None, name, None
        for n2, m2 in leaves[pos + 1:]:
            if isinstance(m2, nn.modules.batchnorm._BatchNorm) and bn is None and act is None:
                if m2.num_features == size:
                    bn, unit = m2, n2
                continue
            if isinstance(m2, ACTIVATIONS):
                act = n2
                break
            if not isinstance(m2, PASSTHROUGH):
                break
        chain.append(NeuronLayer(name, mod, size, in_size, unit, act, bn))
    if not chain:
        raise ValueError(f"model {type(model).__name__} has no nn.Linear or nn.Conv layer; a "
                         f"neuron graph needs weight layers")
    act_users = Counter(layer.act for layer in chain)
    for layer in chain:  # an activation module shared by several layers cannot be hooked
        if layer.act is not None and act_users[layer.act] > 1:
            layer.act = None
    return chain


def select_layers(chain: List[NeuronLayer], layers: Optional[Sequence[str]],
                  include_input: bool, include_output: bool) -> List[int]:
    """Positions in ``chain`` of the layers whose neurons become nodes (-1 stands for the input)."""
    names = [layer.name for layer in chain]
    if layers is None:  # the hidden layers (and the output), or a lone layer
        pos = list(range(len(chain) if include_output else len(chain) - 1)) or [0]
    else:
        if isinstance(layers, str):
            layers = [layers]
        pos = []
        for name in layers:
            if not isinstance(name, str):
                raise TypeError(f"layers must hold module names (str), got "
                                f"{type(name).__name__}: {name!r}")
            if name not in names:
                raise ValueError(f"unknown layer {name!r} in layers: the neuron layers of this "
                                 f"model are {names}")
            pos.append(names.index(name))
        if len(set(pos)) != len(pos):
            raise ValueError(f"layers lists a layer twice: {list(layers)}")
        if not pos:
            raise ValueError("layers is empty: choose at least one layer")
        pos = sorted(pos)
    if include_input:
        pos = [-1] + pos
    return pos


def input_layer(chain: List[NeuronLayer]) -> NeuronLayer:
    first = chain[0]
    return NeuronLayer("input", None, first.in_size, first.in_size, None, None, None)


# ----------------------------------------------------------------------------- weights
def bn_scale(bn: Any) -> Tensor:
    """``γ / sqrt(running_var + eps)`` per channel (γ = 1 without affine; var = 1 without stats)."""
    gamma = bn.weight.detach().float() if bn.weight is not None else None
    if bn.running_var is not None:
        denom = torch.sqrt(bn.running_var.detach().float() + bn.eps)
    else:
        denom = torch.ones(bn.num_features, device=gamma.device if gamma is not None else "cpu")
    return (gamma if gamma is not None else torch.ones_like(denom)) / denom


def _reduce_kernel(w: Tensor, norm: str) -> Tensor:
    """``[out, in, *kernel]`` → ``[out, in]`` by the chosen norm of each kernel."""
    if w.dim() == 2:
        return w.abs()
    a = w.abs()
    if norm == "l1":
        return a.flatten(2).sum(-1)
    if norm == "l2":
        return a.flatten(2).pow(2).sum(-1).sqrt()
    # max_col_sum: the kernel as a matrix [prod(k[:-1]), k[-1]]; the max over columns of the
    # column sums (the operator 1-norm). A 1-D kernel is one column, so this is its L1 norm.
    if w.dim() == 3:
        return a.sum(-1)
    return a.flatten(2, -2).sum(2).amax(-1)


def reduced_weights(layer: NeuronLayer, prev_size: int, norm: str = "l1", fold_bn: bool = True,
                    spatial: Optional[Tuple[int, ...]] = None) -> Tensor:
    """``|W|`` of ``layer`` reduced to ``[layer.size, prev_size]``: one number per neuron pair.

    A Linear that reads a flattened ``[prev_size, *spatial]`` map sees each previous channel as a
    block of ``S`` columns, which is reduced like a kernel of shape ``spatial`` (a square when
    ``spatial`` is unknown and ``S`` is a perfect square, else one column).
    """
    mod: Any = layer.module
    w = mod.weight.detach().float()
    linear = isinstance(mod, nn.Linear)
    n_in = w.shape[1] if linear else mod.in_channels
    if n_in != prev_size and not (linear and prev_size > 0 and n_in % prev_size == 0):
        raise ValueError(f"layer {layer.name!r} reads {n_in} {'features' if linear else 'channels'}"
                         f", which does not match the {prev_size} neurons of the layer before it; "
                         f"neuron graphs from weights need a sequential chain of layers")
    if linear and n_in == prev_size:
        a = w.abs()
    elif linear:  # a flattened [prev_size, *spatial] map
        s = n_in // prev_size
        if not spatial or math.prod(spatial) != s:
            side = math.isqrt(s)
            spatial = (side, side) if side * side == s else (s,)
        a = _reduce_kernel(w.reshape(w.shape[0], prev_size, *spatial), norm)
    elif mod.groups == 1:
        a = _reduce_kernel(w, norm)
    else:
        red = _reduce_kernel(w, norm)  # [out, in/groups]
        out_pg, in_pg = mod.out_channels // mod.groups, mod.in_channels // mod.groups
        a = torch.zeros(mod.out_channels, mod.in_channels, device=w.device, dtype=red.dtype)
        g = torch.arange(mod.out_channels, device=w.device) // out_pg
        cols = g.unsqueeze(1) * in_pg + torch.arange(in_pg, device=w.device)
        a.scatter_(1, cols, red)
    if fold_bn and layer.bn is not None:
        a = a * bn_scale(layer.bn).to(a.device).abs().unsqueeze(1)
    return a


def spatial_shapes(model: nn.Module, chain: List[NeuronLayer], example: Tensor
                    ) -> Dict[str, Tuple[int, ...]]:
    """For each weight layer, ``'<name>:input'`` → the spatial shape of the last feature map
    produced before it runs (for a Linear after a flatten: the map that was flattened).

    One forward pass through :class:`~dyngraph.capture.LayerTaps`: the inputs of the weight
    layers are tapped and every leaf module's output shape is recorded, with its place among the
    tapped inputs, by an edit that returns the output unchanged. A weight layer's own input
    counts when it is a map.
    """
    events: List[Tuple[int, Tuple[int, ...]]] = []  # (inputs tapped so far, spatial shape)

    def record(out: Tensor) -> Tensor:
        if isinstance(out, Tensor) and out.dim() > 2:
            events.append((len(taps.order), tuple(out.shape[2:])))
        return out

    leaves = [n for n, m in model.named_modules() if n and next(m.children(), None) is None]
    taps = LayerTaps(model, {f"{layer.name}:input": layer.name for layer in chain},
                     edits={n: record for n in leaves}, reduce=False, allow_repeat=True)
    with taps, torch.no_grad():
        model(example)
    order = taps.order
    shapes: Dict[str, Tuple[int, ...]] = {}
    for layer in chain:
        if layer.name in order:
            i = len(order) - 1 - order[::-1].index(layer.name)  # its last call
            x = taps.outputs[layer.name]
            before: List[Tuple[int, ...]] = [(), *(shape for pos, shape in events if pos <= i)]
            shapes[layer.name + ":input"] = tuple(x.shape[2:]) if x.dim() > 2 else before[-1]
    return shapes


# ----------------------------------------------------------------------------- activations
def layer_activations(model: nn.Module, loader: Any, layers: List[NeuronLayer], *,
                      point: str = "post", raw_input: bool = False,
                      per_class: Optional[int] = None, n_samples: Optional[int] = None,
                      seed: int = 0, device: Optional[Union[str, torch.device]] = None,
                      progress: bool = True
                      ) -> Tuple[Dict[str, Tensor], Optional[Tensor], Tensor, Dict[str, str]]:
    """Activations ``{layer name: [N, size]}`` over a loader: a conv channel is averaged over
    space. ``point='post'`` reads the activation module after the layer, ``'pre'`` the unit (BN or
    layer) output. Captured by :func:`dyngraph.capture.extract_features` (through
    :class:`~dyngraph.capture.LayerTaps`, the maps flattened), then reduced per channel.

    Returns ``(acts, raw_input [N, P] or None, y [N], points {layer: module read})``.
    """
    points: Dict[str, str] = {}
    for layer in layers:
        if layer.module is not None:  # the input layer (no unit) is read apart
            assert layer.unit is not None
            act = layer.act if point == "post" else None
            points[layer.name] = act if act is not None else layer.unit
    spec = {m: name for name, m in points.items()}
    if raw_input or any(lay.module is None for lay in layers):
        points["input"] = f"{weight_chain(model)[0].name}:input"
        spec[points["input"]] = "__input__"
    try:
        feats = extract_features(model, loader, layers=spec, per_class=per_class,
                                 n_samples=n_samples, seed=seed, pool=None, device=device,
                                 progress=progress)
    except ValueError as exc:
        if "times in one forward pass" in str(exc) and point == "post":
            raise ValueError(f"{exc}. An activation module that runs several times per forward "
                             f"pass (e.g. a ResNet block's shared self.relu) cannot be read per "
                             f"layer: pass point='pre' to read the layers before their "
                             f"nonlinearity") from exc
        raise
    dev = torch.device(device) if device is not None else model_device(model)
    acts: Dict[str, Tensor] = {}
    for layer in layers:
        x = feats["__input__" if layer.module is None else layer.name].to(dev)
        if x.shape[1] != layer.size:
            if x.shape[1] % layer.size:
                raise ValueError(f"layer {layer.name!r}: {x.shape[1]} recorded features do not "
                                 f"split into its {layer.size} neurons")
            x = x.view(x.shape[0], layer.size, -1).mean(-1)  # channel-major flatten → mean
        acts[layer.name] = x
    raw = feats["__input__"].to(dev) if raw_input else None
    return acts, raw, feats.y.to(dev), points
