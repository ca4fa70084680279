"""Theory: the Layer-Peeled Model (Fang, He, Long, Su, PNAS 2021) solved numerically."""
from ._lpm import (
                   LayerPeeledSolution,
                   lpm_counts,
                   lpm_minority_curve,
                   minority_collapse_threshold,
                   solve_layer_peeled,
)

__all__ = ["LayerPeeledSolution", "lpm_counts", "lpm_minority_curve",
           "minority_collapse_threshold", "solve_layer_peeled"]
