"""Newman modularity with given communities, computed with scatter ops from edges alone.

Graphs follow PyG's undirected convention: every undirected edge ``{i, j}`` is stored in both
directions with the same weight. A self-loop is stored once and, as in networkx, adds its weight
twice to its node's strength.

For one graph with total undirected weight ``W`` (``2W`` = the sum of all stored edge weights)::

    Q = Σ_c [ w_in(c) / W − γ (S_c / 2W)² ]

where ``w_in(c)`` is the undirected weight inside community ``c`` and ``S_c`` its summed strength.

Contract, checked by :func:`modularity` and :func:`community_contributions` (each a clear
``ValueError``/``TypeError``): the stored entries are undirected (a one-direction edge list such as
:func:`dyngraph.knn_edges`' output is refused: make it undirected with
:func:`dyngraph.graphs.symmetrize`), weights are finite and ``>= 0``, with ``batch`` no edge joins
two graphs, node ids lie in ``[0, num_nodes)``, and ``γ`` is a finite number ``>= 0``. Community
ids are any integers ``>= 0``: memory and time depend on the number of distinct ids, never on
their values.
"""
from __future__ import annotations

import collections
import math
import weakref
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .._pyg import coalesce
from .._threads import one_thread_if_small
from .._validate import (
    check_class_axis,
    check_edge_index,
    check_edge_weight,
    check_labels,
    check_num_nodes,
    check_resolution,
    check_same_device,
    check_tensor,
    compact_labels,
)
from ._registry import register

if TYPE_CHECKING:
    from torch_geometric.data import Data

#: Largest ``graphs × C²`` mixing matrix that :func:`community_sums` scatters into; above it, it
#: scatters into ``graphs × C × 2`` (strength, inside) slots with one extra compare per entry.
MIXING_SLOTS = 1 << 16

__all__ = ["community_contributions", "modularity"]


def prepare_partition(edge_index, communities, edge_weight, num_nodes, batch, compact: bool = True
                      ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor], int, int]:
    """Checked ``(edge_index, communities, float64 weights, batch, n_graphs, n_comm)``.

    Weights must be ``>= 0`` (NaN/inf are caught on the totals, see :func:`terms_from_sums`).
    ``compact``: community ids larger than the number of nodes are compacted to ``0..K-1``
    (sorted distinct ids), so the scatter never has more slots than nodes; otherwise the ids
    index the result (a sparse, huge axis is refused by ``check_class_axis``)."""
    edge_index = check_edge_index(edge_index)
    check_tensor(communities, "communities")
    if num_nodes is None:
        num_nodes = communities.numel()
    num_nodes = check_num_nodes(num_nodes)
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
    if compact and n_comm > max(num_nodes, 1):  # ids beyond N: slots for distinct ids only
        codes, classes = compact_labels(communities)
        communities, n_comm = codes, int(classes.numel())
    elif not compact:
        check_class_axis(communities, n_comm, "communities")
    if n_edges and edge_index.device.type != "cpu":  # CPU index_select reports it (see below)
        e_lo, e_hi = edge_index.aminmax()
        _check_node_range(int(e_lo), int(e_hi), num_nodes)
    if n_edges and bool((edge_weight < 0).any()):
        neg = edge_weight < 0
        raise ValueError(f"edge_weight must be >= 0 (modularity is undefined for negative "
                         f"weights), got {int(neg.sum())} negative values, e.g. "
                         f"{float(edge_weight[neg][0]):.4g} on edge {int(neg.nonzero()[0])}; "
                         f"clamp them or build the graph with metric='euclidean' (unit weights)")
    if batch is None:
        n_graphs = 1
    else:
        batch = check_labels(batch, num_nodes, "batch")
        n_graphs = int(batch.max()) + 1 if num_nodes else 0
        check_class_axis(batch, n_graphs, "batch")
    return edge_index, communities, edge_weight.double(), batch, n_graphs, n_comm


_KEYS: Dict[torch.device, Tensor] = {}  # the largest node-key table made so far, per device


