"""Groups of neurons: the intersection of a cluster with a layer, and random groups like them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _pyg
from .._progress import progress_bar
from .._validate import check_flag, check_labels, check_positive_int, check_tensor

if TYPE_CHECKING:
    from torch_geometric.data import Data

_REQUIRED = ("layer", "neuron", "layer_names", "unit_modules", "act_modules")
MIN_RANDOM = 19


@dataclass
class NeuronGroup:
    """One cluster ∩ layer group.

    Attributes:
        layer: Layer (module) name.
        layer_index: Position of the layer in ``data.layer_names``.
        cluster: Cluster label.
        neurons: ``[s]`` indices of the group's neurons within the layer (the model's own order).
        nodes: ``[s]`` node ids in the graph.
        pool: ``[m]`` neurons of the layer present in the graph, from which random groups are drawn.
        extra: Free-form annotations (default ``{}``).

    Made by :func:`neuron_groups`; ``size`` is ``s``.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> g = dg.neurons.neuron_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4),
        ...                                           nn.ReLU(), nn.Linear(4, 2)))
        >>> grp = dg.neurons.neuron_groups(g, torch.tensor([0, 0, 1, 1] * 2))[0]
        >>> grp
        NeuronGroup(layer='0', cluster=0, size=2, layer_size=4)
        >>> grp.neurons.tolist(), grp.pool.tolist()
        ([0, 1], [0, 1, 2, 3])
        >>> grp.random_groups(5, torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """

    layer: str
    layer_index: int
    cluster: int
    neurons: Tensor
    nodes: Tensor
    pool: Tensor
    extra: Dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.neurons.numel())

    def random_groups(self, n: int, generator: torch.Generator) -> Tensor:
        """``[n, size]`` random same-size subsets of the layer's neurons (without replacement)."""
        pick = torch.rand(n, self.pool.numel(), generator=generator).argsort(1)[:, :self.size]
        return self.pool[pick.to(self.pool.device)]

    def __repr__(self) -> str:
        return (f"NeuronGroup(layer={self.layer!r}, cluster={self.cluster}, size={self.size}, "
                f"layer_size={self.pool.numel()})")


def check_neuron_data(data: Any, name: str = "data") -> Data:
    """``data`` itself when it is a neuron graph from :func:`dyngraph.neurons.neuron_graph`."""
    if not _pyg.is_data(data):
        raise TypeError(f"{name} must be the torch_geometric Data returned by "
                        f"dg.neurons.neuron_graph, got {type(data).__name__}")
    missing = [a for a in _REQUIRED if getattr(data, a, None) is None]
    if missing:
        raise ValueError(f"{name} lacks the neuron metadata {missing}; build it with "
                         f"dg.neurons.neuron_graph(model, ...)")
    return data


def neuron_groups(data: Data, clusters: Tensor, min_size: int = 2, max_fraction: float = 0.99,
                  skip_input: bool = True) -> List[NeuronGroup]:
    """The cluster ∩ layer groups worth testing, in layer then cluster order.

    Args:
        data: A neuron graph from :func:`dyngraph.neurons.neuron_graph`.
        clusters: ``[num_nodes]`` cluster labels (e.g. from
            :func:`dyngraph.neurons.spectral_partition`).
        min_size: Smallest group kept (the paper: 2 neurons).
        max_fraction: Largest group kept, as a share of the layer's neurons in the graph (0.99).
        skip_input: Leave out groups of input features (they cannot be lesioned).

    Returns:
        A list of :class:`NeuronGroup`.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> g = dg.neurons.neuron_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4),
        ...                                   nn.ReLU(), nn.Linear(4, 2)))
        >>> [(x.layer, x.size) for x in dg.neurons.neuron_groups(g, torch.tensor([0, 0, 1, 1] * 2))]
        [('0', 2), ('0', 2), ('2', 2), ('2', 2)]
    """
    check_neuron_data(data)
    check_tensor(clusters, "clusters")
    clusters = check_labels(clusters, data.num_nodes, "clusters").to(data.layer.device)
    check_positive_int(min_size, "min_size")
    check_flag(skip_input, "skip_input")
    if not isinstance(max_fraction, (int, float)) or not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction!r}")
    groups: List[NeuronGroup] = []
    for li, name in enumerate(data.layer_names):
        if skip_input and data.unit_modules[li] is None:
            continue
        in_layer = (data.layer == li).nonzero().flatten()
        pool = data.neuron[in_layer]
        cl = clusters[in_layer]
        for c in torch.unique(cl).tolist():  # none when the layer has no node left
            sel = in_layer[cl == c]
            if min_size <= sel.numel() <= max_fraction * in_layer.numel():
                groups.append(NeuronGroup(name, li, int(c), data.neuron[sel], sel, pool))
    return groups


def groups_to_test(data: Any, clusters: Any, groups: Optional[Sequence[NeuronGroup]],
                   n_random: Any, alpha: Any, min_size: int, max_fraction: float
                   ) -> Tuple[List[NeuronGroup], float]:
    """The arguments shared by the group tests, checked: ``(groups, alpha)``, the groups being
    ``neuron_groups(data, clusters, ...)`` unless given."""
    check_neuron_data(data)
    check_tensor(clusters, "clusters")
    check_positive_int(n_random, "n_random")
    if n_random < MIN_RANDOM:
        raise ValueError(f"n_random must be >= {MIN_RANDOM} so that a p-value can reach 0.05, "
                         f"got n_random={n_random}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if groups is None:
        groups = neuron_groups(data, clusters, min_size=min_size, max_fraction=max_fraction)
    return list(groups), float(alpha)


def group_row(g: NeuronGroup) -> Dict[str, Any]:
    """The columns that every table row of a group starts with."""
    return {"layer": g.layer, "layer_index": g.layer_index, "cluster": g.cluster, "size": g.size,
            "layer_size": int(g.pool.numel())}


def layer_masks(groups: List[NeuronGroup], data: Data, n_random: int, seed: int,
                device: torch.device, desc: str, progress: bool
                ) -> Iterator[Tuple[int, List[int], Tensor]]:
    """Layer by layer (with a progress bar): ``(layer index, positions of its groups in
    groups, their keep-masks from group_masks)``."""
    by_layer: Dict[int, List[int]] = {}
    for i, g in enumerate(groups):
        by_layer.setdefault(g.layer_index, []).append(i)
    for li in progress_bar(list(by_layer), desc=desc, disable=not progress):
        idx = by_layer[li]
        yield li, idx, group_masks([groups[i] for i in idx], data.layer_sizes[li], n_random, seed,
                                   start=idx[0], device=device)


def group_masks(groups: List[NeuronGroup], layer_size: int, n_random: int, seed: int,
                start: int = 0, device: Optional[torch.device] = None
                ) -> Tensor:
    """Keep-masks ``[G * (1 + n_random), layer_size]`` of a layer's groups: per group, its own mask
    (zeros on its neurons) then ``n_random`` random same-size masks. Group ``start + i`` draws its
    random groups from the generator seeded with ``(seed, start + i)``."""
    rows = []
    for i, g in enumerate(groups):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + start + i)
        sets = torch.cat([g.neurons.unsqueeze(0).cpu(), g.random_groups(n_random, gen).cpu()])
        m = torch.ones(sets.shape[0], layer_size)
        m.scatter_(1, sets, 0.0)
        rows.append(m)
    out = torch.cat(rows) if rows else torch.ones(0, layer_size)
    return out.to(device) if device is not None else out
