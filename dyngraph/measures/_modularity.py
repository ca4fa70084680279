"""Newman modularity with given communities, computed with scatter ops from edges alone.

Graphs follow PyG's undirected convention: every undirected edge ``{i, j}`` is stored in both
directions with the same weight. A self-loop is stored once and, as in networkx, adds its weight
twice to its node's strength.

For one graph with total undirected weight ``W`` (``2W`` = the sum of all stored edge weights)::

    Q = Σ_c [ w_in(c) / W − γ (S_c / 2W)² ]

where ``w_in(c)`` is the undirected weight inside community ``c`` and ``S_c`` its summed strength.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Data

from .._validate import (
    check_edge_index,
    check_edge_weight,
    check_labels,
    check_same_device,
    check_tensor,
)
from ._registry import register

#: Largest ``graphs × C²`` mixing matrix that :func:`community_sums` scatters into; above it, it
#: scatters into ``graphs × C × 2`` (strength, inside) slots with one extra compare per entry.
MIXING_SLOTS = 1 << 16

__all__ = ["community_contributions", "modularity"]


def prepare_partition(edge_index, communities, edge_weight, num_nodes, batch
             ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor], int, int]:
    edge_index = check_edge_index(edge_index)
    check_tensor(communities, "communities")
    if num_nodes is None:
        num_nodes = communities.numel()
    communities = check_labels(communities, num_nodes, "communities", check_min=False)
    n_edges = edge_index.shape[1]
    if edge_weight is None:
        edge_weight = torch.ones(n_edges, dtype=torch.float64, device=edge_index.device)
    # Finiteness is checked on the (few) results instead of on every weight: see terms_from_sums.
    edge_weight = check_edge_weight(edge_weight, n_edges, check_finite=False)
    check_same_device(edge_index=edge_index, communities=communities, edge_weight=edge_weight,
                      batch=batch)
    lo, hi = communities.aminmax() if num_nodes else (torch.zeros(()), torch.full((), -1))
    if int(lo) < 0:
        raise ValueError(f"communities must hold labels >= 0, got min(communities)={int(lo)}")
    n_comm = int(hi) + 1
    if n_edges and edge_index.device.type != "cpu":  # CPU index_select reports it (see below)
        e_lo, e_hi = edge_index.aminmax()
        _check_node_range(int(e_lo), int(e_hi), num_nodes)
    if batch is None:
        n_graphs = 1
    else:
        batch = check_labels(batch, num_nodes, "batch")
        n_graphs = int(batch.max()) + 1 if num_nodes else 0
    return edge_index, communities, edge_weight.double(), batch, n_graphs, n_comm


def _check_node_range(lo: int, hi: int, num_nodes: int) -> None:
    if lo < 0 or hi >= num_nodes:
        raise ValueError(f"edge_index must hold node ids in [0, num_nodes={num_nodes}), got "
                         f"values in [{lo}, {hi}]")


def _gather(values: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    """``values[index]``; an out-of-range id raises a ``ValueError`` naming ``edge_index``."""
    try:
        return values.index_select(0, index)
    except (IndexError, RuntimeError):
        _check_node_range(int(index.min()), int(index.max()), num_nodes)
        raise


def community_sums(edge_index: Tensor, communities: Tensor, edge_weight: Tensor, n_comm: int,
                   batch: Optional[Tensor] = None, n_graphs: int = 1) -> Tuple[Tensor, Tensor]:
    """The scatter pass behind modularity: summed strength ``S_c`` and inside weight
    ``2·w_in(c)`` of every (graph, community) slot, flat ``[n_graphs · n_comm]``, over the stored
    entries given (self-loops count twice). Partial sums over disjoint edge shares add up, so ranks
    can ``all_reduce`` them.

    One gather of the endpoints' labels and one ``scatter_add`` into the ``graphs × C × C`` mixing
    matrix (rows: the source's community, so ``S_c`` is a row sum and ``2·w_in(c)`` the diagonal);
    for very many slots, into ``graphs × C × 2`` (strength, inside) slots instead.
    """
    n_edges = edge_index.shape[1]
    row, col = edge_index[0], edge_index[1]
    w = edge_weight
    loops = row == col  # self-loops count twice (networkx's convention)
    if w.device.type != "cpu" or int(loops.count_nonzero()):  # (no host sync on accelerators)
        w = w + w * loops
    n_nodes = communities.numel()
    if batch is None:
        lab = _gather(communities, edge_index.reshape(-1), n_nodes)
        src, dst = lab[:n_edges], lab[n_edges:]
    else:
        src = _gather(batch * n_comm + communities, row, n_nodes)
        dst = _gather(communities, col, n_nodes)
    size = n_graphs * n_comm
    if size * n_comm <= MIXING_SLOTS:
        mix = w.new_zeros(size * n_comm).scatter_add_(0, torch.add(dst, src, alpha=n_comm), w)
        mix = mix.view(size, n_comm)
        inside = mix.view(n_graphs, n_comm, n_comm).diagonal(dim1=1, dim2=2).reshape(size)
        return mix.sum(1), inside
    slot = torch.add((src % n_comm == dst) if batch is not None else (src == dst), src, alpha=2)
    pair = w.new_zeros(2 * size).scatter_add_(0, slot, w).view(size, 2)
    return pair.sum(1), pair[:, 1]


def _bad_total(two_w: Tensor, edge_weight: Optional[Tensor]) -> None:
    """Raises the error for a NaN/inf or non-positive total weight ``2W`` (``[...]``)."""
    if not bool(torch.isfinite(two_w).all()):  # NaN/inf weights poison 2W: name the culprit
        if edge_weight is not None:
            check_edge_weight(edge_weight, edge_weight.numel())
        raise ValueError("edge_weight contains NaN or inf values")
    bad = (two_w.reshape(-1) <= 0).nonzero().flatten().tolist()
    raise ValueError(f"modularity is undefined for graphs with no positive total edge weight "
                     f"(graphs {bad[:10]}); check edge_index/edge_weight")


def terms_from_sums(s_c: Tensor, in_c: Tensor, resolution: float,
                    edge_weight: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """``[..., C]`` sums → per-community terms ``[..., C]`` and ``2W`` ``[...]``, with the checks
    for NaN/inf weights and graphs with no positive total weight."""
    two_w = s_c.sum(-1)
    if not bool(((two_w > 0) & torch.isfinite(two_w)).all()):
        _bad_total(two_w, edge_weight)
    frac = s_c / two_w.unsqueeze(-1)
    return in_c / two_w.unsqueeze(-1) - resolution * frac * frac, two_w


def community_terms(edge_index: Tensor, communities: Tensor, edge_weight: Tensor,
                     batch: Optional[Tensor],
                     n_graphs: int, n_comm: int, resolution: float) -> Tuple[Tensor, Tensor]:
    """Per-(graph, community) contributions ``[B, C]`` and total weight ``2W`` per graph ``[B]``."""
    s_c, in_c = community_sums(edge_index, communities, edge_weight, n_comm, batch, n_graphs)
    return terms_from_sums(s_c.view(n_graphs, n_comm), in_c.view(n_graphs, n_comm), resolution,
                           edge_weight)


def modularity(edge_index: Tensor, communities: Tensor, edge_weight: Optional[Tensor] = None,
               num_nodes: Optional[int] = None, batch: Optional[Tensor] = None,
               resolution: float = 1.0) -> Union[float, Tensor]:
    r"""Weighted Newman modularity of a given partition, with scatter ops.

    Args:
        edge_index: ``[2, E]`` edges, both directions stored (PyG undirected convention).
        communities: ``[N]`` integer community (class) of each node, values >= 0.
        edge_weight: ``[E]`` non-negative weights; ``None`` means 1 for every edge.
        num_nodes: ``N``; defaults to ``communities.numel()``.
        batch: ``[N]`` graph index of each node, for many graphs in one pass.
        resolution: The resolution ``γ`` (1 in the reference).

    Returns:
        A ``float`` for one graph, or a float64 tensor ``[B]`` with ``batch``.

    Example:
        >>> import torch, dyngraph as dg
        >>> # two triangles joined by one edge, each triangle a community
        >>> src = [0, 1, 2, 3, 4, 5, 2]
        >>> dst = [1, 2, 0, 4, 5, 3, 3]
        >>> ei = torch.tensor([src + dst, dst + src])
        >>> round(dg.modularity(ei, torch.tensor([0, 0, 0, 1, 1, 1])), 4)
        0.3571
    """
    ei, comm, w, batch_, n_graphs, n_comm = prepare_partition(edge_index, communities,
                                                              edge_weight, num_nodes, batch)
    if batch is not None:
        contrib, _ = community_terms(ei, comm, w, batch_, n_graphs, n_comm, float(resolution))
        return contrib.sum(1)
    # One graph: Q = Σ 2w_in(c) / 2W − γ Σ S_c² / (2W)², reduced to three host scalars.
    s_c, in_c = community_sums(ei, comm, w, n_comm)
    two_w = s_c.sum()
    two = float(two_w)
    if not (math.isfinite(two) and two > 0):
        _bad_total(two_w, edge_weight)
    return float(in_c.sum()) / two - float(resolution) * float(s_c.dot(s_c)) / (two * two)


def community_contributions(edge_index: Tensor, communities: Tensor,
                            edge_weight: Optional[Tensor] = None, num_nodes: Optional[int] = None,
                            batch: Optional[Tensor] = None, resolution: float = 1.0) -> Tensor:
    """Each community's term ``w_in(c)/W − γ (S_c/2W)²``; the terms sum to the modularity.

    Args:
        edge_index, communities, edge_weight, num_nodes, batch, resolution: As in
            :func:`modularity`.

    Returns:
        float64 ``[C]`` for one graph, or ``[B, C]`` with ``batch`` (``C = max(communities) + 1``;
        absent communities contribute 0).

    Example:
        >>> import torch, dyngraph as dg
        >>> ei = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
        >>> dg.measures.community_contributions(ei, torch.tensor([0, 0, 1, 1])).tolist()
        [0.25, 0.25]
    """
    ei, comm, w, batch_, n_graphs, n_comm = prepare_partition(edge_index, communities,
                                                              edge_weight, num_nodes, batch)
    contrib, _ = community_terms(ei, comm, w, batch_, n_graphs, n_comm, float(resolution))
    return contrib[0] if batch is None else contrib


# ============================================================================ registered measures
def require_graph(graph: Optional[Data], name: str) -> Data:
    if graph is None:
        raise ValueError(f"measure {name!r} needs the layer's kNN graph; it got graph=None")
    return graph


@register("modularity", graph=True, description="Newman modularity Q of the kNN graph, the "
          "classes as communities (Lu et al. 2022)")
def _modularity(x: Tensor, y: Tensor, graph: Optional[Data], resolution: float = 1.0) -> float:
    g = require_graph(graph, "modularity")
    # The sum of the community terms: the arithmetic of DynamicGraph.modularity, bit for bit.
    return float(community_contributions(g.edge_index, y, g.edge_weight, num_nodes=g.num_nodes,
                                         resolution=resolution).sum())
