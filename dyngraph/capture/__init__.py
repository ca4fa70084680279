"""Capture: the only code that runs a model forward.

:class:`LayerTaps` hooks chosen layers (a context manager that restores the model on exit);
:func:`extract_features` streams a loader through it, class-balanced, in memory or spilled to
disk, into :class:`LayerFeatures`.
"""
from ._extract import balanced_indices, extract_features
from ._features import LayerFeatures, SpilledArray, clean_spill
from ._layers import BlockStack, block_stack, default_layers, list_layers, residual_blocks
from ._taps import LayerTaps

__all__ = ["BlockStack", "LayerTaps", "LayerFeatures", "SpilledArray", "balanced_indices",
           "block_stack", "clean_spill", "default_layers",
           "extract_features", "list_layers", "residual_blocks"]
