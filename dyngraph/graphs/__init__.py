"""Graphs: exact kNN graphs of a layer's samples (PyG ``Data``), configured by :class:`GraphSpec`.

One exact kNN kernel (blocked GEMM + tile top-k, CPU and CUDA, out of core) builds every
snapshot; a depth-ordered sequence of snapshots is a :class:`DynamicGraph`.
"""
from ._graph import DegenerateLayerWarning, DynamicGraph, build_snapshot, symmetrize
from ._knn import knn_edges, nearest_neighbors
from ._projection import jl_min_dim, project_features, random_projection
from ._spec import GraphSpec

__all__ = ["DegenerateLayerWarning", "DynamicGraph", "GraphSpec", "build_snapshot", "jl_min_dim",
           "knn_edges",
           "nearest_neighbors", "project_features", "random_projection", "symmetrize"]
