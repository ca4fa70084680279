"""Redundant-layer detection, layer surgery, fine-tuning, cost reports and the pruning study.

The pipeline of the seed paper (Lu et al., "Graph Modularity", ECCV 2022): the modularity curve's
plateaus and drops mark redundant layers (:func:`redundant_layers`), they are cut out
(:func:`prune_layers`), the network is fine-tuned (:func:`finetune`), and the result is compared
on cost (:func:`prune_report`) and accuracy with baselines that remove as many layers at random,
the least redundant ones, or by adjacent-layer CKA (:mod:`dyngraph.prune.baselines`).
"""
from ._baselines import adjacent_cka, cka_layers, least_redundant_layers, linear_cka, random_layers
from ._cost import cost_report, count_flops, count_params, measure_latency, prune_report
from ._detect import (
                     DEFAULT_THRESHOLDS,
                     RULES,
                     Redundancy,
                     Removal,
                     layer_scores,
                     layer_structure,
                     redundant_layers,
)
from ._finetune import evaluate, finetune, fit
from ._study import format_table, plot_before_after, prune_study, summarize
from ._surgery import infer_example_input, make_projection, probe, prune_layers

__all__ = [
    "DEFAULT_THRESHOLDS", "RULES", "Redundancy", "Removal", "adjacent_cka", "cka_layers",
    "cost_report", "count_flops", "count_params", "evaluate", "finetune", "fit",
    "infer_example_input", "layer_scores", "layer_structure", "least_redundant_layers",
    "linear_cka", "make_projection", "measure_latency", "probe", "prune_layers", "prune_report",
    "random_layers", "redundant_layers", "format_table", "plot_before_after", "prune_study",
    "summarize",
]
