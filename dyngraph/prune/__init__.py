"""Redundant-layer detection, layer surgery, fine-tuning, cost reports and the pruning study.

The pipeline of the seed paper (Lu et al., "Graph Modularity", ECCV 2022): the modularity curve,
a one-metric :class:`~dyngraph.DepthProfile` from :func:`dg.depth_profile
<dyngraph.depth_profile>`, marks redundant layers by its plateaus and drops
(:func:`redundant_layers`); they are cut out (:func:`prune_layers`), the network is fine-tuned
(:func:`finetune`), and the result is compared on cost (:func:`prune_report`) and accuracy with
baselines that remove as many layers at random, the least redundant ones, or by adjacent-layer
CKA. :func:`prune_study` runs it all; ``dg.plot`` / ``dg.log`` draw its :class:`StudyReport`.

For transformers (Lu et al., "Reassessing Layer Pruning in LLMs", ICLR 2026), blocks of the stack
are chosen by Block Influence, angular distance, adjacent CKA, modularity, reverse order or at
random (:func:`select_blocks`), removed with the config and KV-cache indices kept right
(:func:`remove_blocks`), healed (:func:`heal`) and evaluated by perplexity or accuracy, all at one
budget in one report (:func:`transformer_prune_study`).
"""
from ._baselines import adjacent_cka, cka_layers, least_redundant_layers, random_layers
from ._cost import cost_report, count_flops, count_params, measure_latency, prune_report
from ._detect import DEFAULT_THRESHOLDS, RULES, Redundancy, Removal, layer_scores, redundant_layers
from ._finetune import evaluate, finetune, fit
from ._study import StudyReport, prune_study
from ._surgery import infer_example_input, make_projection, probe, prune_layers
from ._transformer import CRITERIA as TRANSFORMER_CRITERIA
from ._transformer import (
    BlockSelection,
    BlockStates,
    block_states,
    heal,
    lm_batches,
    perplexity,
    remove_blocks,
    select_blocks,
    transformer_blocks,
    transformer_prune_study,
)

__all__ = [
    # detect
    "redundant_layers", "layer_scores", "Redundancy", "Removal", "RULES", "DEFAULT_THRESHOLDS",
    # baselines
    "random_layers", "least_redundant_layers", "cka_layers", "adjacent_cka",
    # surgery
    "prune_layers", "probe", "infer_example_input", "make_projection",
    # training and cost
    "finetune", "fit", "evaluate", "count_params", "count_flops", "measure_latency",
    "cost_report", "prune_report",
    # the study
    "prune_study", "StudyReport",
    # transformer depth pruning: blocks of a stack, criteria, surgery, healing, perplexity
    "transformer_blocks", "block_states", "BlockStates", "select_blocks", "BlockSelection",
    "TRANSFORMER_CRITERIA", "remove_blocks", "heal", "perplexity", "lm_batches",
    "transformer_prune_study",
]
