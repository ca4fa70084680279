"""PyTorch Geometric, imported on first use.

``import torch_geometric`` costs about two seconds on top of torch (it imports ``torch._dynamo``,
its ``llm`` subpackage with ``transformers``, ...), so ``import dyngraph`` and ``dyngraph --help``
never import it: a module of dyngraph names PyG's classes in annotations only under
``typing.TYPE_CHECKING`` and reaches them at run time through this module.

* ``_pyg.Data`` / ``_pyg.Batch`` (module attributes, resolved on first access) are PyG's own
  classes; snapshots are plain ``torch_geometric.data.Data`` objects as before.
* :func:`is_data` answers ``isinstance(x, Data)`` without importing PyG: when
  ``torch_geometric.data`` was never imported, no object can be a ``Data``.
* :func:`coalesce`, :func:`scatter`, :func:`subgraph` and :func:`to_undirected` are PyG's
  functions (same signatures, same results), imported when first called.

PyG's own import-time warnings about its optional backends (``torch.jit.script``'s deprecation,
``torch-cluster`` being ignored) are filtered around that one import only, as ``import dyngraph``
did before.
"""
from __future__ import annotations

import importlib
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, as mypy and the docs see them ("as": re-exported)
    from torch_geometric.data import Batch as Batch
    from torch_geometric.data import Data as Data
    from torch_geometric.utils import coalesce as coalesce
    from torch_geometric.utils import scatter as scatter
    from torch_geometric.utils import subgraph as subgraph
    from torch_geometric.utils import to_undirected as to_undirected

_LOCK = threading.Lock()
_LOADED = False
#: the attributes resolved lazily, and the PyG module that defines each
_LAZY = {"Data": "torch_geometric.data", "Batch": "torch_geometric.data"}


def load() -> Any:
    """Import ``torch_geometric`` (once) and return it."""
    global _LOADED
    if not _LOADED:
        with _LOCK, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated",
                                    category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*'torch-cluster' is no longer necessary",
                                    category=DeprecationWarning)
            importlib.import_module("torch_geometric")
            importlib.import_module("torch_geometric.data")
            importlib.import_module("torch_geometric.utils")
            _LOADED = True
    return sys.modules["torch_geometric"]


def is_data(obj: Any) -> bool:
    """``isinstance(obj, torch_geometric.data.Data)``, without importing PyG."""
    mod = sys.modules.get("torch_geometric.data")
    return mod is not None and isinstance(obj, mod.Data)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    load()
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups find it directly
    return value


if not TYPE_CHECKING:
    def _utils() -> Any:
        load()
        return sys.modules["torch_geometric.utils"]

    def coalesce(*args: Any, **kwargs: Any) -> Any:
        """:func:`torch_geometric.utils.coalesce`."""
        return _utils().coalesce(*args, **kwargs)

    def scatter(*args: Any, **kwargs: Any) -> Any:
        """:func:`torch_geometric.utils.scatter`."""
        return _utils().scatter(*args, **kwargs)

    def subgraph(*args: Any, **kwargs: Any) -> Any:
        """:func:`torch_geometric.utils.subgraph`."""
        return _utils().subgraph(*args, **kwargs)

    def to_undirected(*args: Any, **kwargs: Any) -> Any:
        """:func:`torch_geometric.utils.to_undirected`."""
        return _utils().to_undirected(*args, **kwargs)
