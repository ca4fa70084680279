"""Multi-process dyngraph on ``torch.distributed``: sharded extraction, row-sharded exact kNN,
and modularity whose per-community sums are reduced with ``all_reduce``.

Launch one process per device with ``torchrun``; the same code runs on ``gloo`` (CPU) and ``nccl``
(GPU)::

    torchrun --nproc_per_node=4 my_script.py

    # my_script.py
    import dyngraph as dg
    rank, world = dg.distributed.init_distributed()     # nccl if CUDA is available, else gloo
    feats = dg.distributed.distributed_extract_features(model, dataset, per_class=500, seed=0)
    profile = dg.distributed.distributed_depth_profile(feats, graph=dg.GraphSpec(k=3))
    if rank == 0:                                       # the same DepthProfile on every rank
        profile.to_json("profile.json")

How the work is split:

* **Extraction** — every rank draws the same seeded class-balanced sample, rank ``r`` takes the
  sample positions ``r, r + W, r + 2W, ...`` (the shard of a
  :class:`~torch.utils.data.DistributedSampler` without its padding: duplicated samples would be
  duplicated nodes), and :func:`dyngraph.extract_features` (its :class:`~dyngraph.LayerTaps`)
  runs on that shard (spilling to disk when asked).
* **kNN** — rank ``r`` owns the queries of its rows. Every rank's rows are streamed to all ranks
  in blocks with ``broadcast`` (the next block is in flight while the current one is searched),
  and each rank merges the exact top-k of its rows against every block with the tile kernel of
  :func:`dyngraph.graphs.nearest_neighbors`. Memory per rank: its rows, two blocks, one score
  tile.
* **Modularity** — each rank sums, over the graph entries it holds, the strength ``S_c`` and the
  inside weight of every community; one ``all_reduce`` adds these ``[2, C]`` sums over ranks,
  and every rank computes the same ``Q``.

Node ids are global sample positions (the order of the single-process run), so the graphs — and
the profile — equal those of :func:`dyngraph.depth_profile` with ``backend='matmul'`` on the
gathered features; ties go to the smaller global id on every rank.

Everything also runs without an initialised process group (one process, world size 1).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import timedelta
from itertools import accumulate
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Sequence,
    Sized,
    Tuple,
    Union,
    cast,
)

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ._io import run_environment
from ._json import jsonable
from ._progress import progress_counter
from ._pyg import coalesce
from ._validate import (
    check_choice,
    check_features,
    check_flag,
    check_labels,
    check_positive_int,
    compact_labels,
)
from .capture._extract import balanced_indices, dataset_labels, extract_features
from .capture._features import LayerFeatures
from .graphs._graph import symmetrize as _symmetrize
from .graphs._knn import (
    DEFAULT_COL_BLOCK,
    BlockTopK,
    canonical_copies,
    check_knn_options,
    edges_from_knn,
    even_blocks,
    prepare_features,
    row_bits,
    row_hashes,
    smallest_copy_ids,
    topk_cols,
    topk_rows,
    unit_scale,
)
from .graphs._spec import GraphSpec
from .measures._modularity import community_sums, prepare_partition, terms_from_sums
from .measures._registry import resolve
from .profiles._profile import DepthProfile
from .profiles._runner import Options, as_layer_features, check_measure_options, check_sampling

#: A process group (``None``: the world).
Group = Optional[Any]

__all__ = [
    "init_distributed",
    "distributed_extract_features",
    "distributed_nearest_neighbors",
    "distributed_knn_edges",
    "distributed_modularity",
    "distributed_depth_profile",
    "shard_ids",
    "token_ids",
]


# ---------------------------------------------------------------------------- process group
def init_distributed(backend: Optional[str] = None, timeout_s: float = 1800.0) -> Tuple[int, int]:
    """Initialises the default process group from ``torchrun``'s environment.

    ``backend=None`` picks ``'nccl'`` when CUDA is available and ``'gloo'`` otherwise; with
    ``nccl`` the CUDA device is set to ``LOCAL_RANK``. Already initialised: nothing changes.
    Without ``torchrun``'s variables (a plain ``python`` run): no group is created and the
    distributed functions run as a single process.

    Returns:
        ``(rank, world_size)``.

    Example:
        >>> import dyngraph as dg
        >>> dg.distributed.init_distributed()  # plain python: one process
        (0, 1)
    """
    # The arguments are checked whether or not a group is created: a typo fails on one process.
    if backend is not None:
        check_choice(backend, "backend", ("gloo", "nccl"))
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or \
            not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a finite number of seconds > 0, got "
                         f"timeout_s={timeout_s!r}")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def _rank_world(group: Group) -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _active(group: Group) -> bool:
    return _rank_world(group)[1] > 1


def _comm_device(group: Group, fallback: torch.device) -> torch.device:
    """Where collective buffers must live: the current CUDA device for nccl, else the CPU."""
    if _active(group) and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if fallback.type != "cpu" and _active(group) else fallback


def _global_src(src: int, group: Group) -> int:
    return src if group is None else dist.get_global_rank(group, src)


def _all_gather_int(values: Sequence[int], group: Group, device: torch.device) -> Tensor:
    """``[W, len(values)]`` long tensor of every rank's ``values``."""
    t = torch.tensor([list(values)], dtype=torch.long, device=device)
    return torch.cat(_all_gather_rows(t, [1] * _rank_world(group)[1], group, device))


def _all_gather_rows(t: Tensor, sizes: Sequence[int], group: Group, device: torch.device
                     ) -> List[Tensor]:
    """Every rank's ``t`` (first dimensions ``sizes[r]``, same trailing shape and dtype)."""
    if not _active(group):
        return [t]
    m = max(max(sizes), 1)
    buf = torch.zeros((m,) + tuple(t.shape[1:]), dtype=t.dtype, device=device)
    buf[:t.shape[0]] = t.to(device)
    out = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(out, buf, group=group)
    return [o[:s] for o, s in zip(out, sizes)]


