"""Optional compiled extensions and shared type aliases.

The compiled PyG extensions are imported here and nowhere else, when a ``WITH_*`` flag (or the
module handle) is first read: ``torch_cluster`` imports scipy, so ``import dyngraph`` does not
import them. A missing extension sets its ``WITH_*`` flag to ``False``; a broken binary (for
example one built against another torch) gives a warning instead of an error.

Example:
    >>> import dyngraph as dg
    >>> isinstance(dg.typing.WITH_TORCH_CLUSTER, bool)
    True
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Union

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
                      f"({type(exc).__name__}: {exc}); continuing without it", stacklevel=3)
        return None


# (the extension modules themselves, ``torch_cluster`` and ``torch_scatter``, are internal handles)
__all__ = ["WITH_TORCH_CLUSTER", "WITH_TORCH_SCATTER", "FeatureDict", "Device",
           "extensions_summary"]

# Declared here, set by ``__getattr__`` below on first access (the import costs scipy's).
torch_cluster: Any
"""The ``torch_cluster`` module when it is installed and loads, else ``None``."""
WITH_TORCH_CLUSTER: bool
"""Whether ``torch_cluster`` is available: only ``backend='torch_cluster'`` of the kNN needs it."""

torch_scatter: Any
"""The ``torch_scatter`` module when it is installed and loads, else ``None``."""
WITH_TORCH_SCATTER: bool
"""Whether ``torch_scatter`` is available (reported only: dyngraph scatters with torch)."""

_FLAGS = {"torch_cluster": "WITH_TORCH_CLUSTER", "torch_scatter": "WITH_TORCH_SCATTER"}


def __getattr__(name: str) -> Any:
    """Import an extension when its handle or its ``WITH_*`` flag is first read."""
    for module, flag in _FLAGS.items():
        if name in (module, flag):
            handle = _try_import(module)
            globals().update({module: handle, flag: handle is not None})
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


FeatureDict = Mapping[str, Tensor]
"""Features per layer: ``{layer name: Tensor [N, D]}``, rows aligned across layers."""
Device = Union[str, torch.device]
"""A device as torch accepts it: ``'cpu'``, ``'cuda:0'`` or a ``torch.device``."""


def extensions_summary() -> str:
    """One line saying which optional extensions are active.

    Returns:
        ``'torch-cluster=yes|no, torch-scatter=yes|no'``.

    Example:
        >>> import dyngraph as dg
        >>> summary = dg.typing.extensions_summary()
        >>> ('torch-cluster=yes' in summary) == dg.typing.WITH_TORCH_CLUSTER
        True
    """
    cluster, scatter = (globals()[f] if f in globals() else __getattr__(f)
                        for f in ("WITH_TORCH_CLUSTER", "WITH_TORCH_SCATTER"))
    return (f"torch-cluster={'yes' if cluster else 'no'}, "
            f"torch-scatter={'yes' if scatter else 'no'}")
