"""Newman modularity with given communities, computed with scatter ops from edges alone.

Graphs follow PyG's undirected convention: every undirected edge ``{i, j}`` is stored in both
directions with the same weight. A self-loop is stored once and, as in networkx, adds its weight
twice to its node's strength.

For one graph with total undirected weight ``W`` (``2W`` = the sum of all stored edge weights)::

    Q = Σ_c [ w_in(c) / W − γ (S_c / 2W)² ]

where ``w_in(c)`` is the undirected weight inside community ``c`` and ``S_c`` its summed strength.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from .._validate import (check_edge_index, check_edge_weight, check_labels, check_same_device,
                         check_tensor)


def _prepare(edge_index, communities, edge_weight, num_nodes, batch
             ) -> Tuple[Tensor, Tensor, Tensor, Tensor, int, int]:
    edge_index = check_edge_index(edge_index)
    check_tensor(communities, "communities")
    check_same_device(edge_index=edge_index, communities=communities, edge_weight=edge_weight,
                      batch=batch)
    if num_nodes is None:
        num_nodes = communities.numel()
    communities = check_labels(communities, num_nodes, "communities")
    n_edges = edge_index.shape[1]
    if edge_weight is None:
        edge_weight = torch.ones(n_edges, device=edge_index.device)
    # Finiteness is checked on the (few) results instead of on every weight: see _finish.
    edge_weight = check_edge_weight(edge_weight, n_edges, check_finite=False)
    check_same_device(edge_index=edge_index, communities=communities, edge_weight=edge_weight,
                      batch=batch)
    if n_edges and int(edge_index.max()) >= num_nodes:
        raise ValueError(f"edge_index refers to node {int(edge_index.max())} but num_nodes="
                         f"{num_nodes}")
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.long, device=edge_index.device)
        n_graphs = 1
    else:
        batch = check_labels(batch, num_nodes, "batch")
        n_graphs = int(batch.max()) + 1 if num_nodes else 0
    n_comm = int(communities.max()) + 1 if num_nodes else 0
    return edge_index, communities, edge_weight.double(), batch, n_graphs, n_comm


def community_sums(edge_index: Tensor, key: Tensor, edge_weight: Tensor, size: int
                   ) -> Tuple[Tensor, Tensor]:
    """The two scatter passes behind modularity: summed strength ``S_c`` and inside weight
    ``2·w_in(c)`` of every community slot ``[size]``, over the stored entries given (self-loops
    count twice). Partial sums over disjoint edge shares add up, so ranks can ``all_reduce`` them."""
    row, col = edge_index
    w = torch.where(row == col, 2.0 * edge_weight, edge_weight)  # self-loops count twice
    key_row = key[row]
    s_c = scatter(w, key_row, dim=0, dim_size=size, reduce="sum")
    in_c = scatter(w * (key_row == key[col]), key_row, dim=0, dim_size=size, reduce="sum")
    return s_c, in_c


def terms_from_sums(s_c: Tensor, in_c: Tensor, resolution: float,
                    edge_weight: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """``[..., C]`` sums → per-community terms ``[..., C]`` and ``2W`` ``[...]``, with the checks
    for NaN/inf weights and graphs with no positive total weight."""
    two_w = s_c.sum(-1)
    if not bool(torch.isfinite(two_w).all()):  # NaN/inf weights poison 2W: name the culprit
        if edge_weight is not None:
            check_edge_weight(edge_weight, edge_weight.numel())
        raise ValueError("edge_weight contains NaN or inf values")
    if bool((two_w <= 0).any()):
        bad = (two_w.reshape(-1) <= 0).nonzero().flatten().tolist()
        raise ValueError(f"modularity is undefined for graphs with no positive total edge weight "
                         f"(graphs {bad[:10]}); check edge_index/edge_weight")
    frac = s_c / two_w.unsqueeze(-1)
    return in_c / two_w.unsqueeze(-1) - resolution * frac * frac, two_w


def _community_terms(edge_index: Tensor, communities: Tensor, edge_weight: Tensor, batch: Tensor,
                     n_graphs: int, n_comm: int, resolution: float) -> Tuple[Tensor, Tensor]:
    """Per-(graph, community) contributions ``[B, C]`` and total weight ``2W`` per graph ``[B]``."""
    # Global community key: one slot per (graph, community) pair.
    key = communities if n_graphs == 1 else batch * n_comm + communities
    s_c, in_c = community_sums(edge_index, key, edge_weight, n_graphs * n_comm)
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
    ei, comm, w, batch_, n_graphs, n_comm = _prepare(edge_index, communities, edge_weight,
                                                     num_nodes, batch)
    contrib, _ = _community_terms(ei, comm, w, batch_, n_graphs, n_comm, float(resolution))
    q = contrib.sum(1)
    return float(q[0]) if batch is None else q


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
        >>> dg.community_contributions(ei, torch.tensor([0, 0, 1, 1])).tolist()
        [0.25, 0.25]
    """
    ei, comm, w, batch_, n_graphs, n_comm = _prepare(edge_index, communities, edge_weight,
                                                     num_nodes, batch)
    contrib, _ = _community_terms(ei, comm, w, batch_, n_graphs, n_comm, float(resolution))
    return contrib[0] if batch is None else contrib
