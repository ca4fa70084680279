"""Seeded Johnson–Lindenstrauss random projection of very wide layers, streamed in blocks.

A flattened early conv map can have 10⁵+ dimensions. Projecting it to ``m`` dimensions with a
random matrix ``R`` (``D × m``) keeps every pairwise distance (and, for normalised rows, every
cosine) within a factor ``1 ± eps`` with high probability once ``m ≥ 4 ln N / (eps²/2 − eps³/3)``
(Johnson–Lindenstrauss; Dasgupta & Gupta 1999), and makes the kNN search ``D/m`` times cheaper.

``R`` is never materialised whole unless it fits ``cache_bytes``: it is generated in fixed tiles of
``TILE_ROWS`` input dimensions, tile ``t`` from its own generator seeded by ``(seed, t)``, so the
result depends only on ``(seed, D, m, kind)`` — not on the block sizes, the device, or how the rows
are split over processes. The input is read in row blocks (from a tensor, a NumPy array, or a file
written by the spilling extractor), so at most one row block of the input, one block of ``R`` and
the ``[N, m]`` output are in memory.

Kinds (all with ``E[‖xR‖²] = ‖x‖²``):
    * ``'gaussian'``: ``R_ij ~ N(0, 1/m)``.
    * ``'rademacher'``: ``R_ij = ±1/√m`` (Achlioptas 2003).
    * ``'sparse'``: very sparse ``R_ij = ±√(s/m)`` with probability ``1/(2s)`` each, else 0,
      ``s = √D`` (Li, Hastie & Church 2006).
"""
from __future__ import annotations

import math
import mmap
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._progress import progress_bar
from .._validate import check_choice, check_positive_int
from ..capture._features import LayerFeatures, SpilledArray

KINDS = ("gaussian", "rademacher", "sparse")
#: Input dimensions per generated tile of ``R`` (the unit of seeding).
TILE_ROWS = 1024
#: Elements of one input row block (64 MiB of fp32) when ``block_rows`` is left to dyngraph.
DEFAULT_BLOCK_ELEMENTS = 1 << 24
#: ``R`` is generated once and kept when it is at most this large; otherwise per row block.
DEFAULT_CACHE_BYTES = 1 << 30

ArrayLike = Union[Tensor, np.ndarray, SpilledArray]


def jl_min_dim(n_samples: int, eps: float = 0.1) -> int:
    """Smallest ``m`` with the Johnson–Lindenstrauss guarantee for ``n_samples`` points:
    ``⌈4 ln N / (eps²/2 − eps³/3)⌉`` (Dasgupta & Gupta).

    Example:
        >>> import dyngraph as dg
        >>> dg.graphs.jl_min_dim(1000, eps=0.5)
        332
    """
    check_positive_int(n_samples, "n_samples")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ValueError(f"eps must be a float in (0, 1), got eps={eps!r}")
    return max(1, math.ceil(4 * math.log(n_samples) / (eps ** 2 / 2 - eps ** 3 / 3)))


def _tile_seed(seed: int, tile: int) -> int:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(tile)])
    return int(state.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF)


def _tile(seed: int, tile: int, rows: int, dim: int, kind: str, d_total: int) -> Tensor:
    """Rows ``[tile·TILE_ROWS, tile·TILE_ROWS + rows)`` of ``R`` (float32, CPU)."""
    g = torch.Generator().manual_seed(_tile_seed(seed, tile))
    if kind == "gaussian":
        return torch.randn(rows, dim, generator=g).div_(math.sqrt(dim))
    if kind == "rademacher":
        return torch.randint(0, 2, (rows, dim), generator=g).float().mul_(2).sub_(1) \
            .div_(math.sqrt(dim))
    s = math.sqrt(d_total)
    u = torch.rand(rows, dim, generator=g)
    out = torch.zeros(rows, dim)
    p = 1.0 / (2 * s)
    val = math.sqrt(s / dim)
    out[u < p] = val
    out[u > 1 - p] = -val
    return out