def _all_reduce(t: Tensor, group: Group, op: str = "SUM") -> Tensor:
    """``t`` reduced in place over the ranks with ``dist.ReduceOp.<op>``."""
    if _active(group):
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op), group=group)
    return t


def shard_ids(meta: Mapping) -> Optional[Tensor]:
    """Global row ids of a shard made by :func:`distributed_extract_features` (``None`` when
    ``meta`` has no shard record): rank ``r`` of ``W`` holds positions ``r, r+W, r+2W, ...``.

    Args:
        meta: A :class:`~dyngraph.LayerFeatures`' ``.meta``; its ``'shard'`` entry is
            ``{'rank', 'world_size', 'n_global'}``.

    Returns:
        ``[n_local]`` long ids ``r, r+W, ... < n_global``, or ``None``.

    Raises:
        ValueError: for a malformed record, or a shard of token rows (``pool='tokens'``: use
            :func:`token_ids`).

    Example:
        >>> import dyngraph as dg
        >>> dg.distributed.shard_ids({'shard': {'rank': 1, 'world_size': 3, 'n_global': 10}})
        tensor([1, 4, 7])
        >>> dg.distributed.shard_ids({}) is None
        True
    """
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict (a LayerFeatures' .meta), got "
                        f"{type(meta).__name__}")
    shard = meta.get("shard")
    if not shard:
        return None
    if isinstance(shard, Mapping) and shard.get("rows") == "tokens":
        raise ValueError("meta['shard'] describes a shard of token rows (pool='tokens'): their "
                         "global ids depend on every rank's token counts; get them with "
                         "token_ids(features) on every rank (distributed_depth_profile does)")
    keys = ("rank", "world_size", "n_global")
    if not isinstance(shard, Mapping) or any(
            isinstance(shard.get(k), bool) or not isinstance(shard.get(k), int) for k in keys) \
            or not 0 <= shard["rank"] < shard["world_size"] or shard["n_global"] < 0:
        raise ValueError(f"meta['shard'] must be {{'rank', 'world_size', 'n_global'}} with "
                         f"0 <= rank < world_size (as distributed_extract_features writes it), "
                         f"got {shard!r}")
    return torch.arange(int(shard["rank"]), int(shard["n_global"]), int(shard["world_size"]))


# ---------------------------------------------------------------------------- extraction
def distributed_extract_features(model: torch.nn.Module, data: Union[Dataset, DataLoader],
                                 layers=None, *, per_class: Optional[int] = None,
                                 n_samples: Optional[int] = None, seed: int = 0,
                                 batch_size: Optional[int] = None, pool=None,
                                 device: Optional[Union[str, torch.device]] = None,
                                 spill_dir: Optional[str] = None, spill_dtype: str = "float32",
                                 batch_fn: Optional[Callable] = None, num_workers: int = 0,
                                 progress: bool = True, group: Group = None,
                                 layout: Optional[str] = None) -> LayerFeatures:
    """Each rank extracts its shard of the (class-balanced) sample with
    :func:`dyngraph.extract_features`.

    Every rank draws the same seeded sample (:func:`dyngraph.balanced_indices` over the dataset's
    labels), so the union of the shards, ordered by global id, is exactly what
    ``extract_features(model, loader, per_class=..., seed=...)`` returns in one process.

    With ``pool='tokens'`` every real token of a rank's inputs is a row, as in
    :func:`dyngraph.extract_features`: ``indices`` is the dataset index of each token's input and
    ``positions`` its position in it; ordered by ``(indices, positions)`` (the global ids of
    :func:`token_ids`), the union of the shards is the single-process result.

    Args:
        model: The network (on ``device``).
        data: A ``Dataset`` or a ``DataLoader`` (its dataset, batch size and collate function are
            used). Balanced sampling needs labels the dataset exposes (``TensorDataset``,
            ``.targets``, ``Subset``).
        layers, pool, spill_dir, spill_dtype, batch_fn, progress, layout: As in
            :func:`dyngraph.extract_features` (progress on rank 0 only).
        per_class, n_samples, seed: The sample, as in :func:`dyngraph.extract_features`.
        batch_size: Default: the loader's, else 64.
        device: Where to run the model (default: where its parameters are).
        num_workers: DataLoader workers per rank.
        group: Process group (default: the world).

    Returns:
        This rank's :class:`~dyngraph.LayerFeatures`: ``indices`` are dataset indices, and
        ``meta['shard'] = {'rank', 'world_size', 'n_global'}`` (see :func:`shard_ids`); with
        ``pool='tokens'`` also ``positions``, ``meta['shard']['rows'] = 'tokens'``,
        ``meta['n_samples']`` the tokens and ``meta['n_inputs']`` the inputs of all ranks.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.randn(60, 4), torch.arange(60) % 3)
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> f = dg.distributed.distributed_extract_features(m, ds, per_class=5, progress=False)
        >>> f.n_samples, f.meta['shard']
        (15, {'rank': 0, 'world_size': 1, 'n_global': 15})
    """
    loader = data if isinstance(data, DataLoader) else None
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(f"data must be a map-style Dataset or a DataLoader over one, got "
                        f"{type(data).__name__}")
    if batch_size is None:
        batch_size = getattr(loader, "batch_size", None) or 64
    check_positive_int(batch_size, "batch_size")
    check_positive_int(num_workers, "num_workers", minimum=0)
    check_flag(progress, "progress")
    rank, world = _rank_world(group)
    if per_class is not None or n_samples is not None:
        labels = dataset_labels(dataset)
        if labels is None:
            raise ValueError("per_class/n_samples with distributed extraction needs a dataset "
                             "that exposes its labels (TensorDataset, .targets, Subset) so every "
                             "rank draws the same sample; or pass a Subset of the samples")
        indices = balanced_indices(labels, per_class, n_samples, seed)
        pool_ds: Dataset = Subset(dataset, indices.tolist())
    else:
        indices = torch.arange(len(cast(Sized, dataset)))
        pool_ds = dataset
    n_global = len(cast(Sized, pool_ds))
    # DistributedSampler(shuffle=False)'s positions r, r+W, ... without its padding (padding
    # repeats samples, which would be duplicate graph nodes).
    shard_loader = DataLoader(pool_ds, batch_size=batch_size, sampler=range(rank, n_global, world),
                              num_workers=num_workers,
                              collate_fn=getattr(loader, "collate_fn", None))
    feats = extract_features(model, shard_loader, layers, pool=pool, device=device, seed=seed,
                             spill_dir=spill_dir, spill_dtype=spill_dtype, batch_fn=batch_fn,
                             progress=progress and rank == 0, layout=layout)
    ids = torch.arange(rank, n_global, world)
    meta = {**feats.meta, "shard": {"rank": rank, "world_size": world, "n_global": n_global},
            "per_class": per_class, "seed": seed, "n_samples": n_global}
    if pool != "tokens":
        return LayerFeatures(dict(feats._layers), feats.y, indices[ids], meta)
    # Every real token is a row; extract_features numbered each token's input in the order of
    # this shard (its sampler is not sequential): shard position -> global position -> dataset.
    assert feats.indices is not None and feats.positions is not None
    sources = indices[ids[feats.indices]]
    comm = _comm_device(group, torch.device("cpu"))
    n_rows = int(_all_gather_int([feats.n_samples], group, comm).sum())
    meta.update(n_samples=n_rows, n_inputs=n_global, indices="dataset")
    meta["shard"]["rows"] = "tokens"
    return LayerFeatures(dict(feats._layers), feats.y, sources, meta, feats.positions)


