"""Clusterability: is a network's neuron graph more clusterable than those of shuffled copies?

The n-cut of the spectral partition of the network's neuron graph is compared with the n-cuts of
``n`` copies whose weights are shuffled within each layer (Filan et al. 2021): every Linear/Conv
weight tensor is permuted entrywise (``shuffle='all'``), or only among its non-zero entries
(``'nonzero'``, which keeps a pruned network's sparsity pattern). Biases and BatchNorm parameters
are kept. Each shuffled copy gets the same graph construction, number of clusters and seed.

* p-value: ``(r + 1) / (n + 1)``, ``r`` = shuffles with an n-cut ``<=`` the network's (one-sided:
  small p = more clusterable than chance);
* z-score: ``(ncut − mean) / std`` of the shuffled n-cuts (negative = more clusterable).
"""
from __future__ import annotations

import copy
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .._io import PathLike, atomic_write_json
from .._json import JsonFile
from .._progress import progress_bar
from .._validate import check_choice, check_flag, check_positive_int
from ._chain import weight_chain
from ._graph import neuron_graph
from ._spectral import SOLVERS, ncut, spectral_partition

if TYPE_CHECKING:
    from torch_geometric.data import Data

SHUFFLES = ("all", "nonzero")


@dataclass
class ClusterabilityResult(JsonFile):
    """The n-cut of a network against its weight-shuffled copies.

    Attributes:
        ncut: n-cut of the network's spectral partition.
        shuffled: ``[n]`` n-cuts of the shuffled copies.
        p_value: ``(r + 1) / (n + 1)`` with ``r = #{shuffled <= ncut}``.
        z_score: ``(ncut − mean(shuffled)) / std(shuffled)``; ``±inf`` when the shuffles all
            give one value different from ``ncut``, ``0`` when it is the same.
        n_clusters: Clusters of the partition.
        clusters: ``[num_nodes]`` the network's partition.
        graph: The network's neuron graph.
        meta: Settings (default ``{}``).

    Returned by :func:`clusterability`. ``dg.plot(result)`` draws the partition on the layer graph;
    ``dg.log(writer, result)`` logs the n-cut, the shuffle statistics and the figure.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> _ = torch.manual_seed(0)
        >>> m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(),
        ...                   nn.Linear(6, 2))
        >>> r = dg.neurons.clusterability(m, n_clusters=2, n_shuffles=4, progress=False)
        >>> r.shuffled.shape, r.clusters.shape, r.n_clusters, r.graph.num_nodes  # 6 + 6 hidden
        (torch.Size([4]), torch.Size([12]), 2, 12)
        >>> r.p_value == (int((r.shuffled <= r.ncut).sum()) + 1) / 5
        True
    """

    ncut: float
    shuffled: Tensor
    p_value: float
    z_score: float
    n_clusters: int
    clusters: Tensor
    graph: Data
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def shuffled_mean(self) -> float:
        return float(self.shuffled.mean())

    @property
    def shuffled_std(self) -> float:
        return float(self.shuffled.std()) if self.shuffled.numel() > 1 else 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {"ncut": self.ncut, "shuffled_mean": self.shuffled_mean,
                "shuffled_std": self.shuffled_std, "p_value": self.p_value,
                "z_score": self.z_score, "n_clusters": self.n_clusters,
                "n_shuffles": int(self.shuffled.numel()), "shuffled": self.shuffled.tolist(),
                "meta": self.meta}

    def __repr__(self) -> str:
        return (f"ClusterabilityResult(ncut={self.ncut:.4f}, shuffled={self.shuffled_mean:.4f}"
                f"±{self.shuffled_std:.4f}, n_shuffles={self.shuffled.numel()}, "
                f"p={self.p_value:.4g}, z={self.z_score:.3f}, n_clusters={self.n_clusters})")



def check_seed(seed: Any, name: str = "seed") -> int:
    """An ``int`` seed (a string or a float is a ``TypeError``, never converted)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}: {seed!r}")
    return int(seed)

def shuffle_weights(model: nn.Module, seed: int = 0, how: str = "all") -> nn.Module:
    """A copy of ``model`` whose Linear/Conv weights are permuted within each layer.

    Args:
        model: The network (left unchanged).
        seed: Seed of the permutations.
        how: ``'all'`` entries, or ``'nonzero'`` ones only (zeros stay where they are).

    Returns:
        The shuffled copy (a deep copy, on the same device).

    Example:
        >>> import torch.nn as nn, dyngraph as dg
        >>> m = nn.Linear(3, 2)
        >>> s = dg.neurons.shuffle_weights(m, seed=1)
        >>> sorted(s.weight.flatten().tolist()) == sorted(m.weight.flatten().tolist())
        True
    """
    check_choice(how, "how (the shuffle)", SHUFFLES)
    check_seed(seed)
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for layer in weight_chain(out):
            mod: Any = layer.module
            flat: Tensor = mod.weight.view(-1)
            idx = (flat != 0).nonzero().flatten() if how == "nonzero" else \
                torch.arange(flat.numel(), device=flat.device)
            flat[idx] = flat[idx[torch.randperm(idx.numel(), generator=gen).to(flat.device)]]
    return out


def _z(value: float, null: Tensor) -> float:
    """``(value − mean) / std``; ``±inf`` (or 0 when equal) if the null has no spread."""
    sd = float(null.std()) if null.numel() > 1 else 0.0
    diff = value - float(null.mean())
    if sd == 0.0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / sd


def partition(net: nn.Module, n_clusters: int, seed: int, solver: str, **graph_args: Any
              ) -> Tuple[float, Tensor, Data]:
    """``(n-cut, clusters, graph)``: the neuron graph of ``net``, its spectral partition and the
    partition's n-cut."""
    g = neuron_graph(net, **graph_args)
    c = spectral_partition(g, n_clusters, seed=seed, solver=solver)
    return float(ncut(g.edge_index, c, g.edge_weight, g.num_nodes)), c, g


