"""Depth-pruning criteria of transformer blocks, computed from hidden states.

* **Block Influence** (ShortGPT, Men et al. 2024): a block that barely turns its input hidden
  state is redundant, ``BI = 1 − mean over tokens of cos(h_in, h_out)``.
* **Angular distance** (Gromov et al. 2024): ``arccos(cos(h_ℓ, h_{ℓ+n})) / π`` at the last
  (non-padding) token, averaged over samples; the ``n`` consecutive blocks after the ``ℓ`` that
  minimises it are removed.

Both take hidden states ``[B, T, H]`` with an optional attention mask ``[B, T]`` (padding never
enters), or rows that are already samples ``[N, H]``. Both are also registered as pair measures
(``'block_influence'``, ``'angular_distance'``) for :func:`dg.layer_matrix
<dyngraph.layer_matrix>`: on token rows (every token a sample) the cell ``(ℓ, ℓ + 1)`` is block
``ℓ``'s Block Influence; on last-token rows the cell ``(ℓ, ℓ + n)`` is the angular distance of
the ``n`` blocks after ``ℓ``.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from .._validate import check_tensor
from ._registry import register

__all__ = ["angular_distance", "block_influence", "last_token"]

_EPS = 1e-8


def _check_states(h: Any, name: str) -> Tensor:
    check_tensor(h, name)
    if not h.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of hidden states, got "
                        f"dtype={h.dtype}")
    if h.dim() not in (2, 3):
        raise ValueError(f"{name} must be hidden states [B, T, H] or rows [N, H], got shape "
                         f"{tuple(h.shape)}")
    if h.shape[-1] == 0:
        raise ValueError(f"{name} has hidden size 0 (shape {tuple(h.shape)})")
    return h


def _check_pair(a: Any, b: Any, na: str, nb: str) -> Tuple[Tensor, Tensor]:
    a, b = _check_states(a, na), _check_states(b, nb)
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{na} is on {a.device} and {nb} on {b.device}")
    return a, b


def _check_mask(mask: Any, h: Tensor) -> Tensor:
    """The mask as bool, shaped like ``h`` without its last axis."""
    check_tensor(mask, "mask")
    if tuple(mask.shape) != tuple(h.shape[:-1]):
        raise ValueError(f"mask must have shape {tuple(h.shape[:-1])} (the hidden states "
                         f"{tuple(h.shape)} without the hidden axis), got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"mask must be bool or 0/1 integers (an attention mask), got "
                            f"dtype={mask.dtype}")
        if mask.numel() and bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("mask must hold only 0 and 1 (an attention mask)")
        mask = mask != 0
    return mask.to(h.device)


def _row_cosine(a: Tensor, b: Tensor) -> Tensor:
    """``cos`` of matching rows along the last axis, in float32 or wider (eps 1e-8)."""
    if a.dtype in (torch.float16, torch.bfloat16):
        a, b = a.float(), b.float()
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=_EPS)


def cosine_sum(h_in: Tensor, h_out: Tensor, mask: Optional[Tensor] = None
               ) -> Tuple[Tensor, Tensor]:
    """``(Σ cos(h_in, h_out), count)`` over the (non-padding) tokens, as float64 / int64 tensors on
    the states' device: the streaming form of :func:`block_influence` (sum over batches, then
    ``1 − sum / count``), with no device sync."""
    h_in, h_out = _check_pair(h_in, h_out, "h_in", "h_out")
    cos = _row_cosine(h_in, h_out).double()
    if mask is None:
        return cos.sum(), torch.tensor(cos.numel(), device=cos.device)
    m = _check_mask(mask, h_in)
    return (cos * m).sum(), m.sum()


def block_influence(h_in: Tensor, h_out: Tensor, mask: Optional[Tensor] = None) -> float:
    """Block Influence (ShortGPT): ``1 − mean over tokens of cos(h_in, h_out)``.

    Args:
        h_in: A block's input hidden states ``[B, T, H]`` (or token rows ``[N, H]``).
        h_out: Its output hidden states, the same shape.
        mask: ``[B, T]`` (or ``[N]``) attention mask, bool or 0/1; padding tokens are left out.

    Returns:
        BI in ``[0, 2]``: ``0`` when the block leaves every token's direction unchanged; a low BI
        marks a redundant block.

    Example:
        >>> import torch
        >>> from dyngraph.measures._criteria import block_influence
        >>> h = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
        >>> abs(block_influence(h, 3 * h)) < 1e-6
        True
        >>> mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
        >>> round(block_influence(h, -h, mask), 6)
        2.0
    """
    s, n = cosine_sum(h_in, h_out, mask)
    if int(n) == 0:
        raise ValueError("block_influence: the mask leaves no token")
    return 1.0 - float(s) / int(n)


def last_token(h: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """``[B, T, H] → [B, H]``: each sample's last non-padding token (left or right padding);
    without ``mask`` the last position. Rows ``[N, H]`` are returned as they are.

    Example:
        >>> import torch
        >>> from dyngraph.measures._criteria import last_token
        >>> h = torch.arange(12.).reshape(2, 3, 2)
        >>> last_token(h, torch.tensor([[1, 1, 0], [0, 1, 1]])).tolist()
        [[2.0, 3.0], [10.0, 11.0]]
    """
    h = _check_states(h, "h")
    if h.dim() == 2:
        if mask is not None:
            raise ValueError("mask is for hidden states [B, T, H]; rows [N, H] are samples "
                             "already")
        return h
    if mask is None:
        return h[:, -1]
    m = _check_mask(mask, h)
    if h.shape[1] == 0 or not bool(m.any(1).all()):
        raise ValueError("last_token: a sample has no non-padding token in mask")
    t = h.shape[1]
    # the last True of each row: T − 1 − (first True of the flipped row)
    last = t - 1 - torch.flip(m, (1,)).to(torch.uint8).argmax(1)
    return h[torch.arange(h.shape[0], device=h.device), last]


def row_angles(a: Tensor, b: Tensor) -> Tensor:
    return torch.arccos(_row_cosine(a, b).double().clamp(-1.0, 1.0)) / math.pi


def angular_distance(h_a: Tensor, h_b: Tensor, mask: Optional[Tensor] = None) -> float:
    """Angular distance (Gromov et al.): ``arccos(cos(h_a, h_b)) / π`` at each sample's last
    non-padding token, averaged over samples.

    Args:
        h_a: Hidden states before a run of blocks ``[B, T, H]`` (or last-token rows ``[N, H]``).
        h_b: Hidden states after it, the same shape.
        mask: ``[B, T]`` attention mask (for ``[B, T, H]`` states), bool or 0/1.

    Returns:
        A distance in ``[0, 1]`` (``0``: same direction, ``1``: opposite).

    Example:
        >>> import torch
        >>> from dyngraph.measures._criteria import angular_distance
        >>> a = torch.tensor([[1., 0.], [0., 1.]])
        >>> angular_distance(a, torch.tensor([[0., 2.], [0., 1.]]))
        0.25
    """
    h_a, h_b = _check_pair(h_a, h_b, "h_a", "h_b")
    if h_a.dim() == 2 and mask is not None:
        raise ValueError("mask is for hidden states [B, T, H]; rows [N, H] are samples already")
    a, b = last_token(h_a, mask), last_token(h_b, mask)
    if a.shape[0] == 0:
        raise ValueError("angular_distance needs at least one sample")
    return float(row_angles(a, b).mean())


# ============================================================================ registered measures
def _unit_rows(x: Tensor, y: Optional[Tensor] = None, **_: Any) -> Tensor:
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return x / x.norm(dim=1, keepdim=True).clamp_min(_EPS)


def _bi_pair(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"block_influence compares representations of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return 1.0 - float((a * b).sum(1).double().mean())


def _angular_pair(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"angular_distance compares representations of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    cos = (a * b).sum(1).double().clamp(-1.0, 1.0)
    return float((torch.arccos(cos) / math.pi).mean())


register("block_influence", kind="pair", prepare=_unit_rows, distance=True, labels=False,
         description="Block Influence 1 − mean cos of matching rows (ShortGPT; rows = tokens)"
         )(_bi_pair)
register("angular_distance", kind="pair", prepare=_unit_rows, distance=True, labels=False,
         description="mean arccos(cos)/π of matching rows (Gromov et al.; rows = last tokens)"
         )(_angular_pair)