def token_ids(features: LayerFeatures, group: Group = None) -> Tensor:
    """Global row ids of a shard of token rows (:func:`distributed_extract_features` with
    ``pool='tokens'``): the rank of each row's ``(indices, positions)`` among those of every
    rank, which is its row in the single-process ``extract_features`` result (inputs in dataset
    order, tokens in position order). A collective: call it on every rank.

    Args:
        features: This rank's token rows, with ``indices`` and ``positions``.
        group: Process group (default: the world).

    Returns:
        ``[n_r]`` global ids (increasing on each rank for the shards that
        :func:`distributed_extract_features` makes).

    Example:
        >>> import torch, dyngraph as dg
        >>> f = dg.LayerFeatures({'h': torch.zeros(4, 2)}, torch.tensor([0, 0, 1, 1]),
        ...                      torch.tensor([7, 7, 3, 3]), positions=torch.tensor([0, 1, 0, 1]))
        >>> dg.distributed.token_ids(f).tolist()   # one process: input 3's tokens come first
        [2, 3, 0, 1]
    """
    if not isinstance(features, LayerFeatures) or features.indices is None \
            or features.positions is None:
        raise ValueError(f"token_ids needs LayerFeatures with indices and positions (pool="
                         f"'tokens'), got {type(features).__name__}"
                         f"{'' if not isinstance(features, LayerFeatures) else ' without them'}")
    idx, pos = features.indices.long().cpu(), features.positions.long().cpu()
    comm = _comm_device(group, torch.device("cpu"))
    sizes = _all_gather_int([idx.numel()], group, comm)[:, 0].tolist()
    top = int(_all_gather_int([int(pos.max()) + 1 if pos.numel() else 1], group, comm).max())
    key = idx * top + pos
    every = torch.cat([k.cpu() for k in _all_gather_rows(key.to(comm), sizes, group, comm)])
    order = every.sort().values
    if bool((order[1:] == order[:-1]).any()):
        raise ValueError("token_ids: two rows have the same (indices, positions): the shards "
                         "overlap")
    return torch.searchsorted(order, key)


# ---------------------------------------------------------------------------- kNN
def _check_ids(ids: Tensor, n_local: int, name: str = "global_ids") -> Tensor:
    ids = torch.as_tensor(ids)
    if ids.is_floating_point() or ids.dim() != 1 or ids.numel() != n_local:
        raise ValueError(f"{name} must be an integer tensor [{n_local}] (one id per local row), "
                         f"got {tuple(ids.shape)} {ids.dtype}")
    ids = ids.long()
    if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise ValueError(f"{name} must be strictly increasing on each rank (sort the local rows "
                         f"by global id)")
    return ids


def _gather_ids(ids: Tensor, sizes: Sequence[int], group: Group, comm: torch.device
                ) -> List[Tensor]:
    """Every rank's global ids (on ``comm``), checked: together a permutation of ``0..N−1``."""
    gathered = _all_gather_rows(ids.to(comm), sizes, group, comm)
    n = int(sum(sizes))
    if not torch.equal(torch.cat(gathered).sort().values.cpu(), torch.arange(n)):
        raise ValueError(f"global_ids over all ranks must be a permutation of 0..{n - 1}")
    return gathered