def clusterability(model: nn.Module, n_clusters: int, n_shuffles: int = 50, seed: int = 0, *,
                   source: str = "weights", loader=None, shuffle: str = "all",
                   graph_kwargs: Optional[Dict[str, Any]] = None, solver: str = "auto",
                   checkpoint: Optional[PathLike] = None, progress: bool = True
                   ) -> ClusterabilityResult:
    """Compares the n-cut of a network's spectral partition with weight-shuffled copies.

    Args:
        model: The network.
        n_clusters: Clusters of the spectral partition.
        n_shuffles: Shuffled copies ``n``.
        seed: Seed of the partition (k-means) and of the shuffles (copy ``i`` uses ``seed, i``).
        source: ``'weights'`` or ``'activations'`` (then ``loader`` is required and each shuffled
            copy is run over it).
        loader: Batches ``(inputs, labels)``, see :func:`dyngraph.neurons.neuron_graph`.
        shuffle: ``'all'`` or ``'nonzero'``.
        graph_kwargs: Extra arguments of :func:`dyngraph.neurons.neuron_graph` (layers, norm, ...).
        solver: Eigensolver of :func:`dyngraph.neurons.spectral_partition`.
        checkpoint: A JSON file: the shuffled n-cuts are written there (atomically) as they come,
            and a rerun with the same settings resumes from it.
        progress: Progress bar over the shuffles.

    Returns:
        :class:`ClusterabilityResult`.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> _ = torch.manual_seed(0)
        >>> m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
        ...                   nn.Linear(8, 2))
        >>> r = dg.neurons.clusterability(m, n_clusters=2, n_shuffles=5, progress=False)
        >>> r.shuffled.shape, 0 < r.p_value <= 1
        (torch.Size([5]), True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int(n_clusters, "n_clusters", minimum=2)  # one cluster: the n-cut is 0
    check_positive_int(n_shuffles, "n_shuffles")
    check_seed(seed)
    check_choice(shuffle, "shuffle", SHUFFLES)
    check_choice(solver, "solver", SOLVERS)
    check_flag(progress, "progress")
    if graph_kwargs is not None and not isinstance(graph_kwargs, dict):
        raise TypeError(f"graph_kwargs must be a dict of neuron_graph arguments, got "
                        f"{type(graph_kwargs).__name__}")
    kw = dict(graph_kwargs or {})
    for bad in ("model", "source", "loader"):
        if bad in kw:
            raise ValueError(f"graph_kwargs must not set {bad!r}; pass it to clusterability")
    kw.setdefault("progress", False)
    graph_args = {"source": source, "loader": loader, **kw}
    value, clusters, graph = partition(model, n_clusters, seed, solver, **graph_args)
    settings = {"n_clusters": n_clusters, "seed": seed, "source": source, "shuffle": shuffle,
                "solver": solver, "graph_kwargs": {k: repr(v) for k, v in sorted(kw.items())
                                                    if k != "progress"},
                "ncut": value}
    done: list = []
    if checkpoint is not None and Path(checkpoint).exists():
        try:
            saved = json.loads(Path(checkpoint).read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("settings") == settings:
            done = [float(v) for v in saved.get("shuffled", [])][:n_shuffles]
    for i in progress_bar(range(len(done), n_shuffles), desc="shuffles", disable=not progress):
        net = shuffle_weights(model, seed=int(seed) * 1_000_003 + i + 1, how=shuffle)
        done.append(partition(net, n_clusters, seed, solver, **graph_args)[0])
        if checkpoint is not None:
            atomic_write_json(checkpoint, {"settings": settings, "shuffled": done})
    null = torch.tensor(done, dtype=torch.float64)
    p = (int((null <= value).sum()) + 1) / (n_shuffles + 1)
    meta = {k: v for k, v in settings.items() if k != "ncut"}
    meta.update({"n_nodes": int(graph.num_nodes), "n_removed": int(getattr(graph, "n_removed", 0))})
    return ClusterabilityResult(value, null, p, _z(value, null), n_clusters, clusters, graph, meta)
