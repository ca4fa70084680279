"""Figure helpers. Figures are built with matplotlib's object API (``matplotlib.figure.Figure``),
never through pyplot's global state: dyngraph never switches the user's backend, and a figure it
made and saved is freed with its last reference."""
from __future__ import annotations

from typing import Any, Optional, Tuple

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
