"""Optional compiled extensions and shared type aliases.

The compiled PyG extensions are imported here and nowhere else. A missing extension sets its
``WITH_*`` flag to ``False``; a broken binary (for example one built against another torch) gives a
warning instead of a failed ``import dyngraph``.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Union

import torch
from torch import Tensor


def _try_import(name: str):
    try:
        with warnings.catch_warnings():  # their import scripts kernels with torch.jit (deprecated)
            warnings.simplefilter("ignore", FutureWarning)
            return __import__(name)
    except ImportError:
        return None
    except Exception as exc:  # a binary that does not load (ABI mismatch, missing symbol)
        warnings.warn(f"dyngraph: the optional extension '{name}' is installed but failed to load "
                      f"({type(exc).__name__}: {exc}); continuing without it", stacklevel=2)
        return None


torch_cluster = _try_import("torch_cluster")
WITH_TORCH_CLUSTER: bool = torch_cluster is not None

torch_scatter = _try_import("torch_scatter")
WITH_TORCH_SCATTER: bool = torch_scatter is not None

FeatureDict = Mapping[str, Tensor]
Device = Union[str, torch.device]


def extensions_summary() -> str:
    """One line saying which optional extensions are active."""
    return (f"torch-cluster={'yes' if WITH_TORCH_CLUSTER else 'no'}, "
            f"torch-scatter={'yes' if WITH_TORCH_SCATTER else 'no'}")
