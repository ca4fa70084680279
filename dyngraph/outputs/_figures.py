"""Drawers and TensorBoard loggers of the spine's results: :class:`DepthProfile` and
:class:`LayerMatrix`."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

from ..profiles._profile import DepthProfile, LayerMatrix
from ._dispatch import register_log, register_plot
from ._plot import new_figure


def _base_metrics(p: DepthProfile, metrics: Optional[Sequence[str]]) -> List[str]:
    if metrics is None:
        return [m for m in p.metrics if ":" not in m]
    if isinstance(metrics, str):
        metrics = [metrics]
    for m in metrics:
        if m not in p.metrics:
            raise ValueError(f"metrics: {m!r} is not in the profile's metrics {p.metrics}")
    return list(metrics)


@register_plot(DepthProfile)
def plot_profiles(profiles: Union[DepthProfile, Sequence[DepthProfile]], ax: Any = None,
                  metrics: Optional[Sequence[str]] = None,
                  labels: Optional[Sequence[str]] = None, title: Optional[str] = None,
                  null: bool = True, band: bool = True, ylim_from_zero: bool = False) -> Any:
    """Mean ± std over depth, one panel per metric; several profiles are overlaid. A metric's
    null (``'<m>:null_mean'`` ± 2 ``'<m>:null_std'``) is drawn as a grey chance band."""
    profs = [profiles] if isinstance(profiles, DepthProfile) else list(profiles)
    if labels is not None and len(labels) != len(profs):
        raise ValueError(f"labels has {len(labels)} entries for {len(profs)} profiles")
    names = _base_metrics(profs[0], metrics)
    longest = max(profs, key=len)
    width = max(6.0, min(16.0, 0.45 * len(longest) + 3))
    if ax is not None and len(names) > 1:
        raise ValueError(f"ax= draws one panel; choose one metric with metrics=[...] (this "
                         f"profile has {names})")
    fig, axes = new_figure((width, 3.4 * len(names)), ax=ax, nrows=len(names))
    axes = [axes] if not isinstance(axes, (list, tuple)) and not hasattr(axes, "__len__") \
        else list(axes)
    for a, metric in zip(axes, names):
        for i, p in enumerate(profs):
            if metric not in p.metrics:
                raise ValueError(f"profile {i} has no metric {metric!r}")
            xs = list(range(len(p)))
            one = p[metric]
            lab = labels[i] if labels else p.meta.get("label", metric if len(profs) == 1
                                                      else f"profile {i}")
            line = a.plot(xs, one.values.tolist(), marker="o", label=lab)[0]
            if band and p.repeats > 1:
                lo, hi = one.values - one.errors, one.values + one.errors
                a.fill_between(xs, lo.tolist(), hi.tolist(), alpha=0.2, color=line.get_color())
            nm, ns = f"{metric}:null_mean", f"{metric}:null_std"
            if null and nm in p.metrics:
                mu, sd = p[nm].values, p[ns].values
                a.fill_between(xs, (mu - 2 * sd).tolist(), (mu + 2 * sd).tolist(), alpha=0.15,
                               color="grey", label="chance (null ± 2 sd)" if i == 0 else None)
        a.set_xticks(range(len(longest)))
        a.set_xticklabels(longest.layers, rotation=60, ha="right", fontsize=7)
        a.set_ylabel(metric)
        if ylim_from_zero:
            a.set_ylim(bottom=min(0.0, a.get_ylim()[0]))
        a.grid(alpha=0.3)
        if len(profs) > 1 or labels or any(f"{metric}:null_mean" in p.metrics for p in profs):
            a.legend(fontsize=8)
    axes[-1].set_xlabel("layer")
    if title:
        axes[0].set_title(title)
    return fig


def profile_table(p: DepthProfile) -> str:
    head = "| step | layer | " + " | ".join(p.metrics) + " |"
    sep = "|" + "---|" * (len(p.metrics) + 2)
    rows = [f"| {i} | {n} | " + " | ".join(f"{v:.4f}" for v in p.mean[i].tolist()) + " |"
            for i, n in enumerate(p.layers)]
    return "\n".join([head, sep] + rows)


def _settings(meta: dict) -> str:
    return "\n".join(f"- **{k}**: {v}" for k, v in meta.items() if k not in ("layers", "points"))


@register_log(DepthProfile)
def log_profile(writer: Any, p: DepthProfile, prefix: str, figure: bool = True) -> None:
    mean, std = p.mean, p.std
    for j, metric in enumerate(p.metrics):
        for i in range(len(p)):
            writer.add_scalar(f"{prefix}/{metric}", float(mean[i, j]), global_step=i)
            if p.repeats > 1:
                writer.add_scalar(f"{prefix}/{metric}_std", float(std[i, j]), global_step=i)
    writer.add_text(f"{prefix}/layers", f"{_settings(p.meta)}\n\n{profile_table(p)}")
    if figure and callable(getattr(writer, "add_figure", None)):
        writer.add_figure(f"{prefix}/figure", plot_profiles(p, title=prefix))


@register_plot(LayerMatrix)
def plot_matrix(m: LayerMatrix, ax: Any = None, metrics: Optional[Sequence[str]] = None,
                title: Optional[str] = None, annotate: Optional[bool] = None,
                cmap: Optional[str] = None, vmin: Optional[float] = None,
                vmax: Optional[float] = None, alpha: float = 0.05,
                xlabel: Optional[str] = None, ylabel: Optional[str] = None) -> Any:
    """One heatmap per metric (rows: layers of A, columns: layers of B). With a permutation
    p-value metric ``'<m>:p'``, cells with ``p <= alpha`` carry a ``*``: the permutation test at
    level ``alpha`` (the smallest p is ``1/(P + 1)``, so ``P >= 1/alpha − 1`` permutations are
    needed to mark any cell)."""
    names = [x for x in m.metrics if not x.endswith(":p")] if metrics is None else list(metrics)
    for x in names:
        if x not in m.metrics:
            raise ValueError(f"metrics: {x!r} is not in the matrix's metrics {m.metrics}")
    if ax is not None and len(names) > 1:
        raise ValueError(f"ax= draws one panel; choose one metric with metrics=[...] ({names})")
    side = max(3.5, min(12.0, 0.35 * max(len(m.rows), len(m.cols)) + 2))
    fig, axes = new_figure((side * len(names) + 1, side), ax=ax, ncols=len(names))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    models = m.meta.get("models") or ["A", "B"]
    for a, metric in zip(axes, names):
        v = m[metric]
        dist = bool(m.meta.get("distance", {}).get(metric, False))
        lo = vmin if vmin is not None else (0.0 if dist else min(0.0, float(v.min())))
        hi = vmax if vmax is not None else (None if dist else 1.0)
        im = a.imshow(v.numpy(), cmap=cmap or ("viridis_r" if dist else "viridis"),
                      aspect="auto", interpolation="nearest", vmin=lo, vmax=hi)
        fig.colorbar(im, ax=a, fraction=0.046).set_label(metric)
        a.set_yticks(range(len(m.rows)))
        a.set_yticklabels(m.rows, fontsize=7)
        a.set_xticks(range(len(m.cols)))
        a.set_xticklabels(m.cols, rotation=60, ha="right", fontsize=7)
        a.set_title(title or metric, fontsize=9)
        a.set_xlabel(xlabel or f"layers of {models[-1]}")
        a.set_ylabel(ylabel or f"layers of {models[0]}")
        p = m[f"{metric}:p"] if f"{metric}:p" in m.metrics else None
        if annotate or (annotate is None and v.numel() <= 100):
            top = float(v.abs().max()) or 1.0
            for i in range(v.shape[0]):
                for j in range(v.shape[1]):
                    val = float(v[i, j])
                    star = "*" if p is not None and float(p[i, j]) <= alpha else ""
                    light = (val < 0.5 * top) != dist
                    a.text(j, i, f"{val:.2f}{star}", ha="center", va="center", fontsize=6,
                           color="white" if light else "black")
    return fig


@register_log(LayerMatrix)
def log_matrix(writer: Any, m: LayerMatrix, prefix: str, figure: bool = True) -> None:
    for k, metric in enumerate(m.metrics):
        head = "| | " + " | ".join(m.cols) + " |\n|" + "---|" * (len(m.cols) + 1)
        rows = [f"| {r} | " + " | ".join(f"{float(v):.4f}" for v in m.values[i, :, k]) + " |"
                for i, r in enumerate(m.rows)]
        writer.add_text(f"{prefix}/{metric}", "\n".join([head] + rows))
    writer.add_text(f"{prefix}/layers", _settings(m.meta))
    if figure and callable(getattr(writer, "add_figure", None)):
        writer.add_figure(f"{prefix}/figure", plot_matrix(m))
