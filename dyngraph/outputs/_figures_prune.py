"""Drawer and TensorBoard logger of the pruning study's result,
:class:`~dyngraph.prune.StudyReport`: the modularity curve before pruning, the pruned and
fine-tuned model's curve at the kept layers' original positions, and the removed layers."""
from __future__ import annotations

from typing import Any, Optional

from ..prune._study import StudyReport
from ._dispatch import register_log, register_plot
from ._figures import log_profile
from ._plot import new_figure


@register_plot(StudyReport)
def plot_study(report: StudyReport, ax: Any = None, title: Optional[str] = None) -> Any:
    """The curve before pruning (mean ± std), the curve after pruning + fine-tuning at the kept
    layers' original positions (when the study computed it), and the layers the modularity rule
    removed (red crosses).

    Example:
        >>> import torch, dyngraph as dg
        >>> q = dg.DepthProfile(['stem', 'b1', 'b2'], 'modularity', torch.tensor([.2, .5, .51]))
        >>> r = dg.prune.StudyReport(curve=q.to_dict(), selections={'modularity': {'remove': [
        ...     {'layer': 'b2'}]}})
        >>> fig = dg.plot(r)
        >>> fig.axes[0].get_ylabel(), len(fig.axes[0].lines)
        ('modularity Q', 1)
    """
    before = report.profile
    after = report.profile_after
    fig, ax = new_figure((max(6.0, 0.45 * len(before) + 3), 4.0), ax=ax)
    pos = {n: i for i, n in enumerate(before.layers)}
    curves = [(before, list(range(len(before))), "o", "before pruning")]
    if after is not None:
        xa = [pos[n] for n in after.meta.get("original_layers", after.layers)]
        curves.append((after, xa, "s", "after pruning + fine-tuning"))
    for p, xs, marker, label in curves:  # mean ± std
        q, err = p.values, p.errors
        ax.plot(xs, q.tolist(), marker=marker, label=label)
        ax.fill_between(xs, (q - err).tolist(), (q + err).tolist(), alpha=0.2)
    removed = [pos[n] for n in report.removed]
    if removed:
        ax.scatter(removed, [float(before.values[i]) for i in removed], marker="x", s=80,
                   color="red", zorder=5, label="removed (modularity rule)")
    ax.set_xticks(range(len(before)))
    ax.set_xticklabels(before.layers, rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("modularity Q")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


@register_log(StudyReport)
def log_study(writer: Any, report: StudyReport, prefix: str, figure: bool = True) -> None:
    """Scalars ``'<prefix>/modularity'`` (before) and ``'<prefix>/modularity_after'`` (at the
    kept layers' original indices) at step = layer index, the layer table ``'<prefix>/layers'``,
    the results table ``'<prefix>/results'`` and the figure ``'<prefix>/figure'``.

    Example:
        >>> import tempfile, torch, dyngraph as dg
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> q = dg.DepthProfile(['stem', 'b1'], 'modularity', torch.tensor([.2, .5]))
        >>> with SummaryWriter(tempfile.mkdtemp()) as w:
        ...     dg.log(w, dg.prune.StudyReport(curve=q.to_dict()), prefix='study')
    """
    before = report.profile
    log_profile(writer, before, prefix, figure=False)
    after = report.profile_after
    if after is not None:
        pos = {n: i for i, n in enumerate(before.layers)}
        names = after.meta.get("original_layers", after.layers)
        for name, v in zip(names, after.values.tolist()):
            writer.add_scalar(f"{prefix}/{after.name}_after", v, global_step=pos[name])
    if "table" in report:
        writer.add_text(f"{prefix}/results", report["table"])
    if figure and callable(getattr(writer, "add_figure", None)):
        writer.add_figure(f"{prefix}/figure", plot_study(report, title=prefix))
