"""Drawers and TensorBoard loggers of the neuron-level results (:mod:`dyngraph.neurons`):
:class:`~dyngraph.neurons.NeuronReport` and :class:`~dyngraph.neurons.ClusterabilityResult`, both
drawn as the spectral partition of their neuron graph."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

import torch
from torch import Tensor

from .._validate import check_labels, check_positive_int, compact_labels
from ..neurons._clusterability import ClusterabilityResult
from ..neurons._report import NeuronReport
from ._dispatch import register_log, register_plot
from ._plot import new_figure

if TYPE_CHECKING:
    from torch_geometric.data import Data


def _draw_partition(data: Data, clusters: Tensor, ax: Any, max_edges: int, title: str,
                    highlight: Optional[Tensor]) -> Any:
    """A neuron graph layer by layer, nodes coloured by cluster.

    Layers run left to right; within a layer the neurons are sorted by cluster, so a cluster shows
    as a coloured band. The ``max_edges`` heaviest edges are drawn, with opacity ∝ weight, in the
    cluster's colour when both ends share a cluster and grey otherwise; ``highlight``
    ``[num_nodes]`` (bool) nodes are circled in black. Cluster ids only name clusters: the
    ``c``-th smallest id gets colour ``c`` (``{0, 1, 10**9}`` draws as ``{0, 1, 2}``).
    """
    import matplotlib
    from matplotlib.collections import LineCollection
    check_positive_int(max_edges, "max_edges")
    # ids, not sizes: the colours and the sort key run over the clusters present
    clusters = compact_labels(check_labels(clusters, data.num_nodes, "clusters").cpu())[0]
    if highlight is not None and (not isinstance(highlight, Tensor)
                                  or highlight.shape != (data.num_nodes,)):
        raise ValueError(f"highlight must be a bool tensor [num_nodes={data.num_nodes}], got "
                         f"{type(highlight).__name__} "
                         f"{tuple(getattr(highlight, 'shape', ()))}")
    layer, neuron = data.layer.cpu(), data.neuron.cpu()
    n_layers = len(data.layer_names)
    y = torch.zeros(data.num_nodes)
    for li in range(n_layers):
        idx = (layer == li).nonzero().flatten()
        order = torch.argsort(clusters[idx] * (int(neuron.max()) + 1) + neuron[idx])
        y[idx[order]] = torch.linspace(0, 1, idx.numel()) if idx.numel() != 1 else 0.5
    x = layer.float()
    fig, ax = new_figure((max(6.0, 1.6 * n_layers + 2), 5.5), ax=ax)
    k = int(clusters.max()) + 1
    cmap = matplotlib.colormaps["tab20" if k > 10 else "tab10"]
    colours = [cmap(i % cmap.N) for i in range(k)]
    ei = data.edge_index.cpu()
    w = data.edge_weight.cpu().double() if data.edge_weight is not None else \
        torch.ones(ei.shape[1], dtype=torch.float64)
    once = ei[0] < ei[1]
    ei, w = ei[:, once], w[once]
    if w.numel():
        top = w.topk(min(max_edges, w.numel())).indices
        ei, w = ei[:, top], w[top]
        alpha = (w / w.max()).clamp(0.03, 1.0) * 0.6
        # Adjacent layers: straight lines. Within a layer: an arc to the right; across several
        # layers: an arc above, so that the line does not run through the layers in between.
        p0, p1 = torch.stack([x, y], 1)[ei]  # [E, 2] each
        span = (p1[:, 0] - p0[:, 0]).abs()
        ctrl = (p0 + p1) / 2
        ctrl[:, 0] += torch.where(span == 0, 0.25 + 0.3 * (p1[:, 1] - p0[:, 1]).abs(),
                                  torch.zeros_like(span))
        ctrl[:, 1] += torch.where(span > 1, 0.08 * span, torch.zeros_like(span))
        t = torch.linspace(0, 1, 9).view(1, -1, 1)
        segs = ((1 - t) ** 2 * p0.unsqueeze(1) + 2 * t * (1 - t) * ctrl.unsqueeze(1)
                + t ** 2 * p1.unsqueeze(1)).numpy()
        same = clusters[ei[0]] == clusters[ei[1]]
        cols = [(*colours[int(clusters[a])][:3], float(al)) if s else (0.5, 0.5, 0.5, float(al))
                for a, s, al in zip(ei[0].tolist(), same.tolist(), alpha.tolist())]
        ax.add_collection(LineCollection(list(segs), colors=cols, linewidths=0.6, zorder=1))
    ax.scatter(x.numpy(), y.numpy(), c=[colours[int(c)] for c in clusters], s=14, zorder=2,
               edgecolors="none")
    if highlight is not None:
        hl = highlight.cpu().bool()
        ax.scatter(x[hl].numpy(), y[hl].numpy(), s=30, facecolors="none", edgecolors="black",
                   linewidths=0.7, zorder=3)
    ax.set(xticks=range(n_layers), yticks=[], xlim=(-0.5, n_layers - 0.5),
           ylim=(-0.05, 1.05 + (0.08 * (n_layers - 1) if n_layers > 2 else 0.0)),
           xlabel="layer", ylabel="neurons (sorted by cluster)", title=title)
    ax.set_xticklabels(data.layer_names, rotation=30, ha="right", fontsize=8)
    return fig


def _log(writer: Any, prefix: str, scalars: Dict[str, Any], bullets: Dict[str, Any], text: str,
         figure: Optional[Callable[[], Any]]) -> None:
    """Every finite number of ``scalars`` as a scalar ``'<prefix>/<name>'`` (step 0: these are
    numbers of the whole network, not of a layer), ``bullets`` (then ``text``) as the text
    ``'<prefix>/layers'``, and ``figure()`` as ``'<prefix>/figure'`` when the writer draws."""
    for name, v in scalars.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            writer.add_scalar(f"{prefix}/{name}", float(v), global_step=0)
    writer.add_text(f"{prefix}/layers",
                    "\n".join(f"- **{k}**: {v}" for k, v in bullets.items()) + text)
    if figure is not None and callable(getattr(writer, "add_figure", None)):
        writer.add_figure(f"{prefix}/figure", figure())


@register_plot(NeuronReport)
def plot_neuron_report(report: NeuronReport, ax: Any = None, max_edges: int = 4000,
                       title: Optional[str] = None, highlight: Optional[Tensor] = None) -> Any:
    """The report's partition on the layer graph (neurons sorted by cluster within each layer);
    the groups flagged important (``report.highlight()``, or ``highlight``) are circled."""
    s = report.summary()
    title = title or (
        f"{s['source']} graph: {s['n_nodes']} neurons, {s['n_clusters']} clusters, "
        f"n-cut {s['ncut']:.3f}" + (f" (shuffled {s['ncut_shuffled_mean']:.3f}, "
                                    f"p={s['clusterability_p']:.3g})"
                                    if "clusterability_p" in s else ""))
    return _draw_partition(report.graph, report.clusters, ax, max_edges, title,
                           report.highlight() if highlight is None else highlight)


@register_log(NeuronReport)
def log_neuron_report(writer: Any, report: NeuronReport, prefix: str,
                      figure: bool = True) -> None:
    """Scalars ``'<prefix>/<summary key>'`` (n-cut, shuffle test, counts and shares), the summary
    and the group table as text ``'<prefix>/layers'``, the partition as ``'<prefix>/figure'``."""
    s = report.summary()
    _log(writer, prefix, s, s, "\n\n" + report.to_markdown(),
         (lambda: plot_neuron_report(report)) if figure else None)


@register_plot(ClusterabilityResult)
def plot_clusterability(result: ClusterabilityResult, ax: Any = None, max_edges: int = 4000,
                        title: Optional[str] = None) -> Any:
    """The network's partition on the layer graph, titled with its n-cut against the shuffles."""
    g = result.graph
    title = title or (f"{g.source} graph: {int(g.num_nodes)} neurons, {result.n_clusters} "
                      f"clusters, n-cut {result.ncut:.3f} (shuffled {result.shuffled_mean:.3f}, "
                      f"p={result.p_value:.3g})")
    return _draw_partition(g, result.clusters, ax, max_edges, title, None)


@register_log(ClusterabilityResult)
def log_clusterability(writer: Any, result: ClusterabilityResult, prefix: str,
                       figure: bool = True) -> None:
    """Scalars ``'<prefix>/ncut'``, ``shuffled_mean``, ``shuffled_std``, ``p_value``,
    ``z_score``; the settings as text ``'<prefix>/layers'``; the partition as
    ``'<prefix>/figure'``."""
    d = result.to_dict()
    _log(writer, prefix, {k: d[k] for k in ("ncut", "shuffled_mean", "shuffled_std", "p_value",
                                            "z_score", "n_shuffles")},
         {"layers": result.graph.layer_names, **result.meta}, "",
         (lambda: plot_clusterability(result)) if figure else None)