def _global_copy_groups(x: Tensor, lg: Optional[Tensor], my_ids: Union[int, Tensor],
                        ids_all: Sequence[Any], sizes: Sequence[int], group: Group,
                        comm: torch.device) -> Tensor:
    """``[N]`` (on ``x``'s device) the smallest global id among the bitwise copies of every row,
    on any rank (a row's own id when it has none), for :func:`canonical_copies`.

    ``lg``: this rank's own groups (:func:`copy_groups`, ``None``: no copies). Only the local
    representatives whose :func:`row_hashes` meet another rank's are sent (their bits), and
    every rank groups those exactly with the same ``unique``. Traffic: ``N`` hashes and group
    ids, plus the rows that may have copies elsewhere."""
    rank, _ = _rank_world(group)
    n_loc, dev = x.shape[0], x.device
    local = torch.arange(n_loc, device=dev)
    gid = local + my_ids if isinstance(my_ids, int) else my_ids
    lg = local if lg is None else lg
    reps = (lg == local).nonzero().flatten()
    counts = _all_gather_int([reps.numel()], group, comm)[:, 0].tolist()
    hashes = torch.cat(_all_gather_rows(row_hashes(x[reps]).to(comm), counts, group, comm))
    _, inv, cnt = torch.unique(hashes, return_inverse=True, return_counts=True)
    lo = sum(counts[:rank])
    cand = reps[(cnt[inv[lo:lo + reps.numel()]] > 1).to(dev)]
    rep_group = gid.clone()
    n_cand = _all_gather_int([cand.numel()], group, comm)[:, 0].tolist()
    if sum(n_cand):
        rows = torch.cat(_all_gather_rows(row_bits(x[cand]).to(comm), n_cand, group, comm))
        ids = torch.cat(_all_gather_rows(gid[cand].to(comm), n_cand, group, comm))
        low = smallest_copy_ids(rows, ids)
        lo = sum(n_cand[:rank])
        rep_group[cand] = low[lo:lo + cand.numel()].to(dev)
    every = torch.cat(_all_gather_rows(rep_group[lg].to(comm), sizes, group, comm)).to(dev)
    where = torch.cat([torch.arange(i, i + n_r, device=dev) if isinstance(i, int) else i.to(dev)
                       for i, n_r in zip(ids_all, sizes)])
    return torch.empty_like(every).index_put_((where,), every)


def _stream_plan(sizes: Sequence[int], block: int) -> List[Tuple[int, int, int]]:
    plan = []
    for src, n in enumerate(sizes):
        step = even_blocks(n, block) if n else 1
        plan += [(src, a, min(n, a + step)) for a in range(0, n, step)]
    return plan


def _pair_role(rank: int, src: int, world: int) -> Optional[str]:
    """Who scores the pairs between the rows of ``rank`` and ``src`` (each pair once): with
    ``d = (src − rank) mod W``, ``rank`` takes ``src``'s rows when ``2d < W`` (``'all'``) and
    ``src`` takes them when ``2d > W``; opposite ranks (``2d = W``) split them: the lower rank its
    rows × the first half of ``src``'s rows (``'first'``), the higher rank the second half of its
    own rows × all of ``src``'s rows (``'second'``), which is the rest of the region, transposed."""
    d = (src - rank) % world
    if 2 * d < world:
        return "all"
    if 2 * d == world:
        return "first" if rank < src else "second"
    return None


def _tile_pair(acc: BlockTopK, other: BlockTopK, lo: int, hi: int, keys: Tensor, key_ids,
               a: int, b: int) -> None:
    """Scores this rank's rows ``lo:hi`` (``acc``) against a received block, rows ``a:b`` of its
    owner (``other``, an accumulator of the owner's rows): the row top-k goes to ``acc``, the
    column top-k, the owner's candidates among ``lo:hi``, to ``other``."""
    nq, nk = hi - lo, keys.shape[0]
    if nq <= 0 or nk == 0:
        return
    chunk = acc._row_chunk(nq, nk)
    k_low, sq_k = acc._side(keys)
    mine = acc.query_ids
    for s0 in range(lo, hi, chunk):
        s1 = min(hi, s0 + chunk)
        q, q_low, sq_q = acc._query(slice(s0, s1))
        s = acc._scores(q, q_low, sq_q, keys, k_low, sq_k)
        v, i = topk_rows(s, min(acc.n_cand, nk), acc.largest, sorted=False)
        acc._merge(s0, s1, [acc._candidates(v, i, s0, s1, keys, key_ids)], False)
        v, i = topk_cols(s, min(other.n_cand, s1 - s0), other.largest, sorted=False)
        del s
        ids = mine + s0 if isinstance(mine, int) else mine[s0:s1]
        other._merge(a, b, [other._candidates(v, i, a, b, q, ids, q=keys)], False)


def _local_self_search(acc: BlockTopK, my_ids, chunk_size: Optional[int],
                       col_chunk_size: Optional[int]) -> BlockTopK:
    """Searches this rank's rows among themselves (the symmetric self-search of
    :func:`dyngraph.graphs.nearest_neighbors`, local ids) in ``acc``, then turns it into the
    accumulator of the rows' global ids ``my_ids`` (unfilled places stay worst/−1)."""
    if acc.q.shape[0] > 1:
        acc.search_self(chunk_size, col_chunk_size)
    idx = acc.idx
    acc.idx = torch.where(idx >= 0, idx + my_ids, idx) if isinstance(my_ids, int) else \
        torch.where(idx >= 0, my_ids[idx.clamp_min(0)], idx)
    acc.query_ids = my_ids
    return acc