def _node_keys(n: int, device: torch.device) -> Tensor:
    """A fixed pseudo-random value in ``[1, 2)`` per node, ``[N]`` float64: an integer hash of
    the node id, the same on every device (31-bit arithmetic, so nothing overflows). The largest
    table made so far is kept per device (8 bytes per node) and sliced."""
    table = _KEYS.get(device)
    if table is None or table.numel() < n:
        m31 = (1 << 31) - 1
        x = (torch.arange(max(n, 1024), device=device, dtype=torch.int64) + 0x2545F491) & m31
        for mul, shift in ((0x5BD1E995, 15), (0x27D4EB2D, 13), (0x165667B1, 16)):
            x = (x * mul) & m31
            x = x ^ (x >> shift)
        table = x.double() * 2.0 ** -31 + 1.0
        _KEYS[device] = table
    return table[:n]


def check_undirected(edge_index: Tensor, edge_weight: Optional[Tensor], num_nodes: int,
                     what: str = "modularity") -> None:
    """Raises a ``ValueError`` unless the stored entries form an undirected graph: ``A = Aᵀ`` for
    the adjacency ``A`` that they sum to (repeated entries add up, as ``coalesce`` would).

    One ``O(E)`` pass first: with a fixed pseudo-random value ``f`` in ``[1, 2)`` per node,
    ``Σ_e w_e f_i f_j · f_j − Σ_e w_e f_i f_j · f_i = Σ_ij (A − Aᵀ)_ij f_i f_j²``, a polynomial in
    ``f`` that vanishes only when ``A = Aᵀ`` (each ordered pair has its own monomial), so a random
    ``f`` exposes any asymmetry. For an undirected graph both sums add the same multiset of
    floats (an entry's first term is its reverse's second, bit for bit) and differ by summation
    rounding only (under ``4·E·ε·Σw`` each). Only a larger gap triggers the exact comparison of
    the coalesced ``A`` and ``Aᵀ``, which names the missing reverse entries.
    """
    n_edges = edge_index.shape[1]
    if n_edges == 0:
        return
    ends = _gather(_node_keys(num_nodes, edge_index.device), edge_index.reshape(-1),
                   num_nodes).view(2, n_edges)
    pair = ends[0] * ends[1]  # f_i f_j (the same bits for the reverse entry)
    if edge_weight is not None:
        pair.mul_(edge_weight)
    total = float(n_edges) if edge_weight is None else edge_weight.sum()
    a, b, tot = torch.stack([pair.dot(ends[1]), pair.dot(ends[0]),
                             torch.as_tensor(total, dtype=pair.dtype,
                                             device=pair.device)]).tolist()
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(tot)):
        return  # NaN/inf weights: the caller's total-weight check names them
    if abs(a - b) <= 16.0 * (n_edges + 1) * 2.0 ** -52 * abs(tot):
        return
    _exact_undirected(edge_index, edge_weight, num_nodes, what)


def _exact_undirected(edge_index: Tensor, edge_weight: Optional[Tensor], num_nodes: int,
                      what: str) -> None:
    w = edge_weight if edge_weight is not None else \
        torch.ones(edge_index.shape[1], dtype=torch.float64, device=edge_index.device)
    ei, a = coalesce(edge_index, w, num_nodes, reduce="add")
    ei_t, a_t = coalesce(edge_index.flip(0), w, num_nodes, reduce="add")
    nz, nz_t = a != 0, a_t != 0  # (a zero entry is the same as no entry)
    ei, a, ei_t, a_t = ei[:, nz], a[nz], ei_t[:, nz_t], a_t[nz_t]
    if a.numel() == 0:
        return
    atol = 1e-12 * float(a.abs().max())
    key = ei[0] * num_nodes + ei[1]
    key_t = ei_t[0] * num_nodes + ei_t[1]
    pos = torch.searchsorted(key_t, key).clamp_max(key_t.numel() - 1)
    bad = (key_t[pos] != key) | ~torch.isclose(a, a_t[pos], rtol=1e-9, atol=atol)
    if not bool(bad.any()):
        return  # symmetric up to the rounding of repeated entries
    i, j = (int(v) for v in ei[:, bad.nonzero()[0, 0]])
    raise ValueError(
        f"{what} needs an undirected graph (PyG's convention: every edge stored in both "
        f"directions with the same weight), but {int(bad.sum())} of the {ei.shape[1]} entries of "
        f"edge_index/edge_weight have no reverse entry of equal weight (e.g. {i}→{j}). A "
        f"one-direction edge list such as dg.knn_edges' output must be made undirected first: "
        f"dg.graphs.symmetrize(edge_index, edge_weight, num_nodes) (or "
        f"torch_geometric.utils.to_undirected)")


