"""Community evolution over depth: how the class structure forms and merges from layer to layer.

On each snapshot (scatter ops, PyG conventions: undirected edges stored in both directions):

* per-class modularity contributions (``DynamicGraph.class_contributions``) as curves;
* the class-mixing matrix ``C × C``: the share of edge weight between each pair of classes, and
  the depth at which each pair of classes separates (:func:`separation_depth`);
* kNN label purity, from features (:func:`knn_purity`) or from a snapshot (:func:`graph_purity`);
* communities found without labels (Leiden through igraph's C implementation by default —
  the fastest in ``benchmarks/bench_community.py`` —, ``leidenalg``, or Louvain through networkx
  or igraph), scored against the labels with NMI and ARI computed in torch from the contingency
  table;
* the transition matrices between consecutive layers' communities, drawn as a flow (alluvial)
  figure or as heatmaps.

:func:`community_evolution` runs everything over a :class:`~dyngraph.DynamicGraph` and returns a
:class:`CommunityEvolution` with curves, matrices, figures, JSON and TensorBoard output.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from .._curve import Curve
from .._io import PathLike, atomic_write_json
from .._validate import (
    check_choice,
    check_edge_index,
    check_edge_weight,
    check_features,
    check_k,
    check_labels,
    check_same_device,
    check_tensor,
)
from ..graphs._knn import nearest_neighbors
from ._modularity import _graph
from ._modularity import modularity as _modularity
from ._registry import register

#: Community detection methods. ``'leiden'``: igraph's C Leiden (modularity objective), the
#: default because it was the fastest; ``'leidenalg'``: the leidenalg package; ``'louvain'``:
#: networkx's ``louvain_communities``; ``'louvain_igraph'``: igraph's ``community_multilevel``.
METHODS = ("leiden", "leidenalg", "louvain", "louvain_igraph")
DEFAULT_METHOD = "leiden"
NORMALIZE = ("total", "row", None)


# ================================================================================== helpers
def _edges(edge_index, edge_weight, num_nodes, y=None, y_name="y"):
    ei = check_edge_index(edge_index)
    if num_nodes is None:
        if y is not None:
            num_nodes = int(torch.as_tensor(y).numel())
        else:
            num_nodes = int(ei.max()) + 1 if ei.numel() else 0
    if ei.numel() and int(ei.max()) >= num_nodes:
        raise ValueError(f"edge_index refers to node {int(ei.max())} but num_nodes={num_nodes}")
    if edge_weight is None:
        edge_weight = torch.ones(ei.shape[1], device=ei.device)
    w = check_edge_weight(edge_weight, ei.shape[1]).to(torch.float64)
    check_same_device(edge_index=ei, edge_weight=w)
    return ei, w, num_nodes


def _n_classes(y: Tensor, num_classes: Optional[int], name: str = "y") -> int:
    top = int(y.max()) + 1 if y.numel() else 0
    if num_classes is None:
        return top
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < top:
        raise ValueError(f"num_classes must be an int >= max({name}) + 1 = {top}, got "
                         f"{num_classes!r}")
    return num_classes


def _batch_info(batch, num_nodes, device) -> Tuple[Optional[Tensor], int]:
    if batch is None:
        return None, 1
    batch = check_labels(batch, num_nodes, "batch").to(device)
    return batch, (int(batch.max()) + 1 if num_nodes else 0)


# ================================================================================== class mixing
def class_mixing(edge_index: Tensor, y: Tensor, edge_weight: Optional[Tensor] = None,
                 num_nodes: Optional[int] = None, batch: Optional[Tensor] = None,
                 num_classes: Optional[int] = None, normalize: Optional[str] = "total") -> Tensor:
    """The class-mixing matrix: how a graph's edge weight is shared between pairs of classes.

    ``M[a, b] = Σ_{edges i→j, y_i = a, y_j = b} w_ij``, normalised. For an undirected graph (both
    directions stored) ``M`` is symmetric, ``M[a, a]`` is the share of weight inside class ``a``,
    ``M[a, b] + M[b, a]`` the share between ``a`` and ``b``, and ``trace(M)`` the weighted edge
    homophily. Classes whose off-diagonal entries vanish have separated.

    Args:
        edge_index: ``[2, E]``.
        y: ``[N]`` integer classes.
        edge_weight: ``[E]`` (default 1).
        num_nodes: ``N`` (default ``y.numel()``).
        batch: ``[N]`` graph index, for many graphs (e.g. all layers) in one pass.
        num_classes: ``C`` (default ``max(y) + 1``).
        normalize: ``'total'`` (entries sum to 1 per graph), ``'row'`` (each row sums to 1: where
            class ``a``'s weight goes; rows of absent classes stay 0) or ``None`` (raw weights).

    Returns:
        float64 ``[C, C]``, or ``[B, C, C]`` with ``batch``.

    Example:
        >>> import torch, dyngraph as dg
        >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])   # 0–1 inside class 0, 1–2 across
        >>> dg.measures.class_mixing(ei, torch.tensor([0, 0, 1])).tolist()
        [[0.5, 0.25], [0.25, 0.0]]
    """
    check_choice(normalize, "normalize", NORMALIZE)
    check_tensor(y, "y")
    ei, w, n = _edges(edge_index, edge_weight, num_nodes, y)
    y = check_labels(y, n, "y").to(ei.device)
    c = _n_classes(y, num_classes)
    batch, b = _batch_info(batch, n, ei.device)
    row, col = ei
    key = y[row] * c + y[col]
    if batch is not None:
        key = key + batch[row] * (c * c)
    m = scatter(w, key, dim=0, dim_size=b * c * c, reduce="sum").view(b, c, c)
    if normalize == "total":
        tot = m.sum((1, 2), keepdim=True)
        if bool((tot <= 0).any()):
            bad = (tot.flatten() <= 0).nonzero().flatten().tolist()
            raise ValueError(f"class_mixing: graphs {bad[:10]} have no positive edge weight")
        m = m / tot
    elif normalize == "row":
        rs = m.sum(2, keepdim=True)
        m = torch.where(rs > 0, m / rs.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))
    return m[0] if batch is None else m


def mixing_ratio(mixing: Tensor) -> Tensor:
    """Observed over expected cross-class weight: ``M[a, b] / (s_a s_b)``.

    ``mixing`` must be total-normalised and symmetric (:func:`class_mixing` of an undirected
    graph); ``s_a = Σ_b M[a, b]`` is class ``a``'s share of the strength. Under the configuration
    model (no class structure) the ratio is 1; it falls to 0 as two classes separate. Entries
    involving an absent class are 0.

    Args:
        mixing: ``[C, C]`` or ``[L, C, C]``.

    Returns:
        The ratio, same shape, float64.

    Example:
        >>> import torch, dyngraph as dg
        >>> mix = torch.tensor([[0.25, 0.25], [0.25, 0.25]])   # no class structure at all
        >>> dg.measures.mixing_ratio(mix).tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """
    check_tensor(mixing, "mixing")
    m = mixing.to(torch.float64)
    if m.dim() not in (2, 3) or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"mixing must be [C, C] or [L, C, C], got {tuple(m.shape)}")
    s = m.sum(-1)
    exp = s.unsqueeze(-1) * s.unsqueeze(-2)
    return torch.where(exp > 0, m / exp.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))


def separation_depth(mixing: Tensor, threshold: float = 0.1) -> Tensor:
    """For each pair of classes, the first layer from which they stay separated.

    A pair ``(a, b)`` counts as separated at layer ``l`` when its :func:`mixing_ratio` is below
    ``threshold`` (the weight between them is under ``threshold`` times what the class sizes alone
    would give) at ``l`` and every later layer.

    Args:
        mixing: ``[L, C, C]`` total-normalised class mixing, one matrix per layer.
        threshold: Ratio below which a pair counts as separated.

    Returns:
        ``[C, C]`` long: the layer index, or ``-1`` when the pair never separates for good (and
        on the diagonal).

    Example:
        >>> import torch, dyngraph as dg
        >>> mix = torch.tensor([[[.25, .25], [.25, .25]], [[.45, .05], [.05, .45]], [[.5, 0], [0, .5]]])
        >>> dg.measures.separation_depth(mix, threshold=0.3).tolist()
        [[-1, 1], [1, -1]]
    """
    if not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(f"threshold must be a positive number, got {threshold!r}")
    r = mixing_ratio(mixing)
    if r.dim() != 3:
        raise ValueError(f"mixing must be [L, C, C] (one matrix per layer), got {tuple(r.shape)}")
    sep = r < threshold                                  # [L, C, C]
    # stays separated from l on: reverse cumulative AND
    stay = sep.flip(0).to(torch.int64).cumprod(0).flip(0).bool()
    any_ = stay.any(0)
    first = stay.to(torch.int64).argmax(0)
    out = torch.where(any_, first, torch.full_like(first, -1))
    out.fill_diagonal_(-1)
    return out


# ================================================================================== purity
def knn_purity(x: Tensor, y: Tensor, k: int = 10, metric: str = "cosine", backend: str = "auto",
               per_class: bool = False) -> Union[float, Tensor]:
    """kNN label purity: the share of each sample's k nearest neighbours that share its label.

    ``(1/N) Σ_i (1/k) Σ_{j ∈ N_k(i)} [y_j = y_i]`` with exact kNN from :func:`dyngraph.graphs.nearest_neighbors` (no
    self-neighbour). Chance level is about ``Σ_c a_c²`` (``1/C`` for balanced classes).

    Args:
        x: ``[N, D]`` (or ``[N, ...]``, flattened).
        y: ``[N]`` integer classes.
        k: Neighbours.
        metric: ``'cosine'`` or ``'euclidean'``.
        backend: kNN backend.
        per_class: Return the mean purity of each class ``[C]`` (float64) instead of the overall.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.tensor([[0.], [0.1], [5.], [5.1]])
        >>> dg.measures.knn_purity(x, torch.tensor([0, 0, 1, 1]), k=1, metric='euclidean')
        1.0
    """
    check_features(x, "x", ndim=None, min_rows=2)
    if x.dim() < 2:
        raise ValueError(f"x must be [N, D], got shape {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1)
    y = check_labels(y, x.shape[0], "y")
    check_same_device(x=x, y=y)
    check_k(k, x.shape[0])
    _, idx = nearest_neighbors(x, k, metric=metric, backend=backend)
    same = (y[idx] == y.unsqueeze(1)).to(torch.float64).mean(1)
    if per_class:
        return scatter(same, y, dim=0, dim_size=int(y.max()) + 1, reduce="mean")
    return float(same.mean())


def graph_purity(edge_index: Tensor, y: Tensor, edge_weight: Optional[Tensor] = None,
                 num_nodes: Optional[int] = None, batch: Optional[Tensor] = None,
                 per_class: bool = False) -> Union[float, Tensor]:
    """Label purity of a (kNN) graph: each node's share of incoming edge weight that comes from
    its own class, averaged over the nodes that have incoming weight.

    For a directed, unit-weight kNN graph (:func:`dyngraph.knn_edges` with
    ``metric='euclidean'``) this is exactly :func:`knn_purity`; on a weighted snapshot it is the
    weighted version (PyG's node homophily with weights).

    Args:
        edge_index: ``[2, E]`` (``edge_index[1]`` is the receiving node, PyG's flow).
        y: ``[N]`` classes.
        edge_weight: ``[E]`` non-negative weights (default 1).
        num_nodes: ``N``.
        batch: ``[N]`` graph index: one value per graph.
        per_class: Mean purity of each class's nodes.

    Returns:
        A float; float64 ``[B]`` with ``batch``; ``[C]`` or ``[B, C]`` with ``per_class``.

    Example:
        >>> import torch, dyngraph as dg
        >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> dg.measures.graph_purity(ei, torch.tensor([0, 0, 1]))   # node 1: half its weight from class 0
        0.5
    """
    check_tensor(y, "y")
    ei, w, n = _edges(edge_index, edge_weight, num_nodes, y)
    if ei.numel() and bool((w < 0).any()):
        raise ValueError("graph_purity needs non-negative edge weights")
    y = check_labels(y, n, "y").to(ei.device)
    batch, b = _batch_info(batch, n, ei.device)
    row, col = ei
    same = scatter(w * (y[row] == y[col]).to(w.dtype), col, dim=0, dim_size=n, reduce="sum")
    tot = scatter(w, col, dim=0, dim_size=n, reduce="sum")
    has = tot > 0
    node = torch.where(has, same / tot.clamp_min(torch.finfo(w.dtype).tiny),
                       torch.zeros_like(tot))
    g = batch if batch is not None else torch.zeros(n, dtype=torch.long, device=ei.device)
    if per_class:
        c = int(y.max()) + 1
        key = g * c + y
        num = scatter(node * has, key, dim=0, dim_size=b * c, reduce="sum")
        den = scatter(has.to(w.dtype), key, dim=0, dim_size=b * c, reduce="sum")
        out = torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num)).view(b, c)
        return out[0] if batch is None else out
    num = scatter(node * has, g, dim=0, dim_size=b, reduce="sum")
    den = scatter(has.to(w.dtype), g, dim=0, dim_size=b, reduce="sum")
    if bool((den <= 0).any()):
        bad = (den <= 0).nonzero().flatten().tolist()
        raise ValueError(f"graph_purity: graphs {bad[:10]} have no node with incoming edge weight")
    out = num / den
    return float(out[0]) if batch is None else out


# ================================================================================== detection
def _undirected_pairs(ei: Tensor, w: Tensor, n: int) -> Tuple[Tensor, Tensor]:
    """Each unordered pair once (i < j), weight of the ``(A + Aᵀ)/2`` symmetrisation."""
    from ..graphs._graph import symmetrize
    ei2, w2 = symmetrize(ei, w, n, "mean")
    keep = ei2[0] < ei2[1]
    return ei2[:, keep], w2[keep]


def _relabel_by_size(memb: Tensor) -> Tensor:
    """Community ids ordered by decreasing size, ties by the smallest member (deterministic)."""
    n = memb.numel()
    uniq, inv = torch.unique(memb, return_inverse=True)
    size = torch.bincount(inv, minlength=uniq.numel())
    first = torch.full((uniq.numel(),), n, dtype=torch.long).scatter_reduce(
        0, inv, torch.arange(n), reduce="amin")
    order = sorted(range(uniq.numel()), key=lambda c: (-int(size[c]), int(first[c])))
    rank = torch.empty(uniq.numel(), dtype=torch.long)
    rank[torch.tensor(order, dtype=torch.long)] = torch.arange(uniq.numel())
    return rank[inv]


_PACKAGES = {"leiden": ("igraph",), "louvain_igraph": ("igraph",),
             "leidenalg": ("igraph", "leidenalg"), "louvain": ("networkx",)}


def _require(method: str) -> None:
    import importlib.util
    missing = [p for p in _PACKAGES[method] if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(f"method={method!r} needs {' and '.join(missing)}: pip install "
                          f"{' '.join(missing)} (or choose another method from {list(METHODS)})")


def detect_communities(edge_index: Tensor, edge_weight: Optional[Tensor] = None,
                       num_nodes: Optional[int] = None, method: str = DEFAULT_METHOD,
                       resolution: float = 1.0, seed: int = 0, n_iterations: int = -1) -> Tensor:
    """Communities of a graph found without labels, by modularity optimisation.

    The graph is made undirected with the reference rule ``(A + Aᵀ)/2`` (a no-op on snapshots,
    which already store both directions with equal weights); self-loops are dropped.

    Args:
        edge_index: ``[2, E]``.
        edge_weight: ``[E]`` non-negative weights (default 1).
        num_nodes: ``N`` (default ``max(edge_index) + 1``).
        method: ``'leiden'`` (igraph's C Leiden, modularity objective; default, the fastest
            measured), ``'leidenalg'`` (leidenalg's ``RBConfigurationVertexPartition``),
            ``'louvain'`` (networkx ``louvain_communities``) or ``'louvain_igraph'`` (igraph
            ``community_multilevel``).
        resolution: Modularity resolution ``γ`` (larger: more, smaller communities).
        seed: Random seed (results are deterministic for a given seed).
        n_iterations: Leiden iterations; ``-1`` runs until the partition is stable.

    Returns:
        ``[N]`` long community ids on ``edge_index``'s device, ``0`` the largest community.

    Example:
        >>> import torch, dyngraph as dg
        >>> src = [0, 1, 2, 0, 3, 4, 5, 3, 2]          # two triangles joined by one edge
        >>> dst = [1, 2, 0, 2, 4, 5, 3, 5, 3]
        >>> ei = torch.tensor([src + dst, dst + src])
        >>> dg.measures.detect_communities(ei).tolist()
        [0, 0, 0, 1, 1, 1]
    """
    check_choice(method, "method", METHODS)
    ei, w, n = _edges(edge_index, edge_weight, num_nodes)
    if n == 0:
        raise ValueError("detect_communities: the graph has no nodes")
    if ei.numel() and bool((w < 0).any()):
        raise ValueError(f"detect_communities needs non-negative edge weights; "
                         f"{int((w < 0).sum())} are negative (modularity is undefined). Clamp them, or build the graph "
                         f"with metric='euclidean' (unit weights)")
    if not isinstance(resolution, (int, float)) or not resolution > 0:
        raise ValueError(f"resolution must be a positive number, got {resolution!r}")
    _require(method)
    device = ei.device
    pairs, pw = _undirected_pairs(ei, w, n)
    edges = pairs.t().cpu().tolist()
    weights = pw.cpu().tolist()
    if method == "louvain":
        import networkx as nx
        g = nx.Graph()
        g.add_nodes_from(range(n))
        g.add_weighted_edges_from((a, b, c) for (a, b), c in zip(edges, weights))
        comms = nx.community.louvain_communities(g, weight="weight", resolution=resolution,
                                                 seed=seed)
        memb = torch.empty(n, dtype=torch.long)
        for cid, members in enumerate(comms):
            memb[torch.tensor(sorted(members), dtype=torch.long)] = cid
    else:
        import igraph as ig
        g = ig.Graph(n=n, edges=edges)
        g.es["weight"] = weights
        if method == "leidenalg":
            import leidenalg
            part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition,
                                            weights="weight", resolution_parameter=resolution,
                                            n_iterations=n_iterations, seed=seed)
            memb = torch.tensor(part.membership, dtype=torch.long)
        else:
            rng = random.Random(seed)
            ig.set_random_number_generator(rng)
            try:
                if method == "leiden":
                    part = g.community_leiden(objective_function="modularity", weights="weight",
                                              resolution=resolution, n_iterations=n_iterations)
                else:
                    part = g.community_multilevel(weights="weight", resolution=resolution)
            finally:
                ig.set_random_number_generator(random)
            memb = torch.tensor(part.membership, dtype=torch.long)
    return _relabel_by_size(memb).to(device)


# ================================================================================== NMI / ARI
def _compact(a: Tensor, name: str) -> Tensor:
    check_tensor(a, name)
    if a.dim() != 1:
        raise ValueError(f"{name} must be 1-D [N] labels, got shape {tuple(a.shape)}")
    a = check_labels(a, a.numel(), name)
    return torch.unique(a, return_inverse=True)[1]


def contingency_table(a: Tensor, b: Tensor) -> Tensor:
    """Counts ``n_ij`` of samples in cluster ``i`` of ``a`` and cluster ``j`` of ``b``.

    Cluster ids are compacted (sorted unique values → ``0..K−1``), so any non-negative ids work.

    Args:
        a, b: ``[N]`` integer labels of the same samples.

    Returns:
        ``[Ka, Kb]`` long.

    Example:
        >>> import torch, dyngraph as dg
        >>> dg.measures.contingency_table(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 7, 7, 7])).tolist()
        [[1, 1], [0, 2]]
    """
    ca, cb = _compact(a, "a"), _compact(b, "b")
    if ca.numel() != cb.numel():
        raise ValueError(f"a and b must label the same samples, got {ca.numel()} and {cb.numel()}")
    if ca.numel() == 0:
        raise ValueError("a and b are empty")
    check_same_device(a=ca, b=cb)
    ka, kb = int(ca.max()) + 1, int(cb.max()) + 1
    return torch.bincount(ca * kb + cb, minlength=ka * kb).view(ka, kb)


def normalized_mutual_info(a: Tensor, b: Tensor) -> float:
    """Normalised mutual information ``I(a; b) / mean(H(a), H(b))`` (arithmetic mean, scikit-learn's
    default), in float64 from the contingency table. Two single-cluster labelings give 1.

    Example:
        >>> import torch, dyngraph as dg
        >>> dg.measures.normalized_mutual_info(torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 0, 0]))
        1.0
    """
    t = contingency_table(a, b).to(torch.float64)
    if t.shape[0] == 1 and t.shape[1] == 1:
        return 1.0
    n = t.sum()
    pij = t / n
    pi, pj = pij.sum(1), pij.sum(0)
    nz = pij > 0
    mi = (pij[nz] * (pij[nz].log() - (pi.unsqueeze(1) * pj.unsqueeze(0))[nz].log())).sum()
    ha = -(pi[pi > 0] * pi[pi > 0].log()).sum()
    hb = -(pj[pj > 0] * pj[pj > 0].log()).sum()
    den = (ha + hb) / 2
    if float(den) <= 0:
        return 0.0
    return float((mi / den).clamp(0.0, 1.0))


def adjusted_rand_index(a: Tensor, b: Tensor) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985), in float64 from the contingency table.

    ``(Σ C(n_ij, 2) − E) / (½(Σ C(a_i, 2) + Σ C(b_j, 2)) − E)`` with
    ``E = Σ C(a_i, 2) Σ C(b_j, 2) / C(n, 2)``; 1 for identical partitions (up to renaming), about
    0 for independent ones. Degenerate cases follow scikit-learn (both trivial: 1).

    Example:
        >>> import torch, dyngraph as dg
        >>> dg.measures.adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([3, 3, 2, 2]))
        1.0
    """
    t = contingency_table(a, b).to(torch.float64)
    n = t.sum()
    comb = lambda v: v * (v - 1) / 2
    sum_ij = comb(t).sum()
    sa, sb = comb(t.sum(1)).sum(), comb(t.sum(0)).sum()
    expected = sa * sb / comb(n)
    den = (sa + sb) / 2 - expected
    if float(den) == 0.0:
        return 1.0
    return float((sum_ij - expected) / den)