def distributed_nearest_neighbors(x: Tensor, k: int, metric: str = "cosine", *,
                                  global_ids: Optional[Tensor] = None,
                                  chunk_size: Optional[int] = None,
                                  col_chunk_size: Optional[int] = None, precision: str = "full",
                                  candidates: Optional[int] = None, group: Group = None
                                  ) -> Tuple[Tensor, Tensor]:
    """Exact kNN of this rank's rows against the rows of every rank (row-sharded).

    Rank ``r`` holds rows ``x`` ``[n_r, D]`` of a global ``[N, D]`` matrix. Each rank searches its
    own rows among themselves with the symmetric self-search of
    :func:`dyngraph.graphs.nearest_neighbors`. The rows are then broadcast to all ranks in blocks
    of ``col_chunk_size`` rows (one block ahead in flight), and every cross-rank pair of rows is
    scored once, by one of the two ranks (each rank scores about half of the other ranks' rows):
    a tile's row top-k goes to the scoring rank's rows, its column top-k to the block owner's
    rows, and the owners collect those with one ``gather`` per rank at the end. Each rank thus
    computes about ``N²/(2W)`` scores instead of ``N²/W``. Tiles use the tile kernel of
    :func:`dyngraph.graphs.nearest_neighbors`.

    Args:
        x: This rank's rows ``[n_r, D]`` (``n_r`` may differ between ranks, and be 0).
        k: Neighbours per row, ``1 <= k < N``.
        metric: ``'cosine'`` or ``'euclidean'``.
        global_ids: ``[n_r]`` strictly increasing global ids of the local rows, together a
            permutation of ``0..N-1``. Default: rank-ordered contiguous blocks (rank 0 holds
            ``0..n_0-1``, ...). Ties go to the smaller global id.
        chunk_size, col_chunk_size, precision, candidates: As in
            :func:`dyngraph.graphs.nearest_neighbors` (``col_chunk_size`` is also the rows per
            broadcast block).
        group: Process group (default: the world).

    Returns:
        ``(values, index)`` ``[n_r, k]``, best first, with global neighbour ids; the same as the
        corresponding rows of :func:`dyngraph.graphs.nearest_neighbors` on the gathered matrix
        (matmul backend).

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
        >>> v, i = dg.distributed.distributed_nearest_neighbors(x, 3)  # one process here
        >>> torch.equal(i, dg.graphs.nearest_neighbors(x, 3, backend='matmul')[1])
        True
    """
    check_features(x, "x", min_rows=0, check_finite=False)
    rank, world = _rank_world(group)
    comm = _comm_device(group, x.device)
    x = prepare_features(x, metric)
    dtype_code = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
    info = _all_gather_int([x.shape[0], x.shape[1], dtype_code.get(x.dtype, -1)], group, comm).cpu()
    sizes = info[:, 0].tolist()
    if len(set(info[:, 1].tolist())) > 1:
        raise ValueError(f"x must have the same number of columns on every rank, got "
                         f"{info[:, 1].tolist()}")
    if len(set(info[:, 2].tolist())) > 1:
        raise ValueError("x must have the same dtype on every rank")
    n = int(sum(sizes))
    check_knn_options(k, n, metric, "matmul", chunk_size, col_chunk_size, precision, candidates)
    offsets = [0, *accumulate(sizes[:-1])]
    if global_ids is None:
        ids_all: List[Union[int, Tensor]] = list(offsets)
        my_ids: Union[int, Tensor] = offsets[rank]
    else:
        my_ids = _check_ids(global_ids, x.shape[0]).to(x.device)
        ids_all = [g.to(x.device) for g in _gather_ids(my_ids, sizes, group, comm)]
    scale = None
    if precision != "full" and metric == "euclidean":
        m = torch.cat([x.norm(dim=1), x.new_zeros(1)]).max()  # (0 for an empty shard)
        scale = unit_scale(float(_all_reduce(m.reshape(1).to(comm), group, "MAX")))

    def accumulator(rows: Tensor, ids: Union[int, Tensor]) -> BlockTopK:
        return BlockTopK(rows, k, metric, query_ids=ids, precision=precision,
                         candidates=candidates, chunk_size=chunk_size, scale=scale)

    acc = _local_self_search(accumulator(x, 0), my_ids, chunk_size, col_chunk_size)
    copies = _global_copy_groups(x, acc.query_copies(), my_ids, ids_all, sizes, group, comm)
    plan = _stream_plan(sizes, col_chunk_size or DEFAULT_COL_BLOCK)
    half = [n_src // 2 for n_src in sizes]  # opposite ranks split their pairs at these rows
    others = {src: accumulator(x.new_empty(sizes[src], 0), ids_all[src])
              for src in range(world) if src != rank}
    x_comm = x.to(comm).contiguous() if _active(group) else x

    def post(step: int) -> Tuple[Tensor, Any]:  # (only with world > 1)
        src, a, b = plan[step]
        buf = x_comm[a:b] if src == rank else torch.empty(b - a, x.shape[1], dtype=x.dtype,
                                                            device=comm)
        work = dist.broadcast(buf, src=_global_src(src, group), group=group, async_op=True)
        return buf, work

    pending: Tuple[Tensor, Any] = post(0) if plan and world > 1 else (x, None)
    for step in range(len(plan) if world > 1 else 0):
        buf, work = pending
        work.wait()
        if step + 1 < len(plan):
            pending = post(step + 1)  # the next block travels while this one is searched
        src, a, b = plan[step]
        role = None if src == rank else _pair_role(rank, src, world)
        if role == "first":  # only the owner's first half of rows
            b = min(b, half[src])
        if role is None or a >= b:
            continue
        lo = half[rank] if role == "second" else 0
        kid = ids_all[src]
        kid = kid + a if isinstance(kid, int) else kid[a:b]
        _tile_pair(acc, others[src], lo, x.shape[0], buf[:b - a].to(x.device), kid, a, b)
    # Each owner collects the candidates the other ranks found for its rows.
    for dst in range(world):
        if world == 1 or sizes[dst] == 0:
            continue
        found = others.get(dst, acc)
        sent = [t.to(comm).contiguous() for t in (found.vals, found.idx)]
        got = [[torch.empty_like(t) for _ in range(world)] if dst == rank else None for t in sent]
        for t, into in zip(sent, got):
            dist.gather(t, into, dst=_global_src(dst, group), group=group)
        if dst == rank:
            parts = [(gv.to(x.device), gi.to(x.device)) for r, (gv, gi)
                     in enumerate(zip(*got)) if r != rank]
            acc._merge(0, x.shape[0], parts, False)
    vals, idx = acc.result()
    qids = torch.arange(x.shape[0], device=x.device) + my_ids if isinstance(my_ids, int) else my_ids
    return canonical_copies(vals, idx, copies, qids, acc.largest)


def distributed_knn_edges(x: Tensor, k: int, metric: str = "cosine", *,
                          global_ids: Optional[Tensor] = None, chunk_size: Optional[int] = None,
                          col_chunk_size: Optional[int] = None, precision: str = "full",
                          candidates: Optional[int] = None, group: Group = None
                          ) -> Tuple[Tensor, Tensor]:
    """This rank's share of the directed kNN graph: the ``k`` in-edges of each local row.

    Args:
        x, k, metric, global_ids, chunk_size, col_chunk_size, precision, candidates, group: As in
            :func:`distributed_nearest_neighbors`.

    Returns:
        ``edge_index`` ``[2, n_r·k]`` in global ids (``edge_index[1]`` the local query, as in
        :func:`dyngraph.knn_edges`) and ``edge_weight`` ``[n_r·k]`` (cosine, or 1 for
        Euclidean). Concatenated over ranks in rank order (with contiguous ids), they equal
        :func:`dyngraph.knn_edges` on the gathered rows.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
        >>> ei, w = dg.distributed.distributed_knn_edges(x, 3)
        >>> torch.equal(ei, dg.knn_edges(x, 3, backend='matmul')[0])
        True
    """
    vals, idx = distributed_nearest_neighbors(x, k, metric, global_ids=global_ids,
                                              chunk_size=chunk_size,
                                              col_chunk_size=col_chunk_size, precision=precision,
                                              candidates=candidates, group=group)
    if global_ids is None:
        rank, _ = _rank_world(group)
        sizes = _all_gather_int([x.shape[0]], group, _comm_device(group, x.device))[:, 0].tolist()
        start = int(sum(sizes[:rank]))
        qid = torch.arange(start, start + x.shape[0], device=idx.device)
    else:
        qid = torch.as_tensor(global_ids).long().to(idx.device)
    return edges_from_knn(vals, idx, metric, qid)


# ---------------------------------------------------------------------------- modularity
def _q_from_sums(sums: Tensor, resolution: float) -> float:
    """One graph's ``[2, C]`` reduced sums (``S_c``, ``2·w_in(c)``, float64, from
    ``community_sums`` over each rank's stored entries) → ``Q``, with the tensor shapes, hence
    the rounding, of the ``'modularity'`` measure (``community_contributions(...).sum()``)."""
    terms, _ = terms_from_sums(sums[0:1], sums[1:2], resolution)
    return float(terms[0].sum())


def distributed_modularity(edge_index: Tensor, communities: Tensor,
                           edge_weight: Optional[Tensor] = None, num_nodes: Optional[int] = None,
                           resolution: float = 1.0, group: Group = None) -> float:
    """Newman modularity of a graph whose stored entries are split over ranks.

    Each rank passes its share of the stored entries of an undirected graph in PyG's convention
    (over all ranks, every undirected edge ``{i, j}`` stored as ``(i, j)`` and ``(j, i)``; the
    shares may split a pair, and repeated entries add up as ``coalesce`` would). Each rank scatters
    its per-community strength and inside weight; one ``all_reduce`` sums them over ranks.

    Args:
        edge_index: ``[2, E_r]`` this rank's entries, global node ids.
        communities: ``[N]`` community of every node (the same full vector on every rank).
        edge_weight: ``[E_r]`` weights (default 1).
        num_nodes: ``N`` (default ``communities.numel()``).
        resolution: Newman's ``γ``.
        group: Process group (default: the world).

    Returns:
        ``Q`` (the same float on every rank), equal to :func:`dyngraph.modularity` on the union.

    Example:
        >>> import torch, dyngraph as dg
        >>> # two triangles joined by one edge, each triangle a community (networkx: 5/14)
        >>> src, dst = [0, 1, 2, 3, 4, 5, 2], [1, 2, 0, 4, 5, 3, 3]
        >>> ei = torch.tensor([src + dst, dst + src])
        >>> round(dg.distributed.distributed_modularity(ei, torch.tensor([0, 0, 0, 1, 1, 1])), 4)
        0.3571
    """
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) or \
            not math.isfinite(resolution) or resolution < 0:
        raise ValueError(f"resolution must be a finite number >= 0 (Newman's gamma), got "
                         f"resolution={resolution!r}")
    ei, comm, w, _, _, n_comm = prepare_partition(edge_index, communities, edge_weight,
                                                    num_nodes, None)
    _check_symmetric(ei, w, comm.numel(), group)
    n_comm = int(_all_reduce(torch.tensor([n_comm], device=_comm_device(group, ei.device)), group,
                             "MAX"))
    sums = torch.stack(community_sums(ei, comm, w, n_comm))  # [2, C]: S_c, 2·w_in(c)
    sums = _all_reduce(sums.to(_comm_device(group, sums.device)), group)
    return _q_from_sums(sums, float(resolution))