def check_within_graphs(edge_index: Tensor, batch: Tensor) -> None:
    """Raises a ``ValueError`` when an edge joins nodes of two graphs of ``batch``."""
    if edge_index.shape[1] == 0:
        return
    ends = _gather(batch, edge_index.reshape(-1), batch.numel()).view(2, -1)
    cross = ends[0] != ends[1]
    if bool(cross.any()):
        e = int(cross.nonzero()[0, 0])
        i, j = int(edge_index[0, e]), int(edge_index[1, e])
        raise ValueError(f"with batch, every edge must join two nodes of the same graph, got "
                         f"{int(cross.sum())} edges across graphs, e.g. edge {e}: {i}→{j} joins "
                         f"graph {int(ends[0, e])} and graph {int(ends[1, e])}")


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
    w = _loops_twice(row, col, edge_weight)
    n_nodes = communities.numel()
    if batch is None:
        lab = _gather(communities, edge_index.reshape(-1), n_nodes)
        src, dst = lab[:n_edges], lab[n_edges:]
    else:
        src = _gather(batch * n_comm + communities, row, n_nodes)
        dst = _gather(communities, col, n_nodes)
    return _slot_sums(src, dst, w, n_comm, n_graphs, batched=batch is not None)


def _loops_twice(row: Tensor, col: Tensor, w: Tensor) -> Tensor:
    """Edge weights with self-loops counted twice (networkx's convention)."""
    loops = row == col
    if w.device.type != "cpu" or int(loops.count_nonzero()):  # (no host sync on accelerators)
        w = w + w * loops
    return w


def _slot_sums(src: Tensor, dst: Tensor, w: Tensor, n_comm: int, n_graphs: int, batched: bool
               ) -> Tuple[Tensor, Tensor]:
    """:func:`community_sums` from the endpoints' slots: ``src`` = graph·C + the source's
    community (``batched``) or the community, ``dst`` the target's community, ``w`` the weights
    (loops already doubled); flat ``(S_c, 2·w_in(c))`` ``[n_graphs · C]``."""
    size = n_graphs * n_comm
    if size * n_comm <= MIXING_SLOTS:
        mix = w.new_zeros(size * n_comm).scatter_add_(0, torch.add(dst, src, alpha=n_comm), w)
        mix = mix.view(size, n_comm)
        inside = mix.view(n_graphs, n_comm, n_comm).diagonal(dim1=1, dim2=2).reshape(size)
        return mix.sum(1), inside
    slot = torch.add((src % n_comm == dst) if batched else (src == dst), src, alpha=2)
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


#: Graphs that passed the contract checks: weak references to their tensors with the tensors'
#: version counters, so that repeated calls on the same tensors (a label-permutation null, a
#: benchmark loop) check once. An in-place change bumps a version counter: checked again.
_CHECKED: "collections.OrderedDict[Tuple[int, ...], Tuple[Any, ...]]" = collections.OrderedDict()
_CHECKED_SIZE = 8


def _checked_key(*tensors: Optional[Tensor]) -> Tuple[Tuple[int, ...], Tuple[Any, ...]]:
    key = tuple(id(t) for t in tensors)
    state = tuple((None, None) if t is None else (weakref.ref(t), t._version) for t in tensors)
    return key, state


def _was_checked(key: Tuple[int, ...], state: Tuple[Any, ...], n: int) -> bool:
    seen = _CHECKED.get(key)
    if seen is None or seen[0] != n:
        return False
    return all((r is None and s is None) or (r is not None and s is not None and r() is s()
                                             and v == w)
               for (r, v), (s, w) in zip(seen[1], state))


def _check_contract(edge_index: Tensor, edge_weight: Optional[Tensor], batch: Optional[Tensor],
                    ei: Tensor, w: Tensor, batch_: Optional[Tensor], n: int, what: str) -> None:
    """The ``O(E)`` checks of a user's graph (undirected; with ``batch``, no edge across
    graphs), skipped for tensors that passed before and have not changed since."""
    key, state = _checked_key(edge_index, edge_weight, batch)
    if _was_checked(key, state, n):
        return
    check_undirected(ei, None if edge_weight is None else w, n, what)
    if batch_ is not None:
        check_within_graphs(ei, batch_)
    _CHECKED[key] = (n, state)
    while len(_CHECKED) > _CHECKED_SIZE:
        _CHECKED.popitem(last=False)