# ================================================================================== transitions
def community_transitions(communities: Sequence[Tensor], normalize: Optional[str] = "row"
                          ) -> List[Tensor]:
    """Transition matrices between the communities of consecutive layers.

    ``T_l[i, j]`` counts the samples in community ``i`` at layer ``l`` and community ``j`` at layer
    ``l + 1``. A row spread over several columns is a split; a column fed by several rows is a
    merge.

    Args:
        communities: ``L`` tensors ``[N]`` of community ids (the same samples at every layer),
            e.g. from :func:`detect_communities`.
        normalize: ``'row'`` (each row sums to 1: where community ``i``'s samples go), ``'total'``
            (the matrix sums to 1) or ``None`` (counts).

    Returns:
        ``L − 1`` float64 matrices ``[K_l, K_{l+1}]`` (ids compacted per layer).

    Example:
        >>> import torch, dyngraph as dg
        >>> t = dg.measures.community_transitions([torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1])])
        >>> t[0].tolist()
        [[1.0, 0.0], [0.5, 0.5]]
    """
    check_choice(normalize, "normalize", NORMALIZE)
    if isinstance(communities, Tensor) or not isinstance(communities, (list, tuple)):
        raise TypeError(f"communities must be a list of [N] tensors, got "
                        f"{type(communities).__name__}")
    if len(communities) < 2:
        raise ValueError(f"community_transitions needs at least 2 layers, got {len(communities)}")
    out = []
    for l in range(len(communities) - 1):
        t = contingency_table(communities[l], communities[l + 1]).to(torch.float64)
        if normalize == "row":
            t = t / t.sum(1, keepdim=True)
        elif normalize == "total":
            t = t / t.sum()
        out.append(t)
    return out