def _check_symmetric(ei: Tensor, w: Tensor, n: int, group: Group) -> None:
    """Raises a ``ValueError`` unless the entries (over all ranks) form an undirected graph.

    One process: ``A`` and ``Aᵀ`` are compared exactly after ``coalesce``. Several ranks: with a
    fixed value ``f_i`` in ``[1, 2)`` per node (golden-ratio sequence), the sums
    ``Σ w f_i f_j² `` and ``Σ w f_i² f_j`` over every rank's entries (one ``all_reduce``) agree for
    ``A = Aᵀ`` up to rounding and differ otherwise (a one-direction kNN list differs in every
    entry)."""
    if not ei.shape[1]:
        return
    if not _active(group):
        a, wa = coalesce(ei, w, n, reduce="sum")
        b, wb = coalesce(ei.flip(0), w, n, reduce="sum")
        if a.shape == b.shape and torch.equal(a, b) and torch.allclose(wa, wb, rtol=1e-9,
                                                                        atol=0.0):
            return
        raise ValueError("edge_index is not an undirected graph: some entries (i, j) have no "
                         "reverse entry (j, i) of the same weight (a kNN edge list is directed: "
                         "symmetrize it first, e.g. with dyngraph.graphs.symmetrize)")
    f = 1.0 + torch.remainder(torch.arange(n, dtype=torch.float64, device=ei.device)
                              * 0.6180339887498949, 1.0)
    fi, fj = f[ei[0]], f[ei[1]]
    pair = w.double() * fi * fj
    sums = torch.stack([(pair * fj).sum(), (pair * fi).sum(), w.double().abs().sum(),
                        torch.tensor(float(ei.shape[1]), dtype=torch.float64, device=ei.device)])
    sums = _all_reduce(sums.to(_comm_device(group, sums.device)), group).cpu()
    gap, tol = abs(float(sums[0] - sums[1])), 64.0 * (float(sums[3]) + 1) * 2.0 ** -52 * 8 \
        * float(sums[2])
    if gap > tol:
        raise ValueError("the entries over all ranks do not form an undirected graph: some "
                         "(i, j) have no reverse entry (j, i) of the same weight (a kNN edge "
                         "list is directed: symmetrize it first)")