def modularity_q(edge_index, communities, edge_weight, num_nodes, batch, resolution, *,
                 check: bool, what: str = "modularity") -> Union[float, Tensor]:
    """:func:`modularity`; ``check=False`` skips the ``O(E)`` contract checks (undirected, no
    edge across graphs) for graphs that dyngraph built itself. Small graphs run on one thread
    (see :mod:`dyngraph._threads`)."""
    work = int(edge_index.shape[-1]) if isinstance(edge_index, Tensor) else 0
    with one_thread_if_small(work):
        return _q_body(edge_index, communities, edge_weight, num_nodes, batch, resolution,
                       check=check, what=what)


def _q_body(edge_index, communities, edge_weight, num_nodes, batch, resolution, *, check: bool,
            what: str) -> Union[float, Tensor]:
    resolution = check_resolution(resolution)
    ei, comm, w, batch_, n_graphs, n_comm = prepare_partition(edge_index, communities,
                                                              edge_weight, num_nodes, batch)
    if check:
        _check_contract(edge_index, edge_weight, batch, ei, w, batch_, comm.numel(), what)
    if batch is not None:
        contrib, _ = community_terms(ei, comm, w, batch_, n_graphs, n_comm, resolution)
        return contrib.sum(1)
    # One graph: Q = Σ 2w_in(c) / 2W − γ Σ (S_c / 2W)², reduced to two host scalars. The
    # strengths are normalised before they are squared, so weights near the limits of float64
    # (1e-200, 1e200) neither underflow nor overflow.
    s_c, in_c = community_sums(ei, comm, w, n_comm)
    two_w = s_c.sum()
    two = float(two_w)
    if not (math.isfinite(two) and two > 0):
        _bad_total(two_w, edge_weight)
    a_c = s_c / two_w
    return float(in_c.sum()) / two - resolution * float(a_c.dot(a_c))


def modularity(edge_index: Tensor, communities: Tensor, edge_weight: Optional[Tensor] = None,
               num_nodes: Optional[int] = None, batch: Optional[Tensor] = None,
               resolution: float = 1.0) -> Union[float, Tensor]:
    r"""Weighted Newman modularity of a given partition, with scatter ops.

    Args:
        edge_index: ``[2, E]`` edges of an undirected graph, both directions stored (PyG's
            convention; a one-direction edge list, such as :func:`~dyngraph.knn_edges`' output,
            is a ``ValueError``: pass it through :func:`~dyngraph.graphs.symmetrize` first).
        communities: ``[N]`` integer community (class) of each node, values >= 0 (any values:
            only which nodes share one matters).
        edge_weight: ``[E]`` finite weights ``>= 0``; ``None`` means 1 for every edge.
        num_nodes: ``N``; defaults to ``communities.numel()``.
        batch: ``[N]`` graph index of each node, for many graphs in one pass (no edge may join
            two graphs).
        resolution: The resolution ``γ``, a finite number ``>= 0`` (1 in the reference).

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
        >>> ids = torch.tensor([0, 0, 0, 10**9, 10**9, 10**9])   # only distinct ids matter
        >>> round(dg.modularity(ei, ids), 4)
        0.3571
    """
    return modularity_q(edge_index, communities, edge_weight, num_nodes, batch, resolution,
                        check=True)


def _contributions(edge_index, communities, edge_weight, num_nodes, batch, resolution, *,
                   check: bool) -> Tensor:
    resolution = check_resolution(resolution)
    ei, comm, w, batch_, n_graphs, n_comm = prepare_partition(edge_index, communities,
                                                              edge_weight, num_nodes, batch,
                                                              compact=False)
    if check:
        _check_contract(edge_index, edge_weight, batch, ei, w, batch_, comm.numel(),
                        "community_contributions")
    contrib, _ = community_terms(ei, comm, w, batch_, n_graphs, n_comm, resolution)
    return contrib[0] if batch is None else contrib


