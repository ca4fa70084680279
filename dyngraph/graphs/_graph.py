"""kNN graph snapshots, one PyG ``Data`` per layer, and the ordered :class:`DynamicGraph`."""
from __future__ import annotations

import warnings
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np
import torch
from torch import Tensor

from .. import _pyg
from .._io import PathLike, atomic_torch_save
from .._progress import progress_bar
from .._pyg import coalesce, to_undirected
from .._threads import small_op
from .._validate import (
    check_choice,
    check_class_axis,
    check_edge_index,
    check_edge_weight,
    check_features,
    check_labels,
    check_num_nodes,
    check_positive_int,
    check_resolution,
    check_same_device,
    check_tensor,
    compact_labels,
    layer_names,
)
from ..measures._modularity import check_undirected, community_terms
from ._knn import is_row_source, knn_edges, row_source_info

if TYPE_CHECKING:
    from torch_geometric.data import Batch, Data

    from ..profiles._profile import DepthProfile

SYMMETRIZE = ("mean", "max", "add", "mutual")


class DegenerateLayerWarning(UserWarning):
    """A layer whose rows are all identical (zero variance; for cosine, all parallel): every kNN
    score ties, so its graph, and any modularity of it, is decided by the tie rule and the order
    of the samples rather than by the representation.

    Issued by :func:`build_snapshot` (and so by every graph and profile built from features); the
    graph is still returned. Filter it with :mod:`warnings` (``'error'`` to stop at such a layer,
    ``'ignore'`` to silence it). Also exported as ``dyngraph.errors.DegenerateLayerWarning``.

    Example:
        >>> import warnings, torch, dyngraph as dg
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter('always')
        ...     g = dg.graphs.build_snapshot(torch.ones(6, 4), torch.arange(6) % 2, k=2)
        >>> [w.category.__name__ for w in caught], g.num_nodes
        (['DegenerateLayerWarning'], 6)
        >>> issubclass(dg.errors.DegenerateLayerWarning, UserWarning)
        True
    """


@small_op(lambda edge_index, *a, **k: int(getattr(edge_index, "shape", (0, 0))[-1]))
def symmetrize(edge_index: Tensor, edge_weight: Tensor, num_nodes: int,
               how: str = "mean") -> Tuple[Tensor, Tensor]:
    """Makes a directed kNN graph undirected (both directions stored, coalesced, no self-loops).

    Args:
        edge_index: ``[2, E]`` directed edges, node ids in ``[0, num_nodes)``.
        edge_weight: ``[E]`` finite floating-point weights.
        num_nodes: ``N`` (an ``int`` above every node id).
        how: ``'mean'``: ``A = (A_dir + A_dirᵀ)/2``, the reference convention (a mutual pair keeps
            ``cos``, a one-way pair gets ``cos/2``); ``'max'``: ``max(A_dir, A_dirᵀ)`` (union);
            ``'add'``: ``A_dir + A_dirᵀ``; ``'mutual'``: only pairs that chose each other, with
            their mean weight.

    Returns:
        ``(edge_index, edge_weight)`` of the undirected graph.

    Example:
        >>> import torch, dyngraph as dg
        >>> ei = torch.tensor([[1, 0, 0], [0, 1, 2]])   # 1→0, 0→1 (mutual), 0→2 (one-way)
        >>> ei2, w2 = dg.graphs.symmetrize(ei, torch.tensor([0.8, 0.8, 0.6]), 3, how='mean')
        >>> ei2.tolist(), [round(v, 2) for v in w2.tolist()]
        ([[0, 0, 1, 2], [1, 2, 0, 0]], [0.8, 0.3, 0.8, 0.3])
    """
    check_choice(how, "how", SYMMETRIZE)
    edge_index = check_edge_index(edge_index)
    num_nodes = check_num_nodes(num_nodes)
    check_same_device(edge_index=edge_index,
                      edge_weight=check_tensor(edge_weight, "edge_weight"))
    edge_weight = check_edge_weight(edge_weight, edge_index.shape[1])
    if edge_index.numel():
        lo, hi = (int(v) for v in edge_index.aminmax())
        if lo < 0 or hi >= num_nodes:
            raise ValueError(f"edge_index must hold node ids in [0, num_nodes={num_nodes}), got "
                             f"values in [{lo}, {hi}]; pass num_nodes > {hi}")
    keep = edge_index[0] != edge_index[1]
    edge_index, edge_weight = edge_index[:, keep], edge_weight[keep]
    if how == "mutual":
        ei, w = coalesce(edge_index, edge_weight, num_nodes, reduce="add")
        ei_t, w_t = coalesce(ei.flip(0), w, num_nodes, reduce="add")
        key, key_t = ei[0] * num_nodes + ei[1], ei_t[0] * num_nodes + ei_t[1]
        pos = torch.searchsorted(key_t, key).clamp_max(max(key_t.numel() - 1, 0))
        mutual = key_t[pos] == key if key_t.numel() else torch.zeros_like(key, dtype=torch.bool)
        return ei[:, mutual], (w[mutual] + w_t[pos[mutual]]) / 2
    reduce = "add" if how in ("mean", "add") else "max"
    ei, w = to_undirected(edge_index, edge_weight, num_nodes=num_nodes, reduce=reduce)
    if how == "mean":
        w = w / 2
    return ei, w