def _local_entries(edge_index: Tensor, edge_weight: Tensor, how: str, n: int, group: Group,
                   comm: torch.device) -> Tuple[Tensor, Tensor]:
    """This rank's share of the stored entries of the symmetrised graph.

    ``'mean'``/``'add'`` are linear: each directed edge contributes ``(i, j)`` and ``(j, i)`` with
    half (``'mean'``) or all (``'add'``) of its weight, and the shares add up over ranks to the
    coalesced undirected graph, with no exchange. ``'max'``/``'mutual'`` need both directions of a
    pair: the directed edges (``O(N·k)``) are gathered, symmetrised on every rank with
    :func:`dyngraph.symmetrize`, and each rank keeps the entries whose first node it owns.
    """
    keep = edge_index[0] != edge_index[1]
    edge_index, edge_weight = edge_index[:, keep], edge_weight[keep]
    if how in ("mean", "add"):
        w = edge_weight / 2 if how == "mean" else edge_weight
        return torch.cat([edge_index, edge_index.flip(0)], 1), torch.cat([w, w])
    counts = _all_gather_int([edge_index.shape[1]], group, comm)[:, 0].tolist()
    ei_all = torch.cat(_all_gather_rows(edge_index.t().contiguous(), counts, group, comm)).t()
    w_all = torch.cat(_all_gather_rows(edge_weight, counts, group, comm))
    ei_s, w_s = _symmetrize(ei_all.to(edge_index.device), w_all.to(edge_index.device), n, how)
    mine = torch.isin(ei_s[0], edge_index[1])  # owned: a query of this rank's directed edges
    return ei_s[:, mine], w_s[mine]


