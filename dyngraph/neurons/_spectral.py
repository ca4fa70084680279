"""Spectral clustering of a weighted graph and the normalised cut of a partition.

Spectral partition (Shi & Malik / von Luxburg's normalised spectral clustering, as in
scikit-learn's ``SpectralClustering(affinity='precomputed')``):

1. ``M = D^{-1/2} A D^{-1/2}`` (``I − M`` is the normalised Laplacian);
2. the ``k`` eigenvectors ``U`` of ``M`` with the largest eigenvalues (the ``k`` smallest of the
   Laplacian), by a dense ``torch.linalg.eigh``, scipy's sparse ``eigsh`` or ``torch.lobpcg``;
3. the embedding ``D^{-1/2} U`` (the random-walk eigenvectors), each vector's sign fixed so that its
   largest entry is positive;
4. k-means in torch (k-means++ seeding, ``n_init`` restarts, the lowest inertia kept).

Everything is seeded, so the same graph and seed give the same partition; labels are renumbered in
order of first appearance.

The normalised cut of a partition ``{C_1..C_k}`` is ``Σ_c cut(C_c) / vol(C_c)``, where ``cut`` is
the weight of the edges leaving the cluster and ``vol`` its summed degree. It lies in ``[0, k]``; a
lower value means a more clusterable graph.
"""
from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _pyg
from .._pyg import coalesce, scatter
from .._validate import (
    check_choice,
    check_class_axis,
    check_edge_index,
    check_edge_weight,
    check_features,
    check_flag,
    check_labels,
    check_positive_int,
    check_same_device,
    check_tensor,
    compact_labels,
)

if TYPE_CHECKING:
    from torch_geometric.data import Data

SOLVERS = ("auto", "dense", "scipy", "lobpcg")
DENSE_LIMIT = 3000


# ----------------------------------------------------------------------------- inputs
def _graph_arrays(data) -> Tuple[Tensor, Tensor, int]:
    """``(edge_index, edge_weight float64, num_nodes)`` of a ``Data`` or a square adjacency."""
    if _pyg.is_data(data):
        if data.edge_index is None:
            raise ValueError("data has no edge_index")
        ei = check_edge_index(data.edge_index, "data.edge_index")
        n = data.num_nodes
        if n is None:
            raise ValueError("data.num_nodes is not set")
        w = data.edge_weight if "edge_weight" in data else None
        w = check_edge_weight(w if w is not None else torch.ones(ei.shape[1], device=ei.device),
                              ei.shape[1], "data.edge_weight")
    elif isinstance(data, Tensor) and data.is_sparse:
        if data.shape[0] != data.shape[1]:
            raise ValueError(f"data must be square, got shape {tuple(data.shape)}")
        data = data.coalesce()
        ei, w, n = data.indices(), data.values(), data.shape[0]
    elif isinstance(data, Tensor):
        if data.dim() != 2 or data.shape[0] != data.shape[1]:
            raise ValueError(f"data as a tensor must be a square adjacency [N, N], got shape "
                             f"{tuple(data.shape)}")
        check_features(data, "data")
        ei = data.nonzero().T
        w, n = data[ei[0], ei[1]], data.shape[0]
    else:
        raise TypeError(f"data must be a torch_geometric.data.Data or an [N, N] adjacency tensor, "
                        f"got {type(data).__name__}")
    w = w.double()
    if w.numel() and bool((w < 0).any()):
        raise ValueError(f"edge weights must be >= 0 for spectral clustering, got min "
                         f"{float(w.min()):.4g}")
    if ei.numel() and int(ei.max()) >= n:
        raise ValueError(f"edge_index refers to node {int(ei.max())} but num_nodes={n}")
    # Symmetric by construction: A ← (A + Aᵀ) / 2 (a no-op for PyG undirected graphs).
    ei2, w2 = coalesce(torch.cat([ei, ei.flip(0)], dim=1), torch.cat([w, w]) / 2, n, reduce="sum")
    return ei2, w2, int(n)