def projection_matrix(d: int, dim: int, seed: int = 0, kind: str = "gaussian",
                      start: int = 0, stop: Optional[int] = None) -> Tensor:
    """Rows ``[start, stop)`` of the ``D × m`` projection matrix (float32, CPU), for inspection
    and tests; :func:`random_projection` never needs it whole.

    Example:
        >>> import torch, dyngraph as dg
        >>> from dyngraph.graphs._projection import projection_matrix   # not exported
        >>> R = projection_matrix(3000, 64, seed=0)
        >>> tuple(R.shape), bool(abs(R.pow(2).sum(1).mean() - 1) < 0.05)
        ((3000, 64), True)
        >>> x = torch.randn(4, 3000, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(dg.graphs.random_projection(x, 64, seed=0), x @ R, atol=1e-4)
        True
    """
    check_positive_int(d, "d")
    check_positive_int(dim, "dim")
    check_choice(kind, "kind", KINDS)
    stop = d if stop is None else stop
    if not 0 <= start <= stop <= d:
        raise ValueError(f"need 0 <= start <= stop <= d={d}, got start={start}, stop={stop}")
    parts = []
    for t in range(start // TILE_ROWS, -(-stop // TILE_ROWS)):
        t0, t1 = t * TILE_ROWS, min(d, (t + 1) * TILE_ROWS)
        tile = _tile(seed, t, t1 - t0, dim, kind, d)
        parts.append(tile[max(start, t0) - t0:min(stop, t1) - t0])
    return torch.cat(parts) if parts else torch.zeros(0, dim)


# ---------------------------------------------------------------------------- input access
class _Rows:
    """Uniform row-block reader over a tensor, a NumPy array/memmap or a spilled file."""

    def __init__(self, x: Any, name: str = "x"):
        self.tensor: Optional[Tensor] = None
        #: Rows ``r0:r1`` of an array or a file, as a NumPy array (``None`` for a tensor).
        self.read_np: Optional[Callable[[int, int], np.ndarray]] = None
        self.shape: Tuple[int, ...]
        dt: Any
        if isinstance(x, SpilledArray):  # read_rows: plain file reads, nothing stays mapped
            self.read_np, self.shape, dt = x.read_rows, x.shape, x.np_dtype
        elif isinstance(x, np.memmap) and isinstance(x.base, mmap.mmap) and \
                x.flags.c_contiguous and x.ndim >= 2 and getattr(x, "filename", None):
            # Read with plain file reads: mapped pages would count towards the resident set.
            self.shape, dt = (x.shape[0], int(np.prod(x.shape[1:]))), x.dtype
            path, offset, d = x.filename, int(x.offset), self.shape[1]
            self.read_np = lambda r0, r1: np.fromfile(
                path, dtype=dt, count=(r1 - r0) * d, offset=offset + r0 * d * dt.itemsize
            ).reshape(r1 - r0, d)
        elif isinstance(x, np.ndarray):
            array = x.reshape(x.shape[0], -1) if x.ndim > 2 else x
            self.read_np, self.shape, dt = (lambda r0, r1: array[r0:r1]), array.shape, x.dtype
        elif isinstance(x, Tensor):
            self.tensor = x.reshape(x.shape[0], -1) if x.dim() > 2 else x
            self.shape, dt = tuple(self.tensor.shape), x.dtype
        else:
            raise TypeError(f"{name} must be a torch.Tensor, a NumPy array or a SpilledArray, got "
                            f"{type(x).__name__}")
        if len(self.shape) != 2:
            raise ValueError(f"{name} must be [N, D] (or [N, ...], flattened), got shape "
                             f"{tuple(self.shape)}")
        floating = dt.is_floating_point if isinstance(dt, torch.dtype) else \
            np.issubdtype(dt, np.floating)
        if not floating:
            raise TypeError(f"{name} must be floating point, got dtype={dt}")

    def read(self, r0: int, r1: int, device: torch.device) -> Tensor:
        if self.read_np is None:
            assert self.tensor is not None
            return self.tensor[r0:r1].to(device=device, dtype=torch.float32)
        return torch.from_numpy(np.ascontiguousarray(self.read_np(r0, r1), dtype=np.float32)) \
            .to(device)


def random_projection(x: ArrayLike, dim: Optional[int] = None, *, eps: float = 0.1,
                      seed: int = 0, kind: str = "gaussian", block_rows: Optional[int] = None,
                      cache_bytes: int = DEFAULT_CACHE_BYTES,
                      device: Optional[Union[str, torch.device]] = None,
                      check_finite: bool = True, progress: bool = False) -> Tensor:
    """Seeded Johnson–Lindenstrauss projection ``x R`` of ``[N, D]`` rows to ``[N, dim]``.

    Args:
        x: ``[N, D]`` (or ``[N, ...]``, flattened) floating-point rows: a tensor (any device), a
            NumPy array or memmap, or a :class:`~dyngraph.capture.SpilledArray` written by
            ``extract_features(spill_dir=...)``. Files are read block by block with plain reads.
        dim: Output dimension ``m < D``. ``None``: :func:`jl_min_dim` ``(N, eps)``.
        eps: Distortion for the automatic ``dim``.
        seed: Seed of ``R``; the same seed gives the same ``R`` on every device and process.
        kind: ``'gaussian'``, ``'rademacher'`` or ``'sparse'`` (see the module docstring).
        block_rows: Input rows per block (default: as many as fit 2**24 values).
        cache_bytes: Keep ``R`` (``D·m·4`` bytes) for the whole pass when it is at most this
            large; otherwise regenerate its tiles for every row block (slower, bounded memory).
        device: Where to compute and return the result (default: ``x``'s device, CPU for
            arrays and files).
        check_finite: Raise on NaN/inf in the output (one O(N·m) check).
        progress: Progress bar over row blocks.

    Returns:
        float32 ``[N, dim]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(50, 5000, generator=torch.Generator().manual_seed(0))
        >>> z = dg.graphs.random_projection(x, 256, seed=0)
        >>> d0, d1 = torch.pdist(x), torch.pdist(z)
        >>> tuple(z.shape), bool(((d1 / d0) - 1).abs().max() < 0.3)
        ((50, 256), True)
    """
    rows = _Rows(x, "x")
    n, d = rows.shape
    check_choice(kind, "kind", KINDS)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")
    if n < 1:
        raise ValueError(f"x needs at least one row, got shape {tuple(rows.shape)}")
    if dim is None:
        dim = jl_min_dim(max(n, 2), eps)
        if dim >= d:
            raise ValueError(f"the Johnson–Lindenstrauss dimension for N={n}, eps={eps} is "
                             f"{dim} >= D={d}: projecting would not reduce x; pass a smaller "
                             f"dim or a larger eps")
    check_positive_int(dim, "dim")
    if dim >= d:
        raise ValueError(f"dim must be smaller than the input dimension D={d}, got dim={dim}")
    if block_rows is not None:
        check_positive_int(block_rows, "block_rows")
    if device is None:
        device = rows.tensor.device if rows.tensor is not None else torch.device("cpu")
    device = torch.device(device)
    r_step = block_rows or max(1, min(n, DEFAULT_BLOCK_ELEMENTS // d))
    cached = d * dim * 4 <= cache_bytes
    d_step = d if cached else max(TILE_ROWS, (DEFAULT_BLOCK_ELEMENTS // dim) // TILE_ROWS
                                  * TILE_ROWS)
    r_cache = projection_matrix(d, dim, seed, kind).to(device) if cached else None
    out = torch.empty(n, dim, dtype=torch.float32, device=device)
    for r0 in progress_bar(range(0, n, r_step), desc="project", disable=not progress):
        r1 = min(n, r0 + r_step)
        xb = rows.read(r0, r1, device)
        if r_cache is not None:
            out[r0:r1] = xb @ r_cache
            continue
        acc = torch.zeros(r1 - r0, dim, dtype=torch.float32, device=device)
        for c0 in range(0, d, d_step):
            c1 = min(d, c0 + d_step)
            acc += xb[:, c0:c1] @ projection_matrix(d, dim, seed, kind, c0, c1).to(device)
        out[r0:r1] = acc
    if check_finite and not bool(torch.isfinite(out).all()):
        raise ValueError(f"x contains NaN/inf values (or values too large for float32): the "
                         f"projection of {int((~torch.isfinite(out)).any(1).sum())} rows is not "
                         f"finite")
    return out


def project_features(features: Union[LayerFeatures, Mapping], dim: Optional[int] = None, *,
                     eps: float = 0.1, min_dim: Optional[int] = None, seed: int = 0,
                     kind: str = "gaussian", device: Optional[Union[str, torch.device]] = None,
                     progress: bool = False) -> LayerFeatures:
    """Projects every layer wider than ``min_dim`` (default: ``dim``) with
    :func:`random_projection`, one layer at a time (spilled layers are streamed from disk);
    narrower layers are kept as they are.

    Args:
        features: :class:`~dyngraph.LayerFeatures` (or a dict of ``[N, ...]`` tensors, then
            ``y`` must be present as ``features.y``; use LayerFeatures).
        dim, eps, seed, kind, device: As in :func:`random_projection`.
        min_dim: Only layers with ``D > min_dim`` are projected.
        progress: Progress bar over layers.

    Returns:
        A :class:`LayerFeatures` in memory; ``meta['projection']`` records, per projected layer,
        ``{'from': D, 'to': dim, 'seed', 'kind'}``.

    Example:
        >>> import torch, dyngraph as dg
        >>> f = dg.LayerFeatures({'wide': torch.randn(30, 4000), 'narrow': torch.randn(30, 8)},
        ...                      y=torch.arange(30) % 3)
        >>> p = dg.graphs.project_features(f, 128)
        >>> p.dims, sorted(p.meta['projection'])
        ({'wide': 128, 'narrow': 8}, ['wide'])
    """
    if not isinstance(features, LayerFeatures):
        raise TypeError(f"features must be LayerFeatures, got {type(features).__name__}")
    limit = dim if min_dim is None else min_dim
    out: Dict[str, Tensor] = {}
    record: Dict[str, Dict[str, Any]] = {}
    for name in progress_bar(features.names, desc="project", disable=not progress):
        raw = features._layers[name]
        d = features.dims[name]
        target = dim if dim is not None else jl_min_dim(max(features.n_samples, 2), eps)
        if limit is not None and d <= limit or target >= d:
            out[name] = features[name]
            continue
        out[name] = random_projection(raw, target, seed=seed, kind=kind, device=device)
        record[name] = {"from": d, "to": target, "seed": seed, "kind": kind}
    return LayerFeatures(out, features.y, features.indices,
                         {**features.meta, "projection": record})
