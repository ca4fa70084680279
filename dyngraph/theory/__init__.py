"""Theory: the Layer-Peeled Model (Fang, He, Long, Su, PNAS 2021) solved numerically.

Its results (:class:`LayerPeeledSolution`, :class:`MinorityCollapseCurve`) are drawn by
``dg.plot`` and logged by ``dg.log``."""
from ._lpm import (
    LayerPeeledSolution,
    MinorityCollapseCurve,
    lpm_counts,
    lpm_minority_curve,
    minority_collapse_threshold,
    solve_layer_peeled,
)

__all__ = ["LayerPeeledSolution", "MinorityCollapseCurve", "lpm_counts", "lpm_minority_curve",
           "minority_collapse_threshold", "solve_layer_peeled"]
