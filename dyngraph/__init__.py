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
from . import prune
from .prune import (Redundancy, Removal, count_flops, count_params, finetune, measure_latency,
                    prune_layers, prune_report, prune_study, redundant_layers)
from . import neurons
from .neurons import (clusterability, coherence, lesion_importance, ncut, neuron_graph,
                      neuron_report, spectral_partition)
from .metrics.similarity import (MinibatchCKA, SimilarityMatrix, StreamingCKA, graph_similarity,
                                 knn_overlap, linear_cka, log_similarity_matrix,
                                 modularity_distance, mutual_knn, permutation_test,
                                 similarity_matrices)
from .metrics.community import (CommunityEvolution, adjusted_rand_index, class_contribution_curves,
                                 class_mixing, community_evolution, community_transitions,
                                 contingency_table, detect_communities, graph_purity, knn_purity,
                                 mixing_ratio, normalized_mutual_info, plot_transitions,
                                 separation_depth)
from .compare import Comparison, compare, stream_cka
from .metrics.collapse import (CollapseCallback, CollapseConventions, NeuralCollapseAccumulator,
                               class_means, collapse_curves, etf_gram, minority_collapse,
                               neural_collapse, neural_collapse_model, neural_collapse_stream,
                               simplex_etf)
from . import lpm
from .lpm import (LayerPeeledSolution, lpm_counts, lpm_minority_curve, minority_collapse_threshold,
                  plot_lpm_comparison, solve_layer_peeled)
from .projection import jl_min_dim, project_features, random_projection
from . import distributed as _distributed
from .distributed import *  # noqa: F401,F403 (the names of distributed.__all__)
from .metrics.dimension import (BlockAnalysis, IDEstimate, IDPhases, block_analysis, id_curve,
                                id_curves, id_phases, local_id, log_id_phases, mle_id,
                                participation_ratio, pca_dim, plot_depth_profiles, subsample_id,
                                twonn)

__version__ = "0.1.0"

__all__ = [
    "twonn",
    "mle_id",
    "participation_ratio",
    "pca_dim",
    "local_id",
    "id_curve",
    "id_curves",
    "id_phases",
    "log_id_phases",
    "plot_depth_profiles",
    "subsample_id",
    "block_analysis",
    "IDEstimate",
    "IDPhases",
    "BlockAnalysis",
    "random_projection",
    "project_features",
    "jl_min_dim",
    "neural_collapse",
    "collapse_curves",
    "NeuralCollapseAccumulator",
    "neural_collapse_stream",
    "neural_collapse_model",
    "CollapseCallback",
    "CollapseConventions",
    "class_means",
    "minority_collapse",
    "simplex_etf",
    "etf_gram",
    "lpm",
    "solve_layer_peeled",
    "LayerPeeledSolution",
    "lpm_counts",
    "lpm_minority_curve",
    "minority_collapse_threshold",
    "plot_lpm_comparison",
    "linear_cka",
    "StreamingCKA",
    "MinibatchCKA",
    "knn_overlap",
    "mutual_knn",
    "graph_similarity",
    "modularity_distance",
    "permutation_test",
    "similarity_matrices",
    "SimilarityMatrix",
    "log_similarity_matrix",
    "class_mixing",
    "mixing_ratio",
    "separation_depth",
    "knn_purity",
    "graph_purity",
    "detect_communities",
    "contingency_table",
    "normalized_mutual_info",
    "adjusted_rand_index",
    "community_transitions",
    "plot_transitions",
    "class_contribution_curves",
    "community_evolution",
    "CommunityEvolution",
    "compare",
    "Comparison",
    "stream_cka",
    "neurons",
    "neuron_graph",
    "spectral_partition",
    "ncut",
    "clusterability",
    "lesion_importance",
    "coherence",
    "neuron_report",
    "Redundancy",
    "Removal",
    "count_flops",
    "count_params",
    "finetune",
    "measure_latency",
    "prune",
    "prune_layers",
    "prune_report",
    "prune_study",
    "redundant_layers",
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
__all__ += _distributed.__all__
