"""Community evolution over depth: how the class structure forms and merges from layer to layer.

On each layer's kNN graph (scatter ops, PyG conventions: undirected edges stored in both
directions):

* per-class modularity contributions over depth (:func:`class_contribution_profile`);
* the class-mixing matrix ``C × C``: the share of edge weight between each pair of classes
  (:func:`class_mixing`), its observed / expected ratio (:func:`mixing_ratio`), and the depth at
  which each pair of classes separates for good (:func:`separation_depth`,
  :func:`mixing_profile`);
* kNN label purity, from features (:func:`knn_purity`) or from a graph (:func:`graph_purity`);
* communities found without labels (Leiden through igraph's C implementation by default —
  the fastest in ``benchmarks/bench_community.py`` —, ``leidenalg``, or Louvain through networkx
  or igraph), scored against the labels with NMI and ARI computed in torch from the contingency
  table;
* the transition matrices between consecutive layers' communities.

:func:`community_evolution` runs everything over a :class:`~dyngraph.DynamicGraph` and returns a
:class:`CommunityEvolution`: the per-layer series as a :class:`~dyngraph.DepthProfile`, the
matrices, JSON; ``dg.plot(evolution, kind=...)`` draws it and ``dg.log(writer, evolution)`` logs
it. The one-layer quantities are registered measures (``'graph_purity'``, ``'knn_purity'``,
``'mixing_ratio'``, ``'detected_communities'``) that :func:`~dyngraph.depth_profile` runs.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union, cast

import torch
from torch import Tensor

from .._json import JsonFile, float_tensor, jsonable
from .._pyg import scatter
from .._validate import (
    check_choice,
    check_class_axis,
    check_edge_index,
    check_edge_weight,
    check_features,
    check_flag,
    check_k,
    check_labels,
    check_num_nodes,
    check_number,
    check_same_device,
    check_tensor,
    compact_labels,
)
from ..graphs._knn import nearest_neighbors
from ._modularity import check_within_graphs, modularity_q, require_graph
from ._registry import register

if TYPE_CHECKING:
    from torch_geometric.data import Data

    from ..profiles._profile import DepthProfile

#: Community detection methods. ``'leiden'``: igraph's C Leiden (modularity objective), the
#: default because it was the fastest; ``'leidenalg'``: the leidenalg package; ``'louvain'``:
#: networkx's ``louvain_communities``; ``'louvain_igraph'``: igraph's ``community_multilevel``.
METHODS = ("leiden", "leidenalg", "louvain", "louvain_igraph")
DEFAULT_METHOD = "leiden"
NORMALIZE: Sequence[Any] = ("total", "row", None)
#: The metrics of :attr:`CommunityEvolution.profile`, in order.
EVOLUTION_METRICS = ("modularity", "detected_modularity", "graph_purity", "n_communities", "nmi",
                     "ari", "mixing_ratio", "separated_pairs")
EVOLUTION_FORMAT = "dyngraph.CommunityEvolution/1"


# ================================================================================== helpers
def _edges(edge_index, edge_weight, num_nodes, y=None, *, what: str):
    """Checked ``(edge_index, float64 weights, N)``; ``N`` defaults to ``y.numel()`` (a tensor),
    else to ``max(edge_index) + 1``. Node ids must lie in ``[0, N)``, weights be finite and
    ``>= 0`` (``what`` names the function that needs it in the error)."""
    ei = check_edge_index(edge_index)
    lo, hi = (int(v) for v in ei.aminmax()) if ei.numel() else (0, -1)
    if num_nodes is None:
        num_nodes = hi + 1 if y is None else int(y.numel())
    num_nodes = check_num_nodes(num_nodes)
    if lo < 0:
        raise ValueError(f"edge_index must hold node ids >= 0, got min(edge_index)={lo}")
    if hi >= num_nodes:
        raise ValueError(f"edge_index refers to node {hi} but num_nodes={num_nodes}")
    if edge_weight is None:
        edge_weight = torch.ones(ei.shape[1], device=ei.device)
    w = check_edge_weight(edge_weight, ei.shape[1]).to(torch.float64)
    check_same_device(edge_index=ei, edge_weight=w)
    if ei.numel() and bool((w < 0).any()):
        raise ValueError(f"{what} needs non-negative edge weights; {int((w < 0).sum())} are "
                         f"negative. Clamp them, or build the graph with metric='euclidean' "
                         f"(unit weights)")
    return ei, w, num_nodes


def _batch_info(batch, num_nodes, edge_index: Tensor) -> Tuple[Optional[Tensor], int]:
    """Checked ``batch`` and the number of graphs; no edge of ``edge_index`` may join two."""
    if batch is None:
        return None, 1
    batch = check_labels(batch, num_nodes, "batch").to(edge_index.device)
    b = int(batch.max()) + 1 if num_nodes else 0
    check_class_axis(batch, b, "batch")
    check_within_graphs(edge_index, batch)
    return batch, b


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
        edge_weight: ``[E]`` finite weights ``>= 0`` (default 1).
        num_nodes: ``N`` (default ``y.numel()``).
        batch: ``[N]`` graph index, for many graphs (e.g. all layers) in one pass (no edge may
            join two graphs).
        num_classes: ``C`` (default ``max(y) + 1``): row and column ``c`` are label ``c``. Labels
            so sparse that the matrix would exceed 2**20 entries, mostly for absent labels,
            are a ``ValueError`` (relabel them ``0..K-1``).
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
    ei, w, n = _edges(edge_index, edge_weight, num_nodes, y, what="class_mixing")
    y = check_labels(y, n, "y").to(ei.device)
    c = int(y.max()) + 1 if y.numel() else 0
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < c:
            raise ValueError(f"num_classes must be an int >= max(y) + 1 = {c}, got "
                             f"{num_classes!r}")
        c = num_classes
    check_class_axis(y, c, "y", power=2)
    batch, b = _batch_info(batch, n, ei)
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


def _check_mixing(mixing: Tensor) -> Tensor:
    """A total-normalised, symmetric class-mixing matrix ``[C, C]`` or ``[L, C, C]``, checked
    (finite, ``>= 0``, symmetric and summing to 1 per matrix, to ``1e-6``), as float64."""
    check_tensor(mixing, "mixing")
    if mixing.is_complex() or not (mixing.is_floating_point() or mixing.dtype in
                                   (torch.int32, torch.int64)):
        raise TypeError(f"mixing must be a real tensor, got dtype={mixing.dtype}")
    m = mixing.to(torch.float64)
    if m.dim() not in (2, 3) or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"mixing must be [C, C] or [L, C, C], got {tuple(m.shape)}")
    if m.numel() == 0:
        return m
    if not bool(torch.isfinite(m).all()) or bool((m < 0).any()):
        raise ValueError("mixing must hold finite shares >= 0 (class_mixing of an undirected "
                         "graph with normalize='total')")
    if not torch.allclose(m, m.transpose(-1, -2), rtol=1e-6, atol=1e-9):
        gap = float((m - m.transpose(-1, -2)).abs().max())
        raise ValueError(f"mixing must be symmetric (class_mixing of an undirected graph), got "
                         f"max |M - Mᵀ| = {gap:.3g}; make the graph undirected with "
                         f"dg.graphs.symmetrize first")
    tot = m.sum((-1, -2)).reshape(-1)
    if not torch.allclose(tot, torch.ones_like(tot), rtol=0, atol=1e-6):
        raise ValueError(f"mixing must be total-normalised (each matrix sums to 1: "
                         f"class_mixing(..., normalize='total')), got sums "
                         f"{[round(v, 6) for v in tot.tolist()[:5]]}")
    return m


def mixing_ratio(mixing: Tensor) -> Tensor:
    """Observed over expected cross-class weight: ``M[a, b] / (s_a s_b)``.

    ``mixing`` must be total-normalised and symmetric (:func:`class_mixing` of an undirected
    graph; anything else is a ``ValueError``); ``s_a = Σ_b M[a, b]`` is class ``a``'s share of
    the strength. Under the configuration model (no class structure) the ratio is 1; it falls
    to 0 as two classes separate. Entries involving an absent class are 0.

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
    m = _check_mixing(mixing)
    s = m.sum(-1)
    exp = s.unsqueeze(-1) * s.unsqueeze(-2)
    return torch.where(exp > 0, m / exp.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))


