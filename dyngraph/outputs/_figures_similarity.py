"""Drawer and TensorBoard logger of a model comparison (:class:`dyngraph.compare.Comparison`):
every pair of models as a grid of layer × layer heatmaps, or one pair's annotated heatmap."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

from ..compare._compare import Comparison
from ._dispatch import register_log, register_plot
from ._figures import log_matrix, log_profile, plot_matrix
from ._plot import new_figure

LABELS = {"cka": "linear CKA", "cka_unbiased": "linear CKA (unbiased)",
          "cka_minibatch": "minibatch CKA", "knn_overlap": "kNN Jaccard overlap",
          "mutual_knn": "mutual kNN", "graph": "graph similarity (row cosine)",
          "modularity_distance": "|Q_i − Q_j|"}


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def _grid(c: Comparison, measure: str, ax: Any, title: Optional[str],
          cmap: Optional[str]) -> Any:
    n = len(c.names)
    if ax is not None and n > 1:
        raise ValueError(f"ax= draws one panel; the grid of {n} models has {n * n} (draw one "
                         f"pair with pair=(a, b))")
    if not c.matrices:
        raise ValueError("the comparison holds no matrix to draw")
    vals = [m[measure].flatten() for m in c.matrices.values()]
    lo = min(float(v.min()) for v in vals)
    hi = max(float(v.max()) for v in vals)
    distance = not c.higher_is_similar(measure)
    vmin, vmax = (0.0, hi) if distance else (min(0.0, lo), 1.0)
    fig, grid = new_figure((1.9 * n + 1.2, 1.8 * n + 0.8), ax=ax, nrows=n, ncols=n)
    axes: List[List[Any]] = [[grid]] if n == 1 else [list(row) for row in grid]
    im = None
    for i, a in enumerate(c.names):
        for j, b in enumerate(c.names):
            cell = axes[i][j]
            if (a, b) not in c.matrices:
                cell.axis("off")
                continue
            im = cell.imshow(c.matrices[(a, b)][measure].numpy(), vmin=vmin, vmax=vmax,
                             cmap=cmap or ("viridis_r" if distance else "viridis"),
                             aspect="auto")
            cell.set_xticks([])
            cell.set_yticks([])
            if i == 0 or i == j:
                cell.set_title(b, fontsize=7)
            if j == i or (j == i + 1 and (a, a) not in c.matrices):
                cell.set_ylabel(a, fontsize=7)
    label = LABELS.get(measure, measure)
    if im is not None:
        if n > 1:   # the bottom-left cell is never a computed pair: it holds the colour bar
            fig.colorbar(im, cax=axes[-1][0].inset_axes([0.45, 0.05, 0.1, 0.9]), label=label)
        else:
            fig.colorbar(im, ax=axes[0][0], fraction=0.046, pad=0.04, label=label)
    fig.suptitle(title or f"{label}: layer × layer, every pair of models (rows: first model's "
                          f"layers, top = input side)", fontsize=9)
    return fig


@register_plot(Comparison)
def plot_comparison(c: Comparison, ax: Any = None, metric: Optional[str] = None,
                    pair: Optional[Sequence[str]] = None, title: Optional[str] = None,
                    annotate: Optional[bool] = None, cmap: Optional[str] = None) -> Any:
    """One measure of a comparison: every pair of models as an upper-triangular grid of heatmaps
    on a shared colour scale (rows and columns: models), or with ``pair=(a, b)`` one annotated
    heatmap (``*``: permutation p <= 0.05).

    Args:
        c: A :class:`dyngraph.compare.Comparison`.
        ax: An axis to draw one pair (or a one-model grid) into.
        metric: The measure (default: the first computed).
        pair: Two model names: draw that pair alone (rows: ``a``'s layers).
        title: Replaces the default title.
        annotate: Write the values into the cells (``pair=`` only; default: up to 100 cells).
        cmap: Colour map (default ``viridis``, reversed for distances).

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
        >>> res = dg.compare.compare_models([{'l': x}, {'l': 2 * x}], measures=['cka'],
        ...                                 progress=False)
        >>> len(dg.plot(res).axes) >= 4
        True
        >>> dg.plot(res, pair=('features_0', 'features_1')).axes[0].get_xlabel()
        'features_1 layers'
    """
    measure = c.measures[0] if metric is None else metric
    if measure not in c.measures:
        raise ValueError(f"metric: {metric!r} was not computed; the comparison has {c.measures}")
    if pair is None:
        return _grid(c, measure, ax, title, cmap)
    if isinstance(pair, str) or len(pair) != 2:
        raise ValueError(f"pair must be two model names (a, b), got {pair!r}")
    a, b = str(pair[0]), str(pair[1])
    try:
        m = c.matrix(a, b)
    except KeyError as exc:
        raise ValueError(f"pair: {exc.args[0]}") from None
    return plot_matrix(m, ax=ax, metrics=[measure], annotate=annotate, cmap=cmap,
                       title=title or f"{LABELS.get(measure, measure)}: {a} vs {b}",
                       xlabel=f"{b} layers", ylabel=f"{a} layers")


@register_log(Comparison)
def log_comparison(writer: Any, c: Comparison, prefix: str, figure: bool = True,
                   per_pair: bool = False) -> None:
    """Per measure the grid figure ``'<prefix>/<measure>/figure'``; per pair of models its
    :class:`dyngraph.LayerMatrix` under ``'<prefix>/<a>_vs_<b>'`` (one text table per metric,
    the heatmaps too with ``per_pair``); per model its free profile under ``'<prefix>/<model>'``
    (scalars ``'<prefix>/<model>/<metric>'`` at step = layer index)."""
    if figure and callable(getattr(writer, "add_figure", None)):
        for measure in c.measures:
            writer.add_figure(f"{prefix}/{measure}/figure", _grid(c, measure, None, None, None))
    for (a, b), m in c.matrices.items():
        log_matrix(writer, m, f"{prefix}/{safe_name(a)}_vs_{safe_name(b)}",
                   figure=figure and per_pair)
    for name, p in c.profiles.items():
        log_profile(writer, p, f"{prefix}/{safe_name(name)}", figure=False)
