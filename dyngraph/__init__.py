"""dyngraph: how a trained network's representations change from layer to layer.

One spine: **capture** (:class:`LayerTaps`, :func:`extract_features`) → **graphs** (one exact kNN
graph per layer, :class:`GraphSpec`) → **measures** (a registry of pure functions) → **profiles**
(:func:`depth_profile`, :func:`layer_matrix`) → **outputs** (:func:`plot`, :func:`log`). Pruning,
model comparison, neuron-level modularity, the Layer-Peeled Model, distributed runs and the
bundled models and data build on it, in the subpackages of the same names.
"""
# torch_geometric, matplotlib, tensorboard, scipy and transformers are imported where they are
# first used (PyG through dyngraph._pyg), never here: tests/test_import_time.py checks it.
from . import (
    capture,
    compare,
    distributed,
    errors,
    graphs,
    measures,
    neurons,
    outputs,
    profiles,
    prune,
    testing,
    theory,
    typing,
    zoo,
)
from .capture import LayerFeatures, LayerTaps, default_layers, extract_features, list_layers
from .graphs import DynamicGraph, GraphSpec, knn_edges
from .measures import modularity
from .outputs import log, plot
from .profiles import DepthProfile, LayerMatrix, depth_profile, layer_matrix

__version__ = "0.2.0"

__all__ = [
    # the names a user types first
    "LayerTaps", "extract_features", "LayerFeatures", "default_layers", "list_layers",
    "GraphSpec", "knn_edges", "DynamicGraph", "modularity",
    "depth_profile", "DepthProfile", "layer_matrix", "LayerMatrix",
    "plot", "log",
    # the spine's subpackages, in the order of the data flow, then what builds on it
    "capture", "graphs", "measures", "profiles", "outputs",
    "prune", "compare", "neurons", "theory", "distributed", "zoo",
    "errors", "testing", "typing",
]
