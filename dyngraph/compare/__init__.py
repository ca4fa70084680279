"""Compare: layer × layer similarity between models (model × model), streamed or from features."""
from ._compare import Comparison, compare_models, stream_cka

__all__ = ["Comparison", "compare_models", "stream_cka"]
