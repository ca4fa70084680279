"""Drawers and TensorBoard loggers of neural collapse and the Layer-Peeled Model:
:class:`~dyngraph.measures.CollapseHistory` (metrics over training),
:class:`~dyngraph.theory.LayerPeeledSolution` (cosine Grams, beside a trained network's) and
:class:`~dyngraph.theory.MinorityCollapseCurve` (metrics over imbalance ratios)."""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..measures._collapse import CollapseHistory, parse_classifier
from ..theory._lpm import LayerPeeledSolution, MinorityCollapseCurve
from ._dispatch import register_log, register_plot
from ._figures import profile_table
from ._plot import new_figure


def _axes_list(axes: Any) -> List[Any]:
    return list(axes.flat) if hasattr(axes, "flat") else [axes]


def _one_panel(ax: Any, names: Sequence[str]) -> None:
    if ax is not None and len(names) > 1:
        raise ValueError(f"ax= draws one panel; choose one metric with metrics=[...] (this "
                         f"draws {list(names)})")


def _figure(writer: Any) -> bool:
    return callable(getattr(writer, "add_figure", None))


# ---------------------------------------------------------------------------- over training
@register_plot(CollapseHistory)
def plot_collapse_history(history: CollapseHistory, ax: Any = None,
                          metrics: Sequence[str] = ("nc1", "nc2_equiangular", "nc3", "nc4"),
                          layers: Union[None, str, Sequence[str]] = None,
                          title: Optional[str] = None) -> Any:
    """Metrics against epoch, one panel each (log scale when positive), one line per layer
    (default: the classifier's input, :attr:`CollapseHistory.default_layer`). Metrics a layer
    never had are skipped."""
    chosen = ([history.default_layer] if layers is None
              else [layers] if isinstance(layers, str) else list(layers))
    panels: List[Tuple[str, List[Tuple[str, Tensor]]]] = []
    for m in [metrics] if isinstance(metrics, str) else metrics:
        lines = []
        for layer in chosen:
            try:
                lines.append((layer, history.series(m, layer)))
            except ValueError:
                continue
        if lines:
            panels.append((m, lines))
    if not panels:
        raise ValueError(f"none of metrics={list(metrics)} is recorded at layers {chosen}")
    _one_panel(ax, [m for m, _ in panels])
    fig, axes = new_figure((3.2 * len(panels) + 0.6, 3.0), ax=ax, ncols=len(panels))
    for a, (m, lines) in zip(_axes_list(axes), panels):
        for layer, vals in lines:
            a.plot(history.epochs, vals.tolist(), marker="o", ms=3, label=layer,
                   color=f"C{chosen.index(layer) % 10}")
        finite = torch.cat([v[~v.isnan()] for _, v in lines])
        if bool((finite > 0).all()):
            a.set_yscale("log")
        a.set_xlabel("epoch")
        a.set_title(m if len(chosen) > 1 else f"{m} ({chosen[0]})", fontsize=8)
        a.grid(alpha=0.3)
        if len(chosen) > 1:
            a.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


@register_log(CollapseHistory)
def log_collapse_history(writer: Any, history: CollapseHistory, prefix: str,
                         figure: bool = True, epochs: Optional[Sequence[int]] = None) -> None:
    """Scalars ``'<prefix>/<metric>/<layer>'`` at step = epoch (undefined values skipped), the
    epoch's table as ``'<prefix>/layers'`` at that step, the figure as ``'<prefix>/figure'``.
    ``epochs`` limits the scalars and tables to those epochs (the callback logs its newest)."""
    for e in history.epochs if epochs is None else epochs:
        p = history[e]
        for j, metric in enumerate(p.metrics):
            for i, layer in enumerate(p.layers):
                v = float(p.samples[0, i, j])
                if not math.isnan(v):
                    writer.add_scalar(f"{prefix}/{metric}/{layer}", v, global_step=e)
        writer.add_text(f"{prefix}/layers", profile_table(p), global_step=e)
    if figure and _figure(writer) and len(history):
        writer.add_figure(f"{prefix}/figure", plot_collapse_history(history, title=prefix),
                          global_step=history.epochs[-1])


# ---------------------------------------------------------------------------- Layer-Peeled Model
def _cosine_gram(m: Tensor) -> Tensor:
    m = m.detach().to("cpu", torch.float64)
    m = m / m.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return m @ m.T


@register_plot(LayerPeeledSolution)
def plot_layer_peeled(solution: LayerPeeledSolution, ax: Any = None, classifier: Any = None,
                      means: Optional[Tensor] = None, title: Optional[str] = None) -> Any:
    """Cosine Grams of the model's ``W`` and ``H``; with ``classifier`` (``nn.Linear`` /
    ``W [K, D]`` / ``(W, b)`` of a trained network) and/or ``means`` (its centred class means
    ``[K, D]``), each beside the model's prediction."""
    if ax is not None:
        raise ValueError("a LayerPeeledSolution is drawn on several panels; ax= is not supported")
    k = solution.num_classes
    panels: List[Tuple[str, Tensor]] = []
    if classifier is not None:
        w = parse_classifier(classifier, None, k)
        assert w is not None
        panels += [("trained W", w[0]), ("Layer-Peeled W", solution.W)]
    if means is not None:
        if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[0] != k:
            raise ValueError(f"means must be the class means [K={k}, D], got "
                             f"{tuple(means.shape) if isinstance(means, Tensor) else means!r}")
        panels += [("trained class means", means), ("Layer-Peeled H", solution.H)]
    panels = panels or [("Layer-Peeled W", solution.W), ("Layer-Peeled H", solution.H)]
    fig, axes = new_figure((3.1 * len(panels) + 0.8, 3.0), ncols=len(panels))
    axes = _axes_list(axes)
    im = None
    for a, (name, m) in zip(axes, panels):
        im = a.imshow(_cosine_gram(m).numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
        a.set_title(name, fontsize=9)
        a.set_xticks(range(k))
        a.set_yticks(range(k))
        a.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes[-1], fraction=0.046, label="cosine")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