# ----------------------------------------------------------------------------- embedding
def _sign_flip(u: Tensor) -> Tensor:
    idx = u.abs().argmax(0)
    signs = torch.sign(u[idx, torch.arange(u.shape[1], device=u.device)])
    return u * torch.where(signs == 0, torch.ones_like(signs), signs)


def spectral_embedding(data, n_components: int, seed: int = 0, solver: str = "auto"
                       ) -> Tensor:
    """The ``[N, n_components]`` normalised spectral embedding ``D^{-1/2} U`` of a graph.

    Args:
        data: A PyG ``Data`` (``edge_index``, optional ``edge_weight``, ``num_nodes``) or a square
            adjacency tensor (dense or sparse COO). Weights must be ``>= 0``; the graph is
            symmetrised as ``(A + Aᵀ)/2``.
        n_components: Eigenvectors to keep.
        seed: Seeds the iterative solvers' start vectors.
        solver: ``'dense'`` (``torch.linalg.eigh``), ``'scipy'`` (``scipy.sparse.linalg.eigsh``),
            ``'lobpcg'`` (``torch.lobpcg``, sparse, any device) or ``'auto'`` (dense up to 3,000
            nodes, else scipy when installed, else lobpcg).

    Returns:
        ``[N, n_components]`` float64 embedding on the graph's device.

    Example:
        >>> import torch, dyngraph as dg
        >>> a = torch.block_diag(torch.ones(3, 3), torch.ones(3, 3)) - torch.eye(6)
        >>> dg.neurons.spectral_embedding(a, 2).shape
        torch.Size([6, 2])
    """
    check_choice(solver, "solver", SOLVERS)
    ei, w, n = _graph_arrays(data)
    check_positive_int(n_components, "n_components")
    if n_components > n:
        raise ValueError(f"n_components={n_components} exceeds the number of nodes N={n}")
    return _embed(ei, w, n, n_components, seed, solver)


def _embed(ei: Tensor, w: Tensor, n: int, k: int, seed: int, solver: str) -> Tensor:
    deg = scatter(w, ei[0], dim=0, dim_size=n, reduce="sum")
    if bool((deg <= 0).any()):
        bad = (deg <= 0).nonzero().flatten()
        raise ValueError(f"{bad.numel()} node(s) have no edges (e.g. nodes "
                         f"{bad[:10].tolist()}); spectral clustering needs every node connected to "
                         f"something: remove isolated nodes first (neuron_graph does)")
    dinv = deg.rsqrt()
    vals = w * dinv[ei[0]] * dinv[ei[1]]
    if solver == "auto":
        if n <= DENSE_LIMIT:
            solver = "dense"
        else:
            try:
                import scipy.sparse.linalg  # noqa: F401
                solver = "scipy"
            except ImportError:
                solver = "lobpcg"
    if solver == "lobpcg" and n < 3 * k + 1:
        solver = "dense"
    if solver == "dense":
        m = torch.zeros(n, n, dtype=torch.float64, device=ei.device)
        m.index_put_((ei[0], ei[1]), vals, accumulate=True)
        _, vecs = torch.linalg.eigh(m)
        u = vecs[:, n - k:].flip(1)
    elif solver == "scipy":
        import numpy as np
        import scipy.sparse as sp
        from scipy.sparse.linalg import eigsh
        m = sp.csr_matrix((vals.cpu().numpy(), (ei[0].cpu().numpy(), ei[1].cpu().numpy())),
                          shape=(n, n))
        v0 = np.random.default_rng(seed).uniform(-1, 1, n)
        # Shift-invert around 1 + ε finds the top of M's spectrum (its largest eigenvalue is 1).
        try:
            ev, vecs = eigsh(m, k=k, sigma=1.0 + 1e-6, which="LM", v0=v0)
        except Exception:  # a singular factorisation: plain Lanczos
            ev, vecs = eigsh(m, k=k, which="LA", v0=v0, maxiter=max(1000, 20 * n))
        order = np.argsort(-ev)
        u = torch.from_numpy(np.ascontiguousarray(vecs[:, order])).to(ei.device)
    else:  # lobpcg on M + I (eigenvalues in [0, 2], largest first)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        x0 = torch.rand(n, k, generator=gen, dtype=torch.float64).to(ei.device)
        idx = torch.cat([ei, torch.arange(n, device=ei.device).repeat(2, 1)], dim=1)
        m = torch.sparse_coo_tensor(idx, torch.cat([vals, torch.ones(n, dtype=vals.dtype,
                                                                    device=vals.device)]),
                                    (n, n), check_invariants=False).coalesce()
        _, u = torch.lobpcg(m, k=k, X=x0, largest=True, niter=1000, tol=1e-9)
    return _sign_flip(u * dinv.unsqueeze(1))


