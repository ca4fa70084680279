"""Compare: layer × layer similarity between models (model × model), one
:class:`~dyngraph.LayerMatrix` per pair, from features or streamed from a loader."""
from ._compare import Comparison, compare_models, stream_cka

__all__ = ["Comparison", "compare_models", "stream_cka"]