def _check_positive(value: Any, name: str) -> float:
    """A finite number ``> 0`` (a ``ValueError`` otherwise, whatever was passed)."""
    try:
        return check_number(value, name, minimum=0.0, strict=True)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


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
        >>> mix = torch.tensor([[[.25, .25], [.25, .25]], [[.45, .05], [.05, .45]],
        ...                     [[.5, 0], [0, .5]]])
        >>> dg.measures.separation_depth(mix, threshold=0.3).tolist()
        [[-1, 1], [1, -1]]
    """
    _check_positive(threshold, "threshold")
    r = mixing_ratio(mixing)
    if r.dim() != 3:
        raise ValueError(f"mixing must be [L, C, C] (one matrix per layer), got {tuple(r.shape)}")
    sep = r < threshold                                  # [L, C, C]
    # stays separated from l on: reverse cumulative AND
    stay = sep.flip(0).to(torch.int64).cumprod(0).flip(0).bool()
    out = torch.where(stay.any(0), stay.to(torch.int64).argmax(0), -1)
    return out.fill_diagonal_(-1)


# ================================================================================== purity
def knn_purity(x: Tensor, y: Tensor, k: int = 10, metric: str = "cosine", backend: str = "auto",
               per_class: bool = False) -> Union[float, Tensor]:
    """kNN label purity: the share of each sample's k nearest neighbours that share its label.

    ``(1/N) Σ_i (1/k) Σ_{j ∈ N_k(i)} [y_j = y_i]`` with exact kNN from
    :func:`dyngraph.graphs.nearest_neighbors` (no self-neighbour). Chance level is about
    ``Σ_c a_c²`` (``1/C`` for balanced classes).

    Args:
        x: ``[N, D]`` (or ``[N, ...]``, flattened).
        y: ``[N]`` integer classes.
        k: Neighbours.
        metric: ``'cosine'`` or ``'euclidean'``.
        backend: kNN backend.
        per_class: Return the mean purity of each class ``[C]`` (float64, entry ``c`` for label
            ``c``) instead of the overall.

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
    check_flag(per_class, "per_class")
    if per_class:
        check_class_axis(y, int(y.max()) + 1, "y")
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
        >>> dg.measures.graph_purity(ei, torch.tensor([0, 0, 1]))   # node 1: half from class 0
        0.5
    """
    check_tensor(y, "y")
    check_flag(per_class, "per_class")
    ei, w, n = _edges(edge_index, edge_weight, num_nodes, y, what="graph_purity")
    y = check_labels(y, n, "y").to(ei.device)
    if per_class:
        check_class_axis(y, int(y.max()) + 1, "y")
    batch, b = _batch_info(batch, n, ei)
    row, col = ei
    same = scatter(w * (y[row] == y[col]).to(w.dtype), col, dim=0, dim_size=n, reduce="sum")
    tot = scatter(w, col, dim=0, dim_size=n, reduce="sum")
    has = tot > 0
    node = torch.where(has, same / tot.clamp_min(torch.finfo(w.dtype).tiny),
                       torch.zeros_like(tot))
    g = batch if batch is not None else torch.zeros(n, dtype=torch.long, device=ei.device)
    c = int(y.max()) + 1 if per_class else 1  # per graph, or per graph and class
    key = g * c + y if per_class else g
    num = scatter(node * has, key, dim=0, dim_size=b * c, reduce="sum")
    den = scatter(has.to(w.dtype), key, dim=0, dim_size=b * c, reduce="sum")
    if per_class:
        out = torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num)).view(b, c)
        return out[0] if batch is None else out
    if bool((den <= 0).any()):
        bad = (den <= 0).nonzero().flatten().tolist()
        raise ValueError(f"graph_purity: graphs {bad[:10]} have no node with incoming edge weight")
    out = num / den
    return float(out[0]) if batch is None else out


# ================================================================================== detection
def _relabel_by_size(memb: Tensor) -> Tensor:
    """Community ids ordered by decreasing size, ties by the smallest member (deterministic)."""
    n = memb.numel()
    uniq, inv = torch.unique(memb, return_inverse=True)
    size = torch.bincount(inv, minlength=uniq.numel())
    first = torch.full((uniq.numel(),), n, dtype=torch.long).scatter_reduce(
        0, inv, torch.arange(n), reduce="amin")
    # first members are distinct, so this key orders by (-size, first) without ties
    order = torch.argsort(first - size * (n + 1))
    return torch.argsort(order)[inv]


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
    ei, w, n = _edges(edge_index, edge_weight, num_nodes, what="detect_communities")
    if n == 0:
        raise ValueError("detect_communities: the graph has no nodes")
    resolution = _check_positive(resolution, "resolution")
    _check_seed(seed)
    if isinstance(n_iterations, bool) or not isinstance(n_iterations, int) \
            or not (n_iterations == -1 or n_iterations >= 1):
        raise ValueError(f"n_iterations must be -1 (until stable) or an int >= 1, got "
                         f"{n_iterations!r}")
    _require(method)
    from ..graphs._graph import symmetrize
    ei2, w2 = symmetrize(ei, w, n, "mean")
    keep = ei2[0] < ei2[1]  # each unordered pair once (i < j), the weight of (A + Aᵀ)/2
    edges, weights = ei2[:, keep].t().cpu().tolist(), w2[keep].cpu().tolist()
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
        else:
            ig.set_random_number_generator(random.Random(seed))
            try:
                if method == "leiden":
                    part = g.community_leiden(objective_function="modularity", weights="weight",
                                              resolution=resolution, n_iterations=n_iterations)
                else:
                    part = g.community_multilevel(weights="weight", resolution=resolution)
            finally:
                ig.set_random_number_generator(random)
        memb = torch.tensor(part.membership, dtype=torch.long)
    return _relabel_by_size(memb).to(ei.device)


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
        >>> a, b = torch.tensor([0, 0, 1, 1]), torch.tensor([5, 7, 7, 7])
        >>> dg.measures.contingency_table(a, b).tolist()
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
        >>> a, b = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 0, 0])
        >>> dg.measures.normalized_mutual_info(a, b)
        1.0
    """
    t = contingency_table(a, b).to(torch.float64)
    if t.shape[0] == 1 and t.shape[1] == 1:
        return 1.0
    pij = t / t.sum()
    pi, pj = pij.sum(1), pij.sum(0)
    nz = pij > 0
    mi = (pij[nz] * (pij[nz].log() - (pi.unsqueeze(1) * pj.unsqueeze(0))[nz].log())).sum()
    entropy = lambda p: -(p[p > 0] * p[p > 0].log()).sum()
    den = (entropy(pi) + entropy(pj)) / 2
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
        >>> comms = [torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1])]
        >>> t = dg.measures.community_transitions(comms)
        >>> t[0].tolist()
        [[1.0, 0.0], [0.5, 0.5]]
    """
    check_choice(normalize, "normalize", NORMALIZE)
    if isinstance(communities, Tensor) or not isinstance(communities, (list, tuple)):
        raise TypeError(f"communities must be a list of [N] tensors, got "
                        f"{type(communities).__name__}")
    if len(communities) < 2:
        raise ValueError(f"community_transitions needs at least 2 layers, got {len(communities)}")
    tables = [contingency_table(a, b).to(torch.float64)
              for a, b in zip(communities, communities[1:])]
    if normalize == "row":
        return [t / t.sum(1, keepdim=True) for t in tables]
    return [t / t.sum() for t in tables] if normalize == "total" else tables


# ================================================================================== over depth
def mean_mixing_ratio(mixing: Tensor) -> Tensor:
    """The mean :func:`mixing_ratio` over ordered pairs of distinct classes present in the graph.

    A one-number summary of the class mixing of a layer: about 1 when the graph ignores the
    classes, 0 when every class is separated from every other. Classes without edge weight are
    left out; with fewer than two classes present the mean is NaN.

    Args:
        mixing: ``[C, C]`` or ``[L, C, C]`` total-normalised class mixing (:func:`class_mixing`).

    Returns:
        float64: a 0-dim tensor for ``[C, C]``, ``[L]`` for ``[L, C, C]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> mix = torch.tensor([[0.3, 0.1, 0.0], [0.1, 0.3, 0.0], [0.0, 0.0, 0.2]])
        >>> round(float(dg.measures.mean_mixing_ratio(mix)), 4)   # pair (0,1): 0.1/0.16
        0.2083
    """
    r = mixing_ratio(mixing)
    present = mixing.to(torch.float64).sum(-1) > 0
    c = r.shape[-1]
    pair = present.unsqueeze(-1) & present.unsqueeze(-2) & ~torch.eye(c, dtype=torch.bool,
                                                                         device=r.device)
    den = pair.sum((-1, -2))
    num = (r * pair).sum((-1, -2))
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, float("nan")))


def _mixing_series(mixing: Tensor, threshold: float) -> Tuple[Tensor, Tensor, Tensor]:
    """``(mean ratio [L], share of pairs separated for good [L], separation depth [C, C])``."""
    sep = separation_depth(mixing, threshold)
    m = mixing.to(torch.float64)
    present = (m.sum(-1) > 0).all(0)
    c, n_layers = sep.shape[0], m.shape[0]
    pair = present.unsqueeze(1) & present.unsqueeze(0) & ~torch.eye(c, dtype=torch.bool,
                                                                     device=sep.device)
    step = torch.arange(n_layers, device=sep.device).view(-1, 1, 1)
    done = (sep >= 0) & (sep <= step) & pair                          # [L, C, C]
    n_pairs = int(pair.sum())
    share = done.sum((1, 2)).to(torch.float64) / n_pairs if n_pairs else \
        torch.full((n_layers,), float("nan"), dtype=torch.float64)
    return mean_mixing_ratio(m), share, sep


def mixing_profile(mixing: Tensor, layers: Optional[Sequence[str]] = None,
                   threshold: float = 0.1) -> "DepthProfile":
    """Class mixing over depth as a :class:`~dyngraph.DepthProfile`.

    Metrics: ``'mixing_ratio'``, the :func:`mean_mixing_ratio` of each layer, and
    ``'separated_pairs'``, the share of pairs of (present) classes that are separated for good at
    layer ``l``: their :func:`separation_depth` is ``0 <= depth <= l``.

    Args:
        mixing: ``[L, C, C]`` total-normalised class mixing, one matrix per layer.
        layers: ``L`` layer names (default ``'0'``, ``'1'``, ...).
        threshold: See :func:`separation_depth`.

    Returns:
        A :class:`~dyngraph.DepthProfile` with the metrics ``['mixing_ratio', 'separated_pairs']``.

    Example:
        >>> import torch, dyngraph as dg
        >>> mix = torch.tensor([[[.25, .25], [.25, .25]], [[.45, .05], [.05, .45]],
        ...                     [[.5, 0.], [0., .5]]], dtype=torch.float64)
        >>> p = dg.measures.mixing_profile(mix, ['a', 'b', 'c'], threshold=0.3)
        >>> p['separated_pairs'].values.tolist(), p['mixing_ratio'].values.tolist()
        ([0.0, 1.0, 1.0], [1.0, 0.2, 0.0])
    """
    from ..profiles._profile import DepthProfile
    check_tensor(mixing, "mixing")
    if mixing.dim() != 3:
        raise ValueError(f"mixing must be [L, C, C] (one matrix per layer), got "
                         f"{tuple(mixing.shape)}")
    names = [str(i) for i in range(mixing.shape[0])] if layers is None else list(layers)
    if len(names) != mixing.shape[0]:
        raise ValueError(f"layers must name the {mixing.shape[0]} layers of mixing, got "
                         f"{len(names)}: {names}")
    ratio, share, _ = _mixing_series(mixing.detach().cpu(), threshold)
    return DepthProfile(names, ["mixing_ratio", "separated_pairs"],
                        torch.stack([ratio, share], 1), {"separation_threshold": threshold})


def _check_graph(graph: Any) -> None:
    from ..graphs._graph import DynamicGraph
    if not isinstance(graph, DynamicGraph):
        raise TypeError(f"graph must be a DynamicGraph, got {type(graph).__name__}")
    if len(graph) == 0:
        raise ValueError("graph has no snapshots")


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")


def class_contribution_profile(graph: Any, resolution: float = 1.0,
                               class_names: Optional[Sequence[str]] = None) -> "DepthProfile":
    """Each class's modularity term ``w_in(c)/W − γ(S_c/2W)²`` over depth.

    One batched scatter pass over all snapshots (``DynamicGraph.class_contributions``); at every
    layer the terms sum to the modularity ``graph.modularity()``.

    Args:
        graph: A :class:`~dyngraph.DynamicGraph` whose snapshots carry labels ``y``.
        resolution: ``γ``.
        class_names: One name per class (default: the class index).

    Returns:
        A :class:`~dyngraph.DepthProfile` with one metric per class,
        ``'modularity_class_<name>'``: samples ``[1, L, C]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 3
        >>> seq = dg.DynamicGraph.from_features({'a': torch.randn(60, 4, generator=g),
        ...     'b': torch.randn(60, 4, generator=g) + 5 * torch.eye(4)[y]}, y=y, progress=False)
        >>> p = dg.measures.class_contribution_profile(seq)
        >>> p.metrics
        ['modularity_class_0', 'modularity_class_1', 'modularity_class_2']
        >>> bool(torch.allclose(p.mean.sum(1), seq.modularity().values, atol=1e-12))
        True
    """
    _check_graph(graph)
    _check_positive(resolution, "resolution")
    return _contribution_profile(graph, graph.class_contributions(resolution=resolution),
                                 resolution, class_names)


def _contribution_profile(graph: Any, contrib: Tensor, resolution: float,
                          class_names: Optional[Sequence[str]] = None) -> "DepthProfile":
    from ..profiles._profile import DepthProfile
    c = contrib.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ValueError(f"class_names must have {c} entries, got {len(names)}: {names}")
    meta = dict(getattr(graph, "meta", {}), resolution=resolution)
    return DepthProfile(graph.layers, [f"modularity_class_{n}" for n in names], contrib, meta)


# ================================================================================== evolution
def _detected(ei: Tensor, w: Optional[Tensor], y: Tensor, n: int, method: str,
              resolution: float, seed: int) -> Tuple[Tensor, Dict[str, float]]:
    """Communities of one graph and their scores (the ``'detected_communities'`` measure)."""
    comm = detect_communities(ei, w, n, method=method, resolution=resolution, seed=seed)
    # (the graph is a snapshot already checked undirected, or the runner's own: no O(E) check)
    return comm, {"detected_modularity": float(modularity_q(ei, comm, w, n, None, resolution,
                                                            check=False)),
                  "n_communities": float(int(comm.max()) + 1),
                  "nmi": normalized_mutual_info(comm, y), "ari": adjusted_rand_index(comm, y)}


def _same_tensors(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and bool(torch.equal(x, y))
                                    for x, y in zip(a, b))


@dataclass(eq=False)
class CommunityEvolution(JsonFile):
    """Community structure of every layer and how it changes with depth
    (:func:`community_evolution`). ``dg.plot(ev, kind=...)`` draws it, ``dg.log(writer, ev)``
    logs it.

    Attributes:
        profile: The per-layer series, a :class:`~dyngraph.DepthProfile` with the metrics
            ``'modularity'`` (Q, the labels as communities), ``'detected_modularity'`` (Q of the
            detected communities: ≥ the label Q when the labels are not the best partition),
            ``'graph_purity'`` (:func:`graph_purity`), ``'n_communities'``, ``'nmi'`` and
            ``'ari'`` (the detected communities against the labels), ``'mixing_ratio'`` and
            ``'separated_pairs'`` (:func:`mixing_profile`). Its ``meta`` holds the settings.
        class_contributions: Each class's modularity term, a
            :class:`~dyngraph.DepthProfile` (:func:`class_contribution_profile`): at every
            layer the terms sum to ``'modularity'``.
        mixing: float64 ``[L, C, C]`` total-normalised class mixing.
        communities: ``L`` tensors ``[N]``, label-free communities per layer.
        transitions: ``L − 1`` row-normalised transition matrices.
        stability: float64 ``[L − 1]``, NMI between consecutive layers' communities.
        separation: ``[C, C]`` :func:`separation_depth` of every class pair (``-1`` never).
        labels: ``[N]`` the classes.

    Example:
        >>> import torch, dyngraph as dg
        >>> y = torch.arange(60) % 3
        >>> x = torch.randn(60, 6, generator=torch.Generator().manual_seed(0))
        >>> seq = dg.DynamicGraph.from_features({'a': x, 'b': x + 5 * torch.eye(6)[y]}, y=y,
        ...                                     k=4, progress=False)
        >>> ev = dg.measures.community_evolution(seq, progress=False)
        >>> ev.layers, ev.profile.metrics[:3]
        (['a', 'b'], ['modularity', 'detected_modularity', 'graph_purity'])
        >>> dg.measures.CommunityEvolution.from_dict(ev.to_dict()) == ev
        True
    """

    profile: "DepthProfile"
    class_contributions: "DepthProfile"
    mixing: Tensor
    communities: List[Tensor]
    transitions: List[Tensor]
    stability: Tensor
    separation: Tensor
    labels: Tensor

    @property
    def layers(self) -> List[str]:
        """Layer names ``[L]``."""
        return self.profile.layers

    @property
    def meta(self) -> Dict[str, Any]:
        """Settings (method, resolution, seed, separation threshold, snapshot settings)."""
        return self.profile.meta

    def __repr__(self) -> str:
        def f(name: str) -> str:
            v = self.profile[name].values.tolist()
            return "[" + ", ".join(f"{x:.3f}" for x in v[:8]) + (", ...]" if len(v) > 8 else "]")
        return (f"CommunityEvolution(layers={len(self.layers)}, "
                f"method={self.meta.get('method')!r}, nmi={f('nmi')}, "
                f"graph_purity={f('graph_purity')}, n_communities="
                f"{[int(v) for v in self.profile['n_communities'].values.tolist()[:8]]})")

    FORMAT = EVOLUTION_FORMAT

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CommunityEvolution):
            return NotImplemented
        return (self.profile == other.profile
                and self.class_contributions == other.class_contributions
                and _same_tensors(self.communities, other.communities)
                and _same_tensors(self.transitions, other.transitions)
                and _same_tensors([self.mixing, self.stability, self.separation, self.labels],
                                  [other.mixing, other.stability, other.separation,
                                   other.labels]))

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (every tensor as lists; :meth:`from_dict` inverts it exactly)."""
        return {"format": EVOLUTION_FORMAT, "layers": list(self.layers),
                "profile": self.profile.to_dict(),
                "class_contributions": self.class_contributions.to_dict(),
                **jsonable({"class_mixing": self.mixing, "communities": self.communities,
                            "transitions": self.transitions, "stability_nmi": self.stability,
                            "separation_depth": self.separation, "labels": self.labels})}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CommunityEvolution":
        """Inverse of :meth:`to_dict`."""
        from ..profiles._profile import DepthProfile
        cls._check_format(d)
        long = lambda v: torch.tensor(v, dtype=torch.long)
        return cls(profile=DepthProfile.from_dict(d["profile"]),
                   class_contributions=DepthProfile.from_dict(d["class_contributions"]),
                   mixing=float_tensor(d["class_mixing"], "class_mixing"),
                   communities=[long(c) for c in d["communities"]],
                   transitions=[float_tensor(t, "transitions") for t in d["transitions"]],
                   stability=float_tensor(d["stability_nmi"], "stability_nmi"),
                   separation=long(d["separation_depth"]), labels=long(d["labels"]))