def community_contributions(edge_index: Tensor, communities: Tensor,
                            edge_weight: Optional[Tensor] = None, num_nodes: Optional[int] = None,
                            batch: Optional[Tensor] = None, resolution: float = 1.0) -> Tensor:
    """Each community's term ``w_in(c)/W − γ (S_c/2W)²``; the terms sum to the modularity.

    Args:
        edge_index, communities, edge_weight, num_nodes, batch, resolution: As in
            :func:`modularity` (the same contract is checked).

    Returns:
        float64 ``[C]`` for one graph, or ``[B, C]`` with ``batch`` (``C = max(communities) + 1``,
        indexed by community id; absent communities contribute 0). Ids so sparse that most of
        that axis would be empty and it would exceed 2**20 entries are a ``ValueError``:
        relabel them ``0..K-1`` with ``torch.unique(communities, return_inverse=True)[1]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> ei = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
        >>> dg.measures.community_contributions(ei, torch.tensor([0, 0, 1, 1])).tolist()
        [0.25, 0.25]
    """
    return _contributions(edge_index, communities, edge_weight, num_nodes, batch, resolution,
                          check=True)


# ============================================================================ registered measures
def require_graph(graph: Optional[Data], name: str) -> Data:
    if graph is None:
        raise ValueError(f"measure {name!r} needs the layer's kNN graph; it got graph=None")
    return graph


#: Edge slots (permutations × edges) per scatter pass of the batched modularity null.
NULL_SLOTS = 1 << 22


def _modularity_null(x: Tensor, ys: Tensor, graph: Optional[Data], resolution: float = 1.0
                     ) -> Tensor:
    """Q of the layer's graph under each row of ``ys`` ``[P, N]`` (permuted labels), float64
    ``[P]``: the permutations are graphs of one batch that share the edges, so a chunk of them is
    one scatter pass; every value equals :func:`_modularity` on that row, bit for bit (the same
    per-slot sums, in the same order)."""
    g = require_graph(graph, "modularity")
    n = int(g.num_nodes)
    if ys.dim() != 2 or ys.shape[1] != n:
        raise ValueError(f"ys must be [P, {n}] permuted labels, got {tuple(ys.shape)}")
    codes = compact_labels(check_labels(ys.reshape(-1), ys.numel(), "y"))[0].view_as(ys)
    ei, w = g.edge_index, g.edge_weight
    n_edges = int(ei.shape[1])
    n_comm = int(codes.max()) + 1 if codes.numel() else 1
    resolution = check_resolution(resolution)
    chunk = max(1, NULL_SLOTS // max(n_edges, 1))
    row, col = ei[0], ei[1]
    w64 = _loops_twice(row, col, w.double())
    out = []
    for s in range(0, ys.shape[0], chunk):
        # the permutations of a chunk are graphs of one batch sharing the edges: community_sums'
        # slots for every (permutation, edge), in the order the batched edge list would have
        yb = codes[s:s + chunk]
        p = int(yb.shape[0])
        src = (yb[:, row] + (torch.arange(p, device=ei.device) * n_comm).unsqueeze(1))
        s_c, inside = _slot_sums(src.reshape(-1), yb[:, col].reshape(-1), w64.repeat(p), n_comm,
                                 p, batched=True)
        terms, _ = terms_from_sums(s_c.view(p, n_comm), inside.view(p, n_comm), resolution, w64)
        out.append(terms.sum(-1))
    return torch.cat(out).to(torch.float64)


@register("modularity", graph=True, description="Newman modularity Q of the kNN graph, the "
          "classes as communities (Lu et al. 2022)", null=_modularity_null)
def _modularity(x: Tensor, y: Tensor, graph: Optional[Data], resolution: float = 1.0) -> float:
    g = require_graph(graph, "modularity")
    y = compact_labels(check_labels(y, int(g.num_nodes), "y"))[0]  # (0..C-1 kept as they are)
    # The sum of the community terms: the arithmetic of DynamicGraph.modularity, bit for bit.
    # (The graph is the runner's own undirected snapshot: the O(E) contract checks are skipped.)
    return float(_contributions(g.edge_index, y, g.edge_weight, g.num_nodes, None, resolution,
                               check=False).sum())
