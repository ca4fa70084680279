"""Measures: pure functions (the single source of truth) and the registry that lets the one
runner evaluate them by name.

Layer measures take ``(x, y, graph)``; pair measures prepare each representation once and score
pairs. ``available()`` lists them; ``@register(name)`` adds a user's own.
"""
from ._collapse import (CollapseCallback, CollapseConventions, NeuralCollapseAccumulator,
                        class_means, collapse_curves, etf_gram, minority_collapse,
                        neural_collapse, neural_collapse_model, neural_collapse_stream,
                        simplex_etf)
from ._community import (CommunityEvolution, adjusted_rand_index, class_contribution_curves,
                         class_mixing, community_evolution, community_transitions,
                         contingency_table, detect_communities, graph_purity, knn_purity,
                         mixing_ratio, normalized_mutual_info, plot_transitions,
                         separation_depth)
from ._dimension import (BlockAnalysis, IDEstimate, IDPhases, block_analysis, id_curve,
                         id_curves, id_phases, local_id, log_id_phases, mle_id,
                         participation_ratio, pca_dim, plot_depth_profiles, subsample_id, twonn)
from ._modularity import community_contributions, modularity
from ._registry import Measure, available, describe, get, register, unregister
from ._similarity import (MinibatchCKA, SimilarityMatrix, StreamingCKA, graph_similarity,
                          knn_overlap, linear_cka, log_similarity_matrix, modularity_distance,
                          mutual_knn, permutation_test, similarity_matrices)

__all__ = [
    "BlockAnalysis", "CollapseCallback", "CollapseConventions", "CommunityEvolution",
    "IDEstimate", "IDPhases", "Measure", "MinibatchCKA", "NeuralCollapseAccumulator",
    "SimilarityMatrix", "StreamingCKA", "adjusted_rand_index", "available", "block_analysis",
    "class_contribution_curves", "class_means", "class_mixing", "collapse_curves",
    "community_contributions", "community_evolution", "community_transitions",
    "contingency_table", "describe", "detect_communities", "etf_gram", "get", "graph_purity",
    "graph_similarity", "id_curve", "id_curves", "id_phases", "knn_overlap", "knn_purity",
    "linear_cka", "local_id", "log_id_phases", "log_similarity_matrix", "minority_collapse",
    "mixing_ratio", "mle_id", "modularity", "modularity_distance", "mutual_knn",
    "neural_collapse", "neural_collapse_model", "neural_collapse_stream",
    "normalized_mutual_info", "participation_ratio", "pca_dim", "permutation_test",
    "plot_depth_profiles", "plot_transitions", "register", "separation_depth",
    "similarity_matrices", "simplex_etf", "subsample_id", "twonn", "unregister",
]
