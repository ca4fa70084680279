"""Figure helpers. Figures are built with matplotlib's object API (``matplotlib.figure.Figure``),
never through pyplot's global state: dyngraph never switches the user's backend, and a figure it
made and saved is freed with its last reference."""
from __future__ import annotations

import numbers
import os
from typing import Any, Optional, Tuple

from .._io import PathLike, atomic_write
from .._validate import check_positive_int


def new_figure(figsize: Tuple[float, float] = (6.0, 4.0), ax: Any = None,
               nrows: int = 1, ncols: int = 1) -> Tuple[Any, Any]:
    """``(figure, axes)``: a fresh pyplot-free figure, or ``ax`` and its figure when given.

    The figure is a ``matplotlib.figure.Figure`` made without pyplot, so the user's backend and
    pyplot state are never touched (drawers registered with :func:`register_plot` use it).

    Args:
        figsize: ``(width, height)`` in inches of a new figure.
        ax: An existing matplotlib ``Axes`` to draw into (then ``figsize``, ``nrows`` and
            ``ncols`` are not used).
        nrows, ncols: Grid of axes of a new figure.

    Returns:
        ``(figure, axes)``: ``axes`` is one ``Axes`` for a 1 × 1 grid, else an array
        ``[nrows, ncols]`` (squeezed).

    Example:
        >>> import dyngraph as dg
        >>> fig, axes = dg.outputs.new_figure(nrows=1, ncols=2)
        >>> axes.shape, dg.outputs.new_figure(ax=axes[0])[0] is fig
        ((2,), True)
    """
    check_positive_int(nrows, "nrows")
    check_positive_int(ncols, "ncols")
    if ax is not None:
        check_axis(ax)
        return ax.figure, ax
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def check_axis(ax: Any) -> None:
    """``None`` or a matplotlib ``Axes`` (anything else is a ``TypeError``)."""
    if ax is None:
        return
    from matplotlib.axes import Axes
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes (or None for a new figure), got "
                        f"{type(ax).__name__}: {ax!r}"[:200])


def _format(path: PathLike) -> str:
    name = os.path.basename(os.fspath(path))
    return name.rsplit(".", 1)[-1].lower() if "." in name.strip(".") else "png"


def check_figure_path(path: Any) -> Optional[PathLike]:
    """``None`` or a file path whose suffix is a format matplotlib writes (no suffix: PNG), not
    an existing folder."""
    from ..profiles._profile import check_out_path
    if check_out_path(path) is None:
        return None
    fmt = _format(path)
    from matplotlib.backend_bases import FigureCanvasBase
    known = FigureCanvasBase.get_supported_filetypes()
    if fmt not in known:
        raise ValueError(f"path={os.fspath(path)!r}: matplotlib cannot write {fmt!r} figures; "
                         f"use a suffix among {sorted(known)}")
    return path


def save_figure(fig: Any, path: PathLike, dpi: int = 120) -> None:
    """Saves a figure atomically (PNG unless the suffix says otherwise).

    The figure is written to a temporary file beside ``path`` and moved into place, so an
    interrupted save never leaves a truncated image.

    Args:
        fig: A matplotlib ``Figure``.
        path: Where to save; the suffix picks the format (``.png``, ``.pdf``, ``.svg``, ...).
        dpi: Resolution, a number > 0.

    Example:
        >>> import os, tempfile, dyngraph as dg
        >>> fig, ax = dg.outputs.new_figure()
        >>> _ = ax.plot([0, 1], [0.2, 0.6])
        >>> path = os.path.join(tempfile.mkdtemp(), "curve.svg")
        >>> dg.outputs.save_figure(fig, path)
        >>> open(path).read(5)
        '<?xml'
    """
    if not callable(getattr(fig, "savefig", None)):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if isinstance(dpi, bool) or not isinstance(dpi, numbers.Real) or not dpi > 0 or \
            dpi == float("inf"):
        raise ValueError(f"dpi must be a number > 0, got dpi={dpi!r}")
    check_figure_path(path)
    fmt = _format(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt))


def finish(fig: Any, path: Optional[PathLike]) -> Any:
    """Lays out, saves when ``path`` is given, and returns the figure."""
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