def community_evolution(graph: Any, method: str = DEFAULT_METHOD, resolution: float = 1.0,
                        seed: int = 0, separation_threshold: float = 0.1,
                        progress: bool = True) -> CommunityEvolution:
    """Everything about communities over depth, for a :class:`~dyngraph.DynamicGraph`.

    The label-based quantities (per-class contributions, mixing, purity) run as one batched
    scatter pass over all snapshots; communities are detected per layer with ``method``.

    Args:
        graph: A :class:`~dyngraph.DynamicGraph` whose snapshots carry labels ``y`` (the same
            samples in every layer).
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
        ...     'sep': torch.randn(90, 8, generator=g) + 6 * torch.eye(8)[y]}, y=y, k=5,
        ...     progress=False)
        >>> ev = dg.measures.community_evolution(seq, progress=False)
        >>> nmi, purity = ev.profile['nmi'].values, ev.profile['graph_purity'].values
        >>> bool(nmi[1] > 0.9), bool(purity[1] > purity[0])
        (True, True)
    """
    from .._progress import progress_bar
    from ..profiles._profile import DepthProfile
    _check_graph(graph)
    check_choice(method, "method", METHODS)
    _check_positive(resolution, "resolution")
    _check_seed(seed)
    _check_positive(separation_threshold, "separation_threshold")
    check_flag(progress, "progress")
    layers = graph.layers
    snaps: List[Tuple[Tensor, Tensor, Tensor, int]] = []
    ys = []
    for i, s in enumerate(graph.snapshots):
        if s.y is None:
            raise ValueError(f"snapshot {i} ({layers[i]!r}) has no labels y")
        n = int(s.num_nodes)
        if snaps and n != snaps[0][3]:
            raise ValueError(f"snapshot {i} has {n} nodes, snapshot 0 has {snaps[0][3]}: "
                             f"community transitions need the same samples in every layer")
        w = s.edge_weight if s.edge_weight is not None else \
            torch.ones(s.edge_index.shape[1], device=s.edge_index.device)
        snaps.append((s.edge_index, w, s.y, n))
        ys.append(check_labels(s.y, n, f"y of snapshot {i}"))
    # all snapshots as one graph of L·N nodes, node l·N + i being sample i in layer l
    ei_all = torch.cat([ei + i * n for i, (ei, _, _, _) in enumerate(snaps)], 1)
    w_all, y_all = torch.cat([w.to(torch.float64) for _, w, _, _ in snaps]), torch.cat(ys)
    b_all = torch.arange(len(snaps), device=ei_all.device).repeat_interleave(n)
    c = int(y_all.max()) + 1
    check_class_axis(y_all, c, "y", power=2)  # (the [L, C, C] mixing, indexed by label)
    contrib = graph.class_contributions(resolution=resolution)          # [L, C]
    mixing = class_mixing(ei_all, y_all, w_all, num_nodes=y_all.numel(), batch=b_all,
                          num_classes=c).cpu()
    purity = cast(Tensor, graph_purity(ei_all, y_all, w_all, num_nodes=y_all.numel(),
                                       batch=b_all))
    found = [_detected(ei, w, y, n, method, resolution, seed)
             for ei, w, y, n in progress_bar(snaps, desc="communities", disable=not progress)]
    comms = [comm.cpu() for comm, _ in found]
    trans = community_transitions(comms, "row") if len(comms) > 1 else []
    stab = torch.tensor([normalized_mutual_info(comms[i], comms[i + 1])
                         for i in range(len(comms) - 1)], dtype=torch.float64)
    ratio, separated, sep = _mixing_series(mixing, separation_threshold)
    detected = {k: torch.tensor([s[k] for _, s in found], dtype=torch.float64)
                for k in found[0][1]}
    series = {"modularity": contrib.sum(1).cpu(), "graph_purity": purity.cpu(),
              "mixing_ratio": ratio, "separated_pairs": separated, **detected}
    meta = {k: v for k, v in graph.meta.items() if k in ("k", "metric", "symmetrize", "n_samples")}
    meta.update(method=method, resolution=resolution, seed=seed,
                separation_threshold=separation_threshold)
    values = torch.stack([series[m].to(torch.float64) for m in EVOLUTION_METRICS], 1)
    return CommunityEvolution(
        profile=DepthProfile(layers, list(EVOLUTION_METRICS), values, meta),
        class_contributions=_contribution_profile(graph, contrib, resolution), mixing=mixing,
        communities=comms, transitions=trans, stability=stab, separation=sep, labels=ys[0].cpu())