# ----------------------------------------------------------------------------- k-means
def kmeans(x: Tensor, n_clusters: int, seed: int = 0, n_init: int = 10, max_iter: int = 300,
           tol: float = 1e-4) -> Tuple[Tensor, Tensor, float]:
    """Seeded k-means (k-means++ seeding, Lloyd iterations) in torch, on ``x``'s device.

    Args:
        x: ``[N, D]`` points.
        n_clusters: ``k``.
        seed: Seed of the k-means++ draws.
        n_init: Restarts; the one with the lowest inertia is kept.
        max_iter: Lloyd iterations per restart.
        tol: Stop when the centres move less than ``tol`` × the mean feature variance.

    Returns:
        ``(labels [N] long, centres [k, D], inertia)``.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.tensor([[0.], [0.1], [5.], [5.1]])
        >>> dg.neurons.kmeans(x, 2)[0].tolist()
        [0, 0, 1, 1]
    """
    check_features(x, "x")
    check_positive_int(n_clusters, "n_clusters")
    check_positive_int(n_init, "n_init")
    check_positive_int(max_iter, "max_iter")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or \
            tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got tol={tol!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")
    n = x.shape[0]
    if n_clusters > n:
        raise ValueError(f"n_clusters={n_clusters} exceeds the number of points N={n}")
    x = x.double()
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    thresh = tol * float(x.var(0, unbiased=False).mean()) if n > 1 else 0.0
    best: Optional[Tuple[Tensor, Tensor, float]] = None
    sq = (x * x).sum(1)

    def dist2(c: Tensor) -> Tensor:
        if n * c.shape[0] * x.shape[1] <= 1 << 22:  # exact and BLAS-free for small problems
            return (x.unsqueeze(1) - c.unsqueeze(0)).pow(2).sum(-1)
        return (sq.unsqueeze(1) - 2 * x @ c.T + (c * c).sum(1).unsqueeze(0)).clamp_min(0)

    for _ in range(n_init):
        first = int(torch.randint(n, (1,), generator=gen))
        centres = x[first:first + 1]
        closest = dist2(centres).squeeze(1)
        n_trials = 2 + int(torch.log(torch.tensor(float(n_clusters))))
        for _c in range(1, n_clusters):  # greedy k-means++ (as scikit-learn)
            total = float(closest.sum())
            cand = (torch.randint(n, (n_trials,), generator=gen) if total <= 0 else
                    torch.multinomial((closest / total).float().cpu(), n_trials, replacement=True,
                                      generator=gen)).to(x.device)
            d_cand = torch.minimum(closest.unsqueeze(0), dist2(x[cand]).T)  # [trials, N]
            pick = int(d_cand.sum(1).argmin())
            centres = torch.cat([centres, x[cand[pick]].unsqueeze(0)])
            closest = d_cand[pick]
        for _it in range(max_iter):
            d = dist2(centres)
            labels = d.argmin(1)
            counts = torch.bincount(labels, minlength=n_clusters)
            new = scatter(x, labels, dim=0, dim_size=n_clusters, reduce="sum")
            new = new / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
            empty = counts == 0
            if bool(empty.any()):  # re-seed an empty cluster at the farthest point
                far = d.gather(1, labels.unsqueeze(1)).squeeze(1).topk(int(empty.sum())).indices
                new[empty] = x[far]
            shift = float(((new - centres) ** 2).sum())
            centres = new
            if shift <= thresh:
                break
        d = dist2(centres)
        labels = d.argmin(1)
        inertia = float(d.gather(1, labels.unsqueeze(1)).sum())
        if best is None or inertia < best[2] - 1e-12 * max(1.0, abs(best[2])):
            best = (labels, centres, inertia)
    assert best is not None  # n_init >= 1
    return _first_appearance(best[0]), best[1], best[2]


def _first_appearance(labels: Tensor) -> Tensor:
    """Renumbers labels 0, 1, ... in order of their first occurrence."""
    uniq, inv = torch.unique(labels, return_inverse=True)
    first = torch.full((uniq.numel(),), labels.numel(), dtype=torch.long, device=labels.device)
    first.scatter_reduce_(0, inv, torch.arange(labels.numel(), device=labels.device), "amin")
    rank = torch.empty_like(first)
    rank[first.argsort()] = torch.arange(uniq.numel(), device=labels.device)
    return rank[inv]


# ----------------------------------------------------------------------------- public
def spectral_partition(data: Union[Data, Tensor], n_clusters: int, seed: int = 0, *,
                       solver: str = "auto", n_init: int = 10, max_iter: int = 300) -> Tensor:
    """Partitions a graph's nodes into ``n_clusters`` groups by normalised spectral clustering.

    Args:
        data: A PyG ``Data`` (``edge_index``, ``edge_weight`` or unit weights, ``num_nodes``),
            e.g. from :func:`dyngraph.neurons.neuron_graph`, or a square adjacency tensor.
            Weights ``>= 0``; every node needs at least one edge.
        n_clusters: Number of groups ``k``.
        seed: Seeds k-means (and the iterative eigensolvers): same graph + seed → same labels.
        solver: Eigensolver, see :func:`spectral_embedding`.
        n_init, max_iter: k-means restarts and iterations.

    Returns:
        ``[num_nodes]`` long cluster labels in ``0..k-1``, numbered by first appearance.

    Example:
        >>> import torch, dyngraph as dg
        >>> a = torch.block_diag(torch.ones(3, 3), torch.ones(3, 3)) - torch.eye(6)
        >>> a[2, 3] = a[3, 2] = 0.1
        >>> dg.neurons.spectral_partition(a, 2).tolist()
        [0, 0, 0, 1, 1, 1]
    """
    check_positive_int(n_clusters, "n_clusters")
    check_choice(solver, "solver", SOLVERS)
    ei, w, n = _graph_arrays(data)
    if n_clusters > n:
        raise ValueError(f"n_clusters={n_clusters} exceeds the number of nodes N={n}")
    if n_clusters == 1:
        return torch.zeros(n, dtype=torch.long, device=ei.device)
    emb = _embed(ei, w, n, n_clusters, seed, solver)
    labels, _, _ = kmeans(emb, n_clusters, seed=seed, n_init=n_init, max_iter=max_iter)
    return labels


def ncut(edge_index: Tensor, clusters: Tensor, edge_weight: Optional[Tensor] = None,
         num_nodes: Optional[int] = None, per_cluster: bool = False) -> Union[float, Tensor]:
    r"""Normalised cut of a partition, with scatter ops.

    .. math:: \mathrm{ncut} = \sum_c \frac{\mathrm{cut}(C_c)}{\mathrm{vol}(C_c)}

    ``cut(C)`` is the weight of the edges with one end in ``C`` and ``vol(C)`` the summed
    (weighted) degree of its nodes. Graphs follow PyG's undirected convention (each edge stored in
    both directions); a self-loop is stored once and counts twice in its node's degree, as in
    networkx. For two clusters this equals ``networkx.normalized_cut_size``.

    Args:
        edge_index: ``[2, E]`` edges.
        clusters: ``[N]`` integer cluster of each node (values >= 0, any ids: the sums run over
            the clusters present, never over ``max(clusters) + 1`` slots).
        edge_weight: ``[E]`` weights >= 0 (default 1).
        num_nodes: ``N`` (default ``clusters.numel()``).
        per_cluster: Return the ``[C]`` terms ``cut/vol`` indexed by cluster id (0 for unused
            ids) instead of the sum; ids that would make a large, mostly empty ``C`` (e.g.
            ``{0, 1, 10**9}``) are a ``ValueError``.

    Returns:
        The n-cut (float), in ``[0, number of clusters]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])   # path 0-1-2-3
        >>> dg.neurons.ncut(ei, torch.tensor([0, 0, 1, 1]))
        0.6666666666666666
    """
    edge_index = check_edge_index(edge_index)
    check_tensor(clusters, "clusters")
    check_flag(per_cluster, "per_cluster")
    if num_nodes is not None and (isinstance(num_nodes, bool) or
                                  not isinstance(num_nodes, numbers.Integral) or num_nodes < 0):
        raise TypeError(f"num_nodes must be an int >= 0 (or None: clusters.numel()), got "
                        f"{type(num_nodes).__name__}: {num_nodes!r}")
    num_nodes = clusters.numel() if num_nodes is None else int(num_nodes)
    clusters = check_labels(clusters, num_nodes, "clusters")
    n_edges = edge_index.shape[1]
    edge_weight = check_edge_weight(edge_weight if edge_weight is not None else
                                    torch.ones(n_edges, device=edge_index.device), n_edges)
    check_same_device(edge_index=edge_index, clusters=clusters, edge_weight=edge_weight)
    if n_edges and int(edge_index.max()) >= num_nodes:
        raise ValueError(f"edge_index refers to node {int(edge_index.max())} but num_nodes="
                         f"{num_nodes}")
    if n_edges and int(edge_index.min()) < 0:
        raise ValueError(f"edge_index holds a negative node id ({int(edge_index.min())})")
    if n_edges and bool((edge_weight < 0).any()):
        raise ValueError(f"edge_weight must be >= 0 for the n-cut, got min "
                         f"{float(edge_weight.min()):.4g}")
    if num_nodes == 0:
        raise ValueError("ncut of an empty graph (num_nodes=0) is undefined")
    w = edge_weight.double()
    row, col = edge_index
    if per_cluster:  # the result is indexed by cluster id: refuse a huge, mostly empty one
        check_class_axis(clusters, int(clusters.max()) + 1, "clusters")
    codes, ids = compact_labels(clusters)   # sums over the clusters present only
    k = int(ids.numel())
    deg = scatter(torch.where(row == col, 2.0 * w, w), row, dim=0, dim_size=num_nodes,
                  reduce="sum")
    vol = scatter(deg, codes, dim=0, dim_size=k, reduce="sum")
    cross = codes[row] != codes[col]
    cut = scatter(w[cross], codes[row[cross]], dim=0, dim_size=k, reduce="sum")
    empty = vol <= 0
    if bool(empty.any()):
        raise ValueError(f"clusters {ids[empty][:10].tolist()} have zero volume (their nodes "
                         f"have no edges), so the n-cut is undefined; remove isolated nodes "
                         f"first")
    terms = cut / vol
    if not per_cluster:
        return float(terms.sum())
    out = torch.zeros(int(ids[-1]) + 1, dtype=terms.dtype, device=terms.device)
    return out.index_copy_(0, ids, terms)