def distributed_depth_profile(features: Union[LayerFeatures, Mapping[str, Tensor]],
                              measures: Union[str, Sequence[str]] = ("modularity",), *,
                              y: Optional[Tensor] = None, graph: Optional[GraphSpec] = None,
                              repeats: int = 1, per_class: Optional[int] = None,
                              n_samples: Optional[int] = None, seed: int = 0,
                              measure_options: Options = None,
                              global_ids: Optional[Tensor] = None, progress: bool = True,
                              group: Group = None) -> DepthProfile:
    """:func:`dyngraph.depth_profile` of the ``'modularity'`` measure over row-sharded features.

    Every rank draws the same seeded sample of repeat ``r``
    (``balanced_indices(y, per_class, n_samples, seed + r)`` over the gathered labels) and keeps
    its own rows of it; for every layer it builds :func:`distributed_knn_edges` on those rows,
    its local share of the symmetrised graph, and the per-community sums of that share. One
    ``all_reduce`` per repeat adds the sums of all layers over the ranks, and every rank computes
    the same ``Q`` with the arithmetic of the ``'modularity'`` measure.

    Args:
        features: This rank's shard: :class:`~dyngraph.LayerFeatures` (e.g. from
            :func:`distributed_extract_features`) or ``{layer: Tensor[n_r, ...]}`` with ``y``.
        measures: ``'modularity'`` (the one measure whose sums reduce over ranks).
        y: ``[n_r]`` labels of the local rows (default ``features.y``).
        graph: The :class:`~dyngraph.GraphSpec` (default: the reference); the search is the
            exact matmul kernel, so ``backend`` must be ``'auto'`` or ``'matmul'``, and
            ``out_of_core`` ``False``.
        repeats, per_class, n_samples, seed: As in :func:`dyngraph.depth_profile`.
        measure_options: ``{'modularity': {'resolution': γ}}``, as in
            :func:`dyngraph.depth_profile`.
        global_ids: ``[n_r]`` global ids of the local rows (default: from
            ``features.meta['shard']`` when present, :func:`token_ids` for a shard of token
            rows, else rank-ordered contiguous blocks).
        progress: A progress bar over repeats × layers, on rank 0.
        group: Process group (default: the world).

    Returns:
        The same :class:`~dyngraph.DepthProfile` on every rank, samples ``[repeats, layers, 1]``:
        equal to ``dg.depth_profile(gathered, ['modularity'], graph=graph, ...)`` on the
        gathered features (``graph.backend='matmul'``); ``meta['world_size']`` is the number of
        ranks.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(90) % 3
        >>> f = {'a': torch.randn(90, 8, generator=g),
        ...      'b': torch.randn(90, 8, generator=g) + 4 * torch.eye(8)[y]}
        >>> spec = dg.GraphSpec(k=3, backend='matmul')
        >>> p = dg.distributed.distributed_depth_profile(f, y=y, graph=spec, progress=False)
        >>> s = dg.depth_profile(f, ['modularity'], y=y, graph=spec, progress=False)
        >>> torch.equal(p.samples, s.samples), p.metrics
        (True, ['modularity'])
    """
    ms = resolve(measures, "layer")
    if [m.name for m in ms] != ["modularity"]:
        raise ValueError(f"distributed_depth_profile computes measures=['modularity'] only (its "
                         f"per-community sums add up over ranks), got {[m.name for m in ms]}")
    opts = check_measure_options(measure_options, ms).get("modularity", {})
    unknown = sorted(set(opts) - {"resolution"})
    if unknown:
        raise TypeError(f"measure_options['modularity'] has unknown option(s) {unknown}; the "
                        f"modularity measure takes 'resolution'")
    resolution = float(opts.get("resolution", 1.0))
    check_sampling(repeats, per_class, n_samples, 0)
    check_flag(progress, "progress")
    graph = GraphSpec() if graph is None else graph
    if not isinstance(graph, GraphSpec):
        raise TypeError(f"graph must be a dg.GraphSpec, got {type(graph).__name__}")
    if graph.backend == "torch_cluster" or graph.out_of_core:
        raise ValueError(f"distributed_depth_profile searches with the matmul kernel in memory: "
                         f"graph needs backend 'auto' or 'matmul' and out_of_core=False, got "
                         f"backend={graph.backend!r}, out_of_core={graph.out_of_core!r}")
    feats = as_layer_features(features, y)
    if global_ids is None:
        shard = feats.meta.get("shard")
        tokens = isinstance(shard, Mapping) and shard.get("rows") == "tokens"
        global_ids = (token_ids(cast(LayerFeatures, features), group) if tokens
                      else shard_ids(feats.meta))
    names, n_local = feats.names, feats.n_samples
    rank, world = _rank_world(group)
    comm = _comm_device(group, feats.y.device)
    sizes = _all_gather_int([n_local], group, comm)[:, 0].tolist()
    n = int(sum(sizes))
    if global_ids is None:
        start = int(sum(sizes[:rank]))
        ids = torch.arange(start, start + n_local)
    else:
        ids = _check_ids(global_ids, n_local)
    # Every rank needs every node's label (both ends of an edge) and draws the same sample.
    y_full = torch.full((n,), -1, dtype=torch.long)
    g_ids = torch.cat([t.cpu() for t in _gather_ids(ids, sizes, group, comm)])
    y_full[g_ids] = torch.cat([t.cpu() for t in _all_gather_rows(feats.y.to(comm), sizes, group,
                                                                   comm)])
    check_labels(y_full, n, "y", min_classes=2)
    # class ids, not sizes: {0, 1, 10**9} are three communities (the order, hence every seeded
    # sample, is kept)
    y_full = compact_labels(y_full)[0]
    out = torch.empty(repeats, len(names), dtype=torch.float64)
    n_used = n
    bar = progress_counter(repeats * len(names), desc="profile",
                           disable=not (progress and rank == 0))
    try:
        for r in range(repeats):
            local_mask: Optional[Tensor] = None
            sub_ids, comm_sub = ids, y_full
            if per_class is not None or n_samples is not None:
                sample = balanced_indices(y_full, per_class, n_samples, seed + r)
                pos = torch.searchsorted(sample, ids).clamp_max_(sample.numel() - 1)
                local_mask = sample[pos] == ids
                sub_ids, comm_sub = pos[local_mask], y_full[sample]
                n_used = int(sample.numel())
            n_comm = int(comm_sub.max()) + 1  # as the measure counts the sample's communities
            layer_sums = []
            for name in names:
                x = feats[name]
                x = x.reshape(x.shape[0], -1)
                if local_mask is not None:
                    x = x[local_mask.to(x.device)]
                ei, w = distributed_knn_edges(
                    x, graph.k, graph.metric, global_ids=sub_ids.to(x.device),
                    chunk_size=graph.chunk_size, col_chunk_size=graph.col_chunk_size,
                    precision=graph.precision, candidates=graph.candidates, group=group)
                ei_s, w_s = _local_entries(ei, w, graph.symmetrize, comm_sub.numel(), group,
                                           _comm_device(group, x.device))
                layer_sums.append(torch.stack(community_sums(ei_s, comm_sub.to(x.device),
                                                             w_s.double(), n_comm)))
                bar.update(1)
            sums = _all_reduce(torch.stack(layer_sums).to(comm), group).cpu()
            out[r] = torch.tensor([_q_from_sums(s, resolution) for s in sums], dtype=torch.float64)
    finally:
        bar.close()
    meta: Dict[str, Any] = {
        "measures": ["modularity"], "graph": graph.replace(backend="matmul").to_dict(),
        "repeats": repeats, "per_class": per_class, "n_samples": n_used, "seed": seed,
        "null_permutations": 0, "measure_options": jsonable({"modularity": opts}) if opts else {},
        "world_size": world, "environment": run_environment()}
    meta.update({key: v for key, v in feats.meta.items() if key not in meta and key != "shard"})
    return DepthProfile(names, ["modularity"], out, meta)