__all__ = ["METHODS", "DEFAULT_METHOD", "class_mixing", "mixing_ratio", "mean_mixing_ratio",
           "separation_depth", "mixing_profile", "knn_purity", "graph_purity",
           "detect_communities", "contingency_table", "normalized_mutual_info",
           "adjusted_rand_index", "community_transitions", "class_contribution_profile",
           "CommunityEvolution", "community_evolution"]


# ============================================================================ registered measures
@register("graph_purity", graph=True, description="share of each node's kNN-graph weight that "
          "comes from its own class")
def _graph_purity(x: Tensor, y: Tensor, graph: Optional[Data]) -> float:
    g = require_graph(graph, "graph_purity")
    return float(graph_purity(g.edge_index, y, g.edge_weight, num_nodes=g.num_nodes))


@register("knn_purity", graph=False, description="share of each sample's k nearest neighbours "
          "(k = 10) with its label")
def _knn_purity(x: Tensor, y: Tensor, graph: Optional[Data], k: int = 10,
                metric: str = "cosine") -> float:
    return float(knn_purity(x, y, k=k, metric=metric))


@register("mixing_ratio", graph=True, description="mean observed / expected kNN-graph weight "
          "between two distinct classes (1: classes ignored, 0: classes separated)")
def _mixing_ratio(x: Tensor, y: Tensor, graph: Optional[Data]) -> float:
    g = require_graph(graph, "mixing_ratio")
    # labels as 0..K-1 codes of the distinct values (a scalar: label values unused)
    y = compact_labels(check_labels(y, int(g.num_nodes), "y"))[0]
    return float(mean_mixing_ratio(class_mixing(g.edge_index, y, g.edge_weight,
                                                num_nodes=g.num_nodes)))


@register("detected_communities", graph=True,
          outputs=("detected_modularity", "n_communities", "nmi", "ari"),
          description="communities of the kNN graph found without labels (Leiden): their Q, "
          "their number, NMI and ARI against the labels")
def _detected_communities(x: Tensor, y: Tensor, graph: Optional[Data],
                          method: str = DEFAULT_METHOD, resolution: float = 1.0,
                          seed: int = 0) -> Dict[str, float]:
    g = require_graph(graph, "detected_communities")
    return _detected(g.edge_index, g.edge_weight, y, int(g.num_nodes), method, resolution,
                     seed)[1]