@register_log(LayerPeeledSolution)
def log_layer_peeled(writer: Any, solution: LayerPeeledSolution, prefix: str,
                     figure: bool = True) -> None:
    """Scalars ``'<prefix>/loss'``, ``'/gap'``, ``'/etf_distance_W'``, ``'/etf_distance_H'`` and,
    with a minority, the minority-collapse metrics (step 0); the settings as
    ``'<prefix>/summary'``; the Grams as ``'<prefix>/figure'``."""
    scalars = {"loss": solution.loss, "gap": solution.gap}
    scalars.update({f"etf_distance_{n}": v for n, v in solution.etf_distance().items()})
    if len(solution.minority_classes()) >= 2:
        scalars.update({k: v for k, v in solution.minority_collapse().items()
                        if not k.startswith("n_")})
    for name, v in scalars.items():
        writer.add_scalar(f"{prefix}/{name}", float(v), global_step=0)
    writer.add_text(f"{prefix}/summary", f"{solution!r}\n\ncounts: {solution.counts.tolist()}")
    if figure and _figure(writer):
        writer.add_figure(f"{prefix}/figure", plot_layer_peeled(solution, title=prefix))


# ---------------------------------------------------------------------------- minority collapse
def _curve_metrics(curves: Sequence[MinorityCollapseCurve],
                   metrics: Union[None, str, Sequence[str]]) -> List[str]:
    if metrics is not None:
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        for m in names:
            if not any(m in c.values for c in curves):
                raise ValueError(f"metrics: no curve has {m!r}; they have "
                                 f"{sorted({k for c in curves for k in c.metrics})}")
        return names
    seen = list(dict.fromkeys(k for c in curves for k in c.metrics))
    return [k for k in seen if "_cos_" in k and k.startswith("minority")] or seen[:1]


@register_plot(MinorityCollapseCurve)
def plot_minority_curves(curves: Union[MinorityCollapseCurve, Sequence[MinorityCollapseCurve]],
                         ax: Any = None, metrics: Union[None, str, Sequence[str]] = None,
                         labels: Optional[Sequence[str]] = None,
                         title: Optional[str] = None) -> Any:
    """Each metric against the imbalance ratio (log axis), one panel per metric (default: the
    minority cosines), several curves overlaid (``labels=`` names them; default
    ``meta['label']`` or ``meta['source']``). Cosine panels show the balanced simplex value
    ``−1/(K−1)`` when ``meta['num_classes']`` is known."""
    cs = [curves] if isinstance(curves, MinorityCollapseCurve) else list(curves)
    if labels is not None and len(labels) != len(cs):
        raise ValueError(f"labels has {len(labels)} entries for {len(cs)} curves")
    names = _curve_metrics(cs, metrics)
    _one_panel(ax, names)
    fig, axes = new_figure((5.5 * len(names), 4.0), ax=ax, ncols=len(names))
    markers = "os^v<>Dp"
    for a, m in zip(_axes_list(axes), names):
        for i, c in enumerate(cs):
            if m in c.values:
                lab = labels[i] if labels else c.meta.get("label", c.meta.get("source",
                                                                              f"curve {i}"))
                a.plot(c.ratios, c[m], marker=markers[i % len(markers)], label=lab)
        k = next((c.meta["num_classes"] for c in cs if "num_classes" in c.meta), None)
        if "_cos_" in m and k:
            a.axhline(-1.0 / (int(k) - 1), color="gray", lw=0.8, ls=":", label="simplex ETF")
        a.set_xscale("log")
        a.set_xlabel("imbalance ratio R = n_A / n_B")
        a.set_ylabel(m)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    if title:
        _axes_list(axes)[0].set_title(title)
    return fig


@register_log(MinorityCollapseCurve)
def log_minority_curve(writer: Any, curve: MinorityCollapseCurve, prefix: str,
                       figure: bool = True) -> None:
    """Scalars ``'<prefix>/<metric>'`` at step = ratio index, the ratios and values as the
    table ``'<prefix>/ratios'``, the figure as ``'<prefix>/figure'``."""
    for m in curve.metrics:
        for i, v in enumerate(curve[m]):
            writer.add_scalar(f"{prefix}/{m}", float(v), global_step=i)
    head = "| step | ratio | " + " | ".join(curve.metrics) + " |"
    rows = [f"| {i} | {r:g} | " + " | ".join(f"{curve[m][i]:.4f}" for m in curve.metrics) + " |"
            for i, r in enumerate(curve.ratios)]
    writer.add_text(f"{prefix}/ratios", "\n".join([head, "|" + "---|" * (len(curve.metrics) + 2)]
                                                  + rows))
    if figure and _figure(writer):
        writer.add_figure(f"{prefix}/figure", plot_minority_curves(curve, title=prefix))