def build_snapshot(x: Tensor, y: Optional[Tensor] = None, k: int = 3, metric: str = "cosine",
                   symmetrize: str = "mean", backend: str = "auto",
                   chunk_size: Optional[int] = None, keep_x: bool = False,
                   layer_name: str = "", layer_index: int = 0, *,
                   col_chunk_size: Optional[int] = None, precision: str = "full",
                   candidates: Optional[int] = None, progress: bool = False) -> Data:
    """One layer's features ``[N, ...]`` → an undirected kNN graph as a PyG ``Data``.

    Features with more than two dimensions are flattened to ``[N, D]``. ``backend``,
    ``chunk_size``, ``col_chunk_size``, ``precision`` and ``candidates`` go to
    :func:`~dyngraph.knn_edges`. ``x`` may also be a spilled layer
    (:class:`~dyngraph.capture.SpilledArray`) or a ``[N, D]`` NumPy array / memmap: it is then
    searched out of core, on ``y``'s device (see :func:`~dyngraph.graphs.nearest_neighbors`).
    ``progress`` shows a bar over the score tiles of a large search.

    Returns:
        ``Data(edge_index, edge_weight, y, num_nodes, layer_name, layer_index[, x])``.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
        >>> snap = dg.graphs.build_snapshot(x, torch.arange(60) % 3, k=3, layer_name='fc1')
        >>> snap.num_nodes, snap.layer_name, bool(snap.is_undirected())
        (60, 'fc1', True)
    """
    check_choice(symmetrize, "symmetrize", SYMMETRIZE)
    device: Optional[torch.device] = None  # where an out-of-core search runs: y's device
    if is_row_source(x):  # out of core: a spilled layer or a NumPy array / memmap
        if keep_x:
            raise ValueError("keep_x=True needs the features in memory; got an out-of-core "
                             f"{type(x).__name__} (load it first)")
        n = row_source_info(x, "features")[0]
        device = None if y is None else y.device
    else:
        # (finiteness: nearest_neighbors checks it)
        check_features(x, "features", ndim=None, min_rows=2, check_finite=False)
        if x.dim() == 1:
            raise ValueError(f"features for layer {layer_name!r} must be [N, ...] with a feature "
                             f"axis, got shape {tuple(x.shape)}")
        x = x.reshape(x.shape[0], -1)
        n = x.shape[0]
        if y is not None:
            check_same_device(features=x, y=y)
    if y is not None:
        y = check_labels(y, n, "y", min_classes=2)
    edge_index, edge_weight = knn_edges(x, k, metric, backend, chunk_size,
                                        col_chunk_size=col_chunk_size, precision=precision,
                                        candidates=candidates, device=device, progress=progress)
    edge_index, edge_weight = symmetrize_fn(edge_index, edge_weight, n, symmetrize)
    if metric == "cosine" and bool((edge_weight < 0).any()):
        warnings.warn(f"layer {layer_name!r}: {int((edge_weight < 0).sum())} kNN edges have "
                      f"cosine < 0 (rows with fewer than k={k} rows of positive cosine); "
                      f"modularity is undefined for negative weights and refuses this graph: "
                      f"use metric='euclidean' (unit weights) for this layer", stacklevel=2)
    if rows_identical(x, metric):
        warnings.warn(f"layer {layer_name!r}: all {n} rows are identical"
                      f"{' up to a positive factor' if metric == 'cosine' else ''} (zero "
                      f"variance): every kNN score ties, so the graph and its modularity are "
                      f"decided by the tie rule and the order of the samples, not by the "
                      f"representation", DegenerateLayerWarning, stacklevel=2)
    data = _pyg.Data(edge_index=edge_index, edge_weight=edge_weight, y=y, num_nodes=n,
                     layer_name=layer_name, layer_index=int(layer_index))
    if keep_x:
        data.x = x
    return data


