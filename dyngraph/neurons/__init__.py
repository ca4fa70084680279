"""Neuron-level modularity (Hod, Casper, Filan et al. 2022, arXiv 2110.08058; Filan et al. 2021).

The nodes of these graphs are a network's *neurons*, not samples:

* :func:`neuron_graph`: a PyG ``Data`` from the weights (``|w|`` between adjacent layers, conv
  kernels reduced by a norm, BatchNorm folded) or from activation correlations (squared Spearman);
* :func:`spectral_partition` and :func:`ncut`: normalised spectral clustering and its n-cut;
* :func:`clusterability`: the n-cut against weight-shuffled copies (p-value, z-score);
* :func:`lesion_importance`: cluster ∩ layer groups lesioned against random same-size groups;
* :func:`coherence`: label entropy of top-activating inputs, input-pixel association and feature
  visualisation, against random groups;
* :func:`neuron_report`: all of it, with a per-group table.

Activations are captured, lesions applied and feature visualisations run through
:class:`dyngraph.capture.LayerTaps`. Figures and TensorBoard logs: ``dg.plot(report)`` and
``dg.log(writer, report)`` (a :class:`ClusterabilityResult` is drawn too).
"""
from ._clusterability import ClusterabilityResult, clusterability, shuffle_weights
from ._coherence import CoherenceResult, coherence, label_entropy
from ._graph import neuron_graph, rank_average, spearman_matrix
from ._groups import NeuronGroup, neuron_groups
from ._importance import ImportanceResult, LesionRunner, lesion_importance
from ._report import NeuronReport, neuron_report
from ._spectral import kmeans, ncut, spectral_embedding, spectral_partition
from ._stats import benjamini_hochberg, empirical_p, fisher_combine, percentile_of

__all__ = ["ClusterabilityResult", "CoherenceResult", "ImportanceResult", "LesionRunner",
           "NeuronGroup", "NeuronReport", "benjamini_hochberg", "clusterability", "coherence",
           "empirical_p", "fisher_combine", "kmeans", "label_entropy", "lesion_importance", "ncut",
           "neuron_graph", "neuron_groups", "neuron_report", "percentile_of", "rank_average",
           "shuffle_weights", "spearman_matrix", "spectral_embedding", "spectral_partition"]
