"""Figure helpers. Figures are built with matplotlib's object API (``matplotlib.figure.Figure``),
never through pyplot's global state: dyngraph never switches the user's backend, and a figure it
made and saved is freed with its last reference."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

from .._io import PathLike, atomic_write


def new_figure(figsize: Tuple[float, float] = (6.0, 4.0), ax: Any = None,
               nrows: int = 1, ncols: int = 1) -> Tuple[Any, Any]:
    """``(figure, axes)``: a fresh pyplot-free figure, or ``ax`` and its figure when given."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def save_figure(fig: Any, path: PathLike, dpi: int = 120) -> None:
    """Saves a figure atomically (PNG unless the suffix says otherwise)."""
    fmt = str(path).rsplit(".", 1)[-1] if "." in str(path).rsplit("/", 1)[-1] else "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt))


def finish(fig: Any, path: Optional[PathLike]) -> Any:
    """Lays out, saves when ``path`` is given, and returns the figure."""
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def close(fig: Any) -> None:
    """Releases a figure made through pyplot (dyngraph's own figures need no closing)."""
    import sys
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close(fig)


def _pyplot() -> Any:
    """pyplot, for the figure code not yet moved to the object API (never switches backend)."""
    import matplotlib.pyplot as plt
    return plt


def plot_curves(curves: Sequence, path: Optional[PathLike] = None, ax=None,
                labels: Optional[Sequence[str]] = None, title: Optional[str] = None,
                ylabel: Optional[str] = None, rotate_labels: bool = True):
    """Plots one or more :class:`Curve` objects against layer index, with ± std bands.

    Args:
        curves: Curves to draw on one axis.
        path: Where to save a PNG (atomically); nothing is saved when ``None``.
        ax: An existing matplotlib axis.
        labels: Legend entries, one per curve.
        title, ylabel: Axis texts.

    Returns:
        The matplotlib ``Figure``.
    """
    plt = _pyplot()
    if ax is None:
        width = max(6.0, min(16.0, 0.45 * max(len(c) for c in curves) + 3))
        fig, ax = plt.subplots(figsize=(width, 4.0))
    else:
        fig = ax.figure
    for i, c in enumerate(curves):
        xs = list(range(len(c)))
        lab = labels[i] if labels and i < len(labels) else c.meta.get("label", c.name)
        ax.plot(xs, c.values.tolist(), marker="o", label=lab)
        if c.samples.shape[0] > 1:
            lo, hi = (c.values - c.std).tolist(), (c.values + c.std).tolist()
            ax.fill_between(xs, lo, hi, alpha=0.2)
    longest = max(curves, key=len)
    ax.set_xticks(range(len(longest)))
    ax.set_xticklabels(longest.layers, rotation=60 if rotate_labels else 0, ha="right", fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel or curves[0].name)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1 or labels:
        ax.legend()
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


