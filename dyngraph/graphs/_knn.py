"""Exact k-nearest-neighbour search and kNN graphs.

Two backends compute the same exact neighbours:

* ``'matmul'``: tiled ``x @ x.T`` + ``topk`` in pure torch (CPU and CUDA). The queries are cut
  into row blocks of ``chunk_size`` rows and the keys into column blocks of ``col_chunk_size`` rows;
  each ``[rows, cols]`` tile of scores gives its exact top-k, which is merged into a running top-k
  per query. Peak memory is one tile (``chunk_size × col_chunk_size`` scores) plus ``O(N·k)``,
  whatever N is.
* ``'torch_cluster'``: :func:`torch_cluster.knn` when the extension is installed. Its CPU path is a
  KD-tree, which wins only for very low dimensions; cosine is done by L2-normalising the rows and
  searching in Euclidean distance (torch-cluster rejects ``cosine=True`` on CPU).

``'auto'`` is the matmul kernel, always: the neighbours of a row must not depend on which backend
measured faster on this machine. torch-cluster's KD-tree keeps an arbitrary one of several tied
candidates at the k-th place (e.g. ``[3, 30, 70]`` where the tie rule gives ``[3, 27, 30]``), and
its distances are rounded differently from the GEMM's, so it runs only when asked for by name.

Mixed precision (``precision='bf16'``, ``'fp16'`` or ``'tf32'``, matmul backend): the tiles are
computed in half precision (``'tf32'``: fp32 tiles with TF32 tensor-core matmuls where the device
has them, plain fp32 elsewhere), each tile keeps ``candidates`` (> k) candidates, and these are
re-scored exactly in the input precision before the final top-k. Only a true neighbour pushed
out of the candidate list by rounding can change the result.

Neighbour order is deterministic: best first, ties broken by the smaller node index.

The tile kernel, :class:`BlockTopK`, is the single implementation behind :func:`nearest_neighbors`
and the row-sharded :func:`dyngraph.distributed.distributed_nearest_neighbors`, where the key
blocks arrive from other ranks through collectives.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .. import typing as _t
from .._progress import progress_counter
from .._validate import (
    check_choice,
    check_device,
    check_features,
    check_flag,
    check_k,
    check_positive_int,
    check_tensor,
    raise_non_finite,
)

METRICS = ("cosine", "euclidean")
BACKENDS = ("auto", "matmul", "torch_cluster")
PRECISIONS = ("full", "bf16", "fp16", "tf32")
_LOW_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: Elements of one block for the callers of :func:`default_chunk_size` (128 MiB in fp32).
DEFAULT_BLOCK_ELEMENTS = 1 << 25
#: Elements of one kNN score tile when ``chunk_size`` is left to dyngraph (32 MiB in fp32). Tiles
#: that fit the last-level cache let ``topk`` read the scores the GEMM just wrote from cache:
#: measured up to 38% faster than 128 MiB tiles at low D, equal at D >= 2048 (one thread).
DEFAULT_TILE_ELEMENTS = 1 << 23
#: Key rows per column block when ``col_chunk_size`` is left to dyngraph. Up to this many keys are
#: searched in one column block (the single-block fast path); more keys are split into even blocks
#: of at most this size.
DEFAULT_COL_BLOCK = 8192
#: Elements of the ``[rows, candidates, D]`` gathers that re-score candidates exactly.
_REFINE_ELEMENTS = 1 << 24
#: Candidate parts a row block of the symmetric self-search collects before merging them into its
#: running top-k (bounds the waiting candidates to ``N · k · _MERGE_PARTS``).
_MERGE_PARTS = 8
COSINE_EPS = 1e-8

KeyIds = Union[int, Tensor]


def default_chunk_size(n_rows: int, n_cols: int, budget: Optional[int] = None) -> int:
    """Rows per block so that one ``[rows, n_cols]`` block holds at most ``budget`` elements
    (default ``DEFAULT_BLOCK_ELEMENTS``)."""
    budget = DEFAULT_BLOCK_ELEMENTS if budget is None else budget
    return max(1, min(n_rows, budget // max(n_cols, 1)))


def even_blocks(n: int, block: int, align: int = 64) -> int:
    """Block length that splits ``n`` into equal blocks of about ``block`` (no thin tail), rounded
    up to a multiple of ``align`` when that is larger (odd GEMM sizes are markedly slower)."""
    if n <= block:
        return max(1, n)
    size = -(-n // -(-n // block))
    if size < 8 * align:  # small blocks: just even
        return size
    cap = block // align * align
    size = -(-n // -(-n // cap))
    return min(-(-size // align) * align, cap)


def default_col_chunk_size(n_keys: int, block: Optional[int] = None) -> int:
    """Keys per column block: all of them up to ``block`` (default ``DEFAULT_COL_BLOCK``), else
    even blocks of at most ``block`` (rounded to a multiple of 64)."""
    return even_blocks(n_keys, DEFAULT_COL_BLOCK if block is None else block)


def self_block(n: int, chunk_size: Optional[int] = None,
               col_chunk_size: Optional[int] = None) -> int:
    """Rows per block of the symmetric self-search of ``n`` points (:meth:`BlockTopK.update_self`):
    square tiles of at most ``chunk_size × col_chunk_size`` scores when either is given, else of
    at most ``DEFAULT_TILE_ELEMENTS`` (2896 rows). ``n`` means one plain tile.

    Measured on 2 CPU threads (k = 3, cosine; time / one full ``x @ xᵀ``): large tiles win, small
    ones lose to per-tile costs, e.g. N = 10,000, D = 512: 0.63× with 2,048–2,896-row blocks
    against 0.93× for the row × column tiles; N = 5,000, D = 64: 0.63× (2,896) against 0.70×,
    but 2.0× with 384-row blocks.
    """
    if chunk_size is not None or col_chunk_size is not None:
        rows = chunk_size or DEFAULT_COL_BLOCK
        cols = col_chunk_size or DEFAULT_COL_BLOCK
        return max(1, min(rows, cols, n))
    cap = math.isqrt(DEFAULT_TILE_ELEMENTS)
    return n if n <= cap else even_blocks(n, cap)


def default_candidates(k: int) -> int:
    """Candidates per tile kept by the half-precision pass before the exact re-scoring."""
    return max(2 * k, k + 8)


def normalize_rows(x: Tensor, name: str = "x", norms: Optional[Tensor] = None) -> Tensor:
    """L2-normalises rows (eps 1e-8, the reference convention); zero rows raise ``ValueError``."""
    norms = x.norm(dim=1, keepdim=True) if norms is None else norms
    zero = norms.squeeze(1) <= COSINE_EPS
    if bool(zero.any()):
        idx = zero.nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} has {int(zero.sum())} zero (or near-zero) rows, e.g. rows {idx}; "
                         f"cosine similarity is undefined for them. Drop them or use "
                         f"metric='euclidean'")
    return x / norms.clamp_min(COSINE_EPS)


def unit_scale(max_norm: float) -> float:
    """The factor that brings the largest row norm to 1 (keeps half-precision Euclidean tiles
    inside fp16's range; rankings are scale-invariant)."""
    return 1.0 / max_norm if max_norm > 0 else 1.0


def sort_rows(vals: Tensor, idx: Tensor, largest: bool) -> Tuple[Tensor, Tensor]:
    """Orders each row by value (best first), ties by ascending index."""
    order = idx.argsort(dim=1, stable=True)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    order = vals.argsort(dim=1, descending=largest, stable=True)
    return vals.gather(1, order), idx.gather(1, order)


def _first_k_at_threshold(vals: Tensor, kth: Tensor, k: int, largest: bool
                          ) -> Tuple[Tensor, Tensor]:
    """Each row's top-k when its k-th best value ``kth`` ``[R]`` is known: every entry better
    than it, then the entries equal to it in column order until there are ``k``; ``([R, k],
    [R, k])`` in column order. One elementwise pass instead of a stable sort of the rows."""
    t = kth.unsqueeze(1)
    better = vals > t if largest else vals < t
    equal = vals == t
    need = k - better.sum(1, keepdim=True, dtype=torch.int32)
    chosen = better | (equal & (equal.cumsum(1, dtype=torch.int32) <= need))
    cols = chosen.nonzero()[:, 1].view(vals.shape[0], k)
    return vals.gather(1, cols), cols


def _select(vals: Tensor, idx: Optional[Tensor], k: int, largest: bool,
            ordered: bool = True) -> Tuple[Tensor, Tensor]:
    """Exact, deterministic top-k of each row of ``vals`` (ties at the k-th place → smaller id),
    where ``idx`` gives each entry's id (``None``: its column), in any order. ``ordered``: best
    first, ties → smaller id; else the same k entries in an unspecified order (one stable sort of
    ``[R, k]`` less, for callers that merge and sort later)."""
    kk = min(k + 1, vals.shape[1])
    v, p = vals.topk(kk, dim=1, largest=largest, sorted=True)
    i = p if idx is None else idx.gather(1, p)
    if kk > k:
        # A tie across the k-th boundary makes topk's choice arbitrary: redo those rows stably.
        tied = v[:, k - 1] == v[:, k]
        v, i = v[:, :k], i[:, :k]
        if bool(tied.any()):
            rows = tied.nonzero().flatten()
            if idx is None:  # ids are the columns: no sort, one pass (many rows tie with copies)
                step = max(1, (1 << 22) // max(vals.shape[1], 1))  # bounded [rows, C] temporaries
                for a in range(0, rows.numel(), step):
                    r = rows[a:a + step]
                    v[r], i[r] = _first_k_at_threshold(vals[r], v[r, k - 1], k, largest)
            else:
                s_v, s_i = sort_rows(vals[rows], idx[rows], largest)
                v[rows], i[rows] = s_v[:, :k], s_i[:, :k]
    return sort_rows(v, i, largest) if ordered else (v, i)


#: Largest number of scores per group in the top-k prefilter of :func:`topk_rows` /
#: :func:`topk_cols`.
GROUP = 8
#: CPU ``torch.topk`` switches to a ~5× slower selection algorithm per element when a row is
#: shorter than about 64·k (measured: 5 ns against 1 ns per score at k = 3–12); the prefilter
#: keeps at least this many groups per k so that its own top-k stays on the fast path.
_GROUPS_PER_K = 64


def _group_size(n: int, k: int) -> int:
    """Scores per group: the most, up to ``GROUP``, that leaves at least ``64·(k+1)`` groups
    (1: no prefilter)."""
    return max(1, min(GROUP, n // (_GROUPS_PER_K * (k + 1))))


def _check_tile(scores, k: int, axis: str) -> None:
    """``scores`` a 2-D floating tensor and ``1 <= k <=`` its length along ``axis``."""
    check_tensor(scores, "scores")
    if scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError(f"scores must be a 2-D floating-point tile, got shape "
                         f"{tuple(scores.shape)} and dtype={scores.dtype}")
    n = scores.shape[1] if axis == "rows" else scores.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] (the tile's "
                         f"{'columns' if axis == 'rows' else 'rows'}), got k={k!r}")


def _group_offsets(g: int, n_grp: int, device: torch.device) -> Tensor:
    return torch.arange(g, device=device) * n_grp


def topk_rows(scores: Tensor, k: int, largest: bool = True,
              sorted: bool = True) -> Tuple[Tensor, Tensor]:
    """Exact top-k of each row of a ``[R, C]`` score tile, ``([R, k], [R, k])``, best first, ties
    → smaller column; the same answer as a full ``topk`` with stable tie-breaking.

    A prefilter makes it cheaper than ``topk`` over every score: the columns are cut into groups
    ``{j, j + C/g, j + 2C/g, …}`` (``g`` ≤ 8: see :func:`_group_size`); one vectorised
    ``amax`` over the ``g`` strided slices gives each
    group's best score, and only the ``k`` groups with the best maxima can hold the top-k (each of
    the k best scores lies in a group whose maximum is at least the k-th best score, and at most k
    groups have such a maximum). Their ``g·k`` scores and the tail columns are the candidates. A row
    whose k-th and (k+1)-th group maxima tie is searched in full.

    Args:
        scores: ``[R, C]`` score tile (contiguous).
        k: Entries to keep per row, ``k <= C``.
        largest: Best = largest (similarities) or smallest (distances).
        sorted: Best first (ties → smaller column). ``False`` returns the same k entries per row
            in an unspecified order, skipping one sort (as ``torch.topk(sorted=False)``).

    Returns:
        ``(values, columns)``, both ``[R, k]``.

    Example:
        >>> import torch
        >>> from dyngraph.graphs._knn import topk_rows
        >>> s = torch.tensor([[0.1, 0.9, 0.5, 0.9], [0.3, 0.2, 0.8, 0.0]])
        >>> v, i = topk_rows(s, 2)
        >>> [[round(a, 2) for a in row] for row in v.tolist()], i.tolist()
        ([[0.9, 0.9], [0.8, 0.3]], [[1, 3], [2, 0]])
    """
    _check_tile(scores, k, "rows")
    check_flag(sorted, "sorted")
    scores = scores.contiguous()
    r, c = scores.shape
    g = _group_size(c, k)
    if g == 1 or r == 0:
        return _select(scores, None, k, largest, sorted)
    n_grp = c // g
    main = n_grp * g
    # [R, g, n_grp] view, reduced over g: an element-wise max of g strided slices of each row
    # (g need not be a power of two: at C = 1,952 and k = 3, g = 7 keeps 278 groups where g = 4
    # would keep 488 and double the cost of the group top-k).
    slices = scores[:, :main].unflatten(1, (g, n_grp))
    best = slices.amax(1) if largest else slices.amin(1)  # [R, n_grp]
    g_v, g_i = best.topk(k + 1, dim=1, largest=largest, sorted=True)
    cols = (g_i[:, :k].unsqueeze(-1) + _group_offsets(g, n_grp, scores.device)).reshape(r, -1)
    if main < c:
        cols = torch.cat([cols, torch.arange(main, c, device=scores.device).expand(r, -1)], 1)
    v, i = _select(scores.gather(1, cols), cols, k, largest, sorted)
    unsafe = g_v[:, k - 1] == g_v[:, k]
    if bool(unsafe.any()):
        rows = unsafe.nonzero().flatten()
        v[rows], i[rows] = _select(scores[rows], None, k, largest, sorted)
    return v, i


def topk_cols(scores: Tensor, k: int, largest: bool = True,
              sorted: bool = True) -> Tuple[Tensor, Tensor]:
    """Exact top-k of each *column* of a ``[R, C]`` score tile, ``([C, k], [C, k])`` (row ids),
    best first, ties → smaller row: :func:`topk_rows` of ``scores.T`` without transposing the tile
    (the group maxima reduce over strided row slabs, which is contiguous and vectorised).

    Args:
        scores: ``[R, C]`` score tile (contiguous).
        k: Entries to keep per column, ``k <= R``.
        largest: Best = largest or smallest.
        sorted: Best first (ties → smaller row), or the same entries in an unspecified order.

    Returns:
        ``(values, rows)``, both ``[C, k]``.

    Example:
        >>> import torch
        >>> from dyngraph.graphs._knn import topk_cols
        >>> s = torch.tensor([[0.1, 0.9], [0.7, 0.2], [0.7, 0.4]])
        >>> topk_cols(s, 2)[1].tolist()   # the tie at 0.7 goes to the smaller row
        [[1, 2], [0, 2]]
    """
    _check_tile(scores, k, "cols")
    check_flag(sorted, "sorted")
    scores = scores.contiguous()
    r, c = scores.shape
    g = _group_size(r, k)
    if g == 1 or c == 0:
        return _select(scores.T.contiguous(), None, k, largest, sorted)
    n_grp = r // g
    main = n_grp * g
    slabs = scores[:main].view(g, n_grp, c)
    best = slabs.amax(0) if largest else slabs.amin(0)  # [n_grp, C]
    # top-k down the columns directly: measured 1.7× faster than transposing best first
    g_v, g_i = (t.T for t in best.topk(k + 1, dim=0, largest=largest, sorted=True))
    rows = (g_i[:, :k].unsqueeze(-1) + _group_offsets(g, n_grp, scores.device)).reshape(c, -1)
    col_ids = torch.arange(c, device=scores.device).unsqueeze(1)
    cand = scores.view(-1).index_select(0, (rows * c + col_ids).view(-1)).view(c, -1)
    if main < r:
        rows = torch.cat([rows, torch.arange(main, r, device=scores.device).expand(c, -1)], 1)
        cand = torch.cat([cand, scores[main:].T], 1)
    v, i = _select(cand, rows, k, largest, sorted)
    unsafe = g_v[:, k - 1] == g_v[:, k]
    if bool(unsafe.any()):
        cols = unsafe.nonzero().flatten()
        v[cols], i[cols] = _select(scores[:, cols].T.contiguous(), None, k, largest, sorted)
    return v, i


def _exact_scores(q: Tensor, keys: Tensor, local_idx: Tensor, metric: str) -> Tensor:
    """Scores of query rows against their candidate keys, computed directly (no GEMM rounding
    or ``|a|²+|b|²−2ab`` cancellation): cosine dot products or squared distances ``[R, C]``."""
    n_cand, dim = local_idx.shape[1], keys.shape[1]
    step = max(1, _REFINE_ELEMENTS // max(n_cand * dim, 1))
    out = torch.empty(local_idx.shape, dtype=q.dtype, device=q.device)
    for s in range(0, q.shape[0], step):
        g = keys[local_idx[s:s + step]]  # [r, C, D]
        qq = q[s:s + step].unsqueeze(1)
        out[s:s + step] = (qq * g).sum(-1) if metric == "cosine" else (qq - g).pow(2).sum(-1)
    return out


def exact_sqrt(t: Tensor) -> Tensor:
    """Square roots rounded correctly (IEEE), as distances must be: torch's vectorised CPU kernel
    is 1 ulp off for about one float32 value in six on some CPUs (seen with AVX-512, torch 2.14);
    NumPy's ``sqrt`` is the hardware's exact one. Other devices use ``torch.sqrt``."""
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) or t.requires_grad:
        return t.sqrt()
    return torch.from_numpy(np.sqrt(t.contiguous().numpy()))


def row_bits(x: Tensor) -> Tensor:
    """``x`` viewed as integers of its element size: equal rows are bitwise copies."""
    return x.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32,
                                8: torch.int64}[x.element_size()])


def smallest_copy_ids(rows: Tensor, ids: Tensor) -> Tensor:
    """``[R]``: for each of ``rows`` ``[R, D]`` (ids ``ids`` ``[R]``), the smallest id among the
    rows that are its bitwise copies (itself included)."""
    _, cls = torch.unique(row_bits(rows), dim=0, return_inverse=True)
    first = torch.full((int(cls.max()) + 1,), torch.iinfo(torch.long).max, dtype=torch.long,
                       device=ids.device)
    return first.scatter_reduce(0, cls.to(ids.device), ids, "amin")[cls.to(ids.device)]


def row_hashes(x: Tensor) -> Tensor:
    """``[N]`` int64 hash of the bits of each row in (at most) 64 scattered columns: bitwise
    copies always share it; rows that differ only outside those columns share it too."""
    n, d = x.shape
    dev = x.device
    if d == 0:
        return torch.zeros(n, dtype=torch.int64, device=dev)
    cols = torch.unique((torch.arange(min(d, 64), dtype=torch.int64) * 2654435761) % d)
    sub = x.index_select(1, cols.to(dev)) if cols.numel() < d else x
    words = row_bits(sub).to(torch.int64)
    gen = torch.Generator().manual_seed(0)
    mult = torch.randint(1, 2**62, (words.shape[1],), generator=gen)
    return (words * mult.to(dev)).sum(1)  # (never in place: words may alias x's memory)


def copy_groups(x: Tensor) -> Optional[Tensor]:
    """Bitwise-identical rows of ``x`` ``[N, D]``: ``[N]`` the smallest index among each row's
    copies (the row's own index when it has none), or ``None`` when no row has a copy.

    Cost: :func:`row_hashes` and a sort of ``N`` hashes; only rows whose hashes collide are
    compared, whole, in bounded chunks.

    Example:
        >>> import torch
        >>> from dyngraph.graphs._knn import copy_groups
        >>> copy_groups(torch.tensor([[1., 2.], [0., 1.], [1., 2.], [0., 1.], [5., 5.]])).tolist()
        [0, 1, 0, 1, 4]
    """
    n, d = x.shape
    if n < 2 or d == 0:
        return None
    dev = x.device
    _, key, counts = torch.unique(row_hashes(x), return_inverse=True, return_counts=True)
    todo = (counts[key] > 1).nonzero().flatten()
    if todo.numel() == 0:
        return None
    # each candidate against the first unresolved row of its hash group, whole rows compared in
    # bounded chunks; rows that differ try again among themselves
    group = torch.arange(n, device=dev)
    for _ in range(8):
        first = torch.full((counts.numel(),), n, dtype=torch.long, device=dev)
        rep = first.scatter_reduce(0, key[todo], todo, "amin")[key[todo]]
        same = torch.cat([(x[todo[a:a + 64]] == x[rep[a:a + 64]]).all(1)
                          for a in range(0, todo.numel(), 64)])
        group[todo[same]] = rep[same]
        todo = todo[~same]
        if todo.numel() == 0:
            break
    else:  # many different rows behind one hash: sort the rest out exactly
        group[todo] = smallest_copy_ids(x[todo], todo)
    if bool((group == torch.arange(n, device=dev)).all()):
        return None
    return group


def merge_copies(group: Tensor, a: Tensor, a0: int, b: Optional[Tensor] = None,
                 b0: int = 0) -> None:
    """Lowers ``group`` (``[N]`` global ids, in place) to the smallest id among the bitwise
    copies found between rows ``a`` (ids ``a0, a0+1, ...``) and rows ``b`` (ids ``b0, ...``;
    ``None``: among ``a`` itself). Over every pair of blocks of a matrix, starting from
    ``arange(N)``, this gives :func:`copy_groups`'s labels without holding the matrix: the
    out-of-core search calls it on the two blocks of each tile."""
    ha = row_hashes(a)
    if b is None:
        _, inv, cnt = torch.unique(ha, return_inverse=True, return_counts=True)
        pick = (cnt[inv] > 1).nonzero().flatten()
        rows, ids = a[pick], pick + a0
    else:
        hb = row_hashes(b)
        pa, pb = torch.isin(ha, hb).nonzero().flatten(), torch.isin(hb, ha).nonzero().flatten()
        rows, ids = torch.cat([a[pa], b[pb]]), torch.cat([pa + a0, pb + b0])
    if ids.numel() > 0:
        group[ids] = smallest_copy_ids(rows, group[ids])


def canonical_copies(vals: Tensor, idx: Tensor, group: Tensor, query_ids: Tensor,
                     largest: bool, rows_per_pass: int = 8192) -> Tuple[Tensor, Tensor]:
    """Neighbour lists in which copies of one row are the smallest ids of their copy group.

    Bitwise copies of a key score the same in exact arithmetic, so by the tie rule a query takes
    the smallest ids of each copy group it reaches (never itself). A tile's rounding can score
    one copy a last bit above another, and which copy that is depends on the tiling (and, in a
    distributed search, on the ranks). So the ``m`` neighbours of a row that come from one copy
    group become that group's ``m`` smallest members other than the query, all with the best of
    their values, and the row is ordered again (value, then id).

    Args:
        vals, idx: ``[n, k]`` neighbour values and global ids, best first.
        group: ``[N]`` the copy group of every global row, labelled in ``0..N-1`` (equal labels:
            bitwise copies; see :func:`copy_groups`).
        query_ids: ``[n]`` global ids of the query rows.
        largest: Whether larger values are better (cosine).
        rows_per_pass: Query rows per pass (bounds the ``[rows, k, k]`` comparison).

    Returns:
        ``(vals, idx)`` ``[n, k]``; unchanged rows are the same tensors' rows.

    Example:
        >>> import torch
        >>> from dyngraph.graphs._knn import canonical_copies
        >>> group = torch.tensor([0, 1, 1, 1])  # rows 1, 2 and 3 are copies
        >>> v, i = canonical_copies(torch.tensor([[0.5, 0.4]]), torch.tensor([[3, 1]]), group,
        ...                         torch.tensor([0]), largest=True)
        >>> i.tolist(), v.tolist()
        ([[1, 2]], [[0.5, 0.5]])
    """
    n_all = group.numel()
    size = torch.bincount(group, minlength=n_all)
    multi = size[group[idx]] > 1
    rows = multi.any(1).nonzero().flatten()
    if rows.numel() == 0:
        return vals, idx
    order = torch.argsort(group, stable=True)  # the members of each group, ascending
    start = torch.cumsum(size, 0) - size
    pos = torch.empty_like(order)
    pos[order] = torch.arange(n_all, device=group.device) - start[group[order]]
    k = idx.shape[1]
    before = torch.ones(k, k, dtype=torch.bool, device=idx.device).tril(-1)  # [slot, earlier]
    worst = -math.inf if largest else math.inf
    vals, idx = vals.clone(), idx.clone()
    for a in range(0, rows.numel(), rows_per_pass):
        r = rows[a:a + rows_per_pass]
        v, i, m = vals[r], idx[r], multi[r]
        g = group[i]
        same = (g.unsqueeze(2) == g.unsqueeze(1)) & m.unsqueeze(2) & m.unsqueeze(1)
        rank = (same & before).sum(2)  # earlier slots of the same group
        pick = torch.where(same, v.unsqueeze(1), torch.full_like(v, worst).unsqueeze(1))
        best = pick.amax(2) if largest else pick.amin(2)
        q = query_ids[r]
        own = (g == group[q].unsqueeze(1)) & (pos[q].unsqueeze(1) <= rank)  # skip the query
        new = order[start[g] + rank + own.long()]
        vals[r], idx[r] = sort_rows(torch.where(m, best, v), torch.where(m, new, i), largest)
    return vals, idx


class BlockTopK:
    """Running exact top-k of a set of query rows against key blocks streamed in any order.

    This is the tile kernel of the matmul backend: :func:`nearest_neighbors` streams the column
    blocks of ``x`` itself, :func:`dyngraph.distributed.distributed_nearest_neighbors` streams
    blocks received from other ranks.
    Both therefore give the same neighbours and the same values.

    Each :meth:`update` cuts the queries into row blocks of ``chunk_size`` rows, computes the
    ``[rows, keys]`` score tile (cosine similarities or squared Euclidean distances), takes its
    exact top-k (ties → smaller id), re-scores the candidates exactly where needed (Euclidean, half
    precision), and merges them into the running top-k. Memory: one tile plus ``O(N_q · k)``.

    Args:
        query: ``[Nq, D]`` query rows, already prepared (L2-normalised for cosine, finite).
        k: Neighbours to keep.
        metric: ``'cosine'`` (rows must already be normalised) or ``'euclidean'``.
        query_ids: Global id of the first query row (contiguous ids) or ``[Nq]`` ascending ids.
        exclude_self: Skip a key whose global id equals the query's.
        precision: ``'full'`` or ``'bf16'``/``'fp16'`` tiles with exact re-scoring.
        candidates: Candidates per tile kept by the half-precision pass (default
            :func:`default_candidates`).
        chunk_size: Query rows per tile (default: as many as fit ``DEFAULT_TILE_ELEMENTS`` scores
            against the key block at hand).
        scale: Factor applied to both sides before the half-precision Euclidean pass (keeps
            ``q·k`` inside fp16's range; ranking is scale-invariant). ``None``: ``1/max‖query‖``.
        refine: Re-score each tile's candidates exactly before merging (default: for Euclidean
            and half precision). ``False`` ranks by the tile scores alone, for callers that
            certify the candidates themselves (:func:`dyngraph.measures.neighbor_distances`).
    """

    def __init__(self, query: Tensor, k: int, metric: str = "cosine", *, query_ids: KeyIds = 0,
                 exclude_self: bool = True, precision: str = "full",
                 candidates: Optional[int] = None, chunk_size: Optional[int] = None,
                 scale: Optional[float] = None, refine: Optional[bool] = None):
        check_choice(metric, "metric", METRICS)
        check_choice(precision, "precision", PRECISIONS)
        self.q, self.k, self.metric = query, int(k), metric
        self.cosine = metric == "cosine"
        self.largest = self.cosine
        self.worst = -math.inf if self.cosine else math.inf
        self.exclude_self = exclude_self
        self.query_ids = query_ids
        self.chunk_size = chunk_size
        self.low = _LOW_DTYPES.get(precision)
        self.tf32 = precision == "tf32"
        approx = self.low is not None or self.tf32
        self.refine = (approx or not self.cosine) if refine is None else refine
        # cosine among the queries themselves: rows that are bitwise copies of each other (see
        # _find_twins) get one canonical score, whatever tile computes it
        self._twins: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        if approx and self.refine:
            self.n_cand = candidates if candidates is not None else default_candidates(self.k)
        else:
            self.n_cand = self.k + (1 if self.refine and not self.cosine else 0)
        self.scale = 1.0
        if self.low is not None and not self.cosine:
            if scale is None:
                scale = unit_scale(float(query.norm(dim=1).max()) if query.shape[0] else 1.0)
            self.scale = float(scale)
        self.q_low, self.sq_q = self._side(query)
        n = query.shape[0]
        self.vals = torch.full((n, self.k), self.worst, dtype=query.dtype, device=query.device)
        self.idx = torch.full((n, self.k), -1, dtype=torch.long, device=query.device)
        self.n_updates = 0

    # ------------------------------------------------------------------ helpers
    def _qids(self, start: int, stop: int) -> Tensor:
        if isinstance(self.query_ids, Tensor):
            return self.query_ids[start:stop]
        off = int(self.query_ids)
        return torch.arange(off + start, off + stop, device=self.q.device)

    def _mask_self(self, s: Tensor, start: int, key_ids: KeyIds, n_keys: int) -> None:
        """Sets the score of each query against itself (when in this key block) to the worst."""
        r = s.shape[0]
        if not isinstance(self.query_ids, Tensor) and not isinstance(key_ids, Tensor):
            shift = int(self.query_ids) + start - int(key_ids)  # column of row j is j + shift
            lo, hi = max(0, -shift), min(r, n_keys - shift)
            if lo < hi:
                rows = torch.arange(lo, hi, device=s.device)
                s[rows, rows + shift] = self.worst
            return
        kid = key_ids if isinstance(key_ids, Tensor) else \
            torch.arange(int(key_ids), int(key_ids) + n_keys, device=s.device)
        qid = self._qids(start, start + r)
        pos = torch.searchsorted(kid, qid).clamp_max_(n_keys - 1)
        hit = kid[pos] == qid
        rows = torch.arange(r, device=s.device)
        s[rows, pos] = torch.where(hit, torch.full_like(s[rows, pos], self.worst), s[rows, pos])

    def _find_twins(self) -> None:
        """Groups bitwise-identical query rows (cosine only), for :meth:`_tie_twins`.

        A GEMM's rounding depends on the tile's shape, so two exact copies of a row can score
        1.0 against it in one tile and 1 − 2⁻⁵³ in another, and which copy wins the tie would
        depend on ``chunk_size``. With twins present, every score between two copies is set to
        one value per group (the row's own ``q·q``, summed in one fixed order), so copies tie
        exactly and the smaller index wins in every tiling (groups: :func:`copy_groups`)."""
        q = self.q
        if not self.cosine:
            return
        group = copy_groups(q)
        if group is None:
            return
        n = q.shape[0]
        has = torch.zeros(n, dtype=torch.long, device=q.device).index_add_(
            0, group, torch.ones(n, dtype=torch.long, device=q.device))[group] > 1
        self._twins = (group, (q * q).sum(1), has.nonzero().flatten())

    def query_copies(self) -> Optional[Tensor]:
        """:func:`copy_groups` of the queries (``None``: no copies); under cosine the groups
        :meth:`search_self` already found."""
        if self.cosine:
            return None if self._twins is None else self._twins[0]
        return copy_groups(self.q)

    def _tie_twins(self, s: Tensor, q0: int, q1: int, k0: int, k1: int) -> None:
        """Tile ``s`` = queries ``q0:q1`` × queries ``k0:k1``: scores between copies of one row
        set to that row's canonical score (see :meth:`_find_twins`)."""
        if self._twins is None:
            return
        group, own, rows = self._twins
        r = rows[(rows >= q0) & (rows < q1)]  # only rows with copies (usually few) are touched
        c = rows[(rows >= k0) & (rows < k1)]
        if r.numel() == 0 or c.numel() == 0:
            return
        twin = group[r].unsqueeze(1) == group[c].unsqueeze(0)
        sub = s[(r - q0).unsqueeze(1), (c - k0).unsqueeze(0)]
        s[(r - q0).unsqueeze(1), (c - k0).unsqueeze(0)] = torch.where(
            twin, own[r].unsqueeze(1).to(s.dtype), sub)

    # ------------------------------------------------------------------ the tile loops
    def _side(self, rows: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """The half-precision copy and the squared norms of prepared rows (each ``None`` when
        the mode does not use it)."""
        r_s = rows * self.scale if self.scale != 1.0 else rows
        low = r_s.to(self.low) if self.low is not None else None
        sq = None if self.cosine else (r_s * r_s).sum(1)
        return low, sq

    def _query(self, rows: slice) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """Query rows ``rows`` with their half-precision copy and squared norms (see _side)."""
        return (self.q[rows], None if self.q_low is None else self.q_low[rows],
                None if self.sq_q is None else self.sq_q[rows])

    def _row_chunk(self, n_queries: int, n_keys: int) -> int:
        """Query rows per tile against ``n_keys`` keys: ``chunk_size`` (default: as many as fit
        ``DEFAULT_TILE_ELEMENTS`` scores), evened out so that no thin tail tile is left."""
        return even_blocks(n_queries, self.chunk_size or
                            default_chunk_size(n_queries, n_keys, DEFAULT_TILE_ELEMENTS))

    def _scores(self, q: Tensor, q_low: Optional[Tensor], sq_q: Optional[Tensor], keys: Tensor,
                k_low: Optional[Tensor], sq_k: Optional[Tensor]) -> Tensor:
        """A fresh ``[rows, keys]`` tile: cosine similarities or squared distances
        (``|q|² + |k|² − 2q·k``, clamped at 0 against cancellation)."""
        # The half-precision copies exist exactly in the half-precision modes (see _side), the
        # squared norms exactly under the Euclidean metric.
        if q_low is not None and k_low is not None:
            s = q_low @ k_low.T
            if not self.cosine:
                s = s.to(q.dtype)
        elif self.tf32:
            with _tf32_matmuls():
                s = q @ keys.T
        else:
            s = q @ keys.T
        if sq_q is not None and sq_k is not None:
            s.mul_(-2).add_(sq_q.unsqueeze(1)).add_(sq_k.unsqueeze(0)).clamp_min_(0)
        return s

    def _candidates(self, v: Tensor, i: Tensor, start: int, stop: int, keys: Tensor,
                    key_ids: KeyIds, q: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """One tile's candidates ``(v, i)`` ``[rows, ≥k]`` (``i``: local key positions) → at most
        ``k`` of them as ``(values, global ids)``, in any order; re-scored exactly first when
        ``refine`` (``q``: the query rows ``start:stop``)."""
        gid = i + int(key_ids) if not isinstance(key_ids, Tensor) else key_ids[i]
        if not self.refine:
            return v.to(self.vals.dtype), gid
        v = _exact_scores(self.q[start:stop] if q is None else q, keys, i, self.metric)
        if self.exclude_self:
            v = torch.where(gid == self._qids(start, stop).unsqueeze(1),
                            torch.full_like(v, self.worst), v)
        if v.shape[1] <= self.k:
            return v, gid
        return _select(v, gid, self.k, self.largest, ordered=False)

    def _merge(self, start: int, stop: int, parts: List[Tuple[Tensor, Tensor]],
               fresh: bool) -> None:
        """Merges candidate ``parts`` (``(values, global ids)`` pairs, any order) into the running
        top-k of query rows ``start:stop``. ``fresh``: those rows hold nothing yet."""
        width = sum(p[0].shape[1] for p in parts)
        if not fresh or width < self.k:  # (the running worst/-1 entries pad a short first part)
            parts = [(self.vals[start:stop], self.idx[start:stop]), *parts]
        v = torch.cat([p[0] for p in parts], 1) if len(parts) > 1 else parts[0][0]
        i = torch.cat([p[1] for p in parts], 1) if len(parts) > 1 else parts[0][1]
        v, i = _select(v, i, self.k, self.largest) if v.shape[1] > self.k else \
            sort_rows(v, i, self.largest)
        self.vals[start:stop], self.idx[start:stop] = v, i

    def update(self, keys: Tensor, key_ids: KeyIds = 0) -> "BlockTopK":
        """Merges the neighbours found among one block of keys.

        Args:
            keys: ``[Nk, D]`` key rows, prepared like the queries (same device and dtype).
            key_ids: Global id of the first key (contiguous) or ``[Nk]`` ascending ids.

        Returns:
            ``self``.
        """
        n_keys = keys.shape[0]
        if n_keys == 0:
            return self
        nq = self.q.shape[0]
        chunk = self._row_chunk(nq, n_keys)
        k_low, sq_k = self._side(keys)
        first = self.n_updates == 0
        kk = min(self.n_cand, n_keys)
        for start in range(0, nq, chunk):
            stop = min(nq, start + chunk)
            s = self._scores(*self._query(slice(start, stop)), keys, k_low, sq_k)
            if keys is self.q and not isinstance(key_ids, Tensor) and int(key_ids) == 0:
                self._tie_twins(s, start, stop, 0, n_keys)
            if self.exclude_self:
                self._mask_self(s, start, key_ids, n_keys)
            v, i = topk_rows(s, kk, self.largest, sorted=False)
            del s
            self._merge(start, stop, [self._candidates(v, i, start, stop, keys, key_ids)], first)
        self.n_updates += 1
        return self

    def update_self(self, block: int, rows: Optional[Callable[[int, int], Tensor]] = None,
                    progress: bool = False, groups: Optional[Tensor] = None) -> "BlockTopK":
        """Searches the queries among themselves (keys = queries, ids ``0..N−1``; needs
        ``query_ids=0`` and ``exclude_self``), computing each score once.

        The rows are cut into blocks of ``block``; only the tiles ``(i, j ≥ i)`` of the symmetric
        score matrix are computed, about half of the GEMM. Tile ``(i, j)`` gives the row block
        ``i`` its candidates among keys ``j`` (:func:`topk_rows`) and the row block ``j`` its
        candidates among keys ``i`` (:func:`topk_cols`, no transposed copy). A block's candidates
        wait until its last tile and are merged in one selection. Memory: one ``block × block``
        tile plus ``O(N·k)`` (at most ``_MERGE_PARTS`` waiting candidate sets per block).

        Args:
            block: Rows per block (``>= 1``).
            rows: Out-of-core mode: ``rows(a, b)`` returns the prepared rows ``a:b`` (e.g. read
                from a memory map and normalised), so only two blocks of rows are in memory at
                a time; the accumulator then only needs ``query`` for its shape, dtype and
                device (a ``[N, 0]`` tensor will do). Block ``i`` is fetched once per ``j >= i``.
            progress: Show a progress bar over the tiles (when there is more than one).
            groups: Out-of-core mode: an ``[N]`` ``arange`` lowered in place to each row's copy
                group (:func:`merge_copies` on the two blocks of every tile), for
                :func:`canonical_copies`.

        Returns:
            ``self``.

        Example:
            >>> import torch
            >>> from dyngraph.graphs._knn import BlockTopK, prepare_features
            >>> x = prepare_features(torch.tensor([[0.], [1.], [3.], [7.], [8.]]), "euclidean")
            >>> BlockTopK(x, 1, "euclidean").update_self(2).result()[1].flatten().tolist()
            [1, 0, 1, 4, 3]
        """
        if isinstance(self.query_ids, Tensor) or int(self.query_ids) != 0 or not self.exclude_self:
            raise ValueError("update_self needs query_ids=0 and exclude_self=True")
        check_positive_int(block, "block")
        check_flag(progress, "progress")
        if rows is not None and not callable(rows):
            raise TypeError(f"rows must be a callable rows(start, stop) -> Tensor, got "
                            f"{type(rows).__name__}")
        n = self.vals.shape[0]
        block = even_blocks(n, block)
        # Each block's candidates wait in ``pending`` and are merged once its last tile is done
        # (or every _MERGE_PARTS tiles): one selection over [rows, k·tiles] instead of a sort
        # per tile.
        pending: Dict[int, List[Tuple[Tensor, Tensor]]] = {}
        merged = set()

        def merge(a: int, b: int) -> None:
            self._merge(a, b, pending.pop(a), self.n_updates == 0 and a not in merged)
            merged.add(a)

        def stash(a: int, b: int, part: Tuple[Tensor, Tensor]) -> None:
            pending.setdefault(a, []).append(part)
            if len(pending[a]) >= _MERGE_PARTS:
                merge(a, b)

        def side(a: int, b: int) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
            if rows is None:
                return self._query(slice(a, b))
            r = rows(a, b)
            return (r, *self._side(r))

        n_blocks = -(-n // block)
        bar = progress_counter(n_blocks * (n_blocks + 1) // 2, "kNN tiles",
                               disable=not progress or n_blocks < 2)
        for i0 in range(0, n, block):
            i1 = min(n, i0 + block)
            qi = side(i0, i1)
            for j0 in range(i0, n, block):
                j1 = min(n, j0 + block)
                kj = qi if j0 == i0 else side(j0, j1)
                s = self._scores(*qi, *kj)
                if rows is None:
                    self._tie_twins(s, i0, i1, j0, j1)
                elif groups is not None:
                    merge_copies(groups, qi[0], i0, None if j0 == i0 else kj[0], j0)
                if i0 == j0:
                    self._mask_self(s, i0, i0, j1 - j0)
                v, i = topk_rows(s, min(self.n_cand, j1 - j0), self.largest, sorted=False)
                stash(i0, i1, self._candidates(v, i, i0, i1, kj[0], j0, q=qi[0]))
                if j0 != i0:
                    v, i = topk_cols(s, min(self.n_cand, i1 - i0), self.largest, sorted=False)
                    stash(j0, j1, self._candidates(v, i, j0, j1, qi[0], i0, q=kj[0]))
                del s
                bar.update(1)
            if i0 in pending:  # block i0 has seen every key block
                merge(i0, i1)
        bar.close()
        self.n_updates += 1
        return self

    def search_self(self, chunk_size: Optional[int] = None,
                    col_chunk_size: Optional[int] = None, progress: bool = False) -> "BlockTopK":
        """The queries among themselves: :meth:`update_self` over :func:`self_block` blocks, or
        one plain :meth:`update` when the points fit one tile.

        Args:
            chunk_size, col_chunk_size: Tile bounds, as in :func:`nearest_neighbors`.
            progress: Show a progress bar over the tiles.

        Returns:
            ``self``.
        """
        n = self.q.shape[0]
        self._find_twins()
        block = self_block(n, chunk_size, col_chunk_size)
        return self.update_self(block, progress=progress) if block < n else self.update(self.q, 0)

    def result(self) -> Tuple[Tensor, Tensor]:
        """``(values, index)`` ``[Nq, k]``, best first: cosine similarities or Euclidean distances
        (not squared), and the neighbours' global ids. Raises if fewer than ``k`` keys were seen."""
        if bool(torch.isinf(self.vals).any()):
            raise ValueError(f"BlockTopK saw fewer than k={self.k} keys (other than the query "
                             f"itself) for some queries; stream every key block before result()")
        vals = self.vals if self.cosine else exact_sqrt(self.vals.clamp_min(0))
        return vals, self.idx


def _matmul_knn(x: Tensor, k: int, metric: str, chunk_size: Optional[int],
                col_chunk_size: Optional[int] = None, precision: str = "full",
                candidates: Optional[int] = None, progress: bool = False
                ) -> Tuple[Tensor, Tensor]:
    """Tiled exact kNN of the rows of ``x`` among themselves (:meth:`BlockTopK.search_self`)."""
    n = x.shape[0]
    chunk = chunk_size or default_chunk_size(n, default_col_chunk_size(n, col_chunk_size),
                                             DEFAULT_TILE_ELEMENTS)
    acc = BlockTopK(x, k, metric, precision=precision, candidates=candidates, chunk_size=chunk)
    vals, idx = acc.search_self(chunk_size, col_chunk_size, progress).result()
    # copies of a key tie exactly: the smallest ids, whatever tile scored them
    group = acc.query_copies()
    if group is None:
        return vals, idx
    return canonical_copies(vals, idx, group, torch.arange(n, device=x.device), acc.largest)


def _cluster_knn(x: Tensor, k: int, metric: str) -> Tuple[Tensor, Tensor]:
    """Exact kNN through torch-cluster; returns the same layout as the matmul backend."""
    if not _t.WITH_TORCH_CLUSTER:
        raise ValueError("backend='torch_cluster' needs the torch-cluster extension, which is not "
                         "installed; use backend='matmul' or 'auto'")
    n = x.shape[0]
    xf = x.float() if x.dtype not in (torch.float32, torch.float64) else x
    # k + 1 because the query itself comes back as its own nearest neighbour.
    assign = _t.torch_cluster.knn(xf, xf, k + 1)
    q, nb = assign[0], assign[1]
    keep = q != nb
    q, nb = q[keep], nb[keep]
    val = (xf[q] * xf[nb]).sum(1) if metric == "cosine" else (xf[q] - xf[nb]).pow(2).sum(1)
    # Group by query, best first, ties by index (stable sorts by index, score, then query).
    for key in (1, 2, 0):
        order = torch.argsort((q, nb, -val if metric == "cosine" else val)[key], stable=True)
        q, nb, val = q[order], nb[order], val[order]
    counts = torch.bincount(q, minlength=n)
    if bool((counts < k).any()):  # duplicates of the query displaced it: fall back to exact matmul
        return _matmul_knn(x, k, metric, None)
    start = torch.cumsum(counts, 0) - counts
    pos = start.unsqueeze(1) + torch.arange(k, device=x.device)
    vals, idx = val[pos], nb[pos]
    if metric == "euclidean":
        vals = exact_sqrt(vals)
    return vals.to(x.dtype), idx


@contextlib.contextmanager
def _tf32_matmuls() -> Iterator[None]:
    """fp32 matmuls may use TF32 tensor cores inside the block (restored after)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def check_knn_options(k: int, n: int, metric: str, backend: str, chunk_size: Optional[int],
                      col_chunk_size: Optional[int] = None, precision: str = "full",
                      candidates: Optional[int] = None) -> None:
    """Validates the options shared by :func:`nearest_neighbors` and the distributed kNN."""
    check_k(k, n)
    check_choice(metric, "metric", METRICS)
    check_choice(backend, "backend", BACKENDS)
    check_choice(precision, "precision", PRECISIONS)
    for name, value in (("chunk_size", chunk_size), ("col_chunk_size", col_chunk_size),
                        ("candidates", candidates)):
        if value is not None:
            check_positive_int(value, name)
    if candidates is not None and candidates < k:
        raise ValueError(f"candidates must be >= k={k}, got candidates={candidates}")
    if precision != "full" and backend == "torch_cluster":
        raise ValueError(f"precision={precision!r} needs the matmul backend; got "
                         f"backend='torch_cluster' (use backend='matmul' or 'auto')")


def prepare_features(x: Tensor, metric: str, name: str = "x") -> Tensor:
    """Casts to the compute dtype, checks finiteness (O(N), via the row norms) and L2-normalises
    the rows for cosine. Works on a shard of the rows as well as on all of them."""
    if x.dtype in (torch.float16, torch.bfloat16) and x.device.type == "cpu":
        x = x.float()
    # NaN/inf in a row make its norm NaN/inf: an O(N) check instead of a pass over N×D values.
    norms = x.norm(dim=1, keepdim=True)
    if not bool(torch.isfinite(norms).all()):
        raise_non_finite(x, name)
    if metric == "cosine":
        x = normalize_rows(x, name, norms=norms)
    return x


def _centred_if_far(x: Tensor) -> Tensor:
    """``x`` shifted towards the origin when its rows sit far from it relative to their spread
    (``|μ|² > Σ var``): the tiles rank by ``|q|² + |k|² − 2q·k``, whose rounding error grows with
    ``|x|²`` and would swamp the distances (points at 1000 ± 0.01 in float32). Distances do not
    change under a shift. The shift of each column is its mean rounded to a power of two no finer
    than the column's spread, so the subtraction is exact where it matters (Sterbenz) and exact
    ties stay exact ties (an integer grid stays an integer grid). Most features keep ``x`` itself,
    without a copy."""
    if x.shape[0] < 2:
        return x
    n = x.shape[0]
    rows = max(1, (1 << 22) // max(1, x.shape[1]))  # float64 blocks of at most 32 MiB
    mu = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for s in range(0, n, rows):
        mu += x[s:s + rows].double().sum(0)
    mu /= n
    var = torch.zeros_like(mu)
    for s in range(0, n, rows):
        var += (x[s:s + rows].double() - mu).pow(2).sum(0)
    var /= n
    if float(mu.dot(mu)) <= float(var.sum()):
        return x
    sd = var.sqrt()
    # the grid of each column's shift: 2^floor(log2 sd) (a zero-spread column: its own value)
    step = torch.where(sd > 0, torch.exp2(torch.floor(torch.log2(sd.clamp_min(1e-300)))),
                       torch.ones_like(sd))
    shift = torch.where(sd > 0, torch.round(mu / step) * step, x[0].double())
    return x - shift.to(x.dtype)


def is_row_source(x) -> bool:
    """Whether ``x`` is searched out of core by :func:`nearest_neighbors`: a NumPy array (a
    ``np.memmap`` included) or a :class:`dyngraph.capture.SpilledArray`, rather than a tensor."""
    return not isinstance(x, Tensor) and (isinstance(x, np.ndarray) or hasattr(x, "read_rows"))


def row_source_info(x, name: str = "x") -> Tuple[int, int, np.dtype]:
    """``(N, D, dtype)`` of a row source, checked: ``[N, D]``, floating point."""
    if not is_row_source(x):
        raise TypeError(f"{name} must be a Tensor, a NumPy array or a SpilledArray, got "
                        f"{type(x).__name__}")
    shape, dtype = tuple(x.shape), np.dtype(x.np_dtype if hasattr(x, "read_rows") else x.dtype)
    if len(shape) != 2:
        raise ValueError(f"{name} must be [N, D] when read out of core, got shape {shape}")
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"{name} must hold floating-point features, got dtype={dtype}")
    return int(shape[0]), int(shape[1]), dtype


def _stream_knn(source, k: int, metric: str, chunk_size: Optional[int],
                col_chunk_size: Optional[int], precision: str, candidates: Optional[int],
                device: Optional[Union[str, torch.device]], progress: bool = False
                ) -> Tuple[Tensor, Tensor]:
    """Out-of-core exact kNN of the rows of an array on disk (or in host memory): the symmetric
    self-search, reading two blocks of rows at a time and preparing them on ``device``."""
    n, _, src_dtype = row_source_info(source)
    if n < 2:
        raise ValueError(f"x must have at least 2 rows, got {n}")
    check_knn_options(k, n, metric, "matmul", chunk_size, col_chunk_size, precision, candidates)
    dev = torch.device("cpu" if device is None else device)
    np_dtype = np.float64 if src_dtype == np.float64 else np.float32

    def fetch(a: int, b: int) -> Tensor:
        # (a spilled layer is read with a plain file read, not mapped, so the pages it reads do
        # not stay in the process's resident memory)
        rows = np.asarray(source.read_rows(a, b) if hasattr(source, "read_rows") else source[a:b])
        block = torch.from_numpy(rows.astype(np_dtype, copy=not rows.flags.writeable))
        return prepare_features(block.to(dev), metric, name=f"x[{a}:{b}]")

    block = self_block(n, chunk_size, col_chunk_size)
    scale = None
    if precision != "full" and metric == "euclidean":  # fp16 range: one pass for the largest norm
        scale = unit_scale(max(float(fetch(a, min(n, a + block)).norm(dim=1).max())
                                for a in range(0, n, block)))
    dtype = torch.float64 if np_dtype == np.float64 else torch.float32
    acc = BlockTopK(torch.empty(n, 0, dtype=dtype, device=dev), k, metric, precision=precision,
                    candidates=candidates, scale=scale)
    ids = torch.arange(n, device=dev)
    group = ids.clone()
    vals, idx = acc.update_self(block, rows=fetch, progress=progress, groups=group).result()
    if torch.equal(group, ids):
        return vals, idx
    return canonical_copies(vals, idx, group, ids, acc.largest)  # as in memory (_matmul_knn)


def nearest_neighbors(x: Union[Tensor, np.ndarray], k: int, metric: str = "cosine",
                      backend: str = "auto", chunk_size: Optional[int] = None, *,
                      col_chunk_size: Optional[int] = None, precision: str = "full",
                      candidates: Optional[int] = None,
                      device: Optional[Union[str, torch.device]] = None,
                      progress: bool = False) -> Tuple[Tensor, Tensor]:
    """Exact k nearest neighbours of every row of ``x`` among the other rows.

    Args:
        x: Features ``[N, D]``, floating point, finite.
        k: Neighbours per node, ``1 <= k < N``. A node is never its own neighbour.
        metric: ``'cosine'`` (rows L2-normalised with eps 1e-8, then dot product) or
            ``'euclidean'``.
        backend: ``'matmul'``, ``'torch_cluster'`` (only by name: it may break exact ties
            differently) or ``'auto'`` (the matmul kernel, whose tie rule is documented).
        chunk_size: Query rows per score tile. Default: as many as fit 2**23 scores (32 MiB)
            against one column block.
        col_chunk_size: Key rows per column block. Default: all keys up to
            ``DEFAULT_COL_BLOCK`` (8192), else even blocks of at most that many. Peak memory is
            one ``chunk_size × col_chunk_size`` tile plus ``O(N·k)``, independent of N.
        precision: ``'full'`` (the input's precision), or ``'bf16'``/``'fp16'``: score tiles in
            half precision (tensor cores on GPU), ``candidates`` per tile re-scored exactly in the
            input precision; ``'tf32'``: the same with fp32 tiles on TF32 tensor cores (CUDA).
            Matmul backend only.
        candidates: Candidates per tile for the half-precision pass (default ``max(2k, k+8)``).
        device: Where an out-of-core ``x`` is searched (default CPU); ignored for tensors.
        progress: Show a progress bar over the score tiles of the self-search (large N only:
            one tile shows none). ``DYNGRAPH_QUIET=1`` turns every bar off.

    ``x`` may also be a NumPy array, a ``np.memmap`` or a spilled layer
    (:class:`dyngraph.capture.SpilledArray`): it is then searched out of core, two blocks of
    rows in memory at a time (read, cast to float32 — float64 stays float64 — checked and
    normalised block by block), with the matmul backend. Peak memory: two ``block × D`` row
    blocks, one ``block × block`` tile and ``O(N·k)``, whatever ``N`` is; e.g.
    ``dg.graphs.nearest_neighbors(np.memmap(path, dtype=np.float32, mode='r', shape=(N, D)), k=3)``.

    Returns:
        ``(values, index)``, both ``[N, k]``, best first: cosine similarities (descending) or
        Euclidean distances (ascending), and the neighbours' row indices. Ties go to the smaller
        index.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.tensor([[0.], [1.], [3.], [7.]])
        >>> vals, idx = dg.graphs.nearest_neighbors(x, k=1, metric='euclidean')
        >>> idx.flatten().tolist(), vals.flatten().tolist()
        ([1, 0, 1, 2], [1.0, 1.0, 2.0, 4.0])
    """
    check_flag(progress, "progress")
    device = check_device(device)
    if is_row_source(x):
        check_choice(backend, "backend", BACKENDS)
        if backend == "torch_cluster":
            raise ValueError("an out-of-core x (NumPy array or SpilledArray) needs the matmul "
                             "backend; got backend='torch_cluster'")
        return _stream_knn(x, k, metric, chunk_size, col_chunk_size, precision, candidates,
                           device, progress)
    x = check_features(x, "x", min_rows=2, check_finite=False)
    check_knn_options(k, x.shape[0], metric, backend, chunk_size, col_chunk_size, precision,
                      candidates)
    x = prepare_features(x, metric)
    if metric == "euclidean":
        x = _centred_if_far(x)
    if backend == "torch_cluster":
        return _cluster_knn(x, k, metric)
    return _matmul_knn(x, k, metric, chunk_size, col_chunk_size, precision, candidates, progress)


def edges_from_knn(vals: Tensor, idx: Tensor, metric: str,
                   query_ids: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """``(values, index)`` ``[N, k]`` → ``(edge_index [2, N·k], edge_weight [N·k])`` in PyG's
    ``source_to_target`` flow (``edge_index[1]`` the query, given by ``query_ids`` or row order)."""
    n, k = idx.shape
    target = (torch.arange(n, device=idx.device) if query_ids is None
              else query_ids.to(idx.device)).repeat_interleave(k)
    edge_index = torch.stack([idx.reshape(-1), target])
    weight = vals.reshape(-1) if metric == "cosine" else \
        torch.ones(n * k, dtype=vals.dtype, device=vals.device)
    return edge_index, weight


def knn_edges(x: Union[Tensor, np.ndarray], k: int, metric: str = "cosine",
              backend: str = "auto", chunk_size: Optional[int] = None, *,
              col_chunk_size: Optional[int] = None, precision: str = "full",
              candidates: Optional[int] = None,
              device: Optional[Union[str, torch.device]] = None,
              progress: bool = False) -> Tuple[Tensor, Tensor]:
    """Directed kNN graph of the rows of ``x`` in PyG's ``source_to_target`` flow.

    ``edge_index[1]`` is the query node and ``edge_index[0]`` one of its ``k`` neighbours, so every
    node has in-degree exactly ``k``. Edges are grouped by query, best neighbour first.

    Edge weights:
        * ``metric='cosine'``: the cosine similarity ``cos(i, j)`` (the reference convention).
        * ``metric='euclidean'``: ``1.0`` for every edge (an unweighted kNN graph); the distances
          themselves come from :func:`nearest_neighbors`.

    Args:
        x: Features ``[N, D]``, floating point, finite; no zero rows under cosine.
        k: Neighbours per node, ``1 <= k < N``.
        metric: ``'cosine'`` or ``'euclidean'``.
        backend: ``'matmul'``, ``'torch_cluster'`` or ``'auto'``.
        chunk_size, col_chunk_size: Tile shape (query rows × key rows); see
            :func:`nearest_neighbors`.
        precision, candidates: Half-precision tiles with exact re-scoring; see
            :func:`nearest_neighbors`.
        device: Where an out-of-core ``x`` (NumPy array or spilled layer) is searched; see
            :func:`nearest_neighbors`.
        progress: A progress bar over the score tiles of large searches; see
            :func:`nearest_neighbors`.

    Returns:
        ``edge_index`` ``[2, N*k]`` (long) and ``edge_weight`` ``[N*k]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(100, 16, generator=torch.Generator().manual_seed(0))
        >>> edge_index, edge_weight = dg.knn_edges(x, k=3)
        >>> edge_index.shape, edge_weight.shape
        (torch.Size([2, 300]), torch.Size([300]))
    """
    vals, idx = nearest_neighbors(x, k, metric=metric, backend=backend, chunk_size=chunk_size,
                                  col_chunk_size=col_chunk_size, precision=precision,
                                  candidates=candidates, device=device, progress=progress)
    return edges_from_knn(vals, idx, metric)
