"""dyngraph: how a trained network's representations change from layer to layer.

Each chosen layer's representations of N samples become a kNN graph (a PyG ``Data``); the ordered
snapshots form a dynamic graph whose metrics (modularity first) are computed with scatter ops.
"""
from . import typing
from .curve import Curve
from .extract import balanced_indices, default_layers, extract_features, list_layers, residual_blocks
from .features import LayerFeatures
from .graph import DynamicGraph, build_snapshot, symmetrize
from .knn import knn, knn_graph
from .logging import log_curve, log_curves
from .metrics.modularity import community_contributions, modularity
from .pipeline import modularity_curve
from .plot import plot_curves
from . import data, models

__version__ = "0.1.0"

__all__ = [
    "Curve",
    "LayerFeatures",
    "balanced_indices",
    "default_layers",
    "extract_features",
    "list_layers",
    "residual_blocks",
    "DynamicGraph",
    "build_snapshot",
    "community_contributions",
    "knn",
    "knn_graph",
    "log_curve",
    "log_curves",
    "modularity",
    "modularity_curve",
    "data",
    "models",
    "plot_curves",
    "symmetrize",
    "typing",
]