symmetrize_fn = symmetrize


def _row_block(x: Any, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of a tensor or of a row source (NumPy array, spilled layer), as a
    float32/float64 tensor."""
    if isinstance(x, Tensor):
        block = x[start:stop]
    else:
        block = torch.from_numpy(np.array(x.read_rows(start, stop) if hasattr(x, "read_rows")
                                          else x[start:stop]))
    return block if block.dtype in (torch.float32, torch.float64) else block.float()


def rows_identical(x: Any, metric: str = "euclidean") -> bool:
    """Whether every row of ``x`` ``[N, D]`` equals row 0 to float32 rounding (``8·ε`` of row
    0's largest entry; for ``'cosine'`` after L2-normalising each row, so rows that differ only
    by a positive factor count as identical). Reads blocks of rows and stops at the first block
    that differs, so a layer with any spread costs one small block.

    Example:
        >>> import torch
        >>> from dyngraph.graphs._graph import rows_identical
        >>> x = torch.ones(5, 3)
        >>> rows_identical(x), rows_identical(x * torch.arange(1., 6.).unsqueeze(1), 'cosine')
        (True, True)
        >>> rows_identical(torch.eye(3))
        False
    """
    n = int(x.shape[0])
    width = max(int(np.prod(x.shape[1:])), 1)
    first = _row_block(x, 0, 1).reshape(1, -1)
    if metric == "cosine":
        norm = first.norm()
        if not float(norm) > 0:
            return False  # zero rows: the cosine search refuses them
        first = first / norm
    tol = 8 * torch.finfo(torch.float32).eps * float(first.abs().max())
    start, step = 1, 16
    while start < n:
        stop = min(n, start + step)
        block = _row_block(x, start, stop).reshape(stop - start, -1).to(first.device)
        if metric == "cosine":
            block = block / block.norm(dim=1, keepdim=True).clamp_min(torch.finfo(block.dtype).tiny)
        if float((block - first).abs().amax()) > tol:
            return False
        start, step = stop, max(16, min(4 * step, (1 << 20) // width))
    return True


class DynamicGraph:
    """An ordered sequence of kNN snapshots, one PyG ``Data`` per layer: a discrete-time dynamic
    graph whose nodes are the samples and whose time axis is depth.

    :meth:`modularity` and :meth:`modularity_null` return a :class:`~dyngraph.DepthProfile`
    (draw it with :func:`dyngraph.plot`, log it with :func:`dyngraph.log`). Resampled profiles
    of many measures at once come from :func:`dyngraph.depth_profile`, which builds the same
    snapshots with a :class:`~dyngraph.GraphSpec`.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(90) % 3
        >>> feats = {'noise': torch.randn(90, 16, generator=g),
        ...          'separated': torch.randn(90, 16, generator=g) + 6 * torch.eye(16)[y]}
        >>> seq = dg.DynamicGraph.from_features(feats, y=y, k=3, progress=False)
        >>> profile = seq.modularity()
        >>> profile.layers, bool(profile.values[1] > profile.values[0] + 0.3)
        (['noise', 'separated'], True)
    """

    def __init__(self, snapshots: Sequence[Data], meta: Optional[Dict[str, Any]] = None):
        snapshots = list(snapshots)
        for i, s in enumerate(snapshots):
            if not _pyg.is_data(s):
                raise TypeError(f"snapshots[{i}] must be a torch_geometric.data.Data, got "
                                f"{type(s).__name__}")
            if s.edge_index is None:
                raise ValueError(f"snapshots[{i}] has no edge_index")
        self.snapshots: List[Data] = snapshots
        self.meta: Dict[str, Any] = dict(meta or {})

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_features(cls, features: Union[Mapping[str, Tensor], "Any"],
                      y: Optional[Tensor] = None, k: int = 3, metric: str = "cosine",
                      symmetrize: str = "mean", backend: str = "auto",
                      chunk_size: Optional[int] = None, keep_x: bool = False,
                      device: Optional[Union[str, torch.device]] = None,
                      progress: bool = True, *, col_chunk_size: Optional[int] = None,
                      precision: str = "full", candidates: Optional[int] = None,
                      out_of_core: bool = False) -> "DynamicGraph":
        """Builds one snapshot per layer, layer by layer (one layer's features in memory at a time).

        Args:
            features: :class:`~dyngraph.LayerFeatures` (carries ``y``), or an ordered dict
                ``{layer name: Tensor[N, ...]}`` plus ``y``.
            y: ``[N]`` integer labels; taken from ``features.y`` when omitted.
            k: Neighbours per node (3 in the reference).
            metric: ``'cosine'`` (reference) or ``'euclidean'``.
            symmetrize: ``'mean'`` (reference: ``(A + Aᵀ)/2``), ``'max'``, ``'add'`` or
                ``'mutual'``.
            backend, chunk_size: Passed to :func:`~dyngraph.knn_edges`.
            keep_x: Store the flattened features as ``data.x``.
            device: Where to build the graphs (default: where the features are).
            progress: Show a progress bar over the layers, and one over the score tiles of each
                large layer's search.
            col_chunk_size, precision, candidates: Tile shape and half-precision tiles, passed to
                :func:`~dyngraph.knn_edges` (``precision`` is recorded in ``meta``).
            out_of_core: Search layers spilled to disk straight from their memory maps, two
                blocks of rows in memory at a time, instead of loading each layer (slower: each
                block is read once per later block; for layers that do not fit in memory).

        Returns:
            A :class:`DynamicGraph` whose ``meta`` records k, N, metric, symmetrize and layers.
        """
        names = layer_names(features)
        if y is None:
            y = getattr(features, "y", None)
            if y is None:
                raise ValueError("y is required when features is a plain dict (labels define the "
                                 "communities)")
        meta = {"k": k, "metric": metric, "symmetrize": symmetrize, "layers": names}
        if precision != "full":
            meta["precision"] = precision
        meta.update({key: v for key, v in getattr(features, "meta", {}).items() if key not in meta})
        y = torch.as_tensor(y) if device is None else torch.as_tensor(y).to(device)
        snaps = []
        for i, name in enumerate(progress_bar(names, desc="snapshots", disable=not progress)):
            # A tensor, or (out of core) the spilled layer / NumPy memmap itself.
            stored: Any = features.stored(name) if hasattr(features, "stored") else None
            x: Any = stored if out_of_core and is_row_source(stored) else features[name]
            if device is not None and isinstance(x, Tensor):
                x = x.to(device)
            # (build_snapshot checks the features, the labels and their devices)
            snaps.append(build_snapshot(x, y, k=k, metric=metric, symmetrize=symmetrize,
                                        backend=backend, chunk_size=chunk_size, keep_x=keep_x,
                                        layer_name=name, layer_index=i,
                                        col_chunk_size=col_chunk_size, precision=precision,
                                        candidates=candidates, progress=progress))
        meta["n_samples"] = snaps[0].num_nodes
        return cls(snaps, meta)

    # ------------------------------------------------------------------ sequence protocol
    def __len__(self) -> int:
        return len(self.snapshots)

    def __iter__(self) -> Iterator[Data]:
        return (s for s in self.snapshots)

    def __getitem__(self, item) -> Union[Data, "DynamicGraph"]:
        if isinstance(item, slice):
            return DynamicGraph(self.snapshots[item], self.meta)
        if isinstance(item, str):
            names = self.layers
            if item not in names:
                raise KeyError(f"no layer named {item!r}; layers are {names}")
            return self.snapshots[names.index(item)]
        return self.snapshots[item]

    @property
    def layers(self) -> List[str]:
        return [str(getattr(s, "layer_name", i)) for i, s in enumerate(self.snapshots)]

    def __repr__(self) -> str:
        n = self.snapshots[0].num_nodes if self.snapshots else 0
        keys = {k: self.meta[k] for k in ("k", "metric", "symmetrize") if k in self.meta}
        return f"DynamicGraph(layers={len(self)}, num_nodes={n}, {keys})"

    def to(self, device: Union[str, torch.device]) -> "DynamicGraph":
        """A copy with every snapshot on ``device``."""
        return DynamicGraph([s.to(device) for s in self.snapshots], self.meta)

    def to_batch(self) -> Batch:
        """All snapshots as one disconnected PyG ``Batch`` (``batch`` = layer index)."""
        return _pyg.Batch.from_data_list(self.snapshots)

    # ------------------------------------------------------------------ persistence
    def save(self, path: PathLike) -> None:
        """Saves atomically (a plain dict of tensors; loads with ``weights_only=True``)."""
        state = {"format": "dyngraph.DynamicGraph/1", "meta": _plain(self.meta),
                 "snapshots": [s.to_dict() for s in self.snapshots]}
        atomic_torch_save(state, path)

    @classmethod
    def load(cls, path: PathLike, map_location: Optional[Union[str, torch.device]] = None
             ) -> "DynamicGraph":
        state = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(state, dict) or state.get("format") != "dyngraph.DynamicGraph/1":
            raise ValueError(f"{path} is not a file written by DynamicGraph.save")
        return cls([_pyg.Data.from_dict(d) for d in state["snapshots"]], state["meta"])

    # ------------------------------------------------------------------ metrics
    def _labels(self, communities: Optional[Sequence[Tensor]] = None) -> List[Tensor]:
        if not self.snapshots:
            raise ValueError("this DynamicGraph has no snapshots")
        if communities is not None and (isinstance(communities, Tensor)
                                        or not isinstance(communities, (list, tuple))
                                        or len(communities) != len(self.snapshots)):
            got = (f"a {type(communities).__name__}" if not isinstance(communities, (list, tuple))
                   else f"{len(communities)} entries")
            raise ValueError(f"communities must be a list of one [N] tensor per snapshot "
                             f"({len(self.snapshots)}), got {got}")
        out = []
        for i, s in enumerate(self.snapshots):
            c = s.y if communities is None else communities[i]
            if c is None:
                raise ValueError(f"snapshot {i} ({self.layers[i]!r}) has no labels y")
            out.append(check_labels(c, s.num_nodes, f"labels of snapshot {i}"))
        return out

    def _batched_edges(self) -> Tuple[Tensor, Tensor, Tensor]:
        """All layers' edges as one disjoint union: ``edge_index`` (offset), float64 weights and
        the ``batch`` vector; each snapshot checked (node ids within its ``num_nodes``, weights
        finite and ``>= 0``) and the union checked undirected."""
        eis, ws, batch = [], [], []
        offset = 0
        for i, s in enumerate(self.snapshots):
            where = f"snapshot {i} ({self.layers[i]!r})"
            ei = check_edge_index(s.edge_index, f"the edge_index of {where}")
            n = s.num_nodes
            if n is None:
                raise ValueError(f"{where} has no num_nodes")
            if ei.numel():
                lo, hi = (int(v) for v in ei.aminmax())
                if lo < 0 or hi >= n:
                    raise ValueError(f"{where} has edge ids in [{lo}, {hi}] but num_nodes={n}")
            w = s.edge_weight if s.edge_weight is not None else \
                torch.ones(ei.shape[1], device=ei.device)
            w = check_edge_weight(w, ei.shape[1], f"the edge_weight of {where}")
            if ei.numel() and bool((w < 0).any()):
                raise ValueError(f"{where} has {int((w < 0).sum())} negative edge weights; "
                                 f"modularity is undefined for them (rebuild the layer with "
                                 f"metric='euclidean')")
            eis.append(ei + offset)
            ws.append(w.double())
            batch.append(torch.full((n,), i, dtype=torch.long, device=ei.device))
            offset += n
        ei_all, w_all = torch.cat(eis, 1), torch.cat(ws)
        check_undirected(ei_all, w_all, offset, "DynamicGraph.modularity")
        return ei_all, w_all, torch.cat(batch)

    def _contributions(self, resolution: float, communities: Optional[Sequence[Tensor]] = None,
                       compact: bool = False) -> Tensor:
        """Each community's modularity term per layer, float64 ``[L, C]``, in one scatter pass
        (``compact``: the columns are the sorted distinct labels, for results that only sum
        them; otherwise column ``c`` is label ``c``)."""
        resolution = check_resolution(resolution)
        comm = torch.cat(self._labels(communities))
        if compact:
            comm = compact_labels(comm)[0]  # (labels 0..C-1: unchanged)
        else:
            check_class_axis(comm, int(comm.max()) + 1, "y")
        ei, w, batch = self._batched_edges()
        return community_terms(ei, comm, w, batch, len(self.snapshots), int(comm.max()) + 1,
                               resolution)[0]

    def _profile(self, metric: str, samples: Tensor, **meta: Any) -> "DepthProfile":
        """A one-metric :class:`~dyngraph.DepthProfile` over the layers (``meta`` added to the
        graph's)."""
        from ..profiles._profile import DepthProfile
        return DepthProfile(self.layers, [metric], samples, {**self.meta, **meta})

    def class_contributions(self, resolution: float = 1.0) -> Tensor:
        """Each class's modularity term per layer, float64 ``[L, C]``; rows sum to
        ``modularity().values``. Column ``c`` is label ``c`` (``C = max(y) + 1``; absent labels
        give zero columns); labels so sparse that most of a large axis would be empty are a
        ``ValueError`` (relabel them ``0..K-1``).

        Example:
            >>> import torch, dyngraph as dg
            >>> y = torch.arange(60) % 3
            >>> g = torch.Generator().manual_seed(0)
            >>> x = torch.randn(60, 8, generator=g) + 4 * torch.eye(8)[y]
            >>> seq = dg.DynamicGraph.from_features({'a': x}, y=y, progress=False)
            >>> c = seq.class_contributions()
            >>> tuple(c.shape), torch.allclose(c.sum(1), seq.modularity().values)
            ((1, 3), True)
        """
        return self._contributions(resolution)

    @small_op(lambda self, *a, **k: sum(int(g.edge_index.shape[1]) for g in self.snapshots))
    def modularity(self, resolution: float = 1.0, communities: Optional[Sequence[Tensor]] = None
                   ) -> "DepthProfile":
        """Modularity of every layer, labels as communities, in one batched scatter pass.

        Args:
            resolution: Newman's resolution ``γ``, a finite number ``>= 0``.
            communities: Per-snapshot community tensors to use instead of ``y`` (a list, one
                per snapshot; only which nodes share a value matters, not the values).

        Every snapshot must be undirected with finite weights ``>= 0`` and node ids below its
        ``num_nodes`` (each a ``ValueError`` otherwise; :meth:`from_features` builds such
        snapshots).

        Returns:
            A one-metric :class:`~dyngraph.DepthProfile` ``'modularity'``, samples ``[1, L, 1]``
            (``.values`` ``[L]``, ``.layers`` the names, ``.meta`` the graph settings).

        Example:
            >>> import torch, dyngraph as dg
            >>> y = torch.arange(60) % 3
            >>> x = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
            >>> seq = dg.DynamicGraph.from_features({'raw': x, 'sep': x + 4 * torch.eye(8)[y]},
            ...                                     y=y, progress=False)
            >>> p = seq.modularity()
            >>> p.metrics, tuple(p.samples.shape), bool(p.values[1] > p.values[0])
            (['modularity'], (1, 2, 1), True)
        """
        contrib = self._contributions(resolution, communities, compact=True)
        return self._profile("modularity", contrib.sum(1), resolution=resolution)

    @small_op(lambda self, *a, **k: sum(int(g.edge_index.shape[1]) for g in self.snapshots))
    def modularity_null(self, permutations: int = 100, seed: int = 0, resolution: float = 1.0
                        ) -> "DepthProfile":
        """Modularity of every layer with the labels randomly permuted: the null distribution
        of Q on the same graphs, for judging whether a layer's Q is more than chance.

        Permutation ``p`` relabels the nodes with ``y[perm_p]``, where ``perm_p`` is the p-th
        ``torch.randperm(N, generator)`` of a CPU generator seeded once with ``seed``; when all
        snapshots have the same N (the same samples), each permutation is shared by every layer.
        Class sizes are kept, so the null mean is close to, but not exactly, 0. The edges are
        gathered once; each permutation is one scatter pass over all layers.

        Args:
            permutations: Number of label permutations ``P`` (``>= 1``).
            seed: Seed of the permutations.
            resolution: Newman's ``γ``.

        Returns:
            A one-metric :class:`~dyngraph.DepthProfile` ``'modularity_null'``, ``samples``
            ``[P, L, 1]``: ``.values`` the null mean and ``.errors`` its standard deviation per
            layer. The z-score of the observed profile is
            ``(seq.modularity().values − null.values) / null.errors``.

        Example:
            >>> import torch, dyngraph as dg
            >>> g = torch.Generator().manual_seed(0)
            >>> y = torch.arange(90) % 3
            >>> x = torch.randn(90, 16, generator=g) + 6 * torch.eye(16)[y]
            >>> seq = dg.DynamicGraph.from_features({'a': x}, y=y, k=3, progress=False)
            >>> null = seq.modularity_null(permutations=50)
            >>> bool(abs(null.values[0]) < 0.05), bool(seq.modularity().values[0] > 0.5)
            (True, True)
        """
        check_positive_int(permutations, "permutations")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")
        resolution = check_resolution(resolution)
        labels = self._labels()
        sizes = [int(c.numel()) for c in labels]
        codes = compact_labels(torch.cat(labels))[0]  # (labels 0..C-1: unchanged)
        labels = list(codes.split(sizes))
        n_comm = int(codes.max()) + 1
        ei, w, batch = self._batched_edges()
        gen = torch.Generator().manual_seed(int(seed))
        rows = []
        for _ in range(int(permutations)):
            if len(set(sizes)) == 1:
                perm = torch.randperm(sizes[0], generator=gen)
                comm = torch.cat([c[perm.to(c.device)] for c in labels])
            else:
                comm = torch.cat([c[torch.randperm(c.numel(), generator=gen).to(c.device)]
                                  for c in labels])
            contrib, _ = community_terms(ei, comm, w, batch, len(labels), n_comm, resolution)
            rows.append(contrib.sum(1))
        return self._profile("modularity_null", torch.stack(rows), resolution=resolution,
                             permutations=int(permutations), null_seed=int(seed))


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool, Tensor)):
        return obj
    return str(obj)
