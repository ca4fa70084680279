"""``GraphSpec``: how a layer's representations become a kNN graph (one small, frozen config)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Dict, Optional

from torch import Tensor

from .._validate import check_choice, check_flag
from ._graph import SYMMETRIZE, build_snapshot
from ._knn import check_knn_options

if TYPE_CHECKING:
    from torch_geometric.data import Data


@dataclass(frozen=True)
class GraphSpec:
    """The kNN graph of a layer: neighbours, metric, symmetrisation and search options.

    The defaults are the reference preset of Lu et al. (ECCV 2022): k = 3 cosine neighbours,
    no self-neighbour, ties to the smaller index, ``A = (A + Aᵀ)/2``.

    Attributes:
        k: Neighbours per node.
        metric: ``'cosine'`` or ``'euclidean'``.
        symmetrize: ``'mean'`` (reference), ``'max'``, ``'add'`` or ``'mutual'``
            (see :func:`~dyngraph.graphs.symmetrize`).
        backend: ``'auto'``, ``'matmul'`` or ``'torch_cluster'``.
        chunk_size, col_chunk_size: Tile shape of the exact search (``None``: automatic).
        precision: ``'full'``, or ``'fp16'``/``'bf16'`` score tiles.
        candidates: Size of the grouped top-k prefilter (``None``: automatic).
        out_of_core: Search spilled layers from their memory maps, two row blocks at a time.

    Example:
        >>> import torch, dyngraph as dg
        >>> spec = dg.GraphSpec(k=5)
        >>> g = spec.build(torch.randn(40, 8), torch.arange(40) % 2)
        >>> g.num_nodes, spec.k, spec.replace(k=3) == dg.GraphSpec()
        (40, 5, True)
    """

    k: int = 3
    metric: str = "cosine"
    symmetrize: str = "mean"
    backend: str = "auto"
    chunk_size: Optional[int] = None
    col_chunk_size: Optional[int] = None
    precision: str = "full"
    candidates: Optional[int] = None
    out_of_core: bool = False

    def __post_init__(self) -> None:
        # N is not known yet: validate k against an unbounded N here, against N at build time.
        check_knn_options(self.k, 2 ** 62, self.metric, self.backend, self.chunk_size,
                          self.col_chunk_size, self.precision, self.candidates)
        check_choice(self.symmetrize, "symmetrize", SYMMETRIZE)
        check_flag(self.out_of_core, "out_of_core")

    def replace(self, **changes: Any) -> "GraphSpec":
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"GraphSpec has no field(s) {unknown}; fields are "
                            f"{[f.name for f in fields(self)]}")
        return replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a plain dict (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GraphSpec":
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        if not isinstance(d, dict):
            raise TypeError(f"GraphSpec.from_dict needs a dict, got {type(d).__name__}")
        return cls().replace(**d)

    def knn_options(self) -> Dict[str, Any]:
        """Keyword arguments for :func:`~dyngraph.graphs.knn_edges` / ``build_snapshot``."""
        return {"metric": self.metric, "backend": self.backend, "chunk_size": self.chunk_size,
                "col_chunk_size": self.col_chunk_size, "precision": self.precision,
                "candidates": self.candidates}

    def build(self, x: Any, y: Optional[Tensor] = None, *, layer_name: str = "",
              layer_index: int = 0, keep_x: bool = False, progress: bool = False) -> Data:
        """One layer's ``[N, ...]`` features → its undirected kNN graph (a PyG ``Data``)."""
        return build_snapshot(x, y, k=self.k, symmetrize=self.symmetrize, keep_x=keep_x,
                              layer_name=layer_name, layer_index=layer_index, progress=progress,
                              **self.knn_options())
