"""Neuron graphs: the neurons of a network as the nodes of a PyG ``Data``.

Two sources of edges (Filan et al. 2021, Hod et al. 2022):

* ``'weights'``: edges only between adjacent layers, weight ``|w|``. A conv kernel between two
  channels is reduced to one number by a norm (``'l1'``: entrywise sum of ``|w|``;
  ``'max_col_sum'``: the kernel seen as a matrix, the largest column sum of ``|w|``, i.e. the
  operator 1-norm used by the original clusterability code; ``'l2'``: Frobenius). A BatchNorm that
  directly follows a layer is folded into that layer's incoming weights (each row scaled by
  ``|γ| / sqrt(var + eps)``), as when fusing BN into the layer before it.
* ``'activations'``: every pair of neurons of the chosen layers, within and across layers, with
  weight ``ρ_s²``: the squared Spearman rank correlation of their activations over a dataset,
  clipped to ``[0, 1]``, no self-loops. Ranks are computed in torch with ties averaged.

Nodes are ordered layer by layer and, within a layer, in the neurons' own order. Dead neurons
(a constant output over the dataset, or all-zero incoming weights) and isolated ones (no edge left)
are removed and listed in ``data.removed``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import _pyg
from .._pyg import coalesce, scatter, subgraph
from .._validate import check_choice, check_features, check_flag, check_positive_int
from ._chain import (
    NORMS,
    NeuronLayer,
    input_layer,
    layer_activations,
    model_device,
    reduced_weights,
    select_layers,
    spatial_shapes,
    weight_chain,
)

if TYPE_CHECKING:
    from torch_geometric.data import Data

SOURCES = ("weights", "activations")
PAIRS = ("all", "within", "across", "adjacent")
# Which pairs of layers (positions ``a``, ``b``) an activation edge may join.
_PAIR_MASKS = {"within": lambda a, b: a == b, "across": lambda a, b: a != b,
               "adjacent": lambda a, b: (a - b).abs() <= 1}


def spearman_matrix(x: Tensor) -> Tensor:
    """Spearman rank correlation between the columns of ``x`` (ties get their average rank).

    Args:
        x: ``[N, D]`` samples × variables. Constant columns give rows/columns of zeros.

    Returns:
        ``[D, D]`` float64 correlations.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.tensor([[1., 3.], [2., 2.], [3., 1.]])
        >>> dg.neurons.spearman_matrix(x).round(decimals=6).tolist()
        [[1.0, -1.0], [-1.0, 1.0]]
    """
    z = _standardized_ranks(check_features(x, "x"))
    return z.T @ z


def rank_average(x: Tensor) -> Tensor:
    """1-based ranks of each column of ``x`` ``[N, D]``, ties given their average rank (float64).

    Args:
        x: ``[N, D]``.

    Returns:
        ``[N, D]`` float64 ranks in ``[1, N]`` (``scipy.stats.rankdata(x, axis=0)``).

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.tensor([[10., 1.], [20., 1.], [20., 5.], [5., 1.]])
        >>> dg.neurons.rank_average(x).tolist()
        [[2.0, 2.0], [3.5, 2.0], [3.5, 4.0], [1.0, 2.0]]
    """
    n, d = x.shape
    sv, si = x.sort(dim=0, stable=True)
    new = torch.ones_like(sv, dtype=torch.bool)
    new[1:] = sv[1:] != sv[:-1]
    gid = new.long().cumsum(0) - 1 + torch.arange(d, device=x.device).unsqueeze(0) * n
    pos = torch.arange(1, n + 1, device=x.device, dtype=torch.float64).unsqueeze(1).expand(n, d)
    mean_rank = scatter(pos.reshape(-1), gid.reshape(-1), dim=0, dim_size=n * d, reduce="mean")
    ranks = torch.empty(n, d, dtype=torch.float64, device=x.device)
    ranks.scatter_(0, si, mean_rank[gid])
    return ranks


def _standardized_ranks(x: Tensor) -> Tensor:
    """Ranks centred and scaled to unit norm per column (zeros for constant columns)."""
    r = rank_average(x)
    r = r - r.mean(0, keepdim=True)
    norm = r.norm(dim=0, keepdim=True)
    return torch.where(norm > 0, r / norm.clamp_min(1e-300), torch.zeros_like(r))


def neuron_graph(model: nn.Module, source: str = "weights", loader=None, *,
                 layers: Optional[Sequence[str]] = None, norm: str = "l1", fold_bn: bool = True,
                 include_input: bool = False, include_output: bool = False,
                 pairs: str = "all", min_weight: float = 0.0, remove_dead: bool = True,
                 point: str = "post", per_class: Optional[int] = None,
                 n_samples: Optional[int] = None, seed: int = 0, input_shape=None,
                 device=None, chunk_size: int = 1024, progress: bool = True) -> Data:
    """The graph of a network's neurons, as a PyG ``Data``.

    Args:
        model: A chain network (MLP or VGG-style CNN): ``nn.Linear``/``nn.Conv*`` layers in
            registration order, each optionally followed by BatchNorm and an activation module.
        source: ``'weights'`` (``|w|`` between adjacent layers) or ``'activations'`` (squared
            Spearman correlation of activations over ``loader``, within and across layers).
        loader: Batches ``(inputs, labels)``; required for ``'activations'``. With ``'weights'``
            it is optional and used to find dead neurons (constant over the data) and the spatial
            shapes that ``'max_col_sum'`` needs for a Linear reading a flattened map.
        layers: Names of the Linear/Conv modules whose output neurons become nodes. Default:
            every one but the last (the hidden neurons). With ``'weights'`` they must be
            consecutive in the chain.
        norm: Kernel reduction for convolutions: ``'l1'``, ``'max_col_sum'`` or ``'l2'``.
        fold_bn: Fold a following BatchNorm's scale into each layer's incoming weights.
        include_input: Add the input features (pixels, or input channels of a CNN) as a layer.
        include_output: Add the last layer's neurons (the logits) when ``layers`` is ``None``.
        pairs: For ``'activations'``: ``'all'`` pairs, ``'within'`` layers only, ``'across'``
            layers only, or ``'adjacent'`` (within a layer and between neighbouring layers).
        min_weight: Keep only edges heavier than this (``0`` keeps every non-zero edge).
        remove_dead: Remove dead and isolated neurons. They are listed in ``data.removed`` either
            way; ``data.n_removed`` counts those actually removed.
        point: Activations after the activation module (``'post'``) or before it (``'pre'``).
        per_class, n_samples, seed: Class-balanced sampling of ``loader`` (default: every sample).
        input_shape: Shape of one input (without the batch), used only to read spatial shapes.
        device: Where to compute (default: the model's device).
        chunk_size: Rows of the correlation matrix computed at once (bounded memory).
        progress: Progress bar while reading activations.

    Returns:
        ``Data`` with ``edge_index`` ``[2, E]`` (both directions stored, coalesced),
        ``edge_weight`` ``[E]``, ``num_nodes``, and metadata: ``layer`` ``[num_nodes]`` (layer
        position of each node), ``neuron`` ``[num_nodes]`` (index of the neuron within its layer),
        ``layer_names``, ``layer_sizes`` (neurons per layer before removal), ``unit_modules`` and
        ``act_modules`` (modules to lesion and to read), ``removed``
        (``{layer: {'dead': [...], 'isolated': [...]}}``), ``n_removed``, ``source``, ``norm``.

    Example:
        >>> import torch.nn as nn, dyngraph as dg
        >>> m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(),
        ...                   nn.Linear(5, 3))
        >>> g = dg.neurons.neuron_graph(m)
        >>> g.num_nodes, g.layer_names, g.edge_index.shape[1]
        (11, ['0', '2'], 60)
    """
    check_choice(source, "source", SOURCES)
    check_choice(norm, "norm", NORMS)
    check_choice(pairs, "pairs", PAIRS)
    check_choice(point, "point", ("pre", "post"))
    check_positive_int(chunk_size, "chunk_size")
    if not isinstance(min_weight, (int, float)) or isinstance(min_weight, bool) or \
            not math.isfinite(min_weight) or min_weight < 0:
        raise ValueError(f"min_weight must be a finite number >= 0, got {min_weight!r}")
    for flag, value in (("fold_bn", fold_bn), ("include_input", include_input),
                        ("include_output", include_output), ("remove_dead", remove_dead)):
        check_flag(value, flag)
    if layers is not None and (isinstance(layers, str) or not isinstance(layers, (list, tuple))):
        raise TypeError(f"layers must be a list of layer names, got {type(layers).__name__}: "
                        f"{layers!r}")
    chain = weight_chain(model)
    if source == "activations" and loader is None:
        raise ValueError("source='activations' needs a loader of (inputs, labels) batches, got "
                         "loader=None")
    if loader is not None and not hasattr(loader, "__iter__"):
        raise TypeError(f"loader must be an iterable of batches (a DataLoader), got "
                        f"{type(loader).__name__}")
    pos = select_layers(chain, layers, include_input, include_output)
    chosen: List[NeuronLayer] = [input_layer(chain) if p < 0 else chain[p] for p in pos]
    dev = torch.device(device) if device is not None else model_device(model)

    acts = None
    points: Dict[str, str] = {}
    if loader is not None:
        acts, _, _, points = layer_activations(model, loader, chosen, point=point,
                                               per_class=per_class, n_samples=n_samples,
                                               seed=seed, device=dev, progress=progress)
    sizes = [lay.size for lay in chosen]
    offsets = torch.tensor([0] + sizes, device=dev).cumsum(0)
    n = int(offsets[-1])
    layer_of = torch.repeat_interleave(torch.arange(len(chosen), device=dev),
                                       torch.tensor(sizes, device=dev))
    neuron_of = torch.arange(n, device=dev) - offsets[layer_of]
    dead = (torch.cat([(acts[lay.name].amax(0) - acts[lay.name].amin(0)) <= 0 for lay in chosen])
            if acts is not None else torch.zeros(n, dtype=torch.bool, device=dev))

    if source == "weights":
        if len(chosen) == 1:
            raise ValueError(f"source='weights' joins adjacent layers, but only layer "
                             f"{chosen[0].name!r} was chosen, so the graph has no edges; add "
                             f"include_input=True or include_output=True, or more layers")
        if any(p1 != p0 + 1 for p0, p1 in zip(pos[:-1], pos[1:])):
            raise ValueError(f"source='weights' needs consecutive layers (edges only join "
                             f"adjacent layers), got layers={[c.name for c in chosen]}; the chain "
                             f"is {[c.name for c in chain]}")
        example = torch.zeros(1, *tuple(input_shape)) if input_shape is not None else None
        if example is None and loader is not None:
            first = next(iter(loader))
            example = (first[0] if isinstance(first, (tuple, list)) else first)[:1]
        shapes = spatial_shapes(model, chain, example.to(dev)) if example is not None else {}
        edge_index, edge_weight, no_input = _weight_edges(chain, pos, offsets, norm, fold_bn,
                                                          shapes, dev)
        dead |= no_input
    else:
        assert acts is not None  # checked above: 'activations' needs a loader
        x = torch.cat([acts[lay.name] for lay in chosen], dim=1)
        edge_index, edge_weight = _activation_edges(x, layer_of, dead, pairs, min_weight,
                                                    chunk_size)
    if min_weight > 0 and source == "weights":
        keep = edge_weight > min_weight
        edge_index, edge_weight = edge_index[:, keep], edge_weight[keep]

    # Find dead nodes, then the nodes left without any edge once they are gone.
    alive = ~dead
    edge_mask = alive[edge_index[0]] & alive[edge_index[1]]
    strength = scatter(edge_weight[edge_mask], edge_index[0][edge_mask], dim=0, dim_size=n,
                       reduce="sum")
    isolated = alive & (strength <= 0)
    keep = alive & ~isolated if remove_dead else torch.ones(n, dtype=torch.bool, device=dev)
    n_kept = int(keep.sum())
    if n_kept == 0:
        raise ValueError(f"every neuron of layers {[c.name for c in chosen]} is dead or isolated; "
                         f"nothing is left to build a graph from")
    edge_index, edge_weight = subgraph(keep, edge_index, edge_weight, relabel_nodes=True,
                                       num_nodes=n)
    removed = {}
    for i, lay in enumerate(chosen):
        sl = slice(int(offsets[i]), int(offsets[i + 1]))
        removed[lay.name] = {"dead": neuron_of[sl][dead[sl]].tolist(),
                             "isolated": neuron_of[sl][isolated[sl]].tolist()}
    return _pyg.Data(edge_index=edge_index, edge_weight=edge_weight.float(), num_nodes=n_kept,
                     layer=layer_of[keep], neuron=neuron_of[keep],
                     layer_names=[lay.name for lay in chosen], layer_sizes=sizes,
                     unit_modules=[lay.unit for lay in chosen],
                     act_modules=[(lay.act if point == "post" else None) or lay.unit
                                  for lay in chosen],
                     removed=removed, n_removed=n - n_kept, source=source,
                     norm=norm if source == "weights" else None, points=points)


def _weight_edges(chain: List[NeuronLayer], pos: List[int], offsets: Tensor, norm: str,
                  fold_bn: bool, shapes: Dict, dev: torch.device):
    """Edges between consecutive chosen layers and the nodes with no incoming weight."""
    n = int(offsets[-1])
    no_input = torch.zeros(n, dtype=torch.bool, device=dev)
    rows, cols, ws = [], [], []
    for i, p in enumerate(pos):
        if p < 0:
            continue
        layer = chain[p]
        prev_size = chain[p - 1].size if p > 0 else layer.in_size
        spatial = shapes.get(layer.name + ":input")
        a = reduced_weights(layer, prev_size, norm, fold_bn, spatial).to(dev)
        no_input[offsets[i]:offsets[i + 1]] = a.amax(1) <= 0 if a.shape[1] else True
        if i == 0:
            continue  # the layer before it is not in the graph
        tgt, src = a.nonzero(as_tuple=True)
        w = a[tgt, src]
        src, tgt = src + offsets[i - 1], tgt + offsets[i]
        rows += [src, tgt]
        cols += [tgt, src]
        ws += [w, w]
    return (*_coalesce(rows, cols, ws, n, dev), no_input)


def _activation_edges(x: Tensor, layer_of: Tensor, dead: Tensor, pairs: str, min_weight: float,
                      chunk_size: int):
    """All pairs of live neurons with weight ``clip(ρ_s², 0, 1)``, computed in row blocks."""
    n = x.shape[1]
    live = (~dead).nonzero().flatten()
    z = _standardized_ranks(x[:, live])
    lay = layer_of[live]
    rows, cols, ws = [], [], []
    for s in range(0, live.numel(), chunk_size):
        e = min(s + chunk_size, live.numel())
        w = (z[:, s:e].T @ z).pow(2).clamp(0.0, 1.0)  # [b, D]
        w[torch.arange(e - s, device=x.device), torch.arange(s, e, device=x.device)] = 0.0
        if pairs != "all":
            w = torch.where(_PAIR_MASKS[pairs](lay[s:e].unsqueeze(1), lay.unsqueeze(0)), w,
                            torch.zeros_like(w))
        r, c = (w > min_weight).nonzero(as_tuple=True)
        rows.append(live[r + s])
        cols.append(live[c])
        ws.append(w[r, c])
    return _coalesce(rows, cols, ws, n, x.device)


def _coalesce(rows: List[Tensor], cols: List[Tensor], ws: List[Tensor], n: int,
              dev: torch.device) -> Tuple[Tensor, Tensor]:
    """The edges ``(rows, cols)`` with weights ``ws`` (lists of blocks), float64, coalesced."""
    if not rows:
        return coalesce(torch.empty(2, 0, dtype=torch.long, device=dev),
                        torch.empty(0, dtype=torch.float64, device=dev), n)
    return coalesce(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(ws).double(), n)
