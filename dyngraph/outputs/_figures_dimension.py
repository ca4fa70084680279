"""Drawers and TensorBoard loggers of the intrinsic-dimension results: :class:`IDPhases` (the ID
curve with its expansion and compression phases, optionally beside other profiles) and
:class:`BlockAnalysis` (ID against block size)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..measures._dimension import BlockAnalysis, IDPhases
from ..profiles._profile import DepthProfile
from ._dispatch import register_log, register_plot
from ._plot import new_figure

Profiles = Union[None, DepthProfile, Sequence[DepthProfile]]


def _one(result: Any, cls: type, what: str) -> Any:
    if isinstance(result, (list, tuple)):
        raise TypeError(f"{what} takes one {cls.__name__} at a time, got a list of "
                        f"{len(result)}")
    return result


def _series(phases: IDPhases, profiles: Profiles) -> List[Tuple[DepthProfile, str]]:
    """``(profile, metric)`` per metric of ``profiles`` (each name once), then the ID."""
    profs = [] if profiles is None else (
        [profiles] if isinstance(profiles, DepthProfile) else list(profiles))
    first: Dict[str, DepthProfile] = {}  # each metric from the first profile that has it
    for i, p in enumerate(profs):
        if not isinstance(p, DepthProfile):
            raise TypeError(f"profiles[{i}] must be a dg.DepthProfile, got {type(p).__name__}")
        for m in p.metrics:
            first.setdefault(m, p)
    first.pop(phases.estimator, None)
    return [(p, m) for m, p in first.items()] + [(phases.profile, phases.estimator)]


@register_plot(IDPhases)
def plot_id_phases(phases: IDPhases, ax: Any = None, profiles: Profiles = None,
                   labels: Optional[Sequence[str]] = None, title: Optional[str] = None) -> Any:
    """The ID curve (mean ± std) with the expansion phase shaded green, the compression phase
    red and the peak dotted. With ``profiles`` (DepthProfiles of modularity, NC1, …) each of
    their metrics gets a panel above the ID, sharing the layer axis and the shading wherever the
    panel has the phases' layers. ``labels`` are the panels' y-labels (default: metric names)."""
    phases = _one(phases, IDPhases, "plot")
    series = [(p, m) for p, m in _series(phases, profiles) if ":" not in m]
    if ax is not None and len(series) > 1:
        raise ValueError(f"ax= draws one panel; leave profiles out to draw into ax (profiles "
                         f"add {len(series) - 1} panels)")
    if labels is not None and len(labels) != len(series):
        raise ValueError(f"labels has {len(labels)} entries for {len(series)} panels")
    width = max(6.0, min(16.0, 0.45 * max(len(p) for p, _ in series) + 3))
    fig, axes = new_figure((width, 2.2 * len(series) + 1.0), ax=ax, nrows=len(series))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    marked = phases.expansion + phases.compression + [phases.peak_layer]
    for i, (a, (p, metric)) in enumerate(zip(axes, series)):
        one = p[metric]
        xs = list(range(len(p)))
        a.plot(xs, one.values.tolist(), marker="o", color=f"C{i}")
        if p.repeats > 1:
            a.fill_between(xs, (one.values - one.errors).tolist(),
                           (one.values + one.errors).tolist(), alpha=0.2, color=f"C{i}")
        a.set_ylabel(labels[i] if labels else metric)
        a.grid(alpha=0.3)
        pos = {name: j for j, name in enumerate(p.layers)}
        if all(name in pos for name in marked):
            for part, color in ((phases.expansion, "tab:green"),
                                (phases.compression, "tab:red")):
                if part:
                    a.axvspan(pos[part[0]], pos[part[-1]], color=color, alpha=0.12, lw=0)
            a.axvline(pos[phases.peak_layer], color="k", ls=":", lw=1)
        a.set_xticks(xs)
        a.set_xticklabels(p.layers if i == len(series) - 1 else [], rotation=60, ha="right",
                          fontsize=7)
    axes[-1].set_xlabel("layer")
    axes[0].set_title(title or f"ID phases ({phases.estimator}): {phases.shape}, peak at "
                               f"{phases.peak_layer}", fontsize=9)
    return fig


@register_log(IDPhases)
def log_id_phases(writer: Any, phases: IDPhases, prefix: str, figure: bool = True,
                  profiles: Profiles = None) -> None:
    """Scalars ``'<prefix>/<metric>'`` (step = layer index; ``'<metric>_std'`` with repeats) for
    the ID and every metric of ``profiles``; the phases as scalars
    ``'<prefix>/id_phases/{peak_index, peak_value, rise, fall, hunchback}'``; a text table
    ``'<prefix>/layers'`` (summary, each layer's ID and phase); the figure ``'<prefix>/figure'``."""
    phases = _one(phases, IDPhases, "log")
    for p, metric in _series(phases, profiles):
        one = p[metric]
        for i in range(len(p)):
            writer.add_scalar(f"{prefix}/{metric}", float(one.values[i]), global_step=i)
            if p.repeats > 1:
                writer.add_scalar(f"{prefix}/{metric}_std", float(one.errors[i]), global_step=i)
    tag = f"{prefix}/id_phases"
    for key in ("peak_index", "peak_value", "rise", "fall"):
        writer.add_scalar(f"{tag}/{key}", float(getattr(phases, key)), global_step=0)
    writer.add_scalar(f"{tag}/hunchback", float(phases.shape == "hunchback"), global_step=0)
    one = phases.profile
    rows = [f"| {i} | {name} | {float(one.values[i]):.4f} | {float(one.errors[i]):.4f} | "
            + ("expansion " if name in phases.expansion else "")
            + ("compression" if name in phases.compression else "") + " |"
            for i, name in enumerate(phases.layers)]
    writer.add_text(f"{prefix}/layers", f"**{phases.summary()}**\n\n"
                    f"| step | layer | {phases.estimator} | std | phase |\n|---|---|---|---|---|\n"
                    + "\n".join(rows))
    if figure and callable(getattr(writer, "add_figure", None)):
        writer.add_figure(f"{prefix}/figure", plot_id_phases(phases, profiles=profiles))


@register_plot(BlockAnalysis)
def plot_block_analysis(results: Union[BlockAnalysis, Sequence[BlockAnalysis]], ax: Any = None,
                        labels: Optional[Sequence[str]] = None,
                        title: Optional[str] = None) -> Any:
    """ID against points per block (log x axis) with ± std bars; several analyses (e.g. one per
    estimator) are overlaid, labelled by ``labels`` or their estimators."""
    res = [results] if isinstance(results, BlockAnalysis) else list(results)
    if labels is not None and len(labels) != len(res):
        raise ValueError(f"labels has {len(labels)} entries for {len(res)} block analyses")
    fig, a = new_figure((5.0, 3.5), ax=ax)
    for i, b in enumerate(res):
        a.errorbar(b.block_size, b.mean, yerr=b.std, marker="o", capsize=3,
                   label=labels[i] if labels else b.estimator)
    a.set_xscale("log")
    a.set_xlabel("points per block (N)")
    a.set_ylabel(f"ID ({res[0].estimator})" if len(res) == 1 else "ID")
    a.grid(alpha=0.3)
    if len(res) > 1 or labels:
        a.legend(fontsize=8)
    if title:
        a.set_title(title)
    return fig


@register_log(BlockAnalysis)
def log_block_analysis(writer: Any, b: BlockAnalysis, prefix: str, figure: bool = True) -> None:
    """Scalars ``'<prefix>/<estimator>'`` and ``'<prefix>/<estimator>_std'`` at step = points per
    block; a text table ``'<prefix>/blocks'`` (levels and ``relative_change``); the figure
    ``'<prefix>/figure'``."""
    b = _one(b, BlockAnalysis, "log")
    for size, mean, std in zip(b.block_size, b.mean, b.std):
        writer.add_scalar(f"{prefix}/{b.estimator}", float(mean), global_step=int(size))
        writer.add_scalar(f"{prefix}/{b.estimator}_std", float(std), global_step=int(size))
    rows = [f"| {nb} | {size} | {mean:.4f} | {std:.4f} |"
            for nb, size, mean, std in zip(b.n_blocks, b.block_size, b.mean, b.std)]
    writer.add_text(f"{prefix}/blocks", f"**{b.estimator}**, relative change "
                    f"{b.relative_change():+.3f}\n\n| blocks | points per block | mean | std |\n"
                    "|---|---|---|---|\n" + "\n".join(rows))
    if figure and callable(getattr(writer, "add_figure", None)):
        writer.add_figure(f"{prefix}/figure", plot_block_analysis(b))