# ================================================================================== figures
def _ordered_communities(comm: Tensor, labels: Optional[Tensor]
                         ) -> Tuple[List[int], Dict[int, int]]:
    """Community ids in drawing order (by majority label, then size) and each one's majority."""
    ids, counts = torch.unique(comm, return_counts=True)
    major: Dict[int, int] = {}
    for c in ids.tolist():
        if labels is not None:
            lab = labels[comm == c]
            major[c] = int(torch.bincount(lab).argmax())
        else:
            major[c] = 0
    size = dict(zip(ids.tolist(), counts.tolist()))
    order = sorted(size, key=lambda c: (major[c], -size[c], c))
    return order, major


def plot_transitions(communities: Sequence[Tensor], labels: Optional[Tensor] = None,
                     layers: Optional[Sequence[str]] = None, path: Optional[PathLike] = None,
                     kind: str = "flow", title: Optional[str] = None, gap: float = 0.01):
    """Draws how communities split and merge from layer to layer.

    ``kind='flow'``: an alluvial diagram. Each layer is a column of blocks, one per community,
    with heights proportional to its size, ordered and coloured by the majority label of its
    members; bands between columns carry the samples that move from one community to the next.
    ``kind='heatmap'``: one row-normalised transition matrix per pair of consecutive layers.

    Args:
        communities: ``L`` tensors ``[N]``.
        labels: ``[N]`` classes, for ordering and colour.
        layers: Layer names.
        path: Save the PNG here (atomically).
        kind: ``'flow'`` or ``'heatmap'``.
        title: Figure title.
        gap: Vertical gap between blocks, as a share of the column height.

    Returns:
        The matplotlib figure.

    Example:
        >>> import torch, dyngraph as dg
        >>> y = torch.arange(12) % 3
        >>> fig = dg.measures.plot_transitions([torch.arange(12) % 2, y, y], labels=y,
        ...                           layers=['a', 'b', 'c'])
    """
    from ..outputs._plot import _pyplot, save_figure
    check_choice(kind, "kind", ("flow", "heatmap"))
    comms = [torch.as_tensor(c).long().cpu().reshape(-1) for c in communities]
    if len(comms) < 2:
        raise ValueError(f"plot_transitions needs at least 2 layers, got {len(comms)}")
    n = comms[0].numel()
    if any(c.numel() != n for c in comms):
        raise ValueError("every layer's communities must cover the same N samples")
    lab = None if labels is None else check_labels(torch.as_tensor(labels).cpu(), n, "labels")
    names = list(layers) if layers is not None else [str(i) for i in range(len(comms))]
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if lab is None or int(lab.max()) < 10 else "tab20")
    L = len(comms)
    if kind == "heatmap":
        mats = community_transitions(comms, normalize="row")
        cols = min(4, L - 1)
        rows = math.ceil((L - 1) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False,
                                 layout="constrained")
        for i, m in enumerate(mats):
            ax = axes[i // cols][i % cols]
            im = ax.imshow(m.numpy(), vmin=0, vmax=1, cmap="magma", aspect="auto")
            ax.set_title(f"{names[i]} → {names[i + 1]}", fontsize=8)
            ax.set_ylabel(f"community at {names[i]}", fontsize=7)
            ax.set_xlabel(f"community at {names[i + 1]}", fontsize=7)
            ax.tick_params(labelsize=6)
        for j in range(L - 1, rows * cols):
            axes[j // cols][j % cols].axis("off")
        fig.colorbar(im, ax=axes, fraction=0.03, label="share of the row community")
        fig.suptitle(title or "community transitions (row-normalised)", fontsize=10)
    else:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * L + 2), 5.0))
        width = 0.18
        pos: List[Dict[int, Tuple[float, float]]] = []
        majors = []
        for l, c in enumerate(comms):
            order, major = _ordered_communities(c, lab)
            majors.append(major)
            k = len(order)
            usable = 1.0 - gap * max(k - 1, 0)
            g = gap
            if usable <= 0.8:  # too many communities for the gap: gaps take 20% of the column
                g, usable = 0.2 / max(k - 1, 1), 0.8
            y0 = 0.0
            p = {}
            for cid in order:
                h = usable * int((c == cid).sum()) / n
                p[cid] = (y0, h)
                colour = cmap(major[cid] % cmap.N) if lab is not None else "0.5"
                ax.add_patch(plt.Rectangle((l - width / 2, 1 - y0 - h), width, h, color=colour,
                                           ec="black", lw=0.4))
                if h > 0.04:
                    ax.text(l, 1 - y0 - h / 2, str(cid), ha="center", va="center", fontsize=6)
                y0 += h + g
            pos.append(p)
        t = torch.linspace(0, 1, 30)
        s = (3 * t ** 2 - 2 * t ** 3).numpy()              # smoothstep
        for l in range(L - 1):
            a, b = comms[l], comms[l + 1]
            key = a * (int(b.max()) + 1) + b
            pairs, cnt = torch.unique(key, return_counts=True)
            kb = int(b.max()) + 1
            flows = [(int(p_) // kb, int(p_) % kb, int(c_)) for p_, c_ in zip(pairs, cnt)]
            order_a = {cid: i for i, cid in enumerate(pos[l])}
            order_b = {cid: i for i, cid in enumerate(pos[l + 1])}
            out_off = {cid: 0.0 for cid in pos[l]}
            in_off = {cid: 0.0 for cid in pos[l + 1]}
            usable_a = sum(h for _, h in pos[l].values())
            usable_b = sum(h for _, h in pos[l + 1].values())
            # outflows sorted by target position, inflows by source position: fewer crossings
            out_start = {}
            for src, dst, c_ in sorted(flows, key=lambda f: (order_a[f[0]], order_b[f[1]])):
                out_start[(src, dst)] = out_off[src]
                out_off[src] += usable_a * c_ / n
            for src, dst, c_ in sorted(flows, key=lambda f: (order_b[f[1]], order_a[f[0]])):
                h_a, h_b = usable_a * c_ / n, usable_b * c_ / n
                ya = 1 - pos[l][src][0] - out_start[(src, dst)]
                yb = 1 - pos[l + 1][dst][0] - in_off[dst]
                in_off[dst] += h_b
                xs = (l + width / 2) + (1 - width) * t.numpy()
                top = ya + (yb - ya) * s
                bottom = (ya - h_a) + ((yb - h_b) - (ya - h_a)) * s
                colour = cmap(majors[l][src] % cmap.N) if lab is not None else "0.6"
                ax.fill_between(xs, bottom, top, color=colour, alpha=0.35, lw=0)
        ax.set_xlim(-0.5, L - 0.5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(range(L))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks([])
        ax.set_xlabel("layer")
        ax.set_title(title or "community flow over depth (blocks: communities, colour: "
                              "majority class)", fontsize=9)
        if lab is not None:
            from matplotlib.patches import Patch
            classes = sorted(set(int(v) for v in lab.unique()))
            ax.legend(handles=[Patch(color=cmap(c % cmap.N), label=str(c)) for c in classes],
                      title="class", fontsize=6, title_fontsize=7, loc="center left",
                      bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_class_mixing(mixing: Tensor, layers: Optional[Sequence[str]] = None,
                      path: Optional[PathLike] = None, normalize: str = "row",
                      title: Optional[str] = None):
    """One heatmap per layer of the class-mixing matrix (row-normalised by default: where each
    class's edge weight goes), on a shared colour scale. Returns the figure."""
    from ..outputs._plot import _pyplot, save_figure
    check_tensor(mixing, "mixing")
    check_choice(normalize, "normalize", ("row", "total", "ratio"))
    m = mixing.detach().to(torch.float64).cpu()
    if m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() != 3 or m.shape[1] != m.shape[2]:
        raise ValueError(f"mixing must be [C, C] or [L, C, C], got {tuple(mixing.shape)}")
    if normalize == "row":
        rs = m.sum(2, keepdim=True)
        m = torch.where(rs > 0, m / rs.clamp_min(1e-300), torch.zeros_like(m))
    elif normalize == "ratio":
        m = mixing_ratio(m)
    L = m.shape[0]
    names = list(layers) if layers is not None else [str(i) for i in range(L)]
    plt = _pyplot()
    cols = min(4, L)
    rows = math.ceil(L / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.8 * rows), squeeze=False,
                             layout="constrained")
    vmax = float(m.max()) if normalize == "ratio" else 1.0 if normalize == "row" else float(m.max())
    for l in range(L):
        ax = axes[l // cols][l % cols]
        im = ax.imshow(m[l].numpy(), vmin=0, vmax=vmax, cmap="viridis")
        ax.set_title(names[l], fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("to class", fontsize=7)
        ax.set_ylabel("from class", fontsize=7)
    for j in range(L, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.colorbar(im, ax=axes, fraction=0.03,
                 label={"row": "share of the row class's weight", "total": "share of all weight",
                        "ratio": "observed / expected weight"}[normalize])
    fig.suptitle(title or "class mixing per layer", fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig


def class_contribution_curves(graph, resolution: float = 1.0,
                              class_names: Optional[Sequence[str]] = None) -> List[Curve]:
    """Each class's modularity term ``w_in(c)/W − γ(S_c/2W)²`` over depth, one :class:`Curve`
    per class; at every layer they sum to the modularity curve.

    Args:
        graph: A :class:`~dyngraph.DynamicGraph`.
        resolution: ``γ``.
        class_names: Names for the curves (default ``'class <c>'``).

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 3
        >>> seq = dg.DynamicGraph.from_features({'a': torch.randn(60, 4, generator=g),
        ...     'b': torch.randn(60, 4, generator=g) + 5 * torch.eye(4)[y]}, y=y, progress=False)
        >>> curves = dg.measures.class_contribution_curves(seq)
        >>> len(curves), abs(sum(c.values[1] for c in curves) - seq.modularity().values[1]) < 1e-12
        (3, tensor(True))
    """
    contrib = graph.class_contributions(resolution=resolution)          # [L, C]
    c = contrib.shape[1]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(c)]
    if len(names) != c:
        raise ValueError(f"class_names must have {c} entries, got {len(names)}")
    meta = dict(getattr(graph, "meta", {}))
    meta["resolution"] = resolution
    return [Curve(graph.layers, contrib[:, i], name=f"Q contribution of {names[i]}",
                  meta={**meta, "class": i, "label": names[i]}) for i in range(c)]


def plot_class_contributions(curves: Sequence[Curve], path: Optional[PathLike] = None,
                             title: Optional[str] = None):
    """All per-class contribution curves on one axis; returns the figure."""
    from ..outputs._plot import plot_curves
    return plot_curves(list(curves), path=path, labels=[c.meta.get("label", c.name)
                                                        for c in curves],
                       title=title or "per-class modularity contribution",
                       ylabel="contribution to Q")


# ================================================================================== evolution
def _snapshot_tensors(s, i: int, name: str):
    if s.y is None:
        raise ValueError(f"snapshot {i} ({name!r}) has no labels y")
    w = s.edge_weight if s.edge_weight is not None else \
        torch.ones(s.edge_index.shape[1], device=s.edge_index.device)
    return s.edge_index, w, s.y, s.num_nodes


@dataclass
class CommunityEvolution:
    """Community structure of every layer and how it changes with depth.

    Attributes:
        layers: Layer names ``[L]``.
        class_contributions: float64 ``[L, C]``, each class's modularity term (rows sum to Q).
        mixing: float64 ``[L, C, C]`` total-normalised class mixing.
        purity: Weighted kNN-graph label purity per layer (:func:`graph_purity`).
        communities: ``L`` tensors ``[N]``, label-free communities per layer.
        label_modularity: Q with the labels as communities.
        detected_modularity: Q of the detected communities (≥ the label Q when labels are not
            the best partition).
        n_communities, nmi, ari: Per layer; NMI/ARI of the communities against the labels.
        transitions: ``L − 1`` row-normalised transition matrices.
        stability: NMI between consecutive layers' communities ``[L − 1]``.
        separation: ``[C, C]`` :func:`separation_depth` of every class pair (``-1`` never).
        meta: Settings (method, resolution, seed, snapshot settings).
    """

    layers: List[str]
    class_contributions: Tensor
    mixing: Tensor
    purity: Tensor
    communities: List[Tensor]
    label_modularity: Tensor
    detected_modularity: Tensor
    n_communities: Tensor
    nmi: Tensor
    ari: Tensor
    transitions: List[Tensor]
    stability: Tensor
    separation: Tensor
    labels: Optional[Tensor] = None
    meta: Dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        f = lambda t: "[" + ", ".join(f"{v:.3f}" for v in t.tolist()[:8]) + \
            (", ..." if t.numel() > 8 else "") + "]"
        return (f"CommunityEvolution(layers={len(self.layers)}, "
                f"method={self.meta.get('method')!r}, nmi={f(self.nmi)}, purity={f(self.purity)}, "
                f"n_communities={self.n_communities.tolist()[:8]})")

    def curves(self) -> List[Curve]:
        """The per-layer curves: label Q, detected Q, purity, #communities, NMI, ARI."""
        meta = dict(self.meta)
        return [Curve(self.layers, self.label_modularity, name="modularity", meta=meta),
                Curve(self.layers, self.detected_modularity, name="detected_modularity",
                      meta=meta),
                Curve(self.layers, self.purity, name="knn_purity", meta=meta),
                Curve(self.layers, self.n_communities.to(torch.float64), name="n_communities",
                      meta=meta),
                Curve(self.layers, self.nmi, name="nmi", meta=meta),
                Curve(self.layers, self.ari, name="ari", meta=meta)]

    def stability_curve(self) -> Curve:
        """NMI between the communities of layers ``l`` and ``l+1``, labelled ``'a→b'``."""
        names = [f"{a}→{b}" for a, b in zip(self.layers[:-1], self.layers[1:])]
        return Curve(names, self.stability, name="community_stability_nmi", meta=dict(self.meta))

    def class_curves(self) -> List[Curve]:
        return [Curve(self.layers, self.class_contributions[:, c],
                      name=f"Q contribution of class {c}", meta={**self.meta, "class": c, "label": f"class {c}"})
                for c in range(self.class_contributions.shape[1])]

    def to_dict(self) -> Dict[str, Any]:
        from .._curve import _jsonable
        return _jsonable({
            "layers": self.layers,
            "label_modularity": self.label_modularity, "detected_modularity":
                self.detected_modularity, "knn_purity": self.purity,
            "n_communities": self.n_communities, "nmi": self.nmi, "ari": self.ari,
            "stability_nmi": self.stability, "class_contributions": self.class_contributions,
            "class_mixing": self.mixing, "separation_depth": self.separation,
            "transitions": [t for t in self.transitions],
            "communities": [c for c in self.communities], "meta": self.meta})

    def to_json(self, path: PathLike) -> Path:
        """Writes everything (atomically) as JSON."""
        return atomic_write_json(path, self.to_dict())

    def plot(self, out_dir: PathLike, prefix: str = "") -> Dict[str, Path]:
        """Writes the figures to ``out_dir``: per-class contributions, class mixing, the
        community flow, the transition heatmaps and the curves. Returns their paths."""
        from ..outputs._plot import close, plot_curves
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        figs = {
            "class_contributions": lambda p: plot_class_contributions(self.class_curves(), p),
            "class_mixing": lambda p: plot_class_mixing(self.mixing, self.layers, p),
            "community_flow": lambda p: plot_transitions(self.communities, self.labels,
                                                         self.layers, p, kind="flow"),
            "community_transitions": lambda p: plot_transitions(self.communities, self.labels,
                                                                self.layers, p, kind="heatmap"),
            "community_curves": lambda p: plot_curves(
                [c for c in self.curves() if c.name in ("modularity", "detected_modularity",
                                                        "knn_purity", "nmi", "ari")],
                path=p, title="community structure over depth", ylabel="value"),
        }
        for name, fn in figs.items():
            if name in ("community_flow", "community_transitions") and len(self.layers) < 2:
                continue
            p = out / f"{prefix}{name}.png"
            close(fn(p))
            paths[name] = p
        return paths

    def to_tensorboard(self, writer, prefix: str = "dyngraph/community") -> None:
        """Curves as scalars (step = layer index) and the figures as images."""
        from ..outputs._log import log_curve
        from ..outputs._plot import close
        for c in self.curves():
            log_curve(writer, c, tag=f"{prefix}/{c.name}", figure=False)
        for c in self.class_curves():
            log_curve(writer, c, tag=f"{prefix}/class_{c.meta['class']}", figure=False)
        fig = plot_class_mixing(self.mixing, self.layers)
        writer.add_figure(f"{prefix}/class_mixing", fig)
        close(fig)
        if len(self.layers) > 1:
            fig = plot_transitions(self.communities, self.labels, self.layers, kind="flow")
            writer.add_figure(f"{prefix}/community_flow", fig)
            close(fig)
        if callable(getattr(writer, "flush", None)):
            writer.flush()


def community_evolution(graph, method: str = DEFAULT_METHOD, resolution: float = 1.0,
                        seed: int = 0, separation_threshold: float = 0.1,
                        progress: bool = True) -> CommunityEvolution:
    """Everything about communities over depth, for a :class:`~dyngraph.DynamicGraph`.

    The label-based quantities (per-class contributions, mixing, purity) run as one batched
    scatter pass over all snapshots; communities are detected per layer with ``method``.

    Args:
        graph: A :class:`~dyngraph.DynamicGraph` whose snapshots carry labels ``y``.
        method: See :func:`detect_communities`.
        resolution: Modularity resolution, for detection and for the label Q.
        seed: Seed of the detection.
        separation_threshold: See :func:`separation_depth`.
        progress: Progress bar over layers.

    Returns:
        A :class:`CommunityEvolution`.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(90) % 3
        >>> seq = dg.DynamicGraph.from_features({'noise': torch.randn(90, 8, generator=g),
        ...     'sep': torch.randn(90, 8, generator=g) + 6 * torch.eye(8)[y]}, y=y, k=5, progress=False)
        >>> ev = dg.measures.community_evolution(seq, progress=False)
        >>> ev.nmi[1] > 0.9, ev.purity[1] > ev.purity[0]
        (tensor(True), tensor(True))
    """
    from .._progress import progress_bar
    from ..graphs._graph import DynamicGraph
    if not isinstance(graph, DynamicGraph):
        raise TypeError(f"graph must be a DynamicGraph, got {type(graph).__name__}")
    if len(graph) == 0:
        raise ValueError("graph has no snapshots")
    check_choice(method, "method", METHODS)
    layers = graph.layers
    eis, ws, ys, batch = [], [], [], []
    offset = 0
    n0 = None
    for i, s in enumerate(graph.snapshots):
        ei, w, y, n = _snapshot_tensors(s, i, layers[i])
        if n0 is not None and n != n0:
            raise ValueError(f"snapshot {i} has {n} nodes, snapshot 0 has {n0}: community "
                             f"transitions need the same samples in every layer")
        n0 = n
        eis.append(ei + offset)
        ws.append(w.to(torch.float64))
        ys.append(check_labels(y, n, f"y of snapshot {i}"))
        batch.append(torch.full((n,), i, dtype=torch.long, device=ei.device))
        offset += n
    ei_all, w_all, y_all, b_all = (torch.cat(eis, 1), torch.cat(ws), torch.cat(ys),
                                   torch.cat(batch))
    c = int(y_all.max()) + 1
    contrib = graph.class_contributions(resolution=resolution)
    mixing = class_mixing(ei_all, y_all, w_all, num_nodes=offset, batch=b_all, num_classes=c)
    purity = graph_purity(ei_all, y_all, w_all, num_nodes=offset, batch=b_all)
    comms, det_q, n_comm, nmi, ari = [], [], [], [], []
    for i, s in enumerate(progress_bar(graph.snapshots, desc="communities",
                                       disable=not progress)):
        ei, w, y, n = _snapshot_tensors(s, i, layers[i])
        comm = detect_communities(ei, w, n, method=method, resolution=resolution, seed=seed)
        comms.append(comm.cpu())
        det_q.append(_modularity(ei, comm, w, num_nodes=n, resolution=resolution))
        n_comm.append(int(comm.max()) + 1)
        nmi.append(normalized_mutual_info(comm, y))
        ari.append(adjusted_rand_index(comm, y))
    trans = community_transitions(comms, "row") if len(comms) > 1 else []
    stab = torch.tensor([normalized_mutual_info(comms[i], comms[i + 1])
                         for i in range(len(comms) - 1)], dtype=torch.float64)
    sep = separation_depth(mixing.cpu(), separation_threshold)
    meta = {k: v for k, v in graph.meta.items() if k in ("k", "metric", "symmetrize",
                                                           "n_samples")}
    meta.update({"method": method, "resolution": resolution, "seed": seed,
                 "separation_threshold": separation_threshold})
    return CommunityEvolution(
        layers=layers, class_contributions=contrib.cpu(), mixing=mixing.cpu(),
        purity=purity.cpu(), communities=comms, label_modularity=contrib.sum(1).cpu(),
        detected_modularity=torch.tensor(det_q, dtype=torch.float64),
        n_communities=torch.tensor(n_comm), nmi=torch.tensor(nmi, dtype=torch.float64),
        ari=torch.tensor(ari, dtype=torch.float64), transitions=trans, stability=stab,
        separation=sep, labels=ys[0].cpu(), meta=meta)


__all__ = ["METHODS", "DEFAULT_METHOD", "class_mixing", "mixing_ratio", "separation_depth",
           "knn_purity", "graph_purity", "detect_communities", "contingency_table",
           "normalized_mutual_info", "adjusted_rand_index", "community_transitions",
           "plot_transitions", "plot_class_mixing", "class_contribution_curves",
           "plot_class_contributions", "CommunityEvolution", "community_evolution"]


# ============================================================================ registered measures
@register("graph_purity", graph=True, description="share of each node's kNN-graph weight that "
          "comes from its own class")
def _graph_purity(x: Tensor, y: Tensor, graph: Optional[Data]) -> float:
    g = _graph(graph, "graph_purity")
    return float(graph_purity(g.edge_index, y, g.edge_weight, num_nodes=g.num_nodes))


@register("knn_purity", graph=False, description="share of each sample's k nearest neighbours "
          "(k = 10) with its label")
def _knn_purity(x: Tensor, y: Tensor, graph: Optional[Data], k: int = 10,
                metric: str = "cosine") -> float:
    return float(knn_purity(x, y, k=k, metric=metric))
